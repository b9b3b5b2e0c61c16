"""The tar format, judged by GNU tar both ways: archives GNU tar made are
read by us; archives we write are listed and extracted by GNU tar."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import subprocess
import sys
import tarfile

import pytest

from convcore.builtin import dirfmt, tar_codec, tarfmt
from convcore.builtin.tar_reader import TarMemberData
from convcore.errors import ConvError, CorruptError, NoSpaceError, NotFoundError
from convcore.format import Context
from convcore.testing import (
    make_sample_dir,
    normalize_hardlinks,
    require_tool,
    run,
    scan_dir,
    scan_tree,
)
from convcore.tree import BytesData, Data, Entry, FileRangeData, Kind, Tree

XATTRS = ("--xattrs", "--xattrs-include=*")
COMPRESS_FLAGS = {"none": (), "gz": ("--gzip",), "zst": ("--zstd",), "xz": ("--xz",)}
SUFFIX = {"none": ".tar", "gz": ".tar.gz", "zst": ".tar.zst", "xz": ".tar.xz"}


def ctx() -> Context:
    return Context(quiet=True)


def read(path) -> Tree:
    return tarfmt.source(str(path), {}, ctx())


def write(tree: Tree, path, **opts) -> None:
    tarfmt.sink(tree, str(path), {"compress": None, "level": None, **opts}, ctx())


def host_scan(path) -> dict:
    return normalize_hardlinks(scan_dir(str(path)))


def tree_scan(tree: Tree) -> dict:
    return normalize_hardlinks(scan_tree(tree))


def seconds_only(scan: dict) -> dict:
    return {p: {**r, "mtime_ns": r["mtime_ns"] // 10**9 * 10**9} for p, r in scan.items()}


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> str:
    return make_sample_dir(str(tmp_path_factory.mktemp("sample") / "src"))


@pytest.fixture(scope="module")
def sample_tree(sample) -> Tree:
    return dirfmt.source(sample, {"owner": None, "exclude": ()}, ctx())


def gnu_tar_create(src: str, out, *flags: str) -> None:
    require_tool("tar")
    run("tar", *flags, "-C", src, "-cf", str(out), ".")


# --------------------------------------------------------------------------
# Reading what GNU tar wrote


@pytest.mark.parametrize("compression", ["none", "gz", "zst", "xz"])
def test_read_gnu_tar_pax(sample, tmp_path, compression):
    if compression == "zst":
        require_tool("zstd")
    if compression == "xz":
        require_tool("xz")
    archive = tmp_path / f"gnu{SUFFIX[compression]}"
    gnu_tar_create(sample, archive, "--format=pax", "-S", *XATTRS, *COMPRESS_FLAGS[compression])
    tree = read(archive)
    assert tree_scan(tree) == host_scan(sample)
    sparse = tree.get("var/sparse.img").data
    assert sum(n for _, n in sparse.extents()) <= 64 << 10  # holes came through as holes


def test_read_gnu_tar_gnu_format(sample, tmp_path):
    archive = tmp_path / "gnu.tar"
    gnu_tar_create(sample, archive, "--format=gnu", "-S")
    tree = read(archive)
    expected = seconds_only(host_scan(sample))  # the GNU format keeps whole seconds, no xattrs
    for rec in expected.values():
        rec["xattrs"] = {}
    assert tree_scan(tree) == expected
    assert sum(n for _, n in tree.get("var/sparse.img").data.extents()) <= 64 << 10


@pytest.mark.parametrize("version", ["0.0", "0.1", "1.0"])
def test_read_gnu_pax_sparse_versions(tmp_path, version):
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse", "wb") as f:
        for i in range(5):  # several extents, a leading and a trailing hole
            f.seek((i * 2 + 1) << 20)
            f.write(bytes([65 + i]) * 10000)
        f.truncate(12 << 20)
    archive = tmp_path / "sparse.tar"
    gnu_tar_create(str(src), archive, "--format=pax", "-S", f"--sparse-version={version}")
    tree = read(archive)
    data = tree.get("sparse").data
    assert data.size == 12 << 20
    assert sum(n for _, n in data.extents()) < 100_000
    assert all(s >= 1 << 20 for s, _ in data.extents())
    with open(src / "sparse", "rb") as f:
        assert hashlib.sha256(data.read()).digest() == hashlib.sha256(f.read()).digest()


def test_read_long_names_and_links(tmp_path):
    src = tmp_path / "src"
    deep = src / ("d" * 90) / ("e" * 90) / ("f" * 90)
    deep.mkdir(parents=True)
    (deep / ("n" * 200)).write_text("long")
    os.symlink("t" * 300, deep / "sym")
    os.link(deep / ("n" * 200), src / "hard")
    for fmt in ("gnu", "pax"):  # GNU long names/links, and PAX path/linkpath
        archive = tmp_path / f"{fmt}.tar"
        gnu_tar_create(str(src), archive, f"--format={fmt}")
        tree = read(archive)
        expected = host_scan(str(src))
        if fmt == "gnu":
            expected = seconds_only(expected)
        assert tree_scan(tree) == expected, fmt


# --------------------------------------------------------------------------
# What we write, judged by GNU tar


@pytest.mark.parametrize("compression", ["none", "gz", "zst", "xz"])
def test_gnu_tar_extracts_what_we_write(sample, sample_tree, tmp_path, compression):
    require_tool("tar")
    archive = tmp_path / f"ours{SUFFIX[compression]}"
    write(sample_tree, archive)
    assert tar_codec.detect_compression(str(archive)) == compression
    out = tmp_path / "x"
    out.mkdir()
    run("tar", *XATTRS, "-xpf", str(archive), "-C", str(out))
    assert host_scan(str(out)) == host_scan(sample)
    st = os.stat(out / "var" / "sparse.img")
    assert st.st_size == 3 << 20 and st.st_blocks * 512 <= 64 << 10  # stayed sparse
    listing = run("tar", "-tvf", str(archive)).stdout.splitlines()
    names = {line.split(None, 5)[5].split(" -> ")[0].split(" link to ")[0] for line in listing}
    assert names == {"./"} | {p + ("/" if r["type"] == 0o040000 else "")
                              for p, r in host_scan(sample).items() if p}


@pytest.mark.parametrize("compression", ["none", "gz", "zst", "xz"])
def test_round_trip_through_our_reader_and_dir_sink(sample, sample_tree, tmp_path, compression):
    archive = tmp_path / f"ours{SUFFIX[compression]}"
    write(sample_tree, archive)
    tree = read(archive)
    assert tree_scan(tree) == host_scan(sample)
    dirfmt.sink(tree, str(tmp_path / "out"), {}, ctx())
    assert host_scan(str(tmp_path / "out")) == host_scan(sample)


def test_edge_members_extracted_by_gnu_tar(tmp_path):
    """Names and numbers ustar cannot hold go through PAX records."""
    require_tool("tar")
    long_dir = "/".join(["component-" + "x" * 40] * 8)
    tree = Tree(Entry("", Kind.DIR, mode=0o755, mtime_ns=1_000_000_000))
    tree.add(Entry(long_dir, Kind.DIR, mode=0o750, mtime_ns=1_600_000_000_5))
    tree.add(Entry(f"{long_dir}/file", Kind.FILE, mode=0o640, uid=3_000_000, gid=4_000_000,
                   mtime_ns=1_700_000_000_999_999_999, size=5, data=BytesData(b"hello"),
                   xattrs={"user.bin": bytes(range(256)), "user.empty": b""}))
    tree.add(Entry("link", Kind.SYMLINK, mode=0o777, target="/" + "t" * 250))
    tree.add(Entry("hard", Kind.FILE, mode=0o640, uid=3_000_000, gid=4_000_000,
                   link=f"{long_dir}/file", size=5, data=tree.get(f"{long_dir}/file").data))
    tree.add(Entry("nonutf8-\udcff", Kind.FILE, mode=0o600, size=0, data=BytesData(b"")))
    tree.add(Entry("old", Kind.FILE, mode=0o600, mtime_ns=-1_500_000_000, size=0,
                   data=BytesData(b"")))
    archive = tmp_path / "edge.tar"
    write(tree, archive)
    out = tmp_path / "x"
    out.mkdir()
    run("tar", *XATTRS, "--numeric-owner", "-xpf", str(archive), "-C", str(out))
    st = os.lstat(out / long_dir / "file")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (3_000_000, 4_000_000, 0o640)
    assert st.st_mtime_ns == 1_700_000_000_999_999_999
    assert os.getxattr(out / long_dir / "file", "user.bin") == bytes(range(256))
    assert os.readlink(out / "link") == "/" + "t" * 250
    assert os.stat(out / "hard").st_ino == st.st_ino
    assert os.path.exists(os.fsencode(out) + b"/nonutf8-\xff")
    assert os.lstat(out / "old").st_mtime_ns == -1_500_000_000
    assert os.lstat(out / long_dir).st_mtime_ns == 1_600_000_000_5
    # and our reader agrees with GNU tar
    assert tree_scan(read(archive)) == host_scan(str(out))


class ZeroData(Data):
    """A large file that is all hole except one extent (no host file)."""

    def __init__(self, size: int, at: int, payload: bytes) -> None:
        self.size, self.at, self.payload = size, at, payload

    def extents(self):
        return [(self.at, len(self.payload))]

    def readinto(self, offset, buf):
        want = max(0, min(len(buf), self.size - offset))
        view = memoryview(buf)[:want]
        view[:] = bytes(want)
        lo, hi = max(offset, self.at), min(offset + want, self.at + len(self.payload))
        if lo < hi:
            view[lo - offset : hi - offset] = self.payload[lo - self.at : hi - self.at]
        return want


def test_huge_sparse_file(tmp_path):
    """A 16 GiB file (beyond ustar's 8 GiB size field) with 4 KiB of data."""
    require_tool("tar")
    size = 16 << 30
    tree = Tree()
    tree.add(Entry("big", Kind.FILE, mode=0o644, size=size,
                   data=ZeroData(size, 10 << 30, b"Z" * 4096)))
    archive = tmp_path / "big.tar"
    write(tree, archive)
    assert os.path.getsize(archive) < 64 << 10
    out = tmp_path / "x"
    out.mkdir()
    run("tar", "-xpf", str(archive), "-C", str(out))
    st = os.stat(out / "big")
    assert st.st_size == size and st.st_blocks * 512 <= 1 << 20
    with open(out / "big", "rb") as f:
        f.seek((10 << 30) - 1)
        assert f.read(4098) == b"\0" + b"Z" * 4096 + b"\0"
    back = read(archive).get("big").data
    assert back.size == size and back.extents() == [(10 << 30, 4096)]


def test_sockets_skipped_with_warning(tmp_path, capsys):
    tree = Tree()
    tree.add(Entry("sock", Kind.SOCKET, mode=0o755))
    tree.add(Entry("file", Kind.FILE, size=1, data=BytesData(b"1")))
    tarfmt.sink(tree, str(tmp_path / "s.tar"), {"compress": None, "level": None}, Context())
    assert "sock" not in read(tmp_path / "s.tar")
    assert capsys.readouterr().err.strip() == "conv: warning: tar cannot hold sockets: 1 skipped"


# --------------------------------------------------------------------------
# Reproducibility


@pytest.mark.parametrize("compression", ["none", "gz", "zst", "xz"])
def test_same_tree_same_bytes(sample_tree, tmp_path, compression):
    a, b = tmp_path / f"a{SUFFIX[compression]}", tmp_path / f"b{SUFFIX[compression]}"
    write(sample_tree, a)
    write(sample_tree, b)
    assert a.read_bytes() == b.read_bytes()


def test_gzip_output_has_no_mtime_or_name(sample_tree, tmp_path):
    archive = tmp_path / "a.tar.gz"
    write(sample_tree, archive)
    head = archive.read_bytes()[:10]
    assert head[:3] == b"\x1f\x8b\x08" and head[3] == 0  # no FNAME/FCOMMENT/FEXTRA
    assert head[4:8] == b"\0\0\0\0"


@pytest.mark.parametrize("library", ["libdeflate", "zlib"])
def test_gzip_members_from_libdeflate_or_zlib(sample, sample_tree, tmp_path, monkeypatch,
                                              library):
    """gz output's members come from libdeflate (a dependency) or, without
    it, zlib: GNU tar extracts either to the source tree, and so do we."""
    require_tool("tar")
    if library == "zlib":
        monkeypatch.setitem(sys.modules, "deflate", None)  # import fails
    archive = tmp_path / "a.tar.gz"
    write(sample_tree, archive)
    assert tar_codec.detect_compression(str(archive)) == "gz"
    out = tmp_path / "out"
    out.mkdir()
    run("tar", *XATTRS, "-xpzf", str(archive), "-C", str(out))
    assert host_scan(str(out)) == host_scan(sample)
    assert tree_scan(read(archive)) == tree_scan(sample_tree)


@pytest.mark.parametrize("compression", ["gz", "zst", "xz"])
def test_digest_of_the_tar_stream_while_writing(sample_tree, tmp_path, compression):
    """write_tar's digest (an OCI layer's diff_id) is the hash of the tar
    inside the compressed file."""
    archive = tmp_path / f"a{SUFFIX[compression]}"
    digest = hashlib.sha256()
    tarfmt.write_tar(sample_tree, archive, compression, ctx(), digest=digest)
    with tar_codec.open_decompressed(str(archive), compression) as stream:
        assert digest.hexdigest() == hashlib.sha256(stream.read()).hexdigest()
    with pytest.raises(ValueError):
        tarfmt.write_tar(sample_tree, tmp_path / "b.tar", "none", ctx(), digest=hashlib.sha256())


def test_parallel_output_does_not_depend_on_thread_count(tmp_path, monkeypatch):
    monkeypatch.setattr(tar_codec, "CHUNK", 1 << 20)
    monkeypatch.setattr(tar_codec, "XZ_CHUNK", 1 << 20)
    payload = hashlib.sha256(b"seed").digest() * 200_000  # ~6 MiB: several chunks
    outs = []
    for comp in ("gz", "xz"):
        for threads in (1, 3):
            path = tmp_path / f"{comp}{threads}"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            out = tar_codec.ParallelOutput(fd, comp, 1, threads=threads)
            out.write(payload)
            out.close()
            os.close(fd)
            outs.append(path.read_bytes())
        assert outs[-1] == outs[-2]
    assert gzip.decompress(outs[0]) == payload
    assert outs[0].count(b"\x1f\x8b\x08\x00\x00\x00\x00\x00") == 7  # one member a chunk
    assert outs[2].count(b"\xfd7zXZ\x00") == 7
    import lzma
    assert lzma.decompress(outs[2]) == payload


def test_compress_and_level_options(sample_tree, tmp_path):
    write(sample_tree, tmp_path / "forced.tar", compress="zst", level=19)
    assert tar_codec.detect_compression(str(tmp_path / "forced.tar")) == "zst"
    assert tree_scan(read(tmp_path / "forced.tar")) == tree_scan(sample_tree)
    # the pipeline's temp names keep the target's name at the end
    write(sample_tree, tmp_path / ".conv-tmp-abc123-root.tgz")
    assert tar_codec.detect_compression(str(tmp_path / ".conv-tmp-abc123-root.tgz")) == "gz"


# --------------------------------------------------------------------------
# iter_entries and lazy data


def _tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]],
               fmt=tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes, **kw) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for k, v in kw.items():
        setattr(info, k, v)
    return info, data


def test_iter_entries_keeps_order_duplicates_and_whiteouts(tmp_path):
    archive = tmp_path / "layer.tar"
    archive.write_bytes(_tar_bytes([
        _file("etc/passwd", b"one"), _file("etc/.wh.shadow", b""),
        _file("etc/.wh..wh..opq", b""), _file("etc/passwd", b"two"),
    ]))
    entries = list(tarfmt.iter_entries(str(archive)))
    assert [e.path for e in entries] == ["etc/passwd", "etc/.wh.shadow", "etc/.wh..wh..opq",
                                         "etc/passwd"]
    assert [e.data.read() for e in entries] == [b"one", b"", b"", b"two"]
    assert isinstance(entries[0].data, FileRangeData)  # plain tar: copy_file_range path
    tree = read(archive)
    assert tree.get("etc/passwd").data.read() == b"two"


def test_pax_xattr_spellings(tmp_path):
    import base64

    info, data = _file("f", b"x")
    info.pax_headers = {"SCHILY.xattr.user.a": "1",
                        "LIBARCHIVE.xattr.user.b%3Dc": base64.b64encode(b"\0\1").decode(),
                        "mtime": "1700000000.5", "uid": "70000000"}
    archive = tmp_path / "x.tar"
    archive.write_bytes(_tar_bytes([(info, data)]))
    entry = read(archive).get("f")
    assert entry.xattrs == {"user.a": b"1", "user.b=c": b"\0\1"}
    assert entry.mtime_ns == 1_700_000_000_500_000_000 and entry.uid == 70000000


def test_compressed_members_decompress_once_in_data_order(tmp_path, monkeypatch):
    members = [_file(f"f{i:03d}", hashlib.sha256(b"%d" % i).digest() * (i * 50 + 1))
               for i in range(40)]
    archive = tmp_path / "m.tar.gz"
    archive.write_bytes(gzip.compress(_tar_bytes(members), mtime=0))
    tree = read(archive)
    opened = []
    real = tar_codec.StreamCursor.__init__

    def counting(self, *args, **kwargs):
        opened.append(args)
        real(self, *args, **kwargs)

    monkeypatch.setattr(tar_codec.StreamCursor, "__init__", counting)
    for entry in tree.data_order():
        assert isinstance(entry.data, TarMemberData)
        assert entry.data.read() == dict((i.name, d) for i, d in members)[entry.path]
    assert len(opened) == 1
    # reading backwards is still correct, just restarts the stream
    for entry in reversed(tree.data_order()):
        assert entry.data.read() == dict((i.name, d) for i, d in members)[entry.path]


def test_hardlink_takes_target_metadata(tmp_path):
    info, data = _file("a", b"payload", mode=0o600, uid=7)
    link = tarfile.TarInfo("b")
    link.type = tarfile.LNKTYPE
    link.linkname = "a"
    archive = tmp_path / "h.tar"
    archive.write_bytes(_tar_bytes([(info, data), (link, None)]))
    tree = read(archive)
    b = tree.get("b")
    assert b.link == "a" and b.mode == 0o600 and b.uid == 7 and b.data.read() == b"payload"


# --------------------------------------------------------------------------
# Bad input: one line, naming where


def _one_line_error(path, match: str, error=CorruptError) -> None:
    with pytest.raises(error, match=match) as info:
        read(path)
    assert "\n" not in str(info.value)


@pytest.fixture()
def plain_archive(tmp_path) -> bytes:
    return _tar_bytes([_file("a", b"A" * 3000), _file("b", b"B" * 100)])


def test_truncated_plain_tar(tmp_path, plain_archive):
    path = tmp_path / "t.tar"
    path.write_bytes(plain_archive[:2000])
    _one_line_error(path, "truncated")
    path.write_bytes(plain_archive[:700])
    _one_line_error(path, "truncated")


def test_bad_checksum(tmp_path, plain_archive):
    data = bytearray(plain_archive)
    data[10] ^= 0x20
    path = tmp_path / "c.tar"
    path.write_bytes(bytes(data))
    _one_line_error(path, "offset 0: bad header checksum")


def test_not_a_tar(tmp_path):
    path = tmp_path / "random.tar"
    path.write_bytes(hashlib.sha512(b"x").digest() * 20)
    _one_line_error(path, "checksum")


def test_truncated_and_corrupt_gzip(tmp_path, plain_archive):
    packed = gzip.compress(plain_archive + bytes(10240), mtime=0)
    path = tmp_path / "t.tar.gz"
    path.write_bytes(packed[: len(packed) // 2])
    _one_line_error(path, "truncated")
    broken = bytearray(packed)
    broken[20] ^= 0xFF
    broken[21] ^= 0xFF
    path.write_bytes(bytes(broken))
    _one_line_error(path, "gz stream is (corrupt|truncated)|checksum")


def test_truncated_zstd(tmp_path, plain_archive):
    import zstandard

    packed = zstandard.ZstdCompressor().compress(plain_archive + bytes(10240))
    path = tmp_path / "t.tar.zst"
    path.write_bytes(packed[:-10])
    with pytest.raises(CorruptError) as info:
        for entry in read(path):
            if entry.data is not None:
                entry.data.read()
    assert "\n" not in str(info.value)


def test_huge_size_field(tmp_path):
    info, _ = _file("a", b"")
    info.size = 1 << 40  # a header that claims a terabyte
    raw = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    path = tmp_path / "h.tar"
    path.write_bytes(bytes(raw) + bytes(1024))
    _one_line_error(path, "truncated")


def test_oversized_pax_header(tmp_path):
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = tarfile.XHDTYPE
    info.size = 1 << 32  # would be a 4 GiB allocation
    path = tmp_path / "p.tar"
    path.write_bytes(info.tobuf(tarfile.USTAR_FORMAT) + bytes(1024))
    _one_line_error(path, "too large")


def test_malformed_pax_record(tmp_path):
    body = b"99 path=x\n"
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = tarfile.XHDTYPE
    info.size = len(body)
    path = tmp_path / "p.tar"
    path.write_bytes(info.tobuf(tarfile.USTAR_FORMAT) + body + bytes(512 - len(body))
                     + bytes(1024))
    _one_line_error(path, "PAX record")


def test_bad_sparse_map(tmp_path):
    info, data = _file("s", b"x" * 10)
    info.pax_headers = {"GNU.sparse.map": "0,5,2,5", "GNU.sparse.size": "100",
                        "GNU.sparse.name": "s"}
    path = tmp_path / "s.tar"
    path.write_bytes(_tar_bytes([(info, data)]))
    _one_line_error(path, "sparse map")


@pytest.mark.parametrize("name,link", [("../evil", None), ("ok", "../../etc/passwd")])
def test_member_escaping_the_root(tmp_path, name, link):
    if link is None:
        info, data = _file(name, b"x")
    else:
        info, data = tarfile.TarInfo(name), None
        info.type, info.linkname = tarfile.LNKTYPE, link
    path = tmp_path / "e.tar"
    path.write_bytes(_tar_bytes([(info, data)]))
    _one_line_error(path, "escapes the archive root")


def test_member_below_a_symlink(tmp_path):
    sym = tarfile.TarInfo("etc")
    sym.type, sym.linkname = tarfile.SYMTYPE, "/etc"
    path = tmp_path / "s.tar"
    path.write_bytes(_tar_bytes([(sym, None), _file("etc/passwd", b"root")]))
    _one_line_error(path, "not a directory")


def test_missing_archive(tmp_path):
    _one_line_error(tmp_path / "nope.tar", "no such file", NotFoundError)


def test_subprocess_reads_our_stream(sample_tree, tmp_path):
    """zstd and xz command-line tools decode our multi-chunk output."""
    require_tool("zstd", "xz")
    for comp, cmd in (("zst", ["zstd", "-dc"]), ("xz", ["xz", "-dc"]), ("gz", ["gzip", "-dc"])):
        archive = tmp_path / f"a{SUFFIX[comp]}"
        write(sample_tree, archive)
        plain = subprocess.run([*cmd, str(archive)], capture_output=True, check=True).stdout
        (tmp_path / f"{comp}.tar").write_bytes(plain)
        assert tree_scan(read(tmp_path / f"{comp}.tar")) == tree_scan(sample_tree)


# --------------------------------------------------------------------------
# End to end through the `conv` command


def conv(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    import sys

    cmd = [sys.executable, "-c", "import sys; from convcore.cli import main; sys.exit(main())",
           *args]
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, "SOURCE_DATE_EPOCH": "1800000000"})
    if check and proc.returncode != 0:
        raise AssertionError(f"conv {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


@pytest.mark.parametrize("suffix", [".tar", ".tar.zst", ".tgz", ".tar.xz"])
def test_cli_dir_tar_dir(sample, tmp_path, suffix):
    archive = tmp_path / f"root{suffix}"
    conv("convert", f"dir:{sample} -> tar:{archive}")
    conv("convert", f"tar:{archive} -> dir:{tmp_path / 'out'}")
    assert host_scan(str(tmp_path / "out")) == host_scan(sample)
    assert sorted(os.listdir(tmp_path)) == sorted([archive.name, "out"])  # no temp leftovers
    if suffix == ".tar":
        require_tool("tar")
        run("tar", "-tvf", str(archive))


def test_cli_dir_options_and_tar_options(sample, tmp_path):
    archive = tmp_path / "root.tar"
    conv("convert", f"dir[owner=0:0,exclude=many,var/lib]:{sample} -> tar[compress=xz,level=1]"
         f":{archive}")
    assert tar_codec.detect_compression(str(archive)) == "xz"
    tree = read(archive)
    assert {(e.uid, e.gid) for e in tree} == {(0, 0)}
    assert "many" not in tree and "var/lib" not in tree and "var/sparse.img" in tree


def test_cli_bad_archive_is_one_line(tmp_path):
    archive = tmp_path / "bad.tar.gz"
    archive.write_bytes(gzip.compress(b"not a tar header" * 40, mtime=0)[:-6])
    proc = conv("convert", f"tar:{archive} -> dir:{tmp_path / 'out'}", check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("conv: ") and proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["bad.tar.gz"]


@pytest.mark.parametrize("headers,kind,error", [
    ({"mtime": "99999999999999999999"}, tarfile.REGTYPE, CorruptError),
    ({"GNU.sparse.map": "0,1", "GNU.sparse.size": str(1 << 62), "GNU.sparse.name": "f"},
     tarfile.REGTYPE, NoSpaceError),
    ({"linkpath": "a\0b"}, tarfile.SYMTYPE, CorruptError),
], ids=["mtime-out-of-range", "exabyte-sparse-file", "nul-in-symlink"])
def test_hostile_values_extract_as_one_line_errors(tmp_path, headers, kind, error):
    info, data = _file("f", b"x" if kind == tarfile.REGTYPE else b"")
    info.type = kind
    info.pax_headers = headers
    archive = tmp_path / "h.tar"
    archive.write_bytes(_tar_bytes([(info, data)]))
    with pytest.raises(error) as caught:
        dirfmt.sink(read(archive), str(tmp_path / "out"), {}, ctx())
    assert "\n" not in str(caught.value)


def test_dir_sink_streams_a_compressed_archive_once(tmp_path, monkeypatch):
    """Members out of tree order (a/x, b/y, a/z) still decompress once."""
    members = [_file(name, name.encode() * 5000) for name in ("a/x", "b/y", "a/z", "b/w")]
    archive = tmp_path / "o.tar.zst"
    import zstandard
    archive.write_bytes(zstandard.ZstdCompressor().compress(_tar_bytes(members)))
    tree = read(archive)
    opened = []
    real = tar_codec.StreamCursor.__init__

    def counting(self, *args, **kwargs):
        opened.append(args)
        real(self, *args, **kwargs)

    monkeypatch.setattr(tar_codec.StreamCursor, "__init__", counting)
    dirfmt.sink(tree, str(tmp_path / "out"), {}, ctx())
    assert len(opened) == 1
    for info, data in members:
        assert (tmp_path / "out" / info.name).read_bytes() == data


@pytest.mark.parametrize("size", [1, 1 << 20], ids=["buffered", "copy_file_range"])
def test_source_file_vanished_is_one_line(tmp_path, size):
    src = tmp_path / "src"
    src.mkdir()
    (src / "gone").write_bytes(b"x" * size)
    tree = dirfmt.source(str(src), {"owner": None, "exclude": ()}, ctx())
    os.unlink(src / "gone")
    with pytest.raises(ConvError, match="gone.*No such file") as info:
        write(tree, tmp_path / "out.tar")
    assert "\n" not in str(info.value)


def test_link_before_its_inode_holder_is_written_as_the_holder(tmp_path):
    """A re-ordered tree (link name first) still gives GNU tar a file, then
    a link to it."""
    require_tool("tar")
    tree = Tree()
    tree.add(Entry("a-link", Kind.FILE, mode=0o600, link="z-file", size=4,
                   data=BytesData(b"data")))
    tree.add(Entry("z-file", Kind.FILE, mode=0o600, size=4, data=BytesData(b"data")))
    archive = tmp_path / "l.tar"
    write(tree, archive)
    listing = run("tar", "-tvf", str(archive)).stdout
    assert "a-link" in listing and "z-file link to a-link" in listing
    out = tmp_path / "x"
    out.mkdir()
    run("tar", "-xpf", str(archive), "-C", str(out))
    assert (out / "a-link").read_bytes() == b"data"
    assert os.stat(out / "a-link").st_ino == os.stat(out / "z-file").st_ino
