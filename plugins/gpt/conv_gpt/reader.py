"""Read GPT and MBR partition tables, and pick a partition out of a disk.

Every image is hostile: each offset, count and size is checked against the
disk before use, the GPT entry array is capped, and the chain of MBR extended
boot records is followed with a loop check and a bound on its length.
"""

from __future__ import annotations

import uuid
import weakref
from dataclasses import dataclass

from conv_gpt import layout, types
from convcore.blockdev import Volume
from convcore.errors import CorruptError, NotFoundError, UsageError
from convcore.format import PartitionInfo
from convcore.plugins import warn

GPT_SECTOR_SIZES = (512, 4096)
#: no real disk has more; each costs a 128-byte-or-larger entry to parse
GPT_MAX_ENTRIES = 16384
GPT_MAX_ENTRY_SIZE = 4096
GPT_MAX_ARRAY_BYTES = 4 << 20
#: logical partitions followed in an extended partition before giving up
MBR_MAX_LOGICAL = 256
#: bytes of each partition handed to format detection
DETECT_HEAD = 64 << 10


@dataclass
class GptTable:
    sector_size: int
    header: layout.GptHeader
    partitions: list[PartitionInfo]
    used_backup: bool


class _BadHeader(Exception):
    """Why one copy of the GPT header or its entry array is unusable."""


# Parse each volume once: the warning about a corrupt primary header is said
# once, however often conv info, detection and decode look at the disk.
_gpt_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def read_gpt(volume: Volume) -> GptTable:
    try:
        return _gpt_cache[volume]
    except (KeyError, TypeError):
        pass
    table = _read_gpt(volume)
    try:
        _gpt_cache[volume] = table
    except TypeError:
        pass
    return table


def _read_gpt(volume: Volume) -> GptTable:
    sector = _gpt_sector_size(volume)
    total = volume.size // sector
    try:
        header, array = _read_gpt_header(volume, sector, 1)
        used_backup = False
    except _BadHeader as primary_error:
        candidates = [total - 1]
        try:
            alternate = layout.GptHeader._make(layout.GPT_HEADER.unpack(
                volume.read_exact(layout.GPT_HEADER.size, sector))).alternate_lba
            if 1 < alternate < total and alternate not in candidates:
                candidates.append(alternate)
        except CorruptError:  # the primary is unreadable; only the last sector is left
            pass
        backup_error: _BadHeader | None = None
        for lba in candidates:
            try:
                header, array = _read_gpt_header(volume, sector, lba)
                break
            except _BadHeader as e:
                backup_error = backup_error or e
        else:
            raise CorruptError(f"GPT: primary header: {primary_error}; backup header: "
                               f"{backup_error}") from None
        warn("primary GPT header is corrupt, using the backup")
        used_backup = True
    return GptTable(sector, header, _gpt_partitions(volume, sector, header, array), used_backup)


def _gpt_sector_size(volume: Volume) -> int:
    for sector in GPT_SECTOR_SIZES:
        if volume.size >= 2 * sector and volume.pread(8, sector) == layout.GPT_SIGNATURE:
            return sector
    # The primary header is gone: look for a backup at the end of the disk.
    for sector in GPT_SECTOR_SIZES:
        if volume.size >= 3 * sector and volume.size % sector == 0 and \
                volume.pread(8, volume.size - sector) == layout.GPT_SIGNATURE:
            return sector
    raise CorruptError("GPT: no GPT header at LBA 1 or at the end of the disk")


def _read_gpt_header(volume: Volume, sector: int, lba: int) -> tuple[layout.GptHeader, bytes]:
    try:
        return _check_gpt_header(volume, sector, lba)
    except CorruptError as e:  # a short or unreadable image: this copy is unusable
        raise _BadHeader(str(e)) from None


def _check_gpt_header(volume: Volume, sector: int, lba: int) -> tuple[layout.GptHeader, bytes]:
    total = volume.size // sector
    if not 0 < lba < total:
        raise _BadHeader(f"LBA {lba} lies outside the {total}-sector disk")
    raw = volume.read_exact(sector, lba * sector, f"GPT header at LBA {lba}")
    header = layout.GptHeader._make(layout.GPT_HEADER.unpack_from(raw))
    if header.signature != layout.GPT_SIGNATURE:
        raise _BadHeader(f"no 'EFI PART' signature at LBA {lba}")
    if not layout.GPT_HEADER.size <= header.header_size <= sector:
        raise _BadHeader(f"header size {header.header_size} at LBA {lba} is invalid")
    check = bytearray(raw[:header.header_size])
    check[layout.GPT_HEADER_CRC_OFFSET:layout.GPT_HEADER_CRC_OFFSET + 4] = b"\0\0\0\0"
    if layout.crc32(check) != header.header_crc32:
        raise _BadHeader(f"header CRC mismatch at LBA {lba}")
    if header.my_lba != lba:
        raise _BadHeader(f"header at LBA {lba} says it is at LBA {header.my_lba}")
    if (header.entry_size < layout.GPT_ENTRY_SIZE or header.entry_size > GPT_MAX_ENTRY_SIZE
            or header.entry_size % layout.GPT_ENTRY_SIZE):
        raise _BadHeader(f"partition entry size {header.entry_size} is invalid")
    array_bytes = header.num_entries * header.entry_size
    if not 0 < header.num_entries <= GPT_MAX_ENTRIES or array_bytes > GPT_MAX_ARRAY_BYTES:
        raise _BadHeader(f"absurd partition entry count {header.num_entries} "
                         f"of {header.entry_size} bytes")
    if max(header.alternate_lba, header.last_usable_lba) >= total:
        raise _BadHeader(f"the header at LBA {lba} describes a disk of "
                         f"{max(header.alternate_lba, header.last_usable_lba) + 1} sectors, "
                         f"the image has {total} (truncated?)")
    if header.first_usable_lba > header.last_usable_lba + 1:
        raise _BadHeader(f"usable area LBA {header.first_usable_lba}..{header.last_usable_lba} "
                         f"does not fit the {total}-sector disk")
    array_sectors = -(-array_bytes // sector)
    if not 0 < header.entries_lba <= total - array_sectors:
        raise _BadHeader(f"partition entries at LBA {header.entries_lba} (+{array_sectors} "
                         f"sectors) lie outside the {total}-sector disk")
    # The tables must stay outside the area partitions may use.
    covers_tables = (header.first_usable_lba < 2  # LBA 0 and 1: protective MBR, header
                     or header.first_usable_lba <= lba <= header.last_usable_lba
                     or (header.entries_lba <= header.last_usable_lba
                         and header.entries_lba + array_sectors > header.first_usable_lba))
    if covers_tables:
        raise _BadHeader(f"usable area LBA {header.first_usable_lba}.."
                         f"{header.last_usable_lba} covers the partition table")
    array = volume.read_exact(array_bytes, header.entries_lba * sector, "GPT partition entries")
    if layout.crc32(array) != header.entries_crc32:
        raise _BadHeader(f"partition entry array CRC mismatch (entries at LBA "
                         f"{header.entries_lba})")
    return header, array


def _gpt_partitions(volume: Volume, sector: int, header: layout.GptHeader,
                    array: bytes) -> list[PartitionInfo]:
    found: list[PartitionInfo] = []
    total = volume.size // sector
    for index in range(header.num_entries):
        entry = layout.GptEntry._make(
            layout.GPT_ENTRY.unpack_from(array, index * header.entry_size))
        if entry.type_guid == bytes(16):
            continue
        number = index + 1
        if not (header.first_usable_lba <= entry.first_lba <= entry.last_lba
                <= header.last_usable_lba) or entry.last_lba >= total:
            raise CorruptError(
                f"GPT partition {number}: LBA {entry.first_lba}..{entry.last_lba} lies outside "
                f"the usable area {header.first_usable_lba}..{header.last_usable_lba}")
        type_guid = uuid.UUID(bytes_le=entry.type_guid)
        name = entry.name.decode("utf-16-le", "replace").split("\0", 1)[0]
        found.append(PartitionInfo(
            number=number, start=entry.first_lba * sector,
            size=(entry.last_lba - entry.first_lba + 1) * sector,
            type_name=types.gpt_type_name(type_guid), type_id=str(type_guid),
            uuid=str(uuid.UUID(bytes_le=entry.unique_guid)), name=name,
            attributes=types.gpt_attribute_names(entry.attributes)))
    _check_overlaps("GPT", found)
    return found


def _check_overlaps(table: str, parts: list[PartitionInfo]) -> None:
    ordered = sorted(parts, key=lambda p: p.start)
    for a, b in zip(ordered, ordered[1:], strict=False):
        if b.start < a.start + a.size:
            raise CorruptError(f"{table} partitions {a.number} and {b.number} overlap "
                               f"(at byte {b.start})")


# --------------------------------------------------------------------------
# MBR


def _mbr_entries(raw: bytes) -> list[layout.MbrEntry]:
    return [layout.MbrEntry._make(layout.MBR_ENTRY.unpack_from(
        raw, layout.MBR_TABLE_OFFSET + i * layout.MBR_ENTRY.size))
        for i in range(layout.MBR_ENTRY_COUNT)]


def read_mbr(volume: Volume) -> list[PartitionInfo]:
    raw = volume.read_exact(layout.MBR_SIZE, 0, "MBR")
    if raw[layout.MBR_BOOT_SIGNATURE_OFFSET:] != layout.MBR_BOOT_SIGNATURE:
        raise CorruptError("MBR: no 55aa boot signature in sector 0")
    sectors_on_disk = volume.size // layout.MBR_SIZE
    signature = int.from_bytes(raw[layout.MBR_DISK_SIGNATURE_OFFSET:
                                   layout.MBR_DISK_SIGNATURE_OFFSET + 4], "little")
    found: list[PartitionInfo] = []
    extended: tuple[int, int] | None = None

    def add(number: int, entry: layout.MbrEntry, first: int) -> None:
        if first + entry.sectors > sectors_on_disk:
            raise CorruptError(
                f"MBR partition {number}: sectors {first}..{first + entry.sectors - 1} lie "
                f"past the end of the {sectors_on_disk}-sector disk")
        if first == 0:
            raise CorruptError(f"MBR partition {number} starts at sector 0 (the MBR itself)")
        found.append(PartitionInfo(
            number=number, start=first * layout.MBR_SIZE, size=entry.sectors * layout.MBR_SIZE,
            type_name=types.mbr_type_name(entry.type), type_id=f"{entry.type:02x}",
            uuid=f"{signature:08x}-{number:02x}",
            attributes=["bootable"] if entry.status & layout.MBR_STATUS_BOOTABLE else []))

    for slot, entry in enumerate(_mbr_entries(raw), start=1):
        if entry.type == 0 or entry.sectors == 0:
            continue
        if entry.type == layout.MBR_TYPE_PROTECTIVE:
            raise UsageError("MBR: this is a GPT disk's protective MBR (read it with gpt)")
        if entry.type in types.MBR_EXTENDED:
            if extended is not None:
                raise CorruptError(f"MBR: partition {slot} is a second extended partition")
            if entry.lba_first == 0 or entry.lba_first + entry.sectors > sectors_on_disk:
                raise CorruptError(f"MBR: extended partition {slot} lies outside the disk")
            extended = (entry.lba_first, entry.sectors)
            continue
        add(slot, entry, entry.lba_first)

    if extended is not None:
        _read_logical(volume, extended, add)
    _check_overlaps("MBR", found)
    return found


def _read_logical(volume: Volume, extended: tuple[int, int], add) -> None:
    ext_first, ext_sectors = extended
    ext_end = ext_first + ext_sectors
    ebr_lba = ext_first
    seen: set[int] = set()
    number = layout.MBR_ENTRY_COUNT + 1
    while True:
        if ebr_lba in seen:
            raise CorruptError(f"MBR: the chain of extended boot records loops at sector "
                               f"{ebr_lba}")
        if len(seen) >= MBR_MAX_LOGICAL:
            raise CorruptError(f"MBR: more than {MBR_MAX_LOGICAL} logical partitions")
        seen.add(ebr_lba)
        if not ext_first <= ebr_lba < ext_end:
            raise CorruptError(f"MBR: extended boot record at sector {ebr_lba} lies outside "
                               "the extended partition")
        raw = volume.read_exact(layout.MBR_SIZE, ebr_lba * layout.MBR_SIZE,
                                f"extended boot record at sector {ebr_lba}")
        if raw[layout.MBR_BOOT_SIGNATURE_OFFSET:] != layout.MBR_BOOT_SIGNATURE:
            raise CorruptError(f"MBR: extended boot record at sector {ebr_lba} has no 55aa "
                               "signature")
        data, link = _mbr_entries(raw)[:2]
        if data.type != 0 and data.sectors:
            first = ebr_lba + data.lba_first
            if data.lba_first == 0 or first + data.sectors > ext_end:
                raise CorruptError(f"MBR partition {number} lies outside its extended partition")
            add(number, data, first)
            number += 1
        if link.type not in types.MBR_EXTENDED or link.sectors == 0:
            return
        ebr_lba = ext_first + link.lba_first


# --------------------------------------------------------------------------
# Picking a partition


def describe(part: PartitionInfo) -> str:
    from conv_gpt.placement import human
    name = f" {part.name!r}" if part.name else ""
    return f"{part.number}{name} ({part.type_name}, {human(part.size)})"


def select(volume: Volume, parts: list[PartitionInfo], part: str | None,
           table: str) -> PartitionInfo:
    """``part=N``, ``part=NAME`` (partition or type name), or the one partition
    holding a filesystem conv reads, or the root partition."""
    listing = "; ".join(describe(p) for p in parts) or "none"
    if not parts:
        raise NotFoundError(f"{table}: the disk has no partitions")
    if part is not None and str(part).strip():
        key = str(part).strip()
        if key.isdigit():
            for p in parts:
                if p.number == int(key):
                    return p
            raise NotFoundError(f"{table}: no partition {key} (partitions: {listing})")
        named = [p for p in parts if p.name == key]
        if not named:
            named = [p for p in parts if _type_matches(p, key, table)]
        if len(named) == 1:
            return named[0]
        if not named:
            raise NotFoundError(f"{table}: no partition named or typed {key!r} "
                                f"(partitions: {listing})")
        raise UsageError(f"{table}: {len(named)} partitions match {key!r}, pick one with "
                         f"part=N (partitions: {listing})")
    if len(parts) == 1:
        return parts[0]
    with_fs = [p for p in parts if _holds_filesystem(volume, p)]
    if len(with_fs) == 1:
        return with_fs[0]
    roots = [p for p in (with_fs or parts) if p.type_name.startswith("root-")]
    if len(roots) == 1:
        return roots[0]
    raise UsageError(f"{table}: which partition? pick one with part=N or part=NAME "
                     f"(partitions: {listing})")


def _type_matches(part: PartitionInfo, key: str, table: str) -> bool:
    if part.type_name == key.lower():
        return True
    try:
        if table == "gpt":
            return str(types.gpt_type(key)) == part.type_id
        return f"{types.mbr_type(key):02x}" == part.type_id
    except UsageError:
        return False


def _holds_filesystem(volume: Volume, part: PartitionInfo) -> bool:
    from convcore.plugins import registry
    head = volume.pread(min(DETECT_HEAD, part.size), part.start)
    fmt = registry().detect(head)
    return fmt is not None and fmt.layer == "filesystem"
