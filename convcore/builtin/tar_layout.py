"""On-disk structures of tar archives: the 512-byte ustar/GNU header, numeric
fields, PAX extended records and the GNU sparse maps.

References: POSIX.1-2001 pax (ustar header and extended header records), GNU
tar's manual, "Tar archive format" and "Sparse formats" (old GNU 'S' headers,
PAX sparse 0.0, 0.1 and 1.0).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

BLOCK = 512
#: GNU tar pads archives to its default record of 20 blocks.
RECORD = 20 * BLOCK
ZERO_BLOCK = bytes(BLOCK)


class Header(NamedTuple):
    """The POSIX ustar header (the GNU header differs only after ``gname``)."""

    name: bytes
    mode: bytes
    uid: bytes
    gid: bytes
    size: bytes
    mtime: bytes
    chksum: bytes
    typeflag: bytes
    linkname: bytes
    magic: bytes
    version: bytes
    uname: bytes
    gname: bytes
    devmajor: bytes
    devminor: bytes
    prefix: bytes
    pad: bytes


HEADER = struct.Struct("100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s12s")
assert HEADER.size == BLOCK

CHKSUM_OFFSET = 148
CHKSUM_SIZE = 8

USTAR_MAGIC = b"ustar\x00"
USTAR_VERSION = b"00"
GNU_MAGIC = b"ustar "  # followed by version " \x00"

# Type flags.
REGTYPE = b"0"
AREGTYPE = b"\x00"
LNKTYPE = b"1"
SYMTYPE = b"2"
CHRTYPE = b"3"
BLKTYPE = b"4"
DIRTYPE = b"5"
FIFOTYPE = b"6"
CONTTYPE = b"7"
XHDTYPE = b"x"  # PAX extended header for the next member
XGLTYPE = b"g"  # PAX global extended header
GNU_LONGNAME = b"L"
GNU_LONGLINK = b"K"
GNU_SPARSE = b"S"  # old GNU sparse member
GNU_DUMPDIR = b"D"
GNU_VOLHDR = b"V"
GNU_MULTIVOL = b"M"

# Old GNU sparse header: 4 (offset, numbytes) pairs of 12-byte octal fields
# at byte 386, the "isextended" flag at 482 and the real size at 483.
GNU_SPARSE_OFFSET = 386
GNU_SPARSE_ENTRY = struct.Struct("12s12s")
GNU_SPARSE_HEADER_ENTRIES = 4
GNU_ISEXTENDED_OFFSET = 482
GNU_REALSIZE = struct.Struct("12s")
GNU_REALSIZE_OFFSET = 483
# Each extension block: 21 pairs, then the "isextended" flag at byte 504.
GNU_SPARSE_EXT_ENTRIES = 21
GNU_SPARSE_EXT_ISEXTENDED = 504


_SPACES_SUM = 0x20 * CHKSUM_SIZE
_HIGH_BYTES = bytes(range(128, 256))


def checksum(block: bytes | bytearray) -> int:
    """The header sum (unsigned bytes) with the checksum field as spaces."""
    return sum(block) - sum(block[CHKSUM_OFFSET : CHKSUM_OFFSET + CHKSUM_SIZE]) + _SPACES_SUM


def signed_checksum(block: bytes) -> int:
    """The sum old tars computed over signed chars (accepted on reading)."""
    raw = block[:CHKSUM_OFFSET] + block[CHKSUM_OFFSET + CHKSUM_SIZE :]
    high = len(raw) - len(raw.translate(None, _HIGH_BYTES))
    return checksum(block) - 256 * high


def parse_number(field: bytes) -> int:
    """An octal (NUL/space padded) or GNU base-256 numeric field.
    Raises ValueError for anything else."""
    if field and field[0] & 0x80:
        # base-256, two's complement when the first byte is 0xff
        value = int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
        if field[0] == 0xFF:
            value -= 1 << (8 * len(field) - 1)
        return value
    text = field.split(b"\x00", 1)[0].strip(b" ")
    if not text:
        return 0
    return int(text, 8)


def format_octal(value: int, width: int) -> bytes | None:
    """``value`` as a NUL-terminated octal field of ``width`` bytes, or None
    when it does not fit (the caller then uses a PAX record)."""
    if value < 0 or value >= _OCTAL_LIMIT[width]:
        return None
    return b"%0*o\x00" % (width - 1, value)


_OCTAL_LIMIT = {w: 8 ** (w - 1) for w in (8, 12)}


def cstring(field: bytes) -> bytes:
    return field.split(b"\x00", 1)[0]


def pax_record(key: str, value: bytes) -> bytes:
    """One ``"<len> key=value\\n"`` record; the length counts itself."""
    body = b" " + key.encode("utf-8") + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length = len(str(length)) + len(body)
    return str(length).encode() + body


def parse_pax(data: bytes, where: str) -> list[tuple[str, bytes]]:
    """The records of a PAX extended header, in order (sparse 0.0 repeats
    keys, so this is a list). ``where`` names the member for errors."""
    from convcore.errors import CorruptError

    records: list[tuple[str, bytes]] = []
    pos = 0
    end = len(data)
    while pos < end:
        if data[pos] == 0:  # NUL padding after the last record
            break
        space = data.find(b" ", pos, min(end, pos + 24))
        if space < 0:
            raise CorruptError(f"{where}: malformed PAX record at byte {pos}")
        try:
            length = int(data[pos:space])
        except ValueError:
            raise CorruptError(f"{where}: malformed PAX record length at byte {pos}") from None
        if length <= space - pos + 1 or pos + length > end or data[pos + length - 1] != 0x0A:
            raise CorruptError(f"{where}: PAX record at byte {pos} has a bad length {length}")
        record = data[space + 1 : pos + length - 1]
        key, eq, value = record.partition(b"=")
        if not eq:
            raise CorruptError(f"{where}: PAX record at byte {pos} has no '='")
        records.append((key.decode("utf-8", "surrogateescape"), value))
        pos += length
    return records
