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

import codecs
import contextlib
import enum
import errno
import gc
import io
import os
import stat
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from operator import attrgetter

from convcore.errors import ConvError, CorruptError, NotFoundError, UsageError

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

    # Members are singletons compared with ``is``: identity hashing runs in C,
    # where Enum's default hashes the member name in Python (Kind keys dicts
    # in every writer's per-entry loop).
    __hash__ = object.__hash__

    @classmethod
    def from_mode(cls, mode: int) -> Kind:
        kind = KIND_BY_IFMT.get(mode & 0o170000)
        if kind is None:
            raise CorruptError(f"unknown file type in mode {mode:#o}")
        return kind


# Module-level names for hot loops: attribute access on an Enum class goes
# through EnumType.__getattr__ in Python 3.11 (several times slower than a
# global).
_FILE, _DIR = Kind.FILE, Kind.DIR
#: the Kind of each S_IFMT value (``mode & 0o170000``), for per-entry lookups
#: without Enum's Python-level constructor.
KIND_BY_IFMT: dict[int, Kind] = {kind._value_: kind for kind in Kind}


# --------------------------------------------------------------------------
# Lazy file data


_NOATIME = getattr(os, "O_NOATIME", 0)


def open_noatime(path: str, flags: int = os.O_RDONLY, *, dir_fd: int | None = None) -> int:
    """Open a source file or directory for reading without moving its atime
    where the kernel lets us (its owner, or root): a second conversion of
    the same tree then sees the same times, so gives the same bytes, and
    the host writes no inode per file read. Elsewhere a plain open.
    ``dir_fd``: ``path`` is relative to that directory (see os.open)."""
    flags |= os.O_CLOEXEC
    if _NOATIME:
        try:
            return os.open(path, flags | _NOATIME, dir_fd=dir_fd)
        except PermissionError:
            pass
    return os.open(path, flags, dir_fd=dir_fd)


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

    @classmethod
    def order_keys(cls, datas: list[Data]) -> list:
        """``order_key`` of each of ``datas`` (all of one class, this one or
        a subclass sharing its name), or keys that sort them the same way;
        a class may compute them without a Python call per object."""
        return [data.order_key for data in datas]


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

    __slots__ = ("_bytes", "size")

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
    files; nothing is asked before a writer wants the data. The host file is
    opened per call so thousands of entries hold no descriptors. A host file
    that no longer holds the recorded range (it shrank after the scan, or an
    archive is truncated) is a CorruptError naming the file, never zeros.
    """

    __slots__ = ("path", "offset", "size", "holes")

    def __init__(self, path: str | os.PathLike, offset: int = 0, size: int | None = None,
                 holes: bool = False) -> None:
        self.path = os.fspath(path)
        self.offset = offset
        self.size = os.stat(self.path).st_size - offset if size is None else size
        self.holes = holes

    @property
    def order_key(self) -> tuple:
        return (self.path, self.offset)

    def _open(self) -> int:
        try:
            return open_noatime(self.path)
        except FileNotFoundError as e:
            raise NotFoundError(f"{self.path}: {e.strerror} (removed since it was "
                                "listed?)") from None
        except OSError as e:
            raise ConvError(f"{self.path}: cannot read: {e.strerror}") from None

    def _check_length(self, fd: int) -> None:
        """CorruptError unless the host file still holds the whole range."""
        host_size = os.fstat(fd).st_size
        if host_size >= self.offset + self.size:
            return
        if self.offset == 0:
            raise CorruptError(f"{self.path}: file is shorter than its recorded size "
                               f"({host_size} bytes, {self.size} recorded: it shrank after "
                               "the scan)")
        raise CorruptError(f"{self.path}: file is shorter than its recorded size (ends at "
                           f"byte {host_size}, inside the {self.size} bytes recorded at "
                           f"offset {self.offset}: truncated?)")

    def readinto(self, offset: int, buf: memoryview | bytearray) -> int:
        want = max(0, min(len(buf), self.size - offset))
        if not want:
            return 0
        view = memoryview(buf)[:want]
        fd = self._open()
        try:
            got = 0
            while got < want:
                n = os.preadv(fd, [view[got:]], self.offset + offset + got)
                if n == 0:
                    self._check_length(fd)
                    raise _short_input(self.path, self.offset + offset + got)
                got += n
        finally:
            os.close(fd)
        return got

    def extents(self) -> list[tuple[int, int]]:
        if not self.size:
            return []
        if not self.holes:
            return [(0, self.size)]
        fd = self._open()
        try:
            # a shrunk file's lost tail would otherwise look like a hole
            self._check_length(fd)
            return list(_seek_data_extents(fd, self.offset, self.size))
        finally:
            os.close(fd)

    def copy_to(self, fd: int, dst_offset: int, buf: bytearray | None = None) -> None:
        if not self.size:
            return
        src = self._open()
        try:
            self.copy_from_fd(src, fd, dst_offset, buf)
        finally:
            os.close(src)

    def copy_from_fd(self, src: int, fd: int, dst_offset: int,
                     buf: bytearray | None = None) -> None:
        """``copy_to`` with the host file already open as ``src`` (a sink
        copying many members of one archive opens it once)."""
        if not self.size:
            return
        self._check_length(src)
        ranges = (_seek_data_extents(src, self.offset, self.size) if self.holes
                  else ((0, self.size),))
        for start, length in ranges:
            copy_range(src, self.offset + start, fd, dst_offset + start, length, buf,
                       name=self.path)
        # shrunk while copying: SEEK_DATA past the new end reads as a hole
        self._check_length(src)


class HostTreeFileData(FileRangeData):
    """A whole file below a scanned host directory: ``path`` is the
    directory's host prefix (a class attribute, see ``for_root``) plus the
    file's tree path, built when asked, so a scan keeps no second path string
    per file (the tree path is the Entry's own)."""

    __slots__ = ()
    root_prefix = ""

    def __init__(self, rel: str, size: int, holes: bool = False) -> None:
        _FRD_PATH.__set__(self, rel)
        _FRD_OFFSET.__set__(self, 0)
        self.size = size
        self.holes = holes

    @classmethod
    def for_root(cls, prefix: str) -> type[HostTreeFileData]:
        """A subclass whose files live below ``prefix`` (ending in ``/``):
        one class per scan holds the prefix that every file shares."""
        return type(cls.__name__, (cls,), {"__slots__": (), "root_prefix": prefix,
                                           "__qualname__": cls.__qualname__})

    @property  # type: ignore[override]
    def path(self) -> str:
        return self.root_prefix + _FRD_PATH.__get__(self)

    @property
    def order_key(self) -> tuple:
        return (_FRD_PATH.__get__(self), 0)

    @classmethod
    def order_keys(cls, datas: list[Data]) -> list:
        # the tree paths alone: the offset is always 0
        return list(map(_FRD_PATH.__get__, datas))


_FRD_PATH = FileRangeData.__dict__["path"]
_FRD_OFFSET = FileRangeData.__dict__["offset"]


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
               buf: bytearray | None = None, name: str | None = None) -> None:
    """Copy ``length`` bytes between host fds at offsets, in the kernel when it
    can (``copy_file_range``), else ``readinto`` + ``pwrite`` with one buffer.
    ``name`` (the source file's path) names the input in errors."""
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
            raise _short_input(name, src_off)
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
            raise _short_input(name, src_off)
        os.pwrite(dst, view[:n], dst_off)
        src_off += n
        dst_off += n
        length -= n


def _short_input(name: str | None, offset: int) -> CorruptError:
    if name is None:
        return CorruptError("input file is shorter than its recorded size")
    return CorruptError(f"{name}: file is shorter than its recorded size (ends at byte "
                        f"{offset})")


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
        return self.kind._value_ | (self.mode & 0o7777)

    def is_dir(self) -> bool:
        return self.kind is _DIR and self.link is None


@contextlib.contextmanager
def gc_paused(keep: bool = False) -> Iterator[None]:
    """Pause the cyclic garbage collector while a source builds a large Tree.

    A source allocates a few acyclic objects per entry (Entry, dicts,
    strings, Data) and keeps them all, so each generational collection walks
    the whole growing tree to free nothing: ~10% of a dir scan, ~6% of
    reading a tar. The caller's setting is restored, also on errors.

    ``keep``: everything alive when the pause ends lives until the process
    does (``Context.one_shot``), so it is frozen out of collection
    (``gc.freeze``) instead of being walked by the first collection after
    the pause (40 ms at 100k entries; through large containers, whatever
    their generation), which in a forked child would also copy every page
    it touched. Refcounting still frees it."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if keep:
            gc.freeze()
        if was_enabled:
            gc.enable()


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


# os.fsencode is UTF-8 with surrogateescape (Linux): str order is then byte
# order for every name without escaped bytes (see _sort_bytewise).
_FS_UTF8 = codecs.lookup(sys.getfilesystemencoding()).name == "utf-8" and \
    sys.getfilesystemencodeerrors() == "surrogateescape"


def _sort_bytewise(names: list[str]) -> None:
    """Sort names in place in byte order of their filesystem encoding."""
    if len(names) < 2:
        return
    if _FS_UTF8:
        # UTF-8 keeps code point order, so plain str order is byte order
        # unless a name holds surrogate-escaped bytes; one C-level check for
        # the whole list instead of an os.fsencode call per name.
        joined = "".join(names)
        if joined.isascii():
            names.sort()
            return
        try:
            joined.encode("utf-8")
        except UnicodeEncodeError:
            pass
        else:
            names.sort()
            return
    names.sort(key=os.fsencode)


def bytewise_sorted(names: Iterable[str]) -> list[str]:
    """Names in byte order of their filesystem encoding (what ``os.fsencode``
    gives), the order reproducible writers and the dir source use."""
    out = list(names)
    _sort_bytewise(out)
    return out


class _NoXattrs(dict):
    """The one empty, read-only xattrs mapping that entries without xattrs
    share once they are in a Tree (an empty dict is 64 bytes an entry). To
    give such an entry xattrs, assign a new dict: ``e.xattrs = {...}``."""

    __slots__ = ()

    def _refuse(self, *args, **kwargs):
        raise TypeError("this entry's xattrs are the shared empty mapping: assign a new "
                        "dict to entry.xattrs instead of changing it in place")

    __setitem__ = __delitem__ = __ior__ = _refuse
    setdefault = update = pop = popitem = clear = _refuse  # type: ignore[assignment]

    def __repr__(self) -> str:
        return "{}"


#: every permission value as one shared int object: ``mode & 0o7777`` makes
#: a new 28-byte int per entry, indexing this table gives the shared one.
PERMS = tuple(range(0o10000))

#: mtimes Tree.add makes entries share, and how many it keeps at most
_INTS: dict[int, int] = {}
_INTS_KEPT = 1 << 12

#: the empty xattrs mapping entries share in a Tree (read-only; see _NoXattrs)
NO_XATTRS: dict[str, bytes] = _NoXattrs()


class Tree:
    """An ordered set of entries keyed by path, parents before children.

    ``add`` replaces an existing entry of the same path in place (a later tar
    member or OCI layer wins); replacing a directory by a non-directory drops
    the directory's descendants. Missing parent directories are created with
    ``default_dir`` metadata. An entry with no xattrs gets the shared
    read-only ``NO_XATTRS`` when added.
    """

    # _children: directory path -> {child path: child Entry} in child order,
    # for every directory; the root entry is _root. Keys are the entries'
    # own path strings, so a tree holds one string per entry and one dict
    # slot (no separate name strings, no second path -> Entry map): a path
    # is found in its parent's dict. Siblings share their parent's prefix,
    # so ordering their paths orders their names.

    def __init__(self, root: Entry | None = None) -> None:
        self._children: dict[str, dict[str, Entry]] = {"": {}}
        self._count = 1
        self.default_dir_mode = 0o755
        #: facts for ``conv info`` (an OCI image config, a filesystem's label).
        self.info: dict = {}
        self._root = Entry("", _DIR, mode=0o755, xattrs=NO_XATTRS)
        if root is not None:
            self.add(root)

    # -- building
    def add(self, entry: Entry) -> Entry:
        path = entry.path
        is_dir = entry.kind is _DIR and entry.link is None
        if not entry.xattrs and type(entry.xattrs) is dict:
            entry.xattrs = NO_XATTRS
        mode = entry.mode
        if 0 <= mode <= 0o7777:
            entry.mode = PERMS[mode]
        # Equal mtimes share one int object (36 bytes each): an archive's
        # members often have one mtime (SOURCE_DATE_EPOCH), a package's
        # files too. Bounded: distinct values only cost the lookup.
        ints = _INTS
        if len(ints) > _INTS_KEPT:
            ints.clear()
        t = entry.mtime_ns
        shared = ints.setdefault(t, t)
        if shared is not t:
            entry.mtime_ns = shared
            if entry.atime_ns == t:
                entry.atime_ns = shared
            if entry.ctime_ns == t:
                entry.ctime_ns = shared
        children = self._children
        if path:
            parent = path.rpartition("/")[0]
            kids = children.get(parent)
            if kids is None:
                if self._lookup(parent) is not None:
                    raise CorruptError(f"{path!r}: parent {parent!r} is not a directory")
                self._add_parents(parent, entry.mtime_ns)
                kids = children[parent]
            old = kids.get(path)
            kids[path] = entry
        else:
            old = self._root
            self._root = entry
        if old is None:
            self._count += 1
        elif old.kind is _DIR and old.link is None and not is_dir:
            self._remove_children(path)
            if path:
                children.pop(path, None)
            else:
                children[""] = {}
        if is_dir and path not in children:
            children[path] = {}
        return entry

    def _lookup(self, path: str) -> Entry | None:
        if not path:
            return self._root
        kids = self._children.get(path.rpartition("/")[0])
        return None if kids is None else kids.get(path)

    def _add_parents(self, path: str, mtime_ns: int) -> None:
        """Create the missing directory ``path`` and its missing ancestors
        (iteratively: a hostile archive may name a path thousands deep)."""
        missing = []
        while self._lookup(path) is None:
            missing.append(path)
            path = path.rpartition("/")[0]
        for path in reversed(missing):
            self.add(Entry(path, _DIR, mode=self.default_dir_mode, mtime_ns=mtime_ns,
                           atime_ns=mtime_ns, ctime_ns=mtime_ns))

    def remove(self, path: str) -> None:
        """Remove an entry and, for a directory, everything below it."""
        if not path or self._lookup(path) is None:
            return
        self._remove_children(path)
        self._children.pop(path, None)
        del self._children[path.rpartition("/")[0]][path]
        self._count -= 1

    def clear_dir(self, path: str) -> None:
        """Remove every child of a directory (an OCI opaque whiteout)."""
        self._remove_children(path)

    def _remove_children(self, path: str) -> None:
        children = self._children
        kids = children.get(path)
        if not kids:
            return
        removed = 0
        stack = [kids]
        while stack:
            names = stack.pop()
            removed += len(names)
            for child in names:
                below = children.pop(child, None)
                if below:
                    stack.append(below)
        children[path] = {}
        self._count -= removed

    # -- reading
    def __len__(self) -> int:
        return self._count

    def __contains__(self, path: str) -> bool:
        return self._lookup(path) is not None

    def get(self, path: str) -> Entry:
        """The entry at ``path`` (tree form, leading ``/`` allowed)."""
        entry = self._lookup(normpath(path))
        if entry is None:
            raise NotFoundError(f"no such file in the tree: /{normpath(path)}")
        return entry

    @property
    def root(self) -> Entry:
        return self._root

    def children(self, path: str) -> list[Entry]:
        """Direct children of a directory, in insertion order."""
        kids = self._children.get(path)
        return list(kids.values()) if kids else []

    def __iter__(self) -> Iterator[Entry]:
        """Every entry, depth first, parents before children, insertion order."""
        children = self._children
        yield self._root
        kids = children.get("")
        if not kids:
            return
        # one iterator per open directory; each directory's children are
        # taken when it is entered, as a list, so the walk never iterates a
        # dict that a caller changes meanwhile
        stack = [iter(list(kids.values()))]
        while stack:
            for entry in stack[-1]:
                yield entry
                # only directories have children (add refuses others)
                kids = children.get(entry.path)
                if kids:
                    stack.append(iter(list(kids.values())))
                    break
            else:
                stack.pop()

    def _all(self) -> Iterator[Entry]:
        """Every entry in no particular order (cheaper than iterating)."""
        yield self._root
        for kids in self._children.values():
            yield from kids.values()

    def sorted(self) -> Tree:
        """A copy whose directories list children in byte order of name
        (what reproducible writers iterate)."""
        out = Tree.__new__(Tree)
        out._root = self._root
        out._count = self._count
        out.default_dir_mode = self.default_dir_mode
        out.info = self.info
        sorted_children = {}
        for path, kids in self._children.items():
            paths = list(kids)
            _sort_bytewise(paths)
            sorted_children[path] = dict(zip(paths, map(kids.__getitem__, paths), strict=True))
        out._children = sorted_children
        return out

    def link_counts(self) -> dict[str, int]:
        """nlink for each inode-holding path: names pointing at it, and for a
        directory 2 + its subdirectories."""
        counts: dict[str, int] = {}
        get = counts.get
        for entry in self._all():
            path = entry.path
            link = entry.link
            if link is not None:
                counts[link] = get(link, 1) + 1
            elif entry.kind is _DIR:
                counts[path] = get(path, 0) + 2
                if path:
                    parent = path.rpartition("/")[0]
                    counts[parent] = get(parent, 0) + 1
            elif path not in counts:
                counts[path] = 1
        return counts

    def resolve(self, entry: Entry) -> Entry:
        """The entry holding the inode for a hardlink (itself otherwise)."""
        if entry.link is None:
            return entry
        held = self._lookup(entry.link)
        if held is None:
            raise CorruptError(f"{entry.path!r}: hardlink to missing {entry.link!r}")
        return held

    def data_order(self, entries: Iterable[Entry] | None = None) -> list[Entry]:
        """Regular files (not hardlink names) in the cheapest order to read
        their data: streamed sources want archive order."""
        # The order of sorting by data_order_key, without a key tuple per
        # file: group by Data class name (groups in name order), then a
        # stable sort of each group by its order_key.
        groups: dict[str, list[Entry]] = {}
        for e in (self if entries is None else entries):
            data = e.data
            if data is not None and e.kind is _FILE and e.link is None:
                name = type(data).__qualname__
                group = groups.get(name)
                if group is None:
                    groups[name] = group = []
                group.append(e)
        out: list[Entry] = []
        for name in sorted(groups):
            group = groups[name]
            datas = list(map(_DATA_OF, group))
            keys = type(datas[0]).order_keys(datas)
            # a stable sort of the positions by key: C-level calls only
            out += map(group.__getitem__, sorted(range(len(group)), key=keys.__getitem__))
        return out

    def clamp_times(self, epoch_ns: int) -> None:
        """SOURCE_DATE_EPOCH: no time in the tree is later than ``epoch_ns``."""
        for e in self._all():
            e.mtime_ns = min(e.mtime_ns, epoch_ns)
            e.atime_ns = min(e.atime_ns, epoch_ns)
            e.ctime_ns = min(e.ctime_ns, epoch_ns)
            if e.crtime_ns is not None:
                e.crtime_ns = min(e.crtime_ns, epoch_ns)


_DATA_OF = attrgetter("data")
