"""qcow2 through the ``conv`` command, as a user runs it."""

from __future__ import annotations

import json
import os

from convcore.testing import make_sample_dir, require_tool, run, run_conv

MiB = 1 << 20


def test_raw_to_zstd_qcow2_and_back(qemu, sample_raw, tmp_path):
    out = str(tmp_path / "out.qcow2")
    run_conv("convert", f"raw:{sample_raw} -> qcow2[compress=zstd]:{out}", check=True)
    qemu.check(out)
    qemu.compare(sample_raw, out)
    assert qemu.info(out)["format-specific"]["data"]["compression-type"] == "zstd"

    back = str(tmp_path / "back.raw")
    run_conv("convert", f"qcow2:{out} -> raw:{back}", check=True)
    with open(sample_raw, "rb") as a, open(back, "rb") as b:
        assert a.read() == b.read()
    # holes stay holes: a 6 MiB disk holding under 3 MiB of data
    assert os.stat(back).st_blocks * 512 < 3 * MiB


def test_qemu_made_overlay_to_raw(qemu, sample_raw, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    qemu.img("convert", "-c", "-O", "qcow2", sample_raw, "base.qcow2")
    qemu.img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "ovl.qcow2")
    qemu.io("ovl.qcow2", "write -P 0x55 0 64k", "write -z 1M 64k")
    run_conv("convert", "qcow2:ovl.qcow2 -> raw:ovl.raw", check=True)
    expected = qemu.to_raw("ovl.qcow2", "expected.raw")
    with open("ovl.raw", "rb") as a, open(expected, "rb") as b:
        assert a.read() == b.read()
    info = json.loads(run_conv("info", "--json", "ovl.qcow2", check=True).stdout)
    assert info["container"]["format"] == "qcow2"
    assert info["container"]["backing_chain"] == "base.qcow2 (qcow2)"


def test_ext4_written_in_place_into_qcow2(qemu, tmp_path):
    require_tool("e2fsck", "debugfs")
    src = make_sample_dir(str(tmp_path / "root"))
    env = {"SOURCE_DATE_EPOCH": "1600000000"}
    out = str(tmp_path / "fs.qcow2")
    again = str(tmp_path / "again.qcow2")
    raw = str(tmp_path / "fs.raw")
    # one seed for all three: the default seed depends on the chain, sink included
    run_conv("--seed", "t", "convert", f"dir:{src} -> ext4 -> qcow2:{out}", env=env, check=True)
    run_conv("--seed", "t", "convert", f"dir:{src} -> ext4 -> raw:{raw}", env=env, check=True)
    run_conv("--seed", "t", "convert", f"dir:{src} -> ext4 -> qcow2:{again}", env=env,
             check=True)
    qemu.check(out)
    qemu.compare(raw, out)  # the same filesystem, whichever container holds it
    with open(out, "rb") as a, open(again, "rb") as b:
        assert a.read() == b.read()  # reproducible, though ext4 writes from two threads
    as_raw = qemu.to_raw(out, str(tmp_path / "from-qcow2.raw"))
    fsck = run("e2fsck", "-fn", as_raw, check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert run("debugfs", "-R", "cat /etc/hostname", as_raw).stdout == "conv-test\n"
    # and read back through the qcow2 reader: ext4 inside qcow2, found by magic
    info = json.loads(run_conv("info", "--json", out, check=True).stdout)
    assert info["container"]["format"] == "qcow2"
    assert info["filesystem"]["format"] in ("ext4", "ext2", "ext3")
    cat = run_conv("cat", out, "/etc/hostname", check=True)
    assert cat.stdout == "conv-test\n"


def test_corrupt_image_is_one_line(sample_raw, tmp_path):
    bad = str(tmp_path / "bad.qcow2")
    run_conv("convert", f"raw:{sample_raw} -> qcow2:{bad}", check=True)
    with open(bad, "r+b") as f:
        f.seek(40)  # l1_table_offset
        f.write((1 << 40).to_bytes(8, "big"))
    p = run_conv("convert", f"qcow2:{bad} -> raw:{tmp_path / 'x.raw'}")
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("conv: ") and "L1 table" in lines[0], p.stderr
    assert not os.path.exists(tmp_path / "x.raw")


def _allocated(qemu, image: str) -> int:
    return sum(m["length"] for m in qemu.map(image) if m["data"])


def test_zero_file_data_in_place_costs_no_clusters(qemu, tmp_path):
    """Whole-zero clusters inside a filesystem's file data (a file of written
    zeros, a zero tail, zero small files) stay unallocated when the filesystem
    is written in place into the qcow2: as many clusters as qemu-img convert
    allocates for the same raw image."""
    require_tool("e2fsck")
    root = tmp_path / "root"
    root.mkdir()
    (root / "zeros.bin").write_bytes(bytes(3 * MiB))  # written, not sparse
    (root / "data-then-zeros.bin").write_bytes(os.urandom(100_000) + bytes(2 * MiB))
    (root / "small-zeros.bin").write_bytes(bytes(40_000))
    (root / "text.txt").write_bytes(b"some text\n" * 5000)
    for fs in ("ext4", "squashfs"):
        raw, out, ref = (str(tmp_path / f"{fs}.{ext}") for ext in ("raw", "qcow2", "ref.qcow2"))
        for sink in (f"raw:{raw}", f"qcow2:{out}"):
            run_conv("--seed", "z", "convert", f"dir:{root} -> {fs} -> {sink}",
                     env={"SOURCE_DATE_EPOCH": "1600000000"}, check=True)
        qemu.check(out)
        qemu.compare(raw, out)
        qemu.img("convert", "-f", "raw", "-O", "qcow2", raw, ref)
        assert _allocated(qemu, out) == _allocated(qemu, ref), fs
        if fs == "ext4":
            assert _allocated(qemu, out) < 2 * MiB  # the 5 MiB of zeros cost nothing
            fsck = run("e2fsck", "-fn", qemu.to_raw(out, str(tmp_path / "back.raw")),
                       check=False)
            assert fsck.returncode == 0, fsck.stdout + fsck.stderr
