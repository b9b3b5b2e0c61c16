"""Read ext2/ext3/ext4 images into a Tree, and a small dissect-style API.

``Ext4(volume)`` checks the superblock and group descriptors, ``.inode(n)``
and ``.get(path)`` give ``INode`` objects (``listdir()``, ``open()``,
``readlink()``, ``xattrs``); ``decode()`` walks the directory tree into a
``convcore.tree.Tree`` whose file contents are ``SegmentData`` pieces of the
volume (inline files are ``BytesData``).

Everything read from the image is hostile: block and inode numbers are
checked against the filesystem before use, every directory may be reached
once, and with metadata_csum (or gdt_csum) every checksum is verified;
failures are one-line ``CorruptError``s naming the inode or block.
"""

from __future__ import annotations

import os
import struct
import uuid as uuidlib
from collections.abc import Iterator
from functools import cached_property

from conv_ext4 import layout as L
from conv_ext4 import xattrs as X
from conv_ext4.blockmap import Segments, extent_segments, indirect_segments
from conv_ext4.csum import crc16, crc32c_raw
from conv_ext4.dirents import parse_block, parse_entries
from convcore.blockdev import Volume
from convcore.errors import CorruptError, NotFoundError, UnsupportedError, UsageError
from convcore.tree import BytesData, Data, Entry, Kind, SegmentData, Tree

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_DEV = struct.Struct("<II")

#: incompat features whose on-disk format this reader does not understand.
UNSUPPORTED_INCOMPAT = {
    L.INCOMPAT_COMPRESSION: "compression",
    L.INCOMPAT_JOURNAL_DEV: "journal_dev (an external journal device)",
    L.INCOMPAT_DIRDATA: "dirdata",
}
KNOWN_INCOMPAT = (L.INCOMPAT_FILETYPE | L.INCOMPAT_RECOVER | L.INCOMPAT_META_BG
                  | L.INCOMPAT_EXTENTS | L.INCOMPAT_64BIT | L.INCOMPAT_MMP | L.INCOMPAT_FLEX_BG
                  | L.INCOMPAT_EA_INODE | L.INCOMPAT_CSUM_SEED | L.INCOMPAT_LARGEDIR
                  | L.INCOMPAT_INLINE_DATA | L.INCOMPAT_ENCRYPT | L.INCOMPAT_CASEFOLD)
#: what ext3 (and so ext2) may have; anything more makes the filesystem ext4
#: (the rule blkid uses).
EXT3_INCOMPAT = L.INCOMPAT_FILETYPE | L.INCOMPAT_RECOVER | L.INCOMPAT_META_BG
EXT3_RO_COMPAT = L.RO_COMPAT_SPARSE_SUPER | L.RO_COMPAT_LARGE_FILE | L.RO_COMPAT_BTREE_DIR

#: inode table blocks kept in memory (at most 64 KiB each).
ITABLE_CACHE_BLOCKS = 64
#: a symlink target is at most one block, and never more than PATH_MAX.
SYMLINK_MAX = 4096
_NS = 1_000_000_000

_INODE_STRUCT = L.INODE.struct
#: where each extra field ends: it is present when 128 + i_extra_isize reaches it.
_EXTRA_END = {key: L.INODE.offsets[field] + 4 for key, field in (
    ("ctime", "i_ctime_extra"), ("mtime", "i_mtime_extra"), ("atime", "i_atime_extra"),
    ("crtime", "i_crtime"), ("crtime_extra", "i_crtime_extra"))}


def _feature_names(compat: int, incompat: int, ro_compat: int) -> list[str]:
    words = {"compat": compat, "incompat": incompat, "ro_compat": ro_compat}
    names = []
    seen = set()
    for name, (word, bit) in L.FEATURES.items():
        if words[word] & bit and (word, bit) not in seen:
            seen.add((word, bit))
            names.append(name)
    return names


def _time_ns(seconds: int, extra: int | None) -> int:
    """An inode time: signed 32-bit seconds, widened by the two epoch bits of
    the extra field, plus its nanoseconds."""
    sec = seconds - (1 << 32) if seconds & 0x80000000 else seconds
    if extra is None:
        return sec * _NS
    sec += (extra & 3) << 32
    return sec * _NS + min(extra >> 2, _NS - 1)


class GroupDesc:
    """What the reader needs of one block group descriptor."""

    __slots__ = ("inode_table", "flags", "itable_unused")

    def __init__(self, inode_table: int, flags: int, itable_unused: int) -> None:
        self.inode_table = inode_table
        self.flags = flags
        self.itable_unused = itable_unused


class Ext4:
    """An ext2/3/4 filesystem on a volume, opened read-only.

    ``verify=False`` skips checksum verification (structure checks stay).
    """

    def __init__(self, volume: Volume, verify: bool = True) -> None:
        self.volume = volume
        self.verify = verify
        raw = volume.read_exact(L.SUPERBLOCK.size, L.SUPERBLOCK_OFFSET, "ext4 superblock")
        sb = L.SUPERBLOCK.unpack(raw)
        self.sb = sb
        if sb.s_magic != L.SUPERBLOCK_MAGIC:
            raise CorruptError(f"not an ext2/3/4 filesystem (superblock magic {sb.s_magic:#x})")
        self.compat = sb.s_feature_compat
        self.incompat = sb.s_feature_incompat if sb.s_rev_level else 0
        self.ro_compat = sb.s_feature_ro_compat if sb.s_rev_level else 0
        for bit, name in UNSUPPORTED_INCOMPAT.items():
            if self.incompat & bit:
                raise UnsupportedError(f"ext4 feature {name} is not supported")
        if self.incompat & ~KNOWN_INCOMPAT:
            raise UnsupportedError(
                f"unknown ext4 incompatible features {self.incompat & ~KNOWN_INCOMPAT:#x}")
        self.metadata_csum = bool(self.ro_compat & L.RO_COMPAT_METADATA_CSUM)
        self.gdt_csum = bool(self.ro_compat & L.RO_COMPAT_GDT_CSUM) and not self.metadata_csum
        if self.metadata_csum and verify:
            if sb.s_checksum_type != L.CHECKSUM_CRC32C:
                raise CorruptError(f"superblock: unknown checksum type {sb.s_checksum_type}")
            if crc32c_raw(0xFFFFFFFF, raw[:-4]) != sb.s_checksum:
                raise CorruptError("superblock: checksum mismatch")
        self._check_geometry(sb)
        if self.incompat & L.INCOMPAT_CSUM_SEED:
            self.csum_seed = sb.s_checksum_seed
        else:
            self.csum_seed = crc32c_raw(0xFFFFFFFF, sb.s_uuid)
        self.groups = self._read_group_descs()
        self._xattr_blocks: dict[int, dict[str, bytes]] = {}
        # Inodes are read a table block at a time: siblings are usually neighbours.
        self._itable_cache: dict[int, bytes] = {}

    # -- geometry
    def _check_geometry(self, sb) -> None:
        if sb.s_log_block_size > 6:
            raise CorruptError(f"superblock: block size 2^{10 + sb.s_log_block_size} is invalid")
        bs = self.block_size = 1024 << sb.s_log_block_size
        wide = bool(self.incompat & L.INCOMPAT_64BIT)
        self.blocks_count = sb.s_blocks_count_lo | ((sb.s_blocks_count_hi << 32) if wide else 0)
        self.inodes_count = sb.s_inodes_count
        if sb.s_rev_level == 0:
            self.inode_size, self.first_ino = L.GOOD_OLD_INODE_SIZE, L.GOOD_OLD_FIRST_INO
        else:
            self.inode_size, self.first_ino = sb.s_inode_size, sb.s_first_ino
        isz = self.inode_size
        if isz < L.GOOD_OLD_INODE_SIZE or isz > bs or isz & (isz - 1):
            raise CorruptError(f"superblock: inode size {isz} is invalid")
        self.desc_size = sb.s_desc_size if wide else 32
        if self.desc_size < 32 or self.desc_size > bs or self.desc_size & (self.desc_size - 1):
            raise CorruptError(f"superblock: group descriptor size {self.desc_size} is invalid")
        bpg, ipg = sb.s_blocks_per_group, sb.s_inodes_per_group
        if not 8 <= bpg <= 8 * bs:
            raise CorruptError(f"superblock: {bpg} blocks per group is invalid")
        if not 1 <= ipg <= 8 * bs:
            raise CorruptError(f"superblock: {ipg} inodes per group is invalid")
        if sb.s_first_data_block >= self.blocks_count:
            raise CorruptError(f"superblock: first data block {sb.s_first_data_block} "
                               f"is beyond the {self.blocks_count}-block filesystem")
        if self.blocks_count * bs > self.volume.size:
            raise CorruptError(
                f"image is truncated: the filesystem needs {self.blocks_count * bs} bytes, "
                f"the image has {self.volume.size}")
        self.groups_count = -(-(self.blocks_count - sb.s_first_data_block) // bpg)
        if self.groups_count * ipg != self.inodes_count:
            raise CorruptError(f"superblock: {self.inodes_count} inodes do not match "
                               f"{self.groups_count} groups of {ipg}")
        if self.first_ino <= L.ROOT_INO or self.first_ino > self.inodes_count:
            raise CorruptError(f"superblock: first inode {self.first_ino} is invalid")
        self.inodes_per_group = ipg
        self.blocks_per_group = bpg
        self.itable_blocks = -(-ipg * isz // bs)
        self.huge_file = bool(self.ro_compat & L.RO_COMPAT_HUGE_FILE)
        # ext4's s_maxbytes bound: no logical block beyond 2^32.
        self.max_file_size = (1 << 32) * bs

    def _has_super(self, group: int) -> bool:
        if group == 0:
            return True
        if self.compat & L.COMPAT_SPARSE_SUPER2:
            return group in struct.unpack("<2I", self.sb.s_backup_bgs)
        if group <= 1 or not self.ro_compat & L.RO_COMPAT_SPARSE_SUPER:
            return True
        if not group & 1:
            return False
        for base in (3, 5, 7):
            n = base
            while n < group:
                n *= base
            if n == group:
                return True
        return False

    def _desc_block(self, index: int) -> int:
        """Block of the ``index``-th group descriptor block."""
        sb = self.sb
        first = sb.s_first_data_block
        if not self.incompat & L.INCOMPAT_META_BG or index < sb.s_first_meta_bg:
            return first + 1 + index
        group = index * (self.block_size // self.desc_size)
        return first + group * self.blocks_per_group + self._has_super(group)

    def _read_group_descs(self) -> list[GroupDesc]:
        bs, dsz = self.block_size, self.desc_size
        per_block = bs // dsz
        layout = L.GROUP_DESC_64 if dsz >= 64 else L.GROUP_DESC_32
        wide = dsz >= 64
        groups: list[GroupDesc] = []
        for index in range(-(-self.groups_count // per_block)):
            block_nr = self._desc_block(index)
            block = self.read_block(block_nr, f"group descriptor block {block_nr}")
            for slot in range(min(per_block, self.groups_count - index * per_block)):
                group = index * per_block + slot
                raw = block[slot * dsz:(slot + 1) * dsz]
                gd = layout.unpack(raw)
                if self.verify:
                    self._check_desc_csum(group, raw, gd.bg_checksum)
                table = gd.bg_inode_table_lo | ((gd.bg_inode_table_hi << 32) if wide else 0)
                unused = gd.bg_itable_unused_lo | ((gd.bg_itable_unused_hi << 16) if wide else 0)
                if table == 0 or table + self.itable_blocks > self.blocks_count:
                    raise CorruptError(
                        f"group {group}: inode table at block {table} lies outside the "
                        "filesystem")
                groups.append(GroupDesc(table, gd.bg_flags, unused))
        return groups

    def _check_desc_csum(self, group: int, raw: bytes, stored: int) -> None:
        off = L.GROUP_DESC_32.offsets["bg_checksum"]
        if self.metadata_csum:
            crc = crc32c_raw(self.csum_seed, _U32.pack(group))
            crc = crc32c_raw(crc, raw[:off])
            crc = crc32c_raw(crc, b"\0\0")
            crc = crc32c_raw(crc, raw[off + 2:]) & 0xFFFF
        elif self.gdt_csum:
            crc = crc16(0xFFFF, self.sb.s_uuid)
            crc = crc16(crc, _U32.pack(group))
            crc = crc16(crc, raw[:off])
            if self.desc_size > 32:
                crc = crc16(crc, raw[off + 2:])
        else:
            return
        if crc != stored:
            raise CorruptError(f"group descriptor {group}: checksum mismatch")

    # -- reading
    def read_block(self, block: int, what: str) -> bytes:
        if block >= self.blocks_count:
            raise CorruptError(f"{what} lies outside the {self.blocks_count}-block filesystem")
        return self.volume.read_exact(self.block_size, block * self.block_size, what)

    def inode_seed(self, ino: int, generation: int) -> int:
        return crc32c_raw(crc32c_raw(self.csum_seed, _U32.pack(ino)), _U32.pack(generation))

    def inode(self, ino: int) -> INode:
        if not 1 <= ino <= self.inodes_count:
            raise CorruptError(f"inode {ino} is out of range (1..{self.inodes_count})")
        group, index = divmod(ino - 1, self.inodes_per_group)
        gd = self.groups[group]
        if (self.metadata_csum or self.gdt_csum) and (
                gd.flags & L.BG_INODE_UNINIT or index >= self.inodes_per_group - gd.itable_unused):
            raise CorruptError(f"inode {ino} is not in use (its group marks it unused)")
        per_block = self.block_size // self.inode_size
        block = gd.inode_table + index // per_block
        table = self._itable_cache.get(block)
        if table is None:
            if len(self._itable_cache) >= ITABLE_CACHE_BLOCKS:
                self._itable_cache.clear()
            table = self.read_block(block, f"inode table block {block} (inode {ino})")
            self._itable_cache[block] = table
        start = (index % per_block) * self.inode_size
        return INode(self, ino, table[start:start + self.inode_size])

    @property
    def root(self) -> INode:
        return self.inode(L.ROOT_INO)

    def get(self, path: str) -> INode:
        """The inode at ``path`` (no symlinks followed)."""
        node = self.root
        walked = ""
        for part in path.split("/"):
            if part in ("", "."):
                continue
            if not node.is_dir():
                raise NotFoundError(f"/{walked}: not a directory")
            walked = f"{walked}/{part}" if walked else part
            ino = node.listdir().get(part)
            if ino is None:
                raise NotFoundError(f"no such file in the ext4 image: /{walked}")
            node = self.inode(ino)
        return node

    def xattr_block(self, block: int, owner: int) -> dict[str, bytes]:
        """The attributes of a (possibly shared) xattr block, checked once."""
        cached = self._xattr_blocks.get(block)
        if cached is not None:
            return cached
        where = f"inode {owner}: xattr block {block}"
        data = self.read_block(block, where)
        magic, _refcount, nblocks, _hash, stored, _ = X.XATTR_HEADER.unpack_from(data, 0)
        if magic != X.XATTR_MAGIC or nblocks != 1:
            raise CorruptError(f"{where}: bad xattr block header")
        if self.metadata_csum and self.verify:
            crc = crc32c_raw(self.csum_seed, _U64.pack(block))
            crc = crc32c_raw(crc, data[:16] + b"\0\0\0\0" + data[20:])
            if crc != stored:
                raise CorruptError(f"{where}: checksum mismatch")
        attrs = X.parse(data, X.XATTR_HEADER.size, len(data), 0, where, self._ea_inode_reader)
        self._xattr_blocks[block] = attrs
        return attrs

    @property
    def _ea_inode_reader(self):
        return self.read_ea_inode if self.incompat & L.INCOMPAT_EA_INODE else None

    def read_ea_inode(self, ino: int, size: int) -> bytes:
        """An xattr value kept in its own inode (ea_inode feature)."""
        node = self.inode(ino)
        if not node.flags & L.EA_INODE_FL or node.size != size:
            raise CorruptError(f"inode {ino}: not the xattr value inode it is said to be")
        return node.data().read()

    # -- facts
    @property
    def fs_type(self) -> str:
        if self.incompat & ~EXT3_INCOMPAT or self.ro_compat & ~EXT3_RO_COMPAT:
            return "ext4"
        return "ext3" if self.compat & L.COMPAT_HAS_JOURNAL else "ext2"

    def info(self) -> dict:
        sb = self.sb
        wide = bool(self.incompat & L.INCOMPAT_64BIT)
        free = sb.s_free_blocks_count_lo | ((sb.s_free_blocks_count_hi << 32) if wide else 0)
        return {
            "type": self.fs_type,
            "label": sb.s_volume_name.rstrip(b"\0").decode(errors="replace"),
            "uuid": str(uuidlib.UUID(bytes=sb.s_uuid)),
            "block_size": self.block_size,
            "blocks": self.blocks_count,
            "free_blocks": free,
            "inodes": self.inodes_count,
            "free_inodes": sb.s_free_inodes_count,
            "inode_size": self.inode_size,
            "groups": self.groups_count,
            "features": _feature_names(self.compat, self.incompat, self.ro_compat),
        }


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
            stored |= struct.unpack_from("<H", self.raw, hi)[0] << 16
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
        ea_blocks = (self.fs.block_size >> 9) if self.file_acl else 0
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


def decode(volume: Volume, opts: dict | None = None, ctx=None) -> Tree:
    """Read the whole directory tree of an ext2/3/4 volume.

    Children come in byte order of name, depth first, so the first name of a
    hardlinked inode is the first one a tree walk meets; later names are
    ``Entry(link=first_path)``.
    """
    fs = Ext4(volume)
    root = fs.root
    if not root.is_dir():
        raise CorruptError("inode 2 (the root) is not a directory")
    tree = Tree(root.entry(""))
    tree.info = fs.info()
    first_paths: dict[int, str] = {}
    dirs_seen: dict[int, str] = {L.ROOT_INO: "/"}
    stack: list[tuple[str, Iterator[tuple[bytes, int]]]] = [("", _sorted_children(root))]
    while stack:
        parent, children = stack[-1]
        item = next(children, None)
        if item is None:
            stack.pop()
            continue
        name, ino = item
        path = f"{parent}/{os.fsdecode(name)}" if parent else os.fsdecode(name)
        if ino < fs.first_ino and ino != L.ROOT_INO:
            raise CorruptError(f"/{path}: entry points at reserved inode {ino}")
        first = first_paths.get(ino)
        if first is not None:
            held = tree.get(first)
            tree.add(Entry(path, held.kind, mode=held.mode, uid=held.uid, gid=held.gid,
                           mtime_ns=held.mtime_ns, atime_ns=held.atime_ns,
                           ctime_ns=held.ctime_ns, crtime_ns=held.crtime_ns, size=held.size,
                           target=held.target, rdev=held.rdev, link=first,
                           xattrs=dict(held.xattrs), data=held.data))
            continue
        if ino in dirs_seen:
            raise CorruptError(
                f"directory inode {ino} is reachable twice: /{dirs_seen[ino]} and /{path}")
        node = fs.inode(ino)
        tree.add(node.entry(path))
        if node.is_dir():
            dirs_seen[ino] = path
            stack.append((path, _sorted_children(node)))
        else:
            first_paths[ino] = path
    return tree


def _sorted_children(node: INode) -> Iterator[tuple[bytes, int]]:
    entries = sorted((name, ino) for name, ino, _ in node.iterdir())
    for i in range(1, len(entries)):
        if entries[i][0] == entries[i - 1][0]:
            raise CorruptError(
                f"directory inode {node.ino}: name {entries[i][0]!r} appears twice")
    return iter(entries)
