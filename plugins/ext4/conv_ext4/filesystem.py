"""An ext2/3/4 filesystem opened read-only: superblock, group descriptors,
inode lookup by number and by path, shared xattr blocks.

Geometry from the superblock is checked against itself and against the
volume before anything else is read; with metadata_csum (crc32c) or gdt_csum
(crc16) the superblock and every group descriptor are verified, and with
metadata_csum a group's bitmaps the first time one of its inodes is read.
A journal that needs recovery is replayed first, in memory.
"""

from __future__ import annotations

import struct
import uuid as uuidlib

from conv_ext4 import layout as L
from conv_ext4 import xattrs as X
from conv_ext4.csum import crc16, crc32c_raw
from conv_ext4.geometry import is_backup_group
from conv_ext4.inode import INode
from conv_ext4.journal_replay import AS_ON_DISK, OverlayVolume, replay_journal
from convcore.blockdev import Volume
from convcore.errors import CorruptError, NotFoundError, UnsupportedError
from convcore.plugins import warn

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_BACKUP_BGS = struct.Struct("<2I")

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

#: what a corruption found after a journal replay adds to its message.
AFTER_REPLAY = f" (after replaying the journal; {AS_ON_DISK})"

#: inode table blocks kept in memory (at most 64 KiB each).
ITABLE_CACHE_BLOCKS = 64


def _feature_names(compat: int, incompat: int, ro_compat: int) -> list[str]:
    words = {"compat": compat, "incompat": incompat, "ro_compat": ro_compat}
    names = []
    seen = set()
    for name, (word, bit) in L.FEATURES.items():
        if words[word] & bit and (word, bit) not in seen:
            seen.add((word, bit))
            names.append(name)
    return names


class GroupDesc:
    """What the reader needs of one block group descriptor: the inode table,
    and the bitmaps with their checksums (16 bits with 32-byte descriptors)."""

    __slots__ = ("inode_table", "flags", "itable_unused", "block_bitmap", "inode_bitmap",
                 "block_bitmap_csum", "inode_bitmap_csum")

    def __init__(self, inode_table: int, flags: int, itable_unused: int, block_bitmap: int = 0,
                 inode_bitmap: int = 0, block_bitmap_csum: int = 0,
                 inode_bitmap_csum: int = 0) -> None:
        self.inode_table = inode_table
        self.flags = flags
        self.itable_unused = itable_unused
        self.block_bitmap = block_bitmap
        self.inode_bitmap = inode_bitmap
        self.block_bitmap_csum = block_bitmap_csum
        self.inode_bitmap_csum = inode_bitmap_csum


class Ext4:
    """An ext2/3/4 filesystem on a volume, opened read-only.

    ``verify=False`` skips checksum verification (structure checks stay).
    ``recover=False`` reads a filesystem whose journal needs recovery as it
    is on disk; by default the journal is replayed in memory first
    (conv_ext4.journal_replay), so reads show what a mount would.
    """

    def __init__(self, volume: Volume, verify: bool = True, recover: bool = True) -> None:
        self.volume = volume
        self.verify = verify
        #: transactions replayed from the journal (0: none needed or recover=False)
        self.replayed = 0
        self._load()
        if self.incompat & L.INCOMPAT_RECOVER and self.compat & L.COMPAT_HAS_JOURNAL:
            self._recover(recover)
        # Bitmaps are checked the first time an inode of their group is read;
        # not on a journal left unreplayed: the kernel writes bitmaps and
        # descriptors back at different times.
        if self.metadata_csum and verify and not self.incompat & L.INCOMPAT_RECOVER:
            self._bitmaps_unchecked = set(range(self.groups_count))
            self._itable_cache.clear()  # the journal inode's block: check its group too

    def _recover(self, recover: bool) -> None:
        """Replay the journal in memory: reads go through an overlay of the
        replayed blocks, superblock and descriptors are read again."""
        if not recover:
            warn("the ext4 journal needs recovery; recover=no shows the image without "
                 "replaying it (what the kernel shows after mounting may differ)")
            return
        replay = replay_journal(self)
        if replay is not None:
            for message in replay.warnings:
                warn(message)
            if replay.blocks:
                self.volume = OverlayVolume(self.volume, self.block_size, replay.blocks)
                try:
                    self._load()
                except CorruptError as e:
                    raise CorruptError(f"{e}{AFTER_REPLAY}") from None
            self.replayed = replay.transactions
        # What e2fsck or a mount leave behind: the journal is replayed.
        self.incompat &= ~L.INCOMPAT_RECOVER

    def _load(self) -> None:
        """Superblock and group descriptors, checked, from ``self.volume``."""
        volume = self.volume
        verify = self.verify
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
        self._bitmaps_unchecked: set[int] = set()
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
        # bigalloc: allocation (and the block bitmap) counts clusters of blocks.
        self.cluster_size = bs
        if self.ro_compat & L.RO_COMPAT_BIGALLOC:
            if not sb.s_log_block_size <= sb.s_log_cluster_size <= sb.s_log_block_size + 16:
                raise CorruptError(
                    f"superblock: cluster size 2^{10 + sb.s_log_cluster_size} is invalid")
            self.cluster_size = 1024 << sb.s_log_cluster_size
        ratio = self.cluster_size // bs
        bpg, ipg = sb.s_blocks_per_group, sb.s_inodes_per_group
        if not 8 <= bpg <= 8 * bs * ratio:
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
            return group in _BACKUP_BGS.unpack(self.sb.s_backup_bgs)
        return is_backup_group(group, bool(self.ro_compat & L.RO_COMPAT_SPARSE_SUPER))

    def _desc_block(self, index: int) -> int:
        """Block of the ``index``-th group descriptor block."""
        sb = self.sb
        first = sb.s_first_data_block
        # bigalloc with 1 KiB blocks starts at block 0, but the superblock
        # still sits at byte 1024, in block 1.
        zero_adjust = int(first == 0 and self.block_size == 1024 and self.cluster_size > 1024)
        if not self.incompat & L.INCOMPAT_META_BG or index < sb.s_first_meta_bg:
            return first + zero_adjust + 1 + index
        group = index * (self.block_size // self.desc_size)
        return (first + group * self.blocks_per_group + self._has_super(group)
                + (zero_adjust if group == 0 else 0))

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
                if wide:
                    groups.append(GroupDesc(
                        table, gd.bg_flags, unused,
                        gd.bg_block_bitmap_lo | gd.bg_block_bitmap_hi << 32,
                        gd.bg_inode_bitmap_lo | gd.bg_inode_bitmap_hi << 32,
                        gd.bg_block_bitmap_csum_lo | gd.bg_block_bitmap_csum_hi << 16,
                        gd.bg_inode_bitmap_csum_lo | gd.bg_inode_bitmap_csum_hi << 16))
                else:
                    groups.append(GroupDesc(
                        table, gd.bg_flags, unused, gd.bg_block_bitmap_lo, gd.bg_inode_bitmap_lo,
                        gd.bg_block_bitmap_csum_lo, gd.bg_inode_bitmap_csum_lo))
        return groups

    def _check_bitmaps(self, group: int) -> None:
        """The block and inode bitmap checksums of ``group`` (metadata_csum),
        as the kernel checks them before using a bitmap."""
        gd = self.groups[group]
        # 32-byte descriptors keep the low 16 bits of each checksum only.
        mask = 0xFFFFFFFF if self.desc_size >= 64 else 0xFFFF
        clusters = (self.sb.s_clusters_per_group if self.cluster_size > self.block_size
                    else self.blocks_per_group)
        for what, flag, block, size, stored in (
                ("block", L.BG_BLOCK_UNINIT, gd.block_bitmap, clusters // 8,
                 gd.block_bitmap_csum),
                ("inode", L.BG_INODE_UNINIT, gd.inode_bitmap, self.inodes_per_group // 8,
                 gd.inode_bitmap_csum)):
            if gd.flags & flag:
                continue  # never written: the kernel computes it
            data = self.read_block(block, f"group {group}: {what} bitmap block {block}")
            if crc32c_raw(self.csum_seed, data[:size]) & mask != stored:
                raise CorruptError(f"group {group}: {what} bitmap checksum mismatch")

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
            if self._bitmaps_unchecked and group in self._bitmaps_unchecked:
                self._bitmaps_unchecked.discard(group)
                self._check_bitmaps(group)
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
            **({"journal_replayed": self.replayed} if self.replayed else {}),
        }
