"""Compression around tar streams: detection by magic, decompressing readers
with a position, and buffered (parallel) compressing writers.

Writers emit fixed-size chunks, so the output depends only on the input and
the level, never on the number of threads:

- gz: each 4 MiB chunk is its own gzip member (mtime 0, no name), compressed
  on a thread pool (by libdeflate where installed) and written in order;
  every gzip reader concatenates members.
- xz: likewise, each 24 MiB chunk is its own .xz stream (xz and liblzma
  readers decode concatenated streams).
- zst: one zstd frame from zstandard's multithreaded compressor, whose output
  does not depend on the worker count.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from typing import IO

from convcore.errors import CorruptError, NoSpaceError, NotFoundError, UnsupportedError

COMPRESSIONS = ("none", "gz", "zst", "xz")
DEFAULT_LEVELS = {"gz": 6, "zst": 3, "xz": 6}
CHUNK = 4 << 20
XZ_CHUNK = 24 << 20

_SUFFIXES = (
    (".tar.gz", "gz"), (".tgz", "gz"), (".gz", "gz"),
    (".tar.zst", "zst"), (".tzst", "zst"), (".zst", "zst"),
    (".tar.xz", "xz"), (".txz", "xz"), (".xz", "xz"),
)


def compression_for_name(path: str) -> str:
    """The compression a file name asks for (``none`` without a known suffix)."""
    name = os.path.basename(path).lower()
    for suffix, comp in _SUFFIXES:
        if name.endswith(suffix):
            return comp
    return "none"


def detect_compression(path: str) -> str:
    """The compression of an existing file, by its magic bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except FileNotFoundError:
        raise NotFoundError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise NotFoundError(f"{path}: is a directory, not a tar archive") from None
    if head.startswith(b"\x1f\x8b"):
        return "gz"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zst"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head.startswith(b"BZh"):
        return "bz2"
    return "none"


def open_decompressed(path: str, compression: str) -> IO[bytes]:
    """A sequential binary reader of the archive's tar bytes."""
    raw = open(path, "rb")  # noqa: SIM115 - owned by the returned reader
    if compression == "none":
        return raw
    if compression == "gz":
        import gzip
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if compression == "xz":
        import lzma
        return lzma.LZMAFile(raw, "rb")
    if compression == "bz2":
        import bz2
        return bz2.BZ2File(raw, "rb")
    if compression == "zst":
        import zstandard
        return zstandard.ZstdDecompressor().stream_reader(
            raw, read_size=1 << 20, read_across_frames=True, closefd=True)
    raw.close()
    raise UnsupportedError(f"{path}: unknown compression {compression!r}")


_ZSTD_MAGIC = 0xFD2FB528
_ZSTD_SKIPPABLE = 0x184D2A50  # .. 0x184D2A5F


def zstd_check_complete(path: str) -> None:
    """Walk the frame and block headers of a .zst file (no decompression)
    and raise EOFError when the last frame is cut off."""
    import struct

    size = os.path.getsize(path)
    with open(path, "rb") as f:
        pos = 0
        while pos < size:
            f.seek(pos)
            head = f.read(14)
            if len(head) < 8:
                raise EOFError("truncated zstd frame header")
            magic, = struct.unpack_from("<I", head)
            if magic & 0xFFFFFFF0 == _ZSTD_SKIPPABLE:
                pos += 8 + struct.unpack_from("<I", head, 4)[0]
                continue
            if magic != _ZSTD_MAGIC:
                raise OSError(f"not a zstd frame at byte {pos}")
            fhd = head[4]
            single = fhd >> 5 & 1
            fcs = (1 if single else 0, 2, 4, 8)[fhd >> 6]
            pos += 5 + (0 if single else 1) + (0, 1, 2, 4)[fhd & 3] + fcs
            checksum = fhd >> 2 & 1
            while True:
                f.seek(pos)
                block = f.read(3)
                if len(block) < 3:
                    raise EOFError("truncated zstd block header")
                value = int.from_bytes(block, "little")
                kind, length = value >> 1 & 3, value >> 3
                if kind == 3:
                    raise OSError(f"reserved zstd block type at byte {pos}")
                pos += 3 + (1 if kind == 1 else length)
                if value & 1:
                    break
            pos += 4 * checksum
        if pos > size:
            raise EOFError("truncated zstd frame")


def _decode_errors() -> tuple[type[BaseException], ...]:
    import lzma
    import zlib

    errors: list[type[BaseException]] = [EOFError, OSError, zlib.error, lzma.LZMAError]
    try:
        import zstandard
        errors.append(zstandard.ZstdError)
    except ImportError:  # pragma: no cover - zstandard is a core dependency
        pass
    return tuple(errors)


class StreamCursor:
    """A forward-only reader of an archive's (decompressed) bytes that knows
    its position and turns decoder failures into one-line CorruptErrors."""

    def __init__(self, path: str, compression: str) -> None:
        self.path = path
        self.compression = compression
        self.pos = 0
        self._errors = _decode_errors()
        self._file = open_decompressed(path, compression)
        self._scratch: bytearray | None = None
        self._checked_end = False
        self._size: int | None = None

    def close(self) -> None:
        self._file.close()

    def readinto(self, view: memoryview) -> int:
        """Fill ``view`` as far as the stream allows; short only at its end."""
        done = 0
        total = len(view)
        try:
            while done < total:
                n = self._file.readinto(view[done:])
                if not n:
                    if self.compression == "zst" and not self._checked_end:
                        # zstandard's reader ends quietly on a cut-off frame
                        self._checked_end = True
                        zstd_check_complete(self.path)
                    break
                done += n
        except self._errors as e:
            raise self._corrupt(e) from None
        self.pos += done
        return done

    def read(self, n: int) -> bytes:
        buf = bytearray(n)
        got = self.readinto(memoryview(buf))
        return bytes(buf[:got])

    def skip(self, n: int) -> int:
        """Move ``n`` bytes forward; returns how many were there."""
        if n <= 0:
            return 0
        if self.compression == "none":
            if self._size is None:
                self._size = os.fstat(self._file.fileno()).st_size
            step = max(0, min(n, self._size - self.pos))
            self._file.seek(self.pos + step)
            self.pos += step
            return step
        if self._scratch is None:
            self._scratch = bytearray(1 << 20)
        view = memoryview(self._scratch)
        left = n
        while left:
            got = self.readinto(view[: min(len(view), left)])
            if not got:
                break
            left -= got
        return n - left

    def _corrupt(self, e: BaseException) -> CorruptError:
        if isinstance(e, EOFError):
            return CorruptError(f"{self.path}: the {self.compression} stream is truncated "
                                f"(after {self.pos} bytes of tar data)")
        return CorruptError(f"{self.path}: the {self.compression} stream is corrupt "
                            f"(after {self.pos} bytes of tar data): {e}")


class SharedDecompressor:
    """One decompressor per archive, shared by the lazy data of all its
    members: reading members in archive order decompresses the archive once;
    reading backwards restarts from the beginning."""

    def __init__(self, path: str, compression: str) -> None:
        self.path = path
        self.compression = compression
        self._lock = threading.Lock()
        self._cursor: StreamCursor | None = None

    def readinto(self, offset: int, view: memoryview) -> int:
        """Fill ``view`` with the decompressed bytes at ``offset``."""
        with self._lock:
            cursor = self._cursor
            if cursor is None or cursor.pos > offset:
                if cursor is not None:
                    cursor.close()
                cursor = self._cursor = StreamCursor(self.path, self.compression)
            gap = offset - cursor.pos
            if gap and cursor.skip(gap) != gap:
                raise CorruptError(f"{self.path}: archive ends before offset {offset}")
            return cursor.readinto(view)

    def close(self) -> None:
        with self._lock:
            if self._cursor is not None:
                self._cursor.close()
                self._cursor = None


# --------------------------------------------------------------------------
# Writing


class ChunkOutput:
    """A buffered byte sink: callers fill ``space()`` and ``commit(n)`` it, or
    ``write`` bytes; full chunks go to ``_emit``. ``offset`` is the number of
    tar bytes produced so far."""

    #: a plain file output can take Data.copy_to straight into its fd.
    fd_direct = False

    def __init__(self, fd: int, chunk: int = CHUNK) -> None:
        self.fd = fd
        self._chunk = chunk
        self._buf = bytearray(chunk)
        self._fill = 0
        self._emitted = 0
        #: a hashlib object fed every byte of the tar stream (compressed
        #: outputs: a plain one copies file data around the buffer)
        self.digest = None

    @property
    def offset(self) -> int:
        return self._emitted + self._fill

    def space(self) -> memoryview:
        if self._fill == self._chunk:
            self._flush_buffer()
        return memoryview(self._buf)[self._fill :]

    def commit(self, n: int) -> None:
        self._fill += n

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while len(view):
            space = self.space()
            n = min(len(space), len(view))
            space[:n] = view[:n]
            self.commit(n)
            view = view[n:]

    def write_zeros(self, n: int) -> None:
        while n > 0:
            space = self.space()
            k = min(len(space), n)
            space[:k] = bytes(k)
            self.commit(k)
            n -= k

    def _flush_buffer(self) -> None:
        if self._fill:
            view = memoryview(self._buf)[: self._fill]
            if self.digest is not None:
                self.digest.update(view)
            self._emit(view)
            self._emitted += self._fill
            self._fill = 0

    def _emit(self, chunk: memoryview) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._flush_buffer()


def _write_all(fd: int, data: bytes | memoryview, offset: int | None = None) -> None:
    view = memoryview(data)
    try:
        while len(view):
            n = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset)
            view = view[n:]
            if offset is not None:
                offset += n
    except OSError as e:
        import errno
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoSpaceError("no space left on the output device") from None
        raise


class PlainOutput(ChunkOutput):
    """An uncompressed tar file; large file data skips the buffer and goes
    into place with ``Data.copy_to`` (copy_file_range for host files)."""

    fd_direct = True

    def _emit(self, chunk: memoryview) -> None:
        _write_all(self.fd, chunk, self._emitted)

    def copy_data(self, data, size: int, buf: bytearray) -> None:
        """Put ``size`` bytes of ``data`` at the current offset, holes left
        unwritten (the file is new, so they read as zeros)."""
        self._flush_buffer()
        data.copy_to(self.fd, self._emitted, buf)
        self._emitted += size

    def copy_fd_range(self, src_fd: int, src_offset: int, length: int,
                      buf: bytearray) -> None:
        from convcore.tree import copy_range

        self._flush_buffer()
        copy_range(src_fd, src_offset, self.fd, self._emitted, length, buf)
        self._emitted += length

    def close(self) -> None:
        super().close()
        # A trailing range written only by skipping must still exist.
        if os.fstat(self.fd).st_size < self._emitted:
            os.ftruncate(self.fd, self._emitted)


class ParallelOutput(ChunkOutput):
    """gz or xz: chunks compressed independently on a thread pool, written
    in submission order."""

    def __init__(self, fd: int, compression: str, level: int, threads: int | None = None) -> None:
        # xz: blocks of 3 x the preset's dictionary, like xz -T (24 MiB at -6)
        super().__init__(fd, XZ_CHUNK if compression == "xz" else CHUNK)
        from concurrent.futures import ThreadPoolExecutor

        cpus = os.cpu_count() or 1
        # lzma at high presets needs ~100 MB per compressor: cap its threads.
        self._threads = threads or (min(cpus, 4) if compression == "xz" else cpus)
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix=f"conv-{compression}")
        self._pending: deque = deque()
        self._job = _gzip_chunk if compression == "gz" else _xz_chunk
        self._level = level

    def _emit(self, chunk: memoryview) -> None:
        self._pending.append(self._pool.submit(self._job, bytes(chunk), self._level))
        while len(self._pending) > self._threads:  # the pool busy, memory bounded
            _write_all(self.fd, self._pending.popleft().result())

    def close(self) -> None:
        try:
            super().close()
            while self._pending:
                _write_all(self.fd, self._pending.popleft().result())
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _gzip_chunk(chunk: bytes, level: int) -> bytes:
    """One gzip member (mtime 0, no file name): libdeflate's (the
    ``deflate`` distribution) where installed, 2-3x faster than zlib at the
    same level and a little smaller, with the GIL released; else zlib's."""
    try:
        from deflate import gzip_compress
    except ImportError:
        import zlib

        # wbits 31: a gzip member whose header has mtime 0 and no file name.
        comp = zlib.compressobj(level, zlib.DEFLATED, 31)
        return comp.compress(chunk) + comp.flush()
    return gzip_compress(chunk, level)


def _xz_chunk(chunk: bytes, level: int) -> bytes:
    import lzma

    return lzma.compress(chunk, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=level)


class ZstdOutput(ChunkOutput):
    """zst: one frame from zstandard's multithreaded compressor."""

    def __init__(self, fd: int, level: int) -> None:
        super().__init__(fd)
        import zstandard

        self._file = os.fdopen(os.dup(fd), "wb", buffering=0)
        cctx = zstandard.ZstdCompressor(level=level, threads=max(1, os.cpu_count() or 1),
                                        write_checksum=True)
        self._writer = cctx.stream_writer(self._file, closefd=False, write_return_read=True)

    def _emit(self, chunk: memoryview) -> None:
        try:
            self._writer.write(chunk)
        except OSError as e:
            import errno
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpaceError("no space left on the output device") from None
            raise

    def close(self) -> None:
        import zstandard

        try:
            super().close()
            self._writer.flush(zstandard.FLUSH_FRAME)
        finally:
            self._file.close()


def open_output(fd: int, compression: str, level: int | None) -> ChunkOutput:
    if compression == "none":
        return PlainOutput(fd)
    if compression not in DEFAULT_LEVELS:
        raise UnsupportedError(f"tar: cannot write {compression!r} compression "
                               f"(use one of {', '.join(COMPRESSIONS)})")
    lvl = DEFAULT_LEVELS[compression] if level is None else level
    if compression == "zst":
        return ZstdOutput(fd, lvl)
    return ParallelOutput(fd, compression, lvl)
