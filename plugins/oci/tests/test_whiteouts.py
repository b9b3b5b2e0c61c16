"""Layer stacking rules on layers given as Entry lists (the tar reader's
output), so each rule is checked apart from tar parsing."""

from __future__ import annotations

import pytest
from conv_oci.whiteouts import OVERLAY_OPAQUE, LayerMerger

from convcore.errors import CorruptError
from convcore.tree import BytesData, Entry, Kind


def d(path: str, mode: int = 0o755, **kw) -> Entry:
    return Entry(path, Kind.DIR, mode=mode, **kw)


def f(path: str, content: bytes = b"", mode: int = 0o644, **kw) -> Entry:
    return Entry(path, Kind.FILE, mode=mode, size=len(content), data=BytesData(content), **kw)


def wh(path: str) -> Entry:
    return Entry(path, Kind.FILE, mode=0o644, mtime_ns=5_000_000_000)


def link(path: str, target: str) -> Entry:
    return Entry(path, Kind.FILE, link=target)


def merge(*layers: list[Entry], whiteouts: str = "apply"):
    merger = LayerMerger(whiteouts)
    for i, layer in enumerate(layers):
        merger.apply(layer, f"layer{i}")
    return merger.finish()


def listing(tree) -> dict[str, str]:
    """path -> what a user sees: type and contents (or link holder)."""
    out = {}
    for e in tree:
        inode = tree.resolve(e)
        if inode.kind is Kind.FILE:
            out[e.path] = "file:" + inode.data.read().decode() if inode.data else "file:"
        else:
            out[e.path] = inode.kind.name.lower()
    return out


def test_whiteout_removes_lower_file_and_dir_tree():
    tree = merge(
        [d("etc"), f("etc/a", b"A"), f("etc/b", b"B"), d("opt"), d("opt/x"), f("opt/x/y", b"Y")],
        [wh("etc/.wh.a"), wh(".wh.opt")],
    )
    assert listing(tree) == {"": "dir", "etc": "dir", "etc/b": "file:B"}


def test_opaque_after_siblings_in_tar_order_hides_only_lower_entries():
    tree = merge(
        [d("d"), f("d/old", b"old"), d("d/sub"), f("d/sub/deep", b"x")],
        # The layer's own new files come BEFORE the opaque marker in the tar.
        [d("d"), f("d/new", b"new"), d("d/sub2"), wh("d/.wh..wh..opq")],
    )
    assert listing(tree) == {"": "dir", "d": "dir", "d/new": "file:new", "d/sub2": "dir"}


def test_whiteout_only_hides_lower_layers_not_same_layer():
    tree = merge([f("a", b"lower")], [f("a", b"upper"), wh(".wh.a")])
    assert listing(tree) == {"": "dir", "a": "file:upper"}


def test_file_dir_file_replacements():
    tree = merge(
        [f("x", b"file1"), d("y"), f("y/child", b"c")],
        [d("x"), f("x/inside", b"in"), f("y", b"now a file")],
        [f("x", b"file again")],
    )
    assert listing(tree) == {"": "dir", "x": "file:file again", "y": "file:now a file"}


def test_dir_over_dir_keeps_lower_children_and_takes_new_metadata():
    tree = merge([d("d", mode=0o700), f("d/a", b"a")], [d("d", mode=0o750, uid=7)])
    assert tree.get("d").mode == 0o750 and tree.get("d").uid == 7
    assert listing(tree)["d/a"] == "file:a"


def test_hardlink_to_lower_layer_file():
    tree = merge([f("bin/tool", b"T", mode=0o755)], [link("bin/alias", "bin/tool")])
    alias = tree.get("bin/alias")
    assert alias.link == "bin/tool"
    assert tree.resolve(alias).mode == 0o755
    assert tree.link_counts()["bin/tool"] == 2


def test_hardlink_survives_whiteout_of_its_target():
    tree = merge([f("a", b"data"), link("b", "a")], [wh(".wh.a")])
    b = tree.get("b")
    assert b.link is None and b.data.read() == b"data"
    assert listing(tree) == {"": "dir", "b": "file:data"}


def test_hardlink_keeps_old_inode_when_target_name_is_replaced():
    tree = merge([f("a", b"old"), link("b", "a"), link("c", "a")], [f("a", b"new")])
    assert listing(tree) == {"": "dir", "a": "file:new", "b": "file:old", "c": "file:old"}
    # b now holds the old inode and c links to it.
    assert tree.get("b").link is None and tree.get("c").link == "b"


def test_hardlink_to_missing_target_is_corrupt():
    with pytest.raises(CorruptError, match="layer0: hardlink 'b' to missing 'a'"):
        merge([link("b", "a")])


def test_path_escaping_root_names_layer():
    with pytest.raises(CorruptError, match=r"layer1: member '\.\./evil' escapes the root"):
        merge([f("ok")], [f("../evil", b"x")])


def test_whiteout_escaping_root_is_corrupt():
    with pytest.raises(CorruptError, match="escapes the root"):
        merge([f("ok")], [wh("../.wh.etc")])


def test_overlay_markers_kept():
    tree = merge(
        [d("d"), f("d/old", b"o"), f("gone", b"g")],
        [d("d"), wh("d/.wh..wh..opq"), f("d/new", b"n"), wh(".wh.gone"), d("n"),
         wh("n/.wh.never-existed")],
        whiteouts="overlay",
    )
    assert listing(tree) == {"": "dir", "d": "dir", "d/new": "file:n", "gone": "char",
                             "n": "dir", "n/never-existed": "char"}
    gone = tree.get("gone")
    assert gone.rdev == (0, 0) and gone.mode == 0 and gone.mtime_ns == 5_000_000_000
    assert tree.get("d").xattrs == {OVERLAY_OPAQUE: b"y"}
    assert OVERLAY_OPAQUE not in tree.get("n").xattrs


def test_overlay_opaque_survives_later_dir_entry_and_marker_replaced_by_file():
    tree = merge(
        [wh("d/.wh..wh..opq"), wh(".wh.f")],
        [d("d", mode=0o700), f("f", b"back")],
        whiteouts="keep",
    )
    assert tree.get("d").xattrs == {OVERLAY_OPAQUE: b"y"} and tree.get("d").mode == 0o700
    assert listing(tree)["f"] == "file:back"


def test_aufs_metadata_is_not_content():
    tree = merge([f("a", b"a"), d(".wh..wh.plnk"), f(".wh..wh.plnk/1234.5678", b"x"),
                  d("d"), f("d/.wh..wh.aufs", b"")])
    assert listing(tree) == {"": "dir", "a": "file:a", "d": "dir"}


def sym(path: str, target: str) -> Entry:
    return Entry(path, Kind.SYMLINK, mode=0o777, target=target)


def test_symlinked_parents_are_followed_inside_the_root():
    tree = merge(
        [d("usr"), d("usr/lib"), f("usr/lib/old", b"o"), sym("lib", "usr/lib"),
         sym("abs", "/usr"), sym("up", "../../../usr"), sym("loop", "loop")],
        [f("lib/x", b"x"), f("abs/lib/y", b"y"), f("up/z", b"z"), wh("lib/.wh.old"),
         link("lib/x2", "abs/lib/x")],
    )
    assert listing(tree) == {
        "": "dir", "usr": "dir", "usr/lib": "dir", "usr/lib/x": "file:x", "usr/lib/y": "file:y",
        "usr/lib/x2": "file:x", "usr/z": "file:z", "lib": "symlink", "abs": "symlink",
        "up": "symlink", "loop": "symlink"}
    assert tree.get("usr/lib/x2").link == "usr/lib/x"
    with pytest.raises(CorruptError, match="too many levels of symlinks"):
        merge([sym("loop", "loop")], [f("loop/x")])
    with pytest.raises(CorruptError, match="'f/x': a parent directory is a file"):
        merge([f("f", b"")], [f("f/x")])
