"""qcow2 reader on images qemu-img and qemu-io made, compared byte for byte
with what ``qemu-img convert -O raw`` reads from them."""

from __future__ import annotations

import os
import random

import pytest
from conv_qcow2.reader import Qcow2Volume, source

from convcore.format import Context
from convcore.testing import write_plan

MiB = 1 << 20


def assert_reads_like(qemu, image: str, tmp_path) -> Qcow2Volume:
    """Every byte, random slices, data_ranges and write_to agree with qemu's raw."""
    raw_path = qemu.to_raw(image, str(tmp_path / (os.path.basename(image) + ".raw")))
    with open(raw_path, "rb") as f:
        raw = f.read()
    vol = source(image, {}, Context())
    assert vol.size == len(raw)
    assert vol.pread(vol.size, 0) == raw
    rnd = random.Random(7)
    for _ in range(100):
        off = rnd.randrange(vol.size)
        n = rnd.randrange(1, 300_000)
        assert vol.pread(n, off) == raw[off:off + n]
    # outside data_ranges the disk is all zeros
    pos = 0
    for start, length in vol.data_ranges():
        assert start >= pos
        assert raw[pos:start] == bytes(start - pos)
        pos = start + length
    assert raw[pos:] == bytes(len(raw) - pos)
    # write_to (what the raw sink does) gives the same disk
    out = write_plan(vol, tmp_path / (os.path.basename(image) + ".out"))
    with open(out, "rb") as f:
        assert f.read() == raw
    return vol


@pytest.mark.parametrize("args", [
    [],
    ["-c"],
    ["-c", "-o", "compression_type=zstd"],
    ["-o", "compat=0.10"],
    ["-c", "-o", "compat=0.10,cluster_size=4096"],
    ["-o", "cluster_size=512"],
    ["-c", "-o", "cluster_size=2M"],
    ["-o", "extended_l2=on,cluster_size=128K"],
])
def test_qemu_img_convert_images(qemu, sample_raw, tmp_path, args):
    image = str(tmp_path / "img.qcow2")
    qemu.img("convert", "-f", "raw", "-O", "qcow2", *args, sample_raw, image)
    vol = assert_reads_like(qemu, image, tmp_path)
    info = qemu.info(image)
    assert vol.info["virtual_size"] == info["virtual-size"]
    assert vol.info["cluster_size"] == info["cluster-size"]
    assert vol.info["compat"] == info["format-specific"]["data"]["compat"]
    assert vol.info["compression_type"] == \
        info["format-specific"]["data"].get("compression-type", "zlib")
    vol.close()


def test_overlays_zero_clusters_and_backing_chain(qemu, sample_raw, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # backing names are stored relative: resolved beside the image
    qemu.img("convert", "-f", "raw", "-O", "qcow2", sample_raw, "mid-base.qcow2")
    qemu.img("create", "-f", "qcow2", "-b", "disk.raw", "-F", "raw", "ovl-raw.qcow2")
    qemu.io("ovl-raw.qcow2", "write -P 0x55 0 64k", "write -z 3M 64k",
            "write -P 0x66 6M 3584", "write -P 0x77 5000 100")
    vol = assert_reads_like(qemu, str(tmp_path / "ovl-raw.qcow2"), tmp_path)
    assert vol.backing_chain == [{"file": "disk.raw", "format": "raw"}]
    assert vol.info["backing_chain"] == "disk.raw (raw)"
    vol.close()

    qemu.img("create", "-f", "qcow2", "-b", "mid-base.qcow2", "-F", "qcow2", "mid.qcow2")
    qemu.io("mid.qcow2", "write -P 0x11 1M 200k", "write -z 5M 128k")
    qemu.img("create", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", "top.qcow2", "8M")
    qemu.io("top.qcow2", "write -P 0x22 1100k 4k", "write -P 0x33 7M 64k")
    vol = assert_reads_like(qemu, str(tmp_path / "top.qcow2"), tmp_path)
    assert vol.info["backing_chain"] == "mid.qcow2 (qcow2) -> mid-base.qcow2 (qcow2)"
    vol.close()


def test_extended_l2_subclusters(qemu, sample_raw, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    qemu.img("create", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=64K",
             "-b", "disk.raw", "-F", "raw", "ext.qcow2")
    # 2 KiB subclusters: partial writes leave the rest of the cluster to the backing file
    qemu.io("ext.qcow2", "write -P 0x44 0 2k", "write -P 0x45 10k 6k", "write -z 1M 4k",
            "write -P 0x46 3M 70k")
    vol = assert_reads_like(qemu, str(tmp_path / "ext.qcow2"), tmp_path)
    assert vol.info["extended_l2"] is True
    vol.close()


def test_sparse_2tib_image_with_multi_cluster_l1(qemu, tmp_path):
    image = str(tmp_path / "big.qcow2")
    # 4 KiB clusters: the L1 table of a 2 TiB disk spans 2048 clusters
    qemu.img("create", "-f", "qcow2", "-o", "cluster_size=4096", image, "2T")
    qemu.io(image, "write -P 0x5a 1T 64k", "write -P 0x33 2047G 5000", "write -z 100G 4k")
    vol = source(image, {}, Context())
    assert vol.size == 2 << 40
    assert vol.pread(65536, 1 << 40) == b"\x5a" * 65536
    assert vol.pread(8192, 2047 << 30) == b"\x33" * 5000 + bytes(3192)
    assert vol.pread(4096, (1 << 40) - 4096) == bytes(4096)
    # 5000 bytes at 2047G allocate two 4 KiB clusters
    assert list(vol.data_ranges()) == [(1 << 40, 65536), (2047 << 30, 8192)]
    vol.close()
