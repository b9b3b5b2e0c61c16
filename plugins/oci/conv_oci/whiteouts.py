"""Stacking image layers into one tree, per the image-spec's layer rules.

A layer is a changeset over the layers below it:

- ``DIR/.wh.NAME`` removes ``DIR/NAME`` (and everything below it) from the
  lower layers; ``DIR/.wh..wh..opq`` removes every lower child of ``DIR``.
  Both act only on LOWER layers, never on what the same layer adds, so a
  layer's whiteouts are applied before any of its entries, whatever the tar
  order.
- Any other entry replaces the lower one of that path (a directory over a
  directory keeps the lower children; anything else over a directory drops
  them).
- A member whose parent directories pass through a symlink of the tree
  below lands where the symlink leads, never above the root (``..`` stops
  at ``/``), as runtimes and umoci extract layers.
- A hardlink names an inode (the lower layer's or an earlier member's). The
  merge tracks inodes, not names: if the link's target name is later replaced
  or whited out, the hardlink keeps the old contents, and the final tree
  makes one of the surviving names the holder of each inode.

``whiteouts="overlay"`` (alias ``keep``) leaves overlayfs markers instead of
nothing: a char device 0:0 where ``.wh.NAME`` was, and
``trusted.overlay.opaque=y`` on an opaque directory, so a runtime stacking
this tree over others still hides their entries.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Iterator

from convcore.errors import CorruptError, UsageError
from convcore.tree import Entry, Kind, Tree, normpath

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OVERLAY_OPAQUE = "trusted.overlay.opaque"
#: a path component starting ``.wh..wh.`` (other than the opaque marker) is
#: aufs metadata, such as its hardlink directory ``.wh..wh.plnk``.
AUFS_META = "/.wh..wh."
#: symlinks followed in one path before it counts as a loop (Linux: 40).
MAX_SYMLINKS = 40


#: what a member is to the layer stacking (``classify``)
CHANGE, WHITEOUT, OPAQUE, META = "change", "whiteout", "opaque", "meta"


def classify(path: str) -> tuple[str, str]:
    """What the member at (clean) ``path`` does: ``(CHANGE, path)`` adds or
    replaces it; ``(WHITEOUT, hidden)`` removes ``hidden`` from lower layers;
    ``(OPAQUE, dir)`` removes every lower child of ``dir``; ``(META, path)``
    is aufs bookkeeping, not content."""
    parent, _, name = path.rpartition("/")
    if AUFS_META in parent or parent.startswith(AUFS_META[1:]):
        return META, path  # aufs bookkeeping (.wh..wh.plnk/...)
    if name == OPAQUE_MARKER:
        return OPAQUE, parent
    if name.startswith(AUFS_META[1:]):
        return META, path
    if name.startswith(WHITEOUT_PREFIX):
        hidden = name[len(WHITEOUT_PREFIX):]
        if hidden in ("", ".", "..") or "/" in hidden:
            raise CorruptError(f"bad whiteout name {path!r}")
        return WHITEOUT, f"{parent}/{hidden}" if parent else hidden
    return CHANGE, path


@contextlib.contextmanager
def layer_errors(layer: str) -> Iterator[None]:
    """CorruptErrors raised inside name the layer (once)."""
    try:
        yield
    except CorruptError as e:
        if str(e).startswith(f"layer {layer}"):
            raise
        raise CorruptError(f"layer {layer}: {e}") from None


class LayerMerger:
    """Apply layers bottom to top with ``apply``, then take the tree with
    ``finish``."""

    def __init__(self, whiteouts: str = "apply") -> None:
        if whiteouts not in ("apply", "keep", "overlay"):
            raise UsageError(f"oci[whiteouts=...]: {whiteouts!r} is not one of "
                             "apply, keep, overlay")
        self.markers = whiteouts != "apply"
        self.tree = Tree()
        #: path -> the Entry holding its inode's metadata and data, for every
        #: non-directory; hardlink names share their target's object.
        self._inode: dict[str, Entry] = {}

    # -- one layer
    def apply(self, entries: Iterable[Entry], layer: str) -> None:
        """Apply one layer's entries (tar order); ``layer`` names the blob in
        error messages."""
        with layer_errors(layer):
            self._apply(entries)

    def _apply(self, entries: Iterable[Entry]) -> None:
        changes: list[Entry] = []
        opaque: list[Entry] = []
        whiteouts: list[tuple[str, Entry]] = []
        for entry in entries:
            path = self._clean(entry.path)
            what, where = classify(path)
            if what is OPAQUE:
                opaque.append(dataclasses.replace(entry, path=where))
            elif what is WHITEOUT:
                whiteouts.append((where, entry))
            elif what is CHANGE:
                link = None if entry.link is None else self._clean(entry.link)
                if path != entry.path or link != entry.link:
                    entry = dataclasses.replace(entry, path=path, link=link)
                changes.append(entry)

        # Whiteouts hide lower layers only: all of them go before this
        # layer's own entries.
        for marker in opaque:
            real = self._real_dir(marker.path)
            if real is not None and self._is_dir(real):
                self.tree.clear_dir(real)
        for hidden, _ in whiteouts:
            real = self._resolve(hidden)
            if real is not None:
                self.tree.remove(real)

        for entry in changes:
            self._add(entry)

        if self.markers:
            # After the layer's entries, so that a directory the layer adds
            # holds its markers; a name the layer itself adds needs none.
            for hidden, entry in whiteouts:
                real = self._resolve(hidden)
                if real is not None and real not in self.tree and self._can_create(real):
                    self._add(Entry(real, Kind.CHAR, mode=0, uid=entry.uid, gid=entry.gid,
                                    mtime_ns=entry.mtime_ns, atime_ns=entry.atime_ns,
                                    ctime_ns=entry.ctime_ns, rdev=(0, 0)))
            for marker in opaque:
                self._mark_opaque(marker)

    @staticmethod
    def _clean(path: str) -> str:
        try:
            return normpath(path)
        except UsageError:
            raise CorruptError(f"member {path!r} escapes the root") from None

    def _resolve(self, path: str) -> str | None:
        """``path`` with the symlinks among its parent directories followed
        inside the root (``..`` stops at ``/``), as runtimes extract layers
        (a layer may write ``lib/x`` where a lower ``lib`` links to
        ``usr/lib``). None when a parent is a file."""
        parent, _, name = path.rpartition("/")
        if not parent or self._is_dir(parent):
            return path  # the common case: nothing to follow
        real = self._real_dir(parent)
        if real is None:
            return None
        return f"{real}/{name}" if real else name

    def _real_dir(self, path: str) -> str | None:
        """The directory ``path`` names, every symlink in it followed inside
        the root; missing components are kept (they will be created)."""
        todo = path.split("/")[::-1]
        parts: list[str] = []
        hops = 0
        while todo:
            part = todo.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if parts:
                    parts.pop()
                continue
            here = "/".join([*parts, part])
            entry = self.tree.get(here) if here in self.tree else None
            if entry is None or entry.is_dir():
                parts.append(part)
            elif entry.kind is Kind.SYMLINK:
                hops += 1
                if hops > MAX_SYMLINKS:
                    raise CorruptError(f"too many levels of symlinks in {path!r}")
                if entry.target.startswith("/"):
                    parts = []
                todo.extend(entry.target.split("/")[::-1])
            else:
                return None
        return "/".join(parts)

    def _is_dir(self, path: str) -> bool:
        if not path:
            return True
        return path in self.tree and self.tree.get(path).is_dir()

    def _can_create(self, path: str) -> bool:
        """Whether ``path`` can be added: its nearest existing ancestor is a
        directory (missing ones in between are created)."""
        parent = path.rpartition("/")[0]
        while parent and parent not in self.tree:
            parent = parent.rpartition("/")[0]
        return self._is_dir(parent)

    def _add(self, entry: Entry) -> None:
        if entry.path:
            real = self._resolve(entry.path)
            if real is None:
                raise CorruptError(f"{entry.path!r}: a parent directory is a file")
            link = entry.link
            if link is not None:
                link = self._resolve(link) or link
            if real != entry.path or link != entry.link:
                entry = dataclasses.replace(entry, path=real, link=link)
        path = entry.path
        old = self.tree.get(path) if path in self.tree else None
        if not path and entry.kind is not Kind.DIR:
            raise CorruptError(f"the root is replaced by a {entry.kind.name.lower()}")
        if entry.link is not None:
            target = entry.link
            if target == path or target not in self.tree or self.tree.get(target).is_dir():
                raise CorruptError(f"hardlink {path!r} to missing {target!r}")
            inode = self._inode[target]
            self.tree.add(dataclasses.replace(inode, path=path, link=target))
            self._inode[path] = inode
            return
        if entry.kind is Kind.DIR:
            if self.markers and old is not None and old.is_dir():
                # An opaque directory stays opaque under a later layer's
                # version of it: the markers hide what lies below the image.
                flag = old.xattrs.get(OVERLAY_OPAQUE)
                if flag is not None and OVERLAY_OPAQUE not in entry.xattrs:
                    entry = dataclasses.replace(entry,
                                                xattrs={**entry.xattrs, OVERLAY_OPAQUE: flag})
            self._inode.pop(path, None)
        else:
            self._inode[path] = entry
        self.tree.add(entry)

    def _mark_opaque(self, marker: Entry) -> None:
        path = self._real_dir(marker.path)
        if path is None:
            return
        if path not in self.tree:
            if not self._can_create(path):
                return
            self._add(Entry(path, Kind.DIR, mode=0o755, uid=marker.uid, gid=marker.gid,
                            mtime_ns=marker.mtime_ns, atime_ns=marker.atime_ns,
                            ctime_ns=marker.ctime_ns))
        entry = self.tree.get(path)
        if entry.is_dir():
            entry.xattrs = {**entry.xattrs, OVERLAY_OPAQUE: b"y"}

    # -- the result
    def finish(self) -> Tree:
        """The merged tree: each inode held by its first surviving name, its
        other names hardlinks to that one."""
        merged = self.tree
        out = Tree(merged.root)
        out.default_dir_mode = merged.default_dir_mode
        holder: dict[int, str] = {}
        for entry in merged:
            if not entry.path:
                continue
            if entry.is_dir():
                out.add(entry)
                continue
            inode = self._inode[entry.path]
            first = holder.get(id(inode))
            if first is None:
                holder[id(inode)] = entry.path
                out.add(inode if inode.path == entry.path and inode.link is None
                        else dataclasses.replace(inode, path=entry.path, link=None))
            else:
                out.add(dataclasses.replace(inode, path=entry.path, link=first))
        return out


def markers_to_whiteouts(tree: Tree) -> Tree:
    """The reverse of ``whiteouts=overlay``: overlayfs markers (char 0:0,
    ``trusted.overlay.opaque=y``) become a layer's ``.wh.`` entries, the
    opaque marker first in its directory."""
    out = Tree(_without_opaque(tree.root))
    out.info = tree.info
    for entry in tree:
        if not entry.path:
            if OVERLAY_OPAQUE in entry.xattrs:
                out.add(_opaque_marker(entry))
            continue
        if entry.kind is Kind.CHAR and entry.rdev == (0, 0) and entry.link is None:
            parent, _, name = entry.path.rpartition("/")
            out.add(Entry(f"{parent}/{WHITEOUT_PREFIX}{name}" if parent
                          else WHITEOUT_PREFIX + name, Kind.FILE, mode=0o644,
                          uid=entry.uid, gid=entry.gid, mtime_ns=entry.mtime_ns,
                          atime_ns=entry.atime_ns, ctime_ns=entry.ctime_ns))
        elif entry.is_dir() and OVERLAY_OPAQUE in entry.xattrs:
            out.add(_without_opaque(entry))
            out.add(_opaque_marker(entry))
        else:
            out.add(entry)
    return out


def _without_opaque(entry: Entry) -> Entry:
    if OVERLAY_OPAQUE not in entry.xattrs:
        return entry
    xattrs = {k: v for k, v in entry.xattrs.items() if k != OVERLAY_OPAQUE}
    return dataclasses.replace(entry, xattrs=xattrs)


def _opaque_marker(directory: Entry) -> Entry:
    path = f"{directory.path}/{OPAQUE_MARKER}" if directory.path else OPAQUE_MARKER
    return Entry(path, Kind.FILE, mode=0o644, uid=directory.uid, gid=directory.gid,
                 mtime_ns=directory.mtime_ns, atime_ns=directory.atime_ns,
                 ctime_ns=directory.ctime_ns)
