"""One inode: metadata, checksum, data mapping, symlink target, device
numbers, directory entries and extended attributes."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from functools import cached_property
from typing import TYPE_CHECKING

from conv_ext4 import layout as L
from conv_ext4 import xattrs as X
from conv_ext4.blockmap import Segments, extent_segments, indirect_segments
from conv_ext4.csum import crc32c_raw
from conv_ext4.dirents import parse_block, parse_entries
from convcore.errors import CorruptError, UnsupportedError, UsageError
from convcore.tree import BytesData, Data, Entry, Kind, SegmentData

if TYPE_CHECKING:
    from conv_ext4.filesystem import Ext4

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_DEV = struct.Struct("<II")

#: a symlink target is at most one block, and never more than PATH_MAX.
SYMLINK_MAX = 4096
_NS = 1_000_000_000

_INODE_STRUCT = L.INODE.struct
#: where each extra field ends: it is present when 128 + i_extra_isize reaches it.
_EXTRA_END = {key: L.INODE.offsets[field] + 4 for key, field in (
    ("ctime", "i_ctime_extra"), ("mtime", "i_mtime_extra"), ("atime", "i_atime_extra"),
    ("crtime", "i_crtime"), ("crtime_extra", "i_crtime_extra"))}


def _time_ns(seconds: int, extra: int | None) -> int:
    """An inode time: signed 32-bit seconds, widened by the two epoch bits of
    the extra field, plus its nanoseconds."""
    sec = seconds - (1 << 32) if seconds & 0x80000000 else seconds
    if extra is None:
        return sec * _NS
    sec += (extra & 3) << 32
    return sec * _NS + min(extra >> 2, _NS - 1)


class INode:
    """One inode: metadata parsed eagerly, data and xattrs on request."""

    def __init__(self, fs: Ext4, ino: int, raw: bytes) -> None:
        self.fs = fs
        self.ino = ino
        padded = raw if len(raw) >= _INODE_STRUCT.size else raw + bytes(_INODE_STRUCT.size)
        (mode, uid, size_lo, atime, ctime, mtime, _dtime, gid, links, blocks_lo, flags, _v,
         i_block, generation, acl_lo, size_hi, _faddr, blocks_hi, acl_hi, uid_hi, gid_hi,
         csum_lo, _r, extra_isize, _csum_hi, ctime_x, mtime_x, atime_x, crtime, crtime_x,
         _version_hi, _projid) = _INODE_STRUCT.unpack_from(padded, 0)
        if mode == 0 or links == 0:
            raise CorruptError(f"inode {ino} is not in use (mode {mode:#o}, {links} links)")
        if fs.inode_size == L.INODE_BASE_SIZE:
            extra_isize = 0
        elif extra_isize > fs.inode_size - L.INODE_BASE_SIZE or extra_isize % 4:
            raise CorruptError(f"inode {ino}: i_extra_isize {extra_isize} is invalid")
        self.raw = raw
        self.extra_isize = extra_isize
        self.generation = generation
        self.csum_seed = fs.inode_seed(ino, generation) if fs.metadata_csum and fs.verify \
            else None
        if self.csum_seed is not None:
            self._check_csum(csum_lo)
        try:
            self.kind = Kind.from_mode(mode)
        except CorruptError:
            raise CorruptError(f"inode {ino}: unknown file type in mode {mode:#o}") from None
        self.mode = mode & 0o7777
        self.uid = uid | uid_hi << 16
        self.gid = gid | gid_hi << 16
        self.links = links
        self.flags = flags
        self.size = size_lo | size_hi << 32
        if self.size > fs.max_file_size:
            raise CorruptError(f"inode {ino}: size {self.size} is beyond what ext4 can hold")
        self.i_block = i_block
        self.file_acl = acl_lo | acl_hi << 32
        blocks = blocks_lo | (blocks_hi << 32 if fs.huge_file else 0)
        self.blocks_512 = blocks * (fs.block_size // 512) if flags & L.HUGE_FILE_FL else blocks
        # An extra field counts only when i_extra_isize covers it.
        end = L.INODE_BASE_SIZE + extra_isize
        self.ctime_ns = _time_ns(ctime, ctime_x if end >= _EXTRA_END["ctime"] else None)
        self.mtime_ns = _time_ns(mtime, mtime_x if end >= _EXTRA_END["mtime"] else None)
        self.atime_ns = _time_ns(atime, atime_x if end >= _EXTRA_END["atime"] else None)
        self.crtime_ns = None if end < _EXTRA_END["crtime"] else _time_ns(
            crtime, crtime_x if end >= _EXTRA_END["crtime_extra"] else None)
        if flags & L.ENCRYPT_FL:
            raise UnsupportedError(f"inode {ino}: encrypted files are not supported")

    def __repr__(self) -> str:
        return f"<INode {self.ino} {self.kind.name.lower()} size={self.size}>"

    def _check_csum(self, stored_lo: int) -> None:
        buf = bytearray(self.raw)
        lo = L.INODE_CHECKSUM_LO_OFFSET
        hi = L.INODE_CHECKSUM_HI_OFFSET
        buf[lo:lo + 2] = b"\0\0"
        has_hi = self.extra_isize >= hi + 2 - L.INODE_BASE_SIZE
        stored = stored_lo
        if has_hi:
            stored |= _U16.unpack_from(self.raw, hi)[0] << 16
            buf[hi:hi + 2] = b"\0\0"
        crc = crc32c_raw(self.csum_seed, buf)
        if (crc if has_hi else crc & 0xFFFF) != stored:
            raise CorruptError(f"inode {self.ino}: checksum mismatch")

    def is_dir(self) -> bool:
        return self.kind is Kind.DIR

    @property
    def inline(self) -> bool:
        return bool(self.flags & L.INLINE_DATA_FL)

    # -- attributes
    @cached_property
    def _all_xattrs(self) -> dict[str, bytes]:
        fs = self.fs
        out: dict[str, bytes] = {}
        start = L.INODE_BASE_SIZE + self.extra_isize
        if self.extra_isize and start + 4 <= fs.inode_size:
            if _U32.unpack_from(self.raw, start)[0] == X.XATTR_MAGIC:
                first = start + 4
                out.update(X.parse(self.raw, first, fs.inode_size, first,
                                   f"inode {self.ino}: in-inode xattrs", fs._ea_inode_reader))
        if self.file_acl:
            out.update(fs.xattr_block(self.file_acl, self.ino))
        return out

    @property
    def xattrs(self) -> dict[str, bytes]:
        """Extended attributes by full name (a fresh dict)."""
        return {k: v for k, v in self._all_xattrs.items() if k != "system.data"}

    # -- data
    def _inline_bytes(self) -> bytes:
        extra = self._all_xattrs.get("system.data", b"")
        body = self.i_block + extra
        if self.size > len(body):
            raise CorruptError(
                f"inode {self.ino}: inline data holds {len(body)} bytes, size is {self.size}")
        return body[:self.size]

    def segments(self) -> Segments:
        """(file_offset, length, volume_offset) pieces of the contents."""
        fs = self.fs
        if self.flags & L.EXTENTS_FL:
            return extent_segments(fs, self.ino, self.i_block, self.size, self.csum_seed)
        return indirect_segments(fs, self.ino, self.i_block, self.size)

    def data(self) -> Data:
        """The contents of a regular file (or a slow symlink)."""
        if self.inline:
            return BytesData(self._inline_bytes())
        return SegmentData(self.fs.volume, self.size, self.segments())

    def open(self):
        """A read-only binary file object over the contents."""
        if self.kind is not Kind.FILE:
            raise UsageError(f"inode {self.ino} is a {self.kind.name.lower()}, not a file")
        return self.data().open()

    def readlink(self) -> str:
        if self.kind is not Kind.SYMLINK:
            raise UsageError(f"inode {self.ino} is not a symlink")
        size = self.size
        if size == 0 or size > min(SYMLINK_MAX, self.fs.block_size):
            raise CorruptError(f"inode {self.ino}: symlink length {size} is invalid")
        ea_blocks = (self.fs.cluster_size >> 9) if self.file_acl else 0
        if self.inline:
            target = self._inline_bytes()
        elif self.blocks_512 - ea_blocks == 0 and not self.flags & L.EXTENTS_FL:
            if size >= L.FAST_SYMLINK_MAX:
                raise CorruptError(f"inode {self.ino}: fast symlink of {size} bytes")
            target = self.i_block[:size]
        else:
            target = self.data().read()
            if len(target) != size:
                raise CorruptError(f"inode {self.ino}: symlink target is truncated")
        if b"\0" in target:
            raise CorruptError(f"inode {self.ino}: symlink target contains a NUL byte")
        return os.fsdecode(target)

    @property
    def rdev(self) -> tuple[int, int]:
        old, new = _DEV.unpack_from(self.i_block, 0)
        if old:
            return (old >> 8) & 0xFF, old & 0xFF
        return (new & 0xFFF00) >> 8, (new & 0xFF) | ((new >> 12) & 0xFFF00)

    # -- directories
    def iterdir(self) -> Iterator[tuple[bytes, int, int]]:
        """(name, inode, file_type) of every entry but "." and "..",
        in on-disk order."""
        if not self.is_dir():
            raise UsageError(f"inode {self.ino} is not a directory")
        fs = self.fs
        where = f"directory inode {self.ino}"
        if self.inline:
            body = self._inline_bytes()
            if len(body) < 4:
                raise CorruptError(f"{where}: inline directory is too small")
            regions = [(4, min(len(body), L.FAST_SYMLINK_MAX))]
            if len(body) > L.FAST_SYMLINK_MAX:
                regions.append((L.FAST_SYMLINK_MAX, len(body)))
            for start, end in regions:
                for name, ino, ftype in parse_entries(body, start, end, fs.block_size,
                                                      fs.inodes_count, where):
                    if name not in (b".", b".."):
                        yield name, ino, ftype
            return
        bs = fs.block_size
        if self.size % bs:
            raise CorruptError(f"{where}: size {self.size} is not a whole number of blocks")
        indexed = bool(self.flags & L.INDEX_FL)
        seed = self.csum_seed
        expected = 0
        seen: set[int] = set()
        for f, n, v in self.segments():
            if f != expected * bs:
                raise CorruptError(f"{where}: hole at block {expected}")
            for i in range(n // bs):
                lblock = expected + i
                pblock = v // bs + i
                if pblock in seen:
                    raise CorruptError(f"{where}: block {pblock} appears twice")
                seen.add(pblock)
                block_where = f"{where}, block {pblock}"
                block = fs.volume.read_exact(bs, pblock * bs, block_where)
                for name, ino, ftype in parse_block(
                        block, lblock, indexed=indexed, block_size=bs,
                        inodes_count=fs.inodes_count, csum_seed=seed, where=block_where):
                    if name not in (b".", b".."):
                        yield name, ino, ftype
            expected += n // bs
        if expected * bs != self.size:
            raise CorruptError(f"{where}: hole at block {expected}")

    def listdir(self) -> dict[str, int]:
        """{name: inode number}, names decoded like os.fsdecode."""
        return {os.fsdecode(name): ino for name, ino, _ in self.iterdir()}

    # -- tree entries
    def entry(self, path: str) -> Entry:
        e = Entry(path, self.kind, mode=self.mode, uid=self.uid, gid=self.gid,
                  mtime_ns=self.mtime_ns, atime_ns=self.atime_ns, ctime_ns=self.ctime_ns,
                  crtime_ns=self.crtime_ns, xattrs=self.xattrs)
        if self.kind is Kind.FILE:
            e.size = self.size
            e.data = self.data()
        elif self.kind is Kind.SYMLINK:
            e.target = self.readlink()
            e.size = len(os.fsencode(e.target))
        elif self.kind in (Kind.CHAR, Kind.BLOCK):
            e.rdev = self.rdev
        return e
