"""Directory blocks: linear for small directories, an htree (dx_root and
dx_node index blocks over hash-ordered leaves) for anything larger than one
block, so lookups in a 100k-entry directory stay cheap for the kernel."""

from __future__ import annotations

from dataclasses import dataclass

from conv_ext4.csum import crc32c_raw
from conv_ext4.dirhash import DirHasher
from conv_ext4.layout import (
    DIR_TAIL,
    DIRENT,
    DX_COUNTLIMIT,
    DX_ENTRY,
    DX_NODE_COUNT_OFFSET,
    DX_ROOT_COUNT_OFFSET,
    DX_ROOT_INFO,
    DX_TAIL,
    FT_DIR,
    FT_DIR_CSUM,
)
from convcore.errors import UnsupportedError

_DIRENT = DIRENT.struct
_DX_ENTRY = DX_ENTRY.struct
_DX_COUNTLIMIT = DX_COUNTLIMIT.struct
_TAIL_SIZE = DIR_TAIL.size  # 12


# A dirent's rec_len is its 8-byte header and name rounded up to 4 bytes:
# (n + 11) & ~3, written out inline in the per-entry loops below.
assert DIRENT.size == 8


@dataclass
class DirStyle:
    """What every directory of one filesystem shares."""

    block_size: int
    csum: bool  # leaf tails and dx tails (metadata_csum)
    htree: bool  # dir_index
    filetype: bool
    hasher: DirHasher | None
    hash_version: int

    @property
    def leaf_space(self) -> int:
        return self.block_size - (_TAIL_SIZE if self.csum else 0)


def _seal_leaf(buf: bytearray, off: int, bs: int, seed: int) -> None:
    """Write the dirent tail with the leaf's checksum."""
    tail = off + bs - _TAIL_SIZE
    DIR_TAIL.struct.pack_into(buf, tail, 0, _TAIL_SIZE, 0, FT_DIR_CSUM, 0)
    csum = crc32c_raw(seed, memoryview(buf)[off:tail])
    DIR_TAIL.struct.pack_into(buf, tail, 0, _TAIL_SIZE, 0, FT_DIR_CSUM, csum)


def render_dir(style: DirStyle, ino: int, parent: int,
               entries: list[tuple[bytes, int, int]], seed: int,
               min_blocks: int = 1) -> tuple[bytes, bool]:
    """(directory blocks, is_htree) for ``entries`` of (name, inode, file type).
    ``seed`` is the inode's checksum seed (metadata_csum)."""
    bs = style.block_size
    ft = FT_DIR if style.filetype else 0
    linear_bytes = 24 + sum((len(n) + 11) & ~3 for n, _, _ in entries)
    if not style.htree or linear_bytes <= style.leaf_space:
        buf = _render_linear(style, ino, parent, entries, ft, min_blocks)
        first_leaf = 0
    else:
        buf, first_leaf = _render_htree(style, ino, parent, entries, ft, seed)
    if style.csum:
        for off in range(first_leaf * bs, len(buf), bs):
            _seal_leaf(buf, off, bs, seed)
    return bytes(buf), first_leaf > 0


def linear_blocks(style: DirStyle, name_lens: list[int], min_blocks: int = 1) -> int:
    """Blocks ``render_dir`` gives a directory with names of these lengths
    when it renders it linearly; 0 when it would build an htree."""
    space = style.leaf_space
    if style.htree and 24 + sum((n + 11) & ~3 for n in name_lens) > space:
        return 0
    blocks, pos = 1, 24  # "." and ".."
    for n in name_lens:
        rl = (DIRENT.size + n + 3) & ~3
        if pos + rl > space:
            blocks += 1
            pos = 0
        pos += rl
    return max(blocks, min_blocks)


_PAD = (b"", b"\0", b"\0\0", b"\0\0\0")


def _render_linear(style, ino, parent, entries, ft, min_blocks) -> bytearray:
    """Blocks of packed dirents, each block's last one stretched to the end
    of its leaf space (joined per block, not packed dirent by dirent: this
    runs for every directory)."""
    bs = style.block_size
    space = style.leaf_space
    pack = _DIRENT.pack
    out = bytearray()
    parts = [pack(ino, 12, 1, ft), b".\0\0\0", pack(parent, 12, 2, ft), b"..\0\0"]
    pos, last = 24, 12
    for name, child, ftype in entries:
        n = len(name)
        rl = (n + 11) & ~3
        if pos + rl > space:
            _close_linear(out, parts, last, bs, space)
            parts = []
            pos = 0
        parts += (pack(child, rl, n, ftype), name, _PAD[rl - 8 - n])
        last = pos
        pos += rl
    _close_linear(out, parts, last, bs, space)
    for _ in range(len(out) // bs, min_blocks):
        empty = bytearray(bs)
        _DIRENT.pack_into(empty, 0, 0, space, 0, 0)
        out += empty
    return out


def _close_linear(out: bytearray, parts: list[bytes], last: int, bs: int, space: int) -> None:
    """Append one block of the joined ``parts``; its last dirent (at ``last``)
    runs to the end of the leaf space."""
    start = len(out)
    out += b"".join(parts)
    out[start + last + 4:start + last + 6] = (space - last).to_bytes(2, "little")
    out += bytes(start + bs - len(out))


def _render_htree(style: DirStyle, ino: int, parent: int,
                  entries: list[tuple[bytes, int, int]], ft: int,
                  seed: int) -> tuple[bytearray, int]:
    bs = style.block_size
    hasher = style.hasher
    assert hasher is not None
    hashed = sorted(((*hasher(name), name, child, ftype) for name, child, ftype in entries))
    tail = DX_TAIL.size if style.csum else 0
    root_limit = (bs - DX_ROOT_COUNT_OFFSET - tail) // DX_ENTRY.size
    node_limit = (bs - DX_NODE_COUNT_OFFSET - tail) // DX_ENTRY.size

    # Leaves first, into a scratch buffer; index blocks are put in front later.
    leaves = bytearray()
    space = style.leaf_space
    pack = _DIRENT.pack
    parts: list[bytes] | None = None
    pos, last = space, 0
    starts: list[int] = []  # hash each leaf starts at (bit 0: continues a collision)
    prev_hash = -1
    for major, _minor, name, child, ftype in hashed:
        n = len(name)
        rl = (n + 11) & ~3
        if pos + rl > space:
            if parts is not None:
                _close_linear(leaves, parts, last, bs, space)
            parts = []
            pos = 0
            starts.append(major | 1 if major == prev_hash else major)
        parts += (pack(child, rl, n, ftype), name, _PAD[rl - 8 - n])
        last = pos
        pos += rl
        prev_hash = major
    if parts is not None:
        _close_linear(leaves, parts, last, bs, space)
    n_leaves = len(starts)

    if n_leaves <= root_limit:
        levels = 0
        n_nodes = 0
    else:
        n_nodes = -(-n_leaves // node_limit)
        if n_nodes > root_limit:
            raise UnsupportedError(
                f"directory inode {ino} has too many entries for a two-level htree")
        levels = 1
    first_leaf = 1 + n_nodes
    out = bytearray(bs * first_leaf)
    out += leaves

    # dx_root: "." and ".." dirents that hide the index from old readers.
    _DIRENT.pack_into(out, 0, ino, 12, 1, ft)
    out[8:9] = b"."
    _DIRENT.pack_into(out, 12, parent, bs - 12, 2, ft)
    out[20:22] = b".."
    DX_ROOT_INFO.struct.pack_into(out, 24, 0, style.hash_version, 8, levels, 0)
    leaf_refs = [(h, first_leaf + i) for i, h in enumerate(starts)]
    if levels == 0:
        _fill_index(out, 0, DX_ROOT_COUNT_OFFSET, root_limit, leaf_refs, style, seed)
    else:
        node_refs = []
        for k in range(n_nodes):
            chunk = leaf_refs[k * node_limit:(k + 1) * node_limit]
            off = (1 + k) * bs
            _DIRENT.pack_into(out, off, 0, bs, 0, 0)
            _fill_index(out, off, DX_NODE_COUNT_OFFSET, node_limit, chunk, style, seed)
            node_refs.append((chunk[0][0], 1 + k))
        _fill_index(out, 0, DX_ROOT_COUNT_OFFSET, root_limit, node_refs, style, seed)
    return out, first_leaf


def _fill_index(buf: bytearray, block_off: int, count_off: int, limit: int,
                refs: list[tuple[int, int]], style: DirStyle, seed: int) -> None:
    """dx entries (the first one's hash slot holds limit and count) + dx tail."""
    pos = block_off + count_off
    _DX_COUNTLIMIT.pack_into(buf, pos, limit, len(refs))
    buf[pos + 4:pos + 8] = refs[0][1].to_bytes(4, "little")
    for i, (h, blk) in enumerate(refs[1:], 1):
        _DX_ENTRY.pack_into(buf, pos + 8 * i, h, blk)
    if style.csum:
        tail = pos + limit * DX_ENTRY.size
        csum = crc32c_raw(seed, memoryview(buf)[block_off:pos + 8 * len(refs)])
        csum = crc32c_raw(csum, bytes(DX_TAIL.size))
        DX_TAIL.struct.pack_into(buf, tail, 0, csum)
