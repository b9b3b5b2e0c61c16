"""The dir source's scan split with a forked child (large trees) gives the
Tree a scan in one process gives: same entries in the same order, same
metadata, xattrs and data references, the same first name of every
hardlinked inode, and the same one-line error."""

from __future__ import annotations

import errno
import os
import threading
import time

import pytest

from convcore import forked
from convcore.builtin import dirfmt
from convcore.errors import ConvError, CorruptError
from convcore.format import Context
from convcore.pipeline import fingerprint
from convcore.testing import xattrs_supported
from convcore.tree import Kind, Tree

FIELDS = ("path", "kind", "mode", "uid", "gid", "mtime_ns", "atime_ns", "ctime_ns",
          "crtime_ns", "size", "target", "rdev", "link", "xattrs")


def make_tree(root) -> str:
    """Twenty-four directories of twelve files (some linked across directories,
    some with xattrs), symlinks, FIFOs and empty directories."""
    os.makedirs(root)
    j = lambda *p: os.path.join(root, *p)  # noqa: E731
    xattrs = xattrs_supported(str(root))
    for d in range(24):
        os.makedirs(j(f"d{d:02d}", "sub"))
        os.makedirs(j(f"d{d:02d}", "empty"))
        for f in range(12):
            with open(j(f"d{d:02d}", f"f{f:02d}"), "wb") as out:
                out.write(b"x" * (d * 12 + f))
        os.symlink(f"../d{(d + 1) % 24:02d}/f00", j(f"d{d:02d}", "sub", "link"))
        os.mkfifo(j(f"d{d:02d}", "sub", "fifo"))
        if xattrs and d % 3 == 0:
            os.setxattr(j(f"d{d:02d}", "f05"), "user.n", str(d).encode())
            os.setxattr(j(f"d{d:02d}", "sub"), "user.dir", b"x" * 100)
    # each inode's names sit in directories far apart in tree order, so the
    # parent and the child each meet names of the same inodes first
    for d in range(0, 24, 2):
        os.link(j(f"d{23 - d:02d}", "f07"), j(f"d{d:02d}", "sub", "hard"))
        os.link(j(f"d{23 - d:02d}", "f07"), j(f"d{(d + 13) % 24:02d}", "zz-hard"))
    with open(j("top-file"), "wb") as out:
        out.write(b"top")
    os.link(j("top-file"), j("d20", "top-hard"))
    # readlink moves a symlink's atime until it is later than its ctime
    # (relatime): set it so, or every scan would see new atimes
    later = time.time_ns() + 86400 * 10**9
    for d in range(24):
        link = j(f"d{d:02d}", "sub", "link")
        os.utime(link, ns=(later, os.lstat(link).st_mtime_ns), follow_symlinks=False)
    return str(root)


def scan(path, *, one_shot: bool = False, **opts) -> Tree:
    fmt_opts = {"owner": None, "exclude": ()}
    fmt_opts.update(opts)
    ctx = Context()
    ctx.one_shot = one_shot
    return dirfmt.source(str(path), fmt_opts, ctx)


def described(tree: Tree) -> list[tuple]:
    out = []
    for entry in tree:
        data = entry.data
        out.append(tuple(getattr(entry, f) for f in FIELDS) + (
            None if data is None else (type(data).__qualname__, data.path, data.size,
                                       data.holes),))
    return out


@pytest.fixture
def forks(monkeypatch):
    """Split every scan after its first few entries; count the children."""
    monkeypatch.delenv("CONV_NO_FORK", raising=False)
    monkeypatch.setattr(dirfmt, "_FORK_AFTER", 5)
    monkeypatch.setattr(dirfmt, "_BATCH", 5)
    made = []

    class Counted(forked.Forked):
        def __init__(self, *args, **kwargs) -> None:
            made.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(dirfmt, "Forked", Counted)
    return made


def alone(path, monkeypatch, **opts) -> Tree:
    with monkeypatch.context() as m:
        m.setenv("CONV_NO_FORK", "1")
        return scan(path, **opts)


@pytest.mark.parametrize("exclude", [(), ("d1*/sub", "*/f1?")])
def test_split_scan_gives_the_tree_of_one_process(tmp_path, monkeypatch, forks, exclude):
    root = make_tree(tmp_path / "src")
    expected = alone(root, monkeypatch, exclude=exclude)
    for _ in range(3):  # which process scans which piece varies from run to run
        tree = scan(root, exclude=exclude)
        assert described(tree) == described(expected)
        assert len(tree) == len(expected) == len(described(tree))
        assert fingerprint(tree) == fingerprint(expected)  # the default seed
        for entry in tree:
            if entry.link is not None:
                assert entry.data is tree.resolve(entry).data
    assert len(forks) == 3


def test_split_scan_first_name_of_an_inode_holds_it(tmp_path, forks):
    root = make_tree(tmp_path / "src")
    tree = scan(root)
    assert len(forks) == 1
    # tree order: d00/sub/hard comes before d13/zz-hard and d23/f07
    first = tree.get("d00/sub/hard")
    assert first.link is None and first.data.path == os.path.join(root, "d00/sub/hard")
    assert tree.get("d13/zz-hard").link == "d00/sub/hard"
    assert tree.get("d23/f07").link == "d00/sub/hard"
    assert tree.get("d20/top-hard").link is None and tree.get("top-file").link == "d20/top-hard"
    counts = tree.link_counts()
    assert counts["d00/sub/hard"] == 3 and counts["d20/top-hard"] == 2
    if xattrs_supported(root):
        assert tree.get("d21/f05").xattrs == {"user.n": b"21"}
        assert tree.get("d03/sub").xattrs == {"user.dir": b"x" * 100}


def test_split_scan_reports_the_first_error_in_tree_order(tmp_path, monkeypatch, forks):
    """Two directories that cannot be listed: both processes may meet one,
    the error is the one a scan in one process meets first."""
    root = make_tree(tmp_path / "src")
    real = dirfmt.open_noatime

    def refusing(path, flags=os.O_RDONLY):
        if os.path.basename(path.rstrip("/")) == "sub" and (
                "d07" in path or "d19" in path or os.getcwd().endswith(("d07", "d19"))):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(path, flags)

    monkeypatch.setattr(dirfmt, "open_noatime", refusing)
    with pytest.raises(ConvError) as expected:
        alone(root, monkeypatch)
    assert str(expected.value) == f"{root}/d07/sub: cannot list directory: Permission denied"
    for _ in range(3):
        with pytest.raises(ConvError) as got:
            scan(root)
        assert type(got.value) is ConvError and str(got.value) == str(expected.value)
    assert len(forks) == 3


def test_split_scan_unknown_type_and_vanished_files(tmp_path, monkeypatch, forks):
    root = make_tree(tmp_path / "src")
    real = os.lstat

    def lstat(path, *args, **kwargs):
        st = real(path, *args, **kwargs)
        name = os.path.basename(path)
        if name == "f03":
            raise FileNotFoundError(errno.ENOENT, "No such file or directory")
        if name == "f11" and ("d22" in path or os.getcwd().endswith("d22")):
            return os.stat_result((0o170644,) + tuple(st)[1:])
        return st

    monkeypatch.setattr(os, "lstat", lstat)
    with pytest.raises(CorruptError, match=f"^{root}/d22/f11: unknown file type in mode "
                       "0o170644$"):
        scan(root)
    monkeypatch.setattr(os, "lstat", lambda p, *a, **k: (
        _vanish(p) if os.path.basename(p) == "f03" else real(p, *a, **k)))
    tree = scan(root)
    assert described(tree) == described(alone(root, monkeypatch))
    assert "d05/f03" not in tree and "d05/f04" in tree


def _vanish(path):
    raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)


def test_split_scan_survives_a_child_that_dies(tmp_path, monkeypatch, forks):
    """A child killed or failing: the parent scans its pieces itself."""
    root = make_tree(tmp_path / "src")

    def dies(*args):
        os.kill(os.getpid(), 9)

    monkeypatch.setattr(dirfmt, "_child_walk", dies)
    assert described(scan(root)) == described(alone(root, monkeypatch))
    assert len(forks) == 1


@pytest.mark.parametrize("pieces_sent", [0, 1, 3])
def test_split_scan_survives_a_child_that_dies_while_sending(tmp_path, monkeypatch, forks,
                                                            pieces_sent):
    """Killed halfway through sending a piece, after sending some whole:
    the parent keeps the whole ones and scans the rest itself."""
    root = make_tree(tmp_path / "src")
    real_walk, real_write = dirfmt._child_walk, os.write

    def dies_halfway(walk, pieces, claims, sent):
        frames = []

        def write(fd, data):
            if fd != sent:
                return real_write(fd, data)
            if len(frames) == pieces_sent:
                real_write(fd, bytes(data[:len(data) // 2]))
                os.kill(os.getpid(), 9)
            frames.append(1)
            return real_write(fd, data)

        os.write = write  # in the child only
        real_walk(walk, pieces, claims, sent)

    monkeypatch.setattr(dirfmt, "_child_walk", dies_halfway)
    assert described(scan(root)) == described(alone(root, monkeypatch))
    assert len(forks) == 1


def test_split_scan_survives_a_child_out_of_step(tmp_path, monkeypatch, forks):
    """A length no piece can have, from a child that then keeps writing far
    more than a pipe holds: the parent stops reading, kills the child instead
    of waiting for it, and scans the child's pieces itself."""
    root = make_tree(tmp_path / "src")

    def out_of_step(walk, pieces, claims, sent):
        os.write(sent, dirfmt._FRAME.pack(dirfmt._MAX_FRAME + 1))
        while True:
            os.write(sent, bytes(1 << 16))

    monkeypatch.setattr(dirfmt, "_child_walk", out_of_step)
    assert described(scan(root)) == described(alone(root, monkeypatch))
    assert len(forks) == 1


def test_scan_gives_back_the_working_directory(tmp_path, monkeypatch, forks):
    """The scan resolves names relative to the directory it walks (when no
    other thread could be resolving paths meanwhile), from a relative root
    too, and leaves the caller's working directory as it found it."""
    make_tree(tmp_path / "src")
    monkeypatch.chdir(tmp_path)
    expected = described(alone(tmp_path / "src", monkeypatch))
    tree = scan("src/")
    assert os.getcwd() == str(tmp_path)
    assert described(tree) == [e[:-1] + ((e[-1][0], e[-1][1].replace(str(tmp_path) + "/", ""),
                                          *e[-1][2:]) if e[-1] else None,) for e in expected]
    assert tree.get("d00/f01").data.path == "src/d00/f01"
    with pytest.raises(ConvError, match="^src/nothing: no such directory"):
        scan("src/nothing")
    assert os.getcwd() == str(tmp_path)
    # another thread: full paths, the same tree
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert described(scan("src")) == described(tree)
    finally:
        stop.set()
        thread.join()
    assert os.getcwd() == str(tmp_path)


def test_split_scan_of_a_deep_tree(tmp_path, monkeypatch, forks):
    depth = 300
    deep = tmp_path / "src" / "/".join(["d"] * depth)
    deep.mkdir(parents=True)
    for i in range(5):
        (deep / f"f{i}").write_bytes(b"bottom")
    (tmp_path / "src" / "side").mkdir()
    os.link(deep / "f0", tmp_path / "src" / "side" / "a-link")
    tree = scan(tmp_path / "src")
    assert described(tree) == described(alone(tmp_path / "src", monkeypatch))
    assert tree.get("side/a-link").link == "/".join(["d"] * depth) + "/f0"
    assert [e.kind for e in tree].count(Kind.DIR) == depth + 2


def test_a_scanned_tree_is_left_out_of_garbage_collection(tmp_path):
    """In the conv command (a one-shot run), the scanned entries are frozen:
    collections after the scan (and in forked writer children) do not walk
    them; a library caller's tree is not."""
    import gc

    root = make_tree(tmp_path / "src")
    library = scan(root)
    assert any(o is library.get("d00/f01") for o in gc.get_objects())
    try:
        tree = scan(root, one_shot=True)
        entry = tree.get("d00/f01")
        assert gc.is_tracked(entry) and not any(o is entry for o in gc.get_objects())
        assert not any(o is entry.data for o in gc.get_objects())
        assert gc.isenabled()
        assert described(tree) == described(library)
    finally:
        gc.unfreeze()


def test_split_scan_rescans_a_dead_childs_piece_with_the_right_first_names(tmp_path,
                                                                          monkeypatch, forks):
    """The child claims a piece and dies: the parent scans that piece after
    pieces of its own that come later in tree order and hold names of the
    same inode; the piece's name still is the first."""
    root = tmp_path / "src"
    (root / "a").mkdir(parents=True)
    for f in range(3):
        (root / "a" / f"f{f}").write_bytes(b"x")
    (root / "zz-common").write_bytes(b"shared")
    for d in range(24):
        (root / f"b{d:02d}").mkdir()
        (root / f"b{d:02d}" / "f").write_bytes(b"x")
        os.link(root / "zz-common", root / f"b{d:02d}" / "link")
    # The first 5 records (a and its files, then b00) come before the split;
    # the pieces are b00/f, b00/link, b01, ... The parent dawdles over its
    # first piece (b00/f) so that the child claims the next (b00/link).
    parent, real_unit, slow = os.getpid(), dirfmt._Walk.unit, []

    def unit(self, rel_prefix, names, descend=True):
        if os.getpid() == parent and not slow:
            slow.append(time.sleep(0.2))
        return real_unit(self, rel_prefix, names, descend)

    def claims_one_and_dies(walk, pieces, claims, sent):
        assert pieces[int.from_bytes(os.read(claims, 4), "little")][2] == ["link"]
        os.kill(os.getpid(), 9)

    monkeypatch.setattr(dirfmt._Walk, "unit", unit)
    monkeypatch.setattr(dirfmt, "_child_walk", claims_one_and_dies)
    tree = scan(root)
    assert described(tree) == described(alone(root, monkeypatch))
    assert tree.get("b00/link").link is None
    assert {tree.get(f"b{d:02d}/link").link for d in range(1, 24)} == {"b00/link"}
    assert tree.get("zz-common").link == "b00/link"


def test_split_scan_without_a_process_to_spare(tmp_path, monkeypatch, forks):
    """fork failing (EAGAIN: a process limit) leaves the parent to scan alone."""
    root = make_tree(tmp_path / "src")

    def no_fork():
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)
    assert described(scan(root)) == described(alone(root, monkeypatch))
    assert len(forks) == 1


def make_tops(root) -> str:
    """Three top directories (a Debian root's usr, var, etc. in miniature),
    each a make_tree, with a name of one inode in each of them."""
    for top in ("t0", "t1", "t2"):
        make_tree(os.path.join(root, top))
    os.link(os.path.join(root, "t0", "d00", "f01"), os.path.join(root, "t1", "d15", "cross"))
    os.link(os.path.join(root, "t0", "d00", "f01"), os.path.join(root, "t2", "cross"))
    return str(root)


@pytest.fixture
def pieces_cut(monkeypatch) -> list:
    """The pieces each split scan made."""
    made: list = []
    real = dirfmt._Scanner.share

    def share(self, walk, pieces, children, built):
        made.append(list(pieces))
        return real(self, walk, pieces, children, built)
    monkeypatch.setattr(dirfmt._Scanner, "share", share)
    return made


@pytest.mark.parametrize("exclude", [(), ("t1/d0*", "*/f1?", "t2")])
def test_split_scan_cuts_the_subdirectories_of_a_directory_with_few_names_left(
        tmp_path, monkeypatch, forks, pieces_cut, exclude):
    """Split inside t0, the root has two names left: each becomes a piece of
    its own record and pieces of what it holds, so the walk does not end
    with one process walking all of t2. The tree is the one-process one."""
    root = make_tops(tmp_path / "src")
    expected = alone(root, monkeypatch, exclude=exclude)
    for _ in range(3):
        tree = scan(root, exclude=exclude)
        assert described(tree) == described(expected)
        assert fingerprint(tree) == fingerprint(expected)
    own_records = [(p[1], p[2]) for p in pieces_cut[0] if not p[3]]
    assert ("", ["t1"]) in own_records
    assert (("", ["t2"]) in own_records) == ("t2" not in exclude)
    assert any(prefix == "t1/" for _, prefix, _, _ in pieces_cut[0])
    assert tree.get("t0/d00/f01").link is None
    assert tree.get("t1/d15/cross").link == "t0/d00/f01"


def test_split_scan_of_a_directory_gone_after_it_was_cut(tmp_path, monkeypatch, forks,
                                                         pieces_cut):
    """t2 is cut into pieces, then removed before they are walked: the scan
    is the one of the tree without it, as a walk that came later would see."""
    import shutil

    root = make_tops(tmp_path / "src")
    os.unlink(os.path.join(root, "t2", "cross"))  # removing it would change f01's ctime
    real = dirfmt._Scanner.share

    def share(self, walk, pieces, children, built):
        shutil.rmtree(os.path.join(root, "t2"))
        return real(self, walk, pieces, children, built)
    monkeypatch.setattr(dirfmt._Scanner, "share", share)
    tree = scan(root)
    assert any(p[2] == ["t2"] and not p[3] for p in pieces_cut[0])
    # (but for the root's times, read before t2 went)
    assert described(tree)[1:] == described(alone(root, monkeypatch))[1:]
