"""Images inside one tar: ``docker save`` tarballs (manifest.json, configs
and layer tars; the classic ``<id>/layer.tar`` form and the
``blobs/sha256/<hex>`` form of docker 25+ both have a manifest.json) and
OCI layouts packed as a tar (``oci-archive``: podman, buildah, skopeo).

The outer tar's headers are read with the core tar reader. A layer member
of an uncompressed archive (what docker save and skopeo write) is read in
place, as a window of the archive, once like any layer blob (layers.py). Of
a compressed archive (a docker save piped through gzip), the layer members
are first copied into anonymous temporary files, in archive order so the
archive is decompressed once.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable

from conv_oci.layers import LayerBlob, stack_layers
from conv_oci.model import (
    MAX_JSON_BYTES,
    Descriptor,
    DockerImage,
    ImageConfig,
    Platform,
    parse_config,
    parse_docker_manifest,
    short,
)
from conv_oci.source import image_info, read_image
from convcore.errors import CorruptError, NotFoundError, UsageError
from convcore.format import scratch_file
from convcore.tree import Entry, FileRangeData, Kind, Tree, data_order_key, normpath

#: how many symlinks deep a member name may resolve (shared layers are
#: symlinks to another image's layer.tar).
MAX_SYMLINKS = 8
_HEX_RE = re.compile(r"(?:^|/)([a-f0-9]{64})(?:\.json)?$")

#: anonymous layer copies, open for as long as the process may read them
#: (their Data objects reopen them through /proc/self/fd).
_LIVE_COPIES: list = []


class OuterArchive:
    """The members of the docker save tarball, by path."""

    def __init__(self, path: str) -> None:
        from convcore.builtin.tarfmt import iter_entries
        self.path = path
        self.members: dict[str, Entry] = {}
        for entry in iter_entries(path):
            self.members[entry.path] = entry

    def find(self, name: str, what: str) -> Entry:
        """The file member ``name`` (symlinks and hardlinks inside the
        archive followed)."""
        try:
            path = normpath(name)
        except UsageError:
            raise CorruptError(f"{self.path}: {what} {name!r} escapes the archive") from None
        for _ in range(MAX_SYMLINKS):
            entry = self.members.get(path)
            if entry is None:
                raise NotFoundError(f"{self.path}: {what} {name!r} is not in the archive")
            if entry.link is not None:
                path = entry.link
                continue
            if entry.kind is Kind.SYMLINK:
                path = _resolve(entry.parent, entry.target)
                if path is None:
                    raise CorruptError(f"{self.path}: {what} {name!r} links out of the "
                                       "archive")
                continue
            if entry.kind is not Kind.FILE or entry.data is None:
                raise CorruptError(f"{self.path}: {what} {name!r} is not a file")
            return entry
        raise CorruptError(f"{self.path}: {what} {name!r}: too many symlinks")

    def read_small(self, name: str, what: str) -> bytes:
        entry = self.find(name, what)
        if entry.data.size > MAX_JSON_BYTES:
            raise CorruptError(f"{self.path}: {what} {name!r} is too large "
                               f"({entry.data.size} bytes)")
        return entry.data.read()


def _resolve(base: str, target: str) -> str | None:
    """``target`` (a symlink's) seen from directory ``base``, or None when it
    climbs above the archive root."""
    parts = [] if target.startswith("/") or not base else base.split("/")
    for part in target.split("/"):
        if part == "..":
            if not parts:
                return None
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return "/".join(parts)


def _windows(entries: list[Entry], scratch_dir: str | None) -> list[tuple[str, int, int]]:
    """(host path, offset, size) holding each member's bytes: a window of
    the archive when it stores them plainly, else an unlinked temporary copy
    (reachable through /proc/self/fd for as long as the process runs),
    copied in archive order and once however many layers name it."""
    windows: dict[int, tuple[str, int, int]] = {}
    for entry in sorted(entries, key=lambda e: data_order_key(e.data)):
        data = entry.data
        if id(entry) in windows:
            continue
        if type(data) is FileRangeData and not data.holes:
            windows[id(entry)] = (data.path, data.offset, data.size)
            continue
        f = scratch_file(scratch_dir, "conv-oci-layer-")
        data.copy_to(f.fileno(), 0)
        os.ftruncate(f.fileno(), data.size)
        _LIVE_COPIES.append(f)
        windows[id(entry)] = (f"/proc/self/fd/{f.fileno()}", 0, data.size)
    return [windows[id(entry)] for entry in entries]


def _choose(images: list[DockerImage], ref: str | None, platform: Platform | None,
            where: str, config_of: Callable[[DockerImage], ImageConfig]) -> DockerImage:
    if not images:
        raise CorruptError(f"{where}: manifest.json lists no images")
    pool = images
    if ref is not None:
        wanted = {ref, ref if ":" in ref.rpartition("/")[2] else f"{ref}:latest"}
        pool = [i for i in images if wanted & set(i.repo_tags)]
        if not pool:
            tags = sorted({t for i in images for t in i.repo_tags})
            raise UsageError(f"{where}: no image tagged {ref!r}; tags there: "
                             f"{', '.join(tags) or 'none'}")
    if platform is not None:
        matching = [i for i in pool if platform.matches(config_of(i).platform)]
        if not matching:
            there = "; ".join(str(config_of(i).platform) for i in pool)
            raise UsageError(f"{where}: no image for platform={platform}; there: {there}")
        pool = matching
    if len(pool) > 1:
        described = "; ".join(",".join(i.repo_tags) or i.config for i in pool)
        raise UsageError(f"{where}: several images, choose one with ref=: {described}")
    return pool[0]


class ArchiveBlobs:
    """The blobs/ of an OCI layout inside a tar, verified like a layout's."""

    def __init__(self, outer: OuterArchive, scratch_dir: str | None = None) -> None:
        self.outer = outer
        self.scratch_dir = scratch_dir

    def _member(self, desc: Descriptor) -> Entry:
        algorithm, _, hexdigest = desc.digest.partition(":")
        name = f"blobs/{algorithm}/{hexdigest}"
        if name not in self.outer.members:
            raise NotFoundError(f"blob {short(desc.digest)} is missing from the archive")
        entry = self.outer.find(name, "blob")
        if entry.data.size != desc.size:
            raise CorruptError(f"blob {short(desc.digest)} is {entry.data.size} bytes, "
                               f"its descriptor says {desc.size}")
        return entry

    def read(self, desc: Descriptor) -> bytes:
        if desc.size > MAX_JSON_BYTES:
            raise CorruptError(f"blob {short(desc.digest)} is {desc.size} bytes, "
                               f"too large for a {desc.media_type or 'JSON'} document")
        raw = self._member(desc).data.read()
        algorithm, _, expected = desc.digest.partition(":")
        if hashlib.new(algorithm, raw).hexdigest() != expected:
            raise CorruptError(f"blob {short(desc.digest)} does not match its digest")
        return raw

    def layers(self, descs: list[Descriptor]) -> list[LayerBlob]:
        members = [self._member(desc) for desc in descs]  # a missing blob fails fast
        return [LayerBlob(short(desc.digest), *window, digest=desc.digest)
                for desc, window in zip(descs, _windows(members, self.scratch_dir), strict=True)]


def read_archive(path: str, opts: dict, scratch_dir: str | None = None) -> Tree:
    outer = OuterArchive(path)
    if "manifest.json" in outer.members:
        return read_docker_archive(path, outer, opts, scratch_dir)
    if "index.json" in outer.members:
        return read_image(path, ArchiveBlobs(outer, scratch_dir),
                          lambda name: outer.read_small(name, name), opts, scratch_dir)
    raise NotFoundError(f"{path}: not an OCI layout, OCI archive or docker save archive "
                        "(no index.json or manifest.json)")


def read_docker_archive(path: str, outer: OuterArchive, opts: dict,
                        scratch_dir: str | None = None) -> Tree:
    images = parse_docker_manifest(outer.read_small("manifest.json", "manifest"),
                                   f"{path}: manifest.json")
    configs: dict[str, ImageConfig] = {}

    def config_of(image: DockerImage) -> ImageConfig:
        if image.config not in configs:
            raw = outer.read_small(image.config, "config")
            m = _HEX_RE.search(image.config)
            if m and hashlib.sha256(raw).hexdigest() != m.group(1):
                raise CorruptError(f"{path}: config {image.config} does not match its digest")
            configs[image.config] = parse_config(raw, f"{path}: config {image.config}")
        return configs[image.config]

    platform = Platform.parse(opts["platform"]) if opts.get("platform") else None
    image = _choose(images, opts.get("ref"), platform, path, config_of)
    config = config_of(image)
    if len(config.diff_ids) != len(image.layers):
        raise CorruptError(f"{path}: {len(image.layers)} layers but the config lists "
                           f"{len(config.diff_ids)} diff_ids")

    windows = _windows([outer.find(name, "layer") for name in image.layers], scratch_dir)
    tree = stack_layers([LayerBlob(name, *window, diff_id=diff_id, where=f"{path}: layer {name}")
                         for name, diff_id, window in zip(image.layers, config.diff_ids,
                                                          windows, strict=True)],
                        opts.get("whiteouts") or "apply", scratch_dir)
    config_digest = hashlib.sha256(outer.read_small(image.config, "config")).hexdigest()
    tree.info = image_info(config, len(image.layers), ref=",".join(image.repo_tags),
                           archive="docker save", config_digest=f"sha256:{config_digest}")
    return tree
