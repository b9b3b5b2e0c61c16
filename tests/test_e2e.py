"""End to end: whole chains through several plugins, judged by the reference
tools (e2fsck, unsquashfs, qemu-img, sfdisk, GNU tar), as a user would."""

from __future__ import annotations

import json
import os
import subprocess

from convcore.pipeline import open_tree
from convcore.testing import (
    normalize_hardlinks,
    require_tool,
    run,
    run_conv,
    scan_dir,
    scan_tree,
)

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(os.path.dirname(HERE), "examples", "rootfs.tar.gz")


def _comparable(scan: dict, seconds: bool = False) -> dict:
    """What survives every filesystem: drop lost+found and the root entry.
    ``seconds``: compare mtimes at second resolution (squashfs stores
    seconds; debugfs rdump restores seconds)."""
    scan = normalize_hardlinks(scan)
    scan.pop("lost+found", None)
    scan.pop("", None)
    if seconds:
        for rec in scan.values():
            rec["mtime_ns"] -= rec["mtime_ns"] % 1_000_000_000
    return scan


def _extract_partition(disk: str, number: int, out: str) -> None:
    table = json.loads(run("sfdisk", "--json", disk).stdout)["partitiontable"]
    sector = table.get("sectorsize", 512)
    part = table["partitions"][number - 1]
    with open(disk, "rb") as src, open(out, "wb") as dst:
        src.seek(part["start"] * sector)
        remaining = part["size"] * sector
        while remaining:
            chunk = src.read(min(remaining, 1 << 20))
            assert chunk, "disk shorter than its partition table says"
            dst.write(chunk)
            remaining -= len(chunk)


def test_readme_quick_start_chain(tmp_path):
    """The README's first command: example tar -> ext4 -> gpt -> qcow2."""
    require_tool("qemu-img", "sfdisk", "e2fsck", "debugfs")
    out = tmp_path / "disk.qcow2"
    run_conv("convert", f"tar:{EXAMPLE} -> ext4 -> gpt -> qcow2:{out}", check=True)
    run("qemu-img", "check", "-q", str(out))
    raw = tmp_path / "disk.raw"
    run("qemu-img", "convert", "-O", "raw", str(out), str(raw))
    table = json.loads(run("sfdisk", "--json", str(raw)).stdout)["partitiontable"]
    assert table["label"] == "gpt" and len(table["partitions"]) == 1
    part = tmp_path / "p1.img"
    _extract_partition(str(raw), 1, str(part))
    fsck = run("e2fsck", "-fn", str(part), check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    cat = run("debugfs", "-R", "cat /etc/hostname", str(part))
    assert cat.stdout == "conv-example\n"
    info = json.loads(run_conv("info", "--json", str(out), check=True).stdout)
    assert info["container"]["format"] == "qcow2"
    (p1,) = info["table"]["partitions"]
    assert info["table"]["format"] == "gpt"
    assert p1["filesystem"]["format"] in ("ext4", "ext2", "ext3")


def test_dir_ext4_gpt_raw_partition_passes_e2fsck(tmp_path, sample_dir):
    require_tool("e2fsck", "sfdisk", "debugfs")
    disk = tmp_path / "disk.img"
    run_conv("convert", f"dir:{sample_dir} -> ext4 -> gpt -> raw:{disk}", check=True)
    part = tmp_path / "p1.img"
    _extract_partition(str(disk), 1, str(part))
    fsck = run("e2fsck", "-fn", str(part), check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    out = tmp_path / "rdump"
    out.mkdir()
    run("debugfs", "-R", f"rdump / {out}", str(part))
    # rdump is lossy (whole seconds, no xattrs, devices or fifos, no setuid or
    # sticky bits, no symlink owners, hardlinks as copies): it judges names,
    # types and contents; debugfs stat and ea_list judge the rest below, and
    # our reader (tested on mke2fs images) compares every field.
    keep = ("type", "size", "sha256", "target")
    src = scan_dir(sample_dir)
    want = {p: {k: v for k, v in r.items() if k in keep} for p, r in src.items()
            if r["type"] not in (0o020000, 0o060000, 0o010000) and p}
    got = {p: {k: v for k, v in r.items() if k in keep}
           for p, r in scan_dir(str(out)).items() if p and p != "lost+found"}
    assert got == want
    tree = open_tree(f"raw:{disk} -> gpt[part=1] -> ext4")
    assert _comparable(scan_tree(tree)) == _comparable(src)
    stat = run("debugfs", "-R", "stat /etc/hostname", str(part)).stdout
    assert "mtime: 0x6553f100:1d6f3454" in stat, stat
    stat = run("debugfs", "-R", "stat /etc/long-link", str(part)).stdout
    assert "mtime: 0x6553f100:1d6f3454" in stat, stat
    tool = run("debugfs", "-R", "stat /usr/bin/tool", str(part)).stdout
    inode = tool.split()[1]
    assert "Mode:  04755" in tool and "Links: 2" in tool, tool
    link = run("debugfs", "-R", "stat /usr/bin/tool-hardlink", str(part)).stdout
    assert link.split()[1] == inode
    if os.geteuid() == 0:
        null = run("debugfs", "-R", "stat /var/null", str(part)).stdout
        assert "Type: character special" in null and "major/minor number: 01:03" in null, null
    for path, rec in src.items():
        if rec["xattrs"]:
            listing = run("debugfs", "-R", f"ea_list /{path}", str(part)).stdout
            for name, value in rec["xattrs"].items():
                assert f"{name} ({len(value)})" in listing, (path, listing)


def test_image_detection_round_trip_to_tar_and_dir(tmp_path, sample_dir):
    """qcow2 holding a GPT disk holding ext4, read back by image: detection."""
    require_tool("tar")
    disk = tmp_path / "disk.qcow2"
    run_conv("convert", f"dir:{sample_dir} -> ext4 -> gpt -> qcow2[compress=zstd]:{disk}",
             check=True)
    out = tmp_path / "out"
    run_conv("convert", f"image:{disk} -> dir:{out}", check=True)
    assert _comparable(scan_dir(str(out))) == _comparable(scan_dir(sample_dir))
    tarball = tmp_path / "root.tar.zst"
    run_conv("convert", f"image:{disk} -> tar:{tarball}", check=True)
    listing = run("tar", "--zstd", "-tvf", str(tarball)).stdout
    assert "etc/hostname" in listing and "usr/bin/tool" in listing


def test_ls_and_cat_inside_a_partitioned_qcow2(tmp_path, sample_dir):
    disk = tmp_path / "disk.qcow2"
    run_conv("convert", f"dir:{sample_dir} -> ext4 -> gpt -> qcow2:{disk}", check=True)
    p = run_conv("cat", str(disk), "/etc/hostname", check=True)
    assert p.stdout == "conv-test\n"
    rows = json.loads(run_conv("ls", "--json", str(disk), "/usr/bin", check=True).stdout)
    tool = {r["path"]: r for r in rows}["/usr/bin/tool"]
    assert tool["mode"] & 0o7777 == 0o4755 and tool["size"] == os.path.getsize(
        os.path.join(sample_dir, "usr/bin/tool"))
    p = run_conv("ls", f"qcow2:{disk} -> gpt[part=1] -> ext4", "/etc", check=True)
    assert "short-link -> hostname" in p.stdout


def test_squashfs_of_a_dir_extracts_exactly(tmp_path, sample_dir):
    require_tool("unsquashfs")
    img = tmp_path / "root.sqfs"
    run_conv("convert", f"dir:{sample_dir} -> squashfs[comp=zstd] -> raw:{img}", check=True)
    out = tmp_path / "x"
    run("unsquashfs", "-no-progress", "-d", str(out), str(img))
    assert _comparable(scan_dir(str(out)), True) == _comparable(scan_dir(sample_dir), True)


def test_same_chain_twice_gives_identical_bytes(tmp_path, sample_dir):
    # Through a tar: a directory source's atimes move each time it is read.
    src = tmp_path / "src.tar"
    run_conv("convert", f"dir:{sample_dir} -> tar:{src}", check=True)
    for chain in ("ext4 -> gpt -> qcow2", "squashfs -> raw"):
        outs = []
        for i in range(2):
            out = tmp_path / f"out{i}"
            run_conv("convert", f"tar:{src} -> {chain}:{out}", check=True)
            outs.append(out.read_bytes())
            out.unlink()
        assert outs[0] == outs[1], chain


def test_too_small_size_is_one_line_and_leaves_nothing(tmp_path, sample_dir):
    out = tmp_path / "small.img"
    p = run_conv("convert", f"dir:{sample_dir} -> ext4[size=256K] -> raw:{out}")
    assert p.returncode != 0
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr, p.stderr
    assert os.listdir(tmp_path) == []


def test_truncated_image_input_is_one_line(tmp_path, sample_dir):
    disk = tmp_path / "disk.qcow2"
    run_conv("convert", f"dir:{sample_dir} -> ext4 -> gpt -> qcow2:{disk}", check=True)
    before = disk.read_bytes()
    cut = tmp_path / "cut.qcow2"
    cut.write_bytes(before[: len(before) // 3])
    p = run_conv("convert", f"image:{cut} -> tar:{tmp_path}/out.tar")
    assert p.returncode != 0
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr, p.stderr
    assert not (tmp_path / "out.tar").exists()
    assert disk.read_bytes() == before


def test_oci_layout_to_ext4_passes_e2fsck(tmp_path, sample_dir):
    require_tool("umoci", "e2fsck")
    layout = tmp_path / "layout"
    run_conv("convert", f"dir:{sample_dir} -> oci[ref=latest]:{layout}", check=True)
    img = tmp_path / "root.img"
    run_conv("convert", f"oci:{layout} -> ext4 -> raw:{img}", check=True)
    fsck = subprocess.run(["e2fsck", "-fn", str(img)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout


def test_default_uuids_follow_the_input_and_seed_overrides(tmp_path):
    """Without --seed, two different trees get different filesystem UUIDs
    (two disks on one machine must not collide), the same tree the same one;
    --seed makes them whatever the input."""
    def fs_uuid(img) -> bytes:
        with open(img, "rb") as f:
            f.seek(1024 + 104)
            return f.read(16)

    trees = []
    for name in ("a", "b"):
        root = tmp_path / name
        (root / "etc").mkdir(parents=True)
        (root / "etc" / "hostname").write_text(name)
        trees.append(root)
    uuids = {}
    for name, root, seed in (("a1", trees[0], None), ("a2", trees[0], None),
                             ("b", trees[1], None), ("sa", trees[0], "s"),
                             ("sb", trees[1], "s")):
        img = tmp_path / f"{name}.img"
        args = (["--seed", seed] if seed else []) + ["convert", f"dir:{root} -> ext4:{img}"]
        run_conv(*args, check=True)
        uuids[name] = fs_uuid(img)
    assert uuids["a1"] == uuids["a2"] != uuids["b"]
    assert uuids["sa"] == uuids["sb"]


def test_raw_and_qcow2_outputs_hold_the_same_filesystem(tmp_path):
    # A tar source: reading a directory would move its atimes between runs.
    require_tool("qemu-img")
    raw, qcow = tmp_path / "a.img", tmp_path / "a.qcow2"
    run_conv("convert", f"tar:{EXAMPLE} -> ext4 -> gpt -> raw:{raw}", check=True)
    run_conv("convert", f"tar:{EXAMPLE} -> ext4 -> gpt -> qcow2:{qcow}", check=True)
    run("qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(raw), str(qcow))
