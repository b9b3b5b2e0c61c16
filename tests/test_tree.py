"""Tree semantics every source and writer relies on."""

from __future__ import annotations

import os

import pytest

from convcore.errors import NotFoundError, UsageError
from convcore.tree import BytesData, Entry, FileRangeData, Kind, Tree, normpath


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
