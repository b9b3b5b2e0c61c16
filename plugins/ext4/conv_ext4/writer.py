"""ext2/ext3/ext4 writer: ``encode`` plans a filesystem from a tree
(planner.py); the plan's ``write_to`` writes it in place.

Metadata goes out in large contiguous pieces; file data moves straight from
its source into its blocks (copy_file_range when both ends are host files,
small files gathered into one buffer) while the inode tables and bitmaps
are built: in a forked child when the output is a host file (then this
process joins in once its metadata is written), else on threads.
Superblocks are written last.
"""

from __future__ import annotations

import array
import gc
import os
import struct
import threading

from conv_ext4 import journal, mapping
from conv_ext4.csum import crc32c as _crc32c
from conv_ext4.csum import crc32c_raw
from conv_ext4.geometry import (
    INODE_SIZE,
    Geometry,
    feature_words,
)
from conv_ext4.layout import (
    BG_INODE_ZEROED,
    CHECKSUM_CRC32C,
    DEFM_ACL,
    DEFM_XATTR_USER,
    DIND_BLOCK,
    DYNAMIC_REV,
    ERRORS_CONTINUE,
    EXTENT_HEADER,
    EXTENT_MAGIC,
    EXTENT_MAX_LEN,
    EXTENT_ROOT_MAX,
    EXTENTS_FL,
    FIRST_INO,
    FLAGS_UNSIGNED_HASH,
    GROUP_DESC_64,
    HASH_HALF_MD4,
    HUGE_FILE_FL,
    INODE,
    INODE_CHECKSUM_HI_OFFSET,
    INODE_CHECKSUM_LO_OFFSET,
    INODE_EXTRA_ISIZE,
    JNL_BACKUP_BLOCKS,
    JOURNAL_INO,
    NDIR_BLOCKS,
    RESIZE_INO,
    ROOT_INO,
    STATE_VALID,
    SUPERBLOCK,
    SUPERBLOCK_MAGIC,
    SUPERBLOCK_OFFSET,
)
from conv_ext4.planner import Options, Planner
from convcore.blockdev import FileTarget, Plan, Target
from convcore.errors import CorruptError, NoSpaceError, UnsupportedError
from convcore.forked import Forked, forking
from convcore.format import Context
from convcore.threads import Pool
from convcore.tree import (
    COPY_CHUNK,
    FileRangeData,
    Kind,
    Tree,
    copy_range,
    data_order_key,
    open_noatime,
)

_M32 = 0xFFFFFFFF
_LE32 = struct.Struct("<I")
_LE64 = struct.Struct("<Q")
_LE16 = struct.Struct("<H")
_INO_GEN = struct.Struct("<II")
#: i_checksum_lo, i_reserved, i_extra_isize, i_checksum_hi: written at once
_CSUM_FIELDS = struct.Struct("<HHHH")
assert INODE_CHECKSUM_HI_OFFSET - INODE_CHECKSUM_LO_OFFSET == _CSUM_FIELDS.size - 2
_INODE = INODE.struct
_ONE_EXTENT = struct.Struct("<HHHHIIHHI36x")  # extent header + one extent, as i_block
_DIRECT = struct.Struct("<15I")  # a block map of direct blocks only
_NO_BLOCKS = (0,) * 15
#: metadata is written in pieces up to this size.
_FLUSH_BYTES = 8 << 20
#: a piece this large is written as it is, not gathered
_DIRECT_BYTES = 1 << 20
#: inodes packed into one buffer (1 MiB of 256-byte inodes, whole blocks)
_ITABLE_CHUNK = 4096


def _time(ns: int) -> tuple[int, int]:
    """(seconds field, extra field) of an ext4 timestamp: 34-bit seconds with
    the high bits and the nanoseconds in the extra field."""
    sec, nsec = divmod(ns, 1_000_000_000)
    if 0 <= sec < 0x80000000:
        return sec, nsec << 2
    sec = max(-(1 << 31), min(sec, (1 << 34) + (1 << 31) - 1))
    lo = sec & _M32
    signed_lo = lo - (1 << 32) if lo & 0x80000000 else lo
    return lo, (nsec << 2) | (((sec - signed_lo) >> 32) & 3)


def encode(tree: Tree, opts: dict, ctx: Context) -> Ext4Plan:
    """Plan an ext2/3/4 filesystem holding ``tree``."""
    planner = Planner(tree, Options(opts, ctx))
    geo, alloc_end, jruns, jmap = planner.plan()
    return Ext4Plan(planner, geo, jruns, jmap, alloc_end)


# --------------------------------------------------------------------------
# Writing


class _MetaWriter:
    """Coalesces block writes that follow each other into large pwrites."""

    def __init__(self, target: Target, bs: int) -> None:
        self.target = target
        self.bs = bs
        self.start = -1
        self.buf = bytearray()

    def write(self, block: int, data: bytes | bytearray | memoryview) -> None:
        if self.start >= 0 and block * self.bs == self.start + len(self.buf) and \
                len(self.buf) < _FLUSH_BYTES:
            self.buf += data
            return
        self.flush()
        if len(data) >= _DIRECT_BYTES:
            self.target.pwrite(data, block * self.bs)  # big enough alone: no copy
            return
        self.start = block * self.bs
        self.buf = bytearray(data)

    def flush(self) -> None:
        if self.buf:
            self.target.pwrite(self.buf, self.start)
        self.buf = bytearray()
        self.start = -1


_SMALL_FILE = 64 << 10
#: small files that land next to each other are read into one buffer of up
#: to this size and written with one pwrite (one data task)
_BATCH_BYTES = 1 << 20
#: threads moving file data where no child is forked: opens and reads
#: release the GIL, so two keep both cores busy as far as the GIL lets them
_DATA_THREADS = 2
_ZERO_TAIL = memoryview(bytes(4096))
#: what open_noatime first tries for a source file (the per-file loop
#: opens with them directly and falls back to open_noatime on an error)
_READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOATIME", 0)
#: fork a data process only for at least this much host file data: the fork
#: and its copy-on-write faults cost milliseconds
_FORK_MIN_BYTES = 8 << 20
#: a data task: (first block, first inode, end inode) or (-1, inode, 0)
_Task = tuple[int, int, int]
#: a task number in the queue: native order, as array("I") wrote it
_TASK_NUMBER = struct.Struct("=I")


class _Buffers(threading.local):
    """Each data thread's reusable buffers (``batch``, ``copy``), made on
    the thread's first use of each: zeroing both at import cost 0.9 ms of
    every ext4 start-up, and the main thread copies data only when forked."""

    _SIZES = {"batch": _BATCH_BYTES, "copy": COPY_CHUNK}

    def __getattr__(self, name: str) -> bytearray:
        # only for an attribute this thread has not made yet
        size = self._SIZES.get(name)
        if size is None:
            raise AttributeError(name)
        buf = bytearray(size)
        setattr(self, name, buf)
        return buf


_BUFFERS = _Buffers()


def _set_bits(buf: bytearray, start: int, n: int) -> None:
    """Set bits [start, start + n) of a little-endian bitmap."""
    end = start + n
    while start < end and start & 7:
        buf[start >> 3] |= 1 << (start & 7)
        start += 1
    full = (end - start) >> 3
    if full > 0:
        buf[start >> 3:(start >> 3) + full] = b"\xff" * full
        start += full << 3
    while start < end:
        buf[start >> 3] |= 1 << (start & 7)
        start += 1


class Ext4Plan(Plan):
    """A planned filesystem; ``write_to`` writes it into a zeroed target."""

    def __init__(self, planner: Planner, geo: Geometry, jruns, jmap, alloc_end: int) -> None:
        o = planner.o
        self.p = planner
        self.o = o
        self.geo = geo
        self.jruns = jruns
        self.jmap = jmap
        self.alloc_end = alloc_end
        self.fs_type = o.fs
        self.size = o.size if isinstance(o.size, int) else geo.blocks_count * o.block_size
        self.blocks_count = geo.blocks_count
        self.inodes_count = geo.inodes_count

    # -- entry point
    def write_to(self, target: Target) -> None:
        if target.size < self.geo.blocks_count * self.o.block_size:
            raise NoSpaceError(
                f"ext4: the filesystem needs {self.geo.blocks_count * self.o.block_size} bytes, "
                f"the output has {target.size}")
        meta = _MetaWriter(target, self.o.block_size)
        tasks, others = self._data_tasks()
        host = target.host_fd()
        if host is not None and forking() and self._host_bytes(tasks) >= _FORK_MIN_BYTES:
            gdt = self._write_forked(target, host, meta, tasks, others)
        else:
            gdt = self._write_threaded(target, meta, tasks, others)
        # the superblocks last: an interrupted write leaves no valid filesystem
        self._write_super(target, gdt)

    def _write_metadata(self, meta: _MetaWriter) -> bytes:
        """Everything but file data and superblocks; returns the descriptors."""
        self._write_journal(meta)
        self._write_contents(meta)
        meta.flush()
        inode_groups = self._write_inode_tables(meta)
        meta.flush()
        gdt = self._write_bitmaps(meta, inode_groups)
        meta.flush()
        return gdt

    def _write_threaded(self, target: Target, meta: _MetaWriter, tasks: list[_Task],
                        others: list[int]) -> bytes:
        # File data goes in on other threads: they wait on reads and writes
        # (GIL released) while this one builds metadata. The regions are disjoint.
        # Leaving the pool drops the tasks not started and waits for the
        # running ones: a metadata error is reported, not a data thread's.
        with Pool(_DATA_THREADS, "ext4-data") as pool:
            running = [pool.submit(self._run_task, target, t) for t in tasks]
            if others:
                running.append(pool.submit(self._write_files, target, others))
            gdt = self._write_metadata(meta)
            for task in running:
                task.result()  # the first failure in file order
        return gdt

    def _write_forked(self, target: Target, host: tuple[int, int], meta: _MetaWriter,
                      tasks: list[_Task], others: list[int]) -> bytes:
        """Host-file data copied by a forked child while this process builds
        the metadata, then by both. Opening, reading and closing thousands of
        small files is kernel time that threads cannot overlap with Python
        here (each system call waits for the GIL again); a second process
        can. The two claim tasks from one queue: a memfd of task numbers
        whose file offset they share, so each read(2) of 4 bytes (serialised
        by the kernel on that offset) hands out a task exactly once."""
        fd, base = host
        raw = FileTarget(fd, target.size, base)  # no progress bar in the child
        queue = os.memfd_create("conv-ext4-tasks", os.MFD_CLOEXEC)
        try:
            numbers = memoryview(array.array("I", range(len(tasks)))).cast("B")
            while numbers:
                numbers = numbers[os.write(queue, numbers):]
            os.lseek(queue, 0, os.SEEK_SET)
            # the pool's thread starts after the fork; on an error the child
            # is killed first (leaving Forked), then the thread waited for
            pool: Pool | None = None
            try:
                with Forked(self._child_drain, queue, tasks, raw) as child:
                    # other sources (one stream, read in order) stay in this process
                    stream = None
                    if others:
                        pool = Pool(1, "ext4-data")
                        stream = pool.submit(self._write_files, target, others)
                    gdt = self._write_metadata(meta)
                    moved = self._drain(queue, tasks, raw)
                    moved += child.result()
                    if stream is not None:
                        stream.result()
            finally:
                if pool is not None:
                    pool.shutdown()
        finally:
            os.close(queue)
        progress = getattr(target, "progress", None)
        if progress is not None:
            progress.update(moved)
        return gdt

    def _child_drain(self, queue: int, tasks: list[_Task], raw: Target) -> int:
        # a collection would touch every object's header: copy-on-write faults
        # on the whole tree for nothing (the child allocates little)
        gc.disable()
        return self._drain(queue, tasks, raw)

    def _drain(self, queue: int, tasks: list[_Task], raw: Target) -> int:
        """Run tasks claimed from ``queue`` until none is left; returns the
        bytes written."""
        moved = 0
        unpack = _TASK_NUMBER.unpack
        try:
            while True:
                number = os.read(queue, 4)
                if not number:
                    return moved
                moved += self._run_task(raw, tasks[unpack(number)[0]])
        except BaseException:
            os.lseek(queue, 0, os.SEEK_END)  # the other process stops claiming too
            raise

    # -- journal
    def _journal_inode(self) -> tuple[bytes, int, int]:
        """(i_block, flags, mapping blocks) of the journal inode."""
        o = self.o
        jblocks = sum(n for _, n in self.jruns)
        ranges = [(0, jblocks)]
        map_blocks = [b for s, n in self.jmap for b in range(s, s + n)]
        if o.extents:
            extents = mapping.make_extents(ranges, self.jruns)
            seal = self._extent_sealer(JOURNAL_INO)
            i_block, blocks = mapping.render_extent_tree(extents, map_blocks, o.block_size, seal)
            self._jmap_blocks = list(zip(map_blocks, blocks, strict=True))
            return i_block, EXTENTS_FL, len(map_blocks)
        i_block, pieces = mapping.render_blockmap(ranges, self.jruns, map_blocks, o.block_size)
        self._jmap_blocks = pieces
        return i_block, 0, len(map_blocks)

    def _write_journal(self, meta: _MetaWriter) -> None:
        self._jinode = None
        if not self.jruns:
            return
        o = self.o
        jblocks = sum(n for _, n in self.jruns)
        meta.write(self.jruns[0][0], journal.superblock(o.block_size, jblocks, o.uuid, o.csum)
                   .ljust(o.block_size, b"\0"))
        self._jinode = self._journal_inode()

    # -- directory, symlink, xattr and mapping blocks
    def _extent_sealer(self, ino: int):
        if not self.o.csum:
            return None
        seed = self.p.inode_seed(ino)
        per_block = (self.o.block_size - EXTENT_HEADER.size) // 12
        tail = EXTENT_HEADER.size + 12 * per_block

        def seal(buf: bytearray) -> None:
            _LE32.pack_into(buf, tail, crc32c_raw(seed, memoryview(buf)[:tail]))
        return seal

    def _write_contents(self, meta: _MetaWriter) -> None:
        bs = self.o.block_size
        p = self.p
        for ino in sorted(p.content):
            content = memoryview(p.content_of(ino))
            pos = 0
            for start, n in p.runs_of(ino):
                meta.write(start, content[pos:pos + n * bs])
                pos += n * bs
        xblocks = [b for s, n in p.xblock_runs for b in range(s, s + n)]
        self.xblock_numbers = xblocks
        for blk, content, refs in zip(xblocks, p.xblocks, p.xrefs, strict=True):
            buf = bytearray(content)
            _LE32.pack_into(buf, 4, refs)
            if self.o.csum:
                c = crc32c_raw(self.o.csum_seed, _LE64.pack(blk))
                _LE32.pack_into(buf, 16, crc32c_raw(c, buf))
            meta.write(blk, buf)
        # mapping blocks (after the data, in inode order); inodes whose data
        # is one piece their i_block maps need none, and are packed directly
        one_piece = EXTENT_MAX_LEN if self.o.extents else NDIR_BLOCKS
        nblocks, ranges, runs = p.nblocks, p.ranges, p.runs
        for ino in range(len(nblocks)):
            k = nblocks[ino]
            if not k or k <= one_piece and ino not in ranges and ino not in runs:
                continue
            for blk, content in self._render_mapping(ino):
                meta.write(blk, content)
        for blk, content in getattr(self, "_jmap_blocks", []):
            meta.write(blk, content)
        if self.geo.resize_inode:
            for blk, content in self._resize_blocks():
                meta.write(blk, content)

    def _render_mapping(self, ino: int) -> list[tuple[int, bytes]]:
        """Put the inode's block map root in its i_block; return its mapping
        blocks."""
        p = self.p
        bs = self.o.block_size
        map_blocks = [b for s, n in p.map_runs.get(ino, ()) for b in range(s, s + n)]
        ranges, runs = p.ranges_of(ino), p.runs_of(ino)
        if p.flags[ino] & EXTENTS_FL:
            extents = mapping.make_extents(ranges, runs)
            p.i_block[ino], blocks = mapping.render_extent_tree(
                extents, map_blocks, bs, self._extent_sealer(ino))
            return list(zip(map_blocks, blocks, strict=True))
        p.i_block[ino], pieces = mapping.render_blockmap(ranges, runs, map_blocks, bs)
        return pieces

    def _resize_blocks(self) -> list[tuple[int, bytes]]:
        """The resize inode's block map (what e2fsck's check_resize_inode
        expects): slot (descriptor blocks + i) of its double-indirect block
        points at the i-th reserved GDT block of group 0, which lists the
        same reserved block in every backup group."""
        geo = self.geo
        apb = self.o.block_size // 4
        dind = [0] * apb
        backups = geo.reserved_gdt_backups()
        out = []
        for i in range(geo.reserved_gdt):
            primary = geo.first_data_block + 1 + geo.gdt_blocks + i
            dind[(geo.gdt_blocks + i) % apb] = primary
            table = struct.pack(f"<{len(backups)}I", *(b + i for b in backups))
            out.append((primary, table.ljust(self.o.block_size, b"\0")))
        return [(self.p.resize_dind, struct.pack(f"<{apb}I", *dind)), *out]

    # -- file data
    def _data_tasks(self) -> tuple[list[_Task], list[int]]:
        """Every host file's data as tasks: (first block, first inode, end
        inode) for one batch of small neighbouring files (every inode with
        file data in that range belongs to it), (-1, inode, 0) for one larger
        file. And the inodes of other sources in their cheapest read order
        (a stream: one task)."""
        p = self.p
        bs = self.o.block_size
        ents, nblocks, start, size = p.ents, p.nblocks, p.start, p.size
        ranges, runs, content = p.ranges, p.runs, p.content
        tasks: list[_Task] = []
        lo = hi = batch_start = batch_end = -1
        others: list[int] = []
        FILE = Kind.FILE  # noqa: N806
        for ino in range(FIRST_INO, len(ents)):
            k = nblocks[ino]
            if not k or ino in content:
                continue
            e = ents[ino]
            assert e is not None and e.kind is FILE
            host = isinstance(e.data, FileRangeData)
            s = start[ino]
            if host and size[ino] <= _SMALL_FILE and ino not in ranges and ino not in runs and \
                    s == batch_end and (batch_end - batch_start + k) * bs <= _BATCH_BYTES:
                hi = ino + 1
                batch_end = s + k
                continue
            if hi > lo:
                tasks.append((batch_start, lo, hi))
            lo = hi = -1
            batch_end = -1
            if not host:
                others.append(ino)
            elif size[ino] <= _SMALL_FILE and ino not in ranges and ino not in runs:
                lo, hi = ino, ino + 1
                batch_start, batch_end = s, s + k
            else:
                tasks.append((-1, ino, 0))
        if hi > lo:
            tasks.append((batch_start, lo, hi))
        if others:
            others.sort(key=lambda ino: data_order_key(ents[ino].data))  # type: ignore[union-attr]
        return tasks, others

    def _host_bytes(self, tasks: list[_Task]) -> int:
        """How many bytes ``tasks`` read."""
        size = self.p.size
        return sum(size[lo] if first < 0 else sum(size[lo:hi]) for first, lo, hi in tasks)

    def _run_task(self, target: Target, task: _Task) -> int:
        first, lo, hi = task
        if first >= 0:
            return self._write_batch(target, first, lo, hi)
        self._write_file(target, lo)
        return self.p.size[lo]

    def _write_batch(self, target: Target, first: int, lo: int, hi: int) -> int:
        """Read the small host files of inodes ``lo``..``hi - 1``, whose blocks
        follow each other from block ``first``, into one buffer; one pwrite."""
        p = self.p
        bs = self.o.block_size
        ents, size, nblocks, content = p.ents, p.size, p.nblocks, p.content
        view = memoryview(_BUFFERS.batch)
        fill = 0
        # per file, this loop is most of the data phase's Python time: names
        # bound locally, open_noatime's flags once (its fallback on an error)
        flags = _READ_FLAGS
        open_, preadv, close = os.open, os.preadv, os.close
        for ino in range(lo, hi):
            k = nblocks[ino]
            if not k or ino in content:
                continue
            data = ents[ino].data  # type: ignore[union-attr]
            sz = size[ino]
            end = fill + k * bs
            try:
                fd = open_(data.path, flags)
            except OSError:
                fd = self._open_source(ino)
            try:
                got = preadv(fd, [view[fill:fill + sz]], data.offset)
            finally:
                close(fd)
            if got != sz:
                raise CorruptError(f"/{ents[ino].path}: file is shorter than its recorded "
                                   "size")
            # the buffer is reused: clear the last block's tail
            view[fill + sz:end] = _ZERO_TAIL[:end - fill - sz]
            fill = end
        target.pwrite(view[:fill], first * bs)
        return fill

    def _open_source(self, ino: int) -> int:
        """After the direct open of inode ``ino``'s host file failed:
        open_noatime (a plain open where only O_NOATIME was refused, the
        file not being ours), or one line naming the file."""
        e = self.p.ents[ino]
        path = e.data.path  # type: ignore[union-attr]
        try:
            return open_noatime(path)
        except OSError as err:
            raise CorruptError(f"/{e.path}: cannot read {path}: {err.strerror}") from None

    def _write_files(self, target: Target, inos: list[int]) -> None:
        for ino in inos:
            self._write_file(target, ino)

    def _write_file(self, target: Target, ino: int) -> None:
        p = self.p
        bs = self.o.block_size
        buf = _BUFFERS.copy
        data = p.ents[ino].data  # type: ignore[union-attr]
        assert data is not None
        if ino not in p.ranges and ino not in p.runs:
            target.copy_from_data(data, p.start[ino] * bs, buf)
            return
        size = p.size[ino]
        pieces = [(lb * bs, pb * bs, min(n * bs, size - lb * bs))
                  for lb, pb, n in mapping.zip_runs(p.ranges_of(ino), p.runs_of(ino))]
        host = target.host_fd()
        if host is not None and isinstance(data, FileRangeData):
            fd, base = host
            try:
                src_fd = os.open(data.path, _READ_FLAGS)
            except OSError:
                src_fd = self._open_source(ino)
            try:
                for src, dst, length in pieces:
                    copy_range(src_fd, data.offset + src, fd, base + dst, length, buf,
                               name=data.path)
            finally:
                os.close(src_fd)
            return
        view = memoryview(buf)
        for src, dst, length in pieces:
            pos = 0
            while pos < length:
                n = data.readinto(src + pos, view[:min(len(view), length - pos)])
                if n <= 0:
                    raise CorruptError(f"/{p.ents[ino].path}: data ended early at "  # type: ignore[union-attr]
                                       f"offset {src + pos}")
                target.pwrite(view[:n], dst + pos)
                pos += n

    # -- inodes
    def _pack_inodes(self, buf: bytearray, first: int, last: int) -> int:
        """Pack inodes ``first``..``last`` (none reserved) into ``buf`` (whose
        first inode is ``first``); returns how many are directories."""
        o = self.o
        p = self.p
        spb = o.block_size // 512
        ents, nlink, size, flags = p.ents, p.nlink, p.size, p.flags
        nblocks, map_count, start = p.nblocks, p.map_count, p.start
        i_blocks, ibodies, xblock = p.i_block, p.ibody, p.xblock
        xnumbers = self.xblock_numbers
        huge_ok = "huge_file" in o.feats
        csum = o.csum
        seed = o.csum_seed ^ _M32
        pack = _INODE.pack_into
        ino_gen = _INO_GEN.pack
        csum_fields = _CSUM_FIELDS.pack_into
        one_extent = _ONE_EXTENT.pack
        direct = _DIRECT.pack
        empty_root = _empty_extent_root()
        zero60 = bytes(60)
        DIR = Kind.DIR  # noqa: N806
        dirs = 0
        off = 0
        for ino in range(first, last + 1):
            e = ents[ino]
            assert e is not None
            if e.kind is DIR:
                dirs += 1
            k = nblocks[ino]
            blocks = k + map_count[ino]
            xattr_blk = 0
            x = xblock.get(ino)
            if x is not None:
                xattr_blk = xnumbers[x]
                blocks += 1
            sectors = blocks * spb
            if sectors >= 1 << 32 and (not huge_ok or sectors >= 1 << 48):
                raise UnsupportedError(f"/{e.path}: file too large for this filesystem")
            fl = flags[ino]
            i_block = i_blocks.get(ino)
            if i_block is None:
                if not k:
                    i_block = empty_root if fl & EXTENTS_FL else zero60
                elif fl & EXTENTS_FL:
                    s = start[ino]
                    i_block = one_extent(EXTENT_MAGIC, 1, EXTENT_ROOT_MAX, 0, 0, 0, k,
                                         s >> 32, s & _M32)
                else:
                    s = start[ino]
                    i_block = direct(*range(s, s + k), *_NO_BLOCKS[k:])
            # times: the common 1970-2038 case inline, _time() for the rest
            at, atx = divmod(e.atime_ns, 1_000_000_000)
            ct, ctx_ = divmod(e.ctime_ns, 1_000_000_000)
            mt, mtx = divmod(e.mtime_ns, 1_000_000_000)
            cr_ns = e.crtime_ns
            cr, crx = divmod(cr_ns if cr_ns is not None else e.ctime_ns, 1_000_000_000)
            if not (at | ct | mt | cr) >> 31:  # all in [0, 2**31): a negative one shifts to -1
                atx <<= 2
                ctx_ <<= 2
                mtx <<= 2
                crx <<= 2
            else:
                at, atx = _time(e.atime_ns)
                ct, ctx_ = _time(e.ctime_ns)
                mt, mtx = _time(e.mtime_ns)
                cr, crx = _time(cr_ns if cr_ns is not None else e.ctime_ns)
            uid, gid = e.uid, e.gid
            if (uid | gid) >> 32:  # above 32 bits, or negative
                raise UnsupportedError(f"/{e.path}: uid/gid {uid}/{gid} out of range")
            sz = size[ino]
            pack(buf, off, e.kind._value_ | (e.mode & 0o7777), uid & 0xFFFF, sz & _M32, at, ct,
                 mt, 0, gid & 0xFFFF, nlink[ino], sectors & _M32, fl & ~HUGE_FILE_FL, 0,
                 i_block, 0, xattr_blk & _M32, sz >> 32, 0, sectors >> 32, xattr_blk >> 32,
                 uid >> 16, gid >> 16, 0, 0, INODE_EXTRA_ISIZE, 0, ctx_, mtx, atx, cr, crx, 0, 0)
            ibody = ibodies.get(ino)
            if ibody is not None:
                buf[off + INODE.size:off + INODE_SIZE] = ibody
            if csum:
                # crc32c(seed, ino, generation 0, inode with both checksum halves
                # zero), seed passed positionally (a keyword costs as much as
                # the checksum); both halves, and the fields between them as
                # packed above, in one call
                c = _crc32c(ino_gen(ino, 0) + buf[off:off + INODE_SIZE], seed) ^ _M32
                csum_fields(buf, off + INODE_CHECKSUM_LO_OFFSET, c & 0xFFFF, 0,
                            INODE_EXTRA_ISIZE, c >> 16)
            off += INODE_SIZE
        return dirs

    def _seal_inode(self, buf: bytearray, off: int, ino: int) -> None:
        if not self.o.csum:
            return
        # crc32c(seed, ino, generation 0, inode with both checksum halves zero)
        c = crc32c_raw(self.o.csum_seed, _INO_GEN.pack(ino, 0) + buf[off:off + INODE_SIZE])
        _LE16.pack_into(buf, off + INODE_CHECKSUM_LO_OFFSET, c & 0xFFFF)
        _LE16.pack_into(buf, off + INODE_CHECKSUM_HI_OFFSET, c >> 16)

    def _special_inode(self, buf: bytearray, off: int, ino: int) -> None:
        """Reserved inodes as mke2fs leaves them (and the journal)."""
        o = self.o
        t = o.timestamp & _M32
        if ino == JOURNAL_INO and self._jinode is not None:
            i_block, flags, nmap = self._jinode
            jblocks = sum(n for _, n in self.jruns)
            size = jblocks * o.block_size
            sectors = (jblocks + nmap) * (o.block_size // 512)
            _INODE.pack_into(buf, off, 0o100600, 0, size & _M32, t, t, t, 0, 0, 1,
                             sectors & _M32, flags, 0, i_block, 0, 0, size >> 32, 0,
                             sectors >> 32, 0, 0, 0, 0, 0, INODE_EXTRA_ISIZE, 0, 0, 0, 0, t,
                             0, 0, 0)
        elif ino == RESIZE_INO and self.geo.resize_inode:
            geo = self.geo
            apb = o.block_size // 4
            size = (apb * apb + apb + NDIR_BLOCKS) * o.block_size
            nblocks = 1 + geo.reserved_gdt * (1 + len(geo.reserved_gdt_backups()))
            i_block = bytearray(60)
            _LE32.pack_into(i_block, DIND_BLOCK * 4, self.p.resize_dind)
            INODE.pack_into(buf, off, i_mode=0o100600, i_links_count=1, i_size_lo=size & _M32,
                            i_size_high=size >> 32, i_blocks_lo=nblocks * (o.block_size // 512),
                            i_block=bytes(i_block), i_atime=t, i_ctime=t, i_mtime=t,
                            i_crtime=t, i_extra_isize=INODE_EXTRA_ISIZE)
        else:
            INODE.pack_into(buf, off, i_extra_isize=INODE_EXTRA_ISIZE,
                            **({"i_atime": t, "i_ctime": t, "i_mtime": t} if ino == 1 else {}))
        self._seal_inode(buf, off, ino)

    def _write_inode_tables(self, meta: _MetaWriter) -> list[tuple[int, int]]:
        """Write every used inode; returns per group (used inodes, directories)."""
        geo = self.geo
        ipg = geo.inodes_per_group
        max_ino = self.p.max_ino
        stats = []
        for g, grp in enumerate(geo.groups):
            first = g * ipg + 1
            last = min((g + 1) * ipg, max_ino)
            if last < first:
                stats.append((0, 0))
                continue
            count = last - first + 1
            dirs = 0
            for lo in range(first, last + 1, _ITABLE_CHUNK):
                hi = min(lo + _ITABLE_CHUNK - 1, last)
                buf = bytearray((hi - lo + 1) * INODE_SIZE)
                if lo < FIRST_INO:
                    for ino in range(lo, min(FIRST_INO, hi + 1)):
                        off = (ino - lo) * INODE_SIZE
                        if ino == ROOT_INO:
                            dirs += self._pack_inodes(memoryview(buf)[off:], ino, ino)
                        else:
                            self._special_inode(buf, off, ino)
                if max(lo, FIRST_INO) <= hi:
                    start = max(lo, FIRST_INO)
                    dirs += self._pack_inodes(memoryview(buf)[(start - lo) * INODE_SIZE:],
                                              start, hi)
                meta.write(grp.inode_table + (lo - first) * INODE_SIZE // self.o.block_size,
                           buf)
            stats.append((count, dirs))
        return stats

    # -- bitmaps, group descriptors, superblocks
    def _write_bitmaps(self, meta: _MetaWriter, inode_stats) -> bytes:
        o = self.o
        geo = self.geo
        bs = o.block_size
        bits = 8 * bs
        ipg = geo.inodes_per_group
        fixed = geo.fixed
        cursor = self.alloc_end
        desc = GROUP_DESC_64 if geo.is_64bit else None
        gdt = bytearray(geo.gdt_blocks * bs)
        fi = 0
        self.free_blocks = 0
        self.free_inodes = 0
        for g, grp in enumerate(geo.groups):
            s, n = grp.start, grp.size
            bmap = bytearray(bs)
            if cursor > s:
                _set_bits(bmap, 0, min(cursor - s, n))
            while fi < len(fixed) and fixed[fi][0] + fixed[fi][1] <= s:
                fi += 1
            j = fi
            while j < len(fixed) and fixed[j][0] < s + n:
                a = max(fixed[j][0], s)
                b = min(fixed[j][0] + fixed[j][1], s + n)
                _set_bits(bmap, a - s, b - a)
                j += 1
            if n < bits:
                _set_bits(bmap, n, bits - n)
            used_blocks = int.from_bytes(bmap, "little").bit_count() - (bits - n)
            free_b = n - used_blocks
            used_i, dirs = inode_stats[g]
            imap = bytearray(bs)
            if used_i:
                _set_bits(imap, 0, used_i)
            _set_bits(imap, ipg, bits - ipg)
            free_i = ipg - used_i
            self.free_blocks += free_b
            self.free_inodes += free_i
            meta.write(grp.block_bitmap, bmap)
            meta.write(grp.inode_bitmap, imap)
            flags = BG_INODE_ZEROED if o.csum else 0
            bcs = crc32c_raw(o.csum_seed, bmap) if o.csum else 0
            ics = crc32c_raw(o.csum_seed, memoryview(imap)[:ipg // 8]) if o.csum else 0
            unused = free_i if o.csum else 0
            values = (
                grp.block_bitmap & _M32, grp.inode_bitmap & _M32, grp.inode_table & _M32,
                free_b & 0xFFFF, free_i & 0xFFFF, dirs & 0xFFFF, flags, 0,
                bcs & 0xFFFF, ics & 0xFFFF, unused & 0xFFFF, 0)
            off = g * geo.desc_size
            if desc is not None:
                desc.struct.pack_into(
                    gdt, off, *values, grp.block_bitmap >> 32, grp.inode_bitmap >> 32,
                    grp.inode_table >> 32, free_b >> 16, free_i >> 16, dirs >> 16,
                    unused >> 16, 0, bcs >> 16, ics >> 16, 0)
            else:
                struct.pack_into("<IIIHHHHIHHHH", gdt, off, *values)
            if o.csum:
                c = crc32c_raw(o.csum_seed, _LE32.pack(g))
                c = crc32c_raw(c, memoryview(gdt)[off:off + geo.desc_size])
                struct.pack_into("<H", gdt, off + 0x1E, c & 0xFFFF)
        return bytes(gdt)

    def _superblock(self, group: int) -> bytes:
        o = self.o
        geo = self.geo
        feats = set(o.feats)
        if not geo.resize_inode:
            feats.discard("resize_inode")
        if self._jinode is None:
            feats.discard("has_journal")  # too small for one, as mke2fs decides
        words = feature_words(feats)
        t = o.timestamp & _M32
        jnl = b""
        if self._jinode is not None:
            i_block, _, _ = self._jinode
            jsize = sum(n for _, n in self.jruns) * o.block_size
            jnl = i_block + _LE32.pack(jsize >> 32) + _LE32.pack(jsize & _M32)
        reserved = int(geo.blocks_count * o.reserved / 100)
        log_bs = o.block_size.bit_length() - 11
        fields = dict(
            s_inodes_count=geo.inodes_count,
            s_blocks_count_lo=geo.blocks_count & _M32,
            s_r_blocks_count_lo=reserved & _M32,
            s_free_blocks_count_lo=self.free_blocks & _M32,
            s_free_inodes_count=self.free_inodes,
            s_first_data_block=geo.first_data_block,
            s_log_block_size=log_bs,
            s_log_cluster_size=log_bs,
            s_blocks_per_group=geo.blocks_per_group,
            s_clusters_per_group=geo.blocks_per_group,
            s_inodes_per_group=geo.inodes_per_group,
            s_wtime=t,
            s_max_mnt_count=-1,
            s_magic=SUPERBLOCK_MAGIC,
            s_state=STATE_VALID,
            s_errors=ERRORS_CONTINUE,
            s_lastcheck=t,
            s_rev_level=DYNAMIC_REV,
            s_first_ino=FIRST_INO,
            s_inode_size=INODE_SIZE,
            s_block_group_nr=group,
            s_feature_compat=words["compat"],
            s_feature_incompat=words["incompat"],
            s_feature_ro_compat=words["ro_compat"],
            s_uuid=o.uuid,
            s_volume_name=o.label,
            s_journal_inum=JOURNAL_INO if self._jinode is not None else 0,
            s_hash_seed=o.hash_seed,
            s_def_hash_version=HASH_HALF_MD4,
            s_jnl_backup_type=JNL_BACKUP_BLOCKS if jnl else 0,
            s_desc_size=geo.desc_size if geo.is_64bit else 0,
            s_reserved_gdt_blocks=geo.reserved_gdt,
            s_default_mount_opts=DEFM_XATTR_USER | DEFM_ACL,
            s_mkfs_time=t,
            s_jnl_blocks=jnl,
            s_blocks_count_hi=geo.blocks_count >> 32,
            s_r_blocks_count_hi=reserved >> 32,
            s_free_blocks_count_hi=self.free_blocks >> 32,
            s_min_extra_isize=INODE_EXTRA_ISIZE if "extra_isize" in o.feats else 0,
            s_want_extra_isize=INODE_EXTRA_ISIZE if "extra_isize" in o.feats else 0,
            s_flags=FLAGS_UNSIGNED_HASH,
            s_log_groups_per_flex=4 if geo.flex else 0,
            s_checksum_type=CHECKSUM_CRC32C if o.csum else 0,
            s_checksum_seed=o.csum_seed if "metadata_csum_seed" in o.feats else 0,
            s_wtime_hi=(o.timestamp >> 32) & 0xFF,
            s_mkfs_time_hi=(o.timestamp >> 32) & 0xFF,
            s_lastcheck_hi=(o.timestamp >> 32) & 0xFF,
        )
        sb = bytearray(SUPERBLOCK.pack(**fields))
        if o.csum:
            _LE32.pack_into(sb, 1020, crc32c_raw(_M32, memoryview(sb)[:1020]))
        return bytes(sb)

    def _write_super(self, target: Target, gdt: bytes) -> None:
        bs = self.o.block_size
        for g, grp in enumerate(self.geo.groups):
            if not grp.backup:
                continue
            sb = self._superblock(g)
            if g == 0:
                target.pwrite(sb, SUPERBLOCK_OFFSET)
                gdt_at = (self.geo.first_data_block + 1) * bs
            else:
                target.pwrite(sb, grp.start * bs)
                gdt_at = (grp.start + 1) * bs
            target.pwrite(gdt, gdt_at)


def _empty_extent_root() -> bytes:
    return EXTENT_HEADER.struct.pack(EXTENT_MAGIC, 0, EXTENT_ROOT_MAX, 0, 0).ljust(60, b"\0")
