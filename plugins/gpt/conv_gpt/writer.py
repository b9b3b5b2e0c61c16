"""Lay out partitioned disks: GPT and MBR writers.

``layout_gpt`` / ``layout_mbr`` compute everything (places, tables, CRCs)
before any byte is written, so a bad request fails early; the returned plan
writes each partition's content straight into its window of the target and
then the tables around them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from conv_gpt import layout, types
from conv_gpt.placement import Placed, check_geometry, place
from convcore.blockdev import Plan, Target
from convcore.errors import UsageError
from convcore.format import Context, PartitionRequest

DEFAULT_ALIGN = 1 << 20


class DiskPlan(Plan):
    """A partitioned disk: table blobs at fixed offsets plus partitions."""

    fs_type = None

    def __init__(self, size: int, tables: list[tuple[int, bytes]], partitions: list[Placed],
                 table: str) -> None:
        self.size = size
        self.tables = tables
        self.partitions = partitions
        self.table = table

    def write_to(self, target: Target) -> None:
        for part in self.partitions:
            content = part.request.content
            if content is not None and content.size:
                content.write_to(target.window(part.start, int(content.size)))
        for offset, blob in self.tables:
            target.pwrite(blob, offset)


@contextmanager
def _naming(table: str, part: Placed) -> Iterator[None]:
    """Prefix a type or attribute error with the table and the partition."""
    try:
        yield
    except UsageError as e:
        raise UsageError(f"{table}: {part.label}: {e}") from None


# --------------------------------------------------------------------------
# GPT


def _gpt_name(part: Placed) -> bytes:
    encoded = part.request.name.encode("utf-16-le")
    if len(encoded) > layout.GPT_NAME_CHARS * 2:
        raise UsageError(f"gpt: {part.label}: the name is longer than "
                         f"{layout.GPT_NAME_CHARS} UTF-16 characters")
    return encoded


def _partition_uuid(part: Placed, ctx: Context) -> uuid.UUID:
    if part.request.uuid:
        try:
            return uuid.UUID(str(part.request.uuid))
        except ValueError:
            raise UsageError(
                f"gpt: {part.label}: uuid {part.request.uuid!r} is not a GUID") from None
    return ctx.uuid("gpt", "partition", str(part.number), part.request.name)


def layout_gpt(requests: Sequence[PartitionRequest], opts: dict, ctx: Context) -> DiskPlan:
    sector = int(opts.get("sector_size") or 512)
    if sector not in (512, 4096):
        raise UsageError(f"gpt: sector_size={sector} (use 512 or 4096)")
    align = int(opts.get("align") or DEFAULT_ALIGN)
    check_geometry("gpt", sector, align)
    entries = int(opts.get("entries") or layout.GPT_DEFAULT_ENTRIES)
    if not layout.GPT_DEFAULT_ENTRIES <= entries <= 16384:
        raise UsageError(f"gpt: entries={entries} (use 128 to 16384)")
    if len(requests) > entries:
        raise UsageError(f"gpt: {len(requests)} partitions do not fit in {entries} entries "
                         "(raise entries=)")
    array_bytes = entries * layout.GPT_ENTRY_SIZE
    array_sectors = -(-array_bytes // sector)

    numbers = list(range(1, len(requests) + 1))
    placed, disk_size = place(
        "gpt", requests, numbers, [False] * len(requests), sector=sector, align=align,
        first_free=(2 + array_sectors) * sector, tail=(1 + array_sectors) * sector,
        disk_size=opts.get("size"))

    total = disk_size // sector
    last_lba = total - 1
    first_usable = 2 + array_sectors
    last_usable = last_lba - array_sectors - 1

    array = bytearray(array_sectors * sector)
    for i, part in enumerate(placed):
        req = part.request
        with _naming("gpt", part):
            type_guid = types.gpt_type(req.type or types.default_type(req.content, "gpt"))
            # GPT's "bootable" is the legacy BIOS bootable bit, as sfdisk has it.
            attributes = types.gpt_attributes(
                [*req.attributes, *(["legacy-bios-bootable"] if req.bootable else [])])
        entry = layout.GPT_ENTRY.pack(
            type_guid.bytes_le, _partition_uuid(part, ctx).bytes_le,
            part.start // sector, part.end // sector - 1, attributes, _gpt_name(part))
        array[i * layout.GPT_ENTRY_SIZE:(i + 1) * layout.GPT_ENTRY_SIZE] = entry
    array_crc = layout.crc32(memoryview(array)[:array_bytes])

    disk_guid = ctx.uuid("gpt", "disk").bytes_le
    primary = _gpt_header(1, last_lba, first_usable, last_usable, disk_guid, 2,
                          entries, array_crc, sector)
    backup = _gpt_header(last_lba, 1, first_usable, last_usable, disk_guid,
                         last_lba - array_sectors, entries, array_crc, sector)

    tables = [
        (0, _protective_mbr(total)),
        (sector, primary),
        (2 * sector, bytes(array)),
        ((last_lba - array_sectors) * sector, bytes(array)),
        (last_lba * sector, backup),
    ]
    return DiskPlan(disk_size, tables, placed, "gpt")


def _gpt_header(my_lba: int, alternate: int, first_usable: int, last_usable: int,
                disk_guid: bytes, entries_lba: int, entries: int, array_crc: int,
                sector: int) -> bytes:
    fields = [layout.GPT_SIGNATURE, layout.GPT_REVISION, layout.GPT_HEADER.size, 0, 0,
              my_lba, alternate, first_usable, last_usable, disk_guid, entries_lba,
              entries, layout.GPT_ENTRY_SIZE, array_crc]
    fields[3] = layout.crc32(layout.GPT_HEADER.pack(*fields))
    return layout.GPT_HEADER.pack(*fields).ljust(sector, b"\0")


def _protective_mbr(total_sectors: int) -> bytes:
    last = total_sectors - 1
    # UEFI 5.2.3: the ending CHS is 0xFFFFFF when the disk is too big for CHS
    chs_last = layout.chs(last) if last < 1024 * 255 * 63 else b"\xff\xff\xff"
    entry = layout.MBR_ENTRY.pack(0, layout.chs(1), layout.MBR_TYPE_PROTECTIVE, chs_last, 1,
                                  min(last, layout.MBR_MAX_SECTORS))
    return _mbr_sector([entry], b"\0\0\0\0")


def _mbr_sector(entries: list[bytes], disk_signature: bytes) -> bytes:
    sector = bytearray(layout.MBR_SIZE)
    sector[layout.MBR_DISK_SIGNATURE_OFFSET:layout.MBR_DISK_SIGNATURE_OFFSET + 4] = \
        disk_signature
    for i, entry in enumerate(entries):
        off = layout.MBR_TABLE_OFFSET + i * layout.MBR_ENTRY.size
        sector[off:off + layout.MBR_ENTRY.size] = entry
    sector[layout.MBR_BOOT_SIGNATURE_OFFSET:] = layout.MBR_BOOT_SIGNATURE
    return bytes(sector)


# --------------------------------------------------------------------------
# MBR

MBR_SECTOR = 512
MBR_EXTENDED_TYPE = 0x05


def layout_mbr(requests: Sequence[PartitionRequest], opts: dict, ctx: Context) -> DiskPlan:
    align = int(opts.get("align") or DEFAULT_ALIGN)
    check_geometry("mbr", MBR_SECTOR, align)
    # More than four: three primaries, then an extended partition holding
    # the rest as logical partitions 5, 6, ... (as fdisk numbers them).
    logical = len(requests) > layout.MBR_ENTRY_COUNT
    primaries = layout.MBR_ENTRY_COUNT - 1 if logical else len(requests)
    numbers = [i + 1 if i < primaries else layout.MBR_ENTRY_COUNT + 1 + (i - primaries)
               for i in range(len(requests))]
    ebr = [i >= primaries for i in range(len(requests))]
    placed, disk_size = place(
        "mbr", requests, numbers, ebr, sector=MBR_SECTOR, align=align,
        first_free=MBR_SECTOR, tail=0, disk_size=opts.get("size"))

    for part in placed:
        if (part.end // MBR_SECTOR) > layout.MBR_MAX_SECTORS:
            raise UsageError(f"mbr: {part.label} ends at byte {part.end}, past the 2 TiB an "
                             "MBR can address (use gpt)")

    def entry(part: Placed, base_lba: int) -> bytes:
        req = part.request
        with _naming("mbr", part):
            type_byte = types.mbr_type(req.type or types.default_type(req.content, "mbr"))
        if type_byte in types.MBR_EXTENDED or type_byte == layout.MBR_TYPE_PROTECTIVE:
            raise UsageError(f"mbr: {part.label}: type {type_byte:02x} is not for a data "
                             "partition")
        if req.attributes:
            raise UsageError(f"mbr: {part.label}: attributes are a GPT feature "
                             "(use bootable for MBR)")
        first = part.start // MBR_SECTOR
        last = part.end // MBR_SECTOR - 1
        return layout.MBR_ENTRY.pack(layout.MBR_STATUS_BOOTABLE if req.bootable else 0,
                                     layout.chs(first), type_byte, layout.chs(last),
                                     first - base_lba, last - first + 1)

    table_entries = [entry(p, 0) for p in placed[:primaries]]
    tables: list[tuple[int, bytes]] = []
    logicals = placed[primaries:]
    if logicals:
        ext_first = logicals[0].ebr // MBR_SECTOR
        ext_last = logicals[-1].end // MBR_SECTOR - 1
        table_entries.append(layout.MBR_ENTRY.pack(
            0, layout.chs(ext_first), MBR_EXTENDED_TYPE, layout.chs(ext_last), ext_first,
            ext_last - ext_first + 1))
        for i, part in enumerate(logicals):
            ebr_lba = part.ebr // MBR_SECTOR
            links = [entry(part, ebr_lba)]
            if i + 1 < len(logicals):
                nxt = logicals[i + 1]
                nxt_first = nxt.ebr // MBR_SECTOR
                nxt_last = nxt.end // MBR_SECTOR - 1
                # The link to the next EBR counts from the extended partition's start.
                links.append(layout.MBR_ENTRY.pack(
                    0, layout.chs(nxt_first), MBR_EXTENDED_TYPE, layout.chs(nxt_last),
                    nxt_first - ext_first, nxt_last - nxt_first + 1))
            tables.append((part.ebr, _mbr_sector(links, b"\0\0\0\0")))
    signature = ctx.random_bytes(4, "mbr", "disk-signature")
    tables.insert(0, (0, _mbr_sector(table_entries, signature)))
    return DiskPlan(disk_size, tables, placed, "mbr")
