"""Writing a tree as a one-layer OCI image layout.

The layer is written once, compressed, straight into the blob directory; its
uncompressed digest (the config's diff_id) is taken from a decompressing
read-back, which costs a fraction of the compression.
"""

from __future__ import annotations

import hashlib
import os
import platform as host_platform
import time

from conv_oci.blobs import hash_file
from conv_oci.model import (
    MT_OCI_CONFIG,
    MT_OCI_INDEX,
    MT_OCI_LAYER_GZIP,
    MT_OCI_LAYER_ZSTD,
    MT_OCI_MANIFEST,
    OCI_LAYOUT_VERSION,
    REF_NAME,
    Descriptor,
    Platform,
    dumps,
)
from conv_oci.whiteouts import WHITEOUT_PREFIX, markers_to_whiteouts
from convcore.errors import UnsupportedError, UsageError
from convcore.format import Context
from convcore.tree import Tree

#: tar codec name and layer media type per ``compress=``.
_COMPRESSIONS = {"gzip": ("gz", MT_OCI_LAYER_GZIP), "zstd": ("zst", MT_OCI_LAYER_ZSTD)}

#: uname -m -> GOARCH (what image configs say).
_HOST_ARCH = {
    "x86_64": ("amd64", ""), "amd64": ("amd64", ""), "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"), "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"),
    "i386": ("386", ""), "i686": ("386", ""), "ppc64le": ("ppc64le", ""),
    "s390x": ("s390x", ""), "riscv64": ("riscv64", ""), "loongarch64": ("loong64", ""),
}

#: image config fields a tree read from an image carries over (``tree.info``).
_RUN_FIELDS = ("Env", "Entrypoint", "Cmd", "WorkingDir", "User", "Labels")


def rfc3339(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def image_platform(tree: Tree, opts: dict) -> Platform:
    """``platform=``, else the source image's, else the host's."""
    if opts.get("platform"):
        return Platform.parse(opts["platform"])
    info = tree.info
    if info.get("format") == "oci" and info.get("architecture"):
        return Platform(info.get("os") or "linux", info["architecture"], info.get("variant", ""))
    machine = host_platform.machine().lower()
    arch, variant = _HOST_ARCH.get(machine, (machine, ""))
    return Platform("linux", arch, variant)


class LayoutWriter:
    """Blobs go in by content: write, hash, name."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.blob_dir = os.path.join(root, "blobs", "sha256")
        try:
            os.mkdir(root)
        except FileExistsError:
            raise UsageError(f"{root} already exists; the oci sink writes a new layout") from None
        os.makedirs(self.blob_dir)

    def add_file(self, tmp: str, media_type: str, annotations: dict | None = None) -> Descriptor:
        digest = hash_file(tmp, "sha256")
        size = os.path.getsize(tmp)
        os.replace(tmp, os.path.join(self.blob_dir, digest))
        return Descriptor(media_type, "sha256:" + digest, size, annotations or {})

    def add_json(self, doc: dict, media_type: str) -> Descriptor:
        raw = dumps(doc)
        digest = hashlib.sha256(raw).hexdigest()
        with open(os.path.join(self.blob_dir, digest), "wb") as f:
            f.write(raw)
        return Descriptor(media_type, "sha256:" + digest, len(raw))

    def write_top(self, name: str, doc: dict) -> None:
        with open(os.path.join(self.root, name), "wb") as f:
            f.write(dumps(doc))


def refuse_whiteout_names(tree: Tree) -> None:
    """A file named ``.wh.*`` would delete, not add, in a layer: a runtime
    would silently drop it (and whatever it names below)."""
    for entry in tree:
        if entry.name.startswith(WHITEOUT_PREFIX):
            raise UnsupportedError(f"/{entry.path}: a name starting with {WHITEOUT_PREFIX} is a "
                                   "whiteout in an OCI layer (whiteouts=keep writes them as "
                                   "such on purpose)")


def write_layer(tree: Tree, path: str, codec: str, level: int | None, ctx: Context) -> str:
    """Write the layer blob; returns its diff_id (the sha256 of the tar,
    taken as it is written: reading the compressed layer back to hash it
    was a fifth of a dir -> oci run)."""
    from convcore.builtin.tarfmt import write_tar
    digest = hashlib.sha256()
    write_tar(tree, path, codec, ctx, level=level, digest=digest)
    return "sha256:" + digest.hexdigest()


def sink(tree: Tree, path: str, opts: dict, ctx: Context) -> None:
    codec, layer_type = _COMPRESSIONS[opts.get("compress") or "gzip"]
    level = opts.get("level")
    if level is not None and codec == "gz" and level > 9:
        raise UsageError(f"oci[level={level}]: gzip levels are 1-9")
    if opts.get("whiteouts") in ("keep", "overlay"):
        tree = markers_to_whiteouts(tree)
    else:
        refuse_whiteout_names(tree)
    writer = LayoutWriter(path)
    tmp = os.path.join(writer.blob_dir, ".layer.tmp")
    diff_id = write_layer(tree, tmp, codec, level, ctx)
    layer = writer.add_file(tmp, layer_type)

    plat = image_platform(tree, opts)
    created = rfc3339(ctx.timestamp)
    run = {}
    if tree.info.get("format") == "oci":
        run = {k: tree.info[k] for k in _RUN_FIELDS if tree.info.get(k)}
    config: dict = {
        "created": created,
        "architecture": plat.architecture,
        "os": plat.os,
        "config": run,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": "conv"}],
    }
    if plat.variant:
        config["variant"] = plat.variant
    config_desc = writer.add_json(config, MT_OCI_CONFIG)
    manifest_desc = writer.add_json({
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST,
        "config": config_desc.to_json(),
        "layers": [layer.to_json()],
    }, MT_OCI_MANIFEST)

    ref = opts.get("ref") or "latest"
    entry = Descriptor(manifest_desc.media_type, manifest_desc.digest, manifest_desc.size,
                       {REF_NAME: ref}, plat)
    writer.write_top("oci-layout", {"imageLayoutVersion": OCI_LAYOUT_VERSION})
    writer.write_top("index.json", {"schemaVersion": 2, "mediaType": MT_OCI_INDEX,
                                    "manifests": [entry.to_json()]})
