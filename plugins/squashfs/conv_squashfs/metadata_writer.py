"""Writing squashfs metadata: 8 KiB blocks, each compressed when that helps.

The inode, directory and xattr tables are streams of metadata blocks that
other structures point into with (block start, offset) references; the
lookup tables (fragments, ids, export, xattr ids) are metadata blocks plus a
u64 index of where each block starts.
"""

from __future__ import annotations

from conv_squashfs import layout
from conv_squashfs.compressors import Codec

_HEADER = layout.METADATA_HEADER
_BLOCK = layout.METADATA_SIZE


class MetadataWriter:
    """An in-memory metadata stream; full blocks are compressed as they fill,
    so the start of every block already written is known (references into a
    table need it before the table is finished)."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self.out = bytearray()
        self.pending = bytearray()
        self._starts: list[int] = []  # compressed start of each flushed block

    @property
    def ref(self) -> int:
        """Reference (block start << 16 | offset) of the next byte written."""
        return (len(self.out) << 16) | len(self.pending)

    @property
    def position(self) -> int:
        """Uncompressed stream position of the next byte written."""
        return len(self._starts) * _BLOCK + len(self.pending)

    def block_start(self, position: int) -> int:
        """Compressed start of the block holding an already-written stream
        position (the current, unflushed block starts at the end of ``out``)."""
        k = position // _BLOCK
        return self._starts[k] if k < len(self._starts) else len(self.out)

    def write(self, data: bytes | bytearray) -> None:
        self.pending += data
        if len(self.pending) >= _BLOCK:
            self.flush_full()

    def flush_full(self) -> None:
        """Compress the full blocks of ``pending``. A hot loop may append to
        ``pending`` itself (``out`` and ``pending`` stay the same objects) and
        call this once ``len(pending) >= METADATA_SIZE``."""
        pending = self.pending
        if len(pending) >= _BLOCK:
            full = len(pending) // _BLOCK * _BLOCK
            view = memoryview(pending)
            for pos in range(0, full, _BLOCK):
                self._emit(view[pos:pos + _BLOCK])
            view.release()
            del pending[:full]

    def _emit(self, chunk) -> None:
        self._starts.append(len(self.out))
        packed = self.codec.compress(chunk)
        if len(packed) < len(chunk):
            self.out += _HEADER.pack(len(packed))
            self.out += packed
        else:
            self.out += _HEADER.pack(len(chunk) | layout.METADATA_UNCOMPRESSED)
            self.out += chunk

    def finish(self) -> bytearray:
        """Flush the last partial block; returns the compressed stream."""
        if self.pending:
            self._emit(bytes(self.pending))
            self.pending.clear()
        return self.out


def build_table(codec: Codec, entries: bytes | bytearray, base: int) -> tuple[bytes, bytes]:
    """A lookup table placed at absolute offset ``base``: returns its metadata
    blocks and the u64 index that follows them (the superblock points at the
    index, which is ``base + len(blocks)``)."""
    meta = MetadataWriter(codec)
    view = memoryview(entries)
    starts = []
    for pos in range(0, len(entries), _BLOCK):
        starts.append(base + len(meta.out))
        meta.write(view[pos:pos + _BLOCK])
    blocks = bytes(meta.finish())
    index = b"".join(layout.TABLE_INDEX_ENTRY.pack(s) for s in starts)
    return blocks, index
