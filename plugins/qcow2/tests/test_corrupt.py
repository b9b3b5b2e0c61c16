"""Hostile and unsupported qcow2 images: one clear error, never a traceback,
a hang or an unbounded allocation."""

from __future__ import annotations

import os
import struct
import zlib

import pytest
import zstandard
from conv_qcow2 import layout
from conv_qcow2.image import ImageBuilder
from conv_qcow2.reader import Qcow2Volume
from conv_qcow2.writer import sink

from convcore.blockdev import FileVolume
from convcore.errors import CorruptError, NotFoundError, UnsupportedError
from convcore.format import Context
from convcore.testing import run

MiB = 1 << 20


def patch(path: str, offset: int, fmt: str, value) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, value))


def read_field(path: str, offset: int, fmt: str):
    with open(path, "rb") as f:
        f.seek(offset)
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]


@pytest.fixture
def image(sample_raw, tmp_path) -> str:
    out = str(tmp_path / "good.qcow2")
    sink(FileVolume(sample_raw), out, {}, Context())
    return out


def read_all(path: str) -> None:
    vol = Qcow2Volume(path)
    try:
        vol.pread(vol.size, 0)
        list(vol.data_ranges())
    finally:
        vol.close()


# header fields: (offset, struct format)
L1_SIZE = (36, ">I")
L1_OFFSET = (40, ">Q")
REFTABLE_OFFSET = (48, ">Q")
CLUSTER_BITS = (20, ">I")
INCOMPATIBLE = (72, ">Q")
HEADER_LENGTH = (100, ">I")


@pytest.mark.parametrize("field, value, message", [
    (L1_OFFSET, 1 << 40, "L1 table .* outside"),
    (L1_OFFSET, 65536 + 8, "not cluster aligned"),
    (L1_SIZE, 0xFFFFFFFF, "above qemu's 32 MiB limit"),
    (L1_SIZE, 0, "too small"),
    (REFTABLE_OFFSET, 1 << 40, "refcount table .* past the end"),
    (REFTABLE_OFFSET, 4096, "refcount table offset .* not cluster aligned"),
    (CLUSTER_BITS, 30, "cluster_bits 30"),
    (HEADER_LENGTH, 1 << 20, "header_length"),
])
def test_bad_header_fields(image, field, value, message):
    offset, fmt = field
    patch(image, offset, fmt, value)
    with pytest.raises(CorruptError, match=message):
        read_all(image)


def test_bad_magic_and_truncated_file(image, tmp_path):
    patch(image, 0, ">4s", b"QFI\x00")
    with pytest.raises(CorruptError, match="bad magic"):
        read_all(image)
    short = str(tmp_path / "short.qcow2")
    with open(short, "wb") as f:
        f.write(b"QFI\xfb\0\0\0\x03")
    with pytest.raises(CorruptError, match="header"):
        read_all(short)


def _first_l1_entry(path: str) -> int:
    return read_field(path, L1_OFFSET[0], L1_OFFSET[1])


@pytest.mark.parametrize("entry, message", [
    ((1 << 40) | layout.OFLAG_COPIED, "L2 table .* outside"),
    (65536 * 3 + 512, "L2 table offset .* not cluster aligned"),
])
def test_bad_l2_pointer(image, entry, message):
    patch(image, _first_l1_entry(image), ">Q", entry)
    with pytest.raises(CorruptError, match=message):
        read_all(image)


def test_misaligned_data_cluster(image):
    l2 = read_field(image, _first_l1_entry(image), ">Q") & layout.L1_OFFSET_MASK
    first = read_field(image, l2, ">Q")
    patch(image, l2, ">Q", first + 4096)
    with pytest.raises(CorruptError, match="data cluster offset .* not cluster aligned"):
        read_all(image)


def test_data_cluster_past_end_of_file(image):
    l2 = read_field(image, _first_l1_entry(image), ">Q") & layout.L1_OFFSET_MASK
    patch(image, l2, ">Q", (1 << 40) | layout.OFLAG_COPIED)
    with pytest.raises(CorruptError, match="data cluster at offset .* past the end"):
        read_all(image)


def _compressed_image(path: str, payload: bytes, compression: int,
                      cluster_size: int = 65536) -> str:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        img = ImageBuilder(fd, 4 * cluster_size, cluster_size, 3, compression)
        img.put_compressed(1, payload)
        img.finish()
    finally:
        os.close(fd)
    return path


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -12, 9)
    return c.compress(data) + c.flush()


@pytest.mark.parametrize("compression, payload, message", [
    # a deflate bomb: 64 MiB of zeros in ~64 KiB; must stop at one cluster
    (layout.COMPRESSION_ZLIB, _raw_deflate(bytes(64 * MiB))[:60000], "inflates beyond"),
    (layout.COMPRESSION_ZLIB, _raw_deflate(b"x" * 1000), "inflates to 1000 bytes"),
    (layout.COMPRESSION_ZLIB, b"\xff" * 3000, "does not inflate"),
    (layout.COMPRESSION_ZSTD, zstandard.ZstdCompressor().compress(bytes(64 * MiB)),
     "inflates beyond"),
    # the same without a content size in the frame header: stopped by the output bound
    (layout.COMPRESSION_ZSTD, zstandard.ZstdCompressor(write_content_size=False).compress(
        bytes(64 * MiB)), "does not decompress"),
    (layout.COMPRESSION_ZSTD, b"\x28\xb5\x2f\xfd" + b"\x55" * 100, "does not decompress"),
])
def test_bad_compressed_clusters(qemu, tmp_path, compression, payload, message):
    path = _compressed_image(str(tmp_path / "c.qcow2"), payload, compression)
    with pytest.raises(CorruptError, match=message):
        read_all(path)


def test_good_handmade_compressed_cluster_reads(qemu, tmp_path):
    data = bytes(range(256)) * 256
    path = _compressed_image(str(tmp_path / "ok.qcow2"), _raw_deflate(data),
                             layout.COMPRESSION_ZLIB)
    qemu.check(path)
    vol = Qcow2Volume(path)
    assert vol.pread(65536, 65536) == data
    vol.close()


def test_backing_loops_and_missing_backing(qemu, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    qemu.img("create", "-f", "qcow2", "self.qcow2", "1M")
    qemu.img("rebase", "-u", "-f", "qcow2", "-b", "self.qcow2", "-F", "qcow2", "self.qcow2")
    with pytest.raises(CorruptError, match="loops"):
        Qcow2Volume("self.qcow2")
    qemu.img("create", "-f", "qcow2", "a.qcow2", "1M")
    qemu.img("create", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", "b.qcow2")
    qemu.img("rebase", "-u", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "a.qcow2")
    with pytest.raises(CorruptError, match="loops"):
        Qcow2Volume("b.qcow2")
    qemu.img("rebase", "-u", "-f", "qcow2", "-b", "gone.raw", "-F", "raw", "a.qcow2")
    with pytest.raises(NotFoundError, match="gone.raw"):
        Qcow2Volume("a.qcow2")


def test_encrypted_and_external_data_file_are_refused(qemu, tmp_path):
    # The header's crypt_method (offset 32) is what says "encrypted": AES
    # (1) and LUKS (2) set in images qemu-img made, always checked ...
    for method in (1, 2):
        patched = str(tmp_path / f"crypt{method}.qcow2")
        qemu.img("create", "-f", "qcow2", patched, "1M")
        with open(patched, "r+b") as f:
            f.seek(32)
            f.write(struct.pack(">I", method))
        with pytest.raises(UnsupportedError, match="encrypted"):
            Qcow2Volume(patched)
    # ... and a real LUKS image when qemu-img can make one: it times its
    # PBKDF2 with the thread's CPU clock, which has tick granularity, and
    # gives up ("Unable to get accurate CPU usage") when a round reads 0 ms,
    # which happens on fast or busy machines whatever the options.
    enc = str(tmp_path / "enc.qcow2")
    for _ in range(5):
        p = run("qemu-img", "create", "-f", "qcow2", "--object", "secret,id=sec0,data=conv-test",
                "-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
                enc, "1M", check=False)
        if p.returncode == 0 or "accurate CPU usage" not in p.stderr:
            assert p.returncode == 0, p.stdout + p.stderr
            with pytest.raises(UnsupportedError, match="encrypted"):
                Qcow2Volume(enc)
            break
    ext = str(tmp_path / "ext.qcow2")
    qemu.img("create", "-f", "qcow2", "-o", f"data_file={tmp_path / 'ext.data'}", ext, "1M")
    with pytest.raises(UnsupportedError, match="external data file"):
        Qcow2Volume(ext)


def test_unknown_incompatible_feature(image):
    patch(image, INCOMPATIBLE[0], INCOMPATIBLE[1], 1 << 20)
    with pytest.raises(UnsupportedError, match="incompatible features"):
        Qcow2Volume(image)


def test_header_extension_overrun_and_bad_backing_name(image):
    # an extension claiming more bytes than the header cluster holds
    patch(image, 112, ">I", layout.EXT_BACKING_FORMAT)
    patch(image, 116, ">I", 1 << 20)
    with pytest.raises(CorruptError, match="header extension"):
        Qcow2Volume(image)


def test_backing_name_outside_header(image):
    patch(image, 8, ">Q", 65000)
    patch(image, 16, ">I", 1000)
    with pytest.raises(CorruptError, match="backing file name"):
        Qcow2Volume(image)


def test_missing_file():
    with pytest.raises(NotFoundError):
        Qcow2Volume("/nonexistent/x.qcow2")


@pytest.mark.parametrize("opts", [{"compress": "zlib", "cluster_size": 4096},
                                  {"compress": "zstd"}, {"cluster_size": 512}])
def test_random_damage_is_a_conv_error_or_reads(sample_raw, tmp_path, opts):
    """Bytes flipped in the header and metadata: either the image still reads
    or one ConvError says why; never another exception."""
    import random

    from convcore.errors import ConvError
    good_path = str(tmp_path / "good.qcow2")
    sink(FileVolume(sample_raw), good_path, opts, Context())
    with open(good_path, "rb") as f:
        good = f.read()
    cs = opts.get("cluster_size", 65536)
    rnd = random.Random(5)
    bad_path = str(tmp_path / "bad.qcow2")
    errors = 0
    for _ in range(60):
        data = bytearray(good)
        for _ in range(rnd.randrange(1, 8)):
            where = rnd.choice((0, 1, 2))
            if where == 0:  # header and extensions
                pos = rnd.randrange(0, 512)
            elif where == 1:  # L2 tables and refcounts sit at the end
                pos = rnd.randrange(max(0, len(data) - 3 * cs), len(data))
            else:
                pos = rnd.randrange(len(data))
            data[pos] = rnd.randrange(256)
        with open(bad_path, "wb") as f:
            f.write(data)
        try:
            vol = Qcow2Volume(bad_path)
            try:
                list(vol.data_ranges())
                vol.pread(min(vol.size, 2 * MiB), 0)
            finally:
                vol.close()
        except ConvError as e:
            assert "\n" not in str(e)
            errors += 1
    assert errors > 0  # the damage was noticed at least sometimes
