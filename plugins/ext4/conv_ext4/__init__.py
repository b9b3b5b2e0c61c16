"""conv-ext4: write and read ext2/ext3/ext4 filesystems in userspace.

Only registration lives here; the writer and reader are imported when a stage
runs, so loading conv's plugins stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable

from convcore import hookimpl
from convcore.format import TREE, Format, Option, parse_bool

EXT4_MAGIC_OFFSET = 1024 + 56


def _encode(tree, opts, ctx):
    from conv_ext4.writer import encode
    return encode(tree, opts, ctx)


def _decode(volume, opts, ctx):
    from conv_ext4.reader import decode
    return decode(volume, opts, ctx)


def _size_or_min(text: str):
    from convcore.format import parse_size
    return "min" if text == "min" else parse_size(text)


OPTIONS = [
    Option("fs", "ext4", "filesystem flavour", choices=("ext2", "ext3", "ext4")),
    Option("size", None, "image size (e.g. 2G); 'min' for the smallest that fits; "
           "default: sized from the tree with room to spare", _size_or_min),
    Option("block_size", 4096, "block size in bytes", int, choices=("1024", "2048", "4096")),
    Option("inodes", None, "number of inodes (default: from the tree, with room to spare)", int),
    Option("label", "", "volume label (up to 16 bytes)"),
    Option("uuid", None, "filesystem UUID (default: derived from the seed)"),
    Option("journal", None, "yes/no: a journal (default: yes for ext3/ext4)", parse_bool),
    Option("features", "", "add or drop features by mke2fs name, e.g. ^metadata_csum,^has_journal"),
    Option("reserved", 5.0, "percent of blocks reserved for root", float),
    Option("recover", True, "reading: yes/no: replay a journal that needs recovery (in "
           "memory; the image is never written), as mounting would", parse_bool),
]


def _formats() -> list[Format]:
    return [Format(
        name=name,
        help=f"{name} filesystem: written from a tree, read back into one",
        options=[Option(o.name, name if o.name == "fs" else o.default, o.help, o.parse,
                        o.choices) for o in OPTIONS],
        encode=_encode, encode_kind=TREE,
        decode=_decode, decode_kind=TREE,
        layer="filesystem",
    ) for name in ("ext4", "ext3", "ext2")]


@hookimpl
def conv_register_formats(register: Callable[[Format], None]) -> None:
    for fmt in _formats():
        register(fmt)


@hookimpl
def conv_detect(head: bytes) -> str | None:
    magic = head[EXT4_MAGIC_OFFSET:EXT4_MAGIC_OFFSET + 2]
    return "ext4" if magic == b"\x53\xef" else None
