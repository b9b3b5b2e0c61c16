"""Read ext2/ext3/ext4 images into a Tree, and a small dissect-style API.

``Ext4(volume)`` (conv_ext4.filesystem) checks the superblock and group
descriptors, ``.inode(n)`` and ``.get(path)`` give ``INode`` objects
(conv_ext4.inode: ``listdir()``, ``open()``, ``readlink()``, ``xattrs``);
``decode()`` walks the directory tree into a ``convcore.tree.Tree`` whose file
contents are ``SegmentData`` pieces of the volume (inline files are
``BytesData``).

Everything read from the image is hostile: block and inode numbers are
checked against the filesystem before use, every directory may be reached
once, and with metadata_csum (or gdt_csum) every checksum is verified;
failures are one-line ``CorruptError``s naming the inode or block.

An image whose journal needs recovery (copied after a crash or while
mounted) is read as a mount would show it: the journal is replayed in memory
first (conv_ext4.journal_replay); ``ext4[recover=no]`` reads the disk as it is.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from conv_ext4 import layout as L
from conv_ext4.filesystem import AFTER_REPLAY, Ext4
from conv_ext4.inode import INode
from convcore.blockdev import Volume
from convcore.errors import CorruptError
from convcore.tree import Entry, Tree

__all__ = ["Ext4", "INode", "decode"]


def decode(volume: Volume, opts: dict | None = None, ctx=None) -> Tree:
    """Read the whole directory tree of an ext2/3/4 volume.

    Children come in byte order of name, depth first, so the first name of a
    hardlinked inode is the first one a tree walk meets; later names are
    ``Entry(link=first_path)``.
    """
    recover = (opts or {}).get("recover")
    fs = Ext4(volume, recover=recover is None or bool(recover))
    if not fs.replayed:
        return _walk(fs)
    try:
        return _walk(fs)
    except CorruptError as e:
        raise CorruptError(f"{e}{AFTER_REPLAY}") from None


def _walk(fs: Ext4) -> Tree:
    root = fs.root
    if not root.is_dir():
        raise CorruptError("inode 2 (the root) is not a directory")
    tree = Tree(root.entry(""))
    tree.info = fs.info()
    first_paths: dict[int, str] = {}
    dirs_seen: dict[int, str] = {L.ROOT_INO: ""}
    stack: list[tuple[str, Iterator[tuple[bytes, int]]]] = [("", _sorted_children(root))]
    while stack:
        parent, children = stack[-1]
        item = next(children, None)
        if item is None:
            stack.pop()
            continue
        name, ino = item
        path = f"{parent}/{os.fsdecode(name)}" if parent else os.fsdecode(name)
        if ino < fs.first_ino and ino != L.ROOT_INO:
            raise CorruptError(f"/{path}: entry points at reserved inode {ino}")
        first = first_paths.get(ino)
        if first is not None:
            held = tree.get(first)
            tree.add(Entry(path, held.kind, mode=held.mode, uid=held.uid, gid=held.gid,
                           mtime_ns=held.mtime_ns, atime_ns=held.atime_ns,
                           ctime_ns=held.ctime_ns, crtime_ns=held.crtime_ns, size=held.size,
                           target=held.target, rdev=held.rdev, link=first,
                           xattrs=dict(held.xattrs), data=held.data))
            continue
        if ino in dirs_seen:
            raise CorruptError(
                f"directory inode {ino} is reachable twice: /{dirs_seen[ino]} and /{path}")
        node = fs.inode(ino)
        tree.add(node.entry(path))
        if node.is_dir():
            dirs_seen[ino] = path
            stack.append((path, _sorted_children(node)))
        else:
            first_paths[ino] = path
    return tree


def _sorted_children(node: INode) -> Iterator[tuple[bytes, int]]:
    entries = sorted((name, ino) for name, ino, _ in node.iterdir())
    for i in range(1, len(entries)):
        if entries[i][0] == entries[i - 1][0]:
            raise CorruptError(
                f"directory inode {node.ino}: name {entries[i][0]!r} appears twice")
    return iter(entries)
