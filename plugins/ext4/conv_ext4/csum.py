"""The checksums ext4 metadata carries: crc32c (metadata_csum) and crc16 (gdt_csum).

ext4 chains crc32c without the final inversion the usual crc32c API applies,
so ``crc32c_raw(seed, data)`` is the kernel's ``ext4_chksum(seed, data)``.
"""

from __future__ import annotations

import crc32c as _crc32c

_MASK32 = 0xFFFFFFFF


def crc32c_raw(seed: int, data: bytes | bytearray | memoryview) -> int:
    """The kernel's ``crc32c_le(seed, data)``: no pre- or post-inversion."""
    return _crc32c.crc32c(data, value=seed ^ _MASK32) ^ _MASK32


def _crc16_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC16_TABLE = _crc16_table()


def crc16(crc: int, data: bytes | bytearray | memoryview) -> int:
    """e2fsprogs' ``ext2fs_crc16`` (reflected poly 0x8005), for group
    descriptors of filesystems with gdt_csum (uninit_bg) but no metadata_csum."""
    table = _CRC16_TABLE
    for b in bytes(data):
        crc = (crc >> 8) ^ table[(crc ^ b) & 0xFF]
    return crc & 0xFFFF
