"""qcow2 reader's run mapping: fragmented host layouts, tiny mapping caches,
copy_to_fd at arbitrary ranges, and sparse raw output, judged against
``qemu-img convert -O raw``."""

from __future__ import annotations

import os
import random

import conv_qcow2.reader as reader
from conv_qcow2.reader import source

from convcore.blockdev import FileTarget
from convcore.format import Context

MiB = 1 << 20


def scattered_image(qemu, path: str) -> None:
    """4 KiB clusters written out of guest order (host clusters run backwards),
    with zero clusters, a discard, and stretches that span several L2 tables."""
    qemu.img("create", "-f", "qcow2", "-o", "cluster_size=4096", path, "24M")
    cmds = [f"write -P {0x10 + k} {(40 - k) * 4096} 4k" for k in range(40)]
    cmds += ["write -P 0x71 2M 3M", "write -z 3M 64k", "write -P 0x72 9M 8k",
             "discard 2M 4k", "write -P 0x73 23M 1M", "write -z 12M 4M"]
    qemu.io(path, *cmds)


def test_copy_to_fd_random_ranges_with_tiny_cache(qemu, tmp_path, monkeypatch):
    # a budget of a few runs: the mapping is rebuilt and evicted constantly
    monkeypatch.setattr(reader, "L2_CACHE_BYTES", 4 * reader._RUN_BYTES)
    image = str(tmp_path / "scattered.qcow2")
    scattered_image(qemu, image)
    raw_path = qemu.to_raw(image, str(tmp_path / "scattered.raw"))
    with open(raw_path, "rb") as f:
        raw = f.read()
    vol = source(image, {}, Context())
    assert vol.pread(vol.size, 0) == raw
    rnd = random.Random(3)
    out = str(tmp_path / "copy.bin")
    fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(60):
            off = rnd.randrange(vol.size)
            n = rnd.randrange(1, min(6 * MiB, vol.size - off) + 1)
            # copy_to_fd overwrites: zeros of the disk replace what was there
            os.pwrite(fd, b"\xff" * (n + 7), 0)
            vol.copy_to_fd(off, n, fd, 7, bytearray(64 * 1024))
            assert os.pread(fd, n, 7) == raw[off:off + n]
            assert vol.pread(n, off) == raw[off:off + n]
    finally:
        os.close(fd)
        vol.close()


def test_raw_output_is_sparse_and_copies_in_few_calls(qemu, tmp_path, monkeypatch):
    src = str(tmp_path / "src.raw")
    rnd = random.Random(5)
    with open(src, "wb") as f:
        f.truncate(1 << 30)
        for k in range(8):
            f.seek(k * (128 * MiB))
            f.write(rnd.randbytes(MiB))
    image = str(tmp_path / "disk.qcow2")
    qemu.img("convert", "-f", "raw", "-O", "qcow2", src, image)
    qemu.io(image, "write -z 128M 64k")  # a zero cluster inside data: a hole on output

    calls = []
    real = reader.copy_range
    monkeypatch.setattr(reader, "copy_range",
                        lambda *a, **k: (calls.append(a[4]), real(*a, **k))[1])
    vol = source(image, {}, Context())
    out = str(tmp_path / "out.raw")
    fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, vol.size)
        vol.write_to(FileTarget(fd, vol.size))
        # only the 8 MiB of data (less the zeroed cluster) occupies disk blocks
        assert os.fstat(fd).st_blocks * 512 <= 8 * MiB
        assert os.lseek(fd, 128 * MiB, os.SEEK_DATA) == 128 * MiB + 65536
    finally:
        os.close(fd)
        vol.close()
    qemu.compare(out, image)
    # qemu-img lays these host-contiguous: one call per 1 MiB run, not per cluster
    assert len(calls) <= 9 and sum(calls) == 8 * MiB - 65536
