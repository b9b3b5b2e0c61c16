"""Reading tar archives (ustar, GNU, PAX; plain, gz, zst, xz, bz2) as a stream
of Entries, without holding the archive in memory.

File data stays in the archive: a member of a plain tar is a FileRangeData
(copy_file_range straight out of the archive); a member of a compressed one
is a ``TarMemberData`` that decompresses on demand through one decompressor
shared by the whole archive, so reading members in archive order
(``Tree.data_order``) decompresses the archive once.
"""

from __future__ import annotations

import base64
import os
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Protocol

from convcore.builtin import tar_layout as L
from convcore.builtin.tar_codec import SharedDecompressor, StreamCursor, detect_compression
from convcore.errors import CorruptError, UnsupportedError, UsageError
from convcore.tree import COPY_CHUNK, Data, Entry, FileRangeData, Kind, Tree, copy_range, normpath

#: caps on what a hostile header may make us allocate
MAX_PAX_HEADER = 64 << 20
MAX_LONG_NAME = 1 << 20
MAX_SPARSE_ENTRIES = 1 << 20

#: _member's answer for PAX sparse 1.0: the map is read from the data.
SPARSE_MAP_IN_DATA = "map-in-data"

_KINDS = {
    L.REGTYPE: Kind.FILE, L.AREGTYPE: Kind.FILE, L.CONTTYPE: Kind.FILE,
    L.LNKTYPE: Kind.FILE, L.SYMTYPE: Kind.SYMLINK, L.CHRTYPE: Kind.CHAR,
    L.BLKTYPE: Kind.BLOCK, L.DIRTYPE: Kind.DIR, L.FIFOTYPE: Kind.FIFO,
    L.GNU_DUMPDIR: Kind.DIR, L.GNU_SPARSE: Kind.FILE,
}


# --------------------------------------------------------------------------
# Lazy member data


class PlainArchive:
    """The bytes of an uncompressed archive, opened per call."""

    def __init__(self, path: str) -> None:
        self.path = path

    def readinto(self, offset: int, view: memoryview) -> int:
        with open(self.path, "rb", buffering=0) as f:
            f.seek(offset)
            done = 0
            while done < len(view):
                n = f.readinto(view[done:])
                if not n:
                    break
                done += n
            return done


class TarMemberData(Data):
    """A member's contents: ``segments`` are ``(file_offset, length,
    archive_offset)`` in the (decompressed) archive, ascending; gaps between
    them are holes (sparse members)."""

    def __init__(self, archive: PlainArchive | SharedDecompressor, size: int,
                 segments: list[tuple[int, int, int]]) -> None:
        self.archive = archive
        self.size = size
        self.segments = segments

    @property
    def order_key(self) -> tuple:
        return (self.archive.path, self.segments[0][2] if self.segments else 0)

    def extents(self) -> list[tuple[int, int]]:
        return [(f, n) for f, n, _ in self.segments if n]

    def readinto(self, offset: int, buf: memoryview | bytearray) -> int:
        want = max(0, min(len(buf), self.size - offset))
        view = memoryview(buf)[:want]
        covered = 0
        for f, n, a in self.segments:
            lo, hi = max(f, offset), min(f + n, offset + want)
            if lo >= hi:
                continue
            if lo - offset > covered:
                view[covered : lo - offset] = bytes(lo - offset - covered)
            got = self.archive.readinto(a + (lo - f), view[lo - offset : hi - offset])
            if got != hi - lo:
                raise CorruptError(f"{self.archive.path}: member data at offset "
                                   f"{a + (lo - f)} is truncated")
            covered = hi - offset
        if covered < want:
            view[covered:want] = bytes(want - covered)
        return want

    def copy_to(self, fd: int, dst_offset: int, buf: bytearray | None = None) -> None:
        if buf is None:
            buf = bytearray(COPY_CHUNK)
        if isinstance(self.archive, PlainArchive):
            with open(self.archive.path, "rb", buffering=0) as f:
                for fo, n, a in self.segments:
                    copy_range(f.fileno(), a, fd, dst_offset + fo, n, buf)
            return
        super().copy_to(fd, dst_offset, buf)


def plain_member_data(archive: PlainArchive, size: int,
                      segments: list[tuple[int, int, int]]) -> Data:
    """A member's data left in place in an uncompressed archive (host file
    offsets in ``segments``): a plain file range unless it is sparse."""
    if len(segments) == 1 and segments[0][:2] == (0, size):
        return FileRangeData(archive.path, segments[0][2], size)
    return TarMemberData(archive, size, segments)


# --------------------------------------------------------------------------
# Header parsing


def _number(header: L.Header, field: str, where: str) -> int:
    try:
        return L.parse_number(getattr(header, field))
    except ValueError:
        raise CorruptError(f"{where}: bad {field} field {getattr(header, field)!r}") from None


def _pax_int(value: bytes, key: str, where: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise CorruptError(f"{where}: bad PAX {key}={value!r}") from None


def _pax_time_ns(value: bytes, key: str, where: str) -> int:
    """``"1700000000.123456789"`` (or negative) as integer nanoseconds."""
    text = value.decode("ascii", "replace").strip()
    sign = -1 if text.startswith("-") else 1
    whole, _, frac = text.lstrip("+-").partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()):
        raise CorruptError(f"{where}: bad PAX {key}={value!r}")
    return sign * (int(whole) * 1_000_000_000 + int((frac + "000000000")[:9]))


def _decode_path(raw: bytes) -> str:
    return os.fsdecode(raw)


def _clean_path(name: str, where: str, what: str = "path") -> str:
    """The tree form of a member name; names climbing out of the archive
    root are refused (as corrupt input, not as a usage error)."""
    try:
        return normpath(name)
    except UsageError:
        raise CorruptError(f"{where}: {what} {name!r} escapes the archive root") from None


def _parse_sparse_map(pairs: list[int], where: str) -> list[tuple[int, int]]:
    if len(pairs) % 2:
        raise CorruptError(f"{where}: GNU sparse map has an odd number of numbers")
    return [(pairs[i], pairs[i + 1]) for i in range(0, len(pairs), 2)]


def _segments(sparse: list[tuple[int, int]], realsize: int, stored: int, data_offset: int,
              where: str) -> list[tuple[int, int, int]]:
    """Check a sparse map against the member and place it in the archive."""
    if len(sparse) > MAX_SPARSE_ENTRIES:
        raise CorruptError(f"{where}: GNU sparse map has {len(sparse)} entries")
    segments = []
    pos = 0
    end = 0
    for off, length in sparse:
        if off < end or length < 0 or off + length > realsize:
            raise CorruptError(f"{where}: GNU sparse map entry ({off}, {length}) is out of "
                               f"order or beyond the file size {realsize}")
        if length:
            segments.append((off, length, data_offset + pos))
        pos += length
        end = off + length
    if pos != stored:
        raise CorruptError(f"{where}: GNU sparse map holds {pos} bytes but the member "
                           f"stores {stored}")
    return segments


_XATTR_PREFIXES = ("SCHILY.xattr.", "LIBARCHIVE.xattr.", "RHT.security.")


def _pax_xattr(key: str, value: bytes) -> tuple[str, bytes] | None:
    if key.startswith("SCHILY.xattr."):
        return key[len("SCHILY.xattr."):], value
    if key.startswith("LIBARCHIVE.xattr."):
        name = urllib.parse.unquote(key[len("LIBARCHIVE.xattr."):])
        return name, base64.b64decode(value + b"=" * (-len(value) % 4))
    if key.startswith("RHT.security."):
        return "security." + key[len("RHT.security."):], value
    return None


def iter_entries(path: str | os.PathLike, compression: str | None = None) -> Iterator[Entry]:
    """The members of one tar archive as Entries, in archive order.

    Nothing is merged: a path may come twice (a later member replaces an
    earlier one when put in a Tree) and OCI whiteouts (``.wh.`` names) come
    through as the regular entries they are. File data is lazy (see the
    module docstring). A hardlink is an Entry with ``link`` set and the
    metadata its own header carries. ``compression`` (``none``, ``gz``,
    ``zst``, ``xz``, ``bz2``) overrides detection by magic.

    Raises CorruptError naming the member or offset for a malformed or
    truncated archive.
    """
    path = os.fspath(path)
    comp = compression or detect_compression(path)
    cursor = StreamCursor(path, comp)
    if comp == "none":
        archive_size = os.path.getsize(path)
        plain = PlainArchive(path)

        def make_data(size: int, segments: list[tuple[int, int, int]], data_offset: int,
                      body: int, where: str) -> Data:
            if data_offset + body > archive_size:
                raise CorruptError(f"{where}: archive is truncated (the member needs "
                                   f"{body} bytes at {data_offset}, the file has "
                                   f"{archive_size})")
            return plain_member_data(plain, size, segments)
    else:
        shared = SharedDecompressor(path, comp)

        def make_data(size: int, segments: list[tuple[int, int, int]], data_offset: int,
                      body: int, where: str) -> Data:
            return TarMemberData(shared, size, segments)
    try:
        yield from _scan(path, cursor, make_data)
    finally:
        cursor.close()


class TarStream(Protocol):
    """A forward-only reader of tar bytes (``StreamCursor`` is one)."""

    pos: int

    def read(self, n: int) -> bytes: ...

    def readinto(self, view: memoryview) -> int: ...

    def skip(self, n: int) -> int: ...


#: ``make_data(size, segments, data_offset, body, where)``: the Data of a file
#: member whose ``body`` stored bytes start at stream offset ``data_offset``;
#: ``segments`` are ``(file_offset, length, stream_offset)``, ascending, gaps
#: being holes (one segment covering the file when it is not sparse).
MakeData = Callable[[int, list[tuple[int, int, int]], int, int, str], Data]


def scan_stream(stream: TarStream, name: str, make_data: MakeData) -> Iterator[Entry]:
    """The members of a tar read once from ``stream``, as ``iter_entries``
    gives them, each file's Data made by ``make_data``.

    The scan hands over the data stream as it goes: when a file member is
    yielded, ``stream`` is at its first data byte (``stream.pos`` is its
    first segment's stream offset), and the caller may read the member's
    stored bytes from it before asking for the next entry; the scan skips
    whatever the caller left. ``name`` names the archive in errors."""
    return _scan(name, stream, make_data)


def _read_exact(cursor: TarStream, n: int, where: str, what: str) -> bytes:
    data = cursor.read(n)
    if len(data) != n:
        raise CorruptError(f"{where}: archive is truncated inside the {what}")
    return data


def _skip_exact(cursor: TarStream, n: int, where: str) -> None:
    start = cursor.pos
    if cursor.skip(n) != n:
        raise CorruptError(f"{where}: archive is truncated ({n} bytes of member data "
                           f"expected at offset {start}, it ends at {cursor.pos})")


def _padded(n: int) -> int:
    return -(-n // L.BLOCK) * L.BLOCK


def _skip_to(cursor: TarStream, end: int, where: str) -> None:
    """Move to stream offset ``end`` (the next header), from wherever the
    caller left the member's data."""
    if cursor.pos > end:
        raise CorruptError(f"{where}: read past the member's data (at {cursor.pos}, "
                           f"it ends at {end})")
    _skip_exact(cursor, end - cursor.pos, where)


def _scan(path: str, cursor: TarStream, make_data: MakeData) -> Iterator[Entry]:
    global_pax: dict[str, bytes] = {}
    pax: list[tuple[str, bytes]] | None = None
    long_name: bytes | None = None
    long_link: bytes | None = None
    while True:
        offset = cursor.pos
        where = f"{path}: member at offset {offset}"
        block = cursor.read(L.BLOCK)
        if not block:
            if pax is not None or long_name is not None or long_link is not None:
                raise CorruptError(f"{where}: archive ends after an extended header")
            return  # no end-of-archive blocks; GNU tar accepts this too
        if len(block) < L.BLOCK:
            raise CorruptError(f"{where}: archive is truncated inside a header")
        if block == L.ZERO_BLOCK:
            return
        try:
            stored_sum = L.parse_number(block[L.CHKSUM_OFFSET : L.CHKSUM_OFFSET + 8])
        except ValueError:
            stored_sum = -1
        if stored_sum != L.checksum(block) and stored_sum != L.signed_checksum(block):
            raise CorruptError(f"{where}: bad header checksum (not a tar archive, or corrupt)")
        header = L.Header._make(L.HEADER.unpack(block))
        typeflag = header.typeflag
        size = _number(header, "size", where)
        if size < 0:
            raise CorruptError(f"{where}: negative size")

        if typeflag in (L.XHDTYPE, L.XGLTYPE):
            if size > MAX_PAX_HEADER:
                raise CorruptError(f"{where}: PAX header of {size} bytes is too large")
            data = _read_exact(cursor, size, where, "PAX header")
            _skip_exact(cursor, _padded(size) - size, where)
            records = L.parse_pax(data, where)
            if typeflag == L.XGLTYPE:
                for key, value in records:
                    if value:
                        global_pax[key] = value
                    else:
                        global_pax.pop(key, None)
            else:
                pax = (pax or []) + records
            continue
        if typeflag in (L.GNU_LONGNAME, L.GNU_LONGLINK):
            if size > MAX_LONG_NAME:
                raise CorruptError(f"{where}: GNU long name of {size} bytes is too large")
            name = L.cstring(_read_exact(cursor, size, where, "GNU long name"))
            _skip_exact(cursor, _padded(size) - size, where)
            if typeflag == L.GNU_LONGNAME:
                long_name = name
            else:
                long_link = name
            continue
        if typeflag == L.GNU_MULTIVOL:
            raise UnsupportedError(f"{where}: multi-volume archives are not supported")
        if typeflag == L.GNU_VOLHDR:
            _skip_exact(cursor, _padded(size), where)
            continue

        records = dict(global_pax)
        for key, value in pax or ():
            records[key] = value
        entry, stored, segments_map, realsize = _member(
            header, block, typeflag, size, records, pax or [], long_name, long_link, where,
            cursor)
        pax, long_name, long_link = None, None, None

        data_offset = cursor.pos
        if entry.kind is Kind.FILE and entry.link is None:
            if segments_map is not None:
                if segments_map == SPARSE_MAP_IN_DATA:
                    segments_map, map_bytes = _read_sparse_1_0(cursor, where, stored)
                    data_offset = cursor.pos
                    stored -= map_bytes
                segments = _segments(segments_map, realsize, stored, data_offset, where)
                entry.size = realsize
            else:
                segments = [(0, stored, data_offset)]
                entry.size = stored
            entry.data = make_data(entry.size, segments, data_offset, stored,
                                   f"{where} ({entry.path!r})")
            yield entry
            _skip_to(cursor, data_offset + _padded(stored), where)
        else:
            yield entry
            _skip_to(cursor, data_offset + _padded(stored), where)


def _member(header: L.Header, block: bytes, typeflag: bytes, size: int,
            records: dict[str, bytes], ordered: list[tuple[str, bytes]],
            long_name: bytes | None, long_link: bytes | None, where: str,
            cursor: TarStream):
    """Build the Entry for one member header; returns it with the stored
    data size, a sparse map (None when not sparse; SPARSE_MAP_IN_DATA for
    PAX sparse 1.0, whose map leads the data) and the real file size."""
    if "path" in records:
        raw_name = records["path"]
    elif long_name is not None:
        raw_name = long_name
    else:
        raw_name = L.cstring(header.name)
        if header.magic == L.USTAR_MAGIC and header.prefix[:1] != b"\x00":
            raw_name = L.cstring(header.prefix) + b"/" + raw_name
    if "linkpath" in records:
        raw_link = records["linkpath"]
    elif long_link is not None:
        raw_link = long_link
    else:
        raw_link = L.cstring(header.linkname)

    kind = _KINDS.get(typeflag, Kind.FILE)  # POSIX: unknown types read as files
    if typeflag == L.AREGTYPE and raw_name.endswith(b"/"):
        kind = Kind.DIR

    stored = _pax_int(records["size"], "size", where) if "size" in records else size
    if stored < 0:
        raise CorruptError(f"{where}: negative size")
    realsize = stored
    sparse: list | None = None

    if typeflag == L.GNU_SPARSE:
        sparse, realsize = _old_gnu_sparse(block, cursor, where)
    major = records.get("GNU.sparse.major")
    if major is not None:
        if major != b"1" or records.get("GNU.sparse.minor", b"0") != b"0":
            raise UnsupportedError(f"{where}: GNU sparse format {major!r} is not supported")
        sparse = SPARSE_MAP_IN_DATA
        realsize = _pax_int(records.get("GNU.sparse.realsize", b"x"), "GNU.sparse.realsize",
                            where)
    elif "GNU.sparse.map" in records:  # 0.1
        text = records["GNU.sparse.map"].decode("ascii", "replace")
        try:
            pairs = [int(x) for x in text.split(",")] if text else []
        except ValueError:
            raise CorruptError(f"{where}: bad GNU.sparse.map") from None
        sparse = _parse_sparse_map(pairs, where)
        realsize = _pax_int(records.get("GNU.sparse.size", b"x"), "GNU.sparse.size", where)
    elif "GNU.sparse.offset" in records:  # 0.0: repeated offset/numbytes pairs
        pairs = [_pax_int(v, k, where) for k, v in ordered
                 if k in ("GNU.sparse.offset", "GNU.sparse.numbytes")]
        sparse = _parse_sparse_map(pairs, where)
        realsize = _pax_int(records.get("GNU.sparse.size", b"x"), "GNU.sparse.size", where)
    if sparse is not None and "GNU.sparse.name" in records:
        raw_name = records["GNU.sparse.name"]
    if realsize < 0:
        raise CorruptError(f"{where}: negative sparse file size")

    name = _decode_path(raw_name)
    where_name = f"{where} ({name!r})"
    tree_path = _clean_path(name, where_name)

    mode = _number(header, "mode", where_name) & 0o7777
    uid = (_pax_int(records["uid"], "uid", where_name) if "uid" in records
           else _number(header, "uid", where_name))
    gid = (_pax_int(records["gid"], "gid", where_name) if "gid" in records
           else _number(header, "gid", where_name))
    if "mtime" in records:
        mtime_ns = _pax_time_ns(records["mtime"], "mtime", where_name)
    else:
        mtime_ns = _number(header, "mtime", where_name) * 1_000_000_000
    atime_ns = (_pax_time_ns(records["atime"], "atime", where_name) if "atime" in records
                else mtime_ns)
    ctime_ns = (_pax_time_ns(records["ctime"], "ctime", where_name) if "ctime" in records
                else mtime_ns)

    if uid < 0 or gid < 0:
        raise CorruptError(f"{where_name}: negative uid or gid")
    entry = Entry(tree_path, kind, mode=mode, uid=uid, gid=gid, mtime_ns=mtime_ns,
                  atime_ns=atime_ns, ctime_ns=ctime_ns)
    for key, value in records.items():
        if key.startswith(_XATTR_PREFIXES):
            try:
                xattr = _pax_xattr(key, value)
            except ValueError:
                raise CorruptError(f"{where_name}: bad xattr record {key!r}") from None
            if xattr is not None:
                entry.xattrs[xattr[0]] = xattr[1]

    if typeflag == L.LNKTYPE:
        entry.link = _clean_path(_decode_path(raw_link), where_name, "hardlink target")
        if not entry.link:
            raise CorruptError(f"{where_name}: hardlink to the archive root")
    elif kind is Kind.SYMLINK:
        entry.target = _decode_path(raw_link)
    elif kind in (Kind.CHAR, Kind.BLOCK):
        major_n = (_pax_int(records["SCHILY.devmajor"], "SCHILY.devmajor", where_name)
                   if "SCHILY.devmajor" in records else _number(header, "devmajor", where_name))
        minor_n = (_pax_int(records["SCHILY.devminor"], "SCHILY.devminor", where_name)
                   if "SCHILY.devminor" in records else _number(header, "devminor", where_name))
        entry.rdev = (major_n, minor_n)
    return entry, stored, sparse, realsize


def _old_gnu_sparse(block: bytes, cursor: TarStream, where: str):
    """The map of an old GNU 'S' member: 4 pairs in the header, then 21 per
    extension block while the "isextended" flag is set."""
    def pairs(buf: bytes, start: int, count: int) -> list[tuple[int, int]]:
        out = []
        for i in range(count):
            off_f, len_f = L.GNU_SPARSE_ENTRY.unpack_from(buf, start + i * 24)
            if off_f[:1] == b"\x00":
                break
            try:
                out.append((L.parse_number(off_f), L.parse_number(len_f)))
            except ValueError:
                raise CorruptError(f"{where}: bad old GNU sparse map entry") from None
        return out

    sparse = pairs(block, L.GNU_SPARSE_OFFSET, L.GNU_SPARSE_HEADER_ENTRIES)
    try:
        realsize = L.parse_number(L.GNU_REALSIZE.unpack_from(block, L.GNU_REALSIZE_OFFSET)[0])
    except ValueError:
        raise CorruptError(f"{where}: bad old GNU sparse real size") from None
    extended = block[L.GNU_ISEXTENDED_OFFSET]
    while extended:
        ext = _read_exact(cursor, L.BLOCK, where, "old GNU sparse map")
        sparse += pairs(ext, 0, L.GNU_SPARSE_EXT_ENTRIES)
        if len(sparse) > MAX_SPARSE_ENTRIES:
            raise CorruptError(f"{where}: GNU sparse map is too large")
        extended = ext[L.GNU_SPARSE_EXT_ISEXTENDED]
    return sparse, realsize


def _read_sparse_1_0(cursor: TarStream, where: str, stored: int):
    """PAX sparse 1.0: the map leads the member data as decimal lines (the
    count, then offset/length pairs), padded to a block."""
    text = b""
    numbers: list[int] = []
    want: int | None = None
    consumed = 0
    while want is None or len(numbers) < want:
        if consumed + L.BLOCK > stored:
            raise CorruptError(f"{where}: GNU sparse 1.0 map runs past the member data")
        text += _read_exact(cursor, L.BLOCK, where, "GNU sparse 1.0 map")
        consumed += L.BLOCK
        *lines, text = text.split(b"\n")
        for line in lines:
            try:
                numbers.append(int(line))
            except ValueError:
                raise CorruptError(f"{where}: bad number in GNU sparse 1.0 map") from None
            if want is None:
                if numbers[0] < 0 or numbers[0] > MAX_SPARSE_ENTRIES:
                    raise CorruptError(f"{where}: GNU sparse map has {numbers[0]} entries")
                want = 1 + 2 * numbers[0]
                if len(numbers) > want:
                    break
        if want is not None and len(numbers) > want:
            raise CorruptError(f"{where}: GNU sparse 1.0 map has extra numbers")
    return _parse_sparse_map(numbers[1:], where), consumed


# --------------------------------------------------------------------------
# A whole archive as a Tree


def read_tree(path: str | os.PathLike, compression: str | None = None) -> Tree:
    """Every member merged into a Tree: later members replace earlier ones,
    hardlinks share their target's metadata and data."""
    tree = Tree()
    for entry in iter_entries(path, compression):
        if entry.link is not None:
            if entry.link not in tree:
                raise CorruptError(f"{os.fspath(path)}: {entry.path!r} is a hardlink to "
                                   f"{entry.link!r}, which is not in the archive before it")
            target = tree.resolve(tree.get(entry.link))
            if target.kind is Kind.DIR:
                raise CorruptError(f"{os.fspath(path)}: {entry.path!r} is a hardlink to the "
                                   f"directory {entry.link!r}")
            if target.path == entry.path:
                continue  # a link to itself changes nothing
            entry = Entry(entry.path, target.kind, mode=target.mode, uid=target.uid,
                          gid=target.gid, mtime_ns=target.mtime_ns, atime_ns=target.atime_ns,
                          ctime_ns=target.ctime_ns, size=target.size, target=target.target,
                          rdev=target.rdev, link=target.path, xattrs=target.xattrs,
                          data=target.data)
        try:
            tree.add(entry)
        except CorruptError as e:
            raise CorruptError(f"{os.fspath(path)}: {e}") from None
    return tree
