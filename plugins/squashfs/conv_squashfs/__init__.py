"""conv-squashfs: write and read SquashFS 4.0 images in userspace.

Only registration lives here; the writer and reader are imported when a stage
runs, so loading conv's plugins stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable

from convcore import hookimpl
from convcore.format import TREE, Format, Option, parse_bool, parse_size

SQUASHFS_MAGIC = b"hsqs"


def _encode(tree, opts, ctx):
    from conv_squashfs.writer import encode
    return encode(tree, opts, ctx)


def _prepare(opts, ctx):
    from conv_squashfs.early import prepare
    return prepare(opts, ctx)


def _decode(volume, opts, ctx):
    from conv_squashfs.reader import decode
    return decode(volume, opts, ctx)


def _uid(text: str) -> int:
    return int(text)


OPTIONS = [
    Option("comp", "gzip", "compressor", choices=("gzip", "xz", "lzma", "lz4", "zstd", "lzo")),
    Option("level", None, "compression level; default as mksquashfs: gzip 1-9 (9), zstd 1-22 "
           "(15), xz/lzma preset 0-9 (6/5), lz4 HC 1-12 (plain lz4), lzo 1 or 8 (8)", int),
    Option("block_size", 128 * 1024, "data block size, 4K to 1M, a power of two", parse_size),
    Option("bcj", "", "xz only: BCJ filters, e.g. x86,arm"),
    Option("all_root", False, "make every file owned by root", parse_bool),
    Option("uid", None, "force this owner uid on every file", _uid),
    Option("gid", None, "force this group gid on every file", _uid),
    Option("mtime", None, "force this modification time (seconds) on every entry", int),
    Option("exclude", "", "globs of paths to leave out, comma-separated; a glob without '/' "
           "also matches a name anywhere"),
    Option("fragments", True, "pack files smaller than a block into fragment blocks",
           parse_bool),
    Option("dedup", True, "store identical files once", parse_bool),
    Option("xattrs", True, "store extended attributes", parse_bool),
    Option("threads", None, "compression threads (default: all cores)", int),
]


@hookimpl
def conv_register_formats(register: Callable[[Format], None]) -> None:
    register(Format(
        name="squashfs",
        help="SquashFS 4.0 compressed read-only filesystem",
        options=OPTIONS,
        encode=_encode, encode_kind=TREE, prepare_encode=_prepare,
        decode=_decode, decode_kind=TREE,
        layer="filesystem",
    ))


@hookimpl
def conv_detect(head: bytes) -> str | None:
    return "squashfs" if head[:4] == SQUASHFS_MAGIC else None
