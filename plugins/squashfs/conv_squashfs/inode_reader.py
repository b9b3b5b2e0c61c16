"""Inodes: a common header (type, permissions, uid/gid indexes, mtime,
number) and a body per type; basic and extended (xattrs, nlink, 64-bit
sizes) forms. Files get a lazy ``SquashFileData`` over their block list."""

from __future__ import annotations

import os
import sys
from array import array
from dataclasses import dataclass, field

from conv_squashfs.decompress import Decompressor
from conv_squashfs.filedata import FragmentCache, SquashFileData
from conv_squashfs.layout import (
    DATA_SIZE_MASK,
    DATA_UNCOMPRESSED,
    DEV_INODE,
    DIR_INODE,
    EXTENDED_OFFSET,
    FILE_INODE,
    INODE_HEADER,
    INVALID_FRAGMENT,
    INVALID_XATTR,
    IPC_INODE,
    LDEV_INODE,
    LDIR_INODE,
    LFILE_INODE,
    LIPC_INODE,
    SYMLINK_INODE,
    XATTR_IDX,
    decode_dev,
)
from conv_squashfs.metadata_reader import MAX_TABLE_BYTES, MetadataTable
from conv_squashfs.prefetch import Prefetcher
from conv_squashfs.xattr_reader import XattrReader
from convcore.blockdev import Volume
from convcore.errors import CorruptError
from convcore.tree import Kind

#: basic inode type (also the type in directory entries) -> kind
BASIC_KIND = {1: Kind.DIR, 2: Kind.FILE, 3: Kind.SYMLINK, 4: Kind.BLOCK, 5: Kind.CHAR,
              6: Kind.FIFO, 7: Kind.SOCKET}

#: the kernel refuses longer symlink targets (one page)
SYMLINK_MAX = 4096


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


class InodeReader:
    """Decodes inodes from the inode table, checking every index and size
    against the tables it points into."""

    def __init__(self, table: MetadataTable, volume: Volume, decompress: Decompressor,
                 block_size: int, bytes_used: int, inode_count: int, ids: list[int],
                 xattrs: XattrReader | None, fragments: FragmentCache | None,
                 prefetcher: Prefetcher | None = None) -> None:
        self.table = table
        self.volume = volume
        self.decompress = decompress
        self.block_size = block_size
        self.bytes_used = bytes_used
        self.inode_count = inode_count
        self.ids = ids
        self.xattrs = xattrs
        self.fragments = fragments
        self.prefetcher = prefetcher

    def read(self, ref: int, what: str = "") -> Inode:
        """The inode at a 48-bit reference (block << 16 | offset)."""
        table = self.table
        where = what or f"inode at {ref >> 16}:{ref & 0xFFFF}"
        pos = table.locate_ref(ref, where)
        itype, perms, uid_idx, gid_idx, mtime, number = table.unpack(INODE_HEADER, pos, where)
        pos += INODE_HEADER.size
        if not 1 <= number <= self.inode_count:
            raise CorruptError(f"{where}: inode number {number} is outside 1..{self.inode_count}")
        where = f"inode {number}" + (f" ({what})" if what else "")
        extended = itype > EXTENDED_OFFSET
        kind = BASIC_KIND.get(itype - EXTENDED_OFFSET if extended else itype)
        if kind is None or itype > 2 * EXTENDED_OFFSET:
            raise CorruptError(f"{where}: unknown inode type {itype}")
        inode = Inode(number, kind, perms & 0o7777, self._id(uid_idx, where),
                      self._id(gid_idx, where), mtime)

        if kind is Kind.DIR:
            if extended:
                _, size, block, _, _, offset, inode.xattr = table.unpack(LDIR_INODE, pos, where)
            else:
                block, _, size, offset, _ = table.unpack(DIR_INODE, pos, where)
            if size < 3:  # the size counts "." and ".." as 3 bytes
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
            if self.xattrs is None:
                raise CorruptError(f"{where}: xattr index {inode.xattr} but the image has no "
                                   f"xattr table")
            inode.xattrs = self.xattrs.get(inode.xattr, where)
        return inode

    def _id(self, index: int, what: str) -> int:
        if index >= len(self.ids):
            raise CorruptError(f"{what}: id index {index} is past the {len(self.ids)}-entry "
                               f"id table")
        return self.ids[index]

    def _read_file(self, inode: Inode, extended: bool, pos: int, where: str) -> None:
        table = self.table
        if extended:
            start, size, _, _, fragment, frag_offset, inode.xattr = table.unpack(
                LFILE_INODE, pos, where)
            pos += LFILE_INODE.size
        else:
            start, fragment, frag_offset, size = table.unpack(FILE_INODE, pos, where)
            pos += FILE_INODE.size
        bs = self.block_size
        has_fragment = fragment != INVALID_FRAGMENT
        # Full blocks, plus the last partial one unless a fragment holds it.
        nblocks = size // bs if has_fragment else -(-size // bs)
        if nblocks * 4 > MAX_TABLE_BYTES:
            raise CorruptError(f"{where}: file size {size} needs an impossible block list")
        fragments = self.fragments
        if has_fragment:
            if fragments is None or fragment >= len(fragments.entries):
                count = len(fragments.entries) if fragments is not None else 0
                raise CorruptError(f"{where}: fragment index {fragment} is past the "
                                   f"{count}-entry fragment table")
            tail = size - nblocks * bs
            if tail == 0 or frag_offset + tail > bs:
                raise CorruptError(f"{where}: tail of {tail} bytes at fragment offset "
                                   f"{frag_offset} does not fit a {bs}-byte block")
        table.need(pos, nblocks * 4, f"{where} block list")
        blocks = array("I", table.buf[pos : pos + nblocks * 4])
        if sys.byteorder == "big":
            blocks.byteswap()
        if nblocks and self._bad_blocks(blocks, start):
            raise CorruptError(f"{where}: block list ({nblocks} blocks from offset {start}) "
                               f"does not fit the {self.bytes_used}-byte filesystem")
        inode.size = size
        inode.data = SquashFileData(
            self.volume, self.decompress, bs, inode.number, size, start, blocks,
            fragments if has_fragment else None,
            fragment if has_fragment else -1, frag_offset, self.prefetcher)

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
