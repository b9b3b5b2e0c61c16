"""Filesystem geometry: features, block groups, where each group's metadata
lives, and the block allocator that hands out everything else."""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from conv_ext4.layout import FEATURES, GROUP_DESC_32, GROUP_DESC_64
from convcore.errors import NoSpaceError, UnsupportedError, UsageError

#: features the writer can produce, per flavour (mke2fs 1.47's defaults plus
#: metadata_csum_seed).
DEFAULT_FEATURES = {
    "ext2": {"ext_attr", "dir_index", "filetype", "sparse_super", "large_file",
             "resize_inode"},
    "ext3": {"has_journal", "ext_attr", "dir_index", "filetype", "sparse_super", "large_file",
             "resize_inode"},
    "ext4": {"has_journal", "ext_attr", "dir_index", "filetype", "extent", "64bit", "flex_bg",
             "sparse_super", "large_file", "huge_file", "dir_nlink", "extra_isize",
             "metadata_csum", "metadata_csum_seed", "resize_inode"},
}
SUPPORTED_FEATURES = DEFAULT_FEATURES["ext4"]
_ALIASES = {"extents": "extent"}

INODE_SIZE = 256
INODE_RATIO = 16384
FLEX_BG_SIZE = 16


def parse_features(fs: str, text: str, journal: bool | None) -> set[str]:
    """mke2fs-style ``-O`` list (``a,^b``) applied to the flavour's defaults."""
    feats = set(DEFAULT_FEATURES[fs])
    asked: set[str] = set()
    for item in filter(None, (t.strip() for t in (text or "").split(","))):
        drop = item.startswith("^")
        name = _ALIASES.get(item.lstrip("^"), item.lstrip("^"))
        if name not in FEATURES:
            raise UsageError(f"ext4[features=...]: unknown feature {name!r}")
        if name not in SUPPORTED_FEATURES:
            raise UnsupportedError(f"ext4: feature {name!r} is not supported by the writer")
        if drop:
            feats.discard(name)
        else:
            feats.add(name)
            asked.add(name)
    if journal is not None:
        if journal:
            feats.add("has_journal")
        else:
            feats.discard("has_journal")
    if "metadata_csum_seed" in feats and "metadata_csum" not in feats:
        feats.discard("metadata_csum_seed")
    if "64bit" in feats and "extent" not in feats:
        raise UsageError("ext4[features=...]: 64bit needs extent")
    if "resize_inode" in feats and "sparse_super" not in feats:
        # its reserved blocks would repeat in every group: mke2fs refuses;
        # we only refuse when asked for both, and otherwise drop the default
        if "resize_inode" in asked:
            raise UsageError("ext4[features=...]: resize_inode needs sparse_super")
        feats.discard("resize_inode")
    return feats


def feature_words(feats: set[str]) -> dict[str, int]:
    words = {"compat": 0, "incompat": 0, "ro_compat": 0}
    for name in feats:
        word, bit = FEATURES[name]
        words[word] |= bit
    return words


def is_backup_group(group: int, sparse: bool) -> bool:
    """Groups that carry a superblock and GDT copy (sparse_super: 0, 1 and
    powers of 3, 5 and 7)."""
    if not sparse or group <= 1:
        return True
    for base in (3, 5, 7):
        n = base
        while n < group:
            n *= base
        if n == group:
            return True
    return False


# Group and Geometry are plain classes, not dataclasses: creating the two
# dataclasses cost 1 ms of every ext4 conversion's start-up.
class Group:
    """One block group: its blocks and where its bitmaps and inode table are."""

    __slots__ = ("start", "size", "backup", "block_bitmap", "inode_bitmap", "inode_table")

    def __init__(self, start: int, size: int, backup: bool) -> None:
        self.start = start
        self.size = size
        self.backup = backup
        self.block_bitmap = 0
        self.inode_bitmap = 0
        self.inode_table = 0

    def __repr__(self) -> str:
        return (f"Group(start={self.start}, size={self.size}, backup={self.backup}, "
                f"block_bitmap={self.block_bitmap}, inode_bitmap={self.inode_bitmap}, "
                f"inode_table={self.inode_table})")


class Geometry:
    """Block-level layout for one filesystem size (``Geometry.make``)."""

    def __init__(self, block_size: int, blocks_count: int, inodes_count: int,
                 feats: set[str]) -> None:
        self.block_size = block_size
        self.blocks_count = blocks_count
        self.inodes_count = inodes_count
        self.feats = feats
        self.first_data_block = 0
        self.blocks_per_group = 0
        self.inodes_per_group = 0
        self.desc_size = 32
        self.gdt_blocks = 0
        #: blocks after the descriptors kept for online growth (resize_inode)
        self.reserved_gdt = 0
        self.inode_table_blocks = 0
        self.groups: list[Group] = []
        #: sorted, disjoint (start, length) ranges of fixed metadata.
        self.fixed: list[tuple[int, int]] = []
        self._resize = False

    @classmethod
    def make(cls, block_size: int, blocks_count: int, inodes_wanted: int,
             feats: set[str]) -> Geometry:
        g = cls(block_size, blocks_count, 0, feats)
        g.first_data_block = 1 if block_size == 1024 else 0
        g.blocks_per_group = 8 * block_size
        g.desc_size = GROUP_DESC_64.size if "64bit" in feats else GROUP_DESC_32.size
        if not g.is_64bit and blocks_count >= 1 << 32:
            raise UsageError(f"{blocks_count} blocks need the 64bit feature")
        g._make_groups(inodes_wanted)
        return g

    @property
    def is_64bit(self) -> bool:
        return "64bit" in self.feats

    @property
    def flex(self) -> bool:
        return "flex_bg" in self.feats

    def _group_count(self) -> int:
        return -(-(self.blocks_count - self.first_data_block) // self.blocks_per_group)

    def _make_groups(self, inodes_wanted: int) -> None:
        bs = self.block_size
        bpg = self.blocks_per_group
        sparse = "sparse_super" in self.feats
        if self.blocks_count - self.first_data_block < 64:
            raise NoSpaceError(f"an ext4 filesystem needs more than {self.blocks_count} blocks")
        while True:
            count = self._group_count()
            ipg = self._inodes_per_group(inodes_wanted, count)
            itb = ipg * INODE_SIZE // bs
            gdt = -(-count * self.desc_size // bs)
            rsv = self._reserved_gdt(gdt)
            self._resize = rsv >= 0
            rsv = max(rsv, 0)
            last_size = self.blocks_count - self.first_data_block - (count - 1) * bpg
            last_over = (1 + gdt + rsv if is_backup_group(count - 1, sparse) else 0) + (
                0 if self.flex else 2 + itb)
            # mke2fs drops a last group too small to be useful
            if count > 1 and last_size < last_over + 50:
                self.blocks_count -= last_size
                continue
            break
        self.inodes_per_group = ipg
        self.inodes_count = ipg * count
        self.inode_table_blocks = itb
        self.gdt_blocks = gdt
        self.reserved_gdt = rsv
        fixed: list[tuple[int, int]] = []
        for n in range(count):
            start = self.first_data_block + n * bpg
            size = min(bpg, self.blocks_count - start)
            grp = Group(start, size, is_backup_group(n, sparse))
            self.groups.append(grp)
            if grp.backup:
                fixed.append((start, 1 + gdt + rsv))
            if not self.flex:
                meta = start + (1 + gdt + rsv if grp.backup else 0)
                if meta + 2 + itb > start + size:
                    raise NoSpaceError(f"block group {n} is too small for its inode table")
                grp.block_bitmap, grp.inode_bitmap, grp.inode_table = meta, meta + 1, meta + 2
                fixed.append((meta, 2 + itb))
        if self.flex:
            fixed = self._place_flex(fixed)
        self.fixed = _merge(fixed)

    def _reserved_gdt(self, gdt: int) -> int:
        """Reserved GDT blocks as mke2fs counts them (calc_reserved_gdt_blocks):
        room for the descriptors of a filesystem 1024 times this size, up to
        2^32 blocks, at most one indirect block's worth. -1: no resize inode
        (the feature is off; above 2^32 blocks its 32-bit block map cannot
        reach; or the blocks would take over 3/4 of a group, where mke2fs
        switches to meta_bg)."""
        if "resize_inode" not in self.feats or self.blocks_count > 0xFFFFFFFF:
            return -1
        max_blocks = 0xFFFFFFFF
        if self.blocks_count < max_blocks // 1024:
            max_blocks = self.blocks_count * 1024
        groups = -(-(max_blocks - self.first_data_block) // self.blocks_per_group)
        rsv = -(-groups // (self.block_size // self.desc_size)) - gdt
        rsv = max(0, min(rsv, self.block_size // 4))
        if rsv + gdt > self.blocks_per_group * 3 // 4:
            return -1
        return rsv

    @property
    def resize_inode(self) -> bool:
        """Whether inode 7 maps reserved GDT blocks (the resize_inode feature,
        unless mke2fs's rules drop it for this size)."""
        return self._resize

    def reserved_gdt_backups(self) -> list[int]:
        """Start of the reserved GDT blocks in each backup group but group 0,
        in group order (what each primary reserved block lists)."""
        return [g.start + 1 + self.gdt_blocks for g in self.groups[1:] if g.backup]

    def _inodes_per_group(self, wanted: int, count: int) -> int:
        bs = self.block_size
        per_block = bs // INODE_SIZE
        unit = max(8, per_block)
        ipg = -(-max(wanted, 16 * count) // count)
        ipg = -(-ipg // unit) * unit
        if ipg > 8 * bs:
            raise NoSpaceError(
                f"{wanted} inodes do not fit in {count} block groups of {bs}-byte blocks "
                f"(at most {8 * bs * count}); use a larger size")
        return ipg

    def _place_flex(self, fixed: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Bitmaps and inode tables of each 16-group flex group, packed at the
        start of its first group (as mke2fs does)."""
        itb = self.inode_table_blocks
        starts = [s for s, _ in fixed]
        placed: list[tuple[int, int]] = []
        cursor = self.first_data_block

        def take(n: int) -> int:
            nonlocal cursor
            while True:
                i = bisect.bisect_right(starts, cursor) - 1
                if i >= 0 and fixed[i][0] + fixed[i][1] > cursor:
                    cursor = fixed[i][0] + fixed[i][1]
                    continue
                nxt = starts[i + 1] if i + 1 < len(starts) else None
                if nxt is not None and cursor + n > nxt:
                    cursor = nxt
                    continue
                break
            at = cursor
            cursor += n
            if cursor > self.blocks_count:
                raise NoSpaceError("no room for the inode tables; use a larger size")
            placed.append((at, n))
            return at

        groups = self.groups
        for f in range(0, len(groups), FLEX_BG_SIZE):
            members = groups[f:f + FLEX_BG_SIZE]
            cursor = max(cursor, members[0].start)
            for grp in members:
                grp.block_bitmap = take(1)
            for grp in members:
                grp.inode_bitmap = take(1)
            for grp in members:
                grp.inode_table = take(itb)
        return fixed + placed


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, n in sorted(ranges):
        if out and out[-1][0] + out[-1][1] >= s:
            ps, pn = out[-1]
            out[-1] = (ps, max(pn, s + n - ps))
        else:
            out.append((s, n))
    return out


class Allocator:
    """Hands out blocks in ascending order, around the fixed metadata.

    Everything below the cursor ends up used, so a group's block bitmap is
    "all blocks below the cursor, plus the fixed ranges". Past the end of the
    filesystem it keeps counting, so a failed plan knows how much it needed.
    """

    def __init__(self, fixed: list[tuple[int, int]], start: int = 0) -> None:
        self.fixed = fixed
        self.i = 0
        self.cursor = start

    def _skip(self) -> None:
        fixed = self.fixed
        while self.i < len(fixed) and fixed[self.i][0] + fixed[self.i][1] <= self.cursor:
            self.i += 1
        if self.i < len(fixed) and fixed[self.i][0] <= self.cursor:
            self.cursor = fixed[self.i][0] + fixed[self.i][1]
            self.i += 1
            self._skip()

    def alloc(self, n: int) -> Sequence[tuple[int, int]]:
        fixed = self.fixed
        i = self.i
        cursor = self.cursor
        # fast path: the run fits before the next fixed range
        if i < len(fixed) and fixed[i][0] > cursor and fixed[i][0] >= cursor + n or \
                i >= len(fixed):
            self.cursor = cursor + n
            return ((cursor, n),)
        runs: list[tuple[int, int]] = []
        while n > 0:
            self._skip()
            limit = self.fixed[self.i][0] if self.i < len(self.fixed) else None
            take = n if limit is None else min(n, limit - self.cursor)
            runs.append((self.cursor, take))
            self.cursor += take
            n -= take
        return runs
