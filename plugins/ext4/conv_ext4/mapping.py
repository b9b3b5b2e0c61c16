"""How an inode maps its logical blocks: extent trees (ext4) and indirect
block maps (ext2/ext3).

Planning only needs counts (``extent_tree_blocks``, ``blockmap_blocks``);
rendering fills i_block and the mapping blocks once they have addresses.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Callable, Iterable

from conv_ext4.layout import (
    DIND_BLOCK,
    EXTENT,
    EXTENT_HEADER,
    EXTENT_INDEX,
    EXTENT_MAGIC,
    EXTENT_MAX_DEPTH,
    EXTENT_MAX_LEN,
    EXTENT_ROOT_MAX,
    IND_BLOCK,
    NDIR_BLOCKS,
    TIND_BLOCK,
)
from convcore.errors import UnsupportedError

#: (logical block, length, physical block)
Extent = tuple[int, int, int]
#: (start block, length)
Run = tuple[int, int]

_I_BLOCK = struct.Struct("<15I")


def make_extents(ranges: Iterable[Run], runs: list[Run]) -> list[Extent]:
    """Lay logical ``ranges`` onto the physical ``runs`` allocated for them
    (same total length), split so no extent is longer than EXTENT_MAX_LEN."""
    out: list[Extent] = []
    ri = 0
    pstart, plen = runs[0] if runs else (0, 0)
    for lblk, n in ranges:
        while n:
            if plen == 0:
                ri += 1
                pstart, plen = runs[ri]
            take = min(n, plen, EXTENT_MAX_LEN)
            if out:
                ll, ln, lp = out[-1]
                if ll + ln == lblk and lp + ln == pstart and ln + take <= EXTENT_MAX_LEN:
                    out[-1] = (ll, ln + take, lp)
                    lblk += take
                    n -= take
                    pstart += take
                    plen -= take
                    continue
            out.append((lblk, take, pstart))
            lblk += take
            n -= take
            pstart += take
            plen -= take
    return out


def count_extents(ranges: Iterable[Run], runs: list[Run]) -> int:
    return len(make_extents(ranges, runs))


def extent_tree_blocks(n_extents: int, block_size: int) -> int:
    """Index and leaf blocks an extent tree of ``n_extents`` needs."""
    per_block = (block_size - EXTENT_HEADER.size) // EXTENT.size
    total = 0
    n = n_extents
    depth = 0
    while n > EXTENT_ROOT_MAX:
        n = -(-n // per_block)
        total += n
        depth += 1
    if depth > EXTENT_MAX_DEPTH:
        raise UnsupportedError(f"extent tree of {n_extents} extents is too deep")
    return total


def render_extent_tree(extents: list[Extent], tree_blocks: list[int], block_size: int,
                       seal: Callable[[bytearray], None] | None) -> tuple[bytes, list[bytes]]:
    """(i_block, [bytes of each tree block, in the order of ``tree_blocks``]).
    ``seal`` writes the checksum tail of a tree block (metadata_csum)."""
    per_block = (block_size - EXTENT_HEADER.size) // EXTENT.size
    blocks: list[bytes] = []
    next_block = iter(tree_blocks)
    # level entries: (first logical block, packed entry)
    level = [(lb, EXTENT.struct.pack(lb, n, p >> 32, p & 0xFFFFFFFF)) for lb, n, p in extents]
    depth = 0
    while len(level) > EXTENT_ROOT_MAX:
        upper = []
        for i in range(0, len(level), per_block):
            chunk = level[i:i + per_block]
            buf = bytearray(block_size)
            EXTENT_HEADER.struct.pack_into(buf, 0, EXTENT_MAGIC, len(chunk), per_block, depth, 0)
            buf[EXTENT_HEADER.size:EXTENT_HEADER.size + 12 * len(chunk)] = b"".join(
                e for _, e in chunk)
            if seal is not None:
                seal(buf)
            blk = next(next_block)
            blocks.append(bytes(buf))
            upper.append((chunk[0][0], EXTENT_INDEX.struct.pack(
                chunk[0][0], blk & 0xFFFFFFFF, blk >> 32, 0)))
        level = upper
        depth += 1
    root = EXTENT_HEADER.struct.pack(EXTENT_MAGIC, len(level), EXTENT_ROOT_MAX, depth, 0)
    root += b"".join(e for _, e in level)
    return root.ljust(60, b"\0"), blocks


# --------------------------------------------------------------------------
# Indirect block maps


def _distinct(ranges: Iterable[Run], base: int, span: int, unit: int) -> int:
    """How many distinct ``(lblk - base) // unit`` values the logical blocks
    in [base, base + span) of ``ranges`` take."""
    count = 0
    last = -1
    for lblk, n in ranges:
        lo, hi = max(lblk, base), min(lblk + n, base + span)
        if lo >= hi:
            continue
        a, b = (lo - base) // unit, (hi - 1 - base) // unit
        if a == last:
            a += 1
        if b >= a:
            count += b - a + 1
        last = b
    return count


def _bounds(block_size: int) -> tuple[int, int, int, int]:
    p = block_size // 4
    ind = NDIR_BLOCKS
    dind = ind + p
    tind = dind + p * p
    end = tind + p * p * p
    return ind, dind, tind, end


def blockmap_blocks(ranges: list[Run], block_size: int) -> int:
    """Indirect, double and triple indirect blocks a block map needs."""
    p = block_size // 4
    ind, dind, tind, end = _bounds(block_size)
    if ranges and ranges[-1][0] + ranges[-1][1] > end:
        raise UnsupportedError("file too large for an indirect block map")
    total = _distinct(ranges, ind, p, p)
    n = _distinct(ranges, dind, p * p, p)
    total += n + (1 if n else 0)
    n3 = _distinct(ranges, tind, p * p * p, p)
    if n3:
        total += 1 + _distinct(ranges, tind, p * p * p, p * p) + n3
    return total


def render_blockmap(ranges: list[Run], runs: list[Run], map_blocks: list[int],
                    block_size: int) -> tuple[bytes, list[tuple[int, bytes]]]:
    """(i_block, [(block, bytes)]) of an indirect block map."""
    p = block_size // 4
    ind, dind, tind, _ = _bounds(block_size)
    i_block = [0] * 15
    tables: dict[tuple[int, ...], array] = {}
    order: list[tuple[int, ...]] = []

    def table(key: tuple[int, ...]) -> array:
        t = tables.get(key)
        if t is None:
            t = tables[key] = array("I", bytes(block_size))
            order.append(key)
        return t

    # Walk the file's blocks run by run; each step fills one table slice.
    for lblk, pblk, n in zip_runs(ranges, runs):
        while n:
            if lblk < ind:
                take = min(n, ind - lblk)
                i_block[lblk:lblk + take] = range(pblk, pblk + take)
            else:
                if lblk < dind:
                    key: tuple[int, ...] = (IND_BLOCK,)
                    slot = lblk - ind
                elif lblk < tind:
                    x = lblk - dind
                    key, slot = (DIND_BLOCK, x // p), x % p
                else:
                    x = lblk - tind
                    key, slot = (TIND_BLOCK, x // (p * p), (x // p) % p), x % p
                take = min(n, p - slot)
                table(key)[slot:slot + take] = array("I", range(pblk, pblk + take))
            lblk += take
            pblk += take
            n -= take
    # Parents of the leaf tables: make sure every level exists, parents first.
    for key in list(order):
        for cut in range(1, len(key)):
            table(key[:cut])
    order.sort(key=lambda k: (k[0], len(k) > 1, k[1:]))
    if len(order) != len(map_blocks):
        raise AssertionError("block map plan and render disagree")
    where = dict(zip(order, map_blocks, strict=True))
    for key, blk in where.items():
        if len(key) == 1:
            i_block[key[0]] = blk
        else:
            tables[key[:-1]][key[-1]] = blk
    out = [(where[key], tables[key].tobytes()) for key in order]
    return _I_BLOCK.pack(*i_block), out


def zip_runs(ranges: Iterable[Run], runs: list[Run]):
    """(logical, physical, length) pieces of logical ranges laid on runs."""
    ri = 0
    pstart, plen = runs[0] if runs else (0, 0)
    for lblk, n in ranges:
        while n:
            if plen == 0:
                ri += 1
                pstart, plen = runs[ri]
            take = min(n, plen)
            yield lblk, pstart, take
            lblk += take
            n -= take
            pstart += take
            plen -= take
