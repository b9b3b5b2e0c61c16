"""conv-gpt: GPT and MBR partition tables.

Writes partitioned disks from volumes (``-> gpt ->`` in a chain, or several
partitions through ``conv build``) and picks a partition out of a disk for
reading (``gpt[part=2]``). Only registration lives here; the writer and reader
are imported when a stage runs.
"""

from __future__ import annotations

from collections.abc import Callable

from convcore import hookimpl
from convcore.format import VOLUME, Format, Option, PartitionRequest, parse_bool, parse_size

GPT_SIGNATURE = b"EFI PART"
MBR_SIGNATURE = b"\x55\xaa"
MBR_TABLE_OFFSET = 446
MBR_PROTECTIVE_TYPE = 0xEE


def _attrs(text: str) -> list[str]:
    return [a.strip() for a in text.split(",") if a.strip()]


def _request(plan, opts: dict) -> PartitionRequest:
    """The one partition of ``-> gpt ->`` in a chain; its type, when not
    given, is picked from the content by the writer."""
    return PartitionRequest(
        content=plan, name=opts.get("name") or "",
        type=opts.get("type") or None,
        attributes=opts.get("attrs") or (), bootable=bool(opts.get("bootable")))


def _layout_gpt(requests, opts, ctx):
    from conv_gpt.writer import layout_gpt
    return layout_gpt(requests, opts, ctx)


def _layout_mbr(requests, opts, ctx):
    from conv_gpt.writer import layout_mbr
    return layout_mbr(requests, opts, ctx)


def _encode_gpt(plan, opts, ctx):
    return _layout_gpt([_request(plan, opts)], opts, ctx)


def _encode_mbr(plan, opts, ctx):
    return _layout_mbr([_request(plan, opts)], opts, ctx)


def _decode_gpt(volume, opts, ctx):
    from conv_gpt.reader import read_gpt, select
    part = select(volume, read_gpt(volume).partitions, opts.get("part"), "gpt")
    return volume.window(part.start, part.size, f"partition {part.number}")


def _decode_mbr(volume, opts, ctx):
    from conv_gpt.reader import read_mbr, select
    part = select(volume, read_mbr(volume), opts.get("part"), "mbr")
    return volume.window(part.start, part.size, f"partition {part.number}")


def _partitions_gpt(volume):
    from conv_gpt.reader import read_gpt
    return read_gpt(volume).partitions


def _partitions_mbr(volume):
    from conv_gpt.reader import read_mbr
    return read_mbr(volume)


COMMON_OPTIONS = [
    Option("size", None, "disk size (e.g. 4G); default: just big enough", parse_size),
    Option("align", 1 << 20, "partition alignment in bytes", parse_size),
    Option("part", None, "reading: the partition to pick, by number (1-based), name or type"),
]

GPT_OPTIONS = [
    *COMMON_OPTIONS,
    Option("sector_size", 512, "logical sector size", int, choices=("512", "4096")),
    Option("type", None, "partition type: a name (esp, linux, root-x86-64, home, swap, ...) or "
           "a GUID; default: fits the content (a root partition for this machine)"),
    Option("name", "", "partition name (up to 36 UTF-16 characters)"),
    Option("entries", 128, "number of partition entries in the table", int),
    Option("attrs", (), "partition attributes, comma-separated: required, no-block-io, "
           "legacy-bios-bootable, grow-fs, read-only, no-auto, bit:N", _attrs),
    Option("bootable", False, "set the legacy BIOS bootable attribute", parse_bool),
]

MBR_OPTIONS = [
    *COMMON_OPTIONS,
    Option("type", None, "partition type: a name (linux, swap, esp, fat32, lvm, raid, ...) or "
           "a hex byte; default: linux (83)"),
    Option("bootable", False, "set the bootable flag", parse_bool),
]


@hookimpl
def conv_register_formats(register: Callable[[Format], None]) -> None:
    register(Format(
        name="gpt",
        help="GUID partition table: volumes to a partitioned disk, or a partition out of one",
        options=GPT_OPTIONS,
        encode=_encode_gpt, encode_kind=VOLUME,
        decode=_decode_gpt, decode_kind=VOLUME,
        layout=_layout_gpt, partitions=_partitions_gpt,
        layer="table",
    ))
    register(Format(
        name="mbr",
        help="MBR (DOS) partition table, with logical partitions past four",
        options=MBR_OPTIONS,
        encode=_encode_mbr, encode_kind=VOLUME,
        decode=_decode_mbr, decode_kind=VOLUME,
        layout=_layout_mbr, partitions=_partitions_mbr,
        layer="table",
    ))


def _mbr_types(head: bytes) -> list[int] | None:
    """The type bytes of a plausible MBR table in ``head``, else None."""
    if len(head) < 512 or head[510:512] != MBR_SIGNATURE:
        return None
    found = []
    for i in range(4):
        entry = head[MBR_TABLE_OFFSET + 16 * i:MBR_TABLE_OFFSET + 16 * (i + 1)]
        status, type_byte = entry[0], entry[4]
        if status not in (0, 0x80):
            return None
        if type_byte:
            start = int.from_bytes(entry[8:12], "little")
            sectors = int.from_bytes(entry[12:16], "little")
            if start == 0 or sectors == 0:
                return None
            found.append(type_byte)
    return found or None


def _looks_like_boot_sector(head: bytes) -> bool:
    """A FAT/NTFS/exFAT volume boot record also ends in 55aa."""
    if head[3:11] in (b"NTFS    ", b"EXFAT   "):
        return True
    return head[54:59] == b"FAT12" or head[54:59] == b"FAT16" or head[82:87] == b"FAT32"


@hookimpl
def conv_detect(head: bytes) -> str | None:
    if head[512:520] == GPT_SIGNATURE or head[4096:4104] == GPT_SIGNATURE:
        return "gpt"
    found = _mbr_types(head)
    if found is None or _looks_like_boot_sector(head):
        return None
    # A protective MBR whose GPT header is damaged: the gpt reader falls back
    # to the backup header.
    return "gpt" if MBR_PROTECTIVE_TYPE in found else "mbr"
