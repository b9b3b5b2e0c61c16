"""ext2/ext3/ext4 on-disk structures (kernel Documentation/filesystems/ext4/).

Every structure is a ``Layout``: a precompiled ``struct.Struct`` with named
fields. ``unpack`` gives a namedtuple (attribute access, ``_asdict``),
``pack(**fields)`` fills unnamed fields with zeros. Writers on hot paths use
``.struct`` directly with positional values.

All ext4 structures are little-endian; the jbd2 journal's are big-endian.
"""

from __future__ import annotations

import struct
from collections import namedtuple
from functools import cached_property
from typing import Any


class Layout:
    """A fixed-size on-disk structure with named fields."""

    def __init__(self, name: str, fields: list[tuple[str, str]], endian: str = "<") -> None:
        self.name = name
        self.names = [n for n, _ in fields]
        self.struct = struct.Struct(endian + "".join(f for _, f in fields))
        self.size = self.struct.size
        self.offsets: dict[str, int] = {}
        pos = 0
        for n, f in fields:
            self.offsets[n] = pos
            pos += struct.calcsize(endian + f)
        self._zero = {n: (b"" if f.endswith("s") else 0) for n, f in fields}

    @cached_property
    def tuple(self) -> Any:
        # Built on first unpack: creating the module's namedtuples up front
        # cost 2 ms of every ext4 conversion, which mostly packs.
        return namedtuple(self.name, self.names)  # type: ignore[misc]

    def offset(self, name: str) -> int:
        return self.offsets[name]

    def unpack(self, buf: bytes | bytearray | memoryview, offset: int = 0) -> Any:
        return self.tuple._make(self.struct.unpack_from(buf, offset))

    def pack(self, **fields: Any) -> bytes:
        values = dict(self._zero)
        values.update(fields)
        return self.struct.pack(*(values[n] for n in self.names))

    def pack_into(self, buf: bytearray | memoryview, offset: int, **fields: Any) -> None:
        values = dict(self._zero)
        values.update(fields)
        self.struct.pack_into(buf, offset, *(values[n] for n in self.names))


# --------------------------------------------------------------------------
# Superblock (1024 bytes at byte 1024; backups at the start of some groups)

SUPERBLOCK_OFFSET = 1024
SUPERBLOCK_MAGIC = 0xEF53

SUPERBLOCK = Layout("Superblock", [
    ("s_inodes_count", "I"),
    ("s_blocks_count_lo", "I"),
    ("s_r_blocks_count_lo", "I"),
    ("s_free_blocks_count_lo", "I"),
    ("s_free_inodes_count", "I"),
    ("s_first_data_block", "I"),
    ("s_log_block_size", "I"),
    ("s_log_cluster_size", "I"),
    ("s_blocks_per_group", "I"),
    ("s_clusters_per_group", "I"),
    ("s_inodes_per_group", "I"),
    ("s_mtime", "I"),
    ("s_wtime", "I"),
    ("s_mnt_count", "H"),
    ("s_max_mnt_count", "h"),
    ("s_magic", "H"),
    ("s_state", "H"),
    ("s_errors", "H"),
    ("s_minor_rev_level", "H"),
    ("s_lastcheck", "I"),
    ("s_checkinterval", "I"),
    ("s_creator_os", "I"),
    ("s_rev_level", "I"),
    ("s_def_resuid", "H"),
    ("s_def_resgid", "H"),
    # EXT4_DYNAMIC_REV
    ("s_first_ino", "I"),
    ("s_inode_size", "H"),
    ("s_block_group_nr", "H"),
    ("s_feature_compat", "I"),
    ("s_feature_incompat", "I"),
    ("s_feature_ro_compat", "I"),
    ("s_uuid", "16s"),
    ("s_volume_name", "16s"),
    ("s_last_mounted", "64s"),
    ("s_algorithm_usage_bitmap", "I"),
    ("s_prealloc_blocks", "B"),
    ("s_prealloc_dir_blocks", "B"),
    ("s_reserved_gdt_blocks", "H"),
    ("s_journal_uuid", "16s"),
    ("s_journal_inum", "I"),
    ("s_journal_dev", "I"),
    ("s_last_orphan", "I"),
    ("s_hash_seed", "16s"),
    ("s_def_hash_version", "B"),
    ("s_jnl_backup_type", "B"),
    ("s_desc_size", "H"),
    ("s_default_mount_opts", "I"),
    ("s_first_meta_bg", "I"),
    ("s_mkfs_time", "I"),
    ("s_jnl_blocks", "68s"),  # 17 x le32: i_block[15], i_size_high, i_size
    # 64bit
    ("s_blocks_count_hi", "I"),
    ("s_r_blocks_count_hi", "I"),
    ("s_free_blocks_count_hi", "I"),
    ("s_min_extra_isize", "H"),
    ("s_want_extra_isize", "H"),
    ("s_flags", "I"),
    ("s_raid_stride", "H"),
    ("s_mmp_interval", "H"),
    ("s_mmp_block", "Q"),
    ("s_raid_stripe_width", "I"),
    ("s_log_groups_per_flex", "B"),
    ("s_checksum_type", "B"),
    ("s_encryption_level", "B"),
    ("s_reserved_pad", "B"),
    ("s_kbytes_written", "Q"),
    ("s_snapshot_inum", "I"),
    ("s_snapshot_id", "I"),
    ("s_snapshot_r_blocks_count", "Q"),
    ("s_snapshot_list", "I"),
    ("s_error_count", "I"),
    ("s_first_error_time", "I"),
    ("s_first_error_ino", "I"),
    ("s_first_error_block", "Q"),
    ("s_first_error_func", "32s"),
    ("s_first_error_line", "I"),
    ("s_last_error_time", "I"),
    ("s_last_error_ino", "I"),
    ("s_last_error_line", "I"),
    ("s_last_error_block", "Q"),
    ("s_last_error_func", "32s"),
    ("s_mount_opts", "64s"),
    ("s_usr_quota_inum", "I"),
    ("s_grp_quota_inum", "I"),
    ("s_overhead_clusters", "I"),
    ("s_backup_bgs", "8s"),
    ("s_encrypt_algos", "4s"),
    ("s_encrypt_pw_salt", "16s"),
    ("s_lpf_ino", "I"),
    ("s_prj_quota_inum", "I"),
    ("s_checksum_seed", "I"),
    ("s_wtime_hi", "B"),
    ("s_mtime_hi", "B"),
    ("s_mkfs_time_hi", "B"),
    ("s_lastcheck_hi", "B"),
    ("s_first_error_time_hi", "B"),
    ("s_last_error_time_hi", "B"),
    ("s_first_error_errcode", "B"),
    ("s_last_error_errcode", "B"),
    ("s_encoding", "H"),
    ("s_encoding_flags", "H"),
    ("s_orphan_file_inum", "I"),
    ("s_reserved", "376s"),
    ("s_checksum", "I"),
])
assert SUPERBLOCK.size == 1024

# s_state
STATE_VALID = 0x0001
STATE_ERROR = 0x0002
# s_errors
ERRORS_CONTINUE = 1
# s_creator_os
OS_LINUX = 0
# s_rev_level
DYNAMIC_REV = 1
GOOD_OLD_FIRST_INO = 11
GOOD_OLD_INODE_SIZE = 128
# s_flags
FLAGS_SIGNED_HASH = 0x0001
FLAGS_UNSIGNED_HASH = 0x0002
# s_default_mount_opts
DEFM_XATTR_USER = 0x0004
DEFM_ACL = 0x0008
# s_checksum_type
CHECKSUM_CRC32C = 1
# s_jnl_backup_type
JNL_BACKUP_BLOCKS = 1

# s_feature_compat
COMPAT_DIR_PREALLOC = 0x0001
COMPAT_IMAGIC_INODES = 0x0002
COMPAT_HAS_JOURNAL = 0x0004
COMPAT_EXT_ATTR = 0x0008
COMPAT_RESIZE_INODE = 0x0010
COMPAT_DIR_INDEX = 0x0020
COMPAT_SPARSE_SUPER2 = 0x0200
COMPAT_FAST_COMMIT = 0x0400
COMPAT_STABLE_INODES = 0x0800
COMPAT_ORPHAN_FILE = 0x1000
# s_feature_incompat
INCOMPAT_COMPRESSION = 0x0001
INCOMPAT_FILETYPE = 0x0002
INCOMPAT_RECOVER = 0x0004
INCOMPAT_JOURNAL_DEV = 0x0008
INCOMPAT_META_BG = 0x0010
INCOMPAT_EXTENTS = 0x0040
INCOMPAT_64BIT = 0x0080
INCOMPAT_MMP = 0x0100
INCOMPAT_FLEX_BG = 0x0200
INCOMPAT_EA_INODE = 0x0400
INCOMPAT_DIRDATA = 0x1000
INCOMPAT_CSUM_SEED = 0x2000
INCOMPAT_LARGEDIR = 0x4000
INCOMPAT_INLINE_DATA = 0x8000
INCOMPAT_ENCRYPT = 0x10000
INCOMPAT_CASEFOLD = 0x20000
# s_feature_ro_compat
RO_COMPAT_SPARSE_SUPER = 0x0001
RO_COMPAT_LARGE_FILE = 0x0002
RO_COMPAT_BTREE_DIR = 0x0004
RO_COMPAT_HUGE_FILE = 0x0008
RO_COMPAT_GDT_CSUM = 0x0010
RO_COMPAT_DIR_NLINK = 0x0020
RO_COMPAT_EXTRA_ISIZE = 0x0040
RO_COMPAT_HAS_SNAPSHOT = 0x0080
RO_COMPAT_QUOTA = 0x0100
RO_COMPAT_BIGALLOC = 0x0200
RO_COMPAT_METADATA_CSUM = 0x0400
RO_COMPAT_REPLICA = 0x0800
RO_COMPAT_READONLY = 0x1000
RO_COMPAT_PROJECT = 0x2000
RO_COMPAT_SHARED_BLOCKS = 0x4000
RO_COMPAT_VERITY = 0x8000
RO_COMPAT_ORPHAN_PRESENT = 0x10000

#: mke2fs feature names -> (which word, bit); word is "compat", "incompat" or
#: "ro_compat".
FEATURES: dict[str, tuple[str, int]] = {
    "dir_prealloc": ("compat", COMPAT_DIR_PREALLOC),
    "imagic_inodes": ("compat", COMPAT_IMAGIC_INODES),
    "has_journal": ("compat", COMPAT_HAS_JOURNAL),
    "ext_attr": ("compat", COMPAT_EXT_ATTR),
    "resize_inode": ("compat", COMPAT_RESIZE_INODE),
    "dir_index": ("compat", COMPAT_DIR_INDEX),
    "sparse_super2": ("compat", COMPAT_SPARSE_SUPER2),
    "fast_commit": ("compat", COMPAT_FAST_COMMIT),
    "stable_inodes": ("compat", COMPAT_STABLE_INODES),
    "orphan_file": ("compat", COMPAT_ORPHAN_FILE),
    "compression": ("incompat", INCOMPAT_COMPRESSION),
    "filetype": ("incompat", INCOMPAT_FILETYPE),
    "needs_recovery": ("incompat", INCOMPAT_RECOVER),
    "journal_dev": ("incompat", INCOMPAT_JOURNAL_DEV),
    "meta_bg": ("incompat", INCOMPAT_META_BG),
    "extent": ("incompat", INCOMPAT_EXTENTS),
    "extents": ("incompat", INCOMPAT_EXTENTS),
    "64bit": ("incompat", INCOMPAT_64BIT),
    "mmp": ("incompat", INCOMPAT_MMP),
    "flex_bg": ("incompat", INCOMPAT_FLEX_BG),
    "ea_inode": ("incompat", INCOMPAT_EA_INODE),
    "dirdata": ("incompat", INCOMPAT_DIRDATA),
    "metadata_csum_seed": ("incompat", INCOMPAT_CSUM_SEED),
    "large_dir": ("incompat", INCOMPAT_LARGEDIR),
    "inline_data": ("incompat", INCOMPAT_INLINE_DATA),
    "encrypt": ("incompat", INCOMPAT_ENCRYPT),
    "casefold": ("incompat", INCOMPAT_CASEFOLD),
    "sparse_super": ("ro_compat", RO_COMPAT_SPARSE_SUPER),
    "large_file": ("ro_compat", RO_COMPAT_LARGE_FILE),
    "huge_file": ("ro_compat", RO_COMPAT_HUGE_FILE),
    "uninit_bg": ("ro_compat", RO_COMPAT_GDT_CSUM),
    "dir_nlink": ("ro_compat", RO_COMPAT_DIR_NLINK),
    "extra_isize": ("ro_compat", RO_COMPAT_EXTRA_ISIZE),
    "quota": ("ro_compat", RO_COMPAT_QUOTA),
    "bigalloc": ("ro_compat", RO_COMPAT_BIGALLOC),
    "metadata_csum": ("ro_compat", RO_COMPAT_METADATA_CSUM),
    "read-only": ("ro_compat", RO_COMPAT_READONLY),
    "project": ("ro_compat", RO_COMPAT_PROJECT),
    "shared_blocks": ("ro_compat", RO_COMPAT_SHARED_BLOCKS),
    "verity": ("ro_compat", RO_COMPAT_VERITY),
    "orphan_present": ("ro_compat", RO_COMPAT_ORPHAN_PRESENT),
}

# --------------------------------------------------------------------------
# Group descriptors (32 bytes, or 64 with the 64bit feature)

GROUP_DESC_32 = Layout("GroupDesc32", [
    ("bg_block_bitmap_lo", "I"),
    ("bg_inode_bitmap_lo", "I"),
    ("bg_inode_table_lo", "I"),
    ("bg_free_blocks_count_lo", "H"),
    ("bg_free_inodes_count_lo", "H"),
    ("bg_used_dirs_count_lo", "H"),
    ("bg_flags", "H"),
    ("bg_exclude_bitmap_lo", "I"),
    ("bg_block_bitmap_csum_lo", "H"),
    ("bg_inode_bitmap_csum_lo", "H"),
    ("bg_itable_unused_lo", "H"),
    ("bg_checksum", "H"),
])
assert GROUP_DESC_32.size == 32

GROUP_DESC_64 = Layout("GroupDesc64", [
    *zip(GROUP_DESC_32.names, ("I", "I", "I", "H", "H", "H", "H", "I", "H", "H", "H", "H"),
         strict=True),
    ("bg_block_bitmap_hi", "I"),
    ("bg_inode_bitmap_hi", "I"),
    ("bg_inode_table_hi", "I"),
    ("bg_free_blocks_count_hi", "H"),
    ("bg_free_inodes_count_hi", "H"),
    ("bg_used_dirs_count_hi", "H"),
    ("bg_itable_unused_hi", "H"),
    ("bg_exclude_bitmap_hi", "I"),
    ("bg_block_bitmap_csum_hi", "H"),
    ("bg_inode_bitmap_csum_hi", "H"),
    ("bg_reserved", "I"),
])
assert GROUP_DESC_64.size == 64

# bg_flags
BG_INODE_UNINIT = 0x0001
BG_BLOCK_UNINIT = 0x0002
BG_INODE_ZEROED = 0x0004

# --------------------------------------------------------------------------
# Inodes (128-byte base, then i_extra_isize bytes of extra fields, then
# in-inode xattrs up to s_inode_size)

INODE = Layout("Inode", [
    ("i_mode", "H"),
    ("i_uid", "H"),
    ("i_size_lo", "I"),
    ("i_atime", "I"),
    ("i_ctime", "I"),
    ("i_mtime", "I"),
    ("i_dtime", "I"),
    ("i_gid", "H"),
    ("i_links_count", "H"),
    ("i_blocks_lo", "I"),
    ("i_flags", "I"),
    ("i_version_lo", "I"),  # osd1
    ("i_block", "60s"),  # extent tree root, block map, fast symlink or device
    ("i_generation", "I"),
    ("i_file_acl_lo", "I"),
    ("i_size_high", "I"),
    ("i_obso_faddr", "I"),
    # osd2 (Linux)
    ("i_blocks_high", "H"),
    ("i_file_acl_high", "H"),
    ("i_uid_high", "H"),
    ("i_gid_high", "H"),
    ("i_checksum_lo", "H"),
    ("i_reserved", "H"),
    # extra fields (i_extra_isize counts from here)
    ("i_extra_isize", "H"),
    ("i_checksum_hi", "H"),
    ("i_ctime_extra", "I"),
    ("i_mtime_extra", "I"),
    ("i_atime_extra", "I"),
    ("i_crtime", "I"),
    ("i_crtime_extra", "I"),
    ("i_version_hi", "I"),
    ("i_projid", "I"),
])
assert INODE.size == 160
INODE_BASE_SIZE = 128
INODE_EXTRA_ISIZE = INODE.size - INODE_BASE_SIZE  # 32, what mke2fs uses
INODE_CHECKSUM_LO_OFFSET = INODE.offsets["i_checksum_lo"]
INODE_CHECKSUM_HI_OFFSET = INODE.offsets["i_checksum_hi"]

# Reserved inode numbers
BAD_INO = 1
ROOT_INO = 2
USR_QUOTA_INO = 3
GRP_QUOTA_INO = 4
BOOT_LOADER_INO = 5
UNDEL_DIR_INO = 6
RESIZE_INO = 7
JOURNAL_INO = 8
EXCLUDE_INO = 9
REPLICA_INO = 10
FIRST_INO = 11  # lost+found in mke2fs's images

# i_flags
SECRM_FL = 0x00000001
UNRM_FL = 0x00000002
COMPR_FL = 0x00000004
SYNC_FL = 0x00000008
IMMUTABLE_FL = 0x00000010
APPEND_FL = 0x00000020
NODUMP_FL = 0x00000040
NOATIME_FL = 0x00000080
INDEX_FL = 0x00001000  # hashed (htree) directory
JOURNAL_DATA_FL = 0x00004000
DIRSYNC_FL = 0x00010000
TOPDIR_FL = 0x00020000
HUGE_FILE_FL = 0x00040000  # i_blocks counts file system blocks
EXTENTS_FL = 0x00080000
VERITY_FL = 0x00100000
EA_INODE_FL = 0x00200000
INLINE_DATA_FL = 0x10000000
PROJINHERIT_FL = 0x20000000
CASEFOLD_FL = 0x40000000

# Block map: i_block[0..11] direct, [12] indirect, [13] double, [14] triple.
NDIR_BLOCKS = 12
IND_BLOCK = 12
DIND_BLOCK = 13
TIND_BLOCK = 14
N_BLOCKS = 15

#: symlinks shorter than this live in i_block ("fast" symlinks).
FAST_SYMLINK_MAX = 60

# --------------------------------------------------------------------------
# Extent trees (root in i_block, deeper nodes in blocks with a checksum tail)

EXTENT_MAGIC = 0xF30A
EXTENT_HEADER = Layout("ExtentHeader", [
    ("eh_magic", "H"),
    ("eh_entries", "H"),
    ("eh_max", "H"),
    ("eh_depth", "H"),
    ("eh_generation", "I"),
])
EXTENT_INDEX = Layout("ExtentIndex", [
    ("ei_block", "I"),
    ("ei_leaf_lo", "I"),
    ("ei_leaf_hi", "H"),
    ("ei_unused", "H"),
])
EXTENT = Layout("Extent", [
    ("ee_block", "I"),
    ("ee_len", "H"),  # > 32768: uninitialized, length ee_len - 32768
    ("ee_start_hi", "H"),
    ("ee_start_lo", "I"),
])
EXTENT_TAIL = Layout("ExtentTail", [("eb_checksum", "I")])
#: longest initialized extent, in blocks.
EXTENT_MAX_LEN = 32768
#: entries in the root node held in i_block.
EXTENT_ROOT_MAX = (60 - EXTENT_HEADER.size) // EXTENT.size  # 4
#: the kernel refuses deeper trees.
EXTENT_MAX_DEPTH = 5

# --------------------------------------------------------------------------
# Directories

DIRENT = Layout("DirEntry2", [
    ("inode", "I"),
    ("rec_len", "H"),
    ("name_len", "B"),
    ("file_type", "B"),
])  # name follows, rec_len is a multiple of 4
DIR_NAME_MAX = 255

# file_type values (filetype feature)
FT_UNKNOWN = 0
FT_REG_FILE = 1
FT_DIR = 2
FT_CHRDEV = 3
FT_BLKDEV = 4
FT_FIFO = 5
FT_SOCK = 6
FT_SYMLINK = 7
FT_DIR_CSUM = 0xDE  # file_type of the metadata_csum dirent tail

#: the fake dirent at the end of each leaf block when metadata_csum is on.
DIR_TAIL = Layout("DirTail", [
    ("det_reserved_zero1", "I"),
    ("det_rec_len", "H"),  # 12
    ("det_reserved_zero2", "B"),
    ("det_reserved_ft", "B"),  # 0xDE
    ("det_checksum", "I"),
])

# htree (dir_index): block 0 of the directory is a dx_root, deeper index
# blocks are dx_nodes; both look like empty dirent blocks to old readers.
DX_ROOT_INFO = Layout("DxRootInfo", [
    ("reserved_zero", "I"),
    ("hash_version", "B"),
    ("info_length", "B"),  # 8
    ("indirect_levels", "B"),
    ("unused_flags", "B"),
])
#: the first dx entry's hash field holds (limit, count).
DX_COUNTLIMIT = Layout("DxCountLimit", [
    ("limit", "H"),
    ("count", "H"),
])
DX_ENTRY = Layout("DxEntry", [
    ("hash", "I"),
    ("block", "I"),
])
DX_TAIL = Layout("DxTail", [
    ("dt_reserved", "I"),
    ("dt_checksum", "I"),
])
#: byte offsets of the (limit, count) pair in a dx_root and a dx_node.
DX_ROOT_COUNT_OFFSET = 32  # "." (12) + ".." header (12) + dx_root_info (8)
DX_NODE_COUNT_OFFSET = 8  # one empty dirent header

# s_def_hash_version / dx_root_info.hash_version
HASH_LEGACY = 0
HASH_HALF_MD4 = 1
HASH_TEA = 2
HASH_LEGACY_UNSIGNED = 3
HASH_HALF_MD4_UNSIGNED = 4
HASH_TEA_UNSIGNED = 5
HASH_SIPHASH = 6

# --------------------------------------------------------------------------
# Extended attributes (in-inode after i_extra_isize, or in one block)

XATTR_MAGIC = 0xEA020000
XATTR_BLOCK_HEADER = Layout("XattrHeader", [
    ("h_magic", "I"),
    ("h_refcount", "I"),
    ("h_blocks", "I"),  # always 1
    ("h_hash", "I"),
    ("h_checksum", "I"),
    ("h_reserved", "12s"),
])
assert XATTR_BLOCK_HEADER.size == 32
#: in-inode xattrs start with only the magic.
XATTR_IBODY_HEADER = Layout("XattrIbodyHeader", [("h_magic", "I")])
XATTR_ENTRY = Layout("XattrEntry", [
    ("e_name_len", "B"),
    ("e_name_index", "B"),
    ("e_value_offs", "H"),  # from the first entry (in-inode) or block start
    ("e_value_inum", "I"),
    ("e_value_size", "I"),
    ("e_hash", "I"),
])  # name follows, entry padded to 4 bytes; a zero u32 ends the list
XATTR_PAD = 4

#: e_name_index -> name prefix. Index 2 and 3 are POSIX ACLs whose name is
#: empty after the prefix.
XATTR_PREFIXES: dict[int, str] = {
    1: "user.",
    2: "system.posix_acl_access",
    3: "system.posix_acl_default",
    4: "trusted.",
    6: "security.",
    7: "system.",
    8: "system.richacl",
}

# ext4's compact POSIX ACL encoding (the VFS uses version 2 with 8-byte
# entries; ext4 stores version 1 with 4-byte entries for the *_OBJ/MASK/OTHER
# tags and 8-byte ones for named users and groups).
EXT4_ACL_VERSION = 1
ACL_HEADER = Layout("AclHeader", [("a_version", "I")])
ACL_ENTRY_SHORT = Layout("AclEntryShort", [("e_tag", "H"), ("e_perm", "H")])
ACL_ENTRY = Layout("AclEntry", [("e_tag", "H"), ("e_perm", "H"), ("e_id", "I")])
ACL_USER_OBJ = 0x01
ACL_USER = 0x02
ACL_GROUP_OBJ = 0x04
ACL_GROUP = 0x08
ACL_MASK = 0x10
ACL_OTHER = 0x20
POSIX_ACL_XATTR_VERSION = 2

# --------------------------------------------------------------------------
# jbd2 journal (big-endian), in inode 8 for an internal journal

JBD2_MAGIC = 0xC03B3998
JBD2_DESCRIPTOR_BLOCK = 1
JBD2_COMMIT_BLOCK = 2
JBD2_SUPERBLOCK_V1 = 3
JBD2_SUPERBLOCK_V2 = 4
JBD2_REVOKE_BLOCK = 5
JBD2_FEATURE_INCOMPAT_REVOKE = 0x1
JBD2_FEATURE_INCOMPAT_64BIT = 0x2
JBD2_FEATURE_INCOMPAT_ASYNC_COMMIT = 0x4
JBD2_FEATURE_INCOMPAT_CSUM_V2 = 0x8
JBD2_FEATURE_INCOMPAT_CSUM_V3 = 0x10
JBD2_FEATURE_INCOMPAT_FAST_COMMIT = 0x20
JBD2_CRC32C_CHKSUM = 4

JOURNAL_SUPERBLOCK = Layout("JournalSuperblock", [
    ("h_magic", "I"),
    ("h_blocktype", "I"),
    ("h_sequence", "I"),
    ("s_blocksize", "I"),
    ("s_maxlen", "I"),
    ("s_first", "I"),
    ("s_sequence", "I"),
    ("s_start", "I"),
    ("s_errno", "i"),
    ("s_feature_compat", "I"),
    ("s_feature_incompat", "I"),
    ("s_feature_ro_compat", "I"),
    ("s_uuid", "16s"),
    ("s_nr_users", "I"),
    ("s_dynsuper", "I"),
    ("s_max_transaction", "I"),
    ("s_max_trans_data", "I"),
    ("s_checksum_type", "B"),
    ("s_padding2", "3s"),
    ("s_num_fc_blks", "I"),
    ("s_head", "I"),
    ("s_padding", "160s"),
    ("s_checksum", "I"),
    ("s_users", "768s"),
], endian=">")
assert JOURNAL_SUPERBLOCK.size == 1024

# ==========================================================================
# Reader additions (appended by the reader; the writer does not use these)
# ==========================================================================
# --- reader additions ---

#: i_flags: contents (and names, for a directory) are fscrypt-encrypted.
ENCRYPT_FL = 0x00000800
#: e_name_index of the fscrypt context: not an attribute users see.
XATTR_INDEX_ENCRYPTION = 9
#: the VFS's XATTR_SIZE_MAX: no attribute value is larger.
XATTR_SIZE_MAX = 65536
#: a posix_acl_xattr entry's id for the tags without one (ACL_UNDEFINED_ID).
ACL_UNDEFINED_ID = 0xFFFFFFFF
