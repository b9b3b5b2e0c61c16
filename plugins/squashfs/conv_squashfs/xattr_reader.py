"""Extended attributes of a squashfs image: the xattr id table (one entry per
distinct set: where its key/value pairs start and how many) and the
key/value metadata table, with values stored inline or out of line."""

from __future__ import annotations

import os

from conv_squashfs.decompress import Decompressor
from conv_squashfs.layout import (
    INVALID_XATTR,
    XATTR_ENTRY,
    XATTR_ID,
    XATTR_ID_TABLE,
    XATTR_OOL_REF,
    XATTR_PREFIX_MASK,
    XATTR_PREFIXES,
    XATTR_VALUE,
    XATTR_VALUE_OOL,
)
from conv_squashfs.metadata_reader import MetadataTable, read_indexed_table
from convcore.blockdev import Volume
from convcore.errors import CorruptError

#: Linux's XATTR_NAME_MAX and XATTR_SIZE_MAX
XATTR_NAME_MAX = 255
XATTR_VALUE_MAX = 65536
#: names in one xattr set, and their values' total size: far past any real
#: file, and small enough that out-of-line values shared by every name
#: cannot balloon memory
XATTR_SET_MAX = 65536
XATTR_SET_BYTES_MAX = 64 << 20


class XattrReader:
    """The xattr sets of an image, decoded once each (inodes share them)."""

    def __init__(self, volume: Volume, decompress: Decompressor, id_table_start: int,
                 bytes_used: int) -> None:
        header = XATTR_ID_TABLE.read(
            volume.read_exact(XATTR_ID_TABLE.size, id_table_start, "xattr id table header"))
        if header.xattr_table_start >= id_table_start:
            raise CorruptError(f"xattr id table: key/value table start "
                               f"{header.xattr_table_start} does not come before "
                               f"{id_table_start}")
        raw = read_indexed_table(volume, decompress, id_table_start + XATTR_ID_TABLE.size,
                                 header.xattr_ids, XATTR_ID.size, bytes_used, "xattr id table")
        self.ids: list[tuple[int, int, int]] = list(XATTR_ID.iter_unpack(raw))
        self.table = MetadataTable(volume, decompress, header.xattr_table_start,
                                   id_table_start, "xattr table")
        self._sets: dict[int, dict[str, bytes]] = {}

    def get(self, index: int, what: str) -> dict[str, bytes]:
        """A copy of the set at ``index`` of the xattr id table."""
        if index == INVALID_XATTR:
            return {}
        found = self._sets.get(index)
        if found is None:
            found = self._sets[index] = self._read_set(index, what)
        return dict(found)

    def _read_set(self, index: int, what: str) -> dict[str, bytes]:
        if index >= len(self.ids):
            raise CorruptError(f"{what}: xattr index {index} is past the {len(self.ids)}-entry "
                               f"xattr id table")
        table = self.table
        ref, count, _ = self.ids[index]
        where = f"{what} xattr set {index}"
        if count > XATTR_SET_MAX:
            raise CorruptError(f"{where}: {count} xattrs in one set")
        pos = table.locate_ref(ref, where)
        out: dict[str, bytes] = {}
        total = 0
        for _ in range(count):
            kind, name_size = table.unpack(XATTR_ENTRY, pos, where)
            pos += XATTR_ENTRY.size
            prefix = XATTR_PREFIXES.get(kind & XATTR_PREFIX_MASK)
            if prefix is None or kind & ~(XATTR_PREFIX_MASK | XATTR_VALUE_OOL):
                raise CorruptError(f"{where}: unknown xattr type {kind:#x}")
            if name_size + len(prefix) > XATTR_NAME_MAX:
                raise CorruptError(f"{where}: xattr name of {name_size} bytes is too long")
            name = prefix + os.fsdecode(table.bytes(pos, name_size, where))
            pos += name_size
            (vsize,) = table.unpack(XATTR_VALUE, pos, where)
            pos += XATTR_VALUE.size
            if kind & XATTR_VALUE_OOL:
                if vsize != XATTR_OOL_REF.size:
                    raise CorruptError(f"{where}: out-of-line value reference of {vsize} bytes")
                (value_ref,) = table.unpack(XATTR_OOL_REF, pos, where)
                value = self._out_of_line(value_ref, where)
            else:
                if vsize > XATTR_VALUE_MAX:
                    raise CorruptError(f"{where}: xattr {name} value of {vsize} bytes is too big")
                value = table.bytes(pos, vsize, where)
            pos += vsize
            total += len(value)
            if total > XATTR_SET_BYTES_MAX:
                raise CorruptError(f"{where}: xattr values add up to more than "
                                   f"{XATTR_SET_BYTES_MAX} bytes")
            out[name] = value
        return out

    def _out_of_line(self, ref: int, where: str) -> bytes:
        table = self.table
        pos = table.locate_ref(ref, where)
        (vsize,) = table.unpack(XATTR_VALUE, pos, where)
        if vsize > XATTR_VALUE_MAX:
            raise CorruptError(f"{where}: out-of-line xattr value of {vsize} bytes is too big")
        return table.bytes(pos + XATTR_VALUE.size, vsize, where)
