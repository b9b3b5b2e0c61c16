"""Hand-built OCI image layouts: tar members, compressed layers, manifests,
configs and indexes made byte by byte, for the cases image tools never make
(or make only by accident)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile

import pytest

MTIME = 1_600_000_000


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", *, mode: int = 0o644,
           uid: int = 0, gid: int = 0, mtime: int = MTIME, linkname: str = "",
           xattrs: dict[str, bytes] | None = None, dev: tuple[int, int] = (0, 0)):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.mtime = mtime
    info.linkname = linkname
    info.devmajor, info.devminor = dev
    if kind == tarfile.REGTYPE:
        info.size = len(data)
    if xattrs:
        info.pax_headers = {f"SCHILY.xattr.{k}": v.decode("latin-1") for k, v in xattrs.items()}
    return info, data


def file(name: str, data: bytes = b"", **kw):
    return member(name, tarfile.REGTYPE, data, **kw)


def dir_(name: str, mode: int = 0o755, **kw):
    return member(name, tarfile.DIRTYPE, mode=mode, **kw)


def symlink(name: str, target: str, **kw):
    return member(name, tarfile.SYMTYPE, linkname=target, mode=0o777, **kw)


def hardlink(name: str, target: str, **kw):
    return member(name, tarfile.LNKTYPE, linkname=target, **kw)


def whiteout(name: str, **kw):
    return member(name, tarfile.REGTYPE, b"", **kw)


def make_tar(members) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT,
                      encoding="utf-8") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out.getvalue()


def compress(raw: bytes, compression: str | None) -> bytes:
    if compression == "gzip":
        return gzip.compress(raw, mtime=0)
    if compression == "zstd":
        import zstandard
        return zstandard.ZstdCompressor().compress(raw)
    return raw


LAYER_MEDIA = {None: "application/vnd.oci.image.layer.v1.tar",
               "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
               "zstd": "application/vnd.oci.image.layer.v1.tar+zstd"}


class LayoutBuilder:
    # Member makers, reachable from tests through the fixture.
    file = staticmethod(file)
    dir = staticmethod(dir_)
    symlink = staticmethod(symlink)
    hardlink = staticmethod(hardlink)
    whiteout = staticmethod(whiteout)
    member = staticmethod(member)

    def __init__(self, root: str) -> None:
        self.root = root
        os.makedirs(os.path.join(root, "blobs", "sha256"))
        with open(os.path.join(root, "oci-layout"), "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)
        self.index: list[dict] = []

    def blob(self, raw: bytes, media_type: str, **extra) -> dict:
        digest = hashlib.sha256(raw).hexdigest()
        with open(os.path.join(self.root, "blobs", "sha256", digest), "wb") as f:
            f.write(raw)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(raw),
                **extra}

    def json_blob(self, doc, media_type: str, **extra) -> dict:
        return self.blob(json.dumps(doc).encode(), media_type, **extra)

    def layer(self, members, compression: str | None = "gzip") -> tuple[dict, str]:
        raw = make_tar(members)
        desc = self.blob(compress(raw, compression), LAYER_MEDIA[compression])
        return desc, "sha256:" + hashlib.sha256(raw).hexdigest()

    def image(self, layers: list, *, arch: str = "amd64", os_: str = "linux",
              config: dict | None = None, ref: str | None = "latest",
              platform: bool = False, add: bool = True) -> dict:
        """``layers``: lists of members (gzip) or (members, compression)."""
        descs, diff_ids = [], []
        for item in layers:
            members, comp = item if isinstance(item, tuple) else (item, "gzip")
            desc, diff_id = self.layer(members, comp)
            descs.append(desc)
            diff_ids.append(diff_id)
        cfg = {"architecture": arch, "os": os_, "created": "2020-09-13T12:26:40Z",
               "config": config or {}, "rootfs": {"type": "layers", "diff_ids": diff_ids}}
        cfg_desc = self.json_blob(cfg, "application/vnd.oci.image.config.v1+json")
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": cfg_desc, "layers": descs}
        extra = {}
        if ref is not None:
            extra["annotations"] = {"org.opencontainers.image.ref.name": ref}
        if platform:
            extra["platform"] = {"os": os_, "architecture": arch}
        desc = self.json_blob(manifest, "application/vnd.oci.image.manifest.v1+json", **extra)
        if add:
            self.index.append(desc)
            self.write_index()
        return desc

    def write_index(self, manifests: list[dict] | None = None) -> None:
        with open(os.path.join(self.root, "index.json"), "w") as f:
            json.dump({"schemaVersion": 2, "manifests": self.index if manifests is None
                       else manifests}, f)

    def blob_path(self, desc: dict) -> str:
        return os.path.join(self.root, "blobs", "sha256", desc["digest"].split(":")[1])


@pytest.fixture
def layout(tmp_path) -> LayoutBuilder:
    return LayoutBuilder(str(tmp_path / "layout"))
