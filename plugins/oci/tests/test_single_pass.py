"""Each layer blob is read once: hashed, decompressed and parsed in one
sequential pass, its files' data spooled (compressed layers) or left in
place (plain ones), the data of files an upper layer hides never spooled,
and the spool gone on error."""

from __future__ import annotations

import builtins
import gc
import hashlib
import json
import os
import random
import tempfile

import pytest
from conv_oci.layers import LayerStream, SpoolData
from conv_oci.source import source

from convcore.errors import CorruptError
from convcore.format import Context
from convcore.testing import normalize_hardlinks, require_tool, scan_tree

OPTS = {"ref": None, "platform": None, "whiteouts": "apply", "compress": "gzip", "level": None}
BIG = random.Random(7).randbytes(1 << 20)


def read(root: str, **opts):
    return source(root, {**OPTS, **opts}, Context(epoch=0))


@pytest.fixture
def counted(monkeypatch):
    """Per host path: raw bytes LayerStream read, tar bytes it decompressed,
    and how many times anything opened the file."""
    reads: dict[str, int] = {}
    tar_bytes: dict[str, int] = {}
    opens: dict[str, int] = {}
    real_read_raw, real_next = LayerStream._read_raw, LayerStream._next
    real_os_open, real_open = os.open, builtins.open

    def read_raw(self):
        view = real_read_raw(self)
        reads[self.blob.path] = reads.get(self.blob.path, 0) + len(view)
        return view

    def next_(self):
        more = real_next(self)
        if more and self.compression != "none":
            tar_bytes[self.blob.path] = tar_bytes.get(self.blob.path, 0) + len(self._out)
        return more

    def count(path) -> None:
        if isinstance(path, (str, bytes, os.PathLike)):
            path = os.fsdecode(path)
            opens[path] = opens.get(path, 0) + 1

    def os_open(path, *args, **kwargs):
        count(path)
        return real_os_open(path, *args, **kwargs)

    def open_(file, *args, **kwargs):
        count(file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(LayerStream, "_read_raw", read_raw)
    monkeypatch.setattr(LayerStream, "_next", next_)
    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(builtins, "open", open_)
    return reads, tar_bytes, opens


def layer_paths(L, desc) -> list[str]:
    manifest = json.load(open(L.blob_path(desc)))
    return [L.blob_path(layer) for layer in manifest["layers"]]


def write_out(tree) -> dict[str, bytes]:
    """Every file's data copied out as a writer does (copy_to, in
    data_order), then read back."""
    out = {}
    with tempfile.TemporaryFile() as f:
        for entry in tree.data_order():
            os.ftruncate(f.fileno(), 0)
            entry.data.copy_to(f.fileno(), 0)
            os.ftruncate(f.fileno(), entry.data.size)
            f.seek(0)
            out[entry.path] = f.read()
    return out


def test_each_blob_is_read_and_decompressed_once(layout, counted):
    L = layout
    reads, tar_bytes, opens = counted
    desc = L.image([
        [L.dir("usr"), L.file("usr/big", BIG), L.file("usr/a", b"a" * 5000),
         L.file("usr/empty", b""), L.file("usr/gone", BIG[:70000])],
        ([L.file("usr/z", BIG[:300000]), L.whiteout("usr/.wh.gone"),
          L.hardlink("usr/link", "usr/a")], "zstd"),
        ([L.file("usr/plain", BIG[:9000])], None),
    ])
    paths = layer_paths(L, desc)
    sizes = [os.path.getsize(p) for p in paths]
    tars = [L.make_tar(m) for m in (  # the layers' tar bytes, to count decompression
        [L.dir("usr"), L.file("usr/big", BIG), L.file("usr/a", b"a" * 5000),
         L.file("usr/empty", b""), L.file("usr/gone", BIG[:70000])],
        [L.file("usr/z", BIG[:300000]), L.whiteout("usr/.wh.gone"),
         L.hardlink("usr/link", "usr/a")])]
    opens.clear()  # building the layout wrote the blobs
    tree = read(L.root)
    assert write_out(tree) == {"usr/big": BIG, "usr/a": b"a" * 5000, "usr/empty": b"",
                               "usr/z": BIG[:300000], "usr/plain": BIG[:9000]}
    assert tree.get("usr/link").link == "usr/a"
    # every raw byte of every blob read once, each compressed blob opened
    # once (its files come from the spool), each tar byte decompressed once
    assert [reads[p] for p in paths] == sizes
    assert [opens[p] for p in paths[:2]] == [1, 1]
    assert [tar_bytes[p] for p in paths[:2]] == [len(t) for t in tars]
    # the plain layer's file is read in place, from the blob
    assert tree.get("usr/plain").data.path == paths[2]


def test_hidden_lower_data_is_never_spooled(layout, counted):
    L = layout
    reads, _, _ = counted
    desc = L.image([
        [L.dir("etc"), L.file("etc/big", BIG), L.dir("opt"), L.file("opt/x", BIG),
         L.dir("var"), L.file("var/y", BIG), L.file("keep", b"kept")],
        [L.file("etc/big", b"small now"), L.whiteout(".wh.opt"), L.dir("var"),
         L.whiteout("var/.wh..wh..opq")],
    ])
    tree = read(L.root)
    assert write_out(tree) == {"etc/big": b"small now", "keep": b"kept"}
    spool = tree.get("keep").data.spool
    assert tree.get("etc/big").data.spool is spool
    # the three hidden MiB were skipped: the spool holds two small files
    assert os.fstat(spool.fd).st_size < 3 * 4096
    assert [reads[p] for p in layer_paths(L, desc)] == \
        [os.path.getsize(p) for p in layer_paths(L, desc)]


def test_upper_hardlink_keeps_a_hidden_lower_file(layout):
    L = layout
    L.image([
        [L.dir("bin"), L.file("bin/busybox", BIG, mode=0o755)],
        [L.hardlink("bin/sh", "bin/busybox")],
        [L.whiteout("bin/.wh.busybox")],
    ])
    tree = read(L.root)
    assert write_out(tree) == {"bin/sh": BIG}


def compare_with_umoci(L, tree, tmp_path, judge) -> None:
    want = judge.unpack(L.root, "latest", str(tmp_path / "bundle"))
    got = normalize_hardlinks(judge.view(scan_tree(tree)))
    got[""].pop("mode"), want[""].pop("mode")  # umoci makes rootfs 0700 itself
    assert got == want


def test_same_layer_hardlink_to_a_file_replaced_above(layout, counted, tmp_path, judge):
    """The upper layer replaces ``a``, so its data is skipped as the lower
    layer streams by; the hardlink ``b`` that follows in the same layer keeps
    it alive: that layer is read a second time, for that file only."""
    require_tool("umoci")
    L = layout
    reads, _, _ = counted
    desc = L.image([
        [L.file("a", BIG), L.hardlink("b", "a"), L.file("c", b"c")],
        [L.file("a", b"new a")],
    ])
    tree = read(L.root)
    assert write_out(tree) == {"a": b"new a", "b": BIG, "c": b"c"}
    compare_with_umoci(L, tree, tmp_path, judge)
    lower, upper = layer_paths(L, desc)
    assert (reads[lower], reads[upper]) == (2 * os.path.getsize(lower), os.path.getsize(upper))


def test_member_redirected_by_a_symlinked_parent(layout, tmp_path, judge):
    """``d/f`` of layer 2 lands in ``e`` (``d`` links there); layer 3 makes
    ``d`` a directory and writes ``d/f``: same literal path, another file."""
    require_tool("umoci")
    L = layout
    L.image([
        [L.dir("e"), L.symlink("d", "e")],
        [L.file("d/f", b"two")],
        [L.dir("d"), L.file("d/f", b"three")],
    ])
    tree = read(L.root)
    assert write_out(tree) == {"e/f": b"two", "d/f": b"three"}
    compare_with_umoci(L, tree, tmp_path, judge)


# --------------------------------------------------------------------------
# the spool


def open_in(directory: str) -> list[str]:
    """This process's open files inside ``directory``."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(directory + "/"):
            found.append(target)
    return found


@pytest.fixture
def spool_dir(tmp_path, monkeypatch):
    directory = tmp_path / "tmp"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return str(directory)


def test_spool_is_in_tmpdir_and_goes_with_the_tree(layout, spool_dir):
    L = layout
    L.image([[L.file("a", BIG)], [L.file("b", BIG[:1000])]])
    tree = read(L.root)
    assert tree.get("a").data.spool.path.startswith("/proc/self/fd/")
    assert len(open_in(spool_dir)) == 1
    assert write_out(tree)["a"] == BIG
    del tree
    gc.collect()
    assert open_in(spool_dir) == [] and os.listdir(spool_dir) == []


def test_spool_removed_on_a_bad_lower_blob(layout, spool_dir):
    L = layout
    desc = L.image([[L.file("a", BIG)], [L.file("b", BIG)]])
    lower = layer_paths(L, desc)[0]
    L.flip_byte(lower, 100)  # read last (top-down), after the upper layer was spooled
    digest = os.path.basename(lower)
    with pytest.raises(CorruptError, match=f"^blob sha256:{digest[:12]} does not match"):
        read(L.root)
    assert open_in(spool_dir) == [] and os.listdir(spool_dir) == []


def test_spool_removed_on_a_truncated_zstd_layer(layout, spool_dir):
    L = layout
    desc = L.image([([L.file("a", BIG)], "zstd"), [L.file("b", BIG)]])
    manifest = json.load(open(L.blob_path(desc)))
    lower = layer_paths(L, desc)[0]
    cut = open(lower, "rb").read()[:len(BIG) // 2]
    manifest["layers"][0] = L.blob(cut, manifest["layers"][0]["mediaType"])
    L.write_index([L.json_blob(manifest, "application/vnd.oci.image.manifest.v1+json",
                               annotations={"org.opencontainers.image.ref.name": "latest"})])
    digest = hashlib.sha256(cut).hexdigest()
    with pytest.raises(CorruptError, match=f"^layer sha256:{digest[:12]}: the zst stream is "
                                           "truncated"):
        read(L.root)
    assert open_in(spool_dir) == [] and os.listdir(spool_dir) == []


def test_docker_save_layers_read_in_place(tmp_path, layout, docker_save, counted):
    L = layout
    reads, _, _ = counted
    path = str(tmp_path / "save.tar")
    docker_save(path, [(["a:1"], [[L.file("f", BIG)], [L.file("g", b"g")]], {})])
    tree = read(path)
    assert tree.get("f").data.path == path  # no copy of the layer anywhere
    assert write_out(tree) == {"f": BIG, "g": b"g"}
    # both layers streamed once, as windows of the archive
    layers = [e for e in __import__("tarfile").open(path) if e.name.endswith("layer.tar")]
    assert reads[path] == sum(m.size for m in layers)


def test_placeholders_never_reach_the_tree(layout):
    L = layout
    L.image([[L.file("a", BIG), L.file("b", b"b")], [L.file("a", b"A")]])
    for entry in read(L.root):
        assert not isinstance(entry.data, SpoolData) or entry.data.path


def test_top_down_read_gives_umoci_tree_in_every_case(layout, tmp_path, judge, counted):
    """Upper layers replacing, whiting out, making opaque and hardlinking
    lower files, gzip and plain layers mixed (umoci 0.4 reads no zstd): the
    tree is what umoci unpacks, and no layer needed a second read."""
    require_tool("umoci")
    L = layout
    reads, _, _ = counted
    desc = L.image([
        [L.dir("etc"), L.file("etc/a", b"a1"), L.file("etc/b", BIG[:5000]),
         L.dir("opt"), L.dir("opt/o"), L.file("opt/o/x", BIG[:7000]), L.file("opt/keep", b"k"),
         L.dir("bin"), L.file("bin/tool", BIG[:9000], mode=0o755), L.hardlink("bin/t2", "bin/tool"),
         L.file("swap", b"file first"), L.dir("dir2file"), L.file("dir2file/in", b"in")],
        ([L.file("etc/a", b"a2"), L.whiteout("etc/.wh.b"), L.dir("opt/o"),
          L.whiteout("opt/o/.wh..wh..opq"), L.file("opt/o/new", b"new"),
          L.hardlink("bin/t3", "bin/tool"), L.dir("swap"), L.file("swap/inside", b"i")],
         "gzip"),
        ([L.whiteout("bin/.wh.tool"), L.file("dir2file", b"now a file"),
          L.file("etc/b", b"b back")], None),
        [L.file("swap", b"file again"), L.file("etc/a", b"a4"), L.hardlink("etc/a2", "etc/a")],
    ])
    tree = read(L.root)
    assert write_out(tree) == {
        "etc/a": b"a4", "etc/b": b"b back", "opt/o/new": b"new", "opt/keep": b"k",
        "bin/t2": BIG[:9000], "dir2file": b"now a file", "swap": b"file again"}
    assert tree.get("bin/t3").link == "bin/t2" and tree.get("etc/a2").link == "etc/a"
    compare_with_umoci(L, tree, tmp_path, judge)
    assert [reads[p] for p in layer_paths(L, desc)] == \
        [os.path.getsize(p) for p in layer_paths(L, desc)]


def test_overlay_markers_with_skipped_lower_data(layout):
    L = layout
    L.image([
        [L.dir("d"), L.file("d/old", BIG), L.file("gone", BIG)],
        [L.dir("d"), L.whiteout("d/.wh..wh..opq"), L.file("d/new", b"n"), L.whiteout(".wh.gone")],
    ])
    tree = read(L.root, whiteouts="overlay")
    assert write_out(tree) == {"d/new": b"n"}
    assert tree.get("gone").rdev == (0, 0)
    assert tree.get("d").xattrs == {"trusted.overlay.opaque": b"y"}
    assert os.fstat(tree.get("d/new").data.spool.fd).st_size < 4096 + 1


def test_sparse_member_of_a_compressed_layer_stays_sparse(layout, tmp_path):
    require_tool("tar")
    import gzip
    import subprocess
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse", "wb") as f:
        f.truncate(64 << 20)
        f.seek(1 << 20)
        f.write(b"x" * 8192)
        f.seek(40 << 20)
        f.write(b"y" * 4096)
    subprocess.run(["tar", "-C", str(src), "--sparse", "--format=posix", "-cf",
                    str(tmp_path / "l.tar"), "sparse"], check=True)
    raw = (tmp_path / "l.tar").read_bytes()
    L = layout
    layer = L.blob(gzip.compress(raw, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip")
    config = L.json_blob({"architecture": "amd64", "os": "linux", "rootfs": {
        "type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]}},
        "application/vnd.oci.image.config.v1+json")
    L.index.append(L.json_blob({"schemaVersion": 2, "config": config, "layers": [layer]},
                               "application/vnd.oci.image.manifest.v1+json",
                               annotations={"org.opencontainers.image.ref.name": "latest"}))
    L.write_index()
    data = read(L.root).get("sparse").data
    assert data.size == 64 << 20 and data.holes
    assert sum(n for _, n in data.extents()) <= 2 * 4096 + 8192
    want = open(src / "sparse", "rb").read()
    assert write_out(read(L.root))["sparse"] == want
    assert os.fstat(data.spool.fd).st_blocks * 512 < 1 << 20  # holes never written
