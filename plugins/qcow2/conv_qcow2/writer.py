"""qcow2 writer: a Plan or readable Volume in, a qcow2 file out.

Uncompressed without a backing file, the chain writes in place through a
Qcow2Target. Compressed or as an overlay, every cluster has to be looked at
whole, so the input is read back cluster by cluster (from the input volume, or
from a sparse temporary raw file the plan wrote) and each cluster is compared
and compressed on a thread pool; results are written in submission order, so
the output does not depend on the number of threads.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import threading
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator

from conv_qcow2 import layout
from conv_qcow2.image import ImageBuilder
from conv_qcow2.target import ZEROS, Qcow2Target
from convcore.blockdev import FileTarget, FileVolume, Volume
from convcore.errors import NotFoundError, UsageError
from convcore.format import Context

# what a cluster becomes
_SKIP, _ZERO, _PLAIN, _COMPRESSED = range(4)

#: batches (about 1 MiB each) in flight per worker thread: bounds memory.
_BATCHES_PER_THREAD = 3


def sink(plan, path: str, opts: dict, ctx: Context) -> None:
    """Write ``plan`` (a Plan or a readable Volume) as a new qcow2 file."""
    version = 2 if opts.get("compat") == "0.10" else 3
    cluster_size = opts.get("cluster_size") or 65536
    compress = opts.get("compress") or "none"
    level = opts.get("level")
    threads = opts.get("threads") or os.cpu_count() or 1
    if threads < 1:
        raise UsageError("qcow2[threads=...]: must be at least 1")
    compression_type = layout.COMPRESSION_ZSTD if compress == "zstd" else layout.COMPRESSION_ZLIB

    backing_name = opts.get("backing")
    backing_format = opts.get("backing_format")
    backing: Volume | None = None
    out_dir = os.path.dirname(os.path.abspath(path))
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        if backing_name:
            backing, backing_format = open_backing(backing_name, backing_format, out_dir, ctx)
        # qemu sees disks in 512-byte sectors (and drops a partial last one):
        # round up, as qemu-img convert does for such a raw file
        virtual_size = -(-plan.size // layout.SECTOR) * layout.SECTOR
        image = ImageBuilder(fd, virtual_size, cluster_size, version, compression_type,
                             backing_name, backing_format)
        if compress == "none" and backing is None:
            target = Qcow2Target(image, threads)
            try:
                plan.write_to(target)
                target.flush()
            finally:
                target.close()
        else:
            compressor = _compressor(compress, level) if compress != "none" else None
            with _readable(plan, out_dir) as volume:
                write_clusters(image, volume, compressor, threads, backing)
        image.finish()
    finally:
        os.close(fd)
        if backing is not None:
            backing.close()


def open_backing(name: str, fmt: str | None, base_dir: str, ctx: Context) -> tuple[Volume, str]:
    """Open a backing image named as the header will name it (relative to the
    image's directory)."""
    path = name if os.path.isabs(name) else os.path.join(base_dir, name)
    if not os.path.exists(path):
        raise NotFoundError(f"qcow2[backing={name}]: no such file")
    if fmt is None:
        with open(path, "rb") as f:
            fmt = "qcow2" if f.read(4) == layout.MAGIC else "raw"
    if fmt == "qcow2":
        from conv_qcow2.reader import Qcow2Volume
        return Qcow2Volume(path), fmt
    return FileVolume(path), fmt


@contextlib.contextmanager
def _readable(plan, out_dir: str) -> Iterator[Volume]:
    """The plan as a readable volume: itself when it is one, else a sparse
    temporary raw file beside the output (unlinked at once, so it never
    outlives the run)."""
    if isinstance(plan, Volume):
        yield plan
        return
    host_fd = plan.host_file() if hasattr(plan, "host_file") else None
    if host_fd is not None:
        # the plan's bytes already sit in a host file (a squashfs image):
        # read them there rather than copying them into another one
        volume = FileVolume(f"/proc/self/fd/{host_fd}")
        try:
            yield volume
        finally:
            volume.close()
        return
    import tempfile
    tmp_fd, tmp_path = tempfile.mkstemp(prefix=".conv-qcow2-", dir=out_dir)
    try:
        os.ftruncate(tmp_fd, plan.size)
        plan.write_to(FileTarget(tmp_fd, plan.size))
        volume = FileVolume(tmp_path)
    finally:
        os.unlink(tmp_path)
        os.close(tmp_fd)
    try:
        yield volume
    finally:
        volume.close()


def _compressor(kind: str, level: int | None) -> Callable[[bytes], bytes]:
    if kind == "zlib":
        lvl = 6 if level is None else level
        if not 0 <= lvl <= 9:
            raise UsageError(f"qcow2[level={lvl}]: zlib levels are 0 to 9")

        def deflate(data: bytes) -> bytes:
            # raw deflate with a 4 KiB window and memLevel 9, as qemu writes it
            c = zlib.compressobj(lvl, zlib.DEFLATED, -12, 9)
            return c.compress(data) + c.flush()
        return deflate

    import zstandard
    lvl = 3 if level is None else level
    if not 1 <= lvl <= 22:
        raise UsageError(f"qcow2[level={lvl}]: zstd levels are 1 to 22")
    local = threading.local()

    def zstd(data: bytes) -> bytes:
        # ZstdCompressor objects are not safe to share between threads
        cctx = getattr(local, "cctx", None)
        if cctx is None:
            cctx = local.cctx = zstandard.ZstdCompressor(level=lvl)
        return cctx.compress(data)
    return zstd


def _clusters(ranges: Iterable[tuple[int, int]], bits: int) -> Iterator[int]:
    for start, length in ranges:
        if length > 0:
            yield from range(start >> bits, ((start + length - 1) >> bits) + 1)


def _unique(clusters: Iterable[int]) -> Iterator[int]:
    last = -1
    for c in clusters:
        if c > last:
            yield c
            last = c


class _ClusterReader:
    """Batches of clusters of one volume, read into recycled buffers (a fresh
    1 MiB buffer costs a page fault per 4 KiB): one readinto per run of
    neighbouring clusters, zeros past the end of the volume."""

    def __init__(self, volume: Volume, bits: int, batch_size: int) -> None:
        self.volume = volume
        self.bits = bits
        self.buffer_size = batch_size << bits
        self.free: list[bytearray] = []

    def read(self, clusters: list[int]) -> tuple[bytearray, list[memoryview]]:
        bits, size = self.bits, self.volume.size
        buf = self.free.pop() if self.free else bytearray(self.buffer_size)
        view = memoryview(buf)
        i = 0
        while i < len(clusters):
            j = i + 1
            while j < len(clusters) and clusters[j] == clusters[j - 1] + 1:
                j += 1
            start, at, span = clusters[i] << bits, i << bits, (j - i) << bits
            got = self.volume.readinto(view[at:at + min(span, size - start)], start) \
                if start < size else 0
            if got < span:  # a recycled buffer holds the last batch's bytes
                view[at + got:at + span] = bytes(span - got)
            i = j
        return buf, [view[k << bits:(k + 1) << bits] for k in range(len(clusters))]

    def recycle(self, buf: bytearray) -> None:
        self.free.append(buf)


def write_clusters(image: ImageBuilder, volume: Volume, compress: Callable[[bytes], bytes] | None,
                   threads: int, backing: Volume | None) -> None:
    """Store every cluster of ``volume`` that is not a hole (or, over a
    backing image, that differs from it), compressed when asked."""
    cs, bits = image.cluster_size, image.cluster_bits
    limit = cs - 1  # qemu stores a cluster compressed only if it fits in cluster_size - 1

    def classify(data: memoryview, base: memoryview | None) -> tuple[int, object]:
        # memoryview == memoryview compares byte by byte in Python's C loop
        # (0.13 ms a cluster); bytes compare with memcmp
        if base is not None and data.tobytes() == base.tobytes():
            return _SKIP, None
        if ZEROS.startswith(data):
            return (_SKIP, None) if base is None or ZEROS.startswith(base) else (_ZERO, None)
        if compress is not None:
            packed = compress(data)
            if len(packed) <= limit:
                return _COMPRESSED, packed
        return _PLAIN, data

    def emit(c: int, result: tuple[int, object]) -> None:
        kind, payload = result
        if kind == _PLAIN:
            image.put_plain(c, payload)
        elif kind == _COMPRESSED:
            image.put_compressed(c, payload)  # type: ignore[arg-type]
        elif kind == _ZERO:
            image.set_zero(c)

    sources = [_clusters(volume.data_ranges(), bits)]
    if backing is not None:
        visible = min(backing.size, volume.size)
        sources.append(_clusters(((s, min(n, visible - s)) for s, n in backing.data_ranges()
                                  if s < visible), bits))
    last_cluster = (volume.size - 1) >> bits

    def classify_batch(clusters: list[int], data: list[memoryview],
                       bases: list[memoryview] | list[None]) -> list:
        return [(c, classify(d, b)) for c, d, b in zip(clusters, data, bases, strict=True)]

    # Clusters go to the pool in batches of about 1 MiB: fewer hand-overs of
    # the GIL per byte, which matters most when the cores are busy.
    batch_size = max(1, (1 << 20) // cs)
    # Read on this thread (volumes such as a qcow2 reader keep caches that are
    # not shared between threads); workers only compare and compress.
    readers = [_ClusterReader(v, bits, batch_size) for v in (volume, backing) if v is not None]
    pool = None
    if threads > 1 and compress is not None:
        from concurrent.futures import ThreadPoolExecutor
        pool = ThreadPoolExecutor(threads, thread_name_prefix="conv-qcow2")
    try:
        inflight: deque = deque()
        batch: list[int] = []

        def retire(results: list, buffers: list[bytearray]) -> None:
            for c, result in results:
                emit(c, result)
            # emit copied or wrote every payload: the buffers are free again
            for reader, buf in zip(readers, buffers, strict=True):
                reader.recycle(buf)

        def submit() -> None:
            reads = [reader.read(batch) for reader in readers]
            buffers = [buf for buf, _ in reads]
            data = reads[0][1]
            bases = reads[1][1] if backing is not None else [None] * len(batch)
            if pool is None:
                retire(classify_batch(batch, data, bases), buffers)
            else:
                inflight.append((pool.submit(classify_batch, list(batch), data, bases), buffers))
                if len(inflight) > threads * _BATCHES_PER_THREAD:
                    future, bufs = inflight.popleft()
                    retire(future.result(), bufs)
            batch.clear()

        for c in _unique(heapq.merge(*sources)):
            if c > last_cluster:
                break
            batch.append(c)
            if len(batch) >= batch_size:
                submit()
        if batch:
            submit()
        while inflight:
            future, bufs = inflight.popleft()
            retire(future.result(), bufs)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
