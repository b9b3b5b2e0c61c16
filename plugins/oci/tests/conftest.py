"""Hand-built OCI image layouts: tar members, compressed layers, manifests,
configs and indexes made byte by byte, for the cases image tools never make
(or make only by accident)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile

import pytest

from convcore.testing import flip_byte

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
    make_tar = staticmethod(make_tar)

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

    @staticmethod
    def flip_byte(path: str, offset: int) -> None:
        """Corrupt a blob in place: same size, one byte changed."""
        flip_byte(path, offset, 0xFF)


@pytest.fixture
def layout(tmp_path) -> LayoutBuilder:
    return LayoutBuilder(str(tmp_path / "layout"))


# --------------------------------------------------------------------------
# umoci: the judge


ROOTLESS_XATTR = "user.rootlesscontainers"
_NOOP_ID = 0xFFFFFFFF


def _varints(raw: bytes) -> dict[int, int]:
    """The varint fields of a tiny protobuf message (rootlesscontainers'
    Resource: 1 = uid, 2 = gid)."""
    fields, pos = {}, 0
    while pos < len(raw):
        key, pos = _varint(raw, pos)
        value, pos = _varint(raw, pos)
        fields[key >> 3] = value
    return fields


def _varint(raw: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = raw[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def umoci_view(scan: dict) -> dict:
    """What ``umoci unpack --rootless`` can show of a scan: owners recorded
    in user.rootlesscontainers (decoded back), no symlink owners (no user
    xattrs on symlinks), devices as empty files."""
    out = {}
    for path, rec in scan.items():
        rec = dict(rec)
        xattrs = dict(rec.get("xattrs", {}))
        owner = xattrs.pop(ROOTLESS_XATTR, None)
        if owner is not None:
            ids = _varints(owner)
            rec["uid"] = 0 if ids.get(1, 0) == _NOOP_ID else ids.get(1, 0)
            rec["gid"] = 0 if ids.get(2, 0) == _NOOP_ID else ids.get(2, 0)
        rec["xattrs"] = xattrs
        if rec["type"] == stat.S_IFLNK:
            rec.pop("uid"), rec.pop("gid")
        if rec["type"] in (stat.S_IFCHR, stat.S_IFBLK):
            rec.pop("rdev")
            rec.update(type=stat.S_IFREG, size=0, sha256=hashlib.sha256(b"").hexdigest())
        out[path] = rec
    return out


def umoci(*args: str) -> None:
    from convcore.testing import run
    run("umoci", *args)


def umoci_unpack(layout: str, ref: str, bundle: str) -> dict:
    """Unpack with umoci and scan its rootfs (umoci_view form, hardlinks as
    groups)."""
    from convcore.testing import normalize_hardlinks, scan_dir
    umoci("unpack", "--rootless", "--image", f"{layout}:{ref}", bundle)
    return normalize_hardlinks(umoci_view(scan_dir(os.path.join(bundle, "rootfs"))))


# --------------------------------------------------------------------------
# an image built layer by layer with umoci

UMOCI_MTIME_NS = 1_650_000_000_000_000_000


def _settle(rootfs: str) -> None:
    """Fixed times, so the layers (and the comparison) do not depend on the clock."""
    for dirpath, dirnames, filenames in os.walk(rootfs, topdown=False):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), ns=(UMOCI_MTIME_NS, UMOCI_MTIME_NS),
                     follow_symlinks=False)
    os.utime(rootfs, ns=(UMOCI_MTIME_NS, UMOCI_MTIME_NS))


def _write(path: str, data: bytes, mode: int = 0o644) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


@pytest.fixture(scope="session")
def umoci_image(tmp_path_factory):
    """A four-layer image: base, deletions, type changes, hardlinks."""
    from convcore.testing import require_tool, run
    require_tool("umoci")
    base = tmp_path_factory.mktemp("umoci")
    layout, bundle = str(base / "layout"), str(base / "bundle")
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", f"{layout}:img")

    def step(change) -> None:
        shutil.rmtree(bundle, ignore_errors=True)
        run("umoci", "unpack", "--rootless", "--image", f"{layout}:img", bundle)
        rootfs = os.path.join(bundle, "rootfs")
        change(rootfs)
        _settle(rootfs)
        run("umoci", "repack", "--image", f"{layout}:img", bundle)

    def layer1(r: str) -> None:
        _write(f"{r}/etc/hostname", b"box\n")
        _write(f"{r}/etc/shadow", b"root:*:1::::::\n", 0o640)
        _write(f"{r}/usr/bin/busybox", bytes(range(256)) * 4000, 0o755)
        _write(f"{r}/usr/share/doc/a/README", b"a\n")
        _write(f"{r}/usr/share/doc/b/README", b"b\n")
        _write(f"{r}/opt/conf", b"file for now\n")
        os.makedirs(f"{r}/var/dir-to-file/sub")
        _write(f"{r}/var/dir-to-file/sub/x", b"x")
        os.symlink("busybox", f"{r}/usr/bin/sh")
        os.setxattr(f"{r}/etc/hostname", "user.note", b"from layer 1")
        os.chmod(f"{r}/usr/share", 0o775)

    def layer2(r: str) -> None:
        os.unlink(f"{r}/etc/shadow")  # whiteout of a file
        shutil.rmtree(f"{r}/usr/share/doc/a")  # whiteout of a directory
        _write(f"{r}/etc/hostname", b"renamed-box\n")  # replaced file
        os.link(f"{r}/usr/bin/busybox", f"{r}/usr/bin/ls")  # hardlink to lower file
        os.chmod(f"{r}/usr/share", 0o755)

    def layer3(r: str) -> None:
        os.unlink(f"{r}/opt/conf")  # file -> dir
        _write(f"{r}/opt/conf/main.cf", b"dir now\n")
        shutil.rmtree(f"{r}/var/dir-to-file")  # dir -> file
        _write(f"{r}/var/dir-to-file", b"file now\n")
        os.unlink(f"{r}/usr/bin/sh")  # symlink -> file
        _write(f"{r}/usr/bin/sh", b"#!real\n", 0o755)

    def layer4(r: str) -> None:
        os.unlink(f"{r}/usr/bin/busybox")  # the hardlink's first name goes
        shutil.rmtree(f"{r}/usr/share/doc")  # a whole tree goes ...
        _write(f"{r}/usr/share/doc/new", b"fresh\n")  # ... and comes back smaller

    for change in (layer1, layer2, layer3, layer4):
        step(change)
    return layout



@pytest.fixture
def judge():
    """The umoci helpers, for tests (conftest is not importable by name)."""
    import types
    return types.SimpleNamespace(umoci=umoci, unpack=umoci_unpack, view=umoci_view)


# --------------------------------------------------------------------------
# docker save tarballs


def docker_save(path: str, images: list[tuple[list[str], list, dict]], *,
                arch: str = "amd64", corrupt_layer: bool = False,
                gzip_outer: bool = False) -> None:
    """A classic ``docker save`` archive. ``images``: (RepoTags, layers as
    member lists, run config). A layer two images share is stored once; the
    second image's ``layer.tar`` is a symlink to the first, as docker does."""
    files: dict[str, bytes] = {}
    links: dict[str, str] = {}
    stored: dict[str, str] = {}  # diff_id -> member name
    manifest = []
    for tags, layers, run in images:
        names, diff_ids = [], []
        for members in layers:
            raw = make_tar(members)
            diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
            layer_id = hashlib.sha256((diff_id + str(len(manifest))).encode()).hexdigest()
            name = f"{layer_id}/layer.tar"
            if diff_id in stored:
                links[name] = f"../{stored[diff_id]}"
            else:
                stored[diff_id] = name
                files[name] = raw[:-1024] + b"x" * 1024 if corrupt_layer else raw
            files[f"{layer_id}/VERSION"] = b"1.0"
            names.append(name)
            diff_ids.append(diff_id)
        config = json.dumps({"architecture": arch, "os": "linux", "config": run,
                             "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
        config_name = hashlib.sha256(config).hexdigest() + ".json"
        files[config_name] = config
        manifest.append({"Config": config_name, "RepoTags": tags, "Layers": names})
    files["manifest.json"] = json.dumps(manifest).encode()
    with tarfile.open(path, "w:gz" if gzip_outer else "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = MTIME
            tar.addfile(info, io.BytesIO(data))
        for name, target in links.items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)


@pytest.fixture(name="docker_save")
def docker_save_fixture():
    return docker_save
