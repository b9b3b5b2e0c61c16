"""Images built layer by layer with umoci (unpack, change the rootfs,
repack): our stacked tree must equal what ``umoci unpack`` extracts."""

from __future__ import annotations

import os
import shutil

import pytest
from conv_oci.source import source

from convcore.format import Context
from convcore.testing import normalize_hardlinks, require_tool, scan_tree
from convcore.tree import Kind

OPTS = {"ref": None, "platform": None, "whiteouts": "apply", "compress": "gzip", "level": None}
MTIME_NS = 1_650_000_000_000_000_000


def _settle(rootfs: str) -> None:
    """Fixed times, so the layers (and the comparison) do not depend on the clock."""
    for dirpath, dirnames, filenames in os.walk(rootfs, topdown=False):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), ns=(MTIME_NS, MTIME_NS),
                     follow_symlinks=False)
    os.utime(rootfs, ns=(MTIME_NS, MTIME_NS))


def _write(path: str, data: bytes, mode: int = 0o644) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


@pytest.fixture(scope="module")
def umoci_image(tmp_path_factory, request):
    """A four-layer image: base, deletions, type changes, hardlinks."""
    require_tool("umoci")
    from convcore.testing import run
    base = tmp_path_factory.mktemp("umoci")
    layout, bundle = str(base / "layout"), str(base / "bundle")
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", f"{layout}:img")

    def step(change) -> None:
        shutil.rmtree(bundle, ignore_errors=True)
        run("umoci", "unpack", "--rootless", "--image", f"{layout}:img", bundle)
        rootfs = os.path.join(bundle, "rootfs")
        change(rootfs)
        _settle(rootfs)
        run("umoci", "repack", "--image", f"{layout}:img", bundle)

    def layer1(r: str) -> None:
        _write(f"{r}/etc/hostname", b"box\n")
        _write(f"{r}/etc/shadow", b"root:*:1::::::\n", 0o640)
        _write(f"{r}/usr/bin/busybox", bytes(range(256)) * 4000, 0o755)
        _write(f"{r}/usr/share/doc/a/README", b"a\n")
        _write(f"{r}/usr/share/doc/b/README", b"b\n")
        _write(f"{r}/opt/conf", b"file for now\n")
        os.makedirs(f"{r}/var/dir-to-file/sub")
        _write(f"{r}/var/dir-to-file/sub/x", b"x")
        os.symlink("busybox", f"{r}/usr/bin/sh")
        os.setxattr(f"{r}/etc/hostname", "user.note", b"from layer 1")
        os.chmod(f"{r}/usr/share", 0o775)

    def layer2(r: str) -> None:
        os.unlink(f"{r}/etc/shadow")  # whiteout of a file
        shutil.rmtree(f"{r}/usr/share/doc/a")  # whiteout of a directory
        _write(f"{r}/etc/hostname", b"renamed-box\n")  # replaced file
        os.link(f"{r}/usr/bin/busybox", f"{r}/usr/bin/ls")  # hardlink to lower file
        os.chmod(f"{r}/usr/share", 0o755)

    def layer3(r: str) -> None:
        os.unlink(f"{r}/opt/conf")  # file -> dir
        _write(f"{r}/opt/conf/main.cf", b"dir now\n")
        shutil.rmtree(f"{r}/var/dir-to-file")  # dir -> file
        _write(f"{r}/var/dir-to-file", b"file now\n")
        os.unlink(f"{r}/usr/bin/sh")  # symlink -> file
        _write(f"{r}/usr/bin/sh", b"#!real\n", 0o755)

    def layer4(r: str) -> None:
        os.unlink(f"{r}/usr/bin/busybox")  # the hardlink's first name goes
        shutil.rmtree(f"{r}/usr/share/doc")  # a whole tree goes ...
        _write(f"{r}/usr/share/doc/new", b"fresh\n")  # ... and comes back smaller

    for change in (layer1, layer2, layer3, layer4):
        step(change)
    return layout


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
