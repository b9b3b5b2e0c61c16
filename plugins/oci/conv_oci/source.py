"""Reading an image: an OCI image layout (a directory here; archives of one
and ``docker save`` tarballs in archive.py), its layers stacked into one
tree (each blob read once: layers.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Protocol

from conv_oci.blobs import LayoutBlobs
from conv_oci.layers import LayerBlob, stack_layers
from conv_oci.model import (
    CONFIG_TYPES,
    LAYER_TYPES,
    MAX_JSON_BYTES,
    Descriptor,
    ImageConfig,
    Platform,
    parse_config,
    parse_index,
    parse_json,
    parse_manifest,
    short,
)
from conv_oci.select import Candidate, candidates, choose
from convcore.errors import CorruptError, NotFoundError, UnsupportedError
from convcore.format import Context
from convcore.tree import Tree


class BlobStore(Protocol):
    def read(self, desc: Descriptor) -> bytes:
        """A small blob's bytes, verified."""

    def layers(self, descs: list[Descriptor]) -> list[LayerBlob]:
        """Where the layer blobs' bytes are; a missing or wrongly sized blob
        is an error now, digests are checked as the blobs are read."""


def source(path: str, opts: dict, ctx: Context) -> Tree:
    if os.path.isdir(path):
        return read_layout(path, opts, ctx.scratch_dir)
    if os.path.isfile(path):
        from conv_oci.archive import read_archive
        return read_archive(path, opts, ctx.scratch_dir)
    raise NotFoundError(f"no such OCI image layout or docker archive: {path}")


def _read_small_file(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_JSON_BYTES + 1)
    except FileNotFoundError:
        raise NotFoundError(f"not an OCI image layout: {what} is missing") from None
    except IsADirectoryError:
        raise CorruptError(f"{what} is not a file") from None
    if len(raw) > MAX_JSON_BYTES:
        raise CorruptError(f"{what} is larger than {MAX_JSON_BYTES} bytes")
    return raw


def read_layout(root: str, opts: dict, scratch_dir: str | None = None) -> Tree:
    return read_image(root, LayoutBlobs(root),
                      lambda name: _read_small_file(os.path.join(root, name), name), opts,
                      scratch_dir)


def read_image(name: str, blobs: BlobStore, read_top: Callable[[str], bytes],
               opts: dict, scratch_dir: str | None = None) -> Tree:
    """Stack the chosen image of a layout (a directory, or an archive of
    one): ``read_top`` reads oci-layout and index.json, ``blobs`` gives
    verified blobs; decompressed data is spooled in ``scratch_dir``."""
    layout = parse_json(read_top("oci-layout"), "oci-layout")
    version = layout.get("imageLayoutVersion") if isinstance(layout, dict) else None
    if not isinstance(version, str) or not version.startswith("1."):
        raise UnsupportedError(f"oci-layout: unsupported imageLayoutVersion {version!r}")
    top = parse_index(read_top("index.json"), "index.json")

    configs: dict[str, ImageConfig] = {}

    def config_of(c: Candidate) -> ImageConfig:
        if c.desc.digest not in configs:
            where = f"manifest {short(c.desc.digest)}"
            manifest = parse_manifest(blobs.read(c.desc), where)
            if manifest.config.media_type not in CONFIG_TYPES | {""}:
                raise UnsupportedError(f"{where}: not a container image (its config is "
                                       f"{manifest.config.media_type!r})")
            configs[c.desc.digest] = parse_config(blobs.read(manifest.config),
                                                  f"config {short(manifest.config.digest)}")
        return configs[c.desc.digest]

    platform = Platform.parse(opts["platform"]) if opts.get("platform") else None
    chosen = choose(candidates(top, blobs.read), opts.get("ref"), platform, name,
                    lambda c: config_of(c).platform)
    where = f"manifest {short(chosen.desc.digest)}"
    manifest = parse_manifest(blobs.read(chosen.desc), where)
    config = config_of(chosen)
    if config.diff_ids and len(config.diff_ids) != len(manifest.layers):
        raise CorruptError(f"{where}: {len(manifest.layers)} layers but the config lists "
                           f"{len(config.diff_ids)} diff_ids")
    for desc in manifest.layers:
        if desc.media_type not in LAYER_TYPES:
            raise UnsupportedError(f"layer {short(desc.digest)}: unsupported media type "
                                   f"{desc.media_type!r}")

    layers = blobs.layers(manifest.layers)
    for layer, diff_id in zip(layers, config.diff_ids, strict=False):
        layer.diff_id = diff_id
    tree = stack_layers(layers, opts.get("whiteouts") or "apply", scratch_dir)
    tree.info = image_info(config, len(manifest.layers), ref=chosen.ref,
                           manifest=chosen.desc.digest)
    return tree


def image_info(config: ImageConfig, layers: int, ref: str | None, **ids: str) -> dict:
    """What ``conv info`` shows for an image (``ids``: the manifest's or
    config's digest)."""
    info = {"format": "oci", "ref": ref or "", **ids, "layers": layers}
    info.update(config.info())
    return info
