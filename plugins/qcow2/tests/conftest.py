"""Fixtures for the qcow2 tests: sample raw disks and the qemu-img judges."""

from __future__ import annotations

import json
import os
import random

import pytest

from convcore.testing import require_tool, run

MiB = 1 << 20


class Qemu:
    """qemu-img / qemu-io as the judges of our images."""

    def __init__(self) -> None:
        require_tool("qemu-img", "qemu-io")

    def check(self, image: str) -> None:
        """No errors, no leaks: ``qemu-img check`` exits 0 (2 = corrupt, 3 = leaks)."""
        p = run("qemu-img", "check", "-f", "qcow2", image, check=False)
        assert p.returncode == 0, \
            f"qemu-img check {image}: exit {p.returncode}\n{p.stdout}{p.stderr}"
        assert "No errors were found on the image." in p.stdout

    def compare(self, a: str, b: str, fmt_b: str = "qcow2") -> None:
        p = run("qemu-img", "compare", "-f", "raw", "-F", fmt_b, a, b, check=False)
        assert p.returncode == 0, f"qemu-img compare {a} {b}: {p.stdout}{p.stderr}"

    def info(self, image: str) -> dict:
        return json.loads(run("qemu-img", "info", "--output=json", image).stdout)

    def map(self, image: str) -> list[dict]:
        return json.loads(run("qemu-img", "map", "--output=json", image).stdout)

    def to_raw(self, image: str, out: str) -> str:
        run("qemu-img", "convert", "-O", "raw", image, out)
        return out

    def img(self, *args: str) -> None:
        run("qemu-img", *args)

    def io(self, image: str, *commands: str) -> None:
        args = []
        for c in commands:
            args += ["-c", c]
        run("qemu-io", "-f", "qcow2", *args, image)


@pytest.fixture
def qemu() -> Qemu:
    return Qemu()


def write_sample_raw(path: str, size: int = 6 * MiB + 3584, seed: int = 1) -> str:
    """A disk with random (incompressible) and text (compressible) data,
    holes, an explicit run of zeros, and a partial last cluster."""
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for off in (0, 100_000, 3 * MiB, 5 * MiB + 12345):
            f.seek(off)
            f.write(rnd.randbytes(70_000))
        f.seek(1 * MiB)
        f.write(b"".join(b"line %d of a compressible text\n" % i for i in range(40_000)))
        f.seek(4 * MiB)
        f.write(bytes(128 * 1024))  # written zeros: must not cost clusters
        f.seek(size - 1000)
        f.write(b"tail" * 250)  # data in the partial last cluster
    return path


@pytest.fixture
def sample_raw(tmp_path) -> str:
    return write_sample_raw(os.path.join(tmp_path, "disk.raw"))
