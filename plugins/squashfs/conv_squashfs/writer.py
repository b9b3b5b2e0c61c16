"""SquashFS 4.0 writer: a Tree becomes a Plan holding the finished image.

A squashfs image's size is known only after compression, so ``encode`` does
the work while planning: file data is compressed on a thread pool and
streamed into a nameless scratch file on the output's filesystem, the
metadata tables follow. When the image is the output (``-> raw``), the raw
sink links that file into place; inside a partition or a qcow2 the plan
copies it into its target (copy_file_range).

Image layout, in the order mksquashfs writes it (unsquashfs checks it):
superblock, compressor options, data blocks and fragments, inode table,
directory table, fragment table, export table, id table, xattr table; the
file is zero-padded to 4 KiB, ``bytes_used`` stays exact.

Inodes are written children before parents, each directory's entries in
byte order of name (the kernel's lookup relies on it); inode numbers follow
the same order, the root's is the highest.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import struct
import sys
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from itertools import repeat
from operator import attrgetter, is_not

from conv_squashfs import layout
from conv_squashfs.compressors import Codec, make_codec
from conv_squashfs.datawriter import DataWriter, FileData
from conv_squashfs.early import EarlyData, data_start
from conv_squashfs.metadata_writer import MetadataWriter, build_table
from conv_squashfs.xattr_writer import XattrWriter
from convcore.blockdev import Plan, Target
from convcore.errors import UnsupportedError, UsageError
from convcore.feed import take as take_feed
from convcore.format import Context
from convcore.tree import Entry, HostTreeFileData, Kind, Tree, gc_paused

_BASIC_TYPE = {Kind.DIR: layout.INODE_DIR, Kind.FILE: layout.INODE_FILE,
               Kind.SYMLINK: layout.INODE_SYMLINK, Kind.BLOCK: layout.INODE_BLKDEV,
               Kind.CHAR: layout.INODE_CHRDEV, Kind.FIFO: layout.INODE_FIFO,
               Kind.SOCKET: layout.INODE_SOCKET}
_U32 = 0xFFFFFFFF
_DIR = Kind.DIR
_FILE = Kind.FILE
_INODE_HEADER_PACK = layout.INODE_HEADER.pack
_FILE_INODE_FULL_PACK = struct.Struct(
    layout.INODE_HEADER.format + layout.FILE_INODE.format.lstrip("<")).pack
_DIR_ENTRY_PACK = layout.DIR_ENTRY.pack
_MAX_IDS = 65536
_METADATA_SIZE = layout.METADATA_SIZE
_DATA_OF = attrgetter("data")
_LINK_OF = attrgetter("link")


def _block_words(rec: FileData) -> bytes:
    """The little-endian u32 block size list of a file inode."""
    words = rec.block_sizes
    if sys.byteorder != "little":
        words = words[:]
        words.byteswap()
    return words.tobytes()


class SquashfsPlan(Plan):
    """A finished image in a nameless scratch file (``Context.scratch_file``:
    beside the output when the pipeline knows where that is)."""

    fs_type = "squashfs"

    def __init__(self, file, bytes_used: int, size: int) -> None:
        self._file = file
        self.bytes_used = bytes_used
        self.size = size

    def write_to(self, target: Target) -> None:
        # The padding after bytes_used is zeros, which the target already is.
        target.copy_from_fd(self._file.fileno(), 0, self.bytes_used, 0)

    def host_file(self) -> int | None:
        # The file holds the padded image from offset 0 (encode truncated it
        # to ``size``): the raw sink may link it in place of a copy.
        return None if self._file.closed else self._file.fileno()

    def close(self) -> None:
        self._file.close()


@dataclass
class Settings:
    codec: Codec
    block_size: int
    uid: int | None
    gid: int | None
    mtime: int | None
    excludes: list[str]
    fragments: bool
    dedup: bool
    xattrs: bool
    threads: int

    @classmethod
    def from_options(cls, opts: dict) -> Settings:
        block_size = opts.get("block_size") or 128 * 1024
        if not (layout.MIN_BLOCK_SIZE <= block_size <= layout.MAX_BLOCK_SIZE
                and block_size & (block_size - 1) == 0):
            raise UsageError(f"squashfs[block_size={block_size}]: must be a power of two "
                             f"from 4K to 1M")
        uid, gid = opts.get("uid"), opts.get("gid")
        if opts.get("all_root"):
            uid = 0 if uid is None else uid
            gid = 0 if gid is None else gid
        for name, value in (("uid", uid), ("gid", gid)):
            if value is not None and not 0 <= value <= _U32:
                raise UsageError(f"squashfs[{name}={value}]: must be 0 to {_U32}")
        mtime = opts.get("mtime")
        if mtime is not None and not 0 <= mtime <= _U32:
            raise UsageError(f"squashfs[mtime={mtime}]: must be 0 to {_U32} seconds")
        threads = opts.get("threads")
        if threads is None:
            threads = os.cpu_count() or 1
        if threads < 1:
            raise UsageError(f"squashfs[threads={threads}]: must be at least 1")
        excludes = [p.strip().strip("/") for p in (opts.get("exclude") or "").split(",")
                    if p.strip().strip("/")]
        codec = make_codec(opts.get("comp") or "gzip", block_size, opts.get("level"),
                           opts.get("bcj") or "")
        return cls(codec=codec, block_size=block_size, uid=uid, gid=gid, mtime=mtime,
                   excludes=excludes, fragments=opts.get("fragments", True) is not False,
                   dedup=opts.get("dedup", True) is not False,
                   xattrs=opts.get("xattrs", True) is not False, threads=threads)


#: the GIL switch interval while writing (see ``_switch_interval``)
SWITCH_INTERVAL = 0.0005


@contextlib.contextmanager
def _switch_interval(seconds: float) -> Iterator[None]:
    """A pool thread back from a codec or a read waits for the GIL while
    this thread runs Python, until the switch interval (5 ms by default)
    makes it let go; the blocks behind it wait too. A shorter interval
    while the image is written keeps the pool fed."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(min(before, seconds))
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def encode(tree: Tree, opts: dict, ctx: Context) -> SquashfsPlan:
    settings = Settings.from_options(opts)
    early = take_feed(ctx)
    if not isinstance(early, EarlyData):
        early = None
    image = early.take_image() if early is not None else ctx.scratch_file("conv-squashfs-")
    try:
        # No cyclic GC while writing: a few acyclic objects per entry, and with
        # a large tree alive each collection walks it all (~15% for 100k files).
        # In the conv command what the writer made is kept to the end: the
        # collection after the pause walked its per-entry lists (12 ms at
        # 100k entries, at the end of the run).
        with gc_paused(keep=ctx.one_shot), _switch_interval(SWITCH_INTERVAL):
            bytes_used = ImageWriter(tree, settings, ctx, image.fileno(), early).write()
    except BaseException:
        image.close()
        raise
    finally:
        if early is not None:
            early.close()
    padded = -(-bytes_used // layout.PAD_SIZE) * layout.PAD_SIZE
    return SquashfsPlan(image, bytes_used, padded)


class ImageWriter:
    """Writes one image. Its state is kept per walk position (an entry's
    index in ``entries``, children before parents) in lists: with a dict
    per kind of state keyed by path, each lookup at 100k entries was a
    cache miss (6% of the CPU of the whole conversion)."""

    def __init__(self, tree: Tree, settings: Settings, ctx: Context, fd: int,
                 early: EarlyData | None = None) -> None:
        self.tree = tree.sorted()
        #: the child that may have written the file data already
        self.early = early
        self.s = settings
        self.ctx = ctx
        self.fd = fd
        self.codec = settings.codec
        self.ids: dict[int, int] = {}
        self.xattrs = XattrWriter(self.codec)
        self.inodes = MetadataWriter(self.codec)
        self.dirs = MetadataWriter(self.codec)
        #: every entry written, children first (the walk)
        self.entries: list[Entry] = []
        #: by position: a directory's children's positions, None for others
        self.kids: list[list[int] | None] = []
        #: by a directory's position: its parent's, and its subdirectories
        self.parent: dict[int, int] = {}
        self.subdirs: dict[int, int] = {}
        #: by position: where the entry holding its inode is (a further
        #: name of a hardlinked file points at the first); None when every
        #: entry holds its own inode
        self.holder: list[int] | None = None
        #: by an inode's position: the entry with its metadata (the entry
        #: itself but for a hardlink whose first name is excluded), its
        #: number, its data record and its directory entry (ref, number, type)
        self.inode_entry: list[Entry] = []
        self.numbers: list[int] = []
        self.records: list[FileData | None] = []
        self.dirent: list[tuple[int, int, int] | None] = []

    # -- the walk

    def _excluded(self, entry: Entry) -> bool:
        path = entry.path
        for pattern in self.s.excludes:
            if fnmatch.fnmatchcase(path, pattern):
                return True
            if "/" not in pattern and fnmatch.fnmatchcase(entry.name, pattern):
                return True
        return False

    def _children(self, path: str) -> list[Entry]:
        kids = self.tree.children(path)
        if self.s.excludes:
            kids = [k for k in kids if not self._excluded(k)]
        return kids

    def _walk(self) -> None:
        """Fill ``entries`` (children before their directory, each
        directory's in order), ``kids``, ``parent`` and ``subdirs``."""
        entries, kids_at = self.entries, self.kids
        add_entry, add_kids = entries.append, kids_at.append
        parent, subdirs = self.parent, self.subdirs
        # per open directory: (entry, children, next child, children's
        # positions, subdirectories' positions)
        stack = [(self.tree.root, self._children(""), 0, [], [])]
        while stack:
            entry, kids, i, at, dirs = stack[-1]
            while i < len(kids):
                child = kids[i]
                i += 1
                if child.kind is _DIR and child.link is None:
                    stack[-1] = (entry, kids, i, at, dirs)
                    stack.append((child, self._children(child.path), 0, [], []))
                    break
                at.append(len(entries))
                add_entry(child)
                add_kids(None)
            else:
                stack.pop()
                here = len(entries)
                add_entry(entry)
                add_kids(at)
                subdirs[here] = len(dirs)
                for d in dirs:
                    parent[d] = here
                if stack:
                    stack[-1][3].append(here)
                    stack[-1][4].append(here)

    def _number(self) -> list[int]:
        """Number the inodes, in walk order (filling ``numbers``,
        ``inode_entry`` and ``holder``); returns each inode's link count."""
        entries, subdirs = self.entries, self.subdirs
        n = len(entries)
        self.numbers = numbers = list(range(1, n + 1))
        self.inode_entry = inodes = entries
        nlinks = [1] * n
        for here, count in subdirs.items():
            nlinks[here] = 2 + count
        if not any(map(is_not, map(_LINK_OF, entries), repeat(None))):
            # No hardlink (most trees): every entry is its own inode, numbered
            # in order, without a Python step per entry (35 ms at 100k).
            return nlinks
        self.holder = holder = list(range(n))
        self.inode_entry = inodes = list(entries)
        linked = {e.link for e in entries if e.link is not None}
        first: dict[str, int] = {}  # a hardlinked inode's key -> its position
        number = 0
        # The inode goes with the first of its names in the walk: its holder
        # (the tree's first name of it), or a further name that comes before
        # it (a tar's first name is the first archived) or with it excluded.
        for i, entry in enumerate(entries):
            key = entry.link
            if key is None:
                path = entry.path
                if path in linked:
                    h = first.get(path)
                    if h is not None:
                        holder[i] = h
                        numbers[i] = 0
                        nlinks[h] += 1
                        continue
                    first[path] = i
                number += 1
                numbers[i] = number
                continue
            h = first.get(key)
            if h is None:  # the first name of it in the walk holds it
                number += 1
                numbers[i] = number
                first[key] = i
                inode = inodes[i] = self.tree.resolve(entry)
                if inode.kind is Kind.DIR:
                    raise UnsupportedError(f"/{entry.path}: hardlink to a directory")
            else:
                holder[i] = h
                numbers[i] = 0
                nlinks[h] += 1
        return nlinks

    def _inode_positions(self) -> list[int]:
        """The positions that hold an inode, in walk (number) order."""
        holder = self.holder
        if holder is None:
            return list(range(len(self.entries)))
        return [i for i, h in enumerate(holder) if h == i]

    # -- the image

    def write(self) -> int:
        self._walk()
        nlinks = self._number()
        inode_count = len(self.entries) if self.holder is None else \
            sum(1 for i, h in enumerate(self.holder) if h == i)
        if inode_count > _U32 - 1:
            raise UnsupportedError(f"squashfs holds at most {_U32 - 1} inodes")
        self.records = [None] * len(self.entries)
        self.dirent = [None] * len(self.entries)

        options = self.codec.options()
        if options is not None:
            block = layout.METADATA_HEADER.pack(len(options) | layout.METADATA_UNCOMPRESSED) \
                + options
            os.pwrite(self.fd, block, layout.SUPERBLOCK_SIZE)
        pos = data_start(self.codec)  # where the early child began too

        # The inode and directory tables are written while the pool reads and
        # compresses file data, as far as the files' records are ready.
        steps = self._write_inodes(nlinks, inode_count)
        pos = self._write_data(pos, partial(next, steps, None))
        for _ in steps:
            raise AssertionError("a file's record is not ready after the data")
        root = self.dirent[-1]
        assert root is not None
        return self._write_tables(pos, root[0], inode_count, options is not None)

    def _files(self) -> tuple[list[int], list[int]]:
        """The positions of the files without data (empty), in walk order,
        and of those with data, in the order it is written: a scanned
        directory's files in walk order (the order the dir source finds them
        in, so that a child can write their data while it scans:
        conv_squashfs.early), other sources' files in the order cheapest to
        read them (Tree.data_order: a tar's in archive order)."""
        inodes = self.inode_entry
        if self.holder is None:
            files = [i for i, e in enumerate(inodes) if e.kind is _FILE]
        else:
            files = [i for i in self._inode_positions() if inodes[i].kind is _FILE]
        empty = [i for i in files if inodes[i].data is None]
        if len(empty) == len(files):
            return empty, []
        full = [i for i in files if inodes[i].data is not None] if empty else files
        entries = self.entries
        orphans = inodes is not entries and any(inodes[i] is not entries[i] for i in full)
        if not orphans and all(map(isinstance, map(_DATA_OF, map(inodes.__getitem__, full)),
                                         repeat(HostTreeFileData))):
            return empty, full
        position = {id(inodes[i]): i for i in full}
        return empty, [position[id(e)] for e in self.tree.data_order(
            [inodes[i] for i in full])]

    def _write_data(self, pos: int, idle: Callable[[], object]) -> int:
        empty, full = self._files()
        inodes, records = self.inode_entry, self.records
        early, self.early = self.early, None
        if early is not None:
            for i in empty:
                records[i] = FileData(0, True)

            def ready(index: int, got: list[FileData]) -> None:
                for i, rec in zip(full[index:index + len(got)], got, strict=True):
                    records[i] = rec
                idle()

            handover = early.result([inodes[i].data for i in full], pos, ready)
            if handover is not None and handover.state is None:
                self.fragment_table = handover.fragment_table
                return handover.end
        else:
            handover = None
        files = [(i, inodes[i].path, inodes[i].data) for i in empty + full]
        writer = DataWriter(self.fd, pos, self.codec, self.s.block_size, self.s.threads,
                            self.s.fragments, self.s.dedup, records)
        try:
            if handover is not None:
                # the child wrote the first files' data, and stopped where
                # this writer goes on (the source stopped feeding it)
                done = len(empty) + handover.count
                writer.resume(handover.state, files[len(empty):done])  # type: ignore[arg-type]
                files = files[done:]  # the empty files' records are set above
            writer.add_files(files, idle)
            end = writer.finish()
        finally:
            writer.close()
        self.fragment_table = writer.fragment_table
        return end

    # -- inodes and directories

    def _id(self, value: int) -> int:
        index = self.ids.get(value)
        if index is None:
            if not 0 <= value <= _U32:
                raise UnsupportedError(f"uid/gid {value} does not fit squashfs (0 to {_U32})")
            if len(self.ids) >= _MAX_IDS:
                raise UnsupportedError(f"squashfs holds at most {_MAX_IDS} distinct uids/gids")
            index = self.ids[value] = len(self.ids)
        return index

    def _header(self, inode_type: int, inode: Entry, number: int) -> bytes:
        s = self.s
        uid = inode.uid if s.uid is None else s.uid
        gid = inode.gid if s.gid is None else s.gid
        if s.mtime is not None:
            mtime = s.mtime
        else:
            mtime = min(max(inode.mtime_ns // 1_000_000_000, 0), _U32)
        ids = self.ids
        uid_idx = ids[uid] if uid in ids else self._id(uid)
        gid_idx = ids[gid] if gid in ids else self._id(gid)
        return _INODE_HEADER_PACK(inode_type, inode.mode & 0o7777, uid_idx, gid_idx, mtime,
                                  number)

    def _xattr(self, inode: Entry) -> int:
        if not self.s.xattrs or not inode.xattrs:
            return layout.INVALID_XATTR
        return self.xattrs.add(inode.xattrs, inode.path)

    def _write_inodes(self, nlinks: list[int], inode_count: int) -> Iterator[None]:
        """Write every inode and directory, in walk order; pauses (yields)
        at a file whose data record is not ready yet."""
        dirent, records, numbers = self.dirent, self.records, self.numbers
        inodes, holder = self.inode_entry, self.holder
        # The common case, a plain file, is packed here straight into the
        # inode stream (_header and _file_body inlined): this runs once per
        # file of the tree. ``pending`` and ``out`` stay the same objects.
        pending, out, flush = self.inodes.pending, self.inodes.out, self.inodes.flush_full
        ids = self.ids
        force_uid, force_gid, force_mtime = self.s.uid, self.s.gid, self.s.mtime
        file_type = layout.INODE_FILE
        file_pack = _FILE_INODE_FULL_PACK
        for i, kids in enumerate(self.kids):
            if kids is not None:
                dirent[i] = (self._write_dir(i, kids, nlinks[i], inode_count), numbers[i],
                             layout.INODE_DIR)
                continue
            if holder is not None:
                i = holder[i]
                if dirent[i] is not None:
                    continue  # a further name of an inode written
            inode = inodes[i]
            if inode.kind is _FILE:
                rec = records[i]
                while rec is None or not rec.ready:
                    yield
                    rec = records[i]
                if (nlinks[i] == 1 and not inode.xattrs and rec.size <= _U32
                        and rec.blocks_start <= _U32 and not rec.sparse):
                    uid = inode.uid if force_uid is None else force_uid
                    gid = inode.gid if force_gid is None else force_gid
                    uid_idx = ids.get(uid)
                    if uid_idx is None:
                        uid_idx = self._id(uid)
                    gid_idx = ids.get(gid)
                    if gid_idx is None:
                        gid_idx = self._id(gid)
                    if force_mtime is None:
                        mtime = inode.mtime_ns // 1_000_000_000
                        if not 0 <= mtime <= _U32:
                            mtime = 0 if mtime < 0 else _U32
                    else:
                        mtime = force_mtime
                    number = numbers[i]
                    ref = (len(out) << 16) | len(pending)
                    pending += file_pack(
                        file_type, inode.mode & 0o7777, uid_idx, gid_idx, mtime, number,
                        rec.blocks_start, rec.fragment, rec.fragment_offset, rec.size)
                    if rec.block_sizes:
                        pending += _block_words(rec)
                    if len(pending) >= _METADATA_SIZE:
                        flush()
                    dirent[i] = (ref, number, file_type)
                    continue
            dirent[i] = (self._write_leaf(inode, numbers[i], records[i], nlinks[i]), numbers[i],
                         _BASIC_TYPE[inode.kind])

    def _write_leaf(self, inode: Entry, number: int, rec: FileData | None, nlink: int) -> int:
        ref = self.inodes.ref
        xattr = self._xattr(inode)
        kind = inode.kind
        basic = _BASIC_TYPE[kind]
        extended = xattr != layout.INVALID_XATTR
        if kind is Kind.FILE:
            assert rec is not None
            extended, body = self._file_body(rec, nlink, xattr)
        elif kind is Kind.SYMLINK:
            target = inode.target.encode("utf-8", "surrogateescape")
            body = layout.SYMLINK_INODE.pack(nlink, len(target)) + target
            if extended:
                body += layout.XATTR_IDX.pack(xattr)
        elif kind in (Kind.CHAR, Kind.BLOCK):
            major, minor = inode.rdev
            if not (0 <= major <= 0xFFF and 0 <= minor <= 0xFFFFF):
                raise UnsupportedError(f"/{inode.path}: device {major}:{minor} does not fit "
                                       f"squashfs (major <= 4095, minor <= 1048575)")
            rdev = layout.encode_dev(major, minor)
            body = (layout.LDEV_INODE.pack(nlink, rdev, xattr) if extended
                    else layout.DEV_INODE.pack(nlink, rdev))
        else:  # FIFO, SOCKET
            body = (layout.LIPC_INODE.pack(nlink, xattr) if extended
                    else layout.IPC_INODE.pack(nlink))
        inode_type = basic + layout.EXTENDED_OFFSET if extended else basic
        self.inodes.write(self._header(inode_type, inode, number) + body)
        return ref

    @staticmethod
    def _file_body(rec: FileData, nlink: int, xattr: int) -> tuple[bool, bytes]:
        """(extended?, the file inode's body with its block size list)."""
        sizes = _block_words(rec)
        if (nlink > 1 or xattr != layout.INVALID_XATTR or rec.size > _U32
                or rec.blocks_start > _U32 or rec.sparse):
            return True, layout.LFILE_INODE.pack(
                rec.blocks_start, rec.size, rec.sparse, nlink, rec.fragment,
                rec.fragment_offset, xattr) + sizes
        return False, layout.FILE_INODE.pack(
            rec.blocks_start, rec.fragment, rec.fragment_offset, rec.size) + sizes

    def _write_dir(self, here: int, kids: list[int], nlink: int, inode_count: int) -> int:
        entry = self.entries[here]
        skip = len(entry.path) + 1 if entry.path else 0
        listing, index, start_pos = self._write_listing(kids, skip)
        start_block = self.dirs.block_start(start_pos)
        offset = start_pos % layout.METADATA_SIZE
        number = self.numbers[here]
        parent = self.numbers[self.parent[here]] if entry.path else inode_count + 1
        xattr = self._xattr(entry)
        file_size = listing + 3  # the kernel counts "." and ".." as 3 bytes
        ref = self.inodes.ref
        if index or xattr != layout.INVALID_XATTR or file_size > 0xFFFF:
            body = layout.LDIR_INODE.pack(nlink, file_size, start_block, parent, len(index),
                                          offset, xattr)
            parts = [self._header(layout.INODE_LDIR, entry, number), body]
            for listing_offset, block, name in index:
                parts.append(layout.DIR_INDEX.pack(listing_offset, block, len(name) - 1))
                parts.append(name)
            self.inodes.write(b"".join(parts))
        else:
            body = layout.DIR_INODE.pack(start_block, nlink, file_size, offset, parent)
            self.inodes.write(self._header(layout.INODE_DIR, entry, number) + body)
        return ref

    def _write_listing(self, kids: list[int], skip: int) -> tuple[int, list, int]:
        """Write one directory's entries (the positions of its children,
        whose paths start with ``skip`` characters of the directory's own
        and a slash) into the directory table; returns (listing size, index
        entries (offset, block, first name), stream start)."""
        start_pos = self.dirs.position
        buf = bytearray()
        index_pos: list[tuple[int, bytes]] = []  # (listing offset, first name)
        header_at = -1
        count = 0
        base_block = base_number = 0
        index_block = start_pos // layout.METADATA_SIZE
        dirent, entries, holder = self.dirent, self.entries, self.holder
        for kid in kids:
            path = entries[kid].path
            name = path[skip:].encode("utf-8", "surrogateescape")
            if not 0 < len(name) <= layout.NAME_MAX:
                raise UnsupportedError(f"/{path}: name longer than {layout.NAME_MAX} bytes")
            ref, number, inode_type = dirent[kid if holder is None else holder[kid]]
            block, offset = ref >> 16, ref & 0xFFFF
            if (header_at < 0 or count == layout.DIR_ENTRIES_MAX or block != base_block
                    or not layout.DIR_INODE_DELTA_MIN <= number - base_number
                    <= layout.DIR_INODE_DELTA_MAX):
                if header_at >= 0:
                    layout.DIR_HEADER.pack_into(buf, header_at, count - 1, base_block,
                                                base_number)
                    here = (start_pos + len(buf)) // layout.METADATA_SIZE
                    if here != index_block:
                        index_pos.append((len(buf), name))
                        index_block = here
                header_at = len(buf)
                buf += bytes(layout.DIR_HEADER.size)
                count = 0
                base_block, base_number = block, number
            buf += _DIR_ENTRY_PACK(offset, number - base_number, inode_type, len(name) - 1)
            buf += name
            count += 1
        if header_at >= 0:
            layout.DIR_HEADER.pack_into(buf, header_at, count - 1, base_block, base_number)
        self.dirs.write(buf)
        index = [(off, self.dirs.block_start(start_pos + off), name) for off, name in index_pos]
        return len(buf), index, start_pos

    # -- tables and superblock

    def _write_tables(self, pos: int, root_ref: int, inode_count: int,
                      has_options: bool) -> int:
        fd = self.fd
        codec = self.codec
        parts: list[bytes] = []

        def put(data: bytes) -> None:
            nonlocal pos
            parts.append(data)
            pos += len(data)

        inode_table_start = pos
        put(bytes(self.inodes.finish()))
        directory_table_start = pos
        put(bytes(self.dirs.finish()))

        frag_entries = b"".join(layout.FRAGMENT_ENTRY.pack(start, word, 0)
                                for start, word in self.fragment_table)
        blocks, index = build_table(codec, frag_entries, pos)
        put(blocks)
        fragment_table_start = pos
        put(index)

        # inode number n's ref at 8 * (n - 1): inode positions are in number order
        dirent = self.dirent
        refs = array("Q", [dirent[i][0] for i in self._inode_positions()])  # type: ignore[index]
        if sys.byteorder != "little":
            refs.byteswap()
        export = refs.tobytes()
        blocks, index = build_table(codec, export, pos)
        put(blocks)
        export_table_start = pos
        put(index)

        if not self.ids:
            self._id(0)
        ids = b"".join(layout.ID_ENTRY.pack(v) for v in self.ids)
        blocks, index = build_table(codec, ids, pos)
        put(blocks)
        id_table_start = pos
        put(index)

        xattr_id_table_start = layout.INVALID_TABLE
        if len(self.xattrs):
            table, xattr_id_table_start = self.xattrs.build(pos)
            put(table)

        os.pwrite(fd, b"".join(parts), inode_table_start)
        bytes_used = pos

        flags = layout.FLAG_EXPORTABLE
        if self.s.dedup:
            flags |= layout.FLAG_DUPLICATES
        if not self.s.fragments:
            flags |= layout.FLAG_NO_FRAGMENTS
        if not self.s.xattrs:
            flags |= layout.FLAG_NO_XATTRS
        if has_options:
            flags |= layout.FLAG_COMPRESSOR_OPTIONS
        mkfs_time = self.s.mtime if self.s.mtime is not None else self.ctx.timestamp
        superblock = layout.SUPERBLOCK.pack(
            layout.MAGIC, inode_count, min(max(mkfs_time, 0), _U32), self.s.block_size,
            len(self.fragment_table), codec.comp_id, self.s.block_size.bit_length() - 1,
            flags, len(self.ids), layout.VERSION_MAJOR, layout.VERSION_MINOR, root_ref,
            bytes_used, id_table_start, xattr_id_table_start, inode_table_start,
            directory_table_start, fragment_table_start, export_table_start)
        os.pwrite(fd, superblock, 0)
        # Drop bytes a deduplicated file left past the end, then pad with zeros.
        os.ftruncate(fd, bytes_used)
        os.ftruncate(fd, -(-bytes_used // layout.PAD_SIZE) * layout.PAD_SIZE)
        return bytes_used
