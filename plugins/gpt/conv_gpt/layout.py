"""On-disk structures of MBR and GPT partition tables (little-endian).

References: UEFI specification 2.10, chapter 5 (MBR, protective MBR, GPT
header and partition entry array).
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

# --------------------------------------------------------------------------
# MBR (and each EBR of an extended partition chain): 512 bytes at LBA 0

MBR_SIZE = 512
MBR_DISK_SIGNATURE_OFFSET = 440
MBR_TABLE_OFFSET = 446
MBR_ENTRY_COUNT = 4
MBR_BOOT_SIGNATURE_OFFSET = 510
MBR_BOOT_SIGNATURE = b"\x55\xaa"
MBR_STATUS_BOOTABLE = 0x80
MBR_TYPE_PROTECTIVE = 0xEE
#: largest start or size in sectors an MBR entry can hold
MBR_MAX_SECTORS = 0xFFFFFFFF

MBR_ENTRY = struct.Struct("<B3sB3sII")


class MbrEntry(NamedTuple):
    status: int  # 0x80 bootable, 0 not
    chs_first: bytes
    type: int
    chs_last: bytes
    lba_first: int  # relative to the table's base (EBRs: see the reader)
    sectors: int


# --------------------------------------------------------------------------
# GPT header: LBA 1 (primary) and the disk's last LBA (backup)

GPT_SIGNATURE = b"EFI PART"
GPT_REVISION = 0x00010000
GPT_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")
GPT_HEADER_CRC_OFFSET = 16
GPT_DEFAULT_ENTRIES = 128
GPT_ENTRY_SIZE = 128
#: the spec's minimum for the entry array: 16 KiB
GPT_MIN_ENTRY_ARRAY = 16384


class GptHeader(NamedTuple):
    signature: bytes
    revision: int
    header_size: int
    header_crc32: int
    reserved: int
    my_lba: int
    alternate_lba: int
    first_usable_lba: int
    last_usable_lba: int
    disk_guid: bytes  # mixed-endian (uuid.UUID.bytes_le)
    entries_lba: int
    num_entries: int
    entry_size: int
    entries_crc32: int


# --------------------------------------------------------------------------
# GPT partition entry: 128 bytes each in the entry array

GPT_ENTRY = struct.Struct("<16s16sQQQ72s")
GPT_NAME_CHARS = 36


class GptEntry(NamedTuple):
    type_guid: bytes  # mixed-endian
    unique_guid: bytes  # mixed-endian
    first_lba: int
    last_lba: int  # inclusive
    attributes: int
    name: bytes  # UTF-16LE, NUL padded


def crc32(data: bytes | bytearray | memoryview) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def chs(lba: int) -> bytes:
    """The legacy CHS address of ``lba`` (255 heads, 63 sectors), capped at
    the largest value as every current tool does past 8 GiB."""
    heads, sectors = 255, 63
    cylinder, rest = divmod(lba, heads * sectors)
    if cylinder > 1023:
        return b"\xfe\xff\xff"
    head, sector = divmod(rest, sectors)
    sector += 1
    return bytes((head, sector | ((cylinder >> 2) & 0xC0), cylinder & 0xFF))
