"""Directory listings: runs of headers (entry count, inode table block, base
inode number) each followed by up to 256 entries (inode offset, inode number
delta, basic type, name)."""

from __future__ import annotations

import os

from conv_squashfs.inode_reader import BASIC_KIND, Inode
from conv_squashfs.layout import DIR_ENTRIES_MAX, DIR_ENTRY, DIR_HEADER, METADATA_SIZE, NAME_MAX
from conv_squashfs.metadata_reader import MetadataTable
from convcore.errors import CorruptError
from convcore.tree import Kind

#: (name, inode reference, kind, inode number)
DirEntry = tuple[str, int, Kind, int]


def read_listing(table: MetadataTable, inode: Inode, what: str) -> list[DirEntry]:
    """The entries of directory ``inode`` from the directory table; names are
    checked (no ``/``, NUL, ``.``, ``..`` or repeats)."""
    out: list[DirEntry] = []
    size = inode.listing_size
    if size == 0:
        return out
    where = f"directory {what or '/'} (inode {inode.number})"
    pos = table.locate(inode.listing_block, inode.listing_offset, where)
    end = pos + size
    table.need(pos, size, where)
    buf = table.buf
    seen: set[str] = set()
    while pos < end:
        if pos + DIR_HEADER.size > end:
            raise CorruptError(f"{where}: listing ends inside a header")
        count, start_block, base = DIR_HEADER.unpack_from(buf, pos)
        pos += DIR_HEADER.size
        if count >= DIR_ENTRIES_MAX:
            raise CorruptError(f"{where}: header claims {count + 1} entries (at most "
                               f"{DIR_ENTRIES_MAX})")
        for _ in range(count + 1):
            if pos + DIR_ENTRY.size > end:
                raise CorruptError(f"{where}: listing ends inside an entry")
            offset, delta, itype, name_size = DIR_ENTRY.unpack_from(buf, pos)
            pos += DIR_ENTRY.size
            name_size += 1
            if name_size > NAME_MAX or pos + name_size > end:
                raise CorruptError(f"{where}: entry name of {name_size} bytes runs past "
                                   f"the listing")
            raw = bytes(buf[pos : pos + name_size])
            pos += name_size
            kind = BASIC_KIND.get(itype)
            if kind is None:
                raise CorruptError(f"{where}: entry {raw!r} has unknown type {itype}")
            if b"/" in raw or b"\0" in raw or raw in (b".", b".."):
                raise CorruptError(f"{where}: bad entry name {raw!r}")
            name = os.fsdecode(raw)
            if name in seen:
                raise CorruptError(f"{where}: entry {name!r} appears twice")
            seen.add(name)
            if offset >= METADATA_SIZE:
                raise CorruptError(f"{where}: entry {name!r} has inode offset {offset}")
            out.append((name, start_block << 16 | offset, kind, base + delta))
    return out
