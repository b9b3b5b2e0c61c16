"""``conv build SPEC.toml``: multi-partition disks, judged by sgdisk, sfdisk,
fdisk, fsck.fat, e2fsck and qemu-img; spec errors name the line and key."""

from __future__ import annotations

import json
import os
import random
import textwrap

import pytest

from convcore import spec as specs
from convcore.errors import NoSpaceError, NotFoundError, UsageError
from convcore.format import Context
from convcore.testing import require_tool, run, run_conv

MiB = 1 << 20
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
HOME = "933AC7E1-2EB4-4F13-B844-0E14E2AEF915"
ROOT_X86_64 = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"


def _write(path, text: str) -> str:
    path.write_text(textwrap.dedent(text).lstrip())
    return str(path)


def _sfdisk(path) -> dict:
    require_tool("sfdisk")
    return json.loads(run("sfdisk", "--json", str(path)).stdout)["partitiontable"]


def _sgdisk_clean(path) -> None:
    require_tool("sgdisk")
    out = run("sgdisk", "-v", str(path)).stdout
    assert "No problems found" in out and "Caution" not in out and "Warning" not in out, out


def _part_bytes(disk, part: dict, length: int | None = None) -> bytes:
    with open(disk, "rb") as f:
        f.seek(part["start"] * 512)
        return f.read(part["size"] * 512 if length is None else length)


@pytest.fixture
def workdir(tmp_path):
    """A spec directory with a FAT image made by mkfs.fat and a data blob."""
    require_tool("mkfs.fat")
    run("mkfs.fat", "-C", "-n", "ESP", "-i", "12345678", str(tmp_path / "esp.img"), "8192")
    (tmp_path / "data.bin").write_bytes(random.Random(1).randbytes(3 * MiB + 5))
    return tmp_path


GPT_SPEC = """
    [disk]
    table = "gpt"
    size = "48M"
    output = "out/disk.img"

    [[partition]]
    name = "esp"
    type = "esp"
    size = "16M"
    attributes = ["required"]
    content = { type = "raw", source = "esp.img" }

    [[partition]]
    name = "data"
    type = "linux"
    content = { type = "raw", source = "data.bin" }

    [[partition]]
    name = "home"
    type = "home"
    size = "rest"
    attributes = ["no-auto"]
"""


def test_build_gpt_with_esp_from_a_fat_image(workdir):
    require_tool("fsck.fat")
    (workdir / "out").mkdir()
    spec = _write(workdir / "disk.toml", GPT_SPEC)
    specs.build(spec, Context(seed="build"))
    disk = workdir / "out" / "disk.img"
    assert os.path.getsize(disk) == 48 * MiB
    _sgdisk_clean(disk)
    table = _sfdisk(disk)
    rows = [(p["start"], p["size"], p["type"], p["name"], p.get("attrs", ""))
            for p in table["partitions"]]
    assert rows == [
        (2048, 16 * 2048, ESP, "esp", "RequiredPartition"),
        (17 * 2048, 4 * 2048, LINUX, "data", ""),  # 3 MiB + 5 bytes round up to 4 MiB
        (21 * 2048, 47 * 2048 - 21 * 2048, HOME, "home", "GUID:63"),
    ]
    esp = table["partitions"][0]
    assert _part_bytes(disk, esp, 8192 * 1024) == (workdir / "esp.img").read_bytes()
    assert _part_bytes(disk, table["partitions"][1], 3 * MiB + 5) == \
        (workdir / "data.bin").read_bytes()
    extracted = workdir / "esp-out.img"
    extracted.write_bytes(_part_bytes(disk, esp, 8192 * 1024))
    run("fsck.fat", "-n", str(extracted))
    assert os.listdir(workdir / "out") == ["disk.img"]


def test_build_is_reproducible_and_output_overrides(workdir):
    (workdir / "out").mkdir()
    spec = _write(workdir / "disk.toml", GPT_SPEC)
    specs.build(spec, Context(seed="same"), output=str(workdir / "a.img"))
    specs.build(spec, Context(seed="same"), output=str(workdir / "b.img"))
    assert (workdir / "a.img").read_bytes() == (workdir / "b.img").read_bytes()
    assert not (workdir / "out" / "disk.img").exists()


def test_build_mbr_with_logical_partitions(workdir):
    require_tool("fdisk")
    spec = _write(workdir / "dos.toml", """
        [disk]
        table = "mbr"
        output = "dos.img"

        [[partition]]
        type = "esp"
        bootable = true
        content = { type = "raw", source = "esp.img" }

        [[partition]]
        type = "swap"
        size = "2M"

        [[partition]]
        type = "linux"
        size = "1M"

        [[partition]]
        type = "lvm"
        size = "1M"

        [[partition]]
        type = "83"
        content = { type = "raw", source = "data.bin" }
    """)
    specs.build(spec, Context())
    disk = workdir / "dos.img"
    table = _sfdisk(disk)
    assert table["label"] == "dos"
    rows = [(p["start"], p["size"], p["type"], p.get("bootable", False))
            for p in table["partitions"]]
    assert rows == [
        (2048, 16384, "ef", True), (18432, 4096, "82", False), (22528, 2048, "83", False),
        (24576, 38912 - 24576, "5", False),  # extended: EBRs one MiB before each logical
        (26624, 2048, "8e", False), (30720, 4 * 2048, "83", False),
    ]
    fdisk = run("fdisk", "-l", str(disk)).stdout
    assert "Disklabel type: dos" in fdisk and "dos.img6" in fdisk
    assert _part_bytes(disk, table["partitions"][0], 8192 * 1024) == \
        (workdir / "esp.img").read_bytes()


def test_build_cli_writes_qcow2_by_suffix(workdir):
    require_tool("qemu-img")
    spec = _write(workdir / "disk.toml", GPT_SPEC.replace("out/disk.img", "disk.qcow2"))
    p = run_conv("build", spec, cwd=str(workdir))
    assert p.returncode == 0, p.stderr
    qcow2 = workdir / "disk.qcow2"
    run("qemu-img", "check", "-q", str(qcow2))
    info = json.loads(run("qemu-img", "info", "--output=json", str(qcow2)).stdout)
    assert info["format"] == "qcow2" and info["virtual-size"] == 48 * MiB
    raw = workdir / "disk.raw"
    run("qemu-img", "convert", "-O", "raw", str(qcow2), str(raw))
    _sgdisk_clean(raw)
    assert [p["name"] for p in _sfdisk(raw)["partitions"]] == ["esp", "data", "home"]
    assert sorted(os.listdir(workdir)) == ["data.bin", "disk.qcow2", "disk.raw", "disk.toml",
                                           "esp.img"]


def test_build_filesystem_partitions_from_a_directory(tmp_path, sample_dir):
    pytest.importorskip("conv_ext4.writer")
    require_tool("e2fsck", "sgdisk", "sfdisk")
    spec = _write(tmp_path / "disk.toml", f"""
        [disk]
        output = "disk.img"

        [[partition]]
        name = "root"
        type = "root-x86-64"
        content = {{ type = "ext4", source = "dir:{sample_dir}", options = {{ label = "root" }} }}
    """)
    specs.build(spec, Context(epoch=1_600_000_000))  # before the tree's times: they clamp
    disk = tmp_path / "disk.img"
    _sgdisk_clean(disk)
    (root,) = _sfdisk(disk)["partitions"]
    assert (root["type"], root["name"]) == (ROOT_X86_64, "root")
    part = tmp_path / "root.img"
    part.write_bytes(_part_bytes(disk, root))
    fsck = run("e2fsck", "-fn", str(part), check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    label = run("debugfs", "-R", "stats", str(part)).stdout
    assert "Filesystem volume name:   root" in label
    cat = run("debugfs", "-R", "cat /etc/hostname", str(part)).stdout
    assert cat == "conv-test\n"
    stat = run("debugfs", "-R", "stat /etc/hostname", str(part)).stdout
    assert " mtime: 0x5f5e1000:" in stat  # 1 600 000 000


def test_build_squashfs_partition_from_an_oci_layout(tmp_path, sample_dir):
    pytest.importorskip("conv_squashfs.writer")
    pytest.importorskip("conv_oci")
    require_tool("unsquashfs", "sgdisk", "sfdisk")
    run_conv("convert", f"dir:{sample_dir} -> oci:{tmp_path / 'layout'}", check=True)
    spec = _write(tmp_path / "disk.toml", """
        [disk]
        output = "disk.qcow2"
        container = "raw"

        [[partition]]
        name = "usr"
        type = "usr-x86-64"
        attributes = ["read-only"]
        content = { type = "squashfs", source = "oci:./layout", options = { comp = "zstd" } }

        [[partition]]
        name = "var"
        type = "var"
        size = "4M"
    """)
    specs.build(spec, Context())
    disk = tmp_path / "disk.qcow2"  # container = "raw" wins over the suffix
    with open(disk, "rb") as f:
        assert f.read(512)[510:] == b"\x55\xaa"
    _sgdisk_clean(disk)
    usr, var = _sfdisk(disk)["partitions"]
    assert (usr["type"], usr["name"], usr["attrs"]) == (
        "8484680C-9521-48C6-9C11-B0720656F69E", "usr", "GUID:60")
    assert (var["start"], var["size"]) == (usr["start"] + usr["size"], 4 * 2048)
    image = tmp_path / "usr.sqfs"
    image.write_bytes(_part_bytes(disk, usr))
    listing = run("unsquashfs", "-lls", str(image)).stdout
    assert "squashfs-root/etc/hostname" in listing
    assert "squashfs-root/usr/bin/tool" in listing
    out = tmp_path / "x"
    run("unsquashfs", "-no-progress", "-d", str(out), str(image), "etc/hostname")
    assert (out / "etc" / "hostname").read_text() == "conv-test\n"


def test_raw_content_from_a_qcow2_and_from_another_disks_partition(workdir):
    require_tool("qemu-img")
    run("qemu-img", "convert", "-O", "qcow2", str(workdir / "esp.img"),
        str(workdir / "esp.qcow2"))
    first = _write(workdir / "first.toml", GPT_SPEC.replace("out/disk.img", "first.img"))
    specs.build(first, Context())
    spec = _write(workdir / "second.toml", """
        [disk]
        output = "second.img"

        [[partition]]
        name = "from-qcow2"
        content = { type = "raw", source = "qcow2:esp.qcow2" }

        [[partition]]
        name = "from-disk"
        content = { type = "raw", source = "raw:first.img -> gpt[part=data]" }
    """)
    specs.build(spec, Context())
    disk = workdir / "second.img"
    _sgdisk_clean(disk)
    a, b = _sfdisk(disk)["partitions"]
    assert a["size"] == 8 * 2048 and b["size"] == 4 * 2048
    assert _part_bytes(disk, a) == (workdir / "esp.img").read_bytes()
    data = (workdir / "data.bin").read_bytes()
    assert _part_bytes(disk, b) == data + bytes(4 * MiB - len(data))


def test_content_too_big_for_its_partition_leaves_nothing(workdir):
    spec = _write(workdir / "disk.toml", """
        [disk]
        output = "disk.img"

        [[partition]]
        size = "1M"
        content = { type = "raw", source = "data.bin" }
    """)
    with pytest.raises(NoSpaceError, match="partition 1 is 1 MiB but its content needs "
                                           "3145733 bytes"):
        specs.build(spec, Context())
    assert sorted(os.listdir(workdir)) == ["data.bin", "disk.toml", "esp.img"]


# --------------------------------------------------------------------------
# Spec errors: one line naming the file, the line and the key


def _error(tmp_path, text: str) -> str:
    spec = _write(tmp_path / "bad.toml", text)
    with pytest.raises((UsageError, NotFoundError)) as e:
        specs.load(spec)
    message = str(e.value)
    assert "\n" not in message
    return message.replace(spec, "bad.toml")


BASE = """
    [disk]
    table = "gpt"
    output = "disk.img"

    [[partition]]
    name = "esp"
    size = "8M"

    [[partition]]
    name = "root"
    type = "linux"
    size = "8M"
"""


@pytest.mark.parametrize(("old", "new", "expected"), [
    ('table = "gpt"', 'table = "apm"',
     "bad.toml:2: disk.table: unknown format 'apm'"),
    ('table = "gpt"', 'table = "ext4"',
     "bad.toml:2: disk.table: ext4 is not a partition table (use gpt or mbr)"),
    ('output = "disk.img"', 'output = "disk.img"\nsize = "lots"',
     "bad.toml:4: disk.size: not a size: 'lots'"),
    ('output = "disk.img"', 'output = "disk.img"\nsector_size = 1024',
     "bad.toml:4: disk.sector_size: 1024 is not one of 512, 4096"),
    ('output = "disk.img"', 'output = "disk.img"\ncolour = "red"',
     "bad.toml:4: disk.colour: unknown key (allowed: table, size"),
    ('output = "disk.img"', 'output = "disk.img"\ncontainer = "tar"',
     "bad.toml:4: disk.container: tar cannot hold a disk (use raw or qcow2)"),
    ('type = "linux"', 'type = "rooot"',
     "bad.toml:11: partition[2].type: gpt: partition 2 (root): unknown partition type 'rooot'"),
    ('type = "linux"', 'type = "linux"\nflavour = 3',
     "bad.toml:12: partition[2].flavour: unknown key (allowed: name, type"),
    ('type = "linux"\nsize = "8M"', 'type = "linux"\nsize = "rest"',
     "bad.toml:12: partition[2].size: gpt: partition 2 (root) has size=rest and no content"),
    ('type = "linux"\nsize = "8M"', 'type = "linux"',
     "bad.toml:9: partition[2]: a partition without content needs a size"),
    ('size = "8M"\n\n', 'size = "-8M"\n\n',
     "bad.toml:7: partition[1].size: not a size: '-8M'"),
    ('name = "esp"', 'name = "esp"\nattributes = ["shiny"]',
     "bad.toml:7: partition[1].attributes: gpt: partition 1 (esp): unknown partition "
     "attribute 'shiny'"),
])
def test_spec_errors_name_line_and_key(tmp_path, old, new, expected):
    text = textwrap.dedent(BASE).lstrip()
    assert old in text
    message = _error(tmp_path, text.replace(old, new, 1))
    assert message.startswith(expected), message


def test_spec_content_errors_name_line_and_key(tmp_path):
    base = textwrap.dedent(BASE).lstrip()
    message = _error(tmp_path, base + 'content = { type = "raw", source = "missing.img" }\n')
    assert message.startswith("bad.toml:13: partition[2].content.source: ")
    assert message.endswith("missing.img: no such file or directory")
    message = _error(tmp_path, base + 'content = { type = "qcow2", source = "x" }\n')
    assert message.startswith("bad.toml:13: partition[2].content.type: qcow2 does not build a "
                              "filesystem")
    (tmp_path / "tree").mkdir()
    message = _error(tmp_path, base + "[partition.content]\ntype = \"ext4\"\n"
                     "source = \"dir:tree\"\noptions = { blocksize = 4096 }\n")
    assert message.startswith("bad.toml:16: partition[2].content.options.blocksize: ext4: "
                              "unknown option 'blocksize'")
    message = _error(tmp_path, base + 'content = { type = "ext4", source = "nope:tree" }\n')
    assert message.startswith("bad.toml:13: partition[2].content.source: ")
    assert "unknown format 'nope'" in message


def test_spec_file_errors(tmp_path):
    message = _error(tmp_path, "[disk\n")
    assert message.startswith("bad.toml: not valid TOML: ")
    message = _error(tmp_path, '[disk]\noutput = "x.img"\n')
    assert message == "bad.toml:1: disk: a spec needs at least one [[partition]]"
    with pytest.raises(NotFoundError, match="no such spec file"):
        specs.load(str(tmp_path / "none.toml"))


def test_missing_output_is_one_line(tmp_path):
    spec = _write(tmp_path / "disk.toml", """
        [[partition]]
        size = "1M"
    """)
    with pytest.raises(UsageError, match="no output path"):
        specs.build(spec, Context())
    specs.build(spec, Context(), output=str(tmp_path / "given.img"))
    assert os.path.getsize(tmp_path / "given.img") == 3 * MiB


def test_cli_spec_error_is_one_line(tmp_path):
    spec = _write(tmp_path / "disk.toml", """
        [disk]
        output = "disk.img"

        [[partition]]
        size = "1M"
        type = "nonsense"
    """)
    p = run_conv("build", spec)
    assert p.returncode == 2
    assert p.stderr.strip() == (f"conv: {spec}:6: partition[1].type: gpt: partition 1: "
                                "unknown partition type 'nonsense' (use a GUID or a name: "
                                "esp, xbootldr, bios-boot, linux, swap, home, srv, var, tmp, "
                                "linux-lvm, linux-raid, linux-luks, root-ARCH, usr-ARCH such "
                                "as root-x86-64)")
    assert not (tmp_path / "disk.img").exists()


def test_spec_error_lines_inside_subtables(tmp_path):
    (tmp_path / "tree").mkdir()
    message = _error(tmp_path, """
        [disk]
        output = "x.img"
        container = "qcow2"
        [disk.container_options]
        compress = "lz77"

        [[partition]]
        size = "1M"
    """)
    assert message.startswith("bad.toml:5: disk.container_options.compress: qcow2[compress=...]: "
                              "'lz77' is not one of none, zlib, zstd")
    message = _error(tmp_path, """
        [disk]
        output = "x.img"

        [[partition]]
        name = "a"
        [partition.content]
        type = "ext4"
        source = "dir:tree"
        [partition.content.options]
        label = "root"
        colour = "red"
    """)
    assert message.startswith("bad.toml:11: partition[1].content.options.colour: ext4: "
                              "unknown option 'colour'")
