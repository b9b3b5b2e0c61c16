"""Images built layer by layer with umoci (unpack, change the rootfs,
repack): our stacked tree must equal what ``umoci unpack`` extracts."""

from __future__ import annotations

from conv_oci.source import source

from convcore.format import Context
from convcore.testing import normalize_hardlinks, scan_tree
from convcore.tree import Kind

OPTS = {"ref": None, "platform": None, "whiteouts": "apply", "compress": "gzip", "level": None}


def test_stacked_tree_equals_umoci_unpack(umoci_image, tmp_path, judge):
    tree = source(umoci_image, {**OPTS, "ref": "img"}, Context(epoch=0))
    want = judge.unpack(umoci_image, "img", str(tmp_path / "bundle"))
    got = normalize_hardlinks(judge.view(scan_tree(tree)))
    got[""].pop("mode"), want[""].pop("mode")  # umoci makes rootfs 0700 itself
    assert got == want
    # and the facts the scenario is about, spelled out
    assert "etc/shadow" not in tree and "usr/share/doc/a" not in tree
    assert tree.get("etc/hostname").xattrs == {"user.note": b"from layer 1"}
    assert tree.get("opt/conf").kind is Kind.DIR
    assert tree.get("var/dir-to-file").kind is Kind.FILE
    ls = tree.get("usr/bin/ls")
    assert ls.link is None and ls.size == 256 * 4000 and ls.mode == 0o755
    assert sorted(e.path for e in tree.children("usr/share/doc")) == ["usr/share/doc/new"]
    assert tree.info["layers"] == 4


def test_umoci_made_whiteouts_kept_as_markers(umoci_image):
    tree = source(umoci_image, {**OPTS, "ref": "img", "whiteouts": "overlay"},
                  Context(epoch=0))
    shadow = tree.get("etc/shadow")
    assert (shadow.kind, shadow.rdev) == (Kind.CHAR, (0, 0))
    assert tree.get("usr/bin/busybox").kind is Kind.CHAR
    assert tree.get("usr/share/doc/a").kind is Kind.CHAR
