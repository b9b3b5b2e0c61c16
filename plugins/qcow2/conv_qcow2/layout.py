"""qcow2 on-disk structures (qemu docs/interop/qcow2.txt). All fields big-endian."""

from __future__ import annotations

import struct
from typing import NamedTuple

MAGIC = b"QFI\xfb"

#: version 2 header (72 bytes); version 3 appends the feature words.
HEADER_V2 = struct.Struct(">4sIQIIQIIQQIIQ")
#: version 3 header fields after the v2 part (bytes 72..104).
HEADER_V3_EXT = struct.Struct(">QQQII")
#: byte 104: compression type, then 7 bytes of padding (header_length 112).
HEADER_COMPRESSION = struct.Struct(">B7x")

HEADER_V2_LENGTH = HEADER_V2.size  # 72
HEADER_V3_LENGTH = HEADER_V2.size + HEADER_V3_EXT.size  # 104
HEADER_V3_LENGTH_COMPRESSION = HEADER_V3_LENGTH + HEADER_COMPRESSION.size  # 112


class Header(NamedTuple):
    magic: bytes
    version: int
    backing_file_offset: int
    backing_file_size: int
    cluster_bits: int
    size: int
    crypt_method: int
    l1_size: int
    l1_table_offset: int
    refcount_table_offset: int
    refcount_table_clusters: int
    nb_snapshots: int
    snapshots_offset: int
    # version 3 (defaults are what a version 2 image implies)
    incompatible_features: int = 0
    compatible_features: int = 0
    autoclear_features: int = 0
    refcount_order: int = 4
    header_length: int = HEADER_V2_LENGTH
    compression_type: int = 0


#: header extension: type, length; data padded to 8 bytes; type 0 ends the list.
EXTENSION = struct.Struct(">II")
EXT_END = 0
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_NAMES = 0x6803F857
EXT_BITMAPS = 0x23852875
EXT_ENCRYPTION = 0x0537BE77
EXT_DATA_FILE = 0x44415441

# incompatible feature bits
INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
INCOMPAT_KNOWN = (INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE
                  | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2)

COMPRESSION_ZLIB = 0
COMPRESSION_ZSTD = 1
COMPRESSION_NAMES = {COMPRESSION_ZLIB: "zlib", COMPRESSION_ZSTD: "zstd"}

#: feature name table entries qemu writes: type (0 incompat, 1 compat, 2 autoclear),
#: bit number, 46-byte name.
FEATURE_NAME = struct.Struct(">BB46s")
FEATURE_NAMES_V3 = (
    (0, 0, b"dirty bit"),
    (0, 1, b"corrupt bit"),
    (0, 2, b"external data file"),
    (0, 3, b"compression type"),
    (0, 4, b"extended L2 entries"),
    (1, 0, b"lazy refcounts"),
    (2, 0, b"bitmaps"),
    (2, 1, b"raw external data"),
)

# L1 / L2 entries
L1_OFFSET_MASK = 0x00FFFFFFFFFFFE00
L2_OFFSET_MASK = 0x00FFFFFFFFFFFE00
OFLAG_COPIED = 1 << 63
OFLAG_COMPRESSED = 1 << 62
OFLAG_ZERO = 1 << 0

#: extended L2 entries: 32 subclusters, bitmap: low 32 bits allocated, high 32 zero.
SUBCLUSTERS = 32

#: qemu refuses L1 tables above 32 MiB (QCOW_MAX_L1_SIZE); so do we.
MAX_L1_BYTES = 32 << 20
#: cluster sizes qemu accepts: 512 B .. 2 MiB.
MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21
#: backing file names are at most 1023 bytes in qemu.
MAX_BACKING_NAME = 1023

SECTOR = 512


def compressed_layout(cluster_bits: int) -> tuple[int, int]:
    """(csize_shift, csize_mask) of a compressed L2 descriptor: the host
    offset occupies the low ``62 - (cluster_bits - 8)`` bits, then the count
    of additional 512-byte sectors."""
    shift = 62 - (cluster_bits - 8)
    return shift, (1 << (cluster_bits - 8)) - 1
