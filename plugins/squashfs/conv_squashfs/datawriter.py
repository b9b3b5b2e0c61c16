"""Writing squashfs file data: blocks and fragments, compressed on a thread pool.

Files of a block or more go block by block into reusable buffers, a few
blocks per pool task that reads (host files; other sources are read in
order by the writer's thread) and compresses them; smaller files are read
many per chunk (many host files by forked readers, else on the pool) and
packed into fragments. Results are retired in submission order and written
sequentially to the image file, so the bytes do not depend on the number of
threads. At most ``inflight`` blocks (and their buffers) are alive at any
time: memory is bounded by ``block_size * (inflight + 2)`` plus the
compressed results waiting to be written (up to ``_WRITE_BYTES``), plus
``_CHUNKS_AHEAD + 1`` chunks of small files read ahead (about 256 KiB each)
on the pool, or the forked readers' shared ring (``_FORK_AHEAD_BYTES``).

Files smaller than a block are packed into fragment blocks (mksquashfs's
default: tails of larger files keep their own last block). Identical files
are stored once. Files of whole blocks: a candidate is found by size and
CRC32s, and confirmed by comparing the stored blocks (which a deterministic
codec makes equal exactly when the contents are). Small host files: by size
and CRC32, confirmed by reading the earlier file again and comparing bytes;
other small files (a tar member, where reading again would restart a
decompressor): by size and SHA-256.
"""

from __future__ import annotations

import mmap
import os
import zlib
from array import array
from collections import deque
from collections.abc import Callable
from functools import partial

from conv_squashfs import layout
from conv_squashfs.compressors import Codec
from convcore.errors import ConvError, CorruptError
from convcore.forked import Forked, forking
from convcore.threads import Pool, Task
from convcore.tree import Data, FileRangeData, open_noatime

_UNCOMPRESSED = layout.DATA_UNCOMPRESSED
_SIZE_MASK = layout.DATA_SIZE_MASK
_BLOCK, _FRAGMENT = 0, 1


#: the block list of every file without blocks (never appended to)
_NO_BLOCKS = array("I")


# zlib.crc32 lets go of the GIL above 5 KiB; a pool thread then waits to
# take it back (up to the switch interval while another thread runs Python)
# for a few microseconds of work. In pieces of 5 KiB it keeps the GIL; the
# chained value is the CRC32 of the whole.
_CRC_PIECE = 5 * 1024


def _crc32(data) -> int:
    view = memoryview(data)
    crc32 = zlib.crc32
    crc = 0
    for start in range(0, len(view), _CRC_PIECE):
        crc = crc32(view[start:start + _CRC_PIECE], crc)
    return crc


def _read_host(fd: int, offset: int, view: memoryview) -> int:
    """Fill ``view`` from ``offset`` of a host file; fewer bytes only at its end."""
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got <= 0:
            break
        done += got
    return done


class FileData:
    """Where one regular file's contents went; final once ``ready``."""

    __slots__ = ("size", "ready", "blocks_start", "block_sizes", "fragment",
                 "fragment_offset", "sparse", "_key", "_blocks_total", "_blocks_done", "_fd")

    def __init__(self, size: int, ready: bool = False) -> None:
        self.size = size
        self.ready = ready
        self.blocks_start = 0
        self.block_sizes = _NO_BLOCKS
        self.fragment = layout.INVALID_FRAGMENT
        self.fragment_offset = 0
        #: bytes of blocks that are holes in the source (reported by stat).
        self.sparse = 0
        self._key = 0
        self._blocks_total = 0
        self._blocks_done = 0
        self._fd = -1  # the host file the pool reads this file's blocks from


class _Done:
    """Results of work done inline (threads=1, holes), shaped like a _Batch."""

    __slots__ = ("_values",)

    def __init__(self, value) -> None:
        self._values = [value]

    def result(self) -> list:
        return self._values


_HOLE = _Done((None, 0, 0))


class _Batch:
    """Several blocks compressed by one pool task: a task per block costs a
    lock hand-over and a thread wake-up each, against ~0.3 ms of
    compression for a 128 KiB LZ4 block."""

    __slots__ = ("calls", "future")

    def __init__(self) -> None:
        self.calls: list[tuple[Callable, memoryview]] = []
        self.future: Task | None = None

    def run(self) -> list:
        return [fn(view) for fn, view in self.calls]

    def result(self) -> list:
        return self.future.result()  # type: ignore[union-attr]


# Distinct files of blocks kept as dedup candidates per key (size, first
# block's crc): each later file with that key is compared with them, byte
# for byte where their block sizes match; a tree made to share the key
# would otherwise cost a comparison with every earlier file.
_DEDUP_CANDIDATES = 16

# Retired results are written together once this many bytes or pieces
# wait (the pieces stay below IOV_MAX).
_WRITE_BYTES = 1 << 20
_WRITE_PIECES = 256

# Small files are read on the pool in chunks of about this many bytes (or
# files); placing a chunk waits for the read submitted this many chunks
# before it. A fixed distance: the image must not depend on the threads.
_CHUNK_BYTES = 256 * 1024
_CHUNK_FILES = 512
_CHUNKS_AHEAD = 4


class _Chunk:
    """Small files read by one pool task into one buffer, back to back.

    Only host files are read on the pool: other sources (a compressed tar's
    shared decompressor, an image's reader) are read in order on the
    writer's thread, as reading them out of order would restart them."""

    __slots__ = ("recs", "sources", "size", "host_only", "buf", "future", "digests", "forked")

    def __init__(self) -> None:
        self.recs: list[FileData] = []
        self.sources: list[tuple[Data, str]] = []
        self.size = 0
        self.host_only = True
        self.buf: bytearray | None = None
        self.future: Task | None = None
        self.digests: list[int | bytes] | None = None
        self.forked: _ForkedReader | None = None  # the reader reading it

    def add(self, rec: FileData, data: Data, path: str) -> None:
        self.recs.append(rec)
        self.sources.append((data, path))
        self.size += rec.size
        if self.host_only and not isinstance(data, FileRangeData):
            self.host_only = False

    def read(self) -> list[int | bytes]:
        """Read every file into ``buf`` (given, at least ``size`` long; on a
        pool thread when all are host files); see ``read_into``."""
        with memoryview(self.buf) as view:  # type: ignore[arg-type]
            return self.read_into(view[:self.size])

    def read_into(self, view: memoryview) -> list[int | bytes]:
        """Read every file into ``view``, back to back; returns a digest of
        each for finding duplicates: host files' CRC32 (a third of SHA-256's
        cost; a match is confirmed by reading the earlier file again), other
        sources' SHA-256 (reading them again could restart a decompressor)."""
        digests: list[int | bytes] = []
        if self.host_only:
            digest = zlib.crc32
        else:
            import hashlib  # only for tar members and the like: ~5 ms of start-up

            def digest(part: memoryview) -> bytes:
                return hashlib.sha256(part).digest()
        preadv, close = os.preadv, os.close
        # Each file is opened by its name in its directory, which stays open
        # while its files follow one another (as in tree order): an open by
        # full path walked every component again (open, read and close of
        # 50k of the 100k tree's files: 0.18-0.21 s of system time by path,
        # 0.16-0.17 s by name).
        folder, folder_fd = None, -1
        pos = 0
        try:
            for rec, (data, path) in zip(self.recs, self.sources, strict=True):
                size = rec.size
                part = view[pos:pos + size]
                if isinstance(data, FileRangeData):
                    host = data.path
                    head, slash, name = host.rpartition("/")
                    if head != folder:
                        if folder_fd >= 0:
                            close(folder_fd)
                        folder, folder_fd = head, _open_folder(head or slash or ".")
                    try:
                        fd = (open_noatime(name, dir_fd=folder_fd) if folder_fd >= 0
                              else open_noatime(host))
                    except OSError as e:
                        raise CorruptError(f"{path}: cannot read {host}: {e.strerror}") from None
                    try:
                        got = preadv(fd, [part], data.offset)
                        if got < size:  # rare: an interrupted read, or a shrunk file
                            got += _read_host(fd, data.offset + got, part[got:])
                    except OSError as e:
                        raise CorruptError(f"{path}: cannot read {host}: {e.strerror}") from None
                    finally:
                        close(fd)
                else:
                    got = 0
                    while got < size:
                        more = data.readinto(got, part[got:])
                        if more <= 0:
                            break
                        got += more
                if got != size:
                    raise CorruptError(f"{path}: file data ended before its size of {size} "
                                       "bytes")
                digests.append(digest(part))
                pos += size
        finally:
            if folder_fd >= 0:
                close(folder_fd)
        return digests


def _open_folder(path: str) -> int:
    """A descriptor of the directory ``path`` to open files in (O_PATH: no
    read permission needed), or -1 (the caller opens by full path, which
    reports the error an open would)."""
    try:
        return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return -1


# Forked readers: one is worth a fork (a few ms, and copy-on-write faults
# while it runs) for this many small host files (the pool's cost is per
# file: /work/rootfs's 5k small files went no faster forked, 100k did); how
# many bytes of chunks they may read ahead of their placement, together.
_FORK_MIN_FILES = 8192
_FORK_AHEAD_BYTES = 8 << 20


def _read_chunks_in_child(chunks: list[_Chunk], ring: mmap.mmap, slots: int, slot_len: int,
                          data_len: int, ready_w: int, free_r: int,
                          parent_fds: tuple[int, ...]) -> int:
    """The forked reader's work: each chunk's files and CRC32s into the next
    slot of ``ring``, one byte on ``ready_w`` per chunk done; a slot is
    reused once the parent sends one byte on ``free_r`` (it frees them in
    order). An unreadable file ends it with that CorruptError, which the
    parent raises when it reaches that chunk."""
    for fd in parent_fds:
        os.close(fd)
    view = memoryview(ring)
    for i, chunk in enumerate(chunks):
        if i >= slots and not os.read(free_r, 1):
            return i  # the parent gave up
        base = (i % slots) * slot_len
        digests = array("I", chunk.read_into(view[base:base + chunk.size]))  # type: ignore[arg-type]
        view[base + data_len:base + data_len + 4 * len(digests)] = memoryview(digests).cast("B")
        os.write(ready_w, b"\0")
    return len(chunks)


class _ForkedReader:
    """Reads chunks of small host files in a forked child (one reader per
    thread, each taking every n-th chunk).

    On the pool, each file's open, preadv and close hands the GIL over twice
    (100k files: 300k hand-offs, each waiting up to the switch interval
    while this process's main thread runs Python); read with two threads,
    100k small files took longer than with one. The child has its own GIL:
    it reads into a shared anonymous map (a ring of slots, one chunk each)
    and says when each chunk is in; the parent places chunks in the same
    order as from the pool, so the image is the same."""

    def __init__(self, chunks: list[_Chunk], ahead: int,
                 others: tuple[int, ...] = ()) -> None:
        """Start reading ``chunks``; ``others`` are descriptors of earlier
        readers' parent sides, which the child closes (so that each child
        sees end-of-file when the parent goes)."""
        self.data_len = max(c.size for c in chunks)
        files = max(len(c.recs) for c in chunks)
        self.slot_len = self.data_len + 4 * files
        self.slots = max(2, min(len(chunks), ahead // self.slot_len))
        self.ring = mmap.mmap(-1, self.slots * self.slot_len)
        self.view = memoryview(self.ring)
        self._ready = 0  # chunks the child has reported and this side not yet taken
        self._taken = 0
        self._held = 0  # slots freed and not yet given back (see release)
        self._release_every = max(1, self.slots // 4)
        self.count = len(chunks)
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        # A socket sent to with MSG_NOSIGNAL, not a pipe: a send to a child
        # that has stopped (on an unreadable file) is then an EPIPE error
        # whatever the process does with SIGPIPE (Python ignores it, but a
        # program embedding conv may not). (Imported here: ~3 ms of every
        # start-up otherwise.)
        import socket
        self._msg_nosignal = socket.MSG_NOSIGNAL
        self.free, free_child = socket.socketpair()
        self.ready_r = ready_r
        self.child: Forked | None = None
        try:
            self.child = Forked(_read_chunks_in_child, chunks, self.ring, self.slots,
                                self.slot_len, self.data_len, ready_w, free_child.fileno(),
                                (ready_r, self.free.fileno(), *others))
        except BaseException:
            self.close()
            raise
        finally:
            # Only the child writes ``ready``: its exit is end-of-file here.
            os.close(ready_w)
            free_child.close()

    def parent_fds(self) -> tuple[int, int]:
        return self.ready_r, self.free.fileno()

    def take(self, chunk: _Chunk) -> tuple[memoryview, list[int]]:
        """The next chunk's bytes (a view of its slot, valid until
        ``release``) and CRC32s."""
        while not self._ready:
            got = os.read(self.ready_r, 4096)
            if not got:
                self._failed()
            self._ready += len(got)
        self._ready -= 1
        base = (self._taken % self.slots) * self.slot_len
        self._taken += 1
        digests = array("I")
        digests.frombytes(self.view[base + self.data_len:
                                    base + self.data_len + 4 * len(chunk.recs)])
        return self.view[base:base + chunk.size], digests.tolist()

    def release(self) -> None:
        """The oldest slot taken is free for the child again (when it has a
        chunk left to read into it). Slots go back a few at a time: each
        send wakes the child, which on a busy machine can take this
        thread's core (100k files: 0.1 s in sends one by one). Holding back
        fewer than ``slots`` keeps the chunk this side waits for readable."""
        if self._taken - 1 + self.slots < self.count:
            self._held += 1
            if self._held >= self._release_every or self._taken + self.slots >= self.count:
                try:
                    self.free.send(b"\0" * self._held, self._msg_nosignal)
                except ConnectionError:  # it stopped: ``take`` reports why
                    pass
                self._held = 0

    def _failed(self) -> None:
        """The child ended before reporting a chunk asked for: its error."""
        child, self.child = self.child, None
        assert child is not None
        child.result()  # raises what stopped it
        raise ConvError("the small-file reader process stopped early")

    def finish(self) -> None:
        child, self.child = self.child, None
        if child is not None:
            child.result()
        self.close()

    def close(self) -> None:
        if self.child is not None:
            self.child.cancel()
            self.child = None
        if self.ready_r >= 0:
            os.close(self.ready_r)
            self.ready_r = -1
        self.free.close()
        self.view.release()
        try:
            self.ring.close()
        except BufferError:  # a slot's view is still held (by a traceback): the GC closes it
            pass


class DataWriter:
    """Appends file data to ``fd`` from offset ``start``; see the module doc."""

    def __init__(self, fd: int, start: int, codec: Codec, block_size: int, threads: int,
                 fragments: bool = True, dedup: bool = True,
                 records: list[FileData | None] | None = None) -> None:
        """``records``: where each file's record goes, by the key the file
        is given with (a dict by default; a list with room for every key
        when the keys are its indices)."""
        self.fd = fd
        self.pos = start
        self.codec = codec
        self.block_size = block_size
        self.fragments_enabled = fragments
        self.dedup = dedup
        self.threads = threads
        self.pool = Pool(threads, "squashfs") if threads > 1 else None
        # Up to 512 KiB of blocks per pool task, and enough tasks in flight
        # to keep every thread busy while this thread reads the next ones.
        self.batch_max = max(1, (512 * 1024) // block_size) if threads > 1 else 1
        self.inflight = max(2, 3 * threads) * self.batch_max
        self._open_batch: _Batch | None = None
        self._free = [bytearray(block_size) for _ in range(self.inflight + 2)]
        self._queue: deque = deque()
        self._zero_bytes = bytes(block_size)
        #: results retired and not yet written (they end at ``pos``), their
        #: total size, and the buffers of those stored uncompressed
        self._writes: list = []
        self._write_bytes = 0
        self._held: list[bytearray] = []
        #: (start, size word) of each fragment block, by fragment index.
        self.fragment_table: list[tuple[int, int]] = []
        self._frag_count = 0
        self._frag_buf: bytearray | None = None
        self._frag_fill = 0
        #: host files whose blocks the pool is reading (closed as each file's
        #: last block retires, or by ``close``)
        self._open_fds: set[int] = set()
        #: every file queued so far, by the caller's key
        self.records: dict[int, FileData] | list[FileData | None] = \
            {} if records is None else records
        self._dups_blocks: dict[tuple[int, int], list[FileData]] = {}
        #: small files by (size, digest), with their data for a host file's
        #: comparison (see ``_Chunk.read``)
        self._dups_small: dict[tuple[int, int | bytes], tuple[FileData, Data]] = {}
        #: the forked reader of small host files, while add_files runs
        self._forked: list[_ForkedReader] = []
        #: add_more's chunk still filling, and chunks read but not placed
        self._open_chunk = _Chunk()
        self._ahead: deque[_Chunk] = deque()
        #: buffers of chunks placed, for the next ones (see _submit_chunk)
        self._chunk_buffers: list[bytearray] = []

    # -- work done on the pool

    def _is_zero(self, view: memoryview) -> bool:
        # bytes == bytes is a memcmp; memoryview == memoryview compares item by item.
        return view.tobytes() == self._zero_bytes[:len(view)]

    def _pack_block(self, view: memoryview, keyed: bool = False) -> tuple[bytes | None, int, int]:
        """(compressed bytes or None, size word, crc) for one data block; an
        all-zero block is sparse (size word 0). The crc (of what is stored)
        is only taken for a file's first block (``keyed``): with the file's
        size and its blocks' sizes it finds dedup candidates, which are
        compared byte for byte, so a crc of every block (6% of the CPU of
        writing a Debian root with lz4) would only thin them out further."""
        n = len(view)
        packed = self.codec.compress(view)
        m = len(packed)
        if m < n:
            # Zeros compress to almost nothing; only then is the memcmp worth it.
            if m <= (n >> 7) + 128 and self._is_zero(view):
                return None, 0, 0
            return packed, m, _crc32(packed) if keyed else 0
        return None, n | _UNCOMPRESSED, _crc32(view) if keyed else 0

    def _pack_keyed(self, view: memoryview) -> tuple[bytes | None, int, int]:
        return self._pack_block(view, True)

    def _pack_fragment(self, view: memoryview) -> tuple[bytes | None, int, int]:
        n = len(view)
        packed = self.codec.compress(view)
        if len(packed) < n:
            return packed, len(packed), 0
        return None, n | _UNCOMPRESSED, 0

    def _submit(self, kind: int, rec, fn: Callable, view: memoryview, buf: bytearray,
                n: int) -> None:
        """Queue ``fn(view)`` for the pool (or run it now without one)."""
        if self.pool is None:
            self._enqueue(kind, rec, _Done(fn(view)), 0, buf, n)
            return
        batch = self._open_batch
        if batch is None:
            batch = self._open_batch = _Batch()
        batch.calls.append((fn, view))
        index = len(batch.calls) - 1
        if index + 1 >= self.batch_max:
            self._submit_batch()
        self._enqueue(kind, rec, batch, index, buf, n)

    def _submit_batch(self) -> None:
        batch = self._open_batch
        self._open_batch = None
        batch.future = self.pool.submit(batch.run)  # type: ignore[union-attr]

    # -- buffers and the in-order retirement of results

    def _take_buffer(self) -> bytearray:
        while not self._free:
            if self._held:
                self._flush_writes()
            else:
                self._retire()
        return self._free.pop()

    def _retire(self) -> None:
        kind, rec, work, index, buf, n = self._queue.popleft()
        if work is self._open_batch:
            self._submit_batch()
        packed, word, crc = work.result()[index]
        if kind == _BLOCK:
            if rec._blocks_done == 0:
                rec.blocks_start = self.pos
            self._write_result(packed, word, buf, n)
            rec.block_sizes.append(word)
            rec._key = hash((rec._key, crc))
            rec._blocks_done += 1
            if rec._blocks_done == rec._blocks_total:
                if self.dedup:
                    self._dedup_blocks(rec)
                rec.ready = True
                if rec._fd >= 0:
                    self._open_fds.discard(rec._fd)
                    os.close(rec._fd)
                    rec._fd = -1
        else:
            self.fragment_table.append((self.pos, word))
            self._write_result(packed, word, buf, n)

    def _write_result(self, packed: bytes | None, word: int, buf: bytearray | None,
                      n: int) -> None:
        """Queue a result for writing at ``pos``; ``buf`` goes back to the
        free list now, or once written when it holds the bytes (stored
        uncompressed)."""
        if word == 0:
            if buf is not None:
                self._free.append(buf)
            return
        if packed is None:
            self._held.append(buf)  # type: ignore[arg-type]
            packed = memoryview(buf)[:n]  # type: ignore[index]
        elif buf is not None:
            self._free.append(buf)
        self._writes.append(packed)
        self._write_bytes += len(packed)
        self.pos += len(packed)
        if self._write_bytes >= _WRITE_BYTES or len(self._writes) >= _WRITE_PIECES:
            self._flush_writes()

    def _flush_writes(self) -> None:
        """Write the queued results, which end at ``pos``: one pwritev for
        many blocks, as each system call on this thread lets a pool thread
        take the GIL, which it may keep for the switch interval."""
        writes = self._writes
        if writes:
            offset = self.pos - self._write_bytes
            while writes:
                written = os.pwritev(self.fd, writes, offset)
                offset += written
                while writes and written >= len(writes[0]):
                    written -= len(writes.pop(0))
                if written:
                    writes[0] = memoryview(writes[0])[written:]
            self._write_bytes = 0
        if self._held:
            self._free += self._held
            self._held.clear()

    def _enqueue(self, kind: int, rec, work: _Batch | _Done, index: int, buf, n: int) -> None:
        self._queue.append((kind, rec, work, index, buf, n))
        if len(self._queue) >= self.inflight:
            self._retire()

    # -- files

    def add_files(self, files: list[tuple[int, str, Data | None]],
                  idle: Callable[[], object] | None = None) -> None:
        """Queue many files' contents (key, path for messages, data), in
        order, recording each in ``records`` under its key at once; a record
        is complete when ``ready``, all of them after ``finish``. ``idle`` is
        called whenever more records may have become ready: work for this
        thread while the pool reads and compresses.

        Files smaller than a block are read many to a chunk (``_Chunk``):
        host files by a forked child when there are threads and enough
        chunks (``_ForkedReader``), else on the pool, so reading overlaps
        compression and this thread's work. Their
        digests come back with the bytes, and this thread places them in
        fragment blocks (or finds them duplicates) ``_CHUNKS_AHEAD`` chunks
        later: a fixed distance, so where fragment blocks land among the
        larger files' blocks does not depend on the thread count.

        After ``resume``, the files go on from the chunks it carried over."""
        steps, chunk = self._steps(files, self._open_chunk)
        self._open_chunk = _Chunk()
        if chunk.recs:
            steps.append(chunk)
        if self.pool is not None and forking():
            host = [c for c in steps if type(c) is _Chunk and c.host_only]
            # As many readers as threads (up to the processors): on a busy
            # machine a single one gets one share of them, and placing waits
            # for it; each is a fork of this whole process.
            count = min(self.threads, os.cpu_count() or 1, len(host),
                        sum(len(c.recs) for c in host) // _FORK_MIN_FILES)
            for i in range(count):
                others = tuple(fd for r in self._forked for fd in r.parent_fds())
                reader = _ForkedReader(host[i::count], _FORK_AHEAD_BYTES // count, others)
                self._forked.append(reader)
                for c in host[i::count]:
                    c.forked = reader
        ahead = self._ahead
        for step in steps:
            self._run_step(step, ahead, idle)
        self._place_ahead(ahead, idle)
        while self._forked:
            self._forked.pop().finish()

    # -- handing over to another writer (conv_squashfs.early)

    def suspend(self) -> dict:
        """Stop after the files added so far (``add_more``) and return, as
        plain values (marshal), what a writer given the same files needs to
        go on from here exactly as this one would (``resume``). Every block
        and fragment queued is written first; the fragment still filling,
        the chunks of small files not placed yet (read ahead, or filling)
        and the duplicate candidates are handed over, files by key: the
        records of the chunks' files are left not ready."""
        while self._queue:
            self._retire()
        self._flush_writes()
        key_of = {id(rec): key for key, rec in self.records.items()}  # type: ignore[union-attr]
        fill = self._frag_fill
        return {
            "pos": self.pos,
            "fragment_table": self.fragment_table,
            "fragment": None if self._frag_buf is None else bytes(self._frag_buf[:fill]),
            "chunks": [[key_of[id(rec)] for rec in chunk.recs]
                       for chunk in (*self._ahead, self._open_chunk)],
            "dups_small": [(size, digest, key_of[id(rec)])
                           for (size, digest), (rec, _) in self._dups_small.items()],
            "dups_blocks": [(size, crc, [key_of[id(rec)] for rec in recs])
                            for (size, crc), recs in self._dups_blocks.items()],
        }

    def resume(self, state: dict, files: list[tuple[int, str, Data]]) -> None:
        """Go on from where a writer that was given ``files`` (key, path,
        data; the suspended writer's key of each is its index here) stopped
        (``suspend``): its ``pos``, fragments and duplicate candidates, and
        the chunks it had not placed, read again here. ``records`` must hold
        the records of the files it finished (under these keys)."""
        records = self.records
        self.pos = state["pos"]
        self.fragment_table = [tuple(entry) for entry in state["fragment_table"]]
        self._frag_count = len(self.fragment_table)
        fragment = state["fragment"]
        if fragment is not None:
            self._frag_buf = self._take_buffer()
            self._frag_buf[:len(fragment)] = fragment
            self._frag_fill = len(fragment)
        for size, digest, index in state["dups_small"]:
            key, _, data = files[index]
            self._dups_small[(size, digest)] = (records[key], data)  # type: ignore[index]
        for size, crc, indexes in state["dups_blocks"]:
            self._dups_blocks[(size, crc)] = [records[files[i][0]]  # type: ignore[misc]
                                              for i in indexes]
        *ahead, filling = state["chunks"]
        for indexes in ahead:
            chunk = self._chunk_of(indexes, files)
            self._submit_chunk(chunk)
            self._ahead.append(chunk)
        self._open_chunk = self._chunk_of(filling, files)

    def _chunk_of(self, indexes: list[int], files: list[tuple[int, str, Data]]) -> _Chunk:
        chunk = _Chunk()
        for i in indexes:
            key, path, data = files[i]
            rec = self.records[key] = FileData(data.size)  # type: ignore[index]
            chunk.add(rec, data, path)
        return chunk

    def add_more(self, files: list[tuple[int, str, Data | None]],
                 idle: Callable[[], object] | None = None) -> None:
        """``add_files`` for a list given in parts (as a source finds them):
        the same steps in the same order, so the same bytes, when ``end_more``
        follows the last part. Small files are read on the pool."""
        steps, self._open_chunk = self._steps(files, self._open_chunk)
        for step in steps:
            self._run_step(step, self._ahead, idle)

    def end_more(self, idle: Callable[[], object] | None = None) -> None:
        """After the last ``add_more``."""
        if self._open_chunk.recs:
            self._run_step(self._open_chunk, self._ahead, idle)
            self._open_chunk = _Chunk()
        self._place_ahead(self._ahead, idle)

    def _steps(self, files: list[tuple[int, str, Data | None]],
               chunk: _Chunk) -> tuple[list[_Chunk | tuple[FileData, Data, str]], _Chunk]:
        """Records for ``files`` (in ``records`` at once) and the work they
        make: a file of blocks, or a chunk of small files once full (known
        before any is read, for the reader); returns those steps and the
        chunk still filling, which ``chunk`` was on entry."""
        records = self.records
        small_max = self.block_size if self.fragments_enabled else 0
        steps: list[_Chunk | tuple[FileData, Data, str]] = []
        for key, path, data in files:
            size = data.size if data is not None else 0
            if size == 0 or data is None:
                records[key] = FileData(0, True)
                continue
            records[key] = rec = FileData(size)
            if size >= small_max:
                steps.append((rec, data, path))
                continue
            chunk.add(rec, data, path)
            if chunk.size >= _CHUNK_BYTES or len(chunk.recs) >= _CHUNK_FILES:
                steps.append(chunk)
                chunk = _Chunk()
        return steps, chunk

    def _run_step(self, step: _Chunk | tuple[FileData, Data, str], ahead: deque[_Chunk],
                  idle: Callable[[], object] | None) -> None:
        """Queue a file's blocks, or submit a chunk's read and place the
        chunk submitted ``_CHUNKS_AHEAD`` before it."""
        if type(step) is tuple:
            self._add_blocks(*step)
        else:
            self._submit_chunk(step)  # type: ignore[arg-type]
            ahead.append(step)  # type: ignore[arg-type]
            if len(ahead) <= _CHUNKS_AHEAD:
                return
            self._place_chunk(ahead.popleft())
        if idle is not None:
            idle()

    def _place_ahead(self, ahead: deque[_Chunk], idle: Callable[[], object] | None) -> None:
        while ahead:
            self._place_chunk(ahead.popleft())
            if idle is not None:
                idle()

    def _submit_chunk(self, chunk: _Chunk) -> None:
        if chunk.forked is not None:
            return
        # Buffers are reused: a new one per chunk (256 KiB and more) was
        # zero-filled and page-faulted in each time, on the pool threads.
        free = self._chunk_buffers
        chunk.buf = free.pop() if free else bytearray(_CHUNK_BYTES + self.block_size)
        if self.pool is not None and chunk.host_only:
            chunk.future = self.pool.submit(chunk.read)
        else:
            chunk.digests = chunk.read()

    def _place_chunk(self, chunk: _Chunk) -> None:
        """Put one chunk's files, read on the pool, into fragment blocks."""
        if chunk.forked is not None:
            view, digests = chunk.forked.take(chunk)
        else:
            digests = chunk.digests if chunk.future is None else chunk.future.result()
            view = memoryview(chunk.buf)[:chunk.size]  # type: ignore[arg-type]
        block_size = self.block_size
        dups = self._dups_small if self.dedup else None
        buf, fill = self._frag_buf, self._frag_fill
        frag = self._frag_count
        pos = 0
        # Files placed back to back are copied as one run (``run`` bytes of
        # the chunk from ``pos - run``, to the fragment buffer from
        # ``fill - run``): a copy per file cost two views and an assignment.
        run = 0
        for rec, digest, (data, _) in zip(chunk.recs, digests, chunk.sources, strict=True):
            size = rec.size
            if dups is not None:
                key = (size, digest)
                found = dups.get(key)
                if found is None:
                    dups[key] = (rec, data)
                elif type(digest) is bytes or self._same_host(found[1], view[pos:pos + size]):
                    other = found[0]
                    rec.fragment = other.fragment
                    rec.fragment_offset = other.fragment_offset
                    rec.ready = True
                    if run:
                        buf[fill - run:fill] = view[pos - run:pos]  # type: ignore[index]
                        run = 0
                    pos += size
                    continue
            if buf is None or fill + size > block_size:
                if buf is not None:
                    if run:
                        buf[fill - run:fill] = view[pos - run:pos]
                        run = 0
                    self._frag_fill = fill
                    self._flush_fragment()
                    frag = self._frag_count
                buf = self._frag_buf = self._take_buffer()
                fill = 0
            rec.fragment = frag
            rec.fragment_offset = fill
            rec.ready = True
            fill += size
            pos += size
            run += size
        if run:
            buf[fill - run:fill] = view[pos - run:pos]  # type: ignore[index]
        self._frag_fill = fill
        view.release()
        if chunk.forked is not None:
            chunk.forked.release()
        else:
            self._chunk_buffers.append(chunk.buf)  # type: ignore[arg-type]
        chunk.buf = None
        chunk.recs = chunk.sources = []  # type: ignore[assignment]

    def _same_host(self, data: Data, content: memoryview) -> bool:
        """Whether host file ``data`` (an earlier small file with the same
        size and CRC32) still holds ``content``."""
        try:
            fd = open_noatime(data.path)  # type: ignore[attr-defined]
        except OSError:
            return False
        try:
            return os.pread(fd, len(content), data.offset) == content  # type: ignore[attr-defined]
        except OSError:
            return False
        finally:
            os.close(fd)

    @staticmethod
    def _open_host(data: FileRangeData, path: str) -> int:
        try:
            return open_noatime(data.path)
        except OSError as e:
            raise CorruptError(f"{path}: cannot read {data.path}: {e.strerror}") from None

    def _read_pack(self, fd: int, base: int, path: str, size: int, start: int,
                   view: memoryview) -> tuple[bytes | None, int, int]:
        """Read one block of a host file and pack it (on a pool thread: the
        preadv overlaps this thread's compression and the writer's work)."""
        if _read_host(fd, base + start, view) != len(view):
            raise CorruptError(f"{path}: file data ended before its size of {size} bytes "
                               f"(at offset {start})")
        return self._pack_block(view, start == 0)

    def _reader(self, data: Data, path: str) -> tuple[Callable[[int, memoryview], int], int]:
        """A readinto(offset, view) for ``data`` and a descriptor to close (-1)."""
        if isinstance(data, FileRangeData):
            # One descriptor per file instead of one open per block.
            fd = self._open_host(data, path)
            base = data.offset
            return lambda offset, view: _read_host(fd, base + offset, view), fd

        def read_generic(offset: int, view: memoryview) -> int:
            done = 0
            while done < len(view):
                got = data.readinto(offset + done, view[done:])
                if got <= 0:
                    break
                done += got
            return done
        return read_generic, -1

    def _add_blocks(self, rec: FileData, data: Data, path: str) -> None:
        bs = self.block_size
        size = rec.size
        count = (size + bs - 1) // bs
        rec._blocks_total = count
        rec.block_sizes = array("I")
        extents = list(data.extents())
        whole = len(extents) == 1 and extents[0] == (0, size)
        # Host files' blocks are read on the pool (their descriptor stays open
        # until the last block retires); other sources in order, here.
        pooled = self.pool is not None and isinstance(data, FileRangeData)
        if pooled:
            fd = rec._fd = self._open_host(data, path)  # type: ignore[arg-type]
            self._open_fds.add(fd)
            read_pack = partial(self._read_pack, fd, data.offset,  # type: ignore[union-attr]
                                path, size)
        else:
            read, fd = self._reader(data, path)
        try:
            ext_i = 0
            for i in range(count):
                start = i * bs
                n = min(bs, size - start)
                if not whole:
                    # Skip extents that end before this block; a block no extent
                    # touches is a hole: sparse without reading it.
                    while ext_i < len(extents) and sum(extents[ext_i]) <= start:
                        ext_i += 1
                    if ext_i == len(extents) or extents[ext_i][0] >= start + n:
                        rec.sparse += n
                        self._enqueue(_BLOCK, rec, _HOLE, 0, None, n)
                        continue
                buf = self._take_buffer()
                view = memoryview(buf)[:n]
                if pooled:
                    self._submit(_BLOCK, rec, partial(read_pack, start), view, buf, n)
                    continue
                if read(start, view) != n:
                    self._free.append(buf)
                    raise CorruptError(f"{path}: file data ended before its size of {size} "
                                       f"bytes (at offset {start})")
                self._submit(_BLOCK, rec, self._pack_keyed if i == 0 else self._pack_block,
                             view, buf, n)
        finally:
            if fd >= 0 and not pooled:
                os.close(fd)
        if rec.sparse >= size:
            rec.sparse = size - 1  # as mksquashfs: a wholly sparse file still has a byte

    def _dedup_blocks(self, rec: FileData) -> None:
        key = (rec.size, rec._key)
        candidates = self._dups_blocks.setdefault(key, [])
        stored = sum(w & _SIZE_MASK for w in rec.block_sizes)
        for other in candidates:
            if other.block_sizes == rec.block_sizes and self._same_stored(
                    other.blocks_start, rec.blocks_start, stored):
                self.pos = rec.blocks_start  # forget the copy just written
                rec.blocks_start = other.blocks_start
                return
        if len(candidates) < _DEDUP_CANDIDATES:
            candidates.append(rec)

    def _same_stored(self, a: int, b: int, length: int) -> bool:
        self._flush_writes()
        done = 0
        while done < length:
            n = min(1 << 20, length - done)
            if os.pread(self.fd, n, a + done) != os.pread(self.fd, n, b + done):
                return False
            done += n
        return True

    def _flush_fragment(self) -> None:
        buf, n = self._frag_buf, self._frag_fill
        self._frag_buf = None
        self._frag_count += 1
        view = memoryview(buf)[:n]  # type: ignore[arg-type]
        self._submit(_FRAGMENT, None, self._pack_fragment, view, buf, n)

    def finish(self) -> int:
        """Flush the last fragment and every block in flight; returns the end
        offset of the data."""
        if self._frag_buf is not None:
            if self._frag_fill:
                self._flush_fragment()
            else:
                self._free.append(self._frag_buf)
                self._frag_buf = None
        while self._queue:
            self._retire()
        self._flush_writes()
        self.close()
        return self.pos

    def close(self) -> None:
        while self._forked:
            self._forked.pop().close()
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None
        while self._open_fds:
            os.close(self._open_fds.pop())
