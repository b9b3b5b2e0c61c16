"""Directory blocks: linear entries, htree (dx) blocks skipped, checksums checked.

An htree directory keeps ordinary leaf blocks; the index lives in the first
block (dx root, after "." and "..") and in interior blocks that look like one
empty entry spanning the whole block. Reading the leaves linearly gives every
name without trusting the index at all.
"""

from __future__ import annotations

from collections.abc import Iterator

from conv_ext4 import layout
from conv_ext4.csum import crc32c_raw
from conv_ext4.layout import DX_NODE_COUNT_OFFSET, DX_ROOT_COUNT_OFFSET
from convcore.errors import CorruptError

DIRENT = layout.DIRENT.struct
DIRENT_TAIL = layout.DIR_TAIL.struct
DIRENT_TAIL_FT = layout.FT_DIR_CSUM
DX_ROOT_INFO = layout.DX_ROOT_INFO.struct
DX_COUNTLIMIT = layout.DX_COUNTLIMIT.struct
DX_TAIL = layout.DX_TAIL.struct

Names = Iterator[tuple[bytes, int, int]]


def rec_len_from_disk(raw: int, block_size: int) -> int:
    """rec_len as stored; 64 KiB blocks encode the full length in 16 bits."""
    if block_size < 65536:
        return raw
    if raw in (0, 65535):
        return block_size
    return (raw & 65532) | ((raw & 3) << 16)


def parse_entries(buf: bytes, start: int, end: int, block_size: int, inodes_count: int,
                  where: str) -> Names:
    """(name, inode, file_type) of every live entry in ``buf[start:end]``."""
    pos = start
    while pos < end:
        if pos + DIRENT.size > end:
            raise CorruptError(f"{where}: directory entry at byte {pos - start} is truncated")
        ino, raw_len, name_len, ftype = DIRENT.unpack_from(buf, pos)
        rec_len = rec_len_from_disk(raw_len, block_size)
        if rec_len < DIRENT.size + name_len or rec_len % 4 or pos + rec_len > end:
            raise CorruptError(
                f"{where}: directory entry at byte {pos - start} has bad rec_len {rec_len}")
        if ino:
            if ino > inodes_count:
                raise CorruptError(
                    f"{where}: directory entry points at inode {ino}, beyond the "
                    f"{inodes_count} inodes")
            name = bytes(buf[pos + 8: pos + 8 + name_len])
            if not name or b"/" in name or b"\0" in name:
                raise CorruptError(f"{where}: invalid file name {name!r}")
            yield name, ino, ftype
        pos += rec_len


def _check_dx_csum(block: bytes, count_offset: int, seed: int, where: str) -> None:
    limit, count = DX_COUNTLIMIT.unpack_from(block, count_offset)
    tail = count_offset + 8 * limit
    if count > limit or tail + DX_TAIL.size > len(block):
        raise CorruptError(f"{where}: htree node claims {count}/{limit} entries")
    _reserved, stored = DX_TAIL.unpack_from(block, tail)
    crc = crc32c_raw(seed, block[: count_offset + 8 * count])
    crc = crc32c_raw(crc, block[tail: tail + 4])
    crc = crc32c_raw(crc, b"\0\0\0\0")  # dt_checksum itself counts as zero
    if crc != stored:
        raise CorruptError(f"{where}: checksum mismatch")


def is_dx_root(block: bytes, block_size: int) -> bool:
    """Whether block 0 of an indexed directory really holds a dx root."""
    if len(block) < DX_ROOT_COUNT_OFFSET + 8:
        return False
    _, dot_len, dot_name_len, _ = DIRENT.unpack_from(block, 0)
    _, dotdot_len, dotdot_name_len, _ = DIRENT.unpack_from(block, 12)
    zero, _hash, info_len, levels, _ = DX_ROOT_INFO.unpack_from(block, 24)
    return (dot_len == 12 and dot_name_len == 1 and dotdot_name_len == 2
            and rec_len_from_disk(dotdot_len, block_size) == block_size - 12
            and zero == 0 and info_len == 8 and levels <= 3)


def parse_block(block: bytes, lblock: int, *, indexed: bool, block_size: int,
                inodes_count: int, csum_seed: int | None, where: str) -> Names:
    """Live entries of directory block ``lblock`` (htree index blocks yield
    nothing). ``csum_seed`` (the directory inode's) turns on checksums."""
    if indexed and lblock == 0 and is_dx_root(block, block_size):
        if csum_seed is not None:
            _check_dx_csum(block, DX_ROOT_COUNT_OFFSET, csum_seed, where)
        return iter(())
    ino, raw_len, name_len, _ = DIRENT.unpack_from(block, 0)
    if (indexed and lblock and ino == 0 and name_len == 0
            and rec_len_from_disk(raw_len, block_size) == block_size):
        # An interior htree node, or an empty leaf without a tail.
        if csum_seed is not None:
            _check_dx_csum(block, DX_NODE_COUNT_OFFSET, csum_seed, where)
        return iter(())
    end = block_size
    if csum_seed is not None:
        end -= DIRENT_TAIL.size
        zero, rec_len, nlen, ftype, stored = DIRENT_TAIL.unpack_from(block, end)
        if zero or rec_len != DIRENT_TAIL.size or nlen or ftype != DIRENT_TAIL_FT:
            raise CorruptError(f"{where}: no checksum tail")
        if crc32c_raw(csum_seed, block[:end]) != stored:
            raise CorruptError(f"{where}: checksum mismatch")
    return parse_entries(block, 0, end, block_size, inodes_count, where)
