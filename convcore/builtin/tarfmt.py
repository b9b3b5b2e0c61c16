"""tar: a tree from a tar archive and back (plain, gz, zst, xz).

Public API for other plugins (OCI layers):

- ``iter_entries(path, compression=None) -> Iterator[Entry]``: the members
  of one archive in archive order, not merged, with lazy data.
- ``write_tar(tree, path, compression, ctx, level=None)``: a tree as a new
  PAX tar.

The reader and writer live in ``tar_reader`` / ``tar_writer``; this module
only imports them when called, so ``conv --help`` stays fast.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from convcore.format import Context, Option

if TYPE_CHECKING:
    from convcore.tree import Entry, Tree


def _level(text: str) -> int:
    value = int(text)
    if not -7 <= value <= 22:
        raise ValueError(f"{text!r} is not a compression level (gz 1-9, xz 0-9, zst 1-22)")
    return value


OPTIONS: list[Option] = [
    Option("compress", None, "none, gz, zst or xz (default: from the file name's suffix; "
           "reading detects it by magic)", choices=("none", "gz", "zst", "xz")),
    Option("level", None, "compression level (default: gz 6, zst 3, xz 6)", parse=_level),
]


def iter_entries(path: str | os.PathLike, compression: str | None = None) -> Iterator[Entry]:
    """The members of one tar archive as Entries, in archive order, without
    merging (see ``convcore.builtin.tar_reader.iter_entries``)."""
    from convcore.builtin.tar_reader import iter_entries as _iter

    return _iter(path, compression)


def write_tar(tree: Tree, path: str | os.PathLike, compression: str = "none",
              ctx: Context | None = None, level: int | None = None,
              digest: Any = None) -> None:
    """Write ``tree`` as a new PAX tar at ``path`` (``compression``: none,
    gz, zst or xz); ``digest`` (hashlib) is fed the uncompressed stream of
    a compressed output."""
    from convcore.builtin.tar_writer import write_tar as _write

    _write(tree, path, compression, ctx, level, digest)


def source(path: str, opts: dict, ctx: Context) -> Tree:
    from convcore.builtin.tar_reader import read_tree

    return read_tree(path)


def sink(tree: Tree, path: str, opts: dict, ctx: Context) -> None:
    from convcore.builtin.tar_codec import compression_for_name

    compression = opts.get("compress") or compression_for_name(path)
    write_tar(tree, path, compression, ctx, opts.get("level"))
