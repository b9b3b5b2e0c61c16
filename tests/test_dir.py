"""The dir format: host directory -> tree (source) and tree -> new directory
(sink), judged against what os.lstat / listxattr report."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from convcore.builtin import dirfmt
from convcore.errors import CorruptError, NotFoundError, UsageError
from convcore.format import Context
from convcore.testing import (
    SAMPLE_MTIME_NS,
    is_root,
    make_sample_dir,
    normalize_hardlinks,
    run_conv,
    scan_dir,
    scan_tree,
)
from convcore.tree import BytesData, Entry, FileRangeData, Kind, Tree

ALL_XATTRS = ("user.", "security.", "trusted.")


def dir_source(path, **opts) -> Tree:
    fmt_opts = {"owner": None, "exclude": ()}
    fmt_opts.update(opts)
    return dirfmt.source(str(path), fmt_opts, Context())


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> str:
    return make_sample_dir(str(tmp_path_factory.mktemp("sample") / "src"))


def test_source_equals_host_tree(sample):
    tree = dir_source(sample)
    # atimes before anything reads file contents (reading a file, listing a
    # directory or reading a symlink moves them)
    for entry in tree:
        if entry.kind not in (Kind.DIR, Kind.SYMLINK):
            st = os.lstat(os.path.join(sample, entry.path))
            assert entry.atime_ns == st.st_atime_ns, entry.path
    assert normalize_hardlinks(scan_tree(tree, xattr_prefixes=ALL_XATTRS)) == \
        normalize_hardlinks(scan_dir(sample, xattr_prefixes=ALL_XATTRS))
    # the details scan_dir reports through its own lens
    tool = tree.get("usr/bin/tool")
    assert tool.mode == 0o4755 and tool.mtime_ns == SAMPLE_MTIME_NS
    assert tree.get("empty").mode == 0o1777
    assert tree.get("empty").xattrs == {"user.dir": b"on a directory"}
    link = tree.get("usr/bin/tool-hardlink")
    assert link.link == "usr/bin/tool" and link.data is tool.data
    assert tree.get("var/hostname-link").link == "etc/hostname"
    assert tree.get("etc/long-link").target == "/" + "long/" * 30 + "target"
    assert tree.get("var/fifo").kind is Kind.FIFO
    st = os.lstat(os.path.join(sample, "etc", "hostname"))
    assert tree.get("etc/hostname").ctime_ns == st.st_ctime_ns
    if is_root():
        assert tree.get("var/null").rdev == (1, 3)
        assert tree.get("var/sda").kind is Kind.BLOCK and tree.get("var/sda").gid == 6
        assert tree.get("var/bigdev").rdev == (300, 70000)
        assert tree.get("etc/short-link").uid == 100000
        assert "security.capability" in tool.xattrs


def test_source_references_data_and_reports_holes(sample):
    tree = dir_source(sample)
    data = tree.get("var/sparse.img").data
    assert isinstance(data, FileRangeData) and data.holes
    assert data.size == 3 << 20
    extents = data.extents()
    # data at 0..5000 and at 1 MiB + 5000 (+4096); everything else is a hole
    assert extents[0][0] == 0 and extents[0][1] >= 5000
    assert any(s <= 5000 + (1 << 20) < s + n for s, n in extents)
    assert sum(n for _, n in extents) <= 64 << 10
    assert data.read(4990, 20) == b"A" * 10 + bytes(10)


def test_source_children_in_byte_order(tmp_path):
    names = ["b", "B", "a", "é", "e", "_", "Z1", "z"]
    for name in names:
        (tmp_path / name).write_text(name)
    tree = dir_source(tmp_path)
    assert [e.name for e in tree.children("")] == sorted(names, key=os.fsencode)


def test_source_owner_option(sample):
    tree = dir_source(sample, owner=dirfmt._parse_owner("1234:5678"))
    assert {(e.uid, e.gid) for e in tree} == {(1234, 5678)}


def test_source_exclude_option(sample):
    tree = dir_source(sample, exclude=dirfmt._parse_globs("many,*.txt,/var/lib/deep"))
    paths = {e.path for e in tree}
    assert not any(p == "many" or p.startswith("many/") for p in paths)
    assert not any(p.endswith(".txt") for p in paths)
    assert "var/lib" in paths and "var/lib/deep" not in paths
    assert "etc/hostname" in paths


def test_option_parsing():
    fmt_options = {o.name: o for o in dirfmt.OPTIONS}
    assert fmt_options["owner"].convert("0:0") == (0, 0)
    assert fmt_options["owner"].convert("1000") == (1000, 1000)
    with pytest.raises(ValueError):
        fmt_options["owner"].convert("root:root")
    assert fmt_options["exclude"].convert("./proc/, sys") == ("proc", "sys")


def test_source_missing_or_not_a_directory(tmp_path):
    with pytest.raises(NotFoundError, match="no such directory"):
        dir_source(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotFoundError, match="not a directory"):
        dir_source(tmp_path / "file")


def test_sink_round_trip(sample, tmp_path):
    out = tmp_path / "out"
    tree = dir_source(sample)
    dirfmt.sink(tree, str(out), {}, Context())
    for entry in tree:
        st = os.lstat(out / entry.path)
        assert (st.st_atime_ns, st.st_mtime_ns) == (entry.atime_ns, entry.mtime_ns), entry.path
    assert normalize_hardlinks(scan_dir(str(out), xattr_prefixes=ALL_XATTRS)) == \
        normalize_hardlinks(scan_dir(sample, xattr_prefixes=ALL_XATTRS))
    st = os.stat(out / "var" / "sparse.img")
    assert st.st_size == 3 << 20 and st.st_blocks * 512 <= 64 << 10  # holes stay holes
    assert os.stat(out / "usr/bin/tool").st_ino == os.stat(out / "usr/bin/tool-hardlink").st_ino


def test_sink_read_only_directory_gets_children(tmp_path):
    tree = Tree()
    tree.add(Entry("ro", Kind.DIR, mode=0o555, mtime_ns=5_000_000_123))
    tree.add(Entry("ro/file", Kind.FILE, mode=0o444, data=BytesData(b"inside"),
                   size=6, mtime_ns=7_000_000_000))
    out = tmp_path / "out"
    dirfmt.sink(tree, str(out), {}, Context())
    assert (out / "ro" / "file").read_bytes() == b"inside"
    st = os.stat(out / "ro")
    assert stat.S_IMODE(st.st_mode) == 0o555 and st.st_mtime_ns == 5_000_000_123


class ListTree:
    """Entries in a fixed order, as a hostile tree source could hand them
    (Tree itself refuses some of these shapes)."""

    def __init__(self, *entries: Entry) -> None:
        self.entries = [Entry("", Kind.DIR, mode=0o755), *entries]

    def __iter__(self):
        return iter(self.entries)

    def resolve(self, entry: Entry) -> Entry:
        return entry


@pytest.mark.parametrize("entries", [
    [Entry("../evil", Kind.FILE, data=BytesData(b"x"), size=1)],
    [Entry("a/../../evil", Kind.FILE, data=BytesData(b"x"), size=1)],
    [Entry("/evil", Kind.FILE, data=BytesData(b"x"), size=1)],
    [Entry("evil", Kind.FILE, link="../evil-target")],
    [Entry("escape", Kind.SYMLINK, target="{outside}"),
     Entry("escape/evil", Kind.FILE, data=BytesData(b"x"), size=1)],
    [Entry("escape", Kind.SYMLINK, target="{outside}"),
     Entry("escape/evil", Kind.DIR)],
    [Entry("escape", Kind.SYMLINK, target="{outside}"),
     Entry("evil", Kind.FILE, link="escape/evil-target")],
    [Entry("escape", Kind.SYMLINK, target="{outside}"),
     Entry("escape/evil", Kind.SYMLINK, target="x")],
    [Entry("escape", Kind.SYMLINK, target="{outside}"),
     Entry("escape/evil", Kind.FIFO)],
    [Entry("escape", Kind.SYMLINK, target="{outside}"),
     Entry("escape/evil", Kind.FILE, link="escape")],
], ids=["dotdot", "inner-dotdot", "absolute", "hardlink-dotdot", "symlink-parent-file",
        "symlink-parent-dir", "hardlink-through-symlink", "symlink-parent-symlink",
        "symlink-parent-fifo", "symlink-parent-hardlink"])
def test_sink_refuses_escapes(tmp_path, entries):
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "dest").mkdir()
    (outside / "evil-target").write_text("secret")
    for e in entries:
        e.target = e.target.replace("{outside}", str(outside))
    with pytest.raises(CorruptError) as info:
        dirfmt.sink(ListTree(*entries), str(tmp_path / "dest" / "out"), {}, Context())
    assert "\n" not in str(info.value)
    assert sorted(os.listdir(outside)) == ["evil-target"]
    assert not (tmp_path / "dest" / "evil").exists() and not (tmp_path / "evil").exists()


def test_sink_not_root_warns_once(tmp_path, monkeypatch, capsys, sample):
    tree = dir_source(sample)
    tree.get("etc/hostname").uid = os.geteuid() + 1
    tree.add(Entry("dev-null", Kind.CHAR, mode=0o666, rdev=(1, 3)))
    tree.add(Entry("dev-sda", Kind.BLOCK, mode=0o660, rdev=(8, 0)))
    monkeypatch.setattr(os, "geteuid", lambda: 4321)
    dirfmt.sink(tree, str(tmp_path / "out"), {}, Context())
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("conv: warning: not root:") and "device nodes skipped" in err[0]
    assert "ownership not restored" in err[0]
    assert not (tmp_path / "out" / "dev-null").exists()
    assert (tmp_path / "out" / "etc" / "hostname").read_text() == "conv-test\n"


def test_sink_refuses_existing_destination(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(Exception, match="already exists"):
        dirfmt.sink(Tree(), str(tmp_path / "out"), {}, Context())


def test_owner_option_through_format(sample):
    from convcore.plugins import registry

    fmt = registry().get("dir")
    opts = fmt.parse_options({"owner": "0:0", "exclude": "many,var"})
    tree = fmt.source(sample, opts, Context())
    assert {(e.uid, e.gid) for e in tree} == {(0, 0)}
    assert "many" not in tree and "var" not in tree
    with pytest.raises(UsageError, match="owner"):
        fmt.parse_options({"owner": "nobody"})


# -- what the fast scan keeps


def test_source_reads_no_data_and_asks_no_holes(sample, monkeypatch):
    """The scan is metadata only: no file is opened (directories are, to be
    listed), SEEK_DATA waits until a writer wants the extents, and getxattr
    runs only for names listxattr gave."""
    calls = {"lseek": 0, "getxattr": 0, "open": 0}

    def counting(name, real):
        def call(*args, **kwargs):
            if not (name == "open" and args[1] & os.O_DIRECTORY):
                calls[name] += 1
            return real(*args, **kwargs)
        return call

    for name in calls:
        monkeypatch.setattr(os, name, counting(name, getattr(os, name)))
    tree = dir_source(sample)
    with_xattrs = sum(len(e.xattrs) for e in tree if e.link is None)
    assert calls["lseek"] == 0 and calls["open"] == 0
    assert with_xattrs > 0 and calls["getxattr"] == with_xattrs
    monkeypatch.undo()
    sparse = tree.get("var/sparse.img").data
    assert sum(n for _, n in sparse.extents()) <= 64 << 10 < sparse.size


def test_source_byte_order_with_undecodable_names(tmp_path):
    raw = [b"\xff", b"\xc3\xa9", b"z", b"\x80a", b"A", b"e\xcc\x81", b"\xe6\x97\xa5"]
    for name in raw:
        with open(os.path.join(os.fsencode(tmp_path), name), "wb") as f:
            f.write(name)
    tree = dir_source(tmp_path)
    assert [os.fsencode(e.name) for e in tree.children("")] == sorted(raw)
    for entry in tree.children(""):
        assert entry.data.read() == os.fsencode(entry.name)
    assert [os.fsencode(e.name) for e in tree.sorted().children("")] == sorted(raw)


def test_source_root_with_trailing_slash(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"data")
    tree = dir_source(f"{tmp_path}/")
    assert [e.path for e in tree] == ["", "d", "d/f"]
    assert tree.get("d/f").data.path == f"{tmp_path}/d/f"
    assert tree.get("d/f").data.read() == b"data"


def test_source_hardlinks_share_the_first_name_in_tree_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_bytes(b"1")
    os.link(tmp_path / "b" / "x", tmp_path / "a")
    os.link(tmp_path / "b" / "x", tmp_path / "c")
    os.setxattr(tmp_path / "a", "user.k", b"v")
    tree = dir_source(tmp_path)
    first = tree.get("a")
    assert first.link is None and first.xattrs == {"user.k": b"v"}
    for path in ("b/x", "c"):
        entry = tree.get(path)
        assert entry.link == "a" and entry.data is first.data and entry.xattrs == first.xattrs
    assert tree.link_counts()["a"] == 3


def test_source_exclude_globs_several_forms(tmp_path):
    for path in ("keep/a.txt", "keep/b.log", "skip/x", "deep/er/c.tmp", "deep/er/d", "x1", "x2"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(path)
    tree = dir_source(tmp_path, exclude=dirfmt._parse_globs("skip,*.tmp,keep/[b]*,x?"))
    assert [e.path for e in tree] == ["", "deep", "deep/er", "deep/er/d", "keep", "keep/a.txt"]


def test_sink_refuses_a_source_file_that_shrank(tmp_path):
    """A file cut short after the scan is a one-line error naming it, not an
    extracted file padded with zeros."""
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse", "wb") as f:
        f.write(b"A" * 4096)
        f.seek((1 << 20) - 4096)
        f.write(b"B" * 4096)
    tree = dir_source(src)
    os.truncate(src / "sparse", 4096)
    with pytest.raises(CorruptError, match=f"^{src}/sparse: file is shorter than its "
                       "recorded size") as info:
        dirfmt.sink(tree, str(tmp_path / "out"), {}, Context())
    assert "\n" not in str(info.value)


def test_source_restores_the_garbage_collector(tmp_path):
    """The scan pauses gc (it allocates only acyclic objects) and gives the
    caller's setting back, also when the scan fails."""
    import gc

    (tmp_path / "f").write_bytes(b"x")
    assert gc.isenabled()
    assert [e.path for e in dir_source(tmp_path)] == ["", "f"]
    assert gc.isenabled()
    with pytest.raises(NotFoundError):
        dir_source(tmp_path / "missing")
    assert gc.isenabled()
    gc.disable()
    try:
        dir_source(tmp_path)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_source_root_may_be_a_symlink(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "f").write_bytes(b"x")
    os.symlink("real", tmp_path / "link")
    tree = dir_source(tmp_path / "link")
    assert [e.path for e in tree] == ["", "f"] and tree.get("f").data.read() == b"x"


def test_source_deep_tree(tmp_path):
    """A tree far deeper than any fd or recursion budget scans whole."""
    depth = 300
    deep = tmp_path / "/".join(["d"] * depth)
    deep.mkdir(parents=True)
    (deep / "f").write_bytes(b"bottom")
    os.link(deep / "f", tmp_path / "a-link")
    tree = dir_source(tmp_path)
    rel = "/".join(["d"] * depth)
    assert len(tree) == depth + 3
    assert tree.get(f"{rel}/f").link == "a-link" and tree.get("a-link").data.read() == b"bottom"
    assert [e.path for e in tree][-1] == f"{rel}/f"


def test_cli_dir_to_tar_lists_undecodable_names_in_byte_order(tmp_path):
    """End to end through `conv convert`, judged by GNU tar: members of a
    directory come in byte order of their raw names, whatever their encoding,
    and each holds its own bytes."""
    from convcore.testing import require_tool, run, run_conv

    require_tool("tar")
    src = tmp_path / "src"
    raw = [b"\xff", b"\xc3\xa9", b"z", b"\x80a", b"A", b"\xe6\x97\xa5", b"_"]
    os.makedirs(os.path.join(os.fsencode(src), b"d\xfe"))
    for name in raw:
        with open(os.path.join(os.fsencode(src), b"d\xfe", name), "wb") as f:
            f.write(name)
    out = tmp_path / "out.tar"
    run_conv("convert", f"dir:{src} -> tar:{out}", env={"SOURCE_DATE_EPOCH": "1700000000"},
             check=True)
    listing = subprocess.run(["tar", "--quoting-style=literal", "-tf", str(out)],
                             capture_output=True, check=True).stdout
    members = [m.rstrip(b"/").removeprefix(b"./") for m in listing.splitlines()]
    files = [m.split(b"/", 1)[1] for m in members if m.count(b"/") == 1]
    assert files == sorted(raw)
    extracted = tmp_path / "x"
    extracted.mkdir()
    run("tar", "-xf", str(out), "-C", str(extracted))
    for name in raw:
        with open(os.path.join(os.fsencode(extracted), b"d\xfe", name), "rb") as f:
            assert f.read() == name


@pytest.mark.skipif(os.geteuid() != 0, reason="owners are restored only by root")
def test_sink_exact_modes_and_owners_under_a_setgid_parent(tmp_path):
    """Files are created with their permission bits and chowned only when
    needed: every mode (none, read-only, setuid/setgid/sticky) and owner
    still comes out exact, also where a setgid parent would hand new files
    its group, and the process umask is left as it was."""
    parent = tmp_path / "sgid"
    parent.mkdir()
    os.chown(parent, 0, 4242)
    os.chmod(parent, 0o2775)
    tree = Tree()
    want = {"none": (0o000, 0, 0), "ro": (0o444, 0, 0), "suid": (0o4755, 1000, 1000),
            "sgid": (0o2755, 0, 50), "mine": (0o644, 0, 0), "sticky": (0o1777, 7, 8)}
    for name, (mode, uid, gid) in want.items():
        tree.add(Entry(f"d/{name}", Kind.FILE, mode=mode, uid=uid, gid=gid,
                       data=BytesData(name.encode()), size=len(name)))
    tree.add(Entry("d", Kind.DIR, mode=0o1777, uid=3, gid=4))
    before = os.umask(0o027)
    try:
        dirfmt.sink(tree, str(parent / "out"), {}, Context())
        assert os.umask(0o027) == 0o027
    finally:
        os.umask(before)
    for name, (mode, uid, gid) in want.items():
        st = os.lstat(parent / "out" / "d" / name)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (mode, uid, gid), name
        assert (parent / "out" / "d" / name).read_bytes() == name.encode()
    st = os.lstat(parent / "out" / "d")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o1777, 3, 4)


@pytest.mark.parametrize("chain", ["ext4 -> raw", "squashfs -> raw", "tar"])
def test_converting_leaves_the_source_atimes_alone(tmp_path, chain):
    """Reading a tree does not move the atimes of its files and directories
    (relatime would, on the first read after a change): a second conversion
    of the same directory sees the same times, so writes the same bytes.
    (Symlinks are left out: readlink(2) moves a symlink's atime whatever the
    caller asks.)"""
    root = tmp_path / "root"
    (root / "etc" / "deep").mkdir(parents=True)
    (root / "etc" / "hostname").write_bytes(b"box\n")
    (root / "etc" / "deep" / "big").write_bytes(os.urandom(300_000))
    (root / "empty").write_bytes(b"")
    os.link(root / "etc" / "hostname", root / "hostname.link")
    old = 1_000_000_000_000_000_000  # 2001, before every mtime: relatime updates
    paths = [os.path.join(d, n) for d, dirs, files in os.walk(root) for n in dirs + files]
    paths.append(str(root))
    for p in paths:
        os.utime(p, ns=(old, os.lstat(p).st_mtime_ns))
    before = {p: os.lstat(p).st_atime_ns for p in paths}
    outs = []
    for n in (1, 2):
        out = str(tmp_path / f"out{n}")
        run_conv("convert", f"dir:{root} -> {chain}:{out}", check=True)
        outs.append(open(out, "rb").read())
    assert {p: os.lstat(p).st_atime_ns for p in paths} == before
    assert outs[0] == outs[1]
