"""``docker save`` tarballs built by hand (classic layout, a shared layer as
a symlink, several images), read into stacked trees."""

from __future__ import annotations

import pytest
from conv_oci.source import source

from convcore.errors import CorruptError, UsageError
from convcore.format import Context

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
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        read(path)
