"""Decompressed layer data is spooled beside the chain's output, never in
TMPDIR (a tmpfs /tmp would hold a whole image in RAM), and nothing stays
behind, on success or on error."""

from __future__ import annotations

import json
import os
import tarfile
import tempfile

import pytest

from convcore import pipeline
from convcore.errors import CorruptError
from convcore.format import Context

DATA = bytes(range(256)) * 512


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    out = tmp_path / "out"
    tmpdir = tmp_path / "tmpdir"
    out.mkdir()
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    return out, tmpdir


def _open_files() -> list[str]:
    names = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            names.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return names


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_layer_spool_is_beside_the_output(layout, dirs, monkeypatch, compression):
    if compression == "zstd":
        pytest.importorskip("zstandard")
    out, tmpdir = dirs
    layout.image([([layout.dir("etc"), layout.file("etc/data", DATA)], compression)])
    seen: list[list[str]] = []
    original = pipeline.write_atomically

    def spy(path, write):
        seen.append(_open_files())
        return original(path, write)

    monkeypatch.setattr(pipeline, "write_atomically", spy)
    pipeline.convert(f"oci:{layout.root} -> tar:{out / 'image.tar'}", Context())
    (at_sink,) = seen
    assert [n for n in at_sink if n.startswith(f"{out}/") and n.endswith(" (deleted)")]
    assert not [n for n in at_sink if n.startswith(f"{tmpdir}/")]
    assert os.listdir(out) == ["image.tar"] and os.listdir(tmpdir) == []
    with tarfile.open(out / "image.tar") as tar:
        assert tar.extractfile("etc/data").read() == DATA


def test_a_bad_layer_leaves_nothing(layout, dirs):
    out, tmpdir = dirs
    desc = layout.image([[layout.file("data", DATA)]])
    with open(layout.blob_path(desc)) as f:
        layer = json.load(f)["layers"][0]
    path = layout.blob_path(layer)
    layout.flip_byte(path, os.path.getsize(path) - 12)  # inside the deflate stream
    with pytest.raises(CorruptError):
        pipeline.convert(f"oci:{layout.root} -> tar:{out / 'image.tar'}", Context())
    assert os.listdir(out) == [] and os.listdir(tmpdir) == []
