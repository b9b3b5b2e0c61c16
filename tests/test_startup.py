"""What a conversion imports: a plain ``conv convert`` or ``conv formats``
leaves out the modules only other paths need (typer and click, which only
option parsing needs; importlib.metadata, which the crc32c package imports
for its version; concurrent.futures and logging; lzma, which only the xz
and lzma codecs use; tempfile, as scratch files go beside the output).
Checked in a fresh interpreter through sys.modules."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_HEAVY = ("typer", "click", "importlib.metadata", "concurrent.futures", "logging", "lzma",
          "crc32c", "argparse", "tempfile")

# modules already loaded before conv starts (an editable install's path
# hooks load some at interpreter start-up) are not conv's doing
_PROBE = """
import json, sys
before = set(sys.modules)
from convcore.cli import main
code = main(sys.argv[1:])
print(json.dumps([code, sorted(m for m in sys.modules
                               if m in {heavy!r} and m not in before)]))
"""


def _imports(*args: str) -> tuple[int, list[str]]:
    probe = _PROBE.format(heavy=set(_HEAVY))
    run = subprocess.run([sys.executable, "-c", probe, *args],
                         capture_output=True, text=True, check=True)
    code, heavy = json.loads(run.stdout.splitlines()[-1])
    return code, heavy


@pytest.mark.parametrize("target, chain", [
    ("squashfs", "squashfs[comp=lz4]"),
    ("squashfs", "squashfs"),
    ("ext4", "ext4"),
])
def test_plain_convert_imports_nothing_it_does_not_use(tmp_path, sample_dir, target, chain):
    out = tmp_path / f"out.{target}"
    code, heavy = _imports("--seed", "s", "convert", f"dir:{sample_dir} -> {chain} -> raw:{out}")
    assert code == 0
    assert out.stat().st_size > 0
    assert heavy == []


def test_raw_to_qcow2_imports_nothing_it_does_not_use(tmp_path):
    src = tmp_path / "disk.raw"
    with open(src, "wb") as f:
        f.truncate(4 << 20)
        f.write(b"conv" * 1024)
    code, heavy = _imports("convert", f"raw:{src} -> qcow2:{tmp_path / 'disk.qcow2'}")
    assert code == 0
    assert heavy == []


@pytest.mark.parametrize("args", [["formats"], ["formats", "--json"]])
def test_formats_runs_without_typer(args):
    code, heavy = _imports(*args)
    assert code == 0
    assert heavy == []
