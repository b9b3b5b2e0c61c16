"""Writing a Tree as a PAX tar archive (plain, gz, zst or xz).

What GNU tar reads back exactly: ustar headers with PAX records where ustar
falls short (long names, nanosecond mtimes, large ids and sizes, xattrs as
``SCHILY.xattr.*``), hardlinks as type '1', devices, and files with holes as
GNU sparse PAX 1.0 members, which GNU tar extracts with the holes kept.

Reproducible: members in tree order, uname/gname empty, no clock; the PAX
headers depend only on the entry.
"""

from __future__ import annotations

import errno
import os
import sys
from dataclasses import replace
from typing import Any

from convcore.builtin import tar_layout as L
from convcore.builtin.tar_codec import ChunkOutput, PlainOutput, open_output
from convcore.errors import ConvError, CorruptError, NoSpaceError
from convcore.format import Context
from convcore.tree import COPY_CHUNK, Entry, FileRangeData, Kind, Tree, open_noatime

_TYPEFLAGS = {
    Kind.FILE: L.REGTYPE, Kind.DIR: L.DIRTYPE, Kind.SYMLINK: L.SYMTYPE,
    Kind.CHAR: L.CHRTYPE, Kind.BLOCK: L.BLKTYPE, Kind.FIFO: L.FIFOTYPE,
}

#: files smaller than this are stored densely even if they have holes, and
#: go through the output buffer rather than copy_file_range.
SMALL_FILE = 64 << 10


def _split_ustar_name(raw: bytes) -> tuple[bytes, bytes] | None:
    """(prefix, name) for the ustar fields, or None when it does not fit."""
    if len(raw) <= 100:
        return b"", raw
    if len(raw) > 256:
        return None
    # the longest prefix (<= 155 bytes) ending at a '/' that leaves <= 100 bytes
    cut = raw.rfind(b"/", 0, min(156, len(raw) - 1))
    if cut > 0 and len(raw) - cut - 1 <= 100:
        return raw[:cut], raw[cut + 1 :]
    return None


def _time_record(ns: int) -> bytes:
    sign = "-" if ns < 0 else ""
    sec, frac = divmod(abs(ns), 1_000_000_000)
    if frac:
        return f"{sign}{sec}.{frac:09d}".rstrip("0").encode()
    return f"{sign}{sec}".encode()


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


_MAX8 = 0o7777777
_MAX12 = 0o77777777777


def _num8(value: int) -> bytes:
    if 0 <= value <= _MAX8:
        return b"%07o\x00" % value
    return b"\x80" + value.to_bytes(7, "big")  # GNU base-256 (large device numbers)


def _header_block(name: bytes, prefix: bytes, mode: int, uid: int, gid: int, size: int,
                  mtime: int, typeflag: bytes, linkname: bytes, devmajor: int = 0,
                  devminor: int = 0) -> bytes:
    """One ustar header; the caller keeps mode/uid/gid/size/mtime in range."""
    block = bytearray(L.HEADER.pack(
        name, b"%07o\x00" % mode, b"%07o\x00" % uid, b"%07o\x00" % gid,
        b"%011o\x00" % size, b"%011o\x00" % mtime, b"        ", typeflag, linkname,
        L.USTAR_MAGIC, L.USTAR_VERSION, b"", b"", _num8(devmajor), _num8(devminor), prefix,
        b""))
    block[L.CHKSUM_OFFSET : L.CHKSUM_OFFSET + 8] = b"%06o\x00 " % sum(block)
    return bytes(block)


def member_headers(entry: Entry, inode: Entry, size: int, typeflag: bytes,
                   extra: list[tuple[str, bytes]] = (), name_override: bytes | None = None
                   ) -> bytes:
    """The PAX extended header (when needed) and the ustar header of one
    member. ``inode`` carries the metadata (the entry itself, or the target
    of a hardlink); ``size`` is what the member stores."""
    records: list[tuple[str, bytes]] = []
    raw = os.fsencode(entry.path) if entry.path else b"."
    if entry.is_dir():
        raw += b"/"
    binary = not _is_utf8(raw)

    header_name = name_override if name_override is not None else raw
    split = _split_ustar_name(header_name)
    if split is None:
        records.append(("path", header_name))
        split = (b"", header_name[:100])
    prefix, name = split

    linkname = b""
    if entry.link is not None:
        linkname = os.fsencode(entry.link)
    elif inode.kind is Kind.SYMLINK:
        linkname = os.fsencode(inode.target)
    binary = binary or not _is_utf8(linkname)
    if len(linkname) > 100:
        records.append(("linkpath", linkname))
        linkname = linkname[:100]

    uid, gid = inode.uid, inode.gid
    if not 0 <= uid <= _MAX8:
        records.append(("uid", str(uid).encode()))
        uid = 0
    if not 0 <= gid <= _MAX8:
        records.append(("gid", str(gid).encode()))
        gid = 0
    header_size = size
    if size > _MAX12:
        records.append(("size", str(size).encode()))
        header_size = 0
    mtime_ns = inode.mtime_ns
    mtime = mtime_ns // 1_000_000_000
    if mtime_ns % 1_000_000_000 or not 0 <= mtime <= _MAX12:
        records.append(("mtime", _time_record(mtime_ns)))
        mtime = min(max(mtime, 0), _MAX12)
    records.extend(extra)
    for key in sorted(inode.xattrs):
        records.append((f"SCHILY.xattr.{key}", inode.xattrs[key]))
    if binary and records:
        records.insert(0, ("hdrcharset", b"BINARY"))

    devmajor = devminor = 0
    if inode.kind in (Kind.CHAR, Kind.BLOCK):
        devmajor, devminor = inode.rdev

    out = b""
    if records:
        body = b"".join(L.pax_record(k, v) for k, v in records)
        pax_name = (b"PaxHeaders/" + header_name.rstrip(b"/").rpartition(b"/")[2])[:100]
        out += _header_block(pax_name, b"", 0o644, 0, 0, len(body), mtime, L.XHDTYPE, b"")
        out += body + bytes(-len(body) % L.BLOCK)
    out += _header_block(name, prefix, inode.mode & 0o7777, uid, gid, header_size, mtime,
                         typeflag, linkname, devmajor, devminor)
    return out


def _merged_extents(data, size: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, length in data.extents():
        if length <= 0:
            continue
        start, length = max(0, start), min(length, size - max(0, start))
        if length <= 0:
            continue
        if out and out[-1][0] + out[-1][1] >= start:
            prev_start, prev_len = out[-1]
            out[-1] = (prev_start, max(prev_len, start + length - prev_start))
        else:
            out.append((start, length))
    return out


class TarWriter:
    """Writes members to a ChunkOutput."""

    def __init__(self, out: ChunkOutput) -> None:
        self.out = out
        self.buf = bytearray(COPY_CHUNK)
        self.sockets_skipped = 0
        #: paths that hardlinks point at, and the name each inode went out under
        self.link_targets: set[str] = set()
        self.inode_names: dict[str, str] = {}

    def add(self, tree: Tree, entry: Entry) -> None:
        inode = tree.resolve(entry)
        holder = inode.path
        if holder in self.link_targets:
            stored_as = self.inode_names.get(holder)
            if stored_as is not None:  # the inode is already in the archive
                self.out.write(member_headers(replace(entry, link=stored_as), inode, 0,
                                              L.LNKTYPE))
                return
            if entry.link is not None:
                # A link name that comes before the name holding its inode
                # (a re-ordered tree): this name stores the inode, so tar
                # readers never see a link to a member they have not seen.
                entry = inode = replace(inode, path=entry.path)
            self.inode_names[holder] = entry.path
        if entry.kind is Kind.SOCKET:
            self.sockets_skipped += 1  # tar has no socket type (GNU tar skips them too)
            return
        if entry.kind is not Kind.FILE:
            self.out.write(member_headers(entry, inode, 0, _TYPEFLAGS[entry.kind]))
            return
        data = entry.data
        size = data.size if data is not None else 0
        if data is None or size == 0:
            self.out.write(member_headers(entry, inode, 0, L.REGTYPE))
            return
        extents = _merged_extents(data, size) if size >= SMALL_FILE else [(0, size)]
        if extents == [(0, size)]:
            self.out.write(member_headers(entry, inode, size, L.REGTYPE))
            self._copy_dense(data, size)
        else:
            self._write_sparse(entry, inode, data, size, extents)
        self.out.write_zeros(-size % L.BLOCK if extents == [(0, size)] else 0)

    def _copy_dense(self, data, size: int) -> None:
        out = self.out
        if isinstance(out, PlainOutput) and size >= SMALL_FILE:
            out.copy_data(data, size, self.buf)
            return
        self._copy_range(data, 0, size)

    def _copy_range(self, data, start: int, length: int) -> None:
        if isinstance(data, FileRangeData):
            self._copy_host_range(data, start, length)
            return
        out = self.out
        pos, end = start, start + length
        while pos < end:
            space = out.space()
            n = data.readinto(pos, space[: min(len(space), end - pos)])
            if n <= 0:
                raise CorruptError(f"file data ended early at offset {pos} of {data.size}")
            out.commit(n)
            pos += n

    def _copy_host_range(self, data: FileRangeData, start: int, length: int) -> None:
        """A host file's bytes: copy_file_range into a plain tar, else
        preadv straight into the output buffer (one open per file)."""
        out = self.out
        try:
            fd = open_noatime(data.path)
        except OSError as e:
            raise ConvError(f"{data.path}: cannot read: {e.strerror}") from None
        try:
            if isinstance(out, PlainOutput) and length >= SMALL_FILE:
                out.copy_fd_range(fd, data.offset + start, length, self.buf)
                return
            pos, end = start, start + length
            while pos < end:
                space = out.space()
                n = os.preadv(fd, [space[: min(len(space), end - pos)]], data.offset + pos)
                if n <= 0:
                    raise CorruptError(f"{data.path}: file shrank while being archived "
                                       f"(ends at {pos}, expected {data.size} bytes)")
                out.commit(n)
                pos += n
        finally:
            os.close(fd)

    def _write_sparse(self, entry: Entry, inode: Entry, data, size: int,
                      extents: list[tuple[int, int]]) -> None:
        """GNU sparse PAX 1.0: the map as decimal lines padded to a block,
        then the data extents back to back. A trailing hole is recorded as
        a zero-length extent at the end so readers restore the full size."""
        sparse_map = list(extents)
        if not sparse_map or sum(sparse_map[-1]) < size:
            sparse_map.append((size, 0))
        text = b"%d\n" % len(sparse_map) + b"".join(b"%d\n%d\n" % e for e in sparse_map)
        text += bytes(-len(text) % L.BLOCK)
        stored = sum(n for _, n in extents)
        raw = os.fsencode(entry.path)
        parent, _, base = raw.rpartition(b"/")
        fake = (parent + b"/" if parent else b"") + b"GNUSparseFile.0/" + base
        extra = [("GNU.sparse.major", b"1"), ("GNU.sparse.minor", b"0"),
                 ("GNU.sparse.name", raw), ("GNU.sparse.realsize", str(size).encode())]
        self.out.write(member_headers(entry, inode, len(text) + stored, L.REGTYPE, extra,
                                      name_override=fake))
        self.out.write(text)
        for start, length in extents:
            self._copy_range(data, start, length)
        self.out.write_zeros(-stored % L.BLOCK)

    def finish(self) -> None:
        self.out.write_zeros(2 * L.BLOCK)
        self.out.write_zeros(-self.out.offset % L.RECORD)


def write_tar(tree: Tree, path: str | os.PathLike, compression: str = "none",
              ctx: Context | None = None, level: int | None = None,
              digest: Any = None) -> None:
    """Write ``tree`` as a new tar file at ``path``, in tree order.

    ``compression`` is ``none``, ``gz``, ``zst`` or ``xz``; ``level`` the
    codec's level (its default when None). The file must not exist yet.
    ``digest``, a hashlib object, is fed the uncompressed tar stream (an
    OCI layer's diff_id), for a compressed output only.
    """
    if digest is not None and compression == "none":
        raise ValueError("write_tar: digest needs a compressed output")
    path = os.fspath(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        out = open_output(fd, compression, level)
        out.digest = digest
        writer = TarWriter(out)
        writer.link_targets = {e.link for e in tree if e.link is not None}
        try:
            with _progress(ctx, tree, f"tar {os.path.basename(path)}") as bar:
                for entry in tree:
                    try:
                        writer.add(tree, entry)
                    except OSError as e:
                        if e.errno in (errno.ENOSPC, errno.EDQUOT) or isinstance(e, ConvError):
                            raise
                        # a source file that vanished or cannot be read
                        raise ConvError(f"{entry.path!r}: cannot archive: {e.strerror}") from None
                    if entry.data is not None and entry.link is None:
                        bar.update(entry.data.size)
                writer.finish()
        finally:
            out.close()
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoSpaceError(f"{path}: no space left on the output device") from None
        raise
    finally:
        os.close(fd)
    if writer.sockets_skipped and not (ctx is not None and ctx.quiet):
        print(f"conv: warning: tar cannot hold sockets: {writer.sockets_skipped} skipped",
              file=sys.stderr)


def _progress(ctx: Context | None, tree: Tree, desc: str):
    from convcore.progress import bar

    if ctx is None or ctx.quiet:
        return bar(None, desc, disabled=True)
    total = sum(e.data.size for e in tree if e.data is not None and e.link is None)
    return ctx.progress(total, desc)
