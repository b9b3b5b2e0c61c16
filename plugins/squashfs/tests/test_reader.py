"""The squashfs reader against images mksquashfs made.

Each image is compared with the directory it was made from, as a user would
compare after extracting: content, mode, owner, mtime (squashfs keeps
seconds), xattrs, hardlinks, devices. Hostile-input tests damage real images
and expect one CorruptError naming the damaged thing.
"""

from __future__ import annotations

import os
import random
import struct
import zlib

import pytest
from conv_squashfs import reader
from conv_squashfs.decompress import decompressor_for
from conv_squashfs.layout import COMPRESSOR_IDS, SUPERBLOCK

from convcore.blockdev import FileVolume
from convcore.errors import ConvError, CorruptError, NotFoundError, UnsupportedError
from convcore.testing import (
    make_sample_dir,
    normalize_hardlinks,
    require_tool,
    run,
    scan_dir,
    scan_tree,
    xattrs_supported,
)
from convcore.tree import Kind

NS = 1_000_000_000


def _lzo_importable() -> bool:
    try:
        import lzo  # noqa: F401
    except ImportError:
        return False
    return True


def mksquashfs(src: str, img: str, *args: str) -> str:
    require_tool("mksquashfs")
    run("mksquashfs", src, img, "-noappend", "-quiet", "-no-progress", *args)
    return img


def decode(img: str):
    return reader.decode(FileVolume(img), {}, None)


def expected(src: str) -> dict:
    """scan_dir of the source at squashfs's one-second time resolution."""
    scan = normalize_hardlinks(scan_dir(src))
    for rec in scan.values():
        rec["mtime_ns"] = rec["mtime_ns"] // NS * NS
    return scan


def assert_same(img: str, src: str) -> None:
    want = expected(src)
    got = normalize_hardlinks(scan_tree(decode(img)))
    assert sorted(got) == sorted(want)
    for path in want:
        assert got[path] == want[path], path


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> str:
    """The shared sample tree plus a duplicate file, a file that is an exact
    number of blocks at every block size, and a directory big enough for a
    directory index."""
    root = str(tmp_path_factory.mktemp("sqfs") / "src")
    make_sample_dir(root)
    rng = random.Random(4)
    blob = bytes(rng.getrandbits(8) for _ in range(40000)) * 7  # compressible, 280000 bytes
    with open(os.path.join(root, "usr", "data.bin"), "wb") as f:
        f.write(blob)
    with open(os.path.join(root, "usr", "data-copy.bin"), "wb") as f:
        f.write(blob)
    with open(os.path.join(root, "usr", "mebibyte"), "wb") as f:
        f.write(bytes(range(256)) * 4096)
    # A name that is not UTF-8 comes back byte for byte (surrogate escapes).
    with open(os.path.join(os.fsencode(root), b"latin1-\xe9.txt"), "wb") as f:
        f.write(b"caf\xe9\n")
    big = os.path.join(root, "bigdir")
    os.mkdir(big)
    for i in range(700):
        with open(os.path.join(big, f"a-fairly-long-file-name-number-{i:05d}"), "wb") as f:
            f.write(b"%d\n" % i)
    for dirpath in (big, os.path.join(root, "usr"), root):
        os.utime(dirpath, ns=(1_700_000_000 * NS, 1_700_000_000 * NS))
    return root


# --------------------------------------------------------------------------
# Every codec and block size

MATRIX = [(comp, "128K") for comp in ("gzip", "xz", "lz4", "zstd", "lzma", "lzo")] + [
    ("gzip", "4K"), ("zstd", "1M"), ("xz", "4K"), ("lz4", "1M"), ("lzma", "64K"),
    ("zstd", "16K"), ("gzip", "512K"), ("lz4", "32K"), ("xz", "256K"),
]


@pytest.mark.parametrize(("comp", "block_size"), MATRIX)
def test_codec_and_block_size(src, tmp_path, comp, block_size):
    img = mksquashfs(src, str(tmp_path / "img.sqfs"), "-comp", comp, "-b", block_size,
                     "-xattrs")
    if comp == "lzo" and not _lzo_importable():
        with pytest.raises(UnsupportedError, match="lzo"):
            decode(img)
        return
    assert_same(img, src)
    info = decode(img).info
    assert info["compression"] == comp
    assert info["block_size"] == int(block_size[:-1]) << (20 if block_size[-1] == "M" else 10)


@pytest.mark.parametrize("variant", [
    ["-no-fragments"],
    ["-always-use-fragments"],
    ["-noI", "-noD", "-noF", "-noX"],
    ["-noI"],
    ["-noD"],
    ["-noF", "-noX"],
    ["-nopad"],
    ["-no-duplicates"],
    ["-no-exports", "-no-sparse"],
    ["-tailends"],
    ["-Xcompression-level", "1", "-Xwindow-size", "8"],
])
def test_mksquashfs_variants(src, tmp_path, variant):
    img = mksquashfs(src, str(tmp_path / "img.sqfs"), "-b", "4K", "-xattrs", *variant)
    assert_same(img, src)


def test_no_xattrs_image(src, tmp_path):
    img = mksquashfs(src, str(tmp_path / "img.sqfs"), "-no-xattrs")
    tree = decode(img)
    assert "no-xattrs" in tree.info["flags"].split()
    assert all(not e.xattrs for e in tree)
    assert tree.get("usr/bin/tool").data.read() == open(os.path.join(src, "usr/bin/tool"),
                                                        "rb").read()


def test_info_and_hardlinks(src, tmp_path):
    img = mksquashfs(src, str(tmp_path / "img.sqfs"), "-comp", "zstd", "-mkfs-time", "12345")
    tree = decode(img)
    info = tree.info
    assert info["mkfs_time"] == 12345
    assert info["bytes_used"] <= os.path.getsize(img)
    assert info["inodes"] == len({(st.st_ino) for st in _lstat_all(src)})
    assert "duplicates" in info["flags"].split()
    # Later names of an inode are links to the first one the tree yields.
    link = tree.get("usr/bin/tool-hardlink")
    assert link.link == "usr/bin/tool"
    assert tree.get("var/hostname-link").link == "etc/hostname"
    order = [e.path for e in tree]
    assert order.index("etc/hostname") < order.index("var/hostname-link")
    # Duplicate files (not hardlinks) share their data blocks in the image.
    original, copy = tree.get("usr/data.bin"), tree.get("usr/data-copy.bin")
    assert copy.link is None
    assert copy.data.start == original.data.start
    assert copy.data.read() == original.data.read()


def _lstat_all(root: str):
    for dirpath, _, filenames in os.walk(root):
        yield os.lstat(dirpath)
        for name in filenames:
            yield os.lstat(os.path.join(dirpath, name))


def test_sparse_extents_and_order(src, tmp_path):
    img = mksquashfs(src, str(tmp_path / "img.sqfs"), "-b", "4K")
    tree = decode(img)
    data = tree.get("var/sparse.img").data
    # 5000 bytes of A, a 1 MiB hole, 4096 bytes of B, then a trailing hole:
    # with 4 KiB blocks the hole blocks are sparse (size 0) in the image.
    assert data.extents() == [(0, 8192), (257 * 4096, 8192)]
    assert data.read(4990, 20) == b"A" * 10 + bytes(10)
    assert data.read(5000 + (1 << 20), 4096) == b"B" * 4096
    # order_key is where a file's data starts in the image (its first block,
    # or its fragment block), so data_order walks the image front to back.
    sb = SUPERBLOCK.read(open(img, "rb").read(SUPERBLOCK.size))
    fragment_only = tree.get("etc/hostname").data
    assert not fragment_only.blocks
    assert fragment_only.order_key == (fragment_only.fragments.block_start(
        fragment_only.fragment),)
    assert data.order_key == (data.start,)
    for entry in tree.data_order():
        if entry.data.size:  # empty files have nothing to read
            assert SUPERBLOCK.size <= entry.data.order_key[0] < sb.inode_table_start


@pytest.mark.parametrize("stored", [False, True])
def test_copy_to_keeps_holes_and_matches(src, tmp_path, stored):
    img = mksquashfs(src, str(tmp_path / "img.sqfs"), "-b", "4K", *(["-noD"] if stored else []))
    tree = decode(img)
    for path in ("var/sparse.img", "usr/data.bin", "usr/bin/tool", "etc/hostname"):
        data = tree.get(path).data
        out = tmp_path / path.replace("/", "_")
        with open(out, "wb") as f:
            f.truncate(data.size)
            data.copy_to(f.fileno(), 0)
        assert out.read_bytes() == open(os.path.join(src, path), "rb").read()
    # The 1 MiB hole of the sparse file stays a hole.
    assert os.stat(tmp_path / "var_sparse.img").st_blocks * 512 < 1 << 20


def test_dissect_style_api(src, tmp_path):
    img = mksquashfs(src, str(tmp_path / "img.sqfs"), "-comp", "lz4")
    fs = reader.SquashFS(FileVolume(img))
    assert fs.get("/etc/hostname").open().read() == b"conv-test\n"
    assert fs.get("etc/short-link").readlink() == "hostname"
    assert "hostname" in fs.get("/etc").listdir()
    with pytest.raises(NotFoundError, match="/etc/nope"):
        fs.get("/etc/nope")


def test_devices_from_pseudo_file(tmp_path):
    """Devices, owners and modes given to mksquashfs by a pseudo file (no
    root needed)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    pf = tmp_path / "pseudo"
    pf.write_text("dev d 755 0 0\n"
                  "dev/console c 600 0 5 5 1\n"
                  "dev/sdb b 660 0 6 8 16\n"
                  "dev/big c 640 4000000 70000 259 1048575\n"
                  "dev/fifo i 620 1 2 f\n"
                  "dev/generated f 444 3 4 printf generated\n")
    img = mksquashfs(str(src), str(tmp_path / "img.sqfs"), "-pf", str(pf))
    tree = decode(img)
    console = tree.get("dev/console")
    assert (console.kind, console.rdev, console.mode, console.uid, console.gid) == \
        (Kind.CHAR, (5, 1), 0o600, 0, 5)
    sdb = tree.get("dev/sdb")
    assert (sdb.kind, sdb.rdev, sdb.mode, sdb.gid) == (Kind.BLOCK, (8, 16), 0o660, 6)
    big = tree.get("dev/big")
    assert (big.rdev, big.uid, big.gid) == ((259, 1048575), 4000000, 70000)
    assert tree.get("dev").kind is Kind.DIR
    fifo = tree.get("dev/fifo")
    assert (fifo.kind, fifo.mode, fifo.uid, fifo.gid) == (Kind.FIFO, 0o620, 1, 2)
    generated = tree.get("dev/generated")
    assert (generated.kind, generated.mode, generated.uid, generated.gid) == \
        (Kind.FILE, 0o444, 3, 4)
    assert generated.data.read() == b"generated"


def test_large_sparse_file(tmp_path):
    """A 5 GiB sparse file: extended inode with 64-bit size, data past 4 GiB."""
    src = tmp_path / "src"
    src.mkdir()
    big = src / "big"
    size = 5 << 30
    marks = {0: b"head", 3 << 30: b"middle" * 1000, size - 6: b"tail!!"}
    with open(big, "wb") as f:
        f.truncate(size)
        for offset, data in marks.items():
            f.seek(offset)
            f.write(data)
    img = mksquashfs(str(src), str(tmp_path / "img.sqfs"), "-b", "1M", "-comp", "zstd")
    big.unlink()
    data = decode(img).get("big").data
    assert data.size == size
    for offset, content in marks.items():
        assert data.read(offset, len(content)) == content
    assert data.read(1 << 30, 4096) == bytes(4096)
    extents = data.extents()
    assert [start for start, _ in extents] == [0, 3 << 30, size - (1 << 20)]
    assert sum(length for _, length in extents) == 3 << 20


def test_same_image_same_tree(src, tmp_path):
    img = mksquashfs(src, str(tmp_path / "img.sqfs"), "-comp", "xz")
    assert scan_tree(decode(img)) == scan_tree(decode(img))


# --------------------------------------------------------------------------
# Hostile input


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[str, bytes]:
    """A small image with uncompressed metadata (so tests can find and edit
    structures), plus its bytes."""
    require_tool("mksquashfs")
    base = tmp_path_factory.mktemp("hostile")
    src = base / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "file").write_bytes(b"hello " * 3000)
    (src / "a" / "b" / "deeper").write_bytes(b"tail")
    (src / "link").symlink_to("a/file")
    os.setxattr(src / "a" / "file", "user.k", b"v" * 200)
    img = str(base / "img.sqfs")
    mksquashfs(str(src), img, "-noI", "-noX", "-b", "4K", "-xattrs")
    with open(img, "rb") as f:
        return img, f.read()


def _write(tmp_path, data: bytes) -> str:
    path = str(tmp_path / "bad.sqfs")
    with open(path, "wb") as f:
        f.write(data)
    return path


def _patch_sb(raw: bytes, **fields) -> bytes:
    sb = SUPERBLOCK.read(raw)._replace(**fields)
    return SUPERBLOCK.pack(*sb) + raw[SUPERBLOCK.size:]


def _read_all(tree) -> None:
    for entry in tree:
        if entry.data is not None:
            entry.data.read()


@pytest.mark.parametrize("cut", [0, 50, 96, 200, "half", "end-1"])
def test_truncated_image(small, tmp_path, cut):
    img, raw = small
    used = SUPERBLOCK.read(raw).bytes_used
    n = {"half": used // 2, "end-1": used - 1}.get(cut, cut)
    with pytest.raises(CorruptError, match="truncated|smaller than a superblock"):
        decode(_write(tmp_path, raw[:n]))


@pytest.mark.parametrize(("field", "value", "message"), [
    ("magic", 0x12345678, "bad magic"),
    ("block_size", 3000, "bad block size"),
    ("block_log", 11, "bad block size"),
    ("inode_table_start", 1 << 40, "inode_table_start"),
    ("directory_table_start", 100, "does not come before"),
    ("id_table_start", 1 << 50, "id_table_start"),
    ("id_count", 60000, "id table"),
    ("fragment_table_start", 3, "fragment_table_start"),
    ("fragment_count", 1 << 30, "fragment table"),
    ("xattr_id_table_start", 97, "xattr"),
    ("root_inode_ref", 1 << 40, "root inode"),
    ("root_inode_ref", 5, "root directory"),
    ("root_inode_ref", 1 << 16, "does not point at a metadata block"),
    ("inode_count", 1, "inode number"),
    ("bytes_used", 1 << 45, "truncated"),
])
def test_bad_superblock(small, tmp_path, field, value, message):
    _, raw = small
    with pytest.raises(CorruptError, match=message):
        _read_all(decode(_write(tmp_path, _patch_sb(raw, **{field: value}))))


def test_unsupported_version_and_compressor(small, tmp_path):
    _, raw = small
    with pytest.raises(UnsupportedError, match="compressor id 9"):
        decode(_write(tmp_path, _patch_sb(raw, compression_id=9)))
    with pytest.raises(UnsupportedError, match="version 3.1"):
        decode(_write(tmp_path, _patch_sb(raw, version_major=3, version_minor=1)))


def _inode_offset(img: str, path: str) -> int:
    """Image offset of ``path``'s inode (uncompressed inode table)."""
    fs = reader.SquashFS(FileVolume(img))
    parent, _, name = path.rpartition("/")
    node = fs.get(parent)
    ref = next(r for n, r, _, _ in fs.listing(node.inode, parent) if n == name)
    block, offset = ref >> 16, ref & 0xFFFF
    return fs.sb.inode_table_start + block + 2 + offset


@pytest.mark.parametrize(("path", "at", "fmt", "value", "message"), [
    ("a/file", 0, "<H", 99, "unknown inode type 99"),
    ("a/file", 4, "<H", 40, "id index 40"),
    ("a/file", 12, "<I", 0, "inode number 0"),
    ("link", 20, "<I", 5000, "symlink target of 5000 bytes"),
    ("a/file", 16 + 28, "<I", 1 << 31, "fragment index"),
    ("a/file", 16 + 36, "<I", 77, "xattr index 77"),
])
def test_bad_inode(small, tmp_path, path, at, fmt, value, message):
    img, raw = small
    pos = _inode_offset(img, path) + at
    bad = bytearray(raw)
    struct.pack_into(fmt, bad, pos, value)
    with pytest.raises(CorruptError, match=message):
        _read_all(decode(_write(tmp_path, bytes(bad))))


def test_file_size_beyond_block_list(small, tmp_path):
    img, raw = small
    fs = reader.SquashFS(FileVolume(img))
    node = fs.get("a/file")
    pos = _inode_offset(img, "a/file")
    bad = bytearray(raw)
    # extended file inode (xattrs): file_size is the u64 after blocks_start
    struct.pack_into("<Q", bad, pos + 16 + 8, 1 << 40)
    assert node.inode.size == 18000
    with pytest.raises(CorruptError, match="inode"):
        _read_all(decode(_write(tmp_path, bytes(bad))))


def test_bad_block_word_and_data(small, tmp_path):
    img, raw = small
    pos = _inode_offset(img, "a/file") + 16 + 40  # first block size word
    bad = bytearray(raw)
    struct.pack_into("<I", bad, pos, 1 << 26)
    with pytest.raises(CorruptError, match="block list"):
        decode(_write(tmp_path, bytes(bad)))
    # Garbage in a compressed data block fails when the file is read.
    (word,) = struct.unpack_from("<I", raw, pos)
    start = struct.unpack_from("<Q", raw, pos - 40)[0]
    assert not word & (1 << 24)
    bad = bytearray(raw)
    bad[start : start + (word & 0xFFFFFF)] = b"\xff" * (word & 0xFFFFFF)
    tree = decode(_write(tmp_path, bytes(bad)))
    with pytest.raises(CorruptError, match="data block 0"):
        tree.get("a/file").data.read()


def test_bad_metadata_block_header(small, tmp_path):
    _, raw = small
    sb = SUPERBLOCK.read(raw)
    for header, message in [(0x8000, "bad length 0"), (0x7FFF, "bad length"),
                            (0x0010, "does not decompress|truncated zlib")]:
        bad = bytearray(raw)
        struct.pack_into("<H", bad, sb.inode_table_start, header)
        with pytest.raises(CorruptError, match=message):
            decode(_write(tmp_path, bytes(bad)))


def test_metadata_block_that_decompresses_too_big(small, tmp_path):
    _, raw = small
    sb = SUPERBLOCK.read(raw)
    bomb = zlib.compress(bytes(100000), 9)
    bad = bytearray(raw)
    struct.pack_into("<H", bad, sb.inode_table_start, len(bomb))
    bad[sb.inode_table_start + 2 : sb.inode_table_start + 2 + len(bomb)] = bomb
    with pytest.raises(CorruptError, match="more than 8192 bytes"):
        decode(_write(tmp_path, bytes(bad)))


_LZ4_OPTIONS = struct.pack("<II", 1, 0)


@pytest.mark.parametrize("comp", ["gzip", "xz", "lzma", "lz4", "zstd"])
def test_decompressors_are_bounded(comp):
    import lzma

    import lz4.block
    import zstandard

    data = bytes(1 << 20)
    packed = {
        "gzip": lambda: zlib.compress(data),
        "xz": lambda: lzma.compress(data, format=lzma.FORMAT_XZ),
        "lzma": lambda: lzma.compress(data, format=lzma.FORMAT_ALONE),
        "lz4": lambda: lz4.block.compress(data, store_size=False),
        "zstd": lambda: zstandard.ZstdCompressor().compress(data),
    }[comp]()
    run_ = decompressor_for(COMPRESSOR_IDS[comp], _LZ4_OPTIONS if comp == "lz4" else None,
                            1 << 20)
    with pytest.raises(CorruptError, match="block X"):
        run_(packed, 8192, "block X")
    assert run_(packed, 1 << 20, "block X") == data
    with pytest.raises(CorruptError, match="block X"):
        run_(packed[: len(packed) // 2], 1 << 20, "block X")


def _dir_entry_offset(img: str, raw: bytes, parent: str, name: str) -> tuple[int, int]:
    """Image offset of the directory entry ``name`` in ``parent``'s listing
    (uncompressed directory table) and of its header."""
    fs = reader.SquashFS(FileVolume(img))
    inode = fs.get(parent).inode
    assert inode.listing_block == 0  # one uncompressed block: offsets map 1:1
    start = fs.sb.directory_table_start + 2 + inode.listing_offset
    pos, end = start, start + inode.listing_size
    while pos < end:
        header = pos
        count, _, _ = struct.unpack_from("<III", raw, pos)
        pos += 12
        for _ in range(count + 1):
            size = struct.unpack_from("<H", raw, pos + 6)[0] + 1
            if raw[pos + 8 : pos + 8 + size] == name.encode():
                return pos, header
            pos += 8 + size
    raise AssertionError(f"{name} not in the listing of {parent}")


def test_directory_pointing_to_itself(small, tmp_path):
    img, raw = small
    fs = reader.SquashFS(FileVolume(img))
    a_ref = next(r for n, r, _, _ in fs.listing(fs.get("").inode, "") if n == "a")
    a_number = fs.get("a").inode.number
    at, header = _dir_entry_offset(img, raw, "a", "b")
    _, start_block, base = struct.unpack_from("<III", raw, header)
    assert start_block == a_ref >> 16
    bad = bytearray(raw)
    struct.pack_into("<Hh", bad, at, a_ref & 0xFFFF, a_number - base)
    with pytest.raises(CorruptError, match="directory loop: /a/b is inode"):
        decode(_write(tmp_path, bytes(bad)))


def test_directory_entry_names(small, tmp_path):
    img, raw = small
    at, _ = _dir_entry_offset(img, raw, "a", "b")
    bad = bytearray(raw)
    bad[at + 8] = ord("/")
    with pytest.raises(CorruptError, match="bad entry name"):
        decode(_write(tmp_path, bytes(bad)))
    bad = bytearray(raw)
    struct.pack_into("<H", bad, at + 4, 12)  # entry type
    with pytest.raises(CorruptError, match="unknown type 12"):
        decode(_write(tmp_path, bytes(bad)))


def test_fragment_entry_out_of_range(small, tmp_path):
    _, raw = small
    sb = SUPERBLOCK.read(raw)
    (block,) = struct.unpack_from("<Q", raw, sb.fragment_table_start)
    bad = bytearray(raw)
    # noI does not cover the fragment table's own metadata block: rebuild it
    # uncompressed with an absurd fragment start.
    entry = struct.pack("<QII", 1 << 40, 100, 0)
    bad[block : block + 2 + len(entry)] = struct.pack("<H", 0x8000 | len(entry)) + entry
    with pytest.raises(CorruptError, match="fragment"):
        _read_all(decode(_write(tmp_path, bytes(bad))))


def test_flipped_bytes_never_crash(small, tmp_path):
    """Any single damaged byte in the metadata gives a tree or a ConvError,
    never another exception or a hang."""
    _, raw = small
    sb = SUPERBLOCK.read(raw)
    rng = random.Random(7)
    positions = list(range(0, 96)) + rng.sample(range(sb.inode_table_start, sb.bytes_used), 150)
    errors = 0
    for pos in positions:
        bad = bytearray(raw)
        bad[pos] ^= 1 << rng.randrange(8)
        try:
            _read_all(decode(_write(tmp_path, bytes(bad))))
        except ConvError:
            errors += 1
    assert errors > len(positions) // 4  # most damage is noticed


def test_large_directory_has_index(src, tmp_path):
    """bigdir's listing spans metadata blocks, so mksquashfs gives it an
    extended inode with a directory index; every name still comes back."""
    from conv_squashfs.layout import INODE_HEADER, INODE_LDIR, LDIR_INODE

    img = mksquashfs(src, str(tmp_path / "img.sqfs"))
    fs = reader.SquashFS(FileVolume(img))
    ref = next(r for n, r, _, _ in fs.listing(fs.get("").inode, "") if n == "bigdir")
    pos = fs.inodes.locate_ref(ref, "bigdir")
    assert INODE_HEADER.read(fs.inodes.buf, pos).inode_type == INODE_LDIR
    assert LDIR_INODE.read(fs.inodes.buf, pos + INODE_HEADER.size).index_count > 0
    names = fs.get("bigdir").listdir()
    assert names == sorted(os.listdir(os.path.join(src, "bigdir")))


# --------------------------------------------------------------------------
# Through the conv command


def conv(*args: str, check: bool = True):
    return run("conv", "-q", *args, check=check)


def test_cli_squashfs_to_tar(src, tmp_path):
    """conv turns a mksquashfs image into a tar that GNU tar extracts into
    the source tree."""
    require_tool("tar")
    img = mksquashfs(src, str(tmp_path / "img.sqfs"), "-comp", "zstd", "-b", "64K")
    out = tmp_path / "out.tar"
    conv("convert", f"raw:{img} -> squashfs -> tar:{out}")
    dest = tmp_path / "x"
    dest.mkdir()
    run("tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf", str(out),
        "-C", str(dest))
    assert normalize_hardlinks(scan_dir(str(dest))) == expected(src)
    # Reading is deterministic: the same image gives the same tar, byte for byte.
    again = tmp_path / "again.tar"
    conv("convert", f"raw:{img} -> squashfs -> tar:{again}")
    assert again.read_bytes() == out.read_bytes()


def test_cli_cat_and_ls(src, tmp_path):
    img = mksquashfs(src, str(tmp_path / "img.sqfs"), "-comp", "gzip", "-b", "4K")
    assert conv("cat", img, "/etc/hostname").stdout == "conv-test\n"
    listing = conv("ls", img, "/etc").stdout
    for name in ("hostname", "empty-file", "short-link", "long-link"):
        assert name in listing
    info = conv("info", img).stdout
    assert "squashfs" in info and "compression=gzip" in info


def test_cli_image_to_dir(src, tmp_path):
    img = mksquashfs(src, str(tmp_path / "img.sqfs"), "-comp", "xz", "-b", "4K")
    dest = tmp_path / "out"
    conv("convert", f"image:{img} -> dir:{dest}")
    assert normalize_hardlinks(scan_dir(str(dest))) == expected(src)


def test_cli_corrupt_image_is_one_line(small, tmp_path):
    _, raw = small
    bad = _write(tmp_path, _patch_sb(raw, directory_table_start=100))
    p = conv("convert", f"raw:{bad} -> squashfs -> tar:{tmp_path / 'o.tar'}", check=False)
    assert p.returncode == 1
    assert p.stderr.strip().count("\n") == 0
    assert p.stderr.startswith(f"conv: {bad}: superblock: inode table")
    assert not (tmp_path / "o.tar").exists()


@pytest.mark.parametrize(("count", "message"), [(70000, "70000 xattrs in one set"),
                                                (3, "xattr")])
def test_bad_xattr_set_count(small, tmp_path, count, message):
    _, raw = small
    sb = SUPERBLOCK.read(raw)
    (block,) = struct.unpack_from("<Q", raw, sb.xattr_id_table_start + 16)
    (header,) = struct.unpack_from("<H", raw, block)
    assert header == 0x8000 | 16  # one stored xattr id entry
    bad = bytearray(raw)
    struct.pack_into("<I", bad, block + 2 + 8, count)
    with pytest.raises(CorruptError, match=message):
        decode(_write(tmp_path, bytes(bad)))


def test_extended_special_inodes(tmp_path):
    """Symlinks, devices, FIFOs and sockets that carry xattrs get mksquashfs's
    extended inode types; all read back with their xattrs (trusted.* needs root)."""
    import socket
    import stat as stat_

    from conv_squashfs.layout import INODE_HEADER

    src = tmp_path / "src"
    src.mkdir()
    os.symlink("target", src / "link")
    os.mkfifo(src / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "sock"))
    sock.close()
    names = ["link", "fifo", "sock"]
    try:
        os.mknod(src / "null", 0o640 | stat_.S_IFCHR, os.makedev(1, 3))
        os.mknod(src / "disk", 0o600 | stat_.S_IFBLK, os.makedev(259, 300))
        names += ["null", "disk"]
        for name in names:
            os.setxattr(src / name, "trusted.t", b"v-" + name.encode(), follow_symlinks=False)
    except (PermissionError, OSError):
        pytest.skip("needs root for devices and trusted.* xattrs")
    for name in names:
        os.utime(src / name, ns=(1_600_000_000 * NS, 1_600_000_000 * NS), follow_symlinks=False)
    os.utime(src, ns=(1_600_000_000 * NS, 1_600_000_000 * NS))
    img = mksquashfs(str(src), str(tmp_path / "img.sqfs"), "-xattrs")
    prefixes = ("user.", "security.", "trusted.")
    want = scan_dir(str(src), xattr_prefixes=prefixes)
    assert scan_tree(decode(img), xattr_prefixes=prefixes) == want
    assert want["fifo"]["xattrs"] == {"trusted.t": b"v-fifo"}
    fs = reader.SquashFS(FileVolume(img))
    types = {}
    for name, ref, _, _ in fs.listing(fs.get("").inode, ""):
        pos = fs.inodes.locate_ref(ref, name)
        types[name] = INODE_HEADER.read(fs.inodes.buf, pos).inode_type
    assert types == {"link": 10, "fifo": 13, "sock": 14, "null": 12, "disk": 11}


def test_empty_root(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    os.chmod(src, 0o700)
    img = mksquashfs(str(src), str(tmp_path / "img.sqfs"))
    tree = decode(img)
    assert [e.path for e in tree] == [""]
    assert tree.root.mode == 0o700


@pytest.mark.parametrize("variant", [["-b", "4K", "-always-use-fragments"],
                                     ["-b", "8K", "-noD", "-noF"]])
def test_random_reads(src, tmp_path, variant):
    """Reads at arbitrary offsets and lengths (across block, hole and
    fragment-tail boundaries) return exactly the source bytes."""
    img = mksquashfs(src, str(tmp_path / "img.sqfs"), *variant)
    tree = decode(img)
    rng = random.Random(11)
    for path in ("usr/bin/tool", "var/sparse.img", "usr/data.bin", "etc/hostname"):
        with open(os.path.join(src, path), "rb") as f:
            want = f.read()
        data = tree.get(path).data
        for _ in range(30):
            offset = rng.randrange(len(want) + 10)
            length = rng.choice((1, 7, 4096, 5000, 70000, 1 << 20))
            assert data.read(offset, length) == want[offset : offset + length], (path, offset)
        with data.open() as f:
            f.seek(len(want) - 3)
            assert f.read() == want[-3:]


def test_out_of_line_xattr_values(tmp_path, monkeypatch):
    """mksquashfs stores a value shared by different xattr sets once, out of
    line; every set still reads back whole."""
    from conv_squashfs import xattr_reader

    src = tmp_path / "src"
    src.mkdir()
    if not xattrs_supported(str(src)):
        pytest.skip("no user xattrs on this filesystem")
    for i in range(3):
        (src / f"f{i}").write_text(str(i))
        os.setxattr(src / f"f{i}", "user.shared", b"S" * 500)
        os.setxattr(src / f"f{i}", "user.own", b"value %d" % i)
    img = mksquashfs(str(src), str(tmp_path / "img.sqfs"), "-xattrs")
    followed = []
    real = xattr_reader.XattrReader._out_of_line
    monkeypatch.setattr(xattr_reader.XattrReader, "_out_of_line",
                        lambda self, ref, where: followed.append(ref) or real(self, ref, where))
    tree = decode(img)
    assert len(followed) == 3
    for i in range(3):
        assert tree.get(f"f{i}").xattrs == {"user.shared": b"S" * 500,
                                            "user.own": b"value %d" % i}


def test_prefetcher_reads_ahead_in_image_order(tmp_path):
    """Reading one file starts decompressing the next files' blocks; their
    readers take those results (and get exactly their own bytes)."""
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(5)
    contents = {}
    for i in range(12):
        contents[f"f{i:02d}"] = b"".join(b"%d " % rng.randrange(1000) for _ in range(700))
        (src / f"f{i:02d}").write_bytes(contents[f"f{i:02d}"])
    img = mksquashfs(str(src), str(tmp_path / "img.sqfs"), "-b", "4K", "-no-fragments")
    fs = reader.SquashFS(FileVolume(img))
    files = fs.tree().data_order()
    assert files[0].data.read() == contents[files[0].path]
    pending = dict(fs.prefetcher._pending)
    assert files[1].data.start in pending
    for future, _ in pending.values():
        future.result()  # let read-ahead finish, so the next read must take it
    taken: list[bool] = []
    real_take = fs.prefetcher.take
    fs.prefetcher.take = lambda disk: (lambda got: taken.append(got is not None) or got)(
        real_take(disk))
    assert files[1].data.read() == contents[files[1].path]
    assert taken == [True]
    for entry in files[1:]:
        assert entry.data.read() == contents[entry.path]
        assert entry.data.start not in fs.prefetcher._pending
