"""Read a SquashFS 4.0 image into a Tree (volume -> tree).

Every table offset, count, size and reference comes from a possibly hostile
image, so each is checked against ``bytes_used`` and the table it points into
before use; any failure is one CorruptError naming the table, inode or
offset. Metadata is read eagerly (the whole tree is built up front); file
contents stay in the image and are decompressed block by block when read
(``conv_squashfs.filedata``).

A small dissect-style API sits beside ``decode``::

    fs = SquashFS(volume)
    fs.get("/etc/hostname").open().read()
"""

from __future__ import annotations

import io
import os
from array import array
from dataclasses import dataclass, field, replace

from conv_squashfs.decompress import Decompressor, decompressor_for, options_block_stored
from conv_squashfs.filedata import FragmentCache, SquashFileData
from conv_squashfs.layout import (
    COMPRESSOR_NAMES,
    DATA_SIZE_MASK,
    DATA_UNCOMPRESSED,
    DEV_INODE,
    DIR_ENTRIES_MAX,
    DIR_ENTRY,
    DIR_HEADER,
    DIR_INODE,
    EXTENDED_OFFSET,
    FILE_INODE,
    FLAG_COMPRESSOR_OPTIONS,
    FRAGMENT_ENTRY,
    ID_ENTRY,
    INODE_HEADER,
    INVALID_FRAGMENT,
    INVALID_TABLE,
    INVALID_XATTR,
    IPC_INODE,
    LDEV_INODE,
    LDIR_INODE,
    LFILE_INODE,
    LIPC_INODE,
    MAGIC,
    MAX_BLOCK_SIZE,
    METADATA_SIZE,
    MIN_BLOCK_SIZE,
    NAME_MAX,
    SUPERBLOCK,
    SUPERBLOCK_SIZE,
    SYMLINK_INODE,
    TABLE_INDEX_ENTRY,
    VERSION_MAJOR,
    VERSION_MINOR,
    XATTR_ENTRY,
    XATTR_ID,
    XATTR_ID_TABLE,
    XATTR_IDX,
    XATTR_OOL_REF,
    XATTR_PREFIX_MASK,
    XATTR_PREFIXES,
    XATTR_VALUE,
    XATTR_VALUE_OOL,
    decode_dev,
)
from conv_squashfs.metadata import (
    MAX_TABLE_BYTES,
    MetadataTable,
    read_indexed_table,
    read_metadata_block,
)
from convcore.blockdev import Volume
from convcore.errors import CorruptError, NotFoundError, UnsupportedError, UsageError
from convcore.tree import Entry, Kind, Tree, normpath

_BASIC_KIND = {1: Kind.DIR, 2: Kind.FILE, 3: Kind.SYMLINK, 4: Kind.BLOCK, 5: Kind.CHAR,
               6: Kind.FIFO, 7: Kind.SOCKET}

_FLAG_NAMES = {
    0x0001: "uncompressed-inodes", 0x0002: "uncompressed-data", 0x0004: "check",
    0x0008: "uncompressed-fragments", 0x0010: "no-fragments", 0x0020: "always-fragments",
    0x0040: "duplicates", 0x0080: "exportable", 0x0100: "uncompressed-xattrs",
    0x0200: "no-xattrs", 0x0400: "compressor-options", 0x0800: "uncompressed-ids",
}

#: the kernel refuses longer symlink targets (one page)
SYMLINK_MAX = 4096
#: Linux's XATTR_NAME_MAX and XATTR_SIZE_MAX
XATTR_NAME_MAX = 255
XATTR_VALUE_MAX = 65536
#: names in one xattr set, and their values' total size: far past any real
#: file, and small enough that out-of-line values shared by every name
#: cannot balloon memory
XATTR_SET_MAX = 65536
XATTR_SET_BYTES_MAX = 64 << 20
NS = 1_000_000_000


@dataclass(slots=True)
class Inode:
    """One decoded inode: what the tree needs, and where a directory's
    listing is."""

    number: int
    kind: Kind
    mode: int
    uid: int
    gid: int
    mtime: int
    xattr: int = INVALID_XATTR
    # directories
    listing_block: int = 0
    listing_offset: int = 0
    listing_size: int = 0
    # files, symlinks, devices
    size: int = 0
    data: SquashFileData | None = None
    target: str = ""
    rdev: tuple[int, int] = (0, 0)
    xattrs: dict[str, bytes] = field(default_factory=dict)


class SquashFS:
    """An open SquashFS image on a Volume: the superblock and lookup tables
    read and checked; inodes and directories decoded on demand."""

    def __init__(self, volume: Volume) -> None:
        self.volume = volume
        if volume.size < SUPERBLOCK_SIZE:
            raise CorruptError(f"not a squashfs image: {volume.size} bytes is smaller than "
                               f"a superblock")
        sb = SUPERBLOCK.read(volume.read_exact(SUPERBLOCK_SIZE, 0, "superblock"))
        self.sb = sb
        self._check_superblock()
        self.block_size: int = sb.block_size
        self.bytes_used: int = sb.bytes_used
        self.compression: str = COMPRESSOR_NAMES.get(sb.compression_id, "unknown")
        self.decompress: Decompressor = decompressor_for(
            sb.compression_id, self._compressor_options(), sb.block_size)
        self.ids = self._read_ids()
        self.fragments = self._read_fragments()
        self._xattr_ids, self._xattr_table = self._read_xattr_tables()
        self._xattr_cache: dict[int, dict[str, bytes]] = {}
        self.inodes = MetadataTable(volume, self.decompress, sb.inode_table_start,
                                    sb.directory_table_start, "inode table")
        self.directories = MetadataTable(volume, self.decompress, sb.directory_table_start,
                                         self._directory_table_end(), "directory table")

    # -- superblock and lookup tables
    def _check_superblock(self) -> None:
        sb = self.sb
        if sb.magic != MAGIC:
            raise CorruptError(f"not a squashfs image: bad magic {sb.magic:#010x}")
        if (sb.version_major, sb.version_minor) != (VERSION_MAJOR, VERSION_MINOR):
            raise UnsupportedError(f"squashfs version {sb.version_major}.{sb.version_minor} "
                                   f"is not supported (only 4.0)")
        bs = sb.block_size
        if not (MIN_BLOCK_SIZE <= bs <= MAX_BLOCK_SIZE) or bs & (bs - 1) \
                or 1 << sb.block_log != bs:
            raise CorruptError(f"superblock: bad block size {bs} (log {sb.block_log})")
        if sb.bytes_used > self.volume.size:
            raise CorruptError(f"squashfs image is truncated: superblock says {sb.bytes_used} "
                               f"bytes, the volume has {self.volume.size}")
        if sb.bytes_used < SUPERBLOCK_SIZE:
            raise CorruptError(f"superblock: bytes_used {sb.bytes_used} is too small")
        if sb.id_count == 0:
            raise CorruptError("superblock: the id table is empty")
        if sb.inode_count == 0:
            raise CorruptError("superblock: the inode count is zero")
        end = sb.bytes_used
        for name in ("inode_table_start", "directory_table_start", "id_table_start"):
            value = getattr(sb, name)
            if not SUPERBLOCK_SIZE <= value < end:
                raise CorruptError(f"superblock: {name} {value} lies outside the "
                                   f"{end}-byte filesystem")
        for name in ("fragment_table_start", "xattr_id_table_start", "export_table_start"):
            value = getattr(sb, name)
            if value != INVALID_TABLE and not SUPERBLOCK_SIZE <= value <= end:
                raise CorruptError(f"superblock: {name} {value} lies outside the "
                                   f"{end}-byte filesystem")
        if sb.inode_table_start >= sb.directory_table_start:
            raise CorruptError(f"superblock: inode table {sb.inode_table_start} does not come "
                               f"before the directory table {sb.directory_table_start}")
        if sb.root_inode_ref >> 16 >= sb.directory_table_start - sb.inode_table_start:
            raise CorruptError(f"superblock: root inode reference {sb.root_inode_ref:#x} lies "
                               f"outside the inode table")

    def _read_ids(self) -> list[int]:
        sb = self.sb
        raw = read_indexed_table(self.volume, self.decompress, sb.id_table_start, sb.id_count,
                                 ID_ENTRY.size, sb.bytes_used, "id table")
        return [v for (v,) in ID_ENTRY.iter_unpack(raw)]

    def _read_fragments(self) -> FragmentCache | None:
        sb = self.sb
        if sb.fragment_count == 0:
            return None
        if sb.fragment_table_start == INVALID_TABLE:
            raise CorruptError(f"superblock: {sb.fragment_count} fragments but no fragment table")
        raw = read_indexed_table(self.volume, self.decompress, sb.fragment_table_start,
                                 sb.fragment_count, FRAGMENT_ENTRY.size, sb.bytes_used,
                                 "fragment table")
        entries = [(start, size) for start, size, _ in FRAGMENT_ENTRY.iter_unpack(raw)]
        return FragmentCache(self.volume, self.decompress, sb.block_size, entries, sb.bytes_used)

    def _read_xattr_tables(self) -> tuple[list[tuple[int, int, int]], MetadataTable | None]:
        sb = self.sb
        if sb.xattr_id_table_start == INVALID_TABLE:
            return [], None
        start = sb.xattr_id_table_start
        header = XATTR_ID_TABLE.read(
            self.volume.read_exact(XATTR_ID_TABLE.size, start, "xattr id table header"))
        if header.xattr_table_start >= start:
            raise CorruptError(f"xattr id table: key/value table start "
                               f"{header.xattr_table_start} does not come before {start}")
        raw = read_indexed_table(self.volume, self.decompress, start + XATTR_ID_TABLE.size,
                                 header.xattr_ids, XATTR_ID.size, sb.bytes_used, "xattr id table")
        ids = list(XATTR_ID.iter_unpack(raw))
        table = MetadataTable(self.volume, self.decompress, header.xattr_table_start, start,
                              "xattr table")
        return ids, table

    def _directory_table_end(self) -> int:
        """Where the directory table stops: the next thing mksquashfs puts
        after it (the blocks of the fragment, export, id or xattr tables)."""
        sb = self.sb
        ends = [sb.bytes_used, sb.id_table_start, sb.fragment_table_start,
                sb.export_table_start, sb.xattr_id_table_start]
        if self._xattr_table is not None:
            ends.append(self._xattr_table.start)
        # An index only lists blocks when its table has entries.
        indexes = [sb.id_table_start, sb.export_table_start]
        if sb.fragment_count:
            indexes.append(sb.fragment_table_start)
        for index_start in indexes:
            if index_start != INVALID_TABLE and index_start + 8 <= sb.bytes_used:
                (first,) = TABLE_INDEX_ENTRY.unpack(
                    self.volume.read_exact(8, index_start, "table index"))
                ends.append(first)
        return min(e for e in ends if e > sb.directory_table_start)

    @property
    def info(self) -> dict:
        sb = self.sb
        info = {
            "compression": self.compression,
            "block_size": sb.block_size,
            "inodes": sb.inode_count,
            "bytes_used": sb.bytes_used,
            "flags": " ".join(name for bit, name in _FLAG_NAMES.items() if sb.flags & bit),
            "mkfs_time": sb.mkfs_time,
            "fragments": sb.fragment_count,
            "ids": sb.id_count,
        }
        options = self._compressor_options()
        if options is not None:
            info["compressor_options"] = options.hex()
        return info

    def _compressor_options(self) -> bytes | None:
        if not self.sb.flags & FLAG_COMPRESSOR_OPTIONS:
            return None
        payload, _ = read_metadata_block(self.volume, options_block_stored, SUPERBLOCK_SIZE,
                                         self.sb.bytes_used, "compressor options block")
        return payload

    # -- ids and xattrs
    def _id(self, index: int, what: str) -> int:
        if index >= len(self.ids):
            raise CorruptError(f"{what}: id index {index} is past the {len(self.ids)}-entry "
                               f"id table")
        return self.ids[index]

    def xattrs(self, index: int, what: str) -> dict[str, bytes]:
        """The xattr set at ``index`` of the xattr id table (shared by inodes)."""
        if index == INVALID_XATTR:
            return {}
        cached = self._xattr_cache.get(index)
        if cached is not None:
            return dict(cached)
        table = self._xattr_table
        if table is None or index >= len(self._xattr_ids):
            raise CorruptError(f"{what}: xattr index {index} is past the "
                               f"{len(self._xattr_ids)}-entry xattr id table")
        ref, count, _ = self._xattr_ids[index]
        where = f"{what} xattr set {index}"
        if count > XATTR_SET_MAX:
            raise CorruptError(f"{where}: {count} xattrs in one set")
        pos = table.locate_ref(ref, where)
        out: dict[str, bytes] = {}
        total = 0
        for _ in range(count):
            kind, name_size = table.unpack(XATTR_ENTRY, pos, where)
            pos += XATTR_ENTRY.size
            prefix = XATTR_PREFIXES.get(kind & XATTR_PREFIX_MASK)
            if prefix is None or kind & ~(XATTR_PREFIX_MASK | XATTR_VALUE_OOL):
                raise CorruptError(f"{where}: unknown xattr type {kind:#x}")
            if name_size + len(prefix) > XATTR_NAME_MAX:
                raise CorruptError(f"{where}: xattr name of {name_size} bytes is too long")
            name = prefix + os.fsdecode(table.bytes(pos, name_size, where))
            pos += name_size
            (vsize,) = table.unpack(XATTR_VALUE, pos, where)
            pos += XATTR_VALUE.size
            if kind & XATTR_VALUE_OOL:
                if vsize != XATTR_OOL_REF.size:
                    raise CorruptError(f"{where}: out-of-line value reference of {vsize} bytes")
                (value_ref,) = table.unpack(XATTR_OOL_REF, pos, where)
                pos += vsize
                value = self._xattr_value(value_ref, where)
            else:
                if vsize > XATTR_VALUE_MAX:
                    raise CorruptError(f"{where}: xattr {name} value of {vsize} bytes is too big")
                value = table.bytes(pos, vsize, where)
                pos += vsize
            total += len(value)
            if total > XATTR_SET_BYTES_MAX:
                raise CorruptError(f"{where}: xattr values add up to more than "
                                   f"{XATTR_SET_BYTES_MAX} bytes")
            out[name] = value
        self._xattr_cache[index] = out
        return dict(out)

    def _xattr_value(self, ref: int, where: str) -> bytes:
        table = self._xattr_table
        assert table is not None
        pos = table.locate_ref(ref, where)
        (vsize,) = table.unpack(XATTR_VALUE, pos, where)
        if vsize > XATTR_VALUE_MAX:
            raise CorruptError(f"{where}: out-of-line xattr value of {vsize} bytes is too big")
        return table.bytes(pos + XATTR_VALUE.size, vsize, where)

    # -- inodes
    def inode(self, ref: int, what: str = "") -> Inode:
        """Decode the inode at a 48-bit reference into the inode table."""
        table = self.inodes
        where = what or f"inode at {ref >> 16}:{ref & 0xFFFF}"
        pos = table.locate_ref(ref, where)
        itype, perms, uid_idx, gid_idx, mtime, number = table.unpack(INODE_HEADER, pos, where)
        pos += INODE_HEADER.size
        if not 1 <= number <= self.sb.inode_count:
            raise CorruptError(f"{where}: inode number {number} is outside 1.."
                               f"{self.sb.inode_count}")
        where = f"inode {number}" + (f" ({what})" if what else "")
        basic = itype - EXTENDED_OFFSET if itype > EXTENDED_OFFSET else itype
        kind = _BASIC_KIND.get(basic)
        if kind is None or itype > 2 * EXTENDED_OFFSET:
            raise CorruptError(f"{where}: unknown inode type {itype}")
        extended = itype > EXTENDED_OFFSET
        inode = Inode(number, kind, perms & 0o7777, self._id(uid_idx, where),
                      self._id(gid_idx, where), mtime)

        if kind is Kind.DIR:
            if extended:
                _, size, block, _, _, offset, inode.xattr = table.unpack(LDIR_INODE, pos, where)
            else:
                block, _, size, offset, _ = table.unpack(DIR_INODE, pos, where)
            if size < 3:
                raise CorruptError(f"{where}: directory size {size} is below 3")
            inode.listing_block, inode.listing_offset, inode.listing_size = block, offset, size - 3
        elif kind is Kind.FILE:
            self._read_file(inode, extended, pos, where)
        elif kind is Kind.SYMLINK:
            _, length = table.unpack(SYMLINK_INODE, pos, where)
            pos += SYMLINK_INODE.size
            if length > SYMLINK_MAX:
                raise CorruptError(f"{where}: symlink target of {length} bytes is too long")
            inode.target = os.fsdecode(table.bytes(pos, length, where))
            inode.size = length
            if extended:
                (inode.xattr,) = table.unpack(XATTR_IDX, pos + length, where)
        elif kind in (Kind.CHAR, Kind.BLOCK):
            if extended:
                _, rdev, inode.xattr = table.unpack(LDEV_INODE, pos, where)
            else:
                _, rdev = table.unpack(DEV_INODE, pos, where)
            inode.rdev = decode_dev(rdev)
        elif extended:
            _, inode.xattr = table.unpack(LIPC_INODE, pos, where)
        else:
            table.unpack(IPC_INODE, pos, where)
        if inode.xattr != INVALID_XATTR:
            inode.xattrs = self.xattrs(inode.xattr, where)
        return inode

    def _read_file(self, inode: Inode, extended: bool, pos: int, where: str) -> None:
        table = self.inodes
        if extended:
            start, size, _, _, fragment, frag_offset, inode.xattr = table.unpack(
                LFILE_INODE, pos, where)
            pos += LFILE_INODE.size
        else:
            start, fragment, frag_offset, size = table.unpack(FILE_INODE, pos, where)
            pos += FILE_INODE.size
        bs = self.block_size
        has_fragment = fragment != INVALID_FRAGMENT
        nblocks = size // bs if has_fragment else -(-size // bs)
        if nblocks * 4 > MAX_TABLE_BYTES:
            raise CorruptError(f"{where}: file size {size} needs an impossible block list")
        if has_fragment:
            if self.fragments is None or fragment >= len(self.fragments.entries):
                raise CorruptError(f"{where}: fragment index {fragment} is past the "
                                   f"{self.sb.fragment_count}-entry fragment table")
            tail = size - nblocks * bs
            if tail == 0 or frag_offset + tail > bs:
                raise CorruptError(f"{where}: tail of {tail} bytes at fragment offset "
                                   f"{frag_offset} does not fit a {bs}-byte block")
        table.need(pos, nblocks * 4, f"{where} block list")
        blocks = array("I", table.buf[pos : pos + nblocks * 4])
        if nblocks and self._bad_blocks(blocks, start):
            raise CorruptError(f"{where}: block list ({nblocks} blocks from offset {start}) "
                               f"does not fit the {self.bytes_used}-byte filesystem")
        inode.size = size
        inode.data = SquashFileData(
            self.volume, self.decompress, bs, inode.number, size, start, blocks,
            self.fragments if has_fragment else None,
            fragment if has_fragment else -1, frag_offset)

    def _bad_blocks(self, blocks: array, start: int) -> bool:
        """A block list is sane when every word is a length up to the block
        size (plus the stored-raw bit) and the blocks end inside the image."""
        total = 0
        bs = self.block_size
        for word in blocks:
            length = word & DATA_SIZE_MASK
            if word & ~(DATA_UNCOMPRESSED | DATA_SIZE_MASK) or length > bs:
                return True
            total += length
        return start + total > self.bytes_used

    # -- directories
    def listing(self, inode: Inode, what: str) -> list[tuple[str, int, Kind, int]]:
        """(name, inode reference, kind, inode number) of a directory's entries."""
        out: list[tuple[str, int, Kind, int]] = []
        size = inode.listing_size
        if size == 0:
            return out
        table = self.directories
        where = f"directory {what or '/'} (inode {inode.number})"
        pos = table.locate(inode.listing_block, inode.listing_offset, where)
        end = pos + size
        table.need(pos, size, where)
        buf = table.buf
        seen: set[str] = set()
        while pos < end:
            if pos + DIR_HEADER.size > end:
                raise CorruptError(f"{where}: listing ends inside a header")
            count, start_block, base = DIR_HEADER.unpack_from(buf, pos)
            pos += DIR_HEADER.size
            if count >= DIR_ENTRIES_MAX:
                raise CorruptError(f"{where}: header claims {count + 1} entries (at most "
                                   f"{DIR_ENTRIES_MAX})")
            for _ in range(count + 1):
                if pos + DIR_ENTRY.size > end:
                    raise CorruptError(f"{where}: listing ends inside an entry")
                offset, delta, itype, name_size = DIR_ENTRY.unpack_from(buf, pos)
                pos += DIR_ENTRY.size
                name_size += 1
                if name_size > NAME_MAX or pos + name_size > end:
                    raise CorruptError(f"{where}: entry name of {name_size} bytes runs past "
                                       f"the listing")
                raw = bytes(buf[pos : pos + name_size])
                pos += name_size
                kind = _BASIC_KIND.get(itype)
                if kind is None:
                    raise CorruptError(f"{where}: entry {raw!r} has unknown type {itype}")
                if b"/" in raw or b"\0" in raw or raw in (b".", b".."):
                    raise CorruptError(f"{where}: bad entry name {raw!r}")
                name = os.fsdecode(raw)
                if name in seen:
                    raise CorruptError(f"{where}: entry {name!r} appears twice")
                seen.add(name)
                if offset >= METADATA_SIZE:
                    raise CorruptError(f"{where}: entry {name!r} has inode offset {offset}")
                out.append((name, start_block << 16 | offset, kind, base + delta))
        return out

    # -- the tree
    def tree(self) -> Tree:
        """Every entry with its metadata; file contents lazy."""
        root = self.inode(self.sb.root_inode_ref, "root directory")
        if root.kind is not Kind.DIR:
            raise CorruptError(f"root inode {root.number} is a {root.kind.name.lower()}, "
                               f"not a directory")
        tree = Tree(_entry("", root))
        tree.info = self.info
        visited_dirs = {root.number}
        first_name: dict[int, str] = {}  # non-directory inode number -> its first path
        # Depth-first, children in listing order: the order Tree iterates, so
        # the first name of a hardlinked inode is the one a consumer meets first.
        stack = [("", iter(self.listing(root, "")))]
        while stack:
            parent, children = stack[-1]
            item = next(children, None)
            if item is None:
                stack.pop()
                continue
            name, ref, kind, number = item
            path = f"{parent}/{name}" if parent else name
            if kind is not Kind.DIR and number in first_name:
                first = tree.get(first_name[number])
                if first.kind is not kind:
                    raise CorruptError(f"/{path}: inode {number} is a {kind.name.lower()} here "
                                       f"but a {first.kind.name.lower()} at /{first.path}")
                tree.add(replace(first, path=path, link=first.path, data=None,
                                 xattrs=dict(first.xattrs)))
                continue
            inode = self.inode(ref, "/" + path)
            if inode.number != number or inode.kind is not kind:
                raise CorruptError(f"/{path}: directory entry says inode {number} "
                                   f"({kind.name.lower()}) but the inode is {inode.number} "
                                   f"({inode.kind.name.lower()})")
            tree.add(_entry(path, inode))
            if kind is Kind.DIR:
                if number in visited_dirs:
                    raise CorruptError(f"directory loop: /{path} is inode {number}, reached "
                                       f"twice")
                visited_dirs.add(number)
                stack.append((path, iter(self.listing(inode, path))))
            else:
                first_name[number] = path
        return tree

    # -- dissect-style access
    def get(self, path: str) -> Node:
        """The entry at ``path`` (``/`` separated), found by walking listings."""
        inode = self.inode(self.sb.root_inode_ref, "root directory")
        parts = normpath(path).split("/") if normpath(path) else []
        walked = ""
        for part in parts:
            if inode.kind is not Kind.DIR:
                raise NotFoundError(f"/{walked} is not a directory")
            for name, ref, _, _ in self.listing(inode, walked):
                if name == part:
                    walked = f"{walked}/{name}" if walked else name
                    inode = self.inode(ref, "/" + walked)
                    break
            else:
                raise NotFoundError(f"no such file in the squashfs image: /{normpath(path)}")
        return Node(self, walked, inode)


@dataclass
class Node:
    """An inode found by path (``SquashFS.get``)."""

    fs: SquashFS
    path: str
    inode: Inode

    def is_dir(self) -> bool:
        return self.inode.kind is Kind.DIR

    def open(self) -> io.BufferedReader:
        if self.inode.data is None:
            raise UsageError(f"/{self.path} is a {self.inode.kind.name.lower()}, not a file")
        return self.inode.data.open()

    def listdir(self) -> list[str]:
        if not self.is_dir():
            raise UsageError(f"/{self.path} is not a directory")
        return [name for name, _, _, _ in self.fs.listing(self.inode, self.path)]

    def readlink(self) -> str:
        if self.inode.kind is not Kind.SYMLINK:
            raise UsageError(f"/{self.path} is not a symlink")
        return self.inode.target


def _entry(path: str, inode: Inode) -> Entry:
    ns = inode.mtime * NS
    return Entry(path, inode.kind, mode=inode.mode, uid=inode.uid, gid=inode.gid,
                 mtime_ns=ns, atime_ns=ns, ctime_ns=ns, size=inode.size, target=inode.target,
                 rdev=inode.rdev, xattrs=inode.xattrs, data=inode.data)


def decode(volume: Volume, opts: dict, ctx) -> Tree:
    """The decode direction of the squashfs format: volume -> tree."""
    return SquashFS(volume).tree()
