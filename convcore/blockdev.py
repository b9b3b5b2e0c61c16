"""The volume kind: sized byte images to read, and byte targets to write.

Reading side: a ``Volume`` is random-access and lazy (a qcow2 reader decodes
only the clusters a filesystem reader above it touches).

Writing side: planning and writing are separate. A writer stage returns a
``Plan`` (``size`` known before any byte is written, ``write_to(target)``
later). The sink opens the output and hands the outermost plan a ``Target``;
a partitioner hands each inner plan a window of its own target, so a
filesystem writes straight into its place in the final file.

Targets start out reading as zeros: writers skip holes and never write zero
runs they do not need.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType

from convcore.errors import CorruptError, NoSpaceError, NotFoundError
from convcore.tree import COPY_CHUNK, _seek_data_extents, copy_range

# --------------------------------------------------------------------------
# Reading


class Volume:
    """A readable byte image of ``size`` bytes.

    Subclasses implement ``readinto``. ``data_ranges`` lists where non-zero
    bytes may be (holes elsewhere); ``copy_to_fd`` moves a range into a host
    fd, in the kernel when the volume is a plain host file.
    """

    size: int = 0
    #: what this volume is, for ``conv info`` ("raw", "qcow2", "partition 2").
    description: str = ""
    #: facts for ``conv info`` (a qcow2's cluster size, backing chain, ...);
    #: read-only here: readers set their own dict on the instance.
    info: Mapping = MappingProxyType({})

    def readinto(self, buf: memoryview | bytearray, offset: int) -> int:
        """Fill ``buf`` from ``offset``; short only past the end."""
        raise NotImplementedError

    def pread(self, length: int, offset: int) -> bytes:
        """Read up to ``length`` bytes at ``offset`` (checked against size)."""
        if offset < 0 or length < 0:
            raise CorruptError(f"bad read of {length} bytes at offset {offset}")
        length = max(0, min(length, self.size - offset))
        buf = bytearray(length)
        n = self.readinto(memoryview(buf), offset)
        return bytes(buf[:n])

    def read_exact(self, length: int, offset: int, what: str = "data") -> bytes:
        """Read exactly ``length`` bytes or raise CorruptError naming ``what``:
        the checked read every image reader uses for offsets from disk."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise CorruptError(
                f"{what} at offset {offset} (+{length}) lies outside the "
                f"{self.size}-byte image")
        data = self.pread(length, offset)
        if len(data) != length:
            raise CorruptError(f"{what} at offset {offset} is truncated")
        return data

    def data_ranges(self) -> Iterable[tuple[int, int]]:
        """(offset, length) ranges that may hold non-zero bytes."""
        return [(0, self.size)] if self.size else []

    def copy_to_fd(self, offset: int, length: int, fd: int, dst_offset: int,
                   buf: bytearray | None = None) -> None:
        """Copy [offset, offset+length) into host ``fd`` at ``dst_offset``."""
        if buf is None:
            buf = bytearray(min(COPY_CHUNK, max(length, 1)))
        view = memoryview(buf)
        while length > 0:
            n = self.readinto(view[: min(len(view), length)], offset)
            if n <= 0:
                raise CorruptError(f"read past the end of the image at offset {offset}")
            os.pwrite(fd, view[:n], dst_offset)
            offset += n
            dst_offset += n
            length -= n

    # A readable volume is also a plan: writing it copies its bytes.
    def write_to(self, target: Target) -> None:
        buf = bytearray(COPY_CHUNK)
        view = memoryview(buf)
        for start, length in self.data_ranges():
            pos, end = start, start + length
            while pos < end:
                n = self.readinto(view[: min(len(view), end - pos)], pos)
                if n <= 0:
                    raise CorruptError(f"read past the end of the image at offset {pos}")
                chunk = view[:n]
                if not _is_zero(chunk):
                    target.pwrite(chunk, pos)
                pos += n

    def window(self, offset: int, size: int, description: str = "") -> Volume:
        return WindowVolume(self, offset, size, description)

    def close(self) -> None:
        pass

    def __enter__(self) -> Volume:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_zero(view: memoryview) -> bool:
    return not any(view) if len(view) < 64 else view.tobytes() == bytes(len(view))


class FileVolume(Volume):
    """A host file read as a volume (a raw image, or a qcow2 file's bytes)."""

    def __init__(self, path: str | os.PathLike, description: str = "raw") -> None:
        self.path = os.fspath(path)
        try:
            self.fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise NotFoundError(f"{self.path}: no such file") from None
        except IsADirectoryError:
            raise NotFoundError(f"{self.path}: is a directory, not an image") from None
        self.size = os.fstat(self.fd).st_size
        if self.size == 0:
            import stat
            st = os.fstat(self.fd)
            if stat.S_ISBLK(st.st_mode):
                self.size = os.lseek(self.fd, 0, os.SEEK_END)
        self.description = description

    def readinto(self, buf: memoryview | bytearray, offset: int) -> int:
        view = memoryview(buf)
        want = max(0, min(len(view), self.size - offset))
        done = 0
        while done < want:
            n = os.preadv(self.fd, [view[done:want]], offset + done)
            if n <= 0:
                break
            done += n
        return done

    def data_ranges(self) -> Iterator[tuple[int, int]]:
        return _seek_data_extents(self.fd, 0, self.size)

    def copy_to_fd(self, offset: int, length: int, fd: int, dst_offset: int,
                   buf: bytearray | None = None) -> None:
        if offset < 0 or offset + length > self.size:
            raise CorruptError(f"range at offset {offset} (+{length}) lies outside the image")
        copy_range(self.fd, offset, fd, dst_offset, length, buf)

    def write_to(self, target: Target) -> None:
        for start, length in self.data_ranges():
            target.copy_from_fd(self.fd, start, length, start)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class WindowVolume(Volume):
    """A byte range of another volume (a partition)."""

    def __init__(self, parent: Volume, offset: int, size: int, description: str = "") -> None:
        if offset < 0 or size < 0 or offset + size > parent.size:
            raise CorruptError(
                f"{description or 'window'} at offset {offset} (+{size}) lies outside "
                f"the {parent.size}-byte image")
        self.parent = parent
        self.offset = offset
        self.size = size
        self.description = description

    def readinto(self, buf: memoryview | bytearray, offset: int) -> int:
        view = memoryview(buf)
        want = max(0, min(len(view), self.size - offset))
        return self.parent.readinto(view[:want], self.offset + offset) if want else 0

    def data_ranges(self) -> Iterator[tuple[int, int]]:
        lo, hi = self.offset, self.offset + self.size
        for start, length in self.parent.data_ranges():
            s, e = max(start, lo), min(start + length, hi)
            if s < e:
                yield (s - lo, e - s)

    def copy_to_fd(self, offset: int, length: int, fd: int, dst_offset: int,
                   buf: bytearray | None = None) -> None:
        if offset < 0 or offset + length > self.size:
            raise CorruptError(f"range at offset {offset} (+{length}) lies outside the window")
        self.parent.copy_to_fd(self.offset + offset, length, fd, dst_offset, buf)

    def write_to(self, target: Target) -> None:
        # Preserve the fast path of the parent (copy_file_range for files).
        for start, length in self.data_ranges():
            target.copy_from_volume(self, start, length, start)


# --------------------------------------------------------------------------
# Writing


class Target:
    """A writable byte range that reads as zeros until written.

    Offsets are relative to the target. Writers must stay inside ``size``.
    Writers may call a target from several threads at once (the ext4 writer
    copies file data on a worker while it builds metadata), always on
    disjoint byte ranges; a target that allocates as it goes (qcow2) must
    lock its allocation and still produce the same bytes.
    """

    size: int = 0

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        raise NotImplementedError

    def pread(self, length: int, offset: int) -> bytes:
        """Read back what was written (writers that patch checksums)."""
        raise NotImplementedError

    def copy_from_fd(self, fd: int, src_offset: int, length: int, offset: int) -> None:
        """Copy from a host fd into the target (copy_file_range when possible)."""
        buf = bytearray(min(COPY_CHUNK, max(length, 1)))
        view = memoryview(buf)
        while length > 0:
            n = os.preadv(fd, [view[: min(len(view), length)]], src_offset)
            if n <= 0:
                raise CorruptError("input file is shorter than its recorded size")
            self.pwrite(view[:n], offset)
            src_offset += n
            offset += n
            length -= n

    def copy_from_volume(self, volume: Volume, src_offset: int, length: int,
                         offset: int) -> None:
        buf = bytearray(min(COPY_CHUNK, max(length, 1)))
        view = memoryview(buf)
        while length > 0:
            n = volume.readinto(view[: min(len(view), length)], src_offset)
            if n <= 0:
                raise CorruptError(f"read past the end of the image at offset {src_offset}")
            if not _is_zero(view[:n]):
                self.pwrite(view[:n], offset)
            src_offset += n
            offset += n
            length -= n

    def copy_from_data(self, data, offset: int, buf: bytearray | None = None) -> None:
        """Write a tree file's contents (a ``convcore.tree.Data``) at
        ``offset``, holes skipped."""
        if buf is None:
            buf = bytearray(COPY_CHUNK)
        view = memoryview(buf)
        for start, length in data.extents():
            pos, end = start, start + length
            while pos < end:
                n = data.readinto(pos, view[: min(len(view), end - pos)])
                if n <= 0:
                    raise CorruptError(f"file data ended early at offset {pos}")
                self.pwrite(view[:n], offset + pos)
                pos += n

    def window(self, offset: int, size: int) -> Target:
        return WindowTarget(self, offset, size)

    def host_fd(self) -> tuple[int, int] | None:
        """(fd, base offset) when the target is a plain host file range, so
        writers may ``copy_file_range`` / ``Data.copy_to`` into it directly."""
        return None


class FileTarget(Target):
    """A host file (already sized by the sink with ftruncate, so sparse).

    ``progress`` (a bar from ``Context.progress``) counts bytes written,
    windows included.
    """

    def __init__(self, fd: int, size: int, base: int = 0, progress=None) -> None:
        self.fd = fd
        self.size = size
        self.base = base
        self.progress = progress

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or offset + length > self.size:
            raise NoSpaceError(
                f"write of {length} bytes at offset {offset} overruns the "
                f"{self.size}-byte output")

    def pwrite(self, data, offset: int) -> None:
        self._check(offset, len(data))
        view = memoryview(data)
        while len(view):
            try:
                n = os.pwrite(self.fd, view, self.base + offset)
            except OSError as e:
                import errno
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise NoSpaceError("no space left on the output device") from None
                raise
            view = view[n:]
            offset += n
        if self.progress is not None:
            self.progress.update(len(data))

    def pread(self, length: int, offset: int) -> bytes:
        return os.pread(self.fd, length, self.base + offset)

    def copy_from_fd(self, fd: int, src_offset: int, length: int, offset: int) -> None:
        self._check(offset, length)
        copy_range(fd, src_offset, self.fd, self.base + offset, length)
        if self.progress is not None:
            self.progress.update(length)

    def copy_from_volume(self, volume: Volume, src_offset: int, length: int,
                         offset: int) -> None:
        self._check(offset, length)
        volume.copy_to_fd(src_offset, length, self.fd, self.base + offset)
        if self.progress is not None:
            self.progress.update(length)

    def copy_from_data(self, data, offset: int, buf: bytearray | None = None) -> None:
        self._check(offset, data.size)
        data.copy_to(self.fd, self.base + offset, buf)
        if self.progress is not None:
            self.progress.update(data.size)

    def window(self, offset: int, size: int) -> Target:
        if offset < 0 or offset + size > self.size:
            raise NoSpaceError(f"window at {offset} (+{size}) overruns the {self.size}-byte output")
        return FileTarget(self.fd, size, self.base + offset, self.progress)

    def host_fd(self) -> tuple[int, int] | None:
        return (self.fd, self.base)


class WindowTarget(Target):
    """A sub-range of a target that is not a plain host file."""

    def __init__(self, parent: Target, offset: int, size: int) -> None:
        if offset < 0 or offset + size > parent.size:
            raise NoSpaceError(
                f"window at {offset} (+{size}) overruns the {parent.size}-byte output")
        self.parent = parent
        self.offset = offset
        self.size = size

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or offset + length > self.size:
            raise NoSpaceError(f"write at offset {offset} (+{length}) overruns its window")

    def pwrite(self, data, offset: int) -> None:
        self._check(offset, len(data))
        self.parent.pwrite(data, self.offset + offset)

    def pread(self, length: int, offset: int) -> bytes:
        return self.parent.pread(length, self.offset + offset)

    def copy_from_fd(self, fd: int, src_offset: int, length: int, offset: int) -> None:
        self._check(offset, length)
        self.parent.copy_from_fd(fd, src_offset, length, self.offset + offset)

    def copy_from_volume(self, volume: Volume, src_offset: int, length: int,
                         offset: int) -> None:
        self._check(offset, length)
        self.parent.copy_from_volume(volume, src_offset, length, self.offset + offset)

    def copy_from_data(self, data, offset: int, buf: bytearray | None = None) -> None:
        self._check(offset, data.size)
        self.parent.copy_from_data(data, self.offset + offset, buf)

    def window(self, offset: int, size: int) -> Target:
        self._check(offset, size)
        return WindowTarget(self.parent, self.offset + offset, size)


class Plan:
    """A planned volume: its size is known, its bytes are written later.

    Writer stages (ext4, squashfs, gpt) return one. ``fs_type`` tells a
    partitioner what is inside ("ext4", "squashfs") so it can pick a
    partition type. Readable volumes also satisfy this protocol.
    """

    size: int = 0
    fs_type: str | None = None

    def write_to(self, target: Target) -> None:
        raise NotImplementedError

    def host_file(self) -> int | None:
        """An fd of a nameless host file (``Context.scratch_file``) holding
        exactly this plan's ``size`` bytes from offset 0, when the plan was
        built in one: the raw sink then links that file into place instead
        of copying it. None (the default): ``write_to`` it."""
        return None
