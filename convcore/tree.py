"""The tree kind: file entries with full metadata and lazy data.

A Tree is what flows between a source of files (dir, tar, oci, or a filesystem
reader) and a writer of files (ext4, squashfs, tar, dir, oci). It holds every
entry's metadata in memory (a few hundred bytes an entry) and references file
contents through ``Data`` objects that read nothing until a writer asks.

Paths are relative POSIX paths without a leading ``/`` or ``./``; the root
directory is ``""``. Parents always come before their children in iteration
order, and children of a directory come in the order they were added
(``Tree.sorted()`` gives a byte-wise sorted copy for reproducible writers).

Hardlinks: the first entry of an inode is a normal entry; every other name of
that inode is an Entry whose ``link`` is the path of the first one (tar's
convention). Its own metadata fields repeat the first entry's. ``nlink`` is
derived by ``Tree.link_counts()``.
"""

from __future__ import annotations

import enum
import errno
import io
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from convcore.errors import CorruptError, NotFoundError, UsageError

COPY_CHUNK = 1 << 20


class Kind(enum.Enum):
    """What an entry is; values are the S_IFMT bits."""

    FILE = stat.S_IFREG
    DIR = stat.S_IFDIR
    SYMLINK = stat.S_IFLNK
    CHAR = stat.S_IFCHR
    BLOCK = stat.S_IFBLK
    FIFO = stat.S_IFIFO
    SOCKET = stat.S_IFSOCK

    @classmethod
    def from_mode(cls, mode: int) -> Kind:
        try:
            return cls(stat.S_IFMT(mode))
        except ValueError:
            raise CorruptError(f"unknown file type in mode {mode:#o}") from None


# --------------------------------------------------------------------------
# Lazy file data


class Data:
    """The contents of a regular file, read only when a writer asks.

    Subclasses implement ``readinto``; ``extents`` (the non-hole ranges) and
    ``copy_to`` (move bytes into an fd at an offset) have generic versions that
    subclasses backed by a host file override with SEEK_DATA and
    ``os.copy_file_range``.
    """

    __slots__ = ()
    size: int = 0

    def readinto(self, offset: int, buf: memoryview | bytearray) -> int:
        """Fill ``buf`` from file offset ``offset``; return bytes read
        (short only at end of file). Holes read as zeros."""
        raise NotImplementedError

    def extents(self) -> Iterable[tuple[int, int]]:
        """(offset, length) ranges that may hold non-zero data, ascending and
        disjoint. Everything outside is a hole. Default: the whole file."""
        return [(0, self.size)] if self.size else []

    def read(self, offset: int = 0, length: int | None = None) -> bytes:
        """Convenience for small reads (tests, symlink targets, metadata)."""
        if length is None:
            length = self.size - offset
        length = max(0, min(length, self.size - offset))
        buf = bytearray(length)
        got = self.readinto(offset, memoryview(buf))
        return bytes(buf[:got])

    def copy_to(self, fd: int, dst_offset: int, buf: bytearray | None = None) -> None:
        """Write the file's non-hole ranges into host ``fd`` at ``dst_offset``
        (holes are skipped: the destination must already read as zeros).
        ``buf`` is a reusable scratch buffer."""
        if buf is None:
            buf = bytearray(COPY_CHUNK)
        view = memoryview(buf)
        for start, length in self.extents():
            pos = start
            end = start + length
            while pos < end:
                n = self.readinto(pos, view[: min(len(view), end - pos)])
                if n <= 0:
                    raise CorruptError(f"file data ended early at offset {pos}")
                os.pwrite(fd, view[:n], dst_offset + pos)
                pos += n

    def open(self) -> io.BufferedReader:
        """A read-only file object over the contents."""
        return io.BufferedReader(_DataRaw(self), buffer_size=COPY_CHUNK)

    @property
    def order_key(self) -> tuple:
        """Sort key for the cheapest order to read many files of this class (a
        streamed source wants its members in archive order). Keys are only
        compared between Data of the same class: see ``data_order_key``."""
        return ()


def data_order_key(data: Data | None) -> tuple:
    """Sort key putting many files' data in the cheapest order to read: grouped
    by Data class (their ``order_key`` shapes differ), then by ``order_key``."""
    if data is None:
        return ("",)
    return (type(data).__qualname__, data.order_key)


class _DataRaw(io.RawIOBase):
    def __init__(self, data: Data) -> None:
        self._data = data
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._data.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, b) -> int:  # type: ignore[override]
        view = memoryview(b).cast("B")
        want = min(len(view), self._data.size - self._pos)
        if want <= 0:
            return 0
        n = self._data.readinto(self._pos, view[:want])
        self._pos += n
        return n


class BytesData(Data):
    """Contents held in memory (small files, generated files, tests)."""

    def __init__(self, data: bytes) -> None:
        self._bytes = bytes(data)
        self.size = len(self._bytes)

    def readinto(self, offset: int, buf: memoryview | bytearray) -> int:
        chunk = self._bytes[offset : offset + len(buf)]
        buf[: len(chunk)] = chunk
        return len(chunk)

    def copy_to(self, fd: int, dst_offset: int, buf: bytearray | None = None) -> None:
        if self._bytes:
            os.pwrite(fd, self._bytes, dst_offset)


class FileRangeData(Data):
    """``size`` bytes at ``offset`` in a host file (a file in a directory, a
    member of a plain tar, a file inside an uncompressed image).

    ``holes=True`` asks SEEK_DATA/SEEK_HOLE for the extents, for sparse host
    files. The host file is opened per call so thousands of entries hold no
    descriptors.
    """

    def __init__(self, path: str | os.PathLike, offset: int = 0, size: int | None = None,
                 holes: bool = False) -> None:
        self.path = os.fspath(path)
        self.offset = offset
        self.size = os.stat(self.path).st_size - offset if size is None else size
        self.holes = holes

    @property
    def order_key(self) -> tuple:
        return (self.path, self.offset)

    def readinto(self, offset: int, buf: memoryview | bytearray) -> int:
        want = max(0, min(len(buf), self.size - offset))
        if not want:
            return 0
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self.offset + offset)
            return f.readinto(memoryview(buf)[:want]) or 0

    def extents(self) -> list[tuple[int, int]]:
        if not self.size:
            return []
        if not self.holes:
            return [(0, self.size)]
        with open(self.path, "rb", buffering=0) as f:
            return list(_seek_data_extents(f.fileno(), self.offset, self.size))

    def copy_to(self, fd: int, dst_offset: int, buf: bytearray | None = None) -> None:
        if not self.size:
            return
        with open(self.path, "rb", buffering=0) as f:
            src = f.fileno()
            ranges = (_seek_data_extents(src, self.offset, self.size) if self.holes
                      else [(0, self.size)])
            for start, length in ranges:
                copy_range(src, self.offset + start, fd, dst_offset + start, length, buf)


class SegmentData(Data):
    """A file made of pieces of a readable volume (how ext4 and uncompressed
    filesystem readers expose file contents). ``segments`` are
    ``(file_offset, length, volume_offset)``, ascending; gaps are holes."""

    __slots__ = ("volume", "size", "segments")

    def __init__(self, volume, size: int, segments: list[tuple[int, int, int]]) -> None:
        self.volume = volume
        self.size = size
        self.segments = segments

    @property
    def order_key(self) -> tuple:
        return (id(self.volume), self.segments[0][2] if self.segments else 0)

    def extents(self) -> list[tuple[int, int]]:
        return [(f, n) for f, n, _ in self.segments]

    def readinto(self, offset: int, buf: memoryview | bytearray) -> int:
        want = max(0, min(len(buf), self.size - offset))
        view = memoryview(buf)[:want]
        end = offset + want
        filled = offset  # bytes before this are done; gaps between segments are holes
        for f, n, v in self.segments:
            if f >= end:
                break
            lo, hi = max(f, offset), min(f + n, end)
            if lo < hi:
                _zero(view[filled - offset : lo - offset])
                self.volume.readinto(view[lo - offset : hi - offset], v + (lo - f))
                filled = hi
        _zero(view[filled - offset :])
        return want

    def copy_to(self, fd: int, dst_offset: int, buf: bytearray | None = None) -> None:
        for f, n, v in self.segments:
            self.volume.copy_to_fd(v, n, fd, dst_offset + f, buf)


_ZEROS = bytes(1 << 16)


def _zero(view: memoryview) -> None:
    for pos in range(0, len(view), len(_ZEROS)):
        chunk = view[pos : pos + len(_ZEROS)]
        chunk[:] = _ZEROS[: len(chunk)]


def _seek_data_extents(fd: int, base: int, size: int) -> Iterator[tuple[int, int]]:
    """Non-hole ranges of [base, base+size) in fd, relative to base."""
    end = base + size
    pos = base
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # only a hole remains
                return
            yield (pos - base, end - pos)  # filesystem without SEEK_DATA
            return
        if data >= end:
            return
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        yield (data - base, hole - data)
        pos = hole


def copy_range(src: int, src_off: int, dst: int, dst_off: int, length: int,
               buf: bytearray | None = None) -> None:
    """Copy ``length`` bytes between host fds at offsets, in the kernel when it
    can (``copy_file_range``), else ``readinto`` + ``pwrite`` with one buffer."""
    while length > 0:
        try:
            n = os.copy_file_range(src, dst, length, src_off, dst_off)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP,
                               errno.EBADF):
                if e.errno == errno.ENOSPC:
                    from convcore.errors import NoSpaceError
                    raise NoSpaceError("no space left on the output device") from None
                raise
            break
        if n == 0:
            raise CorruptError("input file is shorter than its recorded size")
        src_off += n
        dst_off += n
        length -= n
    if length <= 0:
        return
    if buf is None:
        buf = bytearray(min(COPY_CHUNK, length))
    view = memoryview(buf)
    while length > 0:
        n = os.preadv(src, [view[: min(len(view), length)]], src_off)
        if n == 0:
            raise CorruptError("input file is shorter than its recorded size")
        os.pwrite(dst, view[:n], dst_off)
        src_off += n
        dst_off += n
        length -= n


# --------------------------------------------------------------------------
# Entries and the tree


@dataclass(slots=True)
class Entry:
    """One name in the tree with its inode's metadata.

    Times are integer nanoseconds since the epoch. ``mode`` holds only the
    permission bits (``0o7777``, setuid/setgid/sticky included); the type is
    ``kind``. ``rdev`` is ``(major, minor)`` for devices. ``xattrs`` map full
    names (``user.foo``, ``security.capability``) to raw values.
    """

    path: str
    kind: Kind
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    atime_ns: int = 0
    ctime_ns: int = 0
    crtime_ns: int | None = None
    size: int = 0
    target: str = ""  # symlink target
    rdev: tuple[int, int] = (0, 0)
    link: str | None = None  # hardlink: path of the entry holding the inode
    xattrs: dict[str, bytes] = field(default_factory=dict)
    data: Data | None = None

    @property
    def name(self) -> str:
        return self.path.rpartition("/")[2]

    @property
    def parent(self) -> str:
        return self.path.rpartition("/")[0]

    @property
    def st_mode(self) -> int:
        return self.kind.value | (self.mode & 0o7777)

    def is_dir(self) -> bool:
        return self.kind is Kind.DIR and self.link is None


def normpath(path: str) -> str:
    """Normalise a path from an archive or a user into the tree's form.
    Raises UsageError for paths that climb out of the root."""
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise UsageError(f"path escapes the root: {path!r}")
        parts.append(part)
    return "/".join(parts)


class Tree:
    """An ordered set of entries keyed by path, parents before children.

    ``add`` replaces an existing entry of the same path in place (a later tar
    member or OCI layer wins); replacing a directory by a non-directory drops
    the directory's descendants. Missing parent directories are created with
    ``default_dir`` metadata.
    """

    def __init__(self, root: Entry | None = None) -> None:
        self._entries: dict[str, Entry] = {}
        self._children: dict[str, dict[str, None]] = {"": {}}
        self.default_dir_mode = 0o755
        #: facts for ``conv info`` (an OCI image config, a filesystem's label).
        self.info: dict = {}
        self.add(root or Entry("", Kind.DIR, mode=0o755))

    # -- building
    def add(self, entry: Entry) -> Entry:
        path = entry.path
        old = self._entries.get(path)
        if old is not None:
            if old.is_dir() and not entry.is_dir():
                self._remove_children(path)
            self._entries[path] = entry
            if entry.is_dir():
                self._children.setdefault(path, {})
            return entry
        if path:
            parent = entry.parent
            if parent not in self._entries:
                self.add(Entry(parent, Kind.DIR, mode=self.default_dir_mode,
                               mtime_ns=entry.mtime_ns, atime_ns=entry.mtime_ns,
                               ctime_ns=entry.mtime_ns))
            elif not self._entries[parent].is_dir():
                raise CorruptError(f"{path!r}: parent {parent!r} is not a directory")
            self._children[parent][entry.name] = None
        self._entries[path] = entry
        if entry.is_dir():
            self._children.setdefault(path, {})
        return entry

    def remove(self, path: str) -> None:
        """Remove an entry and, for a directory, everything below it."""
        if path not in self._entries or not path:
            return
        if self._entries[path].is_dir():
            self._remove_children(path)
            self._children.pop(path, None)
        del self._entries[path]
        self._children[path.rpartition("/")[0]].pop(path.rpartition("/")[2], None)

    def clear_dir(self, path: str) -> None:
        """Remove every child of a directory (an OCI opaque whiteout)."""
        self._remove_children(path)

    def _remove_children(self, path: str) -> None:
        for name in list(self._children.get(path, ())):
            self.remove(f"{path}/{name}" if path else name)
        if path in self._children:
            self._children[path] = {}

    # -- reading
    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, path: str) -> bool:
        return path in self._entries

    def get(self, path: str) -> Entry:
        """The entry at ``path`` (tree form, leading ``/`` allowed)."""
        try:
            return self._entries[normpath(path)]
        except KeyError:
            raise NotFoundError(f"no such file in the tree: /{normpath(path)}") from None

    @property
    def root(self) -> Entry:
        return self._entries[""]

    def children(self, path: str) -> list[Entry]:
        """Direct children of a directory, in insertion order."""
        prefix = f"{path}/" if path else ""
        return [self._entries[prefix + n] for n in self._children.get(path, ())]

    def __iter__(self) -> Iterator[Entry]:
        """Every entry, depth first, parents before children, insertion order."""
        stack = [""]
        while stack:
            path = stack.pop()
            entry = self._entries[path]
            yield entry
            if entry.is_dir():
                kids = self._children.get(path, {})
                prefix = f"{path}/" if path else ""
                stack.extend(prefix + n for n in reversed(list(kids)))

    def sorted(self) -> Tree:
        """A copy whose directories list children in byte order of name
        (what reproducible writers iterate)."""
        out = Tree.__new__(Tree)
        out._entries = self._entries
        out.default_dir_mode = self.default_dir_mode
        out.info = self.info
        out._children = {p: dict.fromkeys(sorted(k, key=os.fsencode))
                         for p, k in self._children.items()}
        return out

    def link_counts(self) -> dict[str, int]:
        """nlink for each inode-holding path: names pointing at it, and for a
        directory 2 + its subdirectories."""
        counts: dict[str, int] = {}
        for entry in self._entries.values():
            if entry.link is not None:
                counts[entry.link] = counts.get(entry.link, 1) + 1
            elif entry.kind is Kind.DIR:
                counts[entry.path] = counts.get(entry.path, 0) + 2
                if entry.path:
                    counts[entry.parent] = counts.get(entry.parent, 0) + 1
            else:
                counts.setdefault(entry.path, 1)
        return counts

    def resolve(self, entry: Entry) -> Entry:
        """The entry holding the inode for a hardlink (itself otherwise)."""
        if entry.link is None:
            return entry
        try:
            return self._entries[entry.link]
        except KeyError:
            raise CorruptError(f"{entry.path!r}: hardlink to missing {entry.link!r}") from None

    def data_order(self, entries: Iterable[Entry] | None = None) -> list[Entry]:
        """Regular files (not hardlink names) in the cheapest order to read
        their data: streamed sources want archive order."""
        files = [e for e in (self if entries is None else entries)
                 if e.kind is Kind.FILE and e.link is None and e.data is not None]
        return sorted(files, key=lambda e: data_order_key(e.data))

    def clamp_times(self, epoch_ns: int) -> None:
        """SOURCE_DATE_EPOCH: no time in the tree is later than ``epoch_ns``."""
        for e in self._entries.values():
            e.mtime_ns = min(e.mtime_ns, epoch_ns)
            e.atime_ns = min(e.atime_ns, epoch_ns)
            e.ctime_ns = min(e.ctime_ns, epoch_ns)
            if e.crtime_ns is not None:
                e.crtime_ns = min(e.crtime_ns, epoch_ns)
