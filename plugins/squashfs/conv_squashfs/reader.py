"""Read a SquashFS 4.0 image into a Tree (volume -> tree).

Every table offset, count, size and reference comes from a possibly hostile
image, so each is checked against ``bytes_used`` and the table it points into
before use; any failure is one CorruptError naming the table, inode or
offset. Metadata is read eagerly (the whole tree is built up front); file
contents stay in the image and are decompressed block by block when read.

The pieces: ``metadata_reader`` (metadata blocks and lookup tables),
``inode_reader``, ``directory_reader``, ``xattr_reader``, ``filedata`` (lazy
file contents, fragments) and ``prefetch`` (image-order read-ahead on the
decompression pool); this module checks the superblock, wires the tables
together and walks the directories into a Tree.

A small dissect-style API sits beside ``decode``::

    fs = SquashFS(volume)
    fs.get("/etc/hostname").open().read()
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace

from conv_squashfs.decompress import Decompressor, decompressor_for, options_block_stored
from conv_squashfs.directory_reader import DirEntry, read_listing
from conv_squashfs.filedata import FragmentCache, decompress_pool
from conv_squashfs.inode_reader import Inode, InodeReader
from conv_squashfs.layout import (
    COMPRESSOR_NAMES,
    FLAG_COMPRESSOR_OPTIONS,
    FRAGMENT_ENTRY,
    ID_ENTRY,
    INVALID_TABLE,
    MAGIC,
    MAX_BLOCK_SIZE,
    MIN_BLOCK_SIZE,
    SUPERBLOCK,
    SUPERBLOCK_SIZE,
    TABLE_INDEX_ENTRY,
    VERSION_MAJOR,
    VERSION_MINOR,
)
from conv_squashfs.metadata_reader import MetadataTable, read_indexed_table, read_metadata_block
from conv_squashfs.prefetch import Prefetcher
from conv_squashfs.xattr_reader import XattrReader
from convcore.blockdev import Volume
from convcore.errors import CorruptError, NotFoundError, UnsupportedError, UsageError
from convcore.tree import Entry, Kind, Tree, normpath

_FLAG_NAMES = {
    0x0001: "uncompressed-inodes", 0x0002: "uncompressed-data", 0x0004: "check",
    0x0008: "uncompressed-fragments", 0x0010: "no-fragments", 0x0020: "always-fragments",
    0x0040: "duplicates", 0x0080: "exportable", 0x0100: "uncompressed-xattrs",
    0x0200: "no-xattrs", 0x0400: "compressor-options", 0x0800: "uncompressed-ids",
}

NS = 1_000_000_000


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
        self.prefetcher = Prefetcher(volume, self.decompress, sb.block_size, decompress_pool)
        self.fragments = self._read_fragments()
        self.xattrs: XattrReader | None = None
        if sb.xattr_id_table_start != INVALID_TABLE:
            self.xattrs = XattrReader(volume, self.decompress, sb.xattr_id_table_start,
                                      sb.bytes_used)
        #: the inode and directory tables, decoded as far as references reach
        self.inodes = MetadataTable(volume, self.decompress, sb.inode_table_start,
                                    sb.directory_table_start, "inode table")
        self.directories = MetadataTable(volume, self.decompress, sb.directory_table_start,
                                         self._directory_table_end(), "directory table")
        self._inode_reader = InodeReader(self.inodes, volume, self.decompress, sb.block_size,
                                         sb.bytes_used, sb.inode_count, self.ids, self.xattrs,
                                         self.fragments, self.prefetcher)

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
        return FragmentCache(self.volume, self.decompress, sb.block_size, entries, sb.bytes_used,
                             self.prefetcher)

    def _directory_table_end(self) -> int:
        """Where the directory table stops: the next thing mksquashfs puts
        after it (the blocks of the fragment, export, id or xattr tables)."""
        sb = self.sb
        ends = [sb.bytes_used, sb.id_table_start, sb.fragment_table_start,
                sb.export_table_start, sb.xattr_id_table_start]
        if self.xattrs is not None:
            ends.append(self.xattrs.table.start)
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

    # -- inodes and directories
    def inode(self, ref: int, what: str = "") -> Inode:
        """The inode at a 48-bit reference into the inode table."""
        return self._inode_reader.read(ref, what)

    def listing(self, inode: Inode, what: str) -> list[DirEntry]:
        """(name, inode reference, kind, inode number) of a directory's entries."""
        return read_listing(self.directories, inode, what)

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
