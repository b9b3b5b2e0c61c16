"""Decompressed layer data is spooled beside the chain's output, never in
TMPDIR (a tmpfs /tmp would hold a whole image in RAM), and nothing stays
behind, on success or on error."""

from __future__ import annotations

import json
import os
import tarfile

import pytest

from convcore import pipeline
from convcore.errors import CorruptError
from convcore.format import Context
from convcore.testing import deleted_in, open_at_sink, scratch_dirs

DATA = bytes(range(256)) * 512


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    return scratch_dirs(tmp_path, monkeypatch)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_layer_spool_is_beside_the_output(layout, dirs, monkeypatch, compression):
    if compression == "zstd":
        pytest.importorskip("zstandard")
    out, tmpdir = dirs
    layout.image([([layout.dir("etc"), layout.file("etc/data", DATA)], compression)])
    seen = open_at_sink(monkeypatch)
    pipeline.convert(f"oci:{layout.root} -> tar:{out / 'image.tar'}", Context())
    (at_sink,) = seen
    assert deleted_in(at_sink, out), at_sink
    assert not [n for n in at_sink if n.startswith(f"{tmpdir}/")]
    assert os.listdir(out) == ["image.tar"] and os.listdir(tmpdir) == []
    with tarfile.open(out / "image.tar") as tar:
        assert tar.extractfile("etc/data").read() == DATA


def test_a_bad_layer_leaves_nothing(layout, dirs):
    out, tmpdir = dirs
    desc = layout.image([[layout.file("data", DATA)]])
    with open(layout.blob_path(desc)) as f:
        layer = json.load(f)["layers"][0]
    path = layout.blob_path(layer)
    layout.flip_byte(path, os.path.getsize(path) - 12)  # inside the deflate stream
    with pytest.raises(CorruptError):
        pipeline.convert(f"oci:{layout.root} -> tar:{out / 'image.tar'}", Context())
    assert os.listdir(out) == [] and os.listdir(tmpdir) == []
