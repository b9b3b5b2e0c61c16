"""The JSON structures of an OCI image layout (image-spec) and a docker save.

Every document comes from an image we did not make, so each parser checks the
types of the fields it uses and raises CorruptError naming the blob; fields we
do not use are ignored, as the spec asks.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from convcore.errors import CorruptError

OCI_LAYOUT_VERSION = "1.0.0"
REF_NAME = "org.opencontainers.image.ref.name"

MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_OCI_LAYER_GZIP = MT_OCI_LAYER + "+gzip"
MT_OCI_LAYER_ZSTD = MT_OCI_LAYER + "+zstd"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"

CONFIG_TYPES = frozenset({MT_OCI_CONFIG, "application/vnd.docker.container.image.v1+json"})
INDEX_TYPES = frozenset({MT_OCI_INDEX, MT_DOCKER_LIST})
MANIFEST_TYPES = frozenset({MT_OCI_MANIFEST, MT_DOCKER_MANIFEST})

#: layer media type -> compression it declares (None: plain tar). The blob's
#: magic decides in the end; this table decides what we accept at all.
LAYER_TYPES: dict[str, str | None] = {
    MT_OCI_LAYER: None,
    MT_OCI_LAYER_GZIP: "gzip",
    MT_OCI_LAYER_ZSTD: "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": None,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar": None,
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
}

#: index.json, manifests and configs are small; anything larger is hostile.
MAX_JSON_BYTES = 32 << 20

_DIGEST_RE = re.compile(r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$")


def check_digest(digest: Any, where: str) -> str:
    """A digest we can verify and use as a file name (no path tricks)."""
    if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
        raise CorruptError(f"{where}: unsupported or malformed digest {digest!r}")
    return digest


def short(digest: str) -> str:
    """``sha256:0123456789ab`` for messages."""
    return digest[:19]


def parse_json(raw: bytes, where: str) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise CorruptError(f"{where}: malformed JSON ({e})") from None


def _obj(value: Any, where: str, what: str) -> dict:
    if not isinstance(value, dict):
        raise CorruptError(f"{where}: {what} is not a JSON object")
    return value


def _list(value: Any, where: str, what: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise CorruptError(f"{where}: {what} is not a JSON array")
    return value


def _str(value: Any, where: str, what: str, default: str = "") -> str:
    if value is None:
        return default
    if not isinstance(value, str):
        raise CorruptError(f"{where}: {what} is not a string")
    return value


def _str_map(value: Any, where: str, what: str) -> dict[str, str]:
    if value is None:
        return {}
    mapping = _obj(value, where, what)
    if not all(isinstance(v, str) for v in mapping.values()):
        raise CorruptError(f"{where}: {what} holds a non-string value")
    return mapping


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``linux/amd64`` or ``linux/arm64/v8``."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"not a platform: {text!r} (use e.g. linux/amd64, linux/arm/v7)")
        return cls(*parts)

    def matches(self, other: Platform) -> bool:
        """Whether an image for ``other`` satisfies a request for ``self``
        (a request without a variant takes any variant)."""
        return (self.os == other.os and self.architecture == other.architecture
                and (not self.variant or self.variant == other.variant))

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    platform: Platform | None = None

    @property
    def ref_name(self) -> str | None:
        return self.annotations.get(REF_NAME)

    @classmethod
    def parse(cls, value: Any, where: str) -> Descriptor:
        d = _obj(value, where, "descriptor")
        digest = check_digest(d.get("digest"), where)
        size = d.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise CorruptError(f"{where}: descriptor {short(digest)} has a bad size {size!r}")
        platform = None
        if d.get("platform") is not None:
            p = _obj(d["platform"], where, "platform")
            platform = Platform(_str(p.get("os"), where, "platform.os"),
                                _str(p.get("architecture"), where, "platform.architecture"),
                                _str(p.get("variant"), where, "platform.variant"))
        return cls(media_type=_str(d.get("mediaType"), where, "mediaType"), digest=digest,
                   size=size, annotations=_str_map(d.get("annotations"), where, "annotations"),
                   platform=platform)

    def to_json(self) -> dict:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest,
                               "size": self.size}
        if self.annotations:
            out["annotations"] = dict(sorted(self.annotations.items()))
        if self.platform is not None:
            out["platform"] = {"architecture": self.platform.architecture,
                               "os": self.platform.os}
            if self.platform.variant:
                out["platform"]["variant"] = self.platform.variant
        return out


def parse_index(raw: bytes, where: str) -> list[Descriptor]:
    """The ``manifests`` of an index (index.json or a nested image index)."""
    doc = _obj(parse_json(raw, where), where, "index")
    return [Descriptor.parse(m, where) for m in _list(doc.get("manifests"), where, "manifests")]


@dataclass
class Manifest:
    config: Descriptor
    layers: list[Descriptor]
    media_type: str = ""


def parse_manifest(raw: bytes, where: str) -> Manifest:
    doc = _obj(parse_json(raw, where), where, "manifest")
    if doc.get("config") is None:
        raise CorruptError(f"{where}: manifest has no config")
    return Manifest(config=Descriptor.parse(doc["config"], where),
                    layers=[Descriptor.parse(x, where)
                            for x in _list(doc.get("layers"), where, "layers")],
                    media_type=_str(doc.get("mediaType"), where, "mediaType"))


@dataclass
class ImageConfig:
    """What ``conv info`` shows about an image, and the layers' diff_ids."""

    architecture: str = ""
    os: str = ""
    variant: str = ""
    created: str = ""
    env: list[str] = field(default_factory=list)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    working_dir: str = ""
    user: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    diff_ids: list[str] = field(default_factory=list)

    @property
    def platform(self) -> Platform:
        return Platform(self.os, self.architecture, self.variant)

    def info(self) -> dict[str, Any]:
        """The run config for ``conv info``: what the image sets, nothing
        it leaves empty."""
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        for key, value in (("variant", self.variant), ("created", self.created),
                           ("Env", self.env), ("Entrypoint", self.entrypoint),
                           ("Cmd", self.cmd), ("WorkingDir", self.working_dir),
                           ("User", self.user), ("Labels", self.labels)):
            if value:
                out[key] = value
        return out


def _str_list(value: Any, where: str, what: str) -> list[str]:
    items = _list(value, where, what)
    if not all(isinstance(v, str) for v in items):
        raise CorruptError(f"{where}: {what} holds a non-string value")
    return items


def parse_config(raw: bytes, where: str) -> ImageConfig:
    doc = _obj(parse_json(raw, where), where, "image config")
    run = _obj(doc.get("config") or {}, where, "config")
    rootfs = _obj(doc.get("rootfs") or {}, where, "rootfs")
    return ImageConfig(
        architecture=_str(doc.get("architecture"), where, "architecture"),
        os=_str(doc.get("os"), where, "os"),
        variant=_str(doc.get("variant"), where, "variant"),
        created=_str(doc.get("created"), where, "created"),
        env=_str_list(run.get("Env"), where, "config.Env"),
        entrypoint=_str_list(run.get("Entrypoint"), where, "config.Entrypoint"),
        cmd=_str_list(run.get("Cmd"), where, "config.Cmd"),
        working_dir=_str(run.get("WorkingDir"), where, "config.WorkingDir"),
        user=_str(run.get("User"), where, "config.User"),
        labels=_str_map(run.get("Labels"), where, "config.Labels"),
        diff_ids=[check_digest(d, where) for d in
                  _str_list(rootfs.get("diff_ids"), where, "rootfs.diff_ids")],
    )


@dataclass
class DockerImage:
    """One entry of a docker save's manifest.json."""

    config: str
    repo_tags: list[str]
    layers: list[str]


def parse_docker_manifest(raw: bytes, where: str) -> list[DockerImage]:
    doc = parse_json(raw, where)
    images = []
    for item in _list(doc, where, "manifest.json"):
        item = _obj(item, where, "image")
        config = _str(item.get("Config"), where, "Config")
        if not config:
            raise CorruptError(f"{where}: an image has no Config")
        images.append(DockerImage(config=config,
                                  repo_tags=_str_list(item.get("RepoTags"), where, "RepoTags"),
                                  layers=_str_list(item.get("Layers"), where, "Layers")))
    return images


def dumps(doc: Any) -> bytes:
    """Canonical JSON bytes for what we write: sorted keys, no spaces, so the
    same image gives the same digests."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
