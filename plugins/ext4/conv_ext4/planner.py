"""Planning an ext2/3/4 filesystem: inode numbers, rendered directories,
symlinks and xattrs, the filesystem size, and every block's address, all
before a byte is written.

Blocks are allocated in ascending order around the fixed group metadata:
journal, then directory/symlink/xattr blocks, then file data, then
extent-tree or indirect blocks.
"""

from __future__ import annotations

import os
import struct
import uuid as uuidlib
from collections.abc import Iterable, Sequence

from conv_ext4 import journal, mapping, xattrwriter
from conv_ext4.csum import crc32c_raw
from conv_ext4.dirhash import DirHasher
from conv_ext4.dirwriter import DirStyle, render_dir
from conv_ext4.geometry import (
    INODE_RATIO,
    INODE_SIZE,
    Allocator,
    Geometry,
    parse_features,
)
from conv_ext4.layout import (
    EXTENT_MAX_LEN,
    EXTENT_ROOT_MAX,
    EXTENTS_FL,
    FAST_SYMLINK_MAX,
    FIRST_INO,
    FT_BLKDEV,
    FT_CHRDEV,
    FT_DIR,
    FT_FIFO,
    FT_REG_FILE,
    FT_SOCK,
    FT_SYMLINK,
    HASH_HALF_MD4,
    INDEX_FL,
    INODE_BASE_SIZE,
    INODE_EXTRA_ISIZE,
    NDIR_BLOCKS,
    ROOT_INO,
)
from convcore.errors import CorruptError, NoSpaceError, UnsupportedError, UsageError
from convcore.format import Context
from convcore.tree import (
    Data,
    Entry,
    FileRangeData,
    Kind,
    Tree,
)

_M32 = 0xFFFFFFFF
_LE32 = struct.Struct("<I")
_FTYPE = {Kind.FILE: FT_REG_FILE, Kind.DIR: FT_DIR, Kind.SYMLINK: FT_SYMLINK,
          Kind.CHAR: FT_CHRDEV, Kind.BLOCK: FT_BLKDEV, Kind.FIFO: FT_FIFO,
          Kind.SOCKET: FT_SOCK}
_LINK_MAX = 65000
_XATTR_SPACE = INODE_SIZE - INODE_BASE_SIZE - INODE_EXTRA_ISIZE
#: lost+found is at least this big, so fsck can add names without allocating.
_LPF_BYTES = 16384


def _device_i_block(major: int, minor: int) -> bytes:
    if major < 256 and minor < 256:
        return struct.pack("<II", (major << 8) | minor, 0).ljust(60, b"\0")
    new = (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)
    return struct.pack("<III", 0, new & _M32, 0).ljust(60, b"\0")


def _block_ranges(extents: Iterable[tuple[int, int]], size: int,
                  bs: int) -> list[tuple[int, int]]:
    """Byte extents -> merged (first block, count) ranges."""
    out: list[tuple[int, int]] = []
    for off, length in extents:
        end = min(off + length, size)
        if end <= off:
            continue
        a, b = off // bs, -(-end // bs)
        if out and out[-1][0] + out[-1][1] >= a:
            s, n = out[-1]
            out[-1] = (s, max(n, b - s))
        else:
            out.append((a, b - a))
    return out


def _data_ranges(data: Data, size: int, bs: int) -> Sequence[tuple[int, int]]:
    """Block ranges a file's data needs; holes in it stay unallocated."""
    if size <= bs:
        return ((0, 1),)  # a one-block file has no hole worth keeping
    if isinstance(data, FileRangeData) and data.holes and data.offset == 0:
        # one stat instead of SEEK_DATA probing: a fully allocated host file has no holes
        try:
            st = os.stat(data.path)
        except OSError:
            pass
        else:
            if st.st_blocks * 512 >= size:
                return ((0, -(-size // bs)),)
    return _block_ranges(data.extents(), size, bs)


class Node:
    """One inode to write: its metadata entry and where its blocks go."""

    __slots__ = ("ino", "entry", "links", "size", "flags", "ranges", "content", "data",
                 "runs", "map_runs", "i_block", "ibody", "xblock", "map_count")

    def __init__(self, ino: int, entry: Entry) -> None:
        self.ino = ino
        self.entry = entry
        self.links = 1
        self.size = 0
        self.flags = 0
        # (shared empty tuples until set: a node costs little memory)
        #: logical (block, count) ranges holding data
        self.ranges: Sequence[tuple[int, int]] = ()
        #: rendered blocks (directories, slow symlinks); None for file data
        self.content: bytes | None = None
        self.data: Data | None = None
        #: physical (block, count) runs the ranges are laid on, in order
        self.runs: Sequence[tuple[int, int]] = ()
        self.map_runs: Sequence[tuple[int, int]] = ()
        self.map_count = 0
        #: i_block for inodes without mapped blocks (fast symlinks, devices)
        self.i_block: bytes | None = None
        self.ibody: bytes | None = None
        self.xblock = -1

    @property
    def nblocks(self) -> int:
        r = self.ranges
        if len(r) == 1:
            return r[0][1]
        return sum(n for _, n in r)


class Options:
    """The writer's options, parsed and checked."""

    def __init__(self, opts: dict, ctx: Context) -> None:
        self.fs = opts.get("fs") or "ext4"
        self.block_size = int(opts.get("block_size") or 4096)
        if self.block_size not in (1024, 2048, 4096):
            raise UsageError(f"ext4[block_size=...]: {self.block_size} is not 1024, 2048 or 4096")
        self.feats = parse_features(self.fs, opts.get("features") or "", opts.get("journal"))
        self.size = opts.get("size")
        self.inodes = opts.get("inodes")
        label = (opts.get("label") or "").encode()
        if len(label) > 16:
            raise UsageError(f"ext4[label=...]: {opts.get('label')!r} is longer than 16 bytes")
        self.label = label
        try:
            self.uuid = (uuidlib.UUID(opts["uuid"]) if opts.get("uuid")
                         else ctx.uuid("ext4", "uuid")).bytes
        except ValueError:
            raise UsageError(f"ext4[uuid=...]: not a UUID: {opts.get('uuid')!r}") from None
        self.hash_seed = ctx.uuid("ext4", "hash_seed").bytes
        self.reserved = float(opts.get("reserved") if opts.get("reserved") is not None else 5.0)
        if not 0 <= self.reserved <= 50:
            raise UsageError(f"ext4[reserved=...]: {self.reserved} is not a percentage 0-50")
        self.timestamp = ctx.timestamp
        self.extents = "extent" in self.feats
        self.csum = "metadata_csum" in self.feats
        self.csum_seed = crc32c_raw(_M32, self.uuid) if self.csum else 0


class Planner:
    """Turns a tree into inodes and block addresses for one set of options."""

    def __init__(self, tree: Tree, o: Options) -> None:
        self.tree = tree.sorted()
        self.o = o
        self.nodes: list[Node] = []  # by inode number - FIRST_INO, then root
        self.root: Node | None = None
        self.xblocks: list[bytes] = []
        self.xrefs: list[int] = []
        self._xblock_index: dict[bytes, int] = {}
        self.xblock_runs: list[tuple[int, int]] = []

    # -- inodes and contents
    def plan(self):
        """(geometry, end of allocation, journal runs, journal mapping runs)."""
        self._number()
        self._render()
        del self.ino_of  # only rendering needs names
        return self._solve()

    def _number(self) -> None:
        tree = self.tree
        self.ino_of: dict[str, int] = {"": ROOT_INO}
        order: list[Entry] = []
        lpf = tree.get("lost+found") if "lost+found" in tree else None
        self.make_lpf = lpf is None
        nxt = FIRST_INO
        if lpf is None or lpf.is_dir():
            self.ino_of["lost+found"] = nxt
            nxt += 1
            order.append(lpf if lpf is not None else Entry(
                "lost+found", Kind.DIR, mode=0o700,
                mtime_ns=self.o.timestamp * 1_000_000_000,
                atime_ns=self.o.timestamp * 1_000_000_000,
                ctime_ns=self.o.timestamp * 1_000_000_000))
        links: list[Entry] = []
        for e in tree:
            if e.path in self.ino_of:
                continue
            if e.link is not None:
                links.append(e)
                continue
            self.ino_of[e.path] = nxt
            nxt += 1
            order.append(e)
        for e in links:
            self.ino_of[e.path] = self.ino_of[tree.resolve(e).path]
        self.max_ino = nxt - 1
        counts = tree.link_counts()
        self.root = Node(ROOT_INO, tree.root)
        self.root.links = counts.get("", 2) + (1 if self.make_lpf else 0)
        self.nodes = []
        for i, e in enumerate(order):
            node = Node(FIRST_INO + i, e)
            node.links = counts.get(e.path, 2 if e.kind is Kind.DIR else 1)
            self.nodes.append(node)

    def inode_seed(self, ino: int) -> int:
        if not self.o.csum:
            return 0
        return crc32c_raw(crc32c_raw(self.o.csum_seed, _LE32.pack(ino)), _LE32.pack(0))

    def _render(self) -> None:
        o = self.o
        bs = o.block_size
        self.style = DirStyle(
            block_size=bs, csum=o.csum, htree="dir_index" in o.feats,
            filetype="filetype" in o.feats,
            hasher=DirHasher(o.hash_seed, HASH_HALF_MD4), hash_version=HASH_HALF_MD4)
        for node in [self.root, *self.nodes]:
            assert node is not None
            e = node.entry
            what = f"/{e.path}"
            kind = e.kind
            if kind is Kind.DIR:
                self._render_dir(node)
            elif kind is Kind.FILE:
                data = e.data
                node.size = data.size if data is not None else e.size
                if data is not None and node.size:
                    node.data = data
                    node.ranges = _data_ranges(data, node.size, bs)
            elif kind is Kind.SYMLINK:
                target = e.target.encode("utf-8", "surrogateescape")
                node.size = len(target)
                if not target:
                    raise CorruptError(f"{what}: symlink with an empty target")
                if len(target) < FAST_SYMLINK_MAX:
                    node.i_block = target.ljust(60, b"\0")
                elif len(target) >= bs:
                    raise UnsupportedError(
                        f"{what}: symlink target of {len(target)} bytes does not fit a "
                        f"{bs}-byte block")
                else:
                    node.content = target.ljust(bs, b"\0")
                    node.ranges = ((0, 1),)
            elif kind in (Kind.CHAR, Kind.BLOCK):
                node.i_block = _device_i_block(*e.rdev)
            else:
                node.i_block = bytes(60)
            if kind is not Kind.DIR and node.links > _LINK_MAX:
                raise UnsupportedError(f"{what}: {node.links} hardlinks exceed ext4's {_LINK_MAX}")
            if e.xattrs:
                self._render_xattrs(node, what)
            if node.ranges and node.i_block is None:
                node.flags |= EXTENTS_FL if o.extents else 0
            elif kind in (Kind.FILE, Kind.DIR) and o.extents:
                node.flags |= EXTENTS_FL

    def _render_dir(self, node: Node) -> None:
        e = node.entry
        path = e.path
        ino = self.ino_of[path]
        entries = []
        for child in self.tree.children(path):
            cino = self.ino_of[child.path]
            kind = self.tree.resolve(child).kind
            name = child.name.encode("utf-8", "surrogateescape")
            if len(name) > 255:
                raise UnsupportedError(f"/{child.path}: name longer than 255 bytes")
            entries.append((name, cino, _FTYPE[kind] if self.style.filetype else 0))
        if path == "" and self.make_lpf:
            entries.append((b"lost+found", FIRST_INO, FT_DIR if self.style.filetype else 0))
            entries.sort(key=lambda t: t[0])
        parent = ROOT_INO if path in ("", "lost+found") else self.ino_of[e.parent]
        min_blocks = 1
        if path == "lost+found":
            min_blocks = 12 if self.o.block_size == 1024 else _LPF_BYTES // self.o.block_size
        content, indexed = render_dir(self.style, ino, parent, entries, self.inode_seed(ino),
                                      min_blocks)
        node.content = content
        node.size = len(content)
        node.ranges = ((0, len(content) // self.o.block_size),)
        if indexed:
            node.flags |= INDEX_FL
        if node.links > _LINK_MAX:
            if "dir_nlink" not in self.o.feats:
                raise UnsupportedError(f"/{path}: too many subdirectories without dir_nlink")
            node.links = 1

    def _render_xattrs(self, node: Node, what: str) -> None:
        if "ext_attr" not in self.o.feats:
            raise UnsupportedError(f"{what}: has xattrs but the ext_attr feature is off")
        items = xattrwriter.to_items(node.entry.xattrs, what)
        inside, rest = xattrwriter.split(items, _XATTR_SPACE, self.o.block_size, what)
        if inside:
            node.ibody = xattrwriter.ibody(inside, _XATTR_SPACE)
        if rest:
            blk = xattrwriter.block(rest, self.o.block_size)
            idx = self._xblock_index.get(blk)
            if idx is None:
                idx = self._xblock_index[blk] = len(self.xblocks)
                self.xblocks.append(blk)
                self.xrefs.append(0)
            self.xrefs[idx] += 1
            node.xblock = idx

    # -- sizing and allocation
    def all_nodes(self) -> list[Node]:
        assert self.root is not None
        return [self.root, *self.nodes]

    def _allocate(self, geo: Geometry):
        """Allocate every block for ``geo``; returns (end of allocation,
        journal runs, journal mapping runs)."""
        o = self.o
        alloc = Allocator(geo.fixed, geo.first_data_block)
        #: the resize inode's double-indirect block (first, as mke2fs puts it
        #: right after the group 0 metadata)
        self.resize_dind = alloc.alloc(1)[0][0] if geo.resize_inode else 0
        jblocks = journal.default_journal_blocks(geo.blocks_count) if (
            "has_journal" in o.feats) else 0
        jruns = alloc.alloc(jblocks) if jblocks else []
        nodes = self.all_nodes()
        for node in nodes:
            if node.content is not None:
                node.runs = alloc.alloc(node.nblocks)
        self.xblock_runs = alloc.alloc(len(self.xblocks)) if self.xblocks else []
        for node in nodes:
            if node.content is None and node.ranges:
                node.runs = alloc.alloc(node.nblocks)
        bs = o.block_size
        for node in nodes:
            if node.ranges:
                node.map_count = self._map_count(node.ranges, node.runs, bs)
                node.map_runs = alloc.alloc(node.map_count) if node.map_count else []
        jmap: list[tuple[int, int]] = []
        if jblocks:
            n = self._map_count([(0, jblocks)], jruns, bs)
            jmap = alloc.alloc(n) if n else []
        return alloc.cursor, jruns, jmap

    def _map_count(self, ranges, runs, bs) -> int:
        if len(runs) == 1 and len(ranges) == 1:
            # one piece: the root in i_block maps it (4 extents or 12 blocks)
            n = runs[0][1]
            if n <= (EXTENT_ROOT_MAX * EXTENT_MAX_LEN if self.o.extents else NDIR_BLOCKS):
                return 0
        if self.o.extents:
            return mapping.extent_tree_blocks(mapping.count_extents(ranges, runs), bs)
        return mapping.blockmap_blocks(ranges, bs)

    def _geometry(self, blocks: int, inodes: int) -> Geometry:
        return Geometry.make(self.o.block_size, blocks, inodes, self.o.feats)

    def _inodes_for(self, blocks: int, room: bool) -> int:
        if self.o.inodes:
            if self.o.inodes < self.max_ino:
                raise NoSpaceError(
                    f"ext4[inodes={self.o.inodes}]: the tree needs {self.max_ino} inodes")
            return self.o.inodes
        if not room:
            return self.max_ino
        return max(blocks * self.o.block_size // INODE_RATIO,
                   self.max_ino + self.max_ino // 5 + 64)

    def _solve(self):
        o = self.o
        bs = o.block_size
        data = sum(n.nblocks for n in self.all_nodes()) + len(self.xblocks)
        if o.size not in (None, "min"):
            blocks = o.size // bs
            geo = self._geometry(blocks, self._inodes_for(blocks, True))
            if geo.inodes_count < self.max_ino:
                raise NoSpaceError(f"size={o.size}: the tree needs {self.max_ino} inodes")
            end, jruns, jmap = self._allocate(geo)
            if end > geo.blocks_count:
                need = self._fit(data, room=False)[0].blocks_count * bs
                raise NoSpaceError(
                    f"ext4: the tree needs {need} bytes ({-(-need // (1 << 20))} MiB) "
                    f"but size is {o.size}")
            return geo, end, jruns, jmap
        return self._fit(data, room=o.size is None)

    def _fit(self, data: int, room: bool):
        """The smallest geometry that holds everything (plus room to grow)."""
        bs = self.o.block_size
        slack = data // 5 + (2 << 20) // bs if room else 0
        blocks = data + slack + 64
        if "has_journal" in self.o.feats:
            blocks = max(blocks + journal.default_journal_blocks(blocks), 2048)
        # inode tables (sized from the first estimate), bitmaps and descriptors
        blocks += -(-self._inodes_for(blocks, room) * INODE_SIZE // bs) + \
            3 * -(-blocks // (8 * bs))
        for _ in range(100):
            inodes = self._inodes_for(blocks, room)
            # an inode bitmap is one block: more inodes need more groups
            groups = -(-inodes // (8 * bs))
            if groups > 1:
                blocks = max(blocks, (groups - 1) * 8 * bs + 4 * bs)
            geo = self._geometry(blocks, inodes)
            end, jruns, jmap = self._allocate(geo)
            short = end + slack - geo.blocks_count
            if short <= 0 and geo.inodes_count >= self.max_ino:
                return geo, end, jruns, jmap
            blocks += max(short, 1) + (blocks - geo.blocks_count)
        raise NoSpaceError("ext4: could not find a size that fits the tree")
