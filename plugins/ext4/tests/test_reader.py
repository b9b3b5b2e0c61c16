"""The ext4 reader against images that mke2fs -d made (e2fsprogs judges them
clean with e2fsck -fn), compared with the source directory; and against
images damaged on purpose."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import struct
import subprocess

import pytest
from conv_ext4.reader import Ext4, decode

from convcore.blockdev import FileVolume
from convcore.errors import CorruptError, NotFoundError, UnsupportedError
from convcore.testing import (
    damage_rounds,
    flip_byte,
    is_root,
    make_sample_dir,
    normalize_hardlinks,
    require_tool,
    run,
    scan_dir,
    scan_tree,
    xattrs_supported,
)
from convcore.tree import Kind, SegmentData

XATTR_PREFIXES = ("user.", "security.", "trusted.", "system.posix_acl")
HUGE_SIZE = 5 << 30
HUGE_TAIL_OFFSET = (9 << 29) + 12345  # 4.5 GiB and a bit: past 32-bit offsets
FRAG_CHUNKS = 8
FRAG_STRIDE = 64 << 10
DEEP_CHUNKS = 400
BIG_DIR_ENTRIES = 3000
DIR_TIME_NS = 1_600_000_000_987_654_321
UUID = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
LABEL = "conv-reader"

#: name -> (mke2fs arguments, expected type, block size)
VARIANTS = {
    "ext4-4k": (["-t", "ext4", "-b", "4096"], "ext4", 4096),
    "ext4-1k": (["-t", "ext4", "-b", "1024"], "ext4", 1024),
    "ext4-2k-32bit": (["-t", "ext4", "-b", "2048", "-O", "^64bit"], "ext4", 2048),
    "ext4-nocsum": (["-t", "ext4", "-b", "4096", "-O", "^metadata_csum"], "ext4", 4096),
    "ext4-gdtcsum": (["-t", "ext4", "-b", "1024", "-O", "^metadata_csum,uninit_bg"], "ext4", 1024),
    "ext4-inline": (["-t", "ext4", "-b", "4096", "-O", "inline_data"], "ext4", 4096),
    "ext4-nojournal": (["-t", "ext4", "-b", "4096", "-O", "^has_journal"], "ext4", 4096),
    "ext3-1k": (["-t", "ext3", "-b", "1024"], "ext3", 1024),
    "ext3-4k": (["-t", "ext3", "-b", "4096"], "ext3", 4096),
    "ext2-1k": (["-t", "ext2", "-b", "1024"], "ext2", 1024),
    "ext2-2k": (["-t", "ext2", "-b", "2048"], "ext2", 2048),
}


def _acl_xattr(*entries: tuple[int, int, int]) -> bytes:
    """A POSIX ACL in the form setxattr(2) takes (version 2)."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def _fill_source(root: str) -> dict:
    """The sample tree plus a big directory, a fragmented file, an ACL and a
    > 4 GiB sparse file; returns the expected scan (taken before the huge file
    is added, so the comparison does not hash 5 GiB of zeros per image)."""
    make_sample_dir(root)
    big = os.path.join(root, "big")
    os.mkdir(big)
    for i in range(BIG_DIR_ENTRIES):
        open(os.path.join(big, f"n{i:05d}-{'y' * (i % 23)}"), "w").close()
    with open(os.path.join(root, "var", "frag.bin"), "wb") as f:
        for i in range(FRAG_CHUNKS):
            f.seek(i * FRAG_STRIDE)
            f.write(bytes([65 + i]) * 3000)
    with open(os.path.join(root, "etc", "inline-100"), "wb") as f:
        f.write(bytes(range(100)))
    with open(os.path.join(root, "var", "deep.bin"), "wb") as f:
        for i in range(DEEP_CHUNKS):  # more extents than a 1 KiB-block depth-1 tree holds
            f.seek(i * 8192)
            f.write(i.to_bytes(2, "little") * 500)
    if xattrs_supported(root):
        acl = _acl_xattr((1, 6, 0xFFFFFFFF), (2, 4, 1234), (4, 4, 0xFFFFFFFF),
                         (0x10, 4, 0xFFFFFFFF), (0x20, 0, 0xFFFFFFFF))
        try:
            os.setxattr(os.path.join(root, "etc", "hostname"), "system.posix_acl_access", acl)
        except OSError:
            pass  # no ACL support on the host's tmp filesystem
        if is_root():
            os.setxattr(os.path.join(root, "var", "frag.bin"), "trusted.note", b"t" * 40)
    _fix_dir_times(root)
    expected = normalize_hardlinks(scan_dir(root, xattr_prefixes=XATTR_PREFIXES))
    with open(os.path.join(root, "var", "huge.img"), "wb") as f:
        f.write(b"head")
        f.seek(HUGE_TAIL_OFFSET)
        f.write(b"tail" * 1000)
        f.truncate(HUGE_SIZE)
    os.utime(os.path.join(root, "var", "huge.img"), ns=(DIR_TIME_NS, DIR_TIME_NS))
    _fix_dir_times(root)
    for rec in expected.values():
        # mke2fs 1.47 -d stores whole seconds (no i_*time_extra nanoseconds).
        rec["mtime_ns"] -= rec["mtime_ns"] % 1_000_000_000
    del expected[""]["mtime_ns"]  # mke2fs stamps the root with the current time
    return expected


def _fix_dir_times(root: str) -> None:
    for dirpath, _dirs, _files in os.walk(root):
        os.utime(dirpath, ns=(DIR_TIME_NS, DIR_TIME_NS))


@pytest.fixture(scope="module")
def source_and_scan(tmp_path_factory) -> tuple[str, dict]:
    root = str(tmp_path_factory.mktemp("src").absolute() / "tree")
    return root, _fill_source(root)


@pytest.fixture(scope="module")
def source(source_and_scan) -> str:
    return source_and_scan[0]


def _mkfs(source: str, image: str, args: list[str], size: str = "48M") -> str:
    require_tool("mke2fs", "e2fsck")
    run("mke2fs", "-q", "-F", "-N", "4096", "-L", LABEL, "-U", UUID, "-E",
        "hash_seed=" + UUID, *args, "-d", source, image, size)
    # mke2fs -d inserts names linearly; e2fsck -D builds the htree indexes.
    p = run("e2fsck", "-fyD", image, check=False)
    assert p.returncode in (0, 1), p.stdout + p.stderr
    p = run("e2fsck", "-fn", image, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    return image


@pytest.fixture(scope="module")
def variant_images(source, tmp_path_factory):
    """Each variant's image, made once per module on first use (tests that
    pick variants with indirect parametrization share them too)."""
    made: dict[str, tuple] = {}

    def get(name: str) -> tuple:
        if name not in made:
            args, fs_type, block_size = VARIANTS[name]
            image = str(tmp_path_factory.mktemp(name) / "fs.img")
            _mkfs(source, image, args)
            made[name] = (name, image, FileVolume(image), fs_type, block_size)
        return made[name]

    yield get
    for entry in made.values():
        entry[2].close()


@pytest.fixture(params=list(VARIANTS))
def variant(request, variant_images):
    return variant_images(request.param)


def _huge_size(image: str) -> int:
    """i_size of the huge file as debugfs reads it. mke2fs 1.47.0 -d with
    inline_data ends the file at its last data block, not at the source's
    size (the trailing hole is lost), so debugfs is the judge here."""
    require_tool("debugfs")
    out = run("debugfs", "-R", "stat /var/huge.img", image).stdout
    size = int(re.search(r"Size: (\d+)", out).group(1))
    assert size == HUGE_SIZE or "inline_data" in run("dumpe2fs", "-h", image).stdout
    return size


def _inline_quirk(expected: dict, source: str, image: str) -> dict:
    """mke2fs 1.47.0 -d with inline_data drops a sparse file's trailing hole:
    expect the size debugfs reports, and the source's bytes up to it."""
    expected = {p: dict(rec) for p, rec in expected.items()}
    out = run("debugfs", "-R", "stat /var/sparse.img", image).stdout
    size = int(re.search(r"Size: (\d+)", out).group(1))
    assert size < 3 << 20  # the quirk is still there; drop this when it is not
    with open(os.path.join(source, "var", "sparse.img"), "rb") as f:
        data = f.read(size)
    expected["var/sparse.img"].update(size=size, sha256=hashlib.sha256(data).hexdigest())
    return expected


def _actual(tree, image: str) -> dict:
    """The tree's scan without the huge file (its data is checked by
    test_matrix_holes_stay_holes)."""
    huge = tree.get("var/huge.img")
    assert (huge.kind, huge.size, huge.mode, huge.mtime_ns) == (
        Kind.FILE, _huge_size(image), 0o644, DIR_TIME_NS - DIR_TIME_NS % 1_000_000_000)
    tree.remove("var/huge.img")
    scan = normalize_hardlinks(scan_tree(tree, xattr_prefixes=XATTR_PREFIXES))
    lost = scan.pop("lost+found")
    assert lost["type"] == stat.S_IFDIR and lost["mode"] == 0o700
    del scan[""]["mtime_ns"]
    return scan


def test_matrix_matches_source(variant, source_and_scan):
    name, image, volume, _fs_type, _bs = variant
    tree = decode(volume, {}, None)
    expected, actual = source_and_scan[1], _actual(tree, image)
    if name == "ext4-inline":
        expected = _inline_quirk(expected, source_and_scan[0], image)
    assert sorted(actual) == sorted(expected)
    for path in expected:
        assert actual[path] == expected[path], path


def test_matrix_info(variant):
    require_tool("dumpe2fs")
    name, _image, volume, fs_type, block_size = variant
    info = decode(volume, {}, None).info
    assert info["type"] == fs_type
    assert info["block_size"] == block_size
    assert info["label"] == LABEL
    assert info["uuid"] == UUID
    assert info["blocks"] * block_size == 48 << 20
    header = run("dumpe2fs", "-h", _image).stdout
    facts = dict(re.findall(r"^([A-Za-z ]+):\s+(\S.*)$", header, re.M))
    assert info["inodes"] == int(facts["Inode count"])
    assert info["blocks"] == int(facts["Block count"])
    assert info["free_blocks"] == int(facts["Free blocks"])
    assert info["free_inodes"] == int(facts["Free inodes"])
    assert info["inode_size"] == int(facts["Inode size"])
    assert set(info["features"]) >= set(facts["Filesystem features"].split())
    assert ("inline_data" in info["features"]) == (name == "ext4-inline")
    assert ("metadata_csum" in info["features"]) == (
        fs_type == "ext4" and name not in ("ext4-nocsum", "ext4-gdtcsum"))


def test_matrix_hardlinks_point_backwards(variant):
    tree = decode(variant[2], {}, None)
    seen = set()
    links = {}
    for entry in tree:
        if entry.link is not None:
            assert entry.link in seen, f"{entry.path} links forward to {entry.link}"
            links[entry.path] = entry.link
        seen.add(entry.path)
    assert links == {"usr/bin/tool-hardlink": "usr/bin/tool",
                     "var/hostname-link": "etc/hostname"}


def test_matrix_holes_stay_holes(variant, source, tmp_path):
    _name, image, volume, _fs_type, bs = variant
    tree = decode(volume, {}, None)
    huge = tree.get("var/huge.img")
    assert huge.size == _huge_size(image)
    assert isinstance(huge.data, SegmentData)
    extents = list(huge.data.extents())
    assert sum(n for _, n in extents) <= 2 * bs + 4096 + bs
    assert extents[0][0] == 0 and extents[-1][0] <= HUGE_TAIL_OFFSET
    assert huge.data.read(0, 4) == b"head"
    assert huge.data.read(HUGE_TAIL_OFFSET - 2, 4006) == b"\0\0" + b"tail" * 1000 + bytes(4)
    assert huge.data.read(huge.size - 10, 100) == bytes(10)
    # Copying keeps holes: a sparse copy with the same bytes.
    frag = tree.get("var/frag.bin")
    ranges: list[list[int]] = []
    for off, n in frag.data.extents():  # physical runs; join those adjacent in the file
        if ranges and ranges[-1][0] + ranges[-1][1] == off:
            ranges[-1][1] += n
        else:
            ranges.append([off, n])
    chunk = -(-3000 // bs) * bs
    assert ranges == [[i * FRAG_STRIDE, min(chunk, frag.size - i * FRAG_STRIDE)]
                      for i in range(FRAG_CHUNKS)]
    out = str(tmp_path / "copy")
    fd = os.open(out, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, frag.size)
        frag.data.copy_to(fd, 0)
    finally:
        os.close(fd)
    with open(out, "rb") as f, open(os.path.join(source, "var", "frag.bin"), "rb") as g:
        assert f.read() == g.read()
    assert os.stat(out).st_blocks * 512 <= FRAG_CHUNKS * (3000 + 2 * bs)


@pytest.mark.parametrize("variant", [n for n, v in VARIANTS.items() if v[1] == "ext4"],
                         indirect=True)
def test_extent_tree_depth(variant, source):
    _name, _image, volume, _fs_type, bs = variant
    node = Ext4(volume).get("var/deep.bin")
    depth = struct.unpack_from("<H", node.i_block, 6)[0]
    # 4 extents fit in the inode, (bs - 12) / 12 in each tree block.
    assert depth == (2 if 4 * (bs - 12) // 12 < DEEP_CHUNKS else 1)
    with node.open() as f, open(os.path.join(source, "var", "deep.bin"), "rb") as g:
        assert f.read() == g.read()


def test_big_directory_is_indexed_and_complete(variant, source):
    _name, image, volume, _fs_type, _bs = variant
    fs = Ext4(volume)
    big = fs.get("big")
    assert big.flags & 0x1000, "e2fsck -D should have built an htree"
    names = big.listdir()
    assert sorted(names) == sorted(os.listdir(os.path.join(source, "big")))
    assert len(set(names.values())) == BIG_DIR_ENTRIES
    assert fs.get("big/n02999-" + "y" * (2999 % 23)).ino == names["n02999-" + "y" * (2999 % 23)]


@pytest.mark.parametrize("variant", ["ext4-inline"], indirect=True)
def test_inline_data_is_inline(variant):
    fs = Ext4(variant[2])
    hostname = fs.get("etc/hostname")
    assert hostname.inline
    assert hostname.open().read() == b"conv-test\n"
    spilled = fs.get("etc/inline-100")  # 60 bytes in i_block, 40 in system.data
    assert spilled.inline and "system.data" not in spilled.xattrs
    assert spilled.open().read() == bytes(range(100))
    assert fs.get("var/lib/deep/er").inline  # a small directory lives in its inode
    assert fs.get("var/lib/deep/er").listdir() == {"still": fs.get("var/lib/deep/er/still").ino}


class _closing:
    def __init__(self, volume):
        self.volume = volume

    def __enter__(self):
        return self.volume

    def __exit__(self, *exc):
        self.volume.close()


def test_dissect_api(variant, source):
    fs = Ext4(variant[2])
    assert fs.get("/etc/hostname").open().read() == b"conv-test\n"
    with fs.get("usr/bin/tool").open() as f:
        f.seek(4)
        assert f.read(3) == bytes([0, 1, 2])
    assert fs.get("etc/long-link").readlink() == os.readlink(
        os.path.join(source, "etc", "long-link"))
    assert set(fs.root.listdir()) == set(os.listdir(source)) | {"lost+found"}
    assert fs.get("usr/bin/tool").ino == fs.get("usr/bin/tool-hardlink").ino
    assert fs.get("usr/bin/tool").links == 2
    with pytest.raises(NotFoundError, match="/etc/nope"):
        fs.get("etc/nope")
    with pytest.raises(NotFoundError, match="not a directory"):
        fs.get("etc/hostname/x")


def test_xattr_value_in_its_own_inode(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    value = bytes(range(256)) * 15 + b"end"  # larger than a 1 KiB block
    try:
        os.setxattr(src / "f", "user.huge", value)
    except OSError:
        pytest.skip("the host filesystem cannot hold a 3.8 KiB user xattr")
    image = _mkfs(str(src), str(tmp_path / "ea.img"), ["-t", "ext4", "-b", "1024", "-O",
                                                        "ea_inode"], "8M")
    assert "user.huge (3843)" in _debugfs(image, "stat /f")
    with _closing(FileVolume(image)) as volume:
        tree = decode(volume, {}, None)
        assert tree.get("f").xattrs == {"user.huge": value}
        assert sorted(e.path for e in tree) == ["", "f", "lost+found"]


@pytest.mark.parametrize("block_size", ["1024", "4096"])
def test_bigalloc(small_source, tmp_path, block_size):
    # With 1 KiB blocks the first data block is 0 and the descriptors move to block 2.
    image = _mkfs(small_source, str(tmp_path / "bigalloc.img"),
                  ["-t", "ext4", "-b", block_size, "-O", "bigalloc", "-C", "16384"], "32M")
    with _closing(FileVolume(image)) as volume:
        assert "bigalloc" in Ext4(volume).info()["features"]
        _assert_same_as_source(decode(volume, {}, None), small_source)


def test_meta_bg_descriptors(small_source, tmp_path):
    # 32 groups of 256 blocks: descriptors spread over two meta groups.
    image = _mkfs(small_source, str(tmp_path / "metabg.img"),
                  ["-t", "ext4", "-b", "1024", "-g", "256", "-O", "meta_bg,^resize_inode"], "8M")
    with _closing(FileVolume(image)) as volume:
        fs = Ext4(volume)
        assert fs.groups_count == 32 and "meta_bg" in fs.info()["features"]
        _assert_same_as_source(decode(volume, {}, None), small_source)


def test_nanoseconds_epoch_bits_and_crtime(source, tmp_path):
    require_tool("debugfs")
    image = _mkfs(source, str(tmp_path / "times.img"), ["-t", "ext4"])
    # 2100-01-01 needs the epoch bits; then nanoseconds 123456789 with epoch 1.
    for cmd in ("sif /etc/hostname mtime @4102444800",
                f"sif /etc/hostname mtime_extra {123456789 << 2 | 1:#x}",
                "sif /etc/hostname atime @1000000000",
                f"sif /etc/hostname atime_extra {999999999 << 2:#x}",
                "sif /etc/hostname crtime @1234567890",
                f"sif /etc/hostname crtime_extra {7 << 2:#x}",
                "sif /etc/hostname ctime @2000000000"):
        run("debugfs", "-w", "-R", cmd, image)
    assert run("e2fsck", "-fn", image, check=False).returncode == 0
    with _closing(FileVolume(image)) as volume:
        entry = decode(volume, {}, None).get("etc/hostname")
    assert entry.mtime_ns == 4102444800 * 10**9 + 123456789
    assert entry.atime_ns == 1000000000 * 10**9 + 999999999
    assert entry.crtime_ns == 1234567890 * 10**9 + 7
    assert entry.ctime_ns == 2000000000 * 10**9


@pytest.mark.parametrize("variant", ["ext4-4k", "ext2-1k"], indirect=True)
def test_cli_convert_to_dir_and_tar(variant, source_and_scan, tmp_path):
    require_tool("tar")
    name, image, _volume, _fs_type, _bs = variant
    out = tmp_path / "out"
    run("conv", "convert", f"raw:{image} -> ext4 -> dir:{out}")
    expected = {p: dict(rec) for p, rec in source_and_scan[1].items()}
    huge = os.lstat(out / "var" / "huge.img")
    assert (huge.st_size, huge.st_blocks * 512 < (1 << 20)) == (HUGE_SIZE, True)
    os.unlink(out / "var" / "huge.img")
    os.utime(out / "var", ns=(DIR_TIME_NS // 10**9 * 10**9,) * 2)
    actual = normalize_hardlinks(scan_dir(str(out), xattr_prefixes=XATTR_PREFIXES))
    assert actual.pop("lost+found")["type"] == stat.S_IFDIR
    del actual[""]["mtime_ns"]
    if not xattrs_supported(str(tmp_path)):
        for rec in expected.values():
            rec["xattrs"] = {}
    assert actual == expected
    tar_path = tmp_path / "out.tar"
    run("conv", "convert", f"image:{image} -> tar:{tar_path}")
    listing = run("tar", "--numeric-owner", "-tvf", str(tar_path)).stdout
    mode = stat.filemode(os.lstat(os.path.join(source_and_scan[0], "etc", "hostname")).st_mode)
    assert re.search(rf"^{mode} 1000/1000 +10 2023-11-14 .* etc/hostname$", listing, re.M)
    assert re.search(rf"^h{mode[1:]} 1000/1000 .* var/hostname-link link to etc/hostname$",
                     listing, re.M)
    assert re.search(rf"^-rw-r--r-- 0/0 +{HUGE_SIZE} .* var/huge.img$", listing, re.M)


@pytest.mark.parametrize("variant", ["ext4-4k", "ext3-1k"], indirect=True)
def test_round_trip_through_tar_and_conv_writer(variant, tmp_path):
    """mke2fs image -> tar -> ext4 written by conv: e2fsck finds the copy
    clean and it reads back exactly as the original."""
    _name, image, volume, _fs_type, _bs = variant
    tar_path, copy = tmp_path / "fs.tar", tmp_path / "copy.img"
    run("conv", "convert", f"raw:{image} -> ext4 -> tar:{tar_path}")
    run("conv", "convert", f"tar:{tar_path} -> ext4 -> raw:{copy}")
    fsck = run("e2fsck", "-fn", str(copy), check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    with _closing(FileVolume(str(copy))) as copied:
        original, again = decode(volume, {}, None), decode(copied, {}, None)
        for tree in (original, again):
            huge = tree.get("var/huge.img").data
            assert huge.size == HUGE_SIZE and huge.read(0, 4) == b"head"
            assert huge.read(HUGE_TAIL_OFFSET, 4000) == b"tail" * 1000
            assert sum(n for _, n in huge.extents()) < 1 << 20  # still sparse
            tree.remove("var/huge.img")  # not 5 GiB of hashing below
        assert scan_tree(again, xattr_prefixes=XATTR_PREFIXES) == scan_tree(
            original, xattr_prefixes=XATTR_PREFIXES)


def test_cli_ls_and_cat_inside_a_gpt_partition(small_images, tmp_path):
    require_tool("sgdisk")
    disk = str(tmp_path / "disk.img")
    with open(disk, "wb") as f:
        f.truncate(20 << 20)
    run("sgdisk", "-o", "-n", "1:2048:+8M", "-t", "1:8300", disk)
    with open(small_images["csum"], "rb") as src, open(disk, "r+b") as dst:
        dst.seek(2048 * 512)
        dst.write(src.read())
    assert run("conv", "cat", disk, "/etc/motd").stdout == "hello\n" * 100
    ls = subprocess.run(["conv", "ls", disk, "/etc"], capture_output=True)
    assert ls.returncode == 0, ls.stderr
    listing = os.fsdecode(ls.stdout).split("\n")  # names are bytes; one is not UTF-8
    assert sorted(line.split()[-1] for line in listing if line and "->" not in line) == [
        "hostname", os.fsdecode(b"latin1-\xe9t\xe9"), "motd"]
    assert any(line.endswith("longlink -> /" + "x" * 100) for line in listing)
    missing = run("conv", "cat", disk, "/etc/nope", check=False)
    assert missing.returncode != 0
    assert missing.stderr.count("\n") == 1 and "/etc/nope" in missing.stderr


# --------------------------------------------------------------------------
# Damaged images


@pytest.fixture(scope="module")
def small_source(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("small").absolute() / "tree"
    os.makedirs(root / "etc")
    (root / "etc" / "hostname").write_text("conv-test\n")
    (root / "etc" / "motd").write_text("hello\n" * 100)
    with open(os.path.join(os.fsencode(root), b"etc", b"latin1-\xe9t\xe9"), "wb") as f:
        f.write(b"not UTF-8 in the name")
    os.symlink("hostname", root / "etc" / "link")
    os.symlink("/" + "x" * 100, root / "etc" / "longlink")
    os.makedirs(root / "a" / "b")
    for i in range(40):
        (root / "a" / "b" / f"file-{i}").write_text(str(i) * 700)
    with open(root / "frag.bin", "wb") as f:
        for i in range(FRAG_CHUNKS):
            f.seek(i * FRAG_STRIDE)
            f.write(bytes([65 + i]) * 3000)
    return str(root)


@pytest.fixture(scope="module")
def small_images(small_source, tmp_path_factory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("small-images")
    return {
        "csum": _mkfs(small_source, str(base / "csum.img"), ["-t", "ext4", "-b", "4096"], "8M"),
        "gdtcsum": _mkfs(small_source, str(base / "gdt.img"),
                         ["-t", "ext4", "-O", "^metadata_csum,uninit_bg"], "8M"),
        "nocsum": _mkfs(small_source, str(base / "nocsum.img"),
                        ["-t", "ext4", "-O", "^metadata_csum"], "8M"),
        "ext2": _mkfs(small_source, str(base / "ext2.img"), ["-t", "ext2", "-b", "1024"], "8M"),
    }


def _copy(small_images, which: str, tmp_path) -> str:
    dst = str(tmp_path / f"{which}.img")
    shutil.copyfile(small_images[which], dst)
    return dst


def _poke(image: str, offset: int, data: bytes) -> None:
    with open(image, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _decode_file(image: str):
    with _closing(FileVolume(image)) as volume:
        tree = decode(volume, {}, None)
        for entry in tree:  # read every file: data faults surface too
            if entry.kind is Kind.FILE and entry.link is None:
                for off, n in entry.data.extents():
                    entry.data.read(off, min(n, 1 << 16))
        return tree


def _debugfs(image: str, cmd: str) -> str:
    require_tool("debugfs")
    return run("debugfs", "-R", cmd, image).stdout


def _inode_offset(image: str, path: str) -> int:
    out = _debugfs(image, f"imap {path}")
    m = re.search(r"located at block (\d+), offset (0x[0-9a-f]+)", out)
    return int(m.group(1)) * _block_size(image) + int(m.group(2), 16)


def _block_size(image: str) -> int:
    volume = FileVolume(image)
    try:
        return Ext4(volume).block_size
    finally:
        volume.close()


def _first_block(image: str, path: str) -> int:
    return int(_debugfs(image, f"blocks {path}").split()[0])


def _assert_same_as_source(tree, source: str) -> None:
    expected = normalize_hardlinks(scan_dir(source))
    actual = normalize_hardlinks(scan_tree(tree))
    assert actual.pop("lost+found")["type"] == stat.S_IFDIR
    for scan in (expected, actual):
        for rec in scan.values():
            rec["mtime_ns"] -= rec["mtime_ns"] % 1_000_000_000  # mke2fs keeps seconds
        del scan[""]["mtime_ns"]  # mke2fs stamps the root with the current time
    assert actual == expected


def test_small_images_decode(small_images, small_source):
    for which in small_images:
        with _closing(FileVolume(small_images[which])) as volume:
            tree = decode(volume, {}, None)
            _assert_same_as_source(tree, small_source)
            assert tree.get("etc/motd").data.read() == b"hello\n" * 100
            assert os.fsencode(tree.get(os.fsdecode(b"etc/latin1-\xe9t\xe9")).path) == (
                b"etc/latin1-\xe9t\xe9")


def test_unwritten_extents_read_as_holes(small_images, tmp_path):
    image = _copy(small_images, "csum", tmp_path)
    five = tmp_path / "five"
    five.write_bytes(b"hello")
    for cmd in (f"write {five} prealloc", "fallocate /prealloc 2 9", "sif /prealloc size 40960"):
        run("debugfs", "-w", "-R", cmd, image)
    assert run("e2fsck", "-fn", image, check=False).returncode == 0
    out = _debugfs(image, "stat /prealloc")
    m = re.search(r"\(2-9\[u\]\):(\d+)-(\d+)", out)
    assert m, out
    bs = _block_size(image)
    first, last = int(m.group(1)), int(m.group(2))
    _poke(image, first * bs, b"\xff" * ((last - first + 1) * bs))  # stale bytes on disk
    with _closing(FileVolume(image)) as volume:
        data = decode(volume, {}, None).get("prealloc").data
        assert list(data.extents()) == [(0, bs)]
        assert data.read() == b"hello" + bytes(40960 - 5)


def test_superblock_checksum(small_images, tmp_path):
    image = _copy(small_images, "csum", tmp_path)
    flip_byte(image, 1024 + 120)  # s_volume_name
    with pytest.raises(CorruptError, match="^superblock: checksum mismatch$"):
        _decode_file(image)


def test_superblock_garbage_without_checksum(small_images, tmp_path):
    image = _copy(small_images, "ext2", tmp_path)
    _poke(image, 1024 + 24, struct.pack("<I", 40))  # s_log_block_size
    with pytest.raises(CorruptError, match="block size"):
        _decode_file(image)
    _poke(image, 1024 + 56, b"\0\0")  # magic
    with pytest.raises(CorruptError, match="not an ext2/3/4 filesystem"):
        _decode_file(image)


@pytest.mark.parametrize("which", ["csum", "gdtcsum"])
def test_group_descriptor_checksum(small_images, tmp_path, which):
    image = _copy(small_images, which, tmp_path)
    bs = _block_size(image)
    gdt = (2 if bs == 1024 else 1) * bs
    flip_byte(image, gdt + 12)  # bg_free_blocks_count_lo of group 0
    with pytest.raises(CorruptError, match="^group descriptor 0: checksum mismatch$"):
        _decode_file(image)


def test_inode_checksum(small_images, tmp_path):
    image = _copy(small_images, "csum", tmp_path)
    with _closing(FileVolume(image)) as volume:
        ino = Ext4(volume).get("etc/motd").ino
    flip_byte(image, _inode_offset(image, "/etc/motd") + 16)  # i_mtime
    with pytest.raises(CorruptError, match=f"^inode {ino}: checksum mismatch$"):
        _decode_file(image)


def test_inode_garbage_without_checksum(small_images, tmp_path):
    image = _copy(small_images, "nocsum", tmp_path)
    offset = _inode_offset(image, "/etc/motd")
    _poke(image, offset, struct.pack("<H", 0o170644))  # no such file type
    with pytest.raises(CorruptError, match="unknown file type"):
        _decode_file(image)


def _extent_block(image: str, path: str) -> int:
    out = _debugfs(image, f"ex {path}")
    # Level 0 is the index in the inode; its entries point at leaf blocks.
    m = re.search(r"^\s*0/\s*1\s+1/\s*\d+\s+\d+\s*-\s*\d+\s+(\d+)", out, re.M)
    assert m, out
    return int(m.group(1))


def test_extent_block_checksum(small_images, tmp_path):
    image = _copy(small_images, "csum", tmp_path)
    bs = _block_size(image)
    block = _extent_block(image, "/frag.bin")
    flip_byte(image, block * bs + 12 + 4)  # ee_len of the first extent
    with pytest.raises(CorruptError, match=rf"extent block {block}: checksum mismatch$"):
        _decode_file(image)


def test_extent_header_garbage_without_checksum(small_images, tmp_path):
    image = _copy(small_images, "nocsum", tmp_path)
    bs = _block_size(image)
    block = _extent_block(image, "/frag.bin")
    _poke(image, block * bs, b"\0\0")
    with pytest.raises(CorruptError, match="bad extent header magic"):
        _decode_file(image)
    _poke(image, block * bs, struct.pack("<HHHH", 0xF30A, 4, (bs - 12) // 12, 3))  # under 1
    with pytest.raises(CorruptError, match="extent tree depth"):
        _decode_file(image)


def test_directory_block_checksum(small_images, tmp_path):
    image = _copy(small_images, "csum", tmp_path)
    block = _first_block(image, "/etc")
    flip_byte(image, block * _block_size(image) + 12 + 12 + 8)  # a name byte after . and ..
    with pytest.raises(CorruptError, match=rf"block {block}: checksum mismatch$"):
        _decode_file(image)


@pytest.mark.parametrize("variant", ["ext4-1k"], indirect=True)
def test_htree_root_checksum(variant, tmp_path):
    _name, image, _volume, _fs_type, bs = variant
    copy = str(tmp_path / "htree.img")
    shutil.copyfile(image, copy)
    root_block = _first_block(copy, "/big")
    flip_byte(copy, root_block * bs + 44)  # inside the first dx_entry after the count/limit
    with pytest.raises(CorruptError, match=rf"block {root_block}: checksum mismatch$"):
        _decode_file(copy)


@pytest.mark.parametrize("which", ["nocsum", "ext2"])
def test_directory_garbage_without_checksum(small_images, tmp_path, which):
    image = _copy(small_images, which, tmp_path)
    block = _first_block(image, "/etc")
    _poke(image, block * _block_size(image) + 4, struct.pack("<H", 3))  # rec_len of "."
    with pytest.raises(CorruptError, match="bad rec_len 3"):
        _decode_file(image)


def test_directory_reachable_twice(small_images, tmp_path):
    image = _copy(small_images, "ext2", tmp_path)
    run("debugfs", "-w", "-R", "ln /a/b /etc/b-again", image)
    with pytest.raises(CorruptError, match=r"reachable twice: /a/b and /etc/b-again$"):
        _decode_file(image)
    image = _copy(small_images, "nocsum", tmp_path)
    run("debugfs", "-w", "-R", "ln / /a/b/loop", image)
    with pytest.raises(CorruptError,
                       match="^directory inode 2 is reachable twice: / and /a/b/loop$"):
        _decode_file(image)


def test_external_journal_device_is_unsupported(tmp_path):
    require_tool("mke2fs")
    image = str(tmp_path / "journal.img")
    run("mke2fs", "-q", "-F", "-O", "journal_dev", "-b", "4096", image, "8M")
    with _closing(FileVolume(image)) as volume, pytest.raises(
            UnsupportedError, match="^ext4 feature journal_dev .* is not supported$"):
        decode(volume, {}, None)


def test_truncated_image(small_images, tmp_path):
    image = _copy(small_images, "csum", tmp_path)
    os.truncate(image, os.path.getsize(image) // 2)
    with pytest.raises(CorruptError, match="^image is truncated"):
        _decode_file(image)
    os.truncate(image, 1500)
    with pytest.raises(CorruptError, match="superblock"):
        _decode_file(image)


@pytest.mark.parametrize("which", ["ext2", "nocsum"])
def test_random_damage_is_a_clean_error(small_images, tmp_path, which):
    """Flip bytes in the metadata area: every outcome is a tree or a ConvError
    (a traceback of any other kind, or a hang, fails)."""
    image = _copy(small_images, which, tmp_path)
    pristine = open(image, "rb").read()
    # Aim at bytes that mean something: the non-zero ones after the boot
    # block (superblock, descriptors, bitmaps, inodes, extents, dirents, data).
    live = [i for i in range(1024, min(len(pristine), 400 * 1024)) if pristine[i]]
    outcomes = damage_rounds(image, live, _decode_file, rounds=100, max_flips=8,
                             seed=f"ext4-reader-{which}")
    assert outcomes["error"] > 0  # the damage was seen at least sometimes
