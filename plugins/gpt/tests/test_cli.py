"""gpt and mbr through the conv CLI, judged by sfdisk, fdisk and e2fsck."""

from __future__ import annotations

import json
import os
import platform

import pytest

from convcore.testing import make_sample_dir, require_tool, run, run_conv

MiB = 1 << 20
ROOT_TYPES = {"x86_64": "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
              "aarch64": "B921B045-1DF0-41C3-AF44-4C6F280D3FAE"}


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> str:
    return make_sample_dir(str(tmp_path_factory.mktemp("tree") / "root"))


def _partition_file(disk, part: dict, out) -> str:
    with open(disk, "rb") as src, open(out, "wb") as dst:
        src.seek(part["start"] * 512)
        dst.write(src.read(part["size"] * 512))
    return str(out)


def _sfdisk(path) -> dict:
    require_tool("sfdisk")
    return json.loads(run("sfdisk", "--json", str(path)).stdout)["partitiontable"]


def test_dir_ext4_mbr_raw_passes_fdisk_and_e2fsck(tmp_path, tree):
    pytest.importorskip("conv_ext4.writer")
    require_tool("fdisk", "e2fsck", "debugfs")
    disk = tmp_path / "dos.img"
    run_conv("convert", f"dir:{tree} -> ext4 -> mbr[bootable] -> raw:{disk}", check=True)
    fdisk = run("fdisk", "-l", str(disk)).stdout
    assert "Disklabel type: dos" in fdisk
    (part,) = _sfdisk(disk)["partitions"]
    assert (part["start"], part["type"], part.get("bootable")) == (2048, "83", True)
    p1 = _partition_file(disk, part, tmp_path / "p1.img")
    fsck = run("e2fsck", "-fn", p1, check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert run("debugfs", "-R", "cat /etc/hostname", p1).stdout == "conv-test\n"


def test_raw_filesystem_image_into_gpt_gets_the_root_type(tmp_path, tree):
    pytest.importorskip("conv_ext4.writer")
    if platform.machine() not in ROOT_TYPES:
        pytest.skip(f"no root type checked for {platform.machine()}")
    fs = tmp_path / "fs.img"
    run_conv("convert", f"dir:{tree} -> ext4 -> raw:{fs}", check=True)
    disk = tmp_path / "disk.img"
    run_conv("convert", f"raw:{fs} -> gpt[name=root] -> raw:{disk}", check=True)
    (part,) = _sfdisk(disk)["partitions"]
    assert (part["type"], part["name"]) == (ROOT_TYPES[platform.machine()], "root")
    with open(disk, "rb") as f:
        f.seek(part["start"] * 512)
        assert f.read(os.path.getsize(fs)) == fs.read_bytes()


def test_pick_a_partition_out_of_an_sgdisk_disk(tmp_path):
    require_tool("sgdisk")
    disk = tmp_path / "sg.img"
    with open(disk, "wb") as f:
        f.truncate(16 * MiB)
        f.seek(5 * MiB)
        f.write(b"second partition data")
    run("sgdisk", "-o", "-n", "1:2048:+4M", "-c", "1:one", "-n", "2:0:+4M", "-c", "2:two",
        str(disk))
    out = tmp_path / "two.img"
    run_conv("convert", f"raw:{disk} -> gpt[part=two] -> raw:{out}", check=True)
    assert os.path.getsize(out) == 4 * MiB
    assert out.read_bytes()[:21] == b"second partition data"
    info = json.loads(run_conv("info", "--json", str(disk), check=True).stdout)
    rows = [(p["number"], p["start"], p["size"], p["name"], p["type_name"])
            for p in info["table"]["partitions"]]
    assert info["table"]["format"] == "gpt"
    assert rows == [(1, MiB, 4 * MiB, "one", "linux"), (2, 5 * MiB, 4 * MiB, "two", "linux")]
    p = run_conv("convert", f"raw:{disk} -> gpt -> raw:{tmp_path / 'x.img'}")
    assert p.returncode == 2
    assert p.stderr.strip() == ("conv: gpt: which partition? pick one with part=N or part=NAME "
                                "(partitions: 1 'one' (linux, 4 MiB); 2 'two' (linux, 4 MiB))")
    assert not (tmp_path / "x.img").exists()


def test_corrupt_tables_are_one_line_on_the_cli(tmp_path):
    require_tool("sfdisk")
    disk = tmp_path / "dos.img"
    with open(disk, "wb") as f:
        f.truncate(8 * MiB)
    run("sfdisk", "-q", str(disk), input="label: dos\n,2M,83\n,,5\n,1M,83\n")
    with open(disk, "r+b") as f:  # the EBR's link points back at itself
        f.seek(3 * MiB + 446 + 16)
        f.write(bytes([0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]))
    p = run_conv("info", str(disk))
    assert p.returncode == 1
    assert p.stderr.strip() == "conv: MBR: the chain of extended boot records loops at sector 6144"


def test_primary_header_damage_warns_once_and_reads_the_backup(tmp_path):
    require_tool("sgdisk")
    disk = tmp_path / "sg.img"
    with open(disk, "wb") as f:
        f.truncate(8 * MiB)
        f.seek(MiB)
        f.write(b"partition one")
    run("sgdisk", "-o", "-n", "1:2048:+2M", str(disk))
    with open(disk, "r+b") as f:
        f.seek(512 + 24)  # my_lba: the header CRC no longer matches
        f.write(b"\x07")
    out = tmp_path / "one.img"
    p = run_conv("convert", f"raw:{disk} -> gpt[part=1] -> raw:{out}", check=True)
    assert p.stderr == "conv: warning: primary GPT header is corrupt, using the backup\n"
    assert out.read_bytes()[:13] == b"partition one"
