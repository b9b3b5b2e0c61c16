"""Fixtures for the gpt plugin's tests: content volumes and the judges' views."""

from __future__ import annotations

import json
import random

import pytest

from convcore.blockdev import FileVolume
from convcore.builtin.raw import sink as raw_sink
from convcore.format import Context
from convcore.plugins import registry
from convcore.testing import require_tool, run


@pytest.fixture
def content(tmp_path):
    """content(size, seed) -> FileVolume of pseudo-random bytes (kept open
    until the test ends)."""
    opened = []

    def make(size: int, seed: int = 1) -> FileVolume:
        path = tmp_path / f"content-{seed}-{size}.bin"
        path.write_bytes(random.Random(seed).randbytes(size))
        volume = FileVolume(path)
        opened.append(volume)
        return volume

    yield make
    for volume in opened:
        volume.close()


@pytest.fixture
def write_disk(tmp_path):
    """write_disk(table, requests, **options) -> path of the written raw disk."""
    count = iter(range(1000))

    def write(table: str, requests, ctx: Context | None = None, **options) -> str:
        fmt = registry().get(table)
        plan = fmt.layout(requests, fmt.parse_options({k: str(v) for k, v in options.items()}),
                          ctx or Context(seed="test"))
        path = str(tmp_path / f"disk-{next(count)}.img")
        raw_sink(plan, path, {}, ctx or Context(seed="test"))
        return path

    return write


def sfdisk_json(path: str, sector_size: int = 512) -> dict:
    require_tool("sfdisk")
    args = ["sfdisk", "--json", path]
    if sector_size != 512:
        args[1:1] = ["--sector-size", str(sector_size)]
    return json.loads(run(*args).stdout)["partitiontable"]


def sgdisk_verify(path: str) -> str:
    """sgdisk -v output, asserting it found no problems and no cautions."""
    require_tool("sgdisk")
    out = run("sgdisk", "-v", path).stdout
    assert "No problems found" in out, out
    assert "Caution" not in out and "Warning" not in out, out
    return out


def read_range(path: str, start: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(length)


@pytest.fixture
def judges():
    class Judges:
        sfdisk = staticmethod(sfdisk_json)
        sgdisk = staticmethod(sgdisk_verify)
        read = staticmethod(read_range)
    return Judges


def file_bytes(volume: FileVolume) -> bytes:
    with open(volume.path, "rb") as f:
        return f.read()


@pytest.fixture
def volume_bytes():
    return file_bytes

