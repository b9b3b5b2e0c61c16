"""Metadata blocks: the 8 KiB compressed pieces the inode, directory, id,
fragment and xattr tables are made of.

A table is a run of blocks, each a 2-byte header (bit 15: stored
uncompressed; low 15 bits: length on disk) and its payload. References into a
table are (byte offset of a block from the table start, offset inside the
decompressed block). ``MetadataTable`` decodes blocks front to back only as
far as references reach and keeps their payloads in one contiguous buffer,
so an entry that spans two blocks is a plain slice, and a reference that
does not land on a block start is caught.
"""

from __future__ import annotations

import struct

from conv_squashfs.decompress import Decompressor
from conv_squashfs.layout import (
    METADATA_HEADER,
    METADATA_SIZE,
    METADATA_SIZE_MASK,
    METADATA_UNCOMPRESSED,
    TABLE_INDEX_ENTRY,
)
from convcore.blockdev import Volume
from convcore.errors import CorruptError

#: a table bigger than this decompressed is an attack, not a filesystem
#: (it would be a hundred million inodes).
MAX_TABLE_BYTES = 1 << 30


def read_metadata_block(volume: Volume, decompress: Decompressor, pos: int, end: int,
                        what: str) -> tuple[bytes, int]:
    """The payload of the block at absolute ``pos`` and the position after it.
    The whole block must lie before ``end``."""
    if pos + 2 > end:
        raise CorruptError(f"{what}: metadata block at offset {pos} lies past the table end {end}")
    (header,) = METADATA_HEADER.unpack(volume.read_exact(2, pos, f"{what} block header"))
    length = header & METADATA_SIZE_MASK
    if length == 0 or length > METADATA_SIZE:
        raise CorruptError(f"{what}: metadata block at offset {pos} has bad length {length}")
    nxt = pos + 2 + length
    if nxt > end:
        raise CorruptError(f"{what}: metadata block at offset {pos} (+{length}) runs past "
                           f"the table end {end}")
    raw = volume.read_exact(length, pos + 2, f"{what} block")
    if header & METADATA_UNCOMPRESSED:
        return raw, nxt
    return decompress(raw, METADATA_SIZE, f"{what} metadata block at offset {pos}"), nxt


class MetadataTable:
    """The inode or directory table (or the xattr key/value table): blocks
    from ``start`` up to ``end``, decoded on demand into ``buf``."""

    def __init__(self, volume: Volume, decompress: Decompressor, start: int, end: int,
                 name: str) -> None:
        self.volume = volume
        self.decompress = decompress
        self.start = start
        self.end = end
        self.name = name
        #: every decoded payload, back to back
        self.buf = bytearray()
        #: block offset from the table start -> (position in buf, payload length)
        self._blocks: dict[int, tuple[int, int]] = {}
        self._next = 0  # offset from the table start of the next block to decode

    def _decode_next(self) -> None:
        pos = self.start + self._next
        payload, nxt = read_metadata_block(self.volume, self.decompress, pos, self.end, self.name)
        if len(self.buf) + len(payload) > MAX_TABLE_BYTES:
            raise CorruptError(f"{self.name} decompresses to more than {MAX_TABLE_BYTES} bytes")
        self._blocks[self._next] = (len(self.buf), len(payload))
        self.buf += payload
        self._next = nxt - self.start

    def locate(self, block: int, offset: int, what: str) -> int:
        """Position in ``buf`` of the reference (block, offset)."""
        while block >= self._next and block not in self._blocks:
            self._decode_next()
        found = self._blocks.get(block)
        if found is None:
            raise CorruptError(f"{what}: reference to {self.name} block {block} does not "
                               f"point at a metadata block")
        if offset >= found[1]:
            raise CorruptError(f"{what}: offset {offset} lies outside {self.name} block "
                               f"{block} of {found[1]} bytes")
        return found[0] + offset

    def locate_ref(self, ref: int, what: str) -> int:
        """Position in ``buf`` of a 64-bit reference (block << 16 | offset)."""
        return self.locate(ref >> 16, ref & 0xFFFF, what)

    def need(self, pos: int, length: int, what: str) -> None:
        """Make ``buf[pos:pos+length]`` available (an entry may span blocks)."""
        while len(self.buf) < pos + length:
            if self.start + self._next >= self.end:
                raise CorruptError(f"{what} runs past the end of the {self.name}")
            self._decode_next()

    def unpack(self, layout: struct.Struct, pos: int, what: str) -> tuple:
        self.need(pos, layout.size, what)
        return layout.unpack_from(self.buf, pos)

    def bytes(self, pos: int, length: int, what: str) -> bytes:
        self.need(pos, length, what)
        return bytes(self.buf[pos : pos + length])


def read_indexed_table(volume: Volume, decompress: Decompressor, index_start: int, count: int,
                       entry_size: int, end: int, name: str) -> bytes:
    """The id, fragment, export and xattr-id tables: ``count`` fixed-size
    entries in metadata blocks whose absolute positions are listed as u64s at
    ``index_start``. Returns the entries back to back."""
    total = count * entry_size
    nblocks = -(-total // METADATA_SIZE)
    if index_start + nblocks * 8 > end:
        raise CorruptError(f"{name} index at offset {index_start} ({count} entries) runs past "
                           f"the image end {end}")
    index = volume.read_exact(nblocks * 8, index_start, f"{name} index")
    out = bytearray()
    for i, (pos,) in enumerate(TABLE_INDEX_ENTRY.iter_unpack(index)):
        # Each block's payload is full except the last one.
        want = min(METADATA_SIZE, total - i * METADATA_SIZE)
        payload, _ = read_metadata_block(volume, decompress, pos, end, f"{name} block {i}")
        if len(payload) != want:
            raise CorruptError(f"{name} block {i} at offset {pos} holds {len(payload)} bytes, "
                               f"expected {want}")
        out += payload
    return bytes(out)
