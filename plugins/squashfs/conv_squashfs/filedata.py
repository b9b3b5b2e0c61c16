"""Lazy file contents of a squashfs image: decompressed block by block.

A file is ``size`` bytes: full data blocks stored back to back from
``start`` (each compressed, stored, or a size-0 sparse block of zeros), then
either a last partial block or a tail kept in a fragment block shared with
other files.
"""

from __future__ import annotations

import os
import threading
from array import array
from collections import OrderedDict, deque
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from itertools import accumulate

from conv_squashfs.decompress import Decompressor
from conv_squashfs.layout import DATA_SIZE_MASK, DATA_UNCOMPRESSED, MAX_BLOCK_SIZE
from conv_squashfs.prefetch import TASK_BYTES, BlockRef, Prefetcher, read_scratch
from convcore.blockdev import Volume
from convcore.errors import CorruptError
from convcore.tree import Data

#: zeros for sparse blocks, sliced through a memoryview (no copy)
_ZEROS = memoryview(bytes(MAX_BLOCK_SIZE))

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def decompress_pool() -> Executor:
    """One process-wide pool for data blocks (the codecs release the GIL)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1,
                                       thread_name_prefix="squashfs-read")
        return _pool


class FragmentCache:
    """The fragment table and a few decompressed fragment blocks (many small
    files share one, and are read one after another)."""

    KEEP = 8

    def __init__(self, volume: Volume, decompress: Decompressor, block_size: int,
                 entries: list[tuple[int, int]], bytes_used: int,
                 prefetcher: Prefetcher | None = None) -> None:
        self.volume = volume
        self.prefetcher = prefetcher
        self.decompress = decompress
        self.block_size = block_size
        #: (absolute start, size field) per fragment
        self.entries = entries
        self.bytes_used = bytes_used
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()
        if prefetcher is not None:
            # Key -1: no data block starts there, so it never clashes with a file.
            prefetcher.add(-1, lambda: ((start, word, 0) for start, word in self.entries))

    def block_start(self, index: int) -> int:
        return self.entries[index][0]

    def get(self, index: int) -> bytes:
        with self._lock:
            data = self._cache.get(index)
            if data is not None:
                self._cache.move_to_end(index)
                return data
        start, field = self.entries[index]
        length = field & DATA_SIZE_MASK
        what = f"fragment block {index}"
        if field & ~(DATA_UNCOMPRESSED | DATA_SIZE_MASK) or length == 0 \
                or length > self.block_size:
            raise CorruptError(f"{what}: bad size field {field:#x}")
        if start + length > self.bytes_used:
            raise CorruptError(f"{what} at offset {start} (+{length}) lies past the filesystem end")
        data = None
        if self.prefetcher is not None and not field & DATA_UNCOMPRESSED:
            data = self.prefetcher.take(start)
            self.prefetcher.ahead(start)
        if data is None:
            raw = self.volume.read_exact(length, start, what)
            data = raw if field & DATA_UNCOMPRESSED else self.decompress(raw, self.block_size,
                                                                         what)
        with self._lock:
            self._cache[index] = data
            while len(self._cache) > self.KEEP:
                self._cache.popitem(last=False)
        return data


class SquashFileData(Data):
    """The contents of one regular file inode."""

    def __init__(self, volume: Volume, decompress: Decompressor, block_size: int,
                 inode: int, size: int, start: int, blocks: array,
                 fragments: FragmentCache | None = None, fragment: int = -1,
                 fragment_offset: int = 0, prefetcher: Prefetcher | None = None) -> None:
        self.volume = volume
        self.decompress = decompress
        self.block_size = block_size
        self.inode = inode
        self.size = size
        self.start = start
        #: block list entries from the inode
        self.blocks = blocks
        self.fragments = fragments
        self.fragment = fragment
        self.fragment_offset = fragment_offset
        self.prefetcher = prefetcher
        if prefetcher is not None and blocks:
            prefetcher.add(start, self._compressed_blocks)
        self._offsets: array | None = None
        self._last: tuple[int, bytes] | None = None

    @property
    def order_key(self) -> tuple:
        if not self.blocks and self.fragments is not None and self.fragment >= 0:
            return (self.fragments.block_start(self.fragment),)
        return (self.start,)

    # -- where things are
    def _block_offsets(self) -> array:
        """Disk offset of each block relative to ``start`` (plus the end)."""
        if self._offsets is None:
            sizes = (b & DATA_SIZE_MASK for b in self.blocks)
            self._offsets = array("Q", accumulate(sizes, initial=0))
        return self._offsets

    def _block_length(self, index: int) -> int:
        """Bytes of file data block ``index`` holds once decompressed."""
        return min(self.block_size, self.size - index * self.block_size)

    def _tail(self) -> bytes:
        """The part of the file kept in its fragment block."""
        tail_start = len(self.blocks) * self.block_size
        length = self.size - tail_start
        assert self.fragments is not None
        block = self.fragments.get(self.fragment)
        end = self.fragment_offset + length
        if end > len(block):
            raise CorruptError(f"inode {self.inode}: tail at fragment {self.fragment} offset "
                               f"{self.fragment_offset} (+{length}) lies outside the "
                               f"{len(block)}-byte fragment block")
        return block[self.fragment_offset : end]

    def _compressed_blocks(self) -> Iterator[BlockRef]:
        """(disk offset, size word, decompressed size) of every block, for
        the prefetcher's image-order index."""
        offsets = self._block_offsets()
        for index, word in enumerate(self.blocks):
            yield self.start + offsets[index], word, self._block_length(index)

    def _what(self, index: int) -> str:
        return f"inode {self.inode} data block {index}"

    def _read_block(self, index: int) -> bytes | None:
        """Decompressed block ``index``; None for a sparse block. Reentrant."""
        entry = self.blocks[index]
        length = entry & DATA_SIZE_MASK
        if length == 0:
            return None
        disk = self.start + self._block_offsets()[index]
        want = self._block_length(index)
        if self.prefetcher is not None and not entry & DATA_UNCOMPRESSED:
            data = self.prefetcher.take(disk)
            if data is not None and len(data) == want:
                return data
        raw = read_scratch(self.volume, length, disk, self._what(index))
        data = bytes(raw) if entry & DATA_UNCOMPRESSED else self.decompress(
            raw, want, self._what(index))
        if len(data) != want:
            raise CorruptError(f"{self._what(index)} holds {len(data)} bytes, expected {want}")
        return data

    def _block(self, index: int) -> bytes | None:
        last = self._last
        if last is not None and last[0] == index:
            return last[1]
        data = self._read_block(index)
        self._last = (index, data)  # one tuple: a concurrent reader sees old or new
        self._read_ahead(index)
        return data

    def _read_ahead(self, index: int) -> None:
        """A lone block was read: let the prefetcher start on what follows
        it in the image (the next files' blocks)."""
        if self.prefetcher is not None:
            self.prefetcher.ahead(self.start + self._block_offsets()[index])

    # -- Data
    def extents(self) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        bs = self.block_size
        for i, entry in enumerate(self.blocks):
            if entry & DATA_SIZE_MASK == 0:
                continue
            start = i * bs
            length = self._block_length(i)
            if out and out[-1][0] + out[-1][1] == start:
                out[-1] = (out[-1][0], out[-1][1] + length)
            else:
                out.append((start, length))
        tail_start = len(self.blocks) * bs
        if tail_start < self.size:
            length = self.size - tail_start
            if out and out[-1][0] + out[-1][1] == tail_start:
                out[-1] = (out[-1][0], out[-1][1] + length)
            else:
                out.append((tail_start, length))
        return out

    def readinto(self, offset: int, buf: memoryview | bytearray) -> int:
        want = max(0, min(len(buf), self.size - offset))
        view = memoryview(buf)
        bs = self.block_size
        nblocks = len(self.blocks)
        tail_start = nblocks * bs
        pos, end = offset, offset + want
        ahead = self._decompress_ahead(offset // bs, min(end, tail_start))
        while pos < end:
            if pos >= tail_start:
                tail = memoryview(self._tail())
                view[pos - offset : end - offset] = tail[pos - tail_start : end - tail_start]
                break
            index = pos // bs
            inner = pos - index * bs
            n = min(end - pos, self._block_length(index) - inner)
            out = view[pos - offset : pos - offset + n]
            entry = self.blocks[index]
            if entry & DATA_SIZE_MASK == 0:
                out[:] = _ZEROS[:n]
            elif entry & DATA_UNCOMPRESSED:
                # Stored blocks go straight from the image into the caller's buffer.
                if self._block_length(index) != entry & DATA_SIZE_MASK:
                    raise CorruptError(f"{self._what(index)}: stored length "
                                       f"{entry & DATA_SIZE_MASK} does not match the file size")
                disk = self.start + self._block_offsets()[index] + inner
                if self.volume.readinto(out, disk) != n:
                    raise CorruptError(f"{self._what(index)} at offset {disk} is truncated")
            else:
                pending = ahead.get(index)
                if pending is not None:
                    data = pending[0].result()[pending[1]]
                    self._last = (index, data)
                else:
                    data = self._block(index)
                assert data is not None
                out[:] = memoryview(data)[inner : inner + n]
            pos += n
        return want

    def _decompress_ahead(self, first: int, end: int) -> dict[int, tuple[Future, int]]:
        """When one read covers several compressed blocks, decompress them
        on the pool at once, a few blocks per task (the caller's buffer
        bounds how many). Maps block index -> (future, position in its result)."""
        if end <= first * self.block_size:
            return {}
        last = (end - 1) // self.block_size
        last_cached = self._last[0] if self._last is not None else -1
        todo = [i for i in range(first, last + 1)
                if i != last_cached and self.blocks[i] & DATA_SIZE_MASK
                and not self.blocks[i] & DATA_UNCOMPRESSED]
        if len(todo) < 2:
            return {}
        cores = os.cpu_count() or 1
        per_task = max(1, min(TASK_BYTES // self.block_size, -(-len(todo) // cores)))
        pool = decompress_pool()
        ahead: dict[int, tuple[Future, int]] = {}
        for k in range(0, len(todo), per_task):
            group = todo[k : k + per_task]
            future = pool.submit(self._read_blocks, group)
            for n, index in enumerate(group):
                ahead[index] = (future, n)
        return ahead

    def _read_blocks(self, indices) -> list[bytes | None]:
        return [self._read_block(i) for i in indices]

    def copy_to(self, fd: int, dst_offset: int, buf: bytearray | None = None) -> None:
        """Decompress on the thread pool (a few blocks per task, a bounded
        window of tasks in flight) and write in file order; stored blocks go
        by copy_file_range, holes are skipped."""
        nblocks = len(self.blocks)
        if nblocks == 1:
            self._write_blocks(range(1), None, fd, dst_offset, buf)
            self._read_ahead(0)
        elif nblocks > 1:
            pool = decompress_pool()
            window = 2 * (os.cpu_count() or 1)
            per_task = max(1, TASK_BYTES // self.block_size)
            pending: deque = deque()
            for first in range(0, nblocks, per_task):
                group = range(first, min(first + per_task, nblocks))
                pending.append((group, pool.submit(self._read_compressed, group)))
                if len(pending) >= window:
                    self._write_blocks(*pending.popleft(), fd, dst_offset, buf)
            while pending:
                self._write_blocks(*pending.popleft(), fd, dst_offset, buf)
        tail_start = nblocks * self.block_size
        if tail_start < self.size:
            os.pwrite(fd, self._tail(), dst_offset + tail_start)

    def _read_compressed(self, indices: range) -> list[bytes | None]:
        return [None if self.blocks[i] & DATA_UNCOMPRESSED else self._read_block(i)
                for i in indices]

    def _write_blocks(self, indices: range, future: Future | None, fd: int, dst_offset: int,
                      buf: bytearray | None) -> None:
        decompressed = future.result() if future is not None else self._read_compressed(indices)
        for index, data in zip(indices, decompressed, strict=True):
            entry = self.blocks[index]
            pos = dst_offset + index * self.block_size
            if data is not None:
                os.pwrite(fd, data, pos)
            elif entry & DATA_UNCOMPRESSED:
                length = entry & DATA_SIZE_MASK
                if length != self._block_length(index):
                    raise CorruptError(f"{self._what(index)}: stored length {length} does not "
                                       f"match the file size")
                disk = self.start + self._block_offsets()[index]
                if disk + length > self.volume.size:
                    raise CorruptError(f"{self._what(index)} at offset {disk} (+{length}) lies "
                                       f"outside the image")
                self.volume.copy_to_fd(disk, length, fd, pos, buf)
