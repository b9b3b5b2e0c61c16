"""SquashFS 4.0 on-disk structures (little-endian), as the Linux kernel reads them.

References: the kernel's Documentation/filesystems/squashfs.rst and
fs/squashfs/squashfs_fs.h; squashfs-tools' squashfs_fs.h.

Every structure is a ``Layout``: a precompiled ``struct.Struct`` that also
knows its field names, so ``LAYOUT.read(buf, off)`` gives a named tuple and
``LAYOUT.pack(*values)`` is the plain fast struct pack.
"""

from __future__ import annotations

import struct
from collections import namedtuple
from functools import cached_property


class Layout(struct.Struct):
    """A struct.Struct with named fields (dissect-style)."""

    def __init__(self, name: str, fields: list[tuple[str, str]]) -> None:
        super().__init__("<" + "".join(code for _, code in fields))
        self.name = name
        self.fields = tuple(field for field, _ in fields)

    @cached_property
    def tuple(self):
        # Built on first read/build: creating every structure's namedtuple
        # up front cost 1.3 ms of each squashfs conversion, which only packs.
        return namedtuple(self.name, self.fields)

    def read(self, buf, offset: int = 0):
        """Unpack at ``offset`` into a named tuple (raises struct.error when short)."""
        return self.tuple._make(self.unpack_from(buf, offset))

    def build(self, **values) -> bytes:
        """Pack from keyword arguments (every field required)."""
        return self.pack(*self.tuple(**values))


# --------------------------------------------------------------------------
# Constants

MAGIC = 0x73717368  # b"hsqs" read as little-endian u32
VERSION_MAJOR = 4
VERSION_MINOR = 0

SUPERBLOCK_SIZE = 96
METADATA_SIZE = 8192  # uncompressed size of a full metadata block
METADATA_UNCOMPRESSED = 0x8000  # bit in a metadata block's u16 header
METADATA_SIZE_MASK = 0x7FFF
DATA_UNCOMPRESSED = 1 << 24  # bit in a data/fragment block size word
DATA_SIZE_MASK = DATA_UNCOMPRESSED - 1

MIN_BLOCK_SIZE = 4096
MAX_BLOCK_SIZE = 1 << 20
PAD_SIZE = 4096  # image file padded to this (bytes_used stays exact)

INVALID_FRAGMENT = 0xFFFFFFFF
INVALID_XATTR = 0xFFFFFFFF
INVALID_TABLE = 0xFFFFFFFFFFFFFFFF  # absent optional table (xattr, export)

NAME_MAX = 256  # longest entry name
DIR_ENTRIES_MAX = 256  # entries one directory header may cover
DIR_INODE_DELTA_MIN = -32768  # dir entry inode number is an i16 delta
DIR_INODE_DELTA_MAX = 32767

# Superblock flags
FLAG_UNCOMPRESSED_INODES = 0x0001
FLAG_UNCOMPRESSED_DATA = 0x0002
FLAG_CHECK = 0x0004
FLAG_UNCOMPRESSED_FRAGMENTS = 0x0008
FLAG_NO_FRAGMENTS = 0x0010
FLAG_ALWAYS_FRAGMENTS = 0x0020
FLAG_DUPLICATES = 0x0040
FLAG_EXPORTABLE = 0x0080
FLAG_UNCOMPRESSED_XATTRS = 0x0100
FLAG_NO_XATTRS = 0x0200
FLAG_COMPRESSOR_OPTIONS = 0x0400
FLAG_UNCOMPRESSED_IDS = 0x0800

# Compressor ids
COMP_GZIP = 1
COMP_LZMA = 2
COMP_LZO = 3
COMP_XZ = 4
COMP_LZ4 = 5
COMP_ZSTD = 6
COMPRESSOR_NAMES = {COMP_GZIP: "gzip", COMP_LZMA: "lzma", COMP_LZO: "lzo", COMP_XZ: "xz",
                    COMP_LZ4: "lz4", COMP_ZSTD: "zstd"}
COMPRESSOR_IDS = {name: cid for cid, name in COMPRESSOR_NAMES.items()}

# Inode types; a directory entry always carries the basic type.
INODE_DIR = 1
INODE_FILE = 2
INODE_SYMLINK = 3
INODE_BLKDEV = 4
INODE_CHRDEV = 5
INODE_FIFO = 6
INODE_SOCKET = 7
INODE_LDIR = 8
INODE_LFILE = 9
INODE_LSYMLINK = 10
INODE_LBLKDEV = 11
INODE_LCHRDEV = 12
INODE_LFIFO = 13
INODE_LSOCKET = 14
EXTENDED_OFFSET = 7  # extended type = basic type + 7

# Entries per metadata block of the lookup tables
FRAGMENT_ENTRIES_PER_BLOCK = METADATA_SIZE // 16
EXPORT_ENTRIES_PER_BLOCK = METADATA_SIZE // 8
ID_ENTRIES_PER_BLOCK = METADATA_SIZE // 4
XATTR_ID_ENTRIES_PER_BLOCK = METADATA_SIZE // 16

# Xattr name prefixes (type field low byte) and the out-of-line value flag
XATTR_USER = 0
XATTR_TRUSTED = 1
XATTR_SECURITY = 2
XATTR_VALUE_OOL = 0x0100
XATTR_PREFIX_MASK = 0x00FF
XATTR_PREFIXES = {XATTR_USER: "user.", XATTR_TRUSTED: "trusted.",
                  XATTR_SECURITY: "security."}
XATTR_INLINE_MAX = 128  # mksquashfs: longer values go out of line
XATTR_OOL_SIZE = 8  # an out-of-line value is a u64 reference


def inode_ref(block: int, offset: int) -> int:
    """A 48-bit inode/metadata reference: block start (relative to its table)
    in the high bits, byte offset inside the uncompressed block in the low 16."""
    return (block << 16) | offset


def split_ref(ref: int) -> tuple[int, int]:
    return ref >> 16, ref & 0xFFFF


def encode_dev(major: int, minor: int) -> int:
    """The 32-bit device number of squashfs (Linux's old new_encode_dev)."""
    return (major << 8) | (minor & 0xFF) | ((minor & ~0xFF) << 12)


def decode_dev(rdev: int) -> tuple[int, int]:
    return (rdev >> 8) & 0xFFF, (rdev & 0xFF) | ((rdev >> 12) & 0xFFF00)


# --------------------------------------------------------------------------
# Superblock

SUPERBLOCK = Layout("Superblock", [
    ("magic", "I"),
    ("inode_count", "I"),
    ("mkfs_time", "I"),
    ("block_size", "I"),
    ("fragment_count", "I"),
    ("compression_id", "H"),
    ("block_log", "H"),
    ("flags", "H"),
    ("id_count", "H"),
    ("version_major", "H"),
    ("version_minor", "H"),
    ("root_inode_ref", "Q"),
    ("bytes_used", "Q"),
    ("id_table_start", "Q"),
    ("xattr_id_table_start", "Q"),
    ("inode_table_start", "Q"),
    ("directory_table_start", "Q"),
    ("fragment_table_start", "Q"),
    ("export_table_start", "Q"),
])
assert SUPERBLOCK.size == SUPERBLOCK_SIZE

METADATA_HEADER = Layout("MetadataHeader", [("size", "H")])

# --------------------------------------------------------------------------
# Inodes: a common header, then a type-specific body.

INODE_HEADER = Layout("InodeHeader", [
    ("inode_type", "H"),
    ("permissions", "H"),
    ("uid_idx", "H"),
    ("gid_idx", "H"),
    ("mtime", "I"),
    ("inode_number", "I"),
])

DIR_INODE = Layout("DirInode", [
    ("block_index", "I"),  # start of the listing's metadata block, from directory_table_start
    ("link_count", "I"),
    ("file_size", "H"),  # listing bytes + 3
    ("block_offset", "H"),
    ("parent_inode", "I"),
])

LDIR_INODE = Layout("ExtDirInode", [
    ("link_count", "I"),
    ("file_size", "I"),
    ("block_index", "I"),
    ("parent_inode", "I"),
    ("index_count", "H"),
    ("block_offset", "H"),
    ("xattr_idx", "I"),
])

FILE_INODE = Layout("FileInode", [
    ("blocks_start", "I"),
    ("fragment_index", "I"),
    ("block_offset", "I"),  # offset of the tail inside its fragment block
    ("file_size", "I"),
])  # followed by one u32 size word per data block

LFILE_INODE = Layout("ExtFileInode", [
    ("blocks_start", "Q"),
    ("file_size", "Q"),
    ("sparse", "Q"),  # bytes saved by sparse (all-zero) blocks
    ("link_count", "I"),
    ("fragment_index", "I"),
    ("block_offset", "I"),
    ("xattr_idx", "I"),
])

SYMLINK_INODE = Layout("SymlinkInode", [
    ("link_count", "I"),
    ("target_size", "I"),
])  # followed by the target; the extended form then adds a u32 xattr_idx

DEV_INODE = Layout("DevInode", [
    ("link_count", "I"),
    ("rdev", "I"),
])

LDEV_INODE = Layout("ExtDevInode", [
    ("link_count", "I"),
    ("rdev", "I"),
    ("xattr_idx", "I"),
])

IPC_INODE = Layout("IpcInode", [("link_count", "I")])

LIPC_INODE = Layout("ExtIpcInode", [
    ("link_count", "I"),
    ("xattr_idx", "I"),
])

XATTR_IDX = Layout("XattrIdx", [("xattr_idx", "I")])  # after an extended symlink's target

BLOCK_SIZE_WORD = Layout("BlockSize", [("size", "I")])

# --------------------------------------------------------------------------
# Directory table

DIR_HEADER = Layout("DirHeader", [
    ("count", "I"),  # entries - 1
    ("start_block", "I"),  # inode table block of every entry below
    ("inode_number", "I"),  # base for the entries' deltas
])

DIR_ENTRY = Layout("DirEntry", [
    ("offset", "H"),  # inode's offset inside start_block
    ("inode_offset", "h"),  # inode number - header inode_number
    ("inode_type", "H"),  # basic type
    ("name_size", "H"),  # len(name) - 1
])  # followed by the name

DIR_INDEX = Layout("DirIndex", [
    ("index", "I"),  # byte offset of a directory header inside the listing
    ("start_block", "I"),  # directory table block holding that header
    ("name_size", "I"),  # len(name) - 1
])  # followed by the first name under that header

# --------------------------------------------------------------------------
# Lookup tables

FRAGMENT_ENTRY = Layout("FragmentEntry", [
    ("start", "Q"),
    ("size", "I"),  # size word, DATA_UNCOMPRESSED bit when stored raw
    ("unused", "I"),
])

ID_ENTRY = Layout("IdEntry", [("id", "I")])
EXPORT_ENTRY = Layout("ExportEntry", [("inode_ref", "Q")])
TABLE_INDEX_ENTRY = Layout("TableIndex", [("block_start", "Q")])

# --------------------------------------------------------------------------
# Xattr table

XATTR_ENTRY = Layout("XattrEntry", [
    ("type", "H"),  # prefix id | XATTR_VALUE_OOL
    ("name_size", "H"),  # name without its prefix
])  # followed by the name, then an XATTR_VALUE

XATTR_VALUE = Layout("XattrValue", [("vsize", "I")])  # followed by the value (or a u64 ref)
XATTR_OOL_REF = Layout("XattrOolRef", [("ref", "Q")])

XATTR_ID = Layout("XattrId", [
    ("xattr", "Q"),  # reference to the first key/value pair
    ("count", "I"),
    ("size", "I"),  # sum of len(full name) + 1 + len(value): listxattr + getxattr sizes
])

XATTR_ID_TABLE = Layout("XattrIdTable", [
    ("xattr_table_start", "Q"),
    ("xattr_ids", "I"),
    ("unused", "I"),
])  # followed by the u64 index of the xattr id metadata blocks

# --------------------------------------------------------------------------
# Compressor options (a metadata block right after the superblock when
# FLAG_COMPRESSOR_OPTIONS is set)

GZIP_OPTIONS = Layout("GzipOptions", [
    ("compression_level", "I"),
    ("window_size", "H"),
    ("strategies", "H"),
])

XZ_OPTIONS = Layout("XzOptions", [
    ("dictionary_size", "I"),
    ("executable_filters", "I"),
])

LZ4_OPTIONS = Layout("Lz4Options", [
    ("version", "I"),
    ("flags", "I"),
])

ZSTD_OPTIONS = Layout("ZstdOptions", [("compression_level", "I")])

LZO_OPTIONS = Layout("LzoOptions", [
    ("algorithm", "I"),
    ("compression_level", "I"),
])

# xz executable_filters bits
XZ_FILTER_X86 = 0x01
XZ_FILTER_POWERPC = 0x02
XZ_FILTER_IA64 = 0x04
XZ_FILTER_ARM = 0x08
XZ_FILTER_ARMTHUMB = 0x10
XZ_FILTER_SPARC = 0x20
XZ_FILTER_NAMES = {"x86": XZ_FILTER_X86, "powerpc": XZ_FILTER_POWERPC, "ia64": XZ_FILTER_IA64,
                   "arm": XZ_FILTER_ARM, "armthumb": XZ_FILTER_ARMTHUMB,
                   "sparc": XZ_FILTER_SPARC}

LZ4_LEGACY = 1  # the only lz4 format version squashfs knows
LZ4_HC = 0x1  # lz4 flags bit: high compression

# --------------------------------------------------------------------------
# Reader additions (appended by the reader; keep writer definitions above)
