"""Decompress ahead, in image order, across files.

A consumer that walks the tree in ``Tree.data_order()`` reads the image front
to back, mostly small files of one block or a fragment tail each, so there is
nothing to parallelise inside one file. The prefetcher keeps the next few
compressed blocks after the one just read (whichever files they belong to)
decompressing on the pool; the file that owns a block takes the result
instead of decompressing it again. In flight stays bounded; a block that was
never started is cancelled and simply decompressed by its reader, so a pool
task never waits on a queued one.
"""

from __future__ import annotations

import os
import threading
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable
from concurrent.futures import Future

from conv_squashfs.decompress import Decompressor
from conv_squashfs.layout import DATA_SIZE_MASK, DATA_UNCOMPRESSED, MAX_BLOCK_SIZE
from convcore.blockdev import Volume
from convcore.errors import ConvError, CorruptError

#: decompressed bytes one pool task handles: small blocks go in groups so the
#: pool's per-task cost stays small next to the codec's work
TASK_BYTES = 256 << 10

_scratch = threading.local()


def read_scratch(volume: Volume, length: int, offset: int, what: str) -> memoryview:
    """``length`` bytes at ``offset`` in this thread's reused buffer (valid
    until the thread's next call): compressed blocks need no bytes object."""
    buf = getattr(_scratch, "buf", None)
    if buf is None or len(buf) < length:
        buf = _scratch.buf = bytearray(max(length, MAX_BLOCK_SIZE))
    view = memoryview(buf)[:length]
    if offset < 0 or offset + length > volume.size or volume.readinto(view, offset) != length:
        raise CorruptError(f"{what} at offset {offset} (+{length}) lies outside the "
                           f"{volume.size}-byte image")
    return view


#: (disk offset, size word, decompressed size or 0 for "up to a block")
BlockRef = tuple[int, int, int]


class Prefetcher:
    """Image-order read-ahead of compressed data and fragment blocks."""

    def __init__(self, volume: Volume, decompress: Decompressor, block_size: int,
                 pool: Callable[[], object]) -> None:
        self.volume = volume
        self.decompress = decompress
        self.block_size = block_size
        self._pool = pool
        #: where blocks are, keyed by first disk offset (a file read again
        #: through SquashFS.get, or a duplicate, replaces its entry)
        self._sources: dict[int, Callable[[], Iterable[BlockRef]]] = {}
        self._indexed = -1  # len(_sources) when the index was built
        self._offsets = array("Q")
        self._words = array("I")
        self._sizes = array("I")
        #: disk offset -> (future of its group's results, index in the group)
        self._pending: dict[int, tuple[Future, int]] = {}
        self._lock = threading.Lock()
        self._tasks = 2 * (os.cpu_count() or 1)

    def add(self, key: int, blocks: Callable[[], Iterable[BlockRef]]) -> None:
        """Register where some compressed blocks are (a file's, the
        fragment table's), under the disk offset of the first one; listed
        only when read-ahead first runs."""
        self._sources[key] = blocks

    def take(self, disk: int) -> bytes | None:
        """The block at ``disk`` if read-ahead has it (waiting only for a
        task that is already running); None: decompress it yourself."""
        with self._lock:
            found = self._pending.pop(disk, None)
        if found is None:
            return None
        future, n = found
        if future.cancel():
            return None
        try:
            return future.result()[n]
        except ConvError:
            return None  # the reader redoes it and reports the damage in its own words

    def ahead(self, disk: int) -> None:
        """The block at ``disk`` was just read: start the next ones."""
        with self._lock:
            if self._indexed != len(self._sources):
                self._build_index()
            for old in [d for d in self._pending if d <= disk]:
                self._pending.pop(old)[0].cancel()
            running = len({id(f) for f, _ in self._pending.values()})
            i = bisect_right(self._offsets, disk)
            n = len(self._offsets)
            while running < self._tasks and i < n:
                group: list[BlockRef] = []
                size = 0
                while i < n and size < TASK_BYTES:
                    offset = self._offsets[i]
                    if offset not in self._pending:
                        group.append((offset, self._words[i], self._sizes[i]))
                        size += self._sizes[i] or self.block_size
                    i += 1
                if not group:
                    break
                future = self._pool().submit(self._decompress_group, group)  # type: ignore[attr-defined]
                for k, (offset, _, _) in enumerate(group):
                    self._pending[offset] = (future, k)
                running += 1

    def _build_index(self) -> None:
        seen: dict[int, tuple[int, int]] = {}
        for source in self._sources.values():
            for offset, word, size in source():
                # Only compressed blocks cost CPU; duplicates share a block.
                if word & DATA_SIZE_MASK and not word & DATA_UNCOMPRESSED:
                    seen.setdefault(offset, (word, size))
        order = sorted(seen)
        self._offsets = array("Q", order)
        self._words = array("I", (seen[o][0] for o in order))
        self._sizes = array("I", (seen[o][1] for o in order))
        self._indexed = len(self._sources)

    def _decompress_group(self, group: list[BlockRef]) -> list[bytes | None]:
        out: list[bytes | None] = []
        for offset, word, size in group:
            try:
                length = word & DATA_SIZE_MASK
                if length > self.block_size:
                    raise CorruptError("block longer than the block size")
                raw = read_scratch(self.volume, length, offset, "read-ahead block")
                out.append(self.decompress(raw, size or self.block_size, "read-ahead block"))
            except (ConvError, OSError):
                out.append(None)  # its reader meets the damage (or closed image) itself
        return out
