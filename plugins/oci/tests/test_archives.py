"""Images inside one tar: ``docker save`` tarballs built by hand (classic
layout, a shared layer as a symlink, several images) and OCI layouts packed
with GNU tar (oci-archive), read into stacked trees."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from conv_oci.source import source

from convcore.errors import CorruptError, UsageError
from convcore.format import Context
from convcore.testing import require_tool, scan_tree

OPTS = {"ref": None, "platform": None, "whiteouts": "apply", "compress": "gzip", "level": None}


def read(path, **opts):
    return source(str(path), {**OPTS, **opts}, Context(epoch=0))


def files(tree) -> dict[str, bytes]:
    return {e.path: tree.resolve(e).data.read() for e in tree if e.data is not None}


@pytest.fixture
def two_images(tmp_path, layout, docker_save):
    L = layout
    base = [L.dir("etc"), L.file("etc/os-release", b"debian\n"), L.file("etc/old", b"o")]
    docker_save(str(tmp_path / "save.tar"), [
        (["app:1", "app:latest"], [base, [L.whiteout("etc/.wh.old"), L.file("app", b"v1")]],
         {"Cmd": ["/app"], "Env": ["X=1"]}),
        (["tool:2"], [base, [L.file("tool", b"t2")]], {"Entrypoint": ["/tool"]}),
    ])
    return tmp_path / "save.tar"


def test_docker_save_selects_by_tag_and_stacks_layers(two_images):
    app = read(two_images, ref="app")  # app:latest
    assert files(app) == {"etc/os-release": b"debian\n", "app": b"v1"}
    assert app.info["Cmd"] == ["/app"] and app.info["Env"] == ["X=1"]
    assert app.info["layers"] == 2 and app.info["ref"] == "app:1,app:latest"
    # tool's first layer is a symlink to app's copy of the shared layer
    tool = read(two_images, ref="tool:2")
    assert files(tool) == {"etc/os-release": b"debian\n", "etc/old": b"o", "tool": b"t2"}
    assert tool.info["Entrypoint"] == ["/tool"]


def test_docker_save_ambiguous_or_unknown_ref(two_images):
    with pytest.raises(UsageError, match="several images.*app:1,app:latest; tool:2"):
        read(two_images)
    with pytest.raises(UsageError, match="no image tagged 'nope'; tags there: app:1, app:latest"):
        read(two_images, ref="nope")
    with pytest.raises(UsageError, match="no image for platform=linux/arm64"):
        read(two_images, ref="app:1", platform="linux/arm64")


def test_docker_save_gzipped_whole(tmp_path, layout, docker_save):
    L = layout
    docker_save(str(tmp_path / "s.tar.gz"), [(["a:1"], [[L.file("f", b"data")]], {})],
                gzip_outer=True)
    assert files(read(tmp_path / "s.tar.gz")) == {"f": b"data"}


def test_docker_save_layer_not_matching_diff_id(tmp_path, layout, docker_save):
    L = layout
    docker_save(str(tmp_path / "s.tar"), [(["a:1"], [[L.file("f", b"data")]], {})],
                corrupt_layer=True)
    with pytest.raises(CorruptError, match="layer .*/layer.tar does not match its diff_id"):
        read(tmp_path / "s.tar")


def test_plain_tar_without_manifest_is_not_an_image(tmp_path, layout):
    path = tmp_path / "plain.tar"
    path.write_bytes(layout.make_tar([layout.file("x", b"x")]))
    with pytest.raises(FileNotFoundError, match="no index.json or manifest.json"):
        read(path)


def test_oci_archive_reads_like_the_layout(tmp_path, layout):
    require_tool("tar")
    L = layout
    L.image([[L.dir("etc"), L.file("etc/a", b"a"), L.file("etc/b", b"b", mode=0o600)],
             ([L.whiteout("etc/.wh.a"), L.hardlink("etc/c", "etc/b")], "zstd")],
            config={"Cmd": ["sh"]})
    archive = str(tmp_path / "image.oci.tar")
    subprocess.run(["tar", "-C", L.root, "-cf", archive, "."], check=True)
    from_dir, from_tar = read(L.root), read(archive)
    assert scan_tree(from_tar) == scan_tree(from_dir)
    assert files(from_tar) == {"etc/b": b"b", "etc/c": b"b"}
    assert from_tar.info["Cmd"] == ["sh"] and from_tar.info["layers"] == 2

    # a layer missing from the archive is named
    manifest = json.load(open(L.blob_path(L.index[0])))
    os.unlink(L.blob_path(manifest["layers"][1]))
    os.unlink(archive)
    subprocess.run(["tar", "-C", L.root, "-cf", archive, "."], check=True)
    with pytest.raises(FileNotFoundError, match=f"blob {manifest['layers'][1]['digest'][:19]} "
                                                "is missing from the archive"):
        read(archive)
