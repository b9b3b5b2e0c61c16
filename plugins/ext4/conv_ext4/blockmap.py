"""Where a file's blocks are: extent trees (ext4) and indirect block maps (ext2/3).

Both walkers turn an inode's ``i_block`` into byte segments
``(file_offset, length, volume_offset)`` ready for ``SegmentData``: adjacent
blocks merged, holes and unwritten extents left out, everything past
``i_size`` clipped. Every block number is checked against the filesystem
before it is read, and every tree block may be read only once, so loops and
cross-linked trees end in a CorruptError instead of a hang.
"""

from __future__ import annotations

import struct
from typing import Protocol

from conv_ext4.csum import crc32c_raw
from conv_ext4.layout import (
    EXTENT,
    EXTENT_HEADER,
    EXTENT_INDEX,
    EXTENT_MAGIC,
    EXTENT_MAX_DEPTH,
    EXTENT_MAX_LEN,
    EXTENT_TAIL,
)
from convcore.errors import CorruptError

_HEADER = EXTENT_HEADER.struct
_INDEX = EXTENT_INDEX.struct
_LEAF = EXTENT.struct
_TAIL = EXTENT_TAIL.struct
_BLOCK_MAP = struct.Struct("<15I")

Segments = list[tuple[int, int, int]]


class BlockSource(Protocol):
    """What the walkers need from the filesystem."""

    block_size: int
    blocks_count: int
    metadata_csum: bool

    def read_block(self, block: int, what: str) -> bytes: ...


class _SegmentBuilder:
    """Collects block runs into merged byte segments clipped to the file size."""

    def __init__(self, fs: BlockSource, ino: int, size: int) -> None:
        self.fs = fs
        self.ino = ino
        self.size = size
        self.segments: Segments = []

    def add(self, lblock: int, count: int, pblock: int) -> None:
        fs = self.fs
        if pblock == 0 or pblock + count > fs.blocks_count:
            raise CorruptError(
                f"inode {self.ino}: data block {pblock} (+{count}) lies outside the "
                f"{fs.blocks_count}-block filesystem")
        bs = fs.block_size
        offset = lblock * bs
        if offset >= self.size:
            return
        length = min(count * bs, self.size - offset)
        where = pblock * bs
        segs = self.segments
        if segs:
            f, n, v = segs[-1]
            if f + n == offset and v + n == where:
                segs[-1] = (f, n + length, v)
                return
        segs.append((offset, length, where))


def extent_segments(fs: BlockSource, ino: int, i_block: bytes, size: int,
                    csum_seed: int | None) -> Segments:
    """Byte segments of an extent-mapped inode. ``csum_seed`` (the inode's
    checksum seed) turns on verification of extent block tails."""
    out = _SegmentBuilder(fs, ino, size)
    max_blocks = -(-size // fs.block_size)
    seen: set[int] = set()
    next_lblock = 0
    # Depth-first in index order: (node bytes, expected depth or None, where)
    stack: list[tuple[bytes, int | None, str]] = [(i_block, None, "i_block")]
    while stack:
        node, want_depth, where = stack.pop()
        magic, entries, emax, depth, _gen = _HEADER.unpack_from(node, 0)
        if magic != EXTENT_MAGIC:
            raise CorruptError(f"inode {ino}: bad extent header magic {magic:#x} in {where}")
        capacity = (len(node) - _HEADER.size) // 12
        if emax > capacity or entries > emax:
            raise CorruptError(
                f"inode {ino}: extent header in {where} claims {entries}/{emax} entries, "
                f"room for {capacity}")
        if depth > EXTENT_MAX_DEPTH or (want_depth is not None and depth != want_depth):
            raise CorruptError(f"inode {ino}: extent tree depth {depth} in {where} is invalid")
        if want_depth is not None and csum_seed is not None:
            tail = _HEADER.size + 12 * emax
            if tail + 4 > len(node):
                raise CorruptError(f"inode {ino}: extent block {where} has no checksum tail")
            (stored,) = _TAIL.unpack_from(node, tail)
            if crc32c_raw(csum_seed, node[:tail]) != stored:
                raise CorruptError(f"inode {ino}: extent {where}: checksum mismatch")
        if depth == 0:
            for i in range(entries):
                lblock, length, start_hi, start_lo = _LEAF.unpack_from(node, 12 + 12 * i)
                unwritten = length > EXTENT_MAX_LEN
                if unwritten:
                    length -= EXTENT_MAX_LEN
                if length == 0 or lblock < next_lblock:
                    raise CorruptError(
                        f"inode {ino}: extent for logical block {lblock} in {where} "
                        "overlaps or is empty")
                next_lblock = lblock + length
                if lblock >= max_blocks:
                    continue
                if not unwritten:
                    out.add(lblock, length, start_lo | start_hi << 32)
            continue
        children = []
        prev = -1
        for i in range(entries):
            lblock, leaf_lo, leaf_hi, _ = _INDEX.unpack_from(node, 12 + 12 * i)
            if lblock <= prev and i:
                raise CorruptError(f"inode {ino}: extent index in {where} is out of order")
            prev = lblock
            child = leaf_lo | leaf_hi << 32
            if child in seen:
                raise CorruptError(f"inode {ino}: extent tree block {child} is visited twice")
            seen.add(child)
            if lblock >= max_blocks:
                continue  # entirely past EOF: nothing to read
            children.append(child)
        for child in reversed(children):
            block = fs.read_block(child, f"inode {ino}: extent block {child}")
            stack.append((block, depth - 1, f"block {child}"))
    return out.segments


def indirect_segments(fs: BlockSource, ino: int, i_block: bytes, size: int) -> Segments:
    """Byte segments of an inode mapped by direct and (single, double, triple)
    indirect block pointers."""
    out = _SegmentBuilder(fs, ino, size)
    bs = fs.block_size
    per = bs // 4
    pointers = struct.Struct(f"<{per}I")
    nblocks = -(-size // bs)
    seen: set[int] = set()

    ptrs = _BLOCK_MAP.unpack_from(i_block)
    for i in range(min(12, nblocks)):
        if ptrs[i]:
            out.add(i, 1, ptrs[i])

    def walk(block: int, level: int, base: int) -> None:
        if block in seen:
            raise CorruptError(f"inode {ino}: indirect block {block} is used twice")
        if block >= fs.blocks_count:
            raise CorruptError(
                f"inode {ino}: indirect block {block} lies outside the filesystem")
        seen.add(block)
        data = fs.read_block(block, f"inode {ino}: indirect block {block}")
        span = per ** (level - 1)
        for i, p in enumerate(pointers.unpack(data)):
            if not p:
                continue
            lblock = base + i * span
            if lblock >= nblocks:
                break
            if level == 1:
                out.add(lblock, 1, p)
            else:
                walk(p, level - 1, lblock)

    base = 12
    for level, p in ((1, ptrs[12]), (2, ptrs[13]), (3, ptrs[14])):
        if base >= nblocks:
            break
        if p:
            walk(p, level, base)
        base += per ** level
    return out.segments
