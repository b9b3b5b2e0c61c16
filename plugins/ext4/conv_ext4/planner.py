"""Planning an ext2/3/4 filesystem: inode numbers, rendered directories,
symlinks and xattrs, the filesystem size, and every block's address, all
before a byte is written.

Blocks are allocated in ascending order around the fixed group metadata:
journal, then directory/symlink/xattr blocks, then file data, then
extent-tree or indirect blocks.
"""

from __future__ import annotations

import operator
import os
import struct
import uuid as uuidlib
from array import array
from collections.abc import Iterable, Sequence

from conv_ext4 import journal, mapping, xattrwriter
from conv_ext4.csum import crc32c_raw
from conv_ext4.dirhash import DirHasher
from conv_ext4.dirwriter import DirStyle, linear_blocks, render_dir
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
    bytewise_sorted,
)

_M32 = 0xFFFFFFFF
_LE32 = struct.Struct("<I")
_FTYPE = {Kind.FILE: FT_REG_FILE, Kind.DIR: FT_DIR, Kind.SYMLINK: FT_SYMLINK,
          Kind.CHAR: FT_CHRDEV, Kind.BLOCK: FT_BLKDEV, Kind.FIFO: FT_FIFO,
          Kind.SOCKET: FT_SOCK}
_FTYPE_OF_MODE = {k._value_: t for k, t in _FTYPE.items()}
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


Run = tuple[int, int]
_INF = 1 << 64


def _zeros(typecode: str, n: int) -> array:
    return array(typecode, bytes(array(typecode).itemsize * n))


class Planner:
    """Turns a tree into inodes and block addresses for one set of options.

    Per-inode state lives in flat arrays indexed by inode number (a few
    dozen bytes an inode, no object each); what only some inodes have
    (rendered blocks, split runs, block maps, xattrs) in dicts keyed by
    inode number. A file's logical ranges default to one from block 0 and
    its physical runs to one at ``start``.
    """

    def __init__(self, tree: Tree, o: Options) -> None:
        self.tree = tree
        self.o = o
        #: the entry holding each inode's metadata; None for reserved inodes
        self.ents: list[Entry | None] = []
        self.nlink = array("I")
        self.size = array("Q")
        self.flags = array("I")
        #: data blocks (directory, symlink or file contents), holes excluded
        self.nblocks = array("Q")
        #: first physical block of the data
        self.start = array("Q")
        #: extent-tree or indirect blocks
        self.map_count = array("I")
        #: rendered blocks (directories, slow symlinks)
        #: None: a linear directory, rendered when written (see content_of)
        self.content: dict[int, bytes | None] = {}
        #: child inode numbers of those directories, in name order
        self.dir_kids: dict[int, array] = {}
        #: logical (block, count) ranges, where not one range from block 0
        self.ranges: dict[int, Sequence[Run]] = {}
        #: physical runs, where more than one
        self.runs: dict[int, Sequence[Run]] = {}
        self.map_runs: dict[int, Sequence[Run]] = {}
        #: i_block of inodes that map no blocks (fast symlinks, devices)
        self.i_block: dict[int, bytes] = {}
        self.ibody: dict[int, bytes] = {}
        #: index into xblocks of the inode's shared xattr block
        self.xblock: dict[int, int] = {}
        self.xblocks: list[bytes] = []
        self.xrefs: list[int] = []
        self._xblock_index: dict[bytes, int] = {}
        self.xblock_runs: Sequence[Run] = []
        self.resize_dind = 0

    def children(self, path: str) -> list[Entry]:
        """A directory's children in byte order of name (reproducible
        inode numbers and directory blocks whatever order the source had)."""
        kids = self.tree.children(path)
        if len(kids) < 2:
            return kids
        paths = [k.path for k in kids]
        # siblings share their parent's prefix: ordering paths orders names;
        # str order is byte order for ASCII (most trees, in order already)
        if all(map(operator.lt, paths, paths[1:])) and "".join(paths).isascii():
            return kids
        by_path = dict(zip(paths, kids, strict=True))
        return [by_path[p] for p in bytewise_sorted(paths)]

    def ranges_of(self, ino: int) -> Sequence[Run]:
        r = self.ranges.get(ino)
        if r is not None:
            return r
        n = self.nblocks[ino]
        return ((0, n),) if n else ()

    def runs_of(self, ino: int) -> Sequence[Run]:
        r = self.runs.get(ino)
        if r is not None:
            return r
        n = self.nblocks[ino]
        return ((self.start[ino], n),) if n else ()

    # -- inodes and contents
    def plan(self):
        """(geometry, end of allocation, journal runs, journal mapping runs)."""
        kids = self._number()
        self._render(kids)
        return self._solve()

    def _number(self) -> dict[int, array]:
        """Number the inodes in tree order (depth first, lost+found first) and
        count links; returns each directory's child inode numbers, in its
        child order."""
        tree = self.tree
        children = self.children
        root = tree.root
        lpf = tree.get("lost+found") if "lost+found" in tree else None
        self.make_lpf = lpf is None
        ents: list[Entry | None] = [None] * FIRST_INO
        ents[ROOT_INO] = root
        lpf_ino = 0
        if lpf is None or lpf.is_dir():
            t = self.o.timestamp * 1_000_000_000
            lpf_ino = FIRST_INO
            ents.append(lpf if lpf is not None else Entry(
                "lost+found", Kind.DIR, mode=0o700, mtime_ns=t, atime_ns=t, ctime_ns=t))
        kids: dict[int, array] = {}
        #: parent of each directory ("..")
        self.parent: dict[int, int] = {ROOT_INO: ROOT_INO}
        if lpf_ino:
            self.parent[lpf_ino] = ROOT_INO
        subdirs: dict[int, int] = {}
        links: list[tuple[array, int, Entry]] = []
        dir_ino: dict[str, int] = {"": ROOT_INO}
        top = kids[ROOT_INO] = array("I")
        stack = [(iter(children("")), top, ROOT_INO)]
        DIR = Kind.DIR  # noqa: N806
        while stack:
            it, arr, parent = stack[-1]
            for e in it:
                if e.link is not None:
                    links.append((arr, len(arr), e))
                    arr.append(0)
                    continue
                if e is lpf and lpf_ino:
                    ino = lpf_ino
                else:
                    ino = len(ents)
                    ents.append(e)
                arr.append(ino)
                if e.kind is DIR:
                    subdirs[parent] = subdirs.get(parent, 0) + 1
                    self.parent[ino] = parent
                    dir_ino[e.path] = ino
                    sub = kids[ino] = array("I")
                    stack.append((iter(children(e.path)), sub, ino))
                    break
            else:
                stack.pop()
        n = len(ents)
        nlink = _zeros("I", n)
        for ino in range(ROOT_INO, n):
            e = ents[ino]
            if e is not None:
                nlink[ino] = 2 + subdirs.get(ino, 0) if e.kind is DIR else 1
        if self.make_lpf:
            nlink[ROOT_INO] += 1
            if lpf_ino:
                nlink[lpf_ino] = 2
        # hardlinks: the inode of the entry they name, found through its
        # parent directory's child list
        index: dict[int, dict[int, int]] = {}
        for arr, slot, e in links:
            held = tree.resolve(e)
            if held is lpf and lpf_ino:
                ino = lpf_ino
            else:
                pino = dir_ino[held.path.rpartition("/")[0]] if held.path else None
                if pino is None:
                    ino = ROOT_INO
                else:
                    where = index.get(pino)
                    if where is None:
                        where = index[pino] = {id(k): i for i, k in
                                               enumerate(children(ents[pino].path))}
                    ino = kids[pino][where[id(held)]]
            arr[slot] = ino
            nlink[ino] += 1
        self.ents = ents
        self.nlink = nlink
        self.max_ino = n - 1
        return kids

    def inode_seed(self, ino: int) -> int:
        if not self.o.csum:
            return 0
        return crc32c_raw(crc32c_raw(self.o.csum_seed, _LE32.pack(ino)), _LE32.pack(0))

    def _render(self, kids: dict[int, array]) -> None:
        o = self.o
        bs = o.block_size
        self.style = DirStyle(
            block_size=bs, csum=o.csum, htree="dir_index" in o.feats,
            filetype="filetype" in o.feats,
            hasher=DirHasher(o.hash_seed, HASH_HALF_MD4), hash_version=HASH_HALF_MD4)
        ents = self.ents
        n = len(ents)
        size = self.size = _zeros("Q", n)
        nblocks = self.nblocks = _zeros("Q", n)
        flags = self.flags = _zeros("I", n)
        self.start = _zeros("Q", n)
        self.map_count = _zeros("I", n)
        ext = EXTENTS_FL if o.extents else 0
        FILE, DIR, SYMLINK = Kind.FILE, Kind.DIR, Kind.SYMLINK  # noqa: N806
        for ino in range(ROOT_INO, n):
            e = ents[ino]
            if e is None:
                continue
            kind = e.kind
            if kind is FILE:
                flags[ino] = ext
                data = e.data
                if data is None:
                    size[ino] = e.size
                    continue
                sz = size[ino] = data.size
                if not sz:
                    pass
                elif sz <= bs or isinstance(data, FileRangeData) and not data.holes or \
                        type(data).extents is Data.extents:
                    nblocks[ino] = -(-sz // bs)  # no holes to look for
                else:
                    r = _data_ranges(data, sz, bs)
                    if len(r) == 1 and r[0][0] == 0:
                        nblocks[ino] = r[0][1]
                    else:
                        self.ranges[ino] = r
                        nblocks[ino] = sum(c for _, c in r)
            elif kind is DIR:
                self._render_dir(ino, e, kids.pop(ino, None))
                flags[ino] |= ext
            elif kind is SYMLINK:
                what = f"/{e.path}"
                target = e.target.encode("utf-8", "surrogateescape")
                size[ino] = len(target)
                if not target:
                    raise CorruptError(f"{what}: symlink with an empty target")
                if len(target) < FAST_SYMLINK_MAX:
                    self.i_block[ino] = target.ljust(60, b"\0")
                elif len(target) >= bs:
                    raise UnsupportedError(
                        f"{what}: symlink target of {len(target)} bytes does not fit a "
                        f"{bs}-byte block")
                else:
                    self.content[ino] = target.ljust(bs, b"\0")
                    nblocks[ino] = 1
                    flags[ino] = ext
            elif kind in (Kind.CHAR, Kind.BLOCK):
                self.i_block[ino] = _device_i_block(*e.rdev)
            if e.xattrs:
                self._render_xattrs(ino, e, f"/{e.path}")
        if max(self.nlink) > _LINK_MAX:
            for ino in range(ROOT_INO, n):
                e = ents[ino]
                if e is not None and e.kind is not DIR and self.nlink[ino] > _LINK_MAX:
                    raise UnsupportedError(
                        f"/{e.path}: {self.nlink[ino]} hardlinks exceed ext4's {_LINK_MAX}")

    def _dir_entries(self, path: str, child_inos: array | None) -> list[tuple[bytes, int, int]]:
        """(name, inode, file type) of a directory's entries, in name order."""
        tree = self.tree
        filetype = self.style.filetype
        kids = self.children(path)
        names = [k.path.rpartition("/")[2] for k in kids]
        # one encode for the whole directory (names hold no NUL)
        encoded = "\0".join(names).encode("utf-8", "surrogateescape").split(b"\0") \
            if names else []
        if filetype:
            ftypes = [_FTYPE_OF_MODE[(tree.resolve(k) if k.link is not None else k).kind._value_]
                      for k in kids]
        else:
            ftypes = [0] * len(kids)
        entries = list(zip(encoded, child_inos or (), ftypes, strict=True))
        if path == "" and self.make_lpf:
            entries.append((b"lost+found", FIRST_INO, FT_DIR if filetype else 0))
            entries.sort(key=lambda t: t[0])
        return entries

    def _min_dir_blocks(self, path: str) -> int:
        if path == "lost+found":
            return 12 if self.o.block_size == 1024 else _LPF_BYTES // self.o.block_size
        return 1

    def _render_dir(self, ino: int, e: Entry, child_inos: array | None) -> None:
        path = e.path
        entries = self._dir_entries(path, child_inos)
        for name, _, _ in entries:
            if len(name) > 255:
                raise UnsupportedError(f"/{path + '/' if path else ''}"
                                       f"{name.decode('utf-8', 'surrogateescape')}: "
                                       "name longer than 255 bytes")
        min_blocks = self._min_dir_blocks(path)
        bs = self.o.block_size
        n = linear_blocks(self.style, [len(name) for name, _, _ in entries], min_blocks)
        if n:
            # a linear directory: only its size now; its blocks are rendered
            # when written (4 KiB a directory not held meanwhile), from the
            # child inode numbers kept here
            self.content[ino] = None
            self.dir_kids[ino] = child_inos if child_inos is not None else array("I")
            content_len = n * bs
        else:
            content, indexed = render_dir(self.style, ino, self.parent[ino], entries,
                                          self.inode_seed(ino), min_blocks)
            self.content[ino] = content
            content_len = len(content)
            if indexed:
                self.flags[ino] |= INDEX_FL
        self.size[ino] = content_len
        self.nblocks[ino] = content_len // bs
        if self.nlink[ino] > _LINK_MAX:
            if "dir_nlink" not in self.o.feats:
                raise UnsupportedError(f"/{path}: too many subdirectories without dir_nlink")
            self.nlink[ino] = 1

    def content_of(self, ino: int) -> bytes:
        """Rendered blocks (directories, slow symlinks): from planning, or
        rendered now for a linear directory."""
        content = self.content[ino]
        if content is not None:
            return content
        e = self.ents[ino]
        assert e is not None
        entries = self._dir_entries(e.path, self.dir_kids[ino])
        content, indexed = render_dir(self.style, ino, self.parent[ino], entries,
                                      self.inode_seed(ino), self._min_dir_blocks(e.path))
        if indexed or len(content) != self.nblocks[ino] * self.o.block_size:
            raise AssertionError(f"directory inode {ino}: rendered unlike its plan")
        return content

    def _render_xattrs(self, ino: int, e: Entry, what: str) -> None:
        if "ext_attr" not in self.o.feats:
            raise UnsupportedError(f"{what}: has xattrs but the ext_attr feature is off")
        items = xattrwriter.to_items(e.xattrs, what)
        inside, rest = xattrwriter.split(items, _XATTR_SPACE, self.o.block_size, what)
        if inside:
            self.ibody[ino] = xattrwriter.ibody(inside, _XATTR_SPACE)
        if rest:
            blk = xattrwriter.block(rest, self.o.block_size)
            idx = self._xblock_index.get(blk)
            if idx is None:
                idx = self._xblock_index[blk] = len(self.xblocks)
                self.xblocks.append(blk)
                self.xrefs.append(0)
            self.xrefs[idx] += 1
            self.xblock[ino] = idx

    # -- sizing and allocation
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
        nblocks, start = self.nblocks, self.start
        self.runs = runs = {}
        for ino in sorted(self.content):
            r = alloc.alloc(nblocks[ino])
            start[ino] = r[0][0]
            if len(r) > 1:
                runs[ino] = r
        self.xblock_runs = alloc.alloc(len(self.xblocks)) if self.xblocks else []
        # file data in inode order: the common case (the run fits before the
        # next fixed range) inline, the Allocator for the rest
        content = self.content
        fixed = alloc.fixed
        nfixed = len(fixed)
        cursor = alloc.cursor
        limit = fixed[alloc.i][0] if alloc.i < nfixed else _INF
        for ino in range(len(nblocks)):
            k = nblocks[ino]
            if not k or ino in content:
                continue
            if cursor + k <= limit:
                start[ino] = cursor
                cursor += k
                continue
            alloc.cursor = cursor
            r = alloc.alloc(k)
            start[ino] = r[0][0]
            if len(r) > 1:
                runs[ino] = r
            cursor = alloc.cursor
            limit = fixed[alloc.i][0] if alloc.i < nfixed else _INF
        alloc.cursor = cursor
        bs = o.block_size
        one_piece = EXTENT_ROOT_MAX * EXTENT_MAX_LEN if o.extents else NDIR_BLOCKS
        map_count = self.map_count
        self.map_runs = map_runs = {}
        ranges = self.ranges
        for ino in range(len(nblocks)):
            k = nblocks[ino]
            if not k or k <= one_piece and ino not in ranges and ino not in runs:
                continue
            n = self._map_count(self.ranges_of(ino), self.runs_of(ino), bs)
            map_count[ino] = n
            if n:
                map_runs[ino] = alloc.alloc(n)
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
        data = sum(self.nblocks) + len(self.xblocks)
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
