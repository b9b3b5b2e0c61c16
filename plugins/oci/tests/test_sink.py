"""Writing OCI layouts, judged by umoci (unpack), GNU tar (layer listing)
and plain hashing of the blobs."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess

import pytest
from conv_oci.sink import sink
from conv_oci.source import source

from convcore.errors import UsageError
from convcore.format import Context
from convcore.testing import make_sample_dir, normalize_hardlinks, require_tool, scan_dir

OPTS = {"ref": None, "platform": None, "whiteouts": "apply", "compress": "gzip", "level": None}


def sample_tree(tmp_path, ctx):
    """make_sample_dir through GNU tar into a tree (the tar reader is the
    core's; GNU tar made the archive)."""
    from convcore.builtin.tarfmt import source as tar_source
    src = make_sample_dir(str(tmp_path / "src"))
    archive = str(tmp_path / "src.tar")
    subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "-C", src, "-cf", archive, "."],
                   check=True)
    return src, tar_source(archive, {}, ctx)


def blobs(root: str) -> dict[str, bytes]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root)] = open(path, "rb").read()
    return out


def image_docs(root: str):
    index = json.load(open(os.path.join(root, "index.json")))
    blob = lambda d: os.path.join(root, "blobs", *d["digest"].split(":"))  # noqa: E731
    manifest = json.load(open(blob(index["manifests"][0])))
    config = json.load(open(blob(manifest["config"])))
    return index, manifest, config, blob


def test_umoci_unpacks_what_we_write(tmp_path, judge):
    require_tool("umoci", "tar")
    ctx = Context(epoch=1_700_000_000)
    src, tree = sample_tree(tmp_path, ctx)
    layout = str(tmp_path / "layout")
    sink(tree, layout, {**OPTS, "ref": "v1"}, ctx)
    got = judge.unpack(layout, "v1", str(tmp_path / "bundle"))
    want = normalize_hardlinks(judge.view(scan_dir(src)))
    got[""].pop("mode")  # umoci makes the bundle's rootfs 0700 itself
    want[""].pop("mode")
    assert got == want


def test_zstd_layer_holds_the_same_tar(tmp_path):
    """umoci 0.4 cannot read zstd layers: the zstd tool decompresses ours,
    and the tar inside must be the one umoci accepted as gzip."""
    require_tool("tar", "zstd")
    ctx = Context(epoch=1_700_000_000)
    _, tree = sample_tree(tmp_path, ctx)
    sink(tree, str(tmp_path / "gz"), OPTS, ctx)
    sink(tree, str(tmp_path / "zst"), {**OPTS, "compress": "zstd", "level": 5}, ctx)
    _, gz_manifest, gz_config, _ = image_docs(str(tmp_path / "gz"))
    _, manifest, config, blob = image_docs(str(tmp_path / "zst"))
    layer = manifest["layers"][0]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
    plain = subprocess.run(["zstd", "-dc", blob(layer)], capture_output=True, check=True).stdout
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(plain).hexdigest()]
    assert config["rootfs"] == gz_config["rootfs"]
    # the diff_id is taken while the layer is written: it is the gzip layer's tar too
    _, _, _, gz_blob = image_docs(str(tmp_path / "gz"))
    gz_tar = gzip.decompress(open(gz_blob(gz_manifest["layers"][0]), "rb").read())
    assert gz_tar == plain
    assert layer["digest"] != gz_manifest["layers"][0]["digest"]


def test_config_manifest_and_index(tmp_path):
    require_tool("tar")
    ctx = Context(epoch=1_700_000_000)
    _, tree = sample_tree(tmp_path, ctx)
    layout = str(tmp_path / "layout")
    sink(tree, layout, {**OPTS, "ref": "app:1", "platform": "linux/arm64/v8"}, ctx)
    index, manifest, config, blob = image_docs(layout)
    assert json.load(open(os.path.join(layout, "oci-layout"))) == {"imageLayoutVersion": "1.0.0"}
    entry = index["manifests"][0]
    assert entry["annotations"] == {"org.opencontainers.image.ref.name": "app:1"}
    assert entry["platform"] == {"os": "linux", "architecture": "arm64", "variant": "v8"}
    for desc in [entry, manifest["config"], *manifest["layers"]]:
        raw = open(blob(desc), "rb").read()
        assert desc["size"] == len(raw)
        assert desc["digest"] == "sha256:" + hashlib.sha256(raw).hexdigest()
    layer = manifest["layers"][0]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    plain = gzip.decompress(open(blob(layer), "rb").read())
    assert config["rootfs"] == {"type": "layers",
                                "diff_ids": ["sha256:" + hashlib.sha256(plain).hexdigest()]}
    assert (config["os"], config["architecture"], config["variant"]) == ("linux", "arm64", "v8")
    assert config["created"] == "2023-11-14T22:13:20Z"
    listing = subprocess.run(["tar", "-tzf", blob(layer)], capture_output=True, text=True,
                             check=True).stdout.split()
    assert "./usr/bin/tool" in listing or "usr/bin/tool" in listing


def test_same_tree_same_bytes(tmp_path):
    require_tool("tar")
    ctx = Context(epoch=1_700_000_000)
    _, tree = sample_tree(tmp_path, ctx)
    for compress in ("gzip", "zstd"):
        a, b = str(tmp_path / f"a-{compress}"), str(tmp_path / f"b-{compress}")
        sink(tree, a, {**OPTS, "compress": compress}, ctx)
        sink(tree, b, {**OPTS, "compress": compress}, Context(epoch=1_700_000_000))
        assert blobs(a) == blobs(b)
    c = str(tmp_path / "c")
    sink(tree, c, OPTS, Context(epoch=1_700_000_001))
    assert blobs(c)["index.json"] != blobs(str(tmp_path / "a-gzip"))["index.json"]


def test_oci_to_oci_keeps_the_tree_and_run_config(tmp_path, layout, judge):
    require_tool("umoci")
    L = layout
    L.image([
        [L.dir("etc"), L.file("etc/a", b"a", uid=5, gid=6), L.file("etc/b", b"b"),
         L.dir("srv"), L.file("srv/x", b"x", xattrs={"user.k": b"v"})],
        [L.whiteout("etc/.wh.a"), L.hardlink("srv/y", "srv/x"), L.dir("srv", mode=0o700)],
    ], config={"Env": ["A=1"], "Cmd": ["/bin/true"], "WorkingDir": "/srv", "User": "5"})
    ctx = Context(epoch=0)
    tree = source(L.root, OPTS, ctx)
    out = str(tmp_path / "out")
    sink(tree, out, OPTS, ctx)
    want = judge.unpack(L.root, "latest", str(tmp_path / "b1"))
    got = judge.unpack(out, "latest", str(tmp_path / "b2"))
    assert got == want
    assert sorted(got) == ["", "etc", "etc/b", "srv", "srv/x", "srv/y"]
    assert got["srv"]["mode"] == 0o700 and got["srv/y"]["link_group"] == "srv/x"
    config = image_docs(out)[2]
    assert config["config"] == {"Env": ["A=1"], "Cmd": ["/bin/true"], "WorkingDir": "/srv",
                                "User": "5"}
    assert config["architecture"] == "amd64"


def test_overlay_markers_written_back_as_whiteouts(tmp_path, layout):
    require_tool("tar")
    L = layout
    L.image([[L.dir("d"), L.whiteout("d/.wh..wh..opq"), L.file("d/f", b"f"),
              L.whiteout(".wh.gone")]])
    ctx = Context(epoch=0)
    tree = source(L.root, {**OPTS, "whiteouts": "overlay"}, ctx)
    out = str(tmp_path / "out")
    sink(tree, out, {**OPTS, "whiteouts": "overlay"}, ctx)
    _, manifest, _, blob = image_docs(out)
    listing = subprocess.run(["tar", "-tzf", blob(manifest["layers"][0])], capture_output=True,
                             text=True, check=True).stdout.split()
    names = [p.removeprefix("./").rstrip("/") for p in listing]
    assert names == ["", "d", "d/.wh..wh..opq", "d/f", ".wh.gone"]
    # and reading it back gives the same markers
    again = source(out, {**OPTS, "whiteouts": "overlay"}, ctx)
    assert again.get("d").xattrs == {"trusted.overlay.opaque": b"y"}
    assert again.get("gone").rdev == (0, 0)


def test_existing_output_is_refused(tmp_path):
    from convcore.tree import Tree
    (tmp_path / "exists").mkdir()
    with pytest.raises(UsageError, match="already exists"):
        sink(Tree(), str(tmp_path / "exists"), OPTS, Context(epoch=0))


def test_gzip_level_out_of_range_is_a_usage_error(tmp_path):
    from convcore.tree import Tree
    with pytest.raises(UsageError, match=r"oci\[level=12\]: gzip levels are 1-9"):
        sink(Tree(), str(tmp_path / "out"), {**OPTS, "level": 12}, Context(epoch=0))
    assert not os.path.exists(tmp_path / "out")


def test_whiteout_names_are_refused_unless_asked_for(tmp_path):
    from convcore.errors import UnsupportedError
    from convcore.tree import Entry, Kind, Tree
    tree = Tree()
    tree.add(Entry("etc/.wh.passwd", Kind.FILE))
    with pytest.raises(UnsupportedError, match=r"/etc/\.wh\.passwd: .* is a whiteout"):
        sink(tree, str(tmp_path / "out"), OPTS, Context(epoch=0))
    sink(tree, str(tmp_path / "kept"), {**OPTS, "whiteouts": "keep"}, Context(epoch=0))
    again = source(str(tmp_path / "kept"), {**OPTS, "whiteouts": "keep"}, Context(epoch=0))
    assert again.get("etc/passwd").kind is Kind.CHAR
