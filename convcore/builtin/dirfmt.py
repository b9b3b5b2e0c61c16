"""dir: a host directory as a tree, and a tree extracted into a new directory.

Source: walks with ``os.listdir`` and ``os.lstat`` without following
symlinks, children in byte order of name (reproducible), hardlinks by
(st_dev, st_ino), every xattr ``listxattr`` shows, file data referenced as
FileRangeData (holes found with SEEK_DATA when a writer asks), nothing read
at scan time. Per entry that is two syscalls (lstat, listxattr; getxattr only
for names listed), each resolving one name relative to the walked directory,
and a few small objects. Past 8192 entries a forked child walks part of the
rest (see _Scanner.split): the Tree is the one a walk in one process gives.

Sink: creates every entry relative to an open parent directory fd, each
parent opened component by component with O_NOFOLLOW, so neither a path in
the tree nor a symlink the tree itself created can lead outside the
destination.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import fnmatch
import marshal
import os
import re
import select
import stat
import struct
import sys
import threading
from collections.abc import Callable, Iterable, Iterator

from convcore.builtin.formats import DIR_OPTIONS as OPTIONS  # noqa: F401 (dirfmt.OPTIONS)
from convcore.builtin.formats import parse_globs as _parse_globs  # noqa: F401
from convcore.builtin.formats import parse_owner as _parse_owner  # noqa: F401
from convcore.errors import ConvError, CorruptError, NoSpaceError, NotFoundError
from convcore.feed import FileFeed
from convcore.forked import Forked, forking
from convcore.format import Context
from convcore.tree import (
    COPY_CHUNK,
    KIND_BY_IFMT,
    NO_XATTRS,
    PERMS,
    BytesData,
    Entry,
    FileRangeData,
    HostTreeFileData,
    Kind,
    Tree,
    bytewise_sorted,
    gc_paused,
    open_noatime,
)

# --------------------------------------------------------------------------
# Source


def _read_xattrs(path: str, names: list[str]) -> dict[str, bytes]:
    out = {}
    for name in sorted(names):
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:  # unreadable namespace (trusted.* without root) or just removed
            continue
    return out


def _exclude_matcher(globs: Iterable[str]) -> Callable[[str], object] | None:
    """One compiled regex for every glob (fnmatchcase semantics), or None."""
    globs = tuple(globs)
    if not globs:
        return None
    return re.compile("|".join(fnmatch.translate(g) for g in globs)).match


_FILE, _DIR, _SYMLINK = Kind.FILE, Kind.DIR, Kind.SYMLINK
_CHAR, _BLOCK = Kind.CHAR, Kind.BLOCK
_IFDIR, _IFREG, _IFLNK = stat.S_IFDIR, stat.S_IFREG, stat.S_IFLNK
_IFCHR, _IFBLK = stat.S_IFCHR, stat.S_IFBLK

#: A scan is two steps. The walk makes the system calls and gives one plain
#: tuple a name, in tree order (a directory's record, its children's, then
#: None when it is done):
#:   (rel, mode, uid, gid, mtime_ns, atime_ns, ctime_ns, size, blocks, rdev,
#:    xattrs or None, symlink target, (st_dev, st_ino) or None)
#: where the last field is set for a non-directory with more than one link,
#: or (rel, (st_dev, st_ino)) for a further name of an inode this walk has
#: recorded already (no listxattr, no readlink: the name shares the first
#: one's). The build turns records into Entries. A forked child walks part
#: of a large tree while the parent walks and builds the rest: records are
#: what marshal carries back.

#: entries the parent scans alone before it splits the rest with a child
#: (a smaller tree, 6.8k entries for a Debian root, does not pay a fork);
#: pieces each directory's unscanned names are cut into at most; at most
#: this many pieces (their numbers, 4 bytes each, go in one pipe write of
#: PIPE_BUF bytes)
_FORK_AFTER = 8192
_PIECES_PER_DIR = 64
#: a directory with fewer unscanned names than this when the scan splits
#: has its subdirectories cut into pieces too, this many levels down
_EXPAND_BELOW = 8
_EXPAND_DEPTH = 2
_MAX_PIECES = 1024
#: records the walk gives the build at a time (while feeding files to an
#: encoder: see _Scanner.scan)
_BATCH = 2048
_FEED_BATCH = 256


class _Walk:
    """The system-call half of a scan, run by the parent and by a child.

    With ``relative`` the process's working directory follows the walk, so
    each lstat and listxattr resolves one name instead of the whole path
    (1 us less an entry, a fifth of the walk). Only where nothing else can
    be resolving relative paths meanwhile: a forked child, or a parent with
    no other thread (see _own_cwd)."""

    def __init__(self, root: str, excluded: Callable[[str], object] | None,
                 seen: set[tuple[int, int]], relative: bool) -> None:
        self.full_root = root.rstrip("/") + "/"
        self.abs_root = os.path.join(os.path.abspath(root), "")
        self.excluded = excluded
        # inodes with several names this process has recorded in full
        self.seen = seen
        self.relative = relative
        # the tree path prefix of the working directory (None: unknown)
        self.cwd: str | None = None
        # False: a directory's record only, not what is below it (see unit)
        self.descend = True

    def listing(self, path: str, full: str) -> list[str]:
        try:
            fd = open_noatime(path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                names = os.listdir(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise ConvError(f"{full}: cannot list directory: {e.strerror}") from None
        return bytewise_sorted(names)

    def walk(self, stack: list[tuple[str, Iterator[str]]], out: list,
             budget: float = float("inf")) -> None:
        """Append records for the names left in ``stack``'s frames (a
        directory's tree path prefix, an iterator of its unscanned names),
        depth first, until the stack is empty or ``out`` holds ``budget``
        records (then the stack holds what is left)."""
        excluded = self.excluded
        seen = self.seen
        full_root = self.full_root
        lstat = os.lstat
        listxattr = os.listxattr
        append = out.append
        while stack:
            rel_prefix, names = stack[-1]
            base = self.enter(rel_prefix)
            for name in names:
                rel = rel_prefix + name
                if excluded is not None and excluded(rel):
                    continue
                path = base + name
                try:
                    st = lstat(path)
                    mode = st.st_mode
                    ifmt = mode & 0o170000
                    if ifmt not in KIND_BY_IFMT:
                        raise CorruptError(f"{full_root + rel}: unknown file type in mode "
                                           f"{mode:#o}")
                    key = None
                    if st.st_nlink > 1 and ifmt != _IFDIR:
                        key = (st.st_dev, st.st_ino)
                        if key in seen:
                            append((rel, key))
                            if len(out) >= budget:
                                return
                            continue
                    try:
                        xnames = listxattr(path, follow_symlinks=False)
                    except OSError:
                        xnames = None
                    # most files have no xattrs: no getxattr, no sort, no dict
                    xattrs = _read_xattrs(path, xnames) if xnames else None
                    if ifmt == _IFREG:
                        append((rel, mode, st.st_uid, st.st_gid, st.st_mtime_ns,
                                st.st_atime_ns, st.st_ctime_ns, st.st_size, st.st_blocks, 0,
                                xattrs, "", key))
                        if key is not None:
                            seen.add(key)
                    elif ifmt == _IFDIR:
                        append((rel, mode, st.st_uid, st.st_gid, st.st_mtime_ns,
                                st.st_atime_ns, st.st_ctime_ns, 0, 0, 0, xattrs, "", None))
                        if not self.descend:
                            continue
                        below = self.listing(path, full_root + rel)
                        stack.append((rel + "/", iter(below)))
                        if len(out) >= budget:
                            return
                        break
                    else:
                        target = os.readlink(path) if ifmt == _IFLNK else ""
                        rdev = st.st_rdev if ifmt == _IFCHR or ifmt == _IFBLK else 0
                        append((rel, mode, st.st_uid, st.st_gid, st.st_mtime_ns,
                                st.st_atime_ns, st.st_ctime_ns, 0, 0, rdev, xattrs, target,
                                key))
                        if key is not None:
                            seen.add(key)
                except FileNotFoundError:
                    continue  # removed while we walked
                except OSError as e:
                    raise ConvError(f"{full_root + rel}: {e.strerror}") from None
                if len(out) >= budget:
                    return
            else:
                stack.pop()
                append(None)

    def enter(self, rel_prefix: str) -> str:
        """The prefix that names the directory ``rel_prefix``'s entries."""
        if not self.relative:
            return self.full_root + rel_prefix
        if self.cwd == rel_prefix:
            return ""
        try:
            os.chdir(self.abs_root + rel_prefix)
        except OSError:
            # not searchable, or too long a path: full paths, which give
            # the user the error a walk without chdir would
            self.cwd = None
            return self.abs_root + rel_prefix
        self.cwd = rel_prefix
        return ""

    def unit(self, rel_prefix: str, names: list[str], descend: bool = True) -> list:
        """Records of ``names`` (and all below them, with ``descend``) in the
        directory ``rel_prefix``."""
        out: list = []
        self.descend = descend
        try:
            self.walk([(rel_prefix, iter(names))], out)
        finally:
            self.descend = True
        out.pop()  # the end of the piece's directory, which goes on elsewhere
        return out


@contextlib.contextmanager
def _own_cwd() -> Iterator[bool]:
    """Whether a scan may move the working directory (when this thread is
    the process's only one); it is given back on leaving, also on errors."""
    if threading.active_count() > 1:
        yield False
        return
    try:
        # O_PATH: a working directory we may not read is still restored
        fd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        yield False
        return
    try:
        yield True
    finally:
        try:
            os.fchdir(fd)
        finally:
            os.close(fd)


class _Scanner:
    def __init__(self, root: str, owner: tuple[int, int] | None,
                 excludes: Iterable[str]) -> None:
        self.root = root
        self.owner = owner
        self.excluded = _exclude_matcher(excludes)
        self.relative = False  # see _Walk
        #: where regular files are announced while scanning (convcore.feed)
        self.feed: FileFeed | None = None
        self.file_data = HostTreeFileData.for_root(root.rstrip("/") + "/")
        # Equal ids and times share one int object (28-40 bytes each): a
        # package's files have one mtime and owner. Bounded: a tree whose
        # times all differ pays only the lookups.
        self.ints: dict[int, int] = {}
        # every name of an inode with several, as ((piece, index), rel): the
        # first in tree order holds the inode, the others link to it, once
        # every piece is built (pieces are built out of order)
        self.links: dict[tuple[int, int], list[tuple[tuple[int, int], str]]] = {}

    def build(self, records: list, stack: list[dict[str, Entry]],
              children: dict[str, dict], piece: int, first: int = 0,
              fed: list | None = None) -> int:
        """Entries for ``records`` (numbered from ``first`` within ``piece``)
        into the children map on top of ``stack``, which follows the
        records' directories; returns how many. A further name of a linked
        inode is None until ``resolve_links``. Regular files' (path, data)
        are appended to ``fed`` when given."""
        ints = self.ints
        same = ints.setdefault
        owner = self.owner
        file_data = self.file_data
        links = self.links
        kids = stack[-1]
        count = 0
        for index, rec in enumerate(records, first):
            if rec is None:
                stack.pop()
                kids = stack[-1] if stack else None
                continue
            count += 1
            if len(rec) == 2:
                rel, key = rec
                links[key].append(((piece, index), rel))
                kids[rel] = None  # type: ignore[index]
                continue
            rel, mode, uid, gid, m, a, c, size, blocks, rdev, xattrs, target, key = rec
            kind = KIND_BY_IFMT[mode & 0o170000]
            if owner is not None:
                uid, gid = owner
            else:
                uid, gid = same(uid, uid), same(gid, gid)
            if kind is _FILE:
                # Only a file with fewer blocks than bytes can have holes: the
                # rest need no SEEK_DATA probe when a writer copies them.
                data = file_data(rel, size, blocks * 512 < size)
                if fed is not None:
                    fed.append((rel, data))
            else:
                data = None
                if rdev:
                    rdev = (os.major(rdev), os.minor(rdev))
            # positional: a dataclass __init__ takes keywords several times slower
            entry = Entry(rel, kind, PERMS[mode & 0o7777], uid, gid, same(m, m), same(a, a),
                          same(c, c), None, size, target, rdev or _NO_RDEV, None,
                          xattrs or NO_XATTRS, data)
            kids[rel] = entry  # type: ignore[index]
            if kind is _DIR:
                kids = children[rel] = {}
                stack.append(kids)
                if len(ints) > _INTS_KEPT:
                    ints.clear()
            elif key is not None:
                names = links.get(key)
                if names is None:
                    links[key] = names = []
                names.append(((piece, index), rel))
        return count

    def resolve_links(self, children: dict[str, dict]) -> None:
        """Every name of a linked inode after its first in tree order becomes
        a hardlink to the first (its metadata, xattrs and data)."""
        for names in self.links.values():
            if len(names) == 1:
                continue
            names.sort()
            rel = names[0][1]
            first = children[rel.rpartition("/")[0]][rel]
            for _, rel in names[1:]:
                children[rel.rpartition("/")[0]][rel] = Entry(
                    rel, first.kind, first.mode, first.uid, first.gid, first.mtime_ns,
                    first.atime_ns, first.ctime_ns, None, first.size, first.target, first.rdev,
                    first.path, first.xattrs, first.data)

    def scan(self) -> Tree:
        try:
            st = os.stat(self.root)
        except FileNotFoundError:
            raise NotFoundError(f"{self.root}: no such directory") from None
        except OSError as e:
            raise ConvError(f"{self.root}: {e.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise NotFoundError(f"{self.root}: not a directory")
        try:
            names = os.listxattr(self.root, follow_symlinks=False)
        except OSError:
            names = None
        record = ("", st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_atime_ns,
                  st.st_ctime_ns, 0, 0, 0, _read_xattrs(self.root, names) if names else None,
                  "", None)
        top: dict[str, Entry] = {}
        self.build([record], [top], {}, -1)
        tree = Tree(top[""])
        # Every child comes from one directory listing, so its name is new
        # and its parent is a directory already in the tree: the scan fills
        # Tree's map directly instead of paying Tree.add's checks per entry.
        children = tree._children
        walk = _Walk(self.root, self.excluded, set(), self.relative)
        # Depth first with children in byte order: the same order Tree
        # iterates, so the first name of a hardlinked inode comes first.
        stack = [("", iter(walk.listing(self.root, self.root)))]
        kids = [children[""]]  # the children map of each directory in stack
        fork_after = _FORK_AFTER if forking() else None
        records: list = []
        count = done = 0
        feed = self.feed
        # Smaller batches while a feed waits for files: its encoder starts
        # on the first ones sooner.
        batch = _BATCH if feed is None else _FEED_BATCH
        fed: list | None = None if feed is None else []
        while stack:
            # in batches: the records of a whole large tree would double its memory
            walk.walk(stack, records, batch)
            count += self.build(records, kids, children, -1, done, fed)
            done += len(records)
            records.clear()
            if fed:
                feed.add(fed)  # type: ignore[union-attr]
                fed = []
            if stack and fork_after is not None and count >= fork_after:
                if feed is not None:
                    # the pieces are built out of tree order
                    feed.stop()
                    feed = None
                count += self.split(walk, stack, children)
                break
        if feed is not None:
            feed.end()
        tree._count += count
        self.resolve_links(children)
        return tree

    def split(self, walk: _Walk, stack: list[tuple[str, Iterator[str]]],
              children: dict[str, dict]) -> int:
        """Scan what ``stack`` has left with a forked child: pieces of each
        directory's unscanned names (``cut``), deepest directory first (tree
        order), claimed in turn from a pipe by whichever process is free. Each
        process claims in increasing order, so its own first name of an
        inode precedes its further ones; which of the two processes' first
        names comes first is settled by resolve_links."""
        pieces: list[tuple[str, str, list[str], bool]] = []
        for depth in range(len(stack) - 1, -1, -1):
            rel_prefix, names = stack[depth]
            self.cut(walk, rel_prefix, list(names), pieces, _EXPAND_DEPTH)
        built: dict[int, dict[str, Entry]] = {}
        count = self.share(walk, pieces, children, built) if len(pieces) <= _MAX_PIECES else 0
        if len(built) < len(pieces):
            # The pieces left are walked below out of the order this walk
            # claimed its own in: an inode it recorded in a later piece gets
            # its full record again (only the first in tree order counts).
            walk.seen = set()
        for i, (target, rel_prefix, names, descend) in enumerate(pieces):
            into = children.get(target)
            if into is None:
                continue  # below a directory that went while we walked
            got = built.get(i)
            if got is None:
                # not scanned (too many pieces), or failed: here, in tree
                # order, so an error is the one a sequential scan meets first
                count += self.build(walk.unit(rel_prefix, names, descend), [into], children, i)
            else:
                into.update(got)
        return count

    def cut(self, walk: _Walk, rel_prefix: str, names: list[str],
            pieces: list[tuple[str, str, list[str], bool]], expand: int) -> None:
        """Pieces of the directory ``rel_prefix``'s unscanned ``names``, in
        tree order: (the directory's tree path, rel_prefix, names, descend).
        A directory with few names left (a root's three top directories)
        would make a few huge pieces, the last of which one process walks
        while the other has nothing left: its subdirectories are cut too
        (a piece of the subdirectory's own record, then pieces of what it
        holds), ``expand`` levels down."""
        target = rel_prefix[:-1]
        if expand and 0 < len(names) < _EXPAND_BELOW:
            for name in names:
                rel = rel_prefix + name
                below = None
                if walk.excluded is None or not walk.excluded(rel):
                    # (by absolute path: this process may have moved into
                    # another directory, see _Walk)
                    try:
                        if stat.S_ISDIR(os.lstat(walk.abs_root + rel).st_mode):
                            below = walk.listing(walk.abs_root + rel, walk.full_root + rel)
                    except (OSError, ConvError):
                        pass  # met again, in order, by the walk of a whole piece
                if below is None:
                    pieces.append((target, rel_prefix, [name], True))
                else:
                    pieces.append((target, rel_prefix, [name], False))
                    self.cut(walk, rel + "/", below, pieces, expand - 1)
            return
        step = -(-len(names) // _PIECES_PER_DIR) or 1
        for i in range(0, len(names), step):
            pieces.append((target, rel_prefix, names[i:i + step], True))

    def share(self, walk: _Walk, pieces: list[tuple[str, str, list[str], bool]],
              children: dict[str, dict], built: dict[int, dict[str, Entry]]) -> int:
        """Scan ``pieces`` with a forked child; what each built piece's
        directory gains goes into ``built``. A piece that failed is left
        out (the caller scans it again to raise its error in order).

        The child sends each piece's records as it finishes it, and the
        parent builds what has arrived before it claims a piece of its
        own: building is the parent's cheaper work (1.3 us an entry against
        6), so the child, which only walks, gets the larger share and the
        parent is not left building half the tree after the child ends."""
        count = 0
        claims, w = os.pipe()
        results, sent = os.pipe()
        try:
            try:
                # one write of at most PIPE_BUF bytes: it fits, and no reader
                # can see half a number
                os.write(w, b"".join(i.to_bytes(4, "little") for i in range(len(pieces))))
            finally:
                os.close(w)
            with contextlib.suppress(OSError):  # room for pieces a busy parent has not read
                fcntl.fcntl(sent, fcntl.F_SETPIPE_SZ, 1 << 20)
            try:
                child = Forked(_child_walk, walk, pieces, claims, sent)
            except OSError:  # no process to spare: the caller scans the pieces alone
                return 0
            with child:
                os.close(sent)
                sent = -1
                ended = out_of_step = False
                arrived = select.poll()
                arrived.register(results, select.POLLIN)
                try:
                    while True:
                        while not ended and arrived.poll(0):
                            got = self.build_sent(results, built, children)
                            ended = got < 0
                            out_of_step = got == _OUT_OF_STEP
                            count += max(got, 0)
                        got = os.read(claims, 4)
                        if not got:
                            break
                        i = int.from_bytes(got, "little")
                        built[i] = mine = {}
                        count += self.build(walk.unit(*pieces[i][1:]), [mine],
                                            children, i)
                except ConvError:
                    del built[i]
                    _drain(claims)  # the child stops too
                while not ended and (got := self.build_sent(results, built, children)) >= 0:
                    count += got
                if not ended:
                    out_of_step = got == _OUT_OF_STEP
                if out_of_step:
                    child.cancel()  # it may be blocked writing what we no longer read
                else:
                    # a child that died sent fewer pieces: the caller scans them
                    with contextlib.suppress(ConvError):
                        child.result()
        finally:
            for fd in (claims, results, sent):
                if fd >= 0:
                    os.close(fd)
        return count

    def build_sent(self, fd: int, built: dict[int, dict[str, Entry]],
                   children: dict[str, dict]) -> int:
        """Build the next piece the child sent; how many entries, or -1 at
        the end (or a message cut short: the child died), or _OUT_OF_STEP
        for a length no piece can have."""
        head = _read_exactly(fd, _FRAME.size)
        if head is None:
            return -1
        size = _FRAME.unpack(head)[0]
        if size > _MAX_FRAME:
            return _OUT_OF_STEP  # no length the child sends: rescan its pieces here
        blob = _read_exactly(fd, size)
        if blob is None:
            return -1
        i, records = marshal.loads(blob)
        del blob
        built[i] = mine = {}
        return self.build(records, [mine], children, i)


#: the length of a piece's marshalled records, ahead of them in the pipe
_FRAME = struct.Struct("<Q")
#: no piece's records come near this (~40M entries); a larger length means
#: the stream is out of step, and is handled as a child that died
_MAX_FRAME = 1 << 32
_OUT_OF_STEP = -2


def _read_exactly(fd: int, size: int) -> bytearray | None:
    """``size`` bytes from a pipe, or None if it ends first."""
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = os.readv(fd, [view[got:]])
        if not n:
            return None
        got += n
    return buf


def _child_walk(walk: _Walk, pieces: list, claims: int, sent: int) -> None:
    """A forked child's part of a scan: the records of each piece it claims,
    sent to the parent as each is done, until no piece is left or one fails
    (then it takes the rest from the pipe, so the parent stops soon and
    meets the error itself, in tree order). ``walk`` is the child's copy of
    the parent's, so it knows the inodes recorded so far; the child is
    single-threaded, so it may chdir."""
    walk.relative = True
    walk.cwd = None
    try:
        while (got := os.read(claims, 4)):
            i = int.from_bytes(got, "little")
            blob = marshal.dumps((i, walk.unit(*pieces[i][1:])))
            view = memoryview(_FRAME.pack(len(blob)) + blob)
            del blob
            while view:
                view = view[os.write(sent, view):]
    except ConvError:
        _drain(claims)


def _drain(fd: int) -> None:
    while os.read(fd, 1 << 16):
        pass


_NO_RDEV = (0, 0)
_INTS_KEPT = 1 << 16


def source(path: str, opts: dict, ctx: Context) -> Tree:
    """The directory at ``path`` as a Tree."""
    scanner = _Scanner(os.fspath(path), opts.get("owner"), opts.get("exclude") or ())
    scanner.feed = ctx.file_feed
    # In the conv command the Tree (two objects an entry) lives to the end,
    # and is frozen: the collections after the scan, here and in forked
    # writer children, do not walk it (3 ms for a Debian root's 6.8k).
    with gc_paused(keep=ctx.one_shot), _own_cwd() as scanner.relative:
        return scanner.scan()


# --------------------------------------------------------------------------
# Sink

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _parts(path: str, what: str) -> tuple[str, ...]:
    """The components of a tree path, refusing anything that could climb
    out of the destination."""
    parts = tuple(path.split("/"))
    if any(p in ("", ".", "..") or "\0" in p for p in parts):
        raise CorruptError(f"{what} {path!r} escapes the destination directory; refused")
    return parts


class _DirCursor:
    """Open directory fds along one path below the destination root, reused
    while entries stay in the same directory. Each component is opened with
    O_NOFOLLOW relative to its parent."""

    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        self.parts: list[str] = []
        self.fds: list[int] = [root_fd]

    def get(self, parts: tuple[str, ...], path: str) -> int:
        keep = 0
        for a, b in zip(self.parts, parts, strict=False):
            if a != b:
                break
            keep += 1
        while len(self.parts) > keep:
            self.parts.pop()
            os.close(self.fds.pop())
        for part in parts[keep:]:
            self.fds.append(_open_child_dir(self.fds[-1], part, path))
            self.parts.append(part)
        return self.fds[-1]

    def close(self) -> None:
        self.get((), "")


def _open_child_dir(parent_fd: int, name: str, path: str) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise CorruptError(f"{path!r}: parent {name!r} is not a directory (a symlink?); "
                               "refused") from None
        if e.errno == errno.ENOENT:
            raise CorruptError(f"{path!r}: parent directory {name!r} is missing") from None
        raise


#: threads creating and finishing files beside the one moving data, files a
#: thread task handles, and how many batches each side may run ahead
_WORKERS = 2
_BATCH = 32
_AHEAD = 3

def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class _Extractor:
    def __init__(self, dest: str, ctx: Context) -> None:
        self.dest = dest
        self.ctx = ctx
        self.root = os.geteuid() == 0
        self.buf = bytearray(COPY_CHUNK)
        self.devices_skipped = 0
        self.owners_skipped = 0
        self.xattrs_failed = 0
        self.my_ids = (os.geteuid(), os.getegid())
        self.lock = threading.Lock()
        # New files are ours (set in run): chown only those that differ.
        self.chown_all = True
        # the host file plain-archive members come from, opened once
        self.src_path: str | None = None
        self.src_fd = -1

    def run(self, tree: Tree) -> None:
        try:
            os.mkdir(self.dest, 0o700)
        except FileExistsError:
            raise ConvError(f"{self.dest}: already exists") from None
        except FileNotFoundError:
            raise NotFoundError(f"{self.dest}: parent directory does not exist") from None
        root_fd = os.open(self.dest, _DIR_FLAGS)
        # A setgid parent gives new files its group: then every file is chowned.
        self.chown_all = bool(os.fstat(root_fd).st_mode & stat.S_ISGID)
        cursor = _DirCursor(root_fd)
        links = _DirCursor(root_fd)
        self.links = links
        dirs: list[Entry] = []
        # Files are created with their final permission bits (umask 0), so
        # most need no fchmod; directories stay 0o700 until the end.
        old_umask = os.umask(0)
        try:
            # Directories first, then file contents in the order that is
            # cheapest to read (a compressed archive streams once), then
            # everything else (hardlinks need their targets).
            entries = list(tree)
            for entry in entries:
                if entry.path == "":
                    dirs.append(entry)
                elif entry.is_dir():
                    self.create_at(cursor, tree, entry, root_fd)
                    dirs.append(entry)
            files = tree.data_order(entries) if hasattr(tree, "data_order") else [
                e for e in entries if e.kind is Kind.FILE and e.link is None and e.data]
            done = {id(e) for e in files}
            with self.progress(tree) as bar:
                self.regular_files(files, root_fd, bar)
            self.close_source()
            for entry in entries:
                if entry.path and not entry.is_dir() and id(entry) not in done:
                    self.create_at(cursor, tree, entry, root_fd)
            links.close()
            # Directory metadata last, deepest first (reversed pre-order):
            # creating children changes a directory's mtime and may need its
            # write permission. One open per directory, below the cursor's.
            for entry in reversed(dirs):
                if entry.path:
                    parts = _parts(entry.path, "entry")
                    fd = _open_child_dir(cursor.get(parts[:-1], entry.path), parts[-1],
                                         entry.path)
                else:
                    fd = os.dup(root_fd)
                try:
                    self.set_fd_metadata(fd, entry)
                except (OverflowError, ValueError) as e:
                    raise CorruptError(f"{entry.path!r}: metadata cannot be set: {e}") from None
                finally:
                    os.close(fd)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpaceError(f"{self.dest}: no space left on the device") from None
            raise
        finally:
            os.umask(old_umask)
            self.close_source()
            cursor.close()
            links.close()
            os.close(root_fd)
        self.report()

    def progress(self, tree: Tree):
        from convcore.progress import bar

        if self.ctx.quiet:
            return bar(None, "", disabled=True)
        total = sum(e.data.size for e in tree if e.data is not None and e.link is None)
        return self.ctx.progress(total, f"dir {os.path.basename(self.dest)}")

    def create_at(self, cursor: _DirCursor, tree: Tree, entry: Entry, root_fd: int) -> None:
        parts = _parts(entry.path, "entry")
        with self.errors(entry):
            self.create(tree, entry, parts, cursor.get(parts[:-1], entry.path), root_fd)

    def create(self, tree: Tree, entry: Entry, parts: tuple[str, ...], parent_fd: int,
               root_fd: int) -> None:
        name = parts[-1]
        if entry.link is not None:
            self.hardlink(entry, name, parent_fd)
        elif entry.kind is Kind.DIR:
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        elif entry.kind is Kind.FILE:
            self.regular(entry, name, parent_fd)
        elif entry.kind is Kind.SYMLINK:
            os.symlink(entry.target, name, dir_fd=parent_fd)
            self.set_path_metadata(parent_fd, name, entry, symlink=True)
        elif entry.kind in (Kind.CHAR, Kind.BLOCK):
            if not self.root:
                self.devices_skipped += 1
                return
            os.mknod(name, entry.kind.value | 0o600, os.makedev(*entry.rdev),
                     dir_fd=parent_fd)
            self.set_path_metadata(parent_fd, name, entry)
        elif entry.kind is Kind.FIFO:
            os.mkfifo(name, 0o600, dir_fd=parent_fd)
            self.set_path_metadata(parent_fd, name, entry)
        elif entry.kind is Kind.SOCKET:
            os.mknod(name, stat.S_IFSOCK | 0o600, dir_fd=parent_fd)
            self.set_path_metadata(parent_fd, name, entry)

    def hardlink(self, entry: Entry, name: str, parent_fd: int) -> None:
        target = _parts(entry.link, "hardlink target")
        target_fd = self.links.get(target[:-1], entry.link)
        try:
            os.link(target[-1], name, src_dir_fd=target_fd, dst_dir_fd=parent_fd,
                    follow_symlinks=False)
        except FileNotFoundError:
            raise CorruptError(f"{entry.path!r}: hardlink to missing {entry.link!r}") from None
        except PermissionError:
            raise CorruptError(f"{entry.path!r}: cannot hardlink to {entry.link!r} "
                               "(a directory?)") from None

    def regular(self, entry: Entry, name: str, parent_fd: int) -> None:
        fd = os.open(name, _FILE_FLAGS, entry.mode & 0o777, dir_fd=parent_fd)
        try:
            data = entry.data
            if data is not None and data.size:
                self.write_data(entry, data, fd)
            self.set_fd_metadata(fd, entry, created=True)
        finally:
            os.close(fd)

    def regular_files(self, files: list[Entry], root_fd: int, bar) -> None:
        """Create the regular files with data, in ``files`` order.

        Creating a file and setting its metadata are kernel work that
        waits on the filesystem (hundreds of us a file), so worker threads
        open the next files ahead and finish (owner, mode, xattrs, times,
        close) the written ones while this thread moves the data, in order
        (a streamed source reads once, front to back)."""
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        local = threading.local()
        cursors: list[_DirCursor] = []

        def create(batch: list[Entry]) -> list[int]:
            cursor = getattr(local, "cursor", None)
            if cursor is None:
                local.cursor = cursor = _DirCursor(root_fd)
                cursors.append(cursor)
            fds: list[int] = []
            try:
                for entry in batch:
                    with self.errors(entry):
                        parts = _parts(entry.path, "entry")
                        parent_fd = cursor.get(parts[:-1], entry.path)
                        # Created with its permission bits (umask is 0): only
                        # setuid, setgid and sticky need an fchmod, after fchown.
                        fds.append(os.open(parts[-1], _FILE_FLAGS, entry.mode & 0o777,
                                           dir_fd=parent_fd))
            except BaseException:
                _close_all(fds)
                raise
            return fds

        def finish(batch: list[Entry], fds: list[int]) -> None:
            try:
                for entry, fd in zip(batch, fds, strict=True):
                    with self.errors(entry):
                        self.set_fd_metadata(fd, entry, created=True)
            finally:
                _close_all(fds)

        # Batches: a thread task per file would cost about as much CPU as
        # the syscalls it runs.
        batches = [files[i:i + _BATCH] for i in range(0, len(files), _BATCH)]
        ahead: deque = deque()
        finishing: deque = deque()
        todo = iter(batches)
        pool = ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="conv-dir")
        try:
            while True:
                while len(ahead) < _AHEAD:
                    batch = next(todo, None)
                    if batch is None:
                        break
                    ahead.append((batch, pool.submit(create, batch)))
                if not ahead:
                    break
                batch, opened = ahead.popleft()
                fds = opened.result()
                try:
                    for entry, fd in zip(batch, fds, strict=True):
                        data = entry.data
                        if data is not None and data.size:
                            with self.errors(entry):
                                self.write_data(entry, data, fd)
                            bar.update(data.size)
                except BaseException:
                    _close_all(fds)
                    raise
                finishing.append((fds, pool.submit(finish, batch, fds)))
                while finishing and (finishing[0][1].done() or len(finishing) > _AHEAD):
                    finishing.popleft()[1].result()
            while finishing:
                finishing.popleft()[1].result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            for fds, finished in finishing:  # cancelled by an error: close them
                if finished.cancelled():
                    _close_all(fds)
            for _, opened in ahead:  # created ahead of an error
                if opened.done() and not opened.cancelled() and opened.exception() is None:
                    _close_all(opened.result())
            for cursor in cursors:
                cursor.close()

    @contextlib.contextmanager
    def errors(self, entry: Entry) -> Iterator[None]:
        """One-line errors for creating and filling ``entry``."""
        try:
            yield
        except FileExistsError:
            raise CorruptError(f"{entry.path!r}: appears twice in the tree") from None
        except ConvError:
            raise
        except (OverflowError, ValueError) as e:
            # a NUL in a symlink target, a device number or time out of range
            raise CorruptError(f"{entry.path!r}: cannot be created: {e}") from None
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpaceError(f"{self.dest}: no space left on the device") from None
            raise ConvError(f"{entry.path!r}: cannot extract: {e.strerror}") from None

    def write_data(self, entry: Entry, data, fd: int) -> None:
        kind = type(data)
        # Sized first so the holes Data.copy_to skips stay holes; data
        # written whole has none.
        if not (kind is BytesData or isinstance(data, FileRangeData) and not data.holes):
            try:
                os.ftruncate(fd, data.size)
            except OSError as e:
                if e.errno in (errno.EFBIG, errno.EINVAL, errno.ENOSPC):
                    raise NoSpaceError(f"{entry.path!r}: cannot make a file of "
                                       f"{data.size} bytes: {e.strerror}") from None
                raise
        if kind is FileRangeData:  # a member of a plain archive: open it once
            if data.path != self.src_path:
                self.close_source()
                self.src_fd = data._open()
                self.src_path = data.path
            data.copy_from_fd(self.src_fd, fd, 0, self.buf)
        else:
            data.copy_to(fd, 0, self.buf)

    def close_source(self) -> None:
        if self.src_path is not None:
            os.close(self.src_fd)
            self.src_path = None

    # -- metadata
    def _owner_ok(self, entry: Entry) -> bool:
        if self.root:
            return True
        if (entry.uid, entry.gid) != self.my_ids:
            with self.lock:  # worker threads count too
                self.owners_skipped += 1
        return False

    def _times(self, entry: Entry) -> tuple[int, int]:
        return (entry.atime_ns or entry.mtime_ns, entry.mtime_ns)

    def set_fd_metadata(self, fd: int, entry: Entry, created: bool = False) -> None:
        """Owner, mode, xattrs and times of an open node. ``created``: a
        file this run made with its permission bits and our ids."""
        chmod = not created or entry.mode & 0o7000
        if self._owner_ok(entry) and (not created or self.chown_all or
                                      (entry.uid, entry.gid) != self.my_ids):
            os.fchown(fd, entry.uid, entry.gid)
        if chmod:
            # after chown, which clears setuid/setgid
            os.fchmod(fd, entry.mode & 0o7777)
        for key, value in entry.xattrs.items():
            try:
                os.setxattr(fd, key, value)
            except OSError:
                with self.lock:
                    self.xattrs_failed += 1
        os.utime(fd, ns=self._times(entry))

    def set_path_metadata(self, parent_fd: int, name: str, entry: Entry,
                          symlink: bool = False) -> None:
        """Metadata of a node we cannot open (symlink, device, FIFO, socket)."""
        if self._owner_ok(entry):
            os.chown(name, entry.uid, entry.gid, dir_fd=parent_fd, follow_symlinks=False)
        if not symlink:
            # the node was just created by us, so following is safe
            os.chmod(name, entry.mode & 0o7777, dir_fd=parent_fd)
        if entry.xattrs:
            # the parent is pinned by its fd; the last component is not followed
            proc = f"/proc/self/fd/{parent_fd}/{name}"
            for key, value in entry.xattrs.items():
                try:
                    os.setxattr(proc, key, value, follow_symlinks=False)
                except OSError:
                    self.xattrs_failed += 1
        os.utime(name, ns=self._times(entry), dir_fd=parent_fd, follow_symlinks=False)

    def report(self) -> None:
        problems = []
        if self.devices_skipped:
            problems.append(f"{self.devices_skipped} device nodes skipped")
        if self.owners_skipped:
            problems.append(f"ownership not restored ({self.owners_skipped} entries)")
        if self.xattrs_failed:
            problems.append(f"{self.xattrs_failed} xattrs not restored")
        if problems and not self.ctx.quiet:
            who = "not root: " if not self.root and (self.devices_skipped or
                                                     self.owners_skipped) else ""
            print(f"conv: warning: {who}{', '.join(problems)}", file=sys.stderr)


def sink(tree: Tree, path: str, opts: dict, ctx: Context) -> None:
    """Extract ``tree`` into the new directory ``path``."""
    _Extractor(os.fspath(path), ctx).run(tree)
