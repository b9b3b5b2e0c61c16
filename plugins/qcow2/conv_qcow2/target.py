"""Qcow2Target: the chain writes straight into a qcow2 file.

Guest offsets map to host clusters allocated on first write, in append order
(writers may write from several threads: allocation takes a lock, and the
builder puts clusters into guest order at the end so timing never shows).
Runs of guest bytes that land in contiguous host clusters move with one
``copy_file_range`` (file data, raw source files) or one ``pwrite`` (metadata
from writers). Clusters that are never written, or only written with zeros,
stay unallocated.
"""

from __future__ import annotations

import mmap
import os
import stat
from collections.abc import Callable, Iterable, Iterator

from conv_qcow2.image import ImageBuilder, pwrite_all
from convcore.blockdev import FileVolume, Target, Volume, WindowVolume
from convcore.errors import NoSpaceError
from convcore.tree import COPY_CHUNK, FileRangeData, SegmentData, copy_range

#: a zero check without copying: ``ZEROS.startswith(view)`` is one memcmp.
ZEROS = bytes(1 << 21)

#: how much of a source file is mapped at once.
MAP_WINDOW = 8 << 20

#: (guest offset, length, host offset or None when unallocated)
Run = tuple[int, int, "int | None"]


class Qcow2Target(Target):
    def __init__(self, image: ImageBuilder) -> None:
        self.image = image
        self.fd = image.fd
        self.size = image.size
        self.cluster_size = image.cluster_size
        self.cluster_bits = image.cluster_bits

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise NoSpaceError(f"write of {length} bytes at offset {offset} overruns the "
                               f"{self.size}-byte qcow2 disk")

    def _allocate_range(self, offset: int, length: int) -> None:
        if length <= 0:
            return
        image = self.image
        bits = self.cluster_bits
        for c in range(offset >> bits, ((offset + length - 1) >> bits) + 1):
            if image.host_offset(c) is None:
                image.ensure(c)

    def _runs(self, offset: int, length: int) -> Iterator[Run]:
        """Split a guest range into pieces whose host offsets are contiguous."""
        image, bits, mask = self.image, self.cluster_bits, self.cluster_size - 1
        pos, end = offset, offset + length
        run_start, run_host = pos, None
        first = True
        while pos < end:
            c = pos >> bits
            nxt = min(end, (c + 1) << bits)
            host = image.host_offset(c)
            h = None if host is None else host + (pos & mask)
            if first:
                run_start, run_host, first = pos, h, False
            elif not ((h is None and run_host is None) or (
                    h is not None and run_host is not None and h == run_host + pos - run_start)):
                yield (run_start, pos - run_start, run_host)
                run_start, run_host = pos, h
            pos = nxt
        if not first:
            yield (run_start, end - run_start, run_host)

    # -- Target API

    def pwrite(self, data, offset: int) -> None:
        view = memoryview(data).cast("B")
        self._check(offset, len(view))
        self._place(view, offset,
                    lambda pos, host, n: pwrite_all(self.fd, view[pos:pos + n], host))

    def _place(self, view: memoryview, offset: int,
               move: Callable[[int, int, int], None]) -> None:
        """Map ``view`` (guest bytes at ``offset``) onto host clusters, skipping
        all-zero pieces of unallocated clusters, and call ``move(view_pos,
        host_offset, length)`` once per host-contiguous run."""
        n = len(view)
        image, bits, cs = self.image, self.cluster_bits, self.cluster_size
        pending_host = pending_src = pending_len = 0
        pos = 0
        while pos < n:
            guest = offset + pos
            c = guest >> bits
            within = guest & (cs - 1)
            take = min(cs - within, n - pos)
            host = image.host_offset(c)
            if host is None:
                if ZEROS.startswith(view[pos:pos + take]):
                    pos += take
                    continue
                host = image.ensure(c)
            host += within
            if pending_len and pending_host + pending_len == host \
                    and pending_src + pending_len == pos:
                pending_len += take
            else:
                if pending_len:
                    move(pending_src, pending_host, pending_len)
                pending_host, pending_src, pending_len = host, pos, take
            pos += take
        if pending_len:
            move(pending_src, pending_host, pending_len)

    def pread(self, length: int, offset: int) -> bytes:
        length = max(0, min(length, self.size - offset))
        out = bytearray(length)
        for start, n, host in self._runs(offset, length):
            if host is not None:
                out[start - offset:start - offset + n] = os.pread(self.fd, n, host)
        return bytes(out)

    def copy_from_fd(self, fd: int, src_offset: int, length: int, offset: int) -> None:
        """Zero clusters must stay unallocated, so the bytes have to be looked
        at: the source is mapped (no copy into Python) and checked, and the
        non-zero runs move with copy_file_range, kernel to kernel."""
        self._check(offset, length)
        try:
            st = os.fstat(fd)
            mappable = stat.S_ISREG(st.st_mode) and src_offset + length <= st.st_size
        except OSError:
            mappable = False
        if not mappable:
            super().copy_from_fd(fd, src_offset, length, offset)
            return
        granularity = mmap.ALLOCATIONGRANULARITY
        done = 0
        while done < length:
            n = min(MAP_WINDOW, length - done)
            start = src_offset + done
            base = start - start % granularity
            with mmap.mmap(fd, n + start - base, offset=base, prot=mmap.PROT_READ) as mm:
                view = memoryview(mm)
                try:
                    self._place(view[start - base:start - base + n], offset + done,
                                lambda pos, host, k, src=start: copy_range(
                                    fd, src + pos, self.fd, host, k))
                finally:
                    view.release()
            done += n

    def copy_from_volume(self, volume: Volume, src_offset: int, length: int,
                         offset: int) -> None:
        # a raw file (or a partition of one) takes the mapped path above
        while isinstance(volume, WindowVolume):
            src_offset += volume.offset
            volume = volume.parent
        if isinstance(volume, FileVolume):
            self.copy_from_fd(volume.fd, src_offset, length, offset)
        else:
            super().copy_from_volume(volume, src_offset, length, offset)

    def copy_from_data(self, data, offset: int, buf: bytearray | None = None) -> None:
        self._check(offset, data.size)
        extents = list(data.extents())
        for start, n in extents:
            self._allocate_range(offset + start, n)
        runs = [r for r in self._runs(offset, data.size) if r[2] is not None]
        if not runs:
            return
        if len(runs) == 1:
            # The whole file lands in one host run: the Data moves itself
            # (copy_file_range for host files), holes skipped.
            start, _n, host = runs[0]
            data.copy_to(self.fd, host - (start - offset), buf)
            return
        if isinstance(data, FileRangeData):
            with open(data.path, "rb", buffering=0) as f:
                for file_off, n, host in _pieces(extents, runs, offset):
                    copy_range(f.fileno(), data.offset + file_off, self.fd, host, n, buf,
                               name=data.path)
            return
        if isinstance(data, SegmentData):
            for f, length, v in data.segments:
                for file_off, n, host in _pieces([(f, length)], runs, offset):
                    data.volume.copy_to_fd(v + file_off - f, n, self.fd, host, buf)
            return
        if buf is None:
            buf = bytearray(COPY_CHUNK)
        view = memoryview(buf)
        for file_off, n, host in _pieces(extents, runs, offset):
            while n > 0:
                got = data.readinto(file_off, view[:min(len(view), n)])
                if got <= 0:
                    from convcore.errors import CorruptError
                    raise CorruptError(f"file data ended early at offset {file_off}")
                pwrite_all(self.fd, view[:got], host)
                file_off += got
                host += got
                n -= got


def _pieces(extents: Iterable[tuple[int, int]], runs: list[Run],
            base: int) -> Iterator[tuple[int, int, int]]:
    """Intersect file extents (relative to ``base`` in the guest) with host
    runs: (file offset, length, host offset)."""
    i = 0
    for start, n in extents:
        lo, hi = base + start, base + start + n
        while i < len(runs) and runs[i][0] + runs[i][1] <= lo:
            i += 1
        j = i
        while j < len(runs) and runs[j][0] < hi:
            r_start, r_len, r_host = runs[j]
            s, e = max(lo, r_start), min(hi, r_start + r_len)
            if s < e:
                yield (s - base, e - s, r_host + (s - r_start))
            j += 1
