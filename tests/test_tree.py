"""Tree semantics every source and writer relies on."""

from __future__ import annotations

import os
import stat

import pytest

from convcore.errors import CorruptError, NotFoundError, UsageError
from convcore.tree import (
    BytesData,
    Entry,
    FileRangeData,
    Kind,
    Tree,
    bytewise_sorted,
    normpath,
)


def test_parents_created_and_iteration_is_parent_first():
    t = Tree()
    t.add(Entry("a/b/c", Kind.FILE, data=BytesData(b"x"), size=1))
    assert [e.path for e in t] == ["", "a", "a/b", "a/b/c"]
    assert t.get("/a/b").kind is Kind.DIR


def test_replacing_dir_with_file_drops_descendants():
    t = Tree()
    t.add(Entry("d/x", Kind.FILE))
    t.add(Entry("d", Kind.FILE, size=0))
    assert [e.path for e in t] == ["", "d"]
    with pytest.raises(NotFoundError):
        t.get("d/x")
    assert isinstance(NotFoundError("x"), FileNotFoundError)


def test_remove_and_clear_dir():
    t = Tree()
    for p in ("d/a", "d/b/c", "e"):
        t.add(Entry(p, Kind.FILE))
    t.clear_dir("d")
    assert sorted(e.path for e in t) == ["", "d", "e"]
    t.remove("d")
    assert sorted(e.path for e in t) == ["", "e"]


def test_sorted_orders_children_bytewise():
    t = Tree()
    for name in ("b", "B", "a", "é"):
        t.add(Entry(name, Kind.FILE))
    assert [e.path for e in t.sorted()] == ["", "B", "a", "b", "é"]


def test_link_counts():
    t = Tree()
    t.add(Entry("d/f", Kind.FILE))
    t.add(Entry("d/sub", Kind.DIR))
    t.add(Entry("g", Kind.FILE, link="d/f"))
    counts = t.link_counts()
    assert counts["d/f"] == 2
    assert counts["d"] == 3  # ., its name in root, sub/..
    assert counts[""] == 3


@pytest.mark.parametrize("bad", ["../x", "a/../../x"])
def test_normpath_refuses_escape(bad):
    with pytest.raises(UsageError):
        normpath(bad)


def test_normpath_forms():
    assert normpath("./usr//bin/") == "usr/bin"
    assert normpath("/") == ""


def test_file_range_data_reports_holes_and_copies_sparse(tmp_path):
    src = tmp_path / "sparse"
    with open(src, "wb") as f:
        f.write(b"A" * 4096)
        f.seek(1 << 20)
        f.write(b"B" * 4096)
    data = FileRangeData(src, holes=True)
    assert data.extents() == [(0, 4096), (1 << 20, 4096)]
    dst = tmp_path / "copy"
    fd = os.open(dst, os.O_RDWR | os.O_CREAT)
    os.ftruncate(fd, data.size)
    data.copy_to(fd, 0)
    os.close(fd)
    assert dst.read_bytes() == src.read_bytes()
    assert os.stat(dst).st_blocks * 512 < 64 * 1024
    assert data.read(4090, 12) == b"AAAAAA" + bytes(6)


def test_segment_data_reads_holes_as_zeros_around_segments():
    import tempfile

    from convcore.blockdev import FileVolume
    from convcore.tree import SegmentData
    with tempfile.NamedTemporaryFile() as f:
        f.write(bytes(range(256)) * 4)
        f.flush()
        with FileVolume(f.name) as vol:
            data = SegmentData(vol, 300, [(10, 20, 100), (200, 50, 0)])
            expected = bytearray(300)
            expected[10:30] = (bytes(range(256)) * 4)[100:120]
            expected[200:250] = bytes(range(50))
            assert data.read() == bytes(expected)
            for off, n in ((0, 15), (25, 180), (199, 2), (240, 60), (290, 50)):
                assert data.read(off, n) == bytes(expected[off:off + n])
            assert data.extents() == [(10, 20), (200, 50)]


def test_data_order_groups_mixed_sources_without_comparing_their_keys(tmp_path):
    from convcore.blockdev import FileVolume
    from convcore.tree import SegmentData
    f = tmp_path / "f"
    f.write_bytes(b"x" * 100)
    t = Tree()
    with FileVolume(f) as vol:
        t.add(Entry("b", Kind.FILE, size=10, data=FileRangeData(f, 50, 10)))
        t.add(Entry("a", Kind.FILE, size=10, data=SegmentData(vol, 10, [(0, 10, 0)])))
        t.add(Entry("c", Kind.FILE, size=10, data=FileRangeData(f, 0, 10)))
        t.add(Entry("d", Kind.FILE, size=1, data=BytesData(b"z")))
        assert [e.path for e in t.data_order()] == ["d", "c", "b", "a"]


# -- hosts files that changed after the scan


def _sparse_file(path, size: int) -> None:
    with open(path, "wb") as f:
        f.write(b"A" * 4096)
        f.seek(size - 4096)
        f.write(b"B" * 4096)


@pytest.mark.parametrize("holes", [True, False], ids=["holes", "dense"])
def test_file_range_data_refuses_a_file_that_shrank(tmp_path, holes):
    """GNU tar says "file shrank"; padding the lost tail with zeros would
    write a silently wrong image."""
    src = tmp_path / "shrinks"
    _sparse_file(src, 1 << 20)
    data = FileRangeData(src, 0, 1 << 20, holes=holes)
    os.truncate(src, 8192)  # the data at the end is gone; what is left reads as before
    fd = os.open(tmp_path / "copy", os.O_RDWR | os.O_CREAT)
    try:
        os.ftruncate(fd, data.size)
        with pytest.raises(CorruptError, match=f"^{src}: file is shorter than its recorded "
                           "size") as info:
            data.copy_to(fd, 0)
    finally:
        os.close(fd)
    assert "\n" not in str(info.value) and "8192 bytes, 1048576 recorded" in str(info.value)
    with pytest.raises(CorruptError, match=str(src)):
        data.read((1 << 20) - 10, 10)
    if holes:
        with pytest.raises(CorruptError, match=str(src)):
            data.extents()
    # the part still there reads as it did
    assert data.read(4090, 10) == b"A" * 6 + bytes(4)


def test_file_range_data_in_a_truncated_archive_names_it(tmp_path):
    archive = tmp_path / "a.tar"
    archive.write_bytes(bytes(range(256)) * 16)
    data = FileRangeData(archive, 1024, 8192)  # a member claimed past the end
    fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT)
    try:
        with pytest.raises(CorruptError, match=f"^{archive}: file is shorter.*ends at byte "
                           "4096.*offset 1024"):
            data.copy_to(fd, 0)
    finally:
        os.close(fd)
    with pytest.raises(CorruptError, match=str(archive)):
        data.read(0, 8192)


def test_file_range_data_of_a_removed_file_is_one_line(tmp_path):
    src = tmp_path / "gone"
    src.write_bytes(b"x" * 100)
    data = FileRangeData(src, holes=True)
    src.unlink()
    for call in (data.extents, data.read, lambda: data.copy_to(0, 0)):
        with pytest.raises(NotFoundError, match=f"^{src}: No such file"):
            call()


def test_copy_range_names_the_short_input(tmp_path):
    from convcore.tree import copy_range
    src = tmp_path / "short"
    src.write_bytes(b"x" * 100)
    with open(src, "rb") as f, open(tmp_path / "dst", "wb") as g:
        with pytest.raises(CorruptError, match=f"^{src}: file is shorter than its recorded "
                           "size \\(ends at byte 100\\)$"):
            copy_range(f.fileno(), 0, g.fileno(), 0, 200, name=str(src))
        with pytest.raises(CorruptError, match="^input file is shorter"):
            copy_range(f.fileno(), 0, g.fileno(), 0, 200)


# -- semantics the faster Tree keeps


def test_sorted_is_bytewise_for_non_utf8_and_surrogate_names():
    names = ["b", "é", "\udcff", "\udc80x", "z", "日本", "\U0001f600", "ÿ", "a\udce9", "a",
             "A", "ﬀ"]
    t = Tree()
    for name in names:
        t.add(Entry(name, Kind.FILE))
    got = [e.name for e in t.sorted().children("")]
    assert got == sorted(names, key=os.fsencode)
    ascii_only = ["b", "B", "_", "a1", "a", "A0"]
    assert bytewise_sorted(ascii_only) == sorted(ascii_only, key=os.fsencode)
    assert bytewise_sorted(["é", "z"]) == ["z", "é"]


def test_sorted_copy_keeps_metadata_and_original_order():
    t = Tree()
    for name in ("c", "a/z", "a/b", "b"):
        t.add(Entry(name, Kind.FILE, mode=0o600))
    s = t.sorted()
    assert [e.path for e in s] == ["", "a", "a/b", "a/z", "b", "c"]
    assert [e.path for e in t] == ["", "c", "a", "a/z", "a/b", "b"]
    assert s.get("a/z") is t.get("a/z") and s.children("a")[1].mode == 0o600


def test_replacing_an_entry_shows_the_new_one_everywhere():
    t = Tree()
    t.add(Entry("d/f", Kind.FILE, mode=0o600))
    t.add(Entry("d/g", Kind.FILE))
    new = t.add(Entry("d/f", Kind.SYMLINK, target="g"))
    assert t.get("d/f") is new
    assert [e for e in t if e.path == "d/f"] == [new]
    assert t.children("d")[0] is new and [e.name for e in t.children("d")] == ["f", "g"]
    assert t.sorted().children("d")[0] is new
    # a directory replacing a directory keeps its children
    t.add(Entry("d", Kind.DIR, mode=0o700))
    assert t.get("d").mode == 0o700 and [e.name for e in t.children("d")] == ["f", "g"]
    # and a directory replacing a file starts empty
    t.add(Entry("d/g", Kind.DIR))
    t.add(Entry("d/g/x", Kind.FILE))
    assert [e.path for e in t] == ["", "d", "d/f", "d/g", "d/g/x"]


def test_file_under_a_non_directory_is_refused():
    t = Tree()
    t.add(Entry("f", Kind.FILE))
    t.add(Entry("l", Kind.DIR, link="f"))  # a hardlink name is never a directory
    for path in ("f/x", "l/x"):
        with pytest.raises(CorruptError, match="is not a directory"):
            t.add(Entry(path, Kind.FILE))
    assert [e.path for e in t] == ["", "f", "l"]


def test_deep_paths_need_no_recursion():
    """A hostile archive may name a path thousands of directories deep."""
    depth = 5000
    path = "/".join(["d"] * depth)
    t = Tree()
    t.add(Entry(path + "/f", Kind.FILE, mtime_ns=7))
    assert len(t) == depth + 2
    assert t.get(path).kind is Kind.DIR and t.get(path).mtime_ns == 7
    assert [e.path for e in t][-1] == path + "/f"
    assert t.link_counts()["d"] == 3
    t.remove("d")
    assert len(t) == 1 and [e.path for e in t] == [""]


def test_remove_subtree_and_re_add():
    t = Tree()
    for p in ("a/b/c/d", "a/b/e", "a/f", "g"):
        t.add(Entry(p, Kind.FILE))
    t.remove("a/b")
    assert [e.path for e in t] == ["", "a", "a/f", "g"]
    assert "a/b/c" not in t and "a/b/c/d" not in t
    t.add(Entry("a/b", Kind.FILE))
    assert [e.path for e in t] == ["", "a", "a/f", "a/b", "g"]
    t.remove("")  # the root stays
    assert len(t) == 5


def test_link_counts_for_every_kind_of_name():
    t = Tree()
    t.add(Entry("d/sub1", Kind.DIR))
    t.add(Entry("d/sub2/f", Kind.FILE))
    t.add(Entry("d/l1", Kind.FILE, link="d/sub2/f"))
    t.add(Entry("l2", Kind.FILE, link="d/sub2/f"))
    t.add(Entry("s", Kind.SYMLINK, target="d"))
    assert t.link_counts() == {"": 3, "d": 4, "d/sub1": 2, "d/sub2": 2, "d/sub2/f": 3,
                               "s": 1}


def test_data_order_matches_the_key_order(tmp_path):
    """The grouped sort gives exactly sorted(key=data_order_key), ties in
    tree order."""
    from convcore.tree import data_order_key
    f = tmp_path / "f"
    f.write_bytes(b"x" * 100)
    t = Tree()
    for i in range(30):
        kind = i % 3
        data = (FileRangeData(f, (i * 7) % 50, 1) if kind == 0 else
                BytesData(b"%d" % i) if kind == 1 else None)
        t.add(Entry(f"d{i % 4}/f{i}", Kind.FILE, data=data))
    t.add(Entry("link", Kind.FILE, link="d0/f0", data=t.get("d0/f0").data))
    expected = sorted((e for e in t if e.data is not None and e.link is None),
                      key=lambda e: data_order_key(e.data))
    assert [e.path for e in t.data_order()] == [e.path for e in expected]
    subset = list(t)[::2]
    assert t.data_order(subset) == sorted(
        (e for e in subset if e.data is not None and e.link is None and e.kind is Kind.FILE),
        key=lambda e: data_order_key(e.data))


def test_kind_lookups():
    assert Kind.from_mode(0o100644) is Kind.FILE and Kind.from_mode(0o020600) is Kind.CHAR
    with pytest.raises(CorruptError, match="unknown file type in mode 0o170644"):
        Kind.from_mode(0o170644)
    assert {Kind.FILE: 1, Kind.DIR: 2}[Kind.DIR] == 2 and Kind(stat.S_IFLNK) is Kind.SYMLINK
    assert Entry("x", Kind.BLOCK, mode=0o4660).st_mode == stat.S_IFBLK | 0o4660


def test_gc_paused_restores_the_callers_setting():
    import gc

    from convcore.tree import gc_paused
    assert gc.isenabled()
    with pytest.raises(CorruptError):
        with gc_paused():
            assert not gc.isenabled()
            raise CorruptError("boom")
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_gc_paused_keep_freezes_what_was_made_instead_of_collecting_it():
    """A one-shot run keeps what a pause made out of collection: frozen, the
    first collection after the pause does not walk it; still freed by
    refcounting."""
    import gc
    import weakref

    from convcore.tree import gc_paused

    class Node:
        pass

    try:
        with gc_paused(keep=True):
            made = [Node() for _ in range(1000)]
        assert gc.isenabled() and gc.get_count()[0] < 10
        assert not any(o is made[0] for o in gc.get_objects())
        gone = weakref.ref(made[-1])
        del made
        assert gone() is None
    finally:
        gc.unfreeze()
    with gc_paused():
        made = [Node()]
    assert any(o is made[0] for o in gc.get_objects())


def test_data_order_of_host_tree_files_from_two_roots(tmp_path):
    """Files of scanned directories (one HostTreeFileData class per root)
    sort as data_order_key sorts them, mixed with other data, ties kept in
    tree order."""
    from convcore.tree import HostTreeFileData, data_order_key
    a = HostTreeFileData.for_root(f"{tmp_path}/a/")
    b = HostTreeFileData.for_root(f"{tmp_path}/b/")
    t = Tree()
    for i in range(40):
        rel = f"d{(i * 7) % 5}/f{(i * 13) % 17}-{i}"
        data = (a if i % 3 else b)(rel, i, bool(i % 2)) if i % 4 else BytesData(b"%d" % i)
        t.add(Entry(f"x{i % 3}/{i}", Kind.FILE, data=data))
    expected = sorted((e for e in t if e.data is not None), key=lambda e: data_order_key(e.data))
    assert [e.path for e in t.data_order()] == [e.path for e in expected]
    assert {type(e.data).__qualname__ for e in expected} == {"BytesData", "HostTreeFileData"}
