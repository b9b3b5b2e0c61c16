"""Bounded decompression for the reader: every block of an image is hostile.

The codecs live in ``compressors`` (shared with the writer); this adapts
them to the reader's calls, which name the block being read so that a
damaged one is reported where it is.
"""

from __future__ import annotations

from collections.abc import Callable

from conv_squashfs.compressors import codec_from_superblock
from convcore.errors import CorruptError

#: (data, limit, what) -> at most ``limit`` decompressed bytes, or CorruptError
Decompressor = Callable[[bytes, int, str], bytes]


def decompressor_for(compression: int, options: bytes | None, block_size: int) -> Decompressor:
    """The bounded decompressor for a superblock's compression id and
    options block."""
    codec = codec_from_superblock(compression, options, block_size)

    def run(data: bytes, limit: int, what: str) -> bytes:
        try:
            return codec.decompress(data, limit)
        except CorruptError as e:
            raise CorruptError(f"{what}: {e}") from None

    return run


def options_block_stored(data: bytes, limit: int, what: str) -> bytes:
    """The compressor options block is always stored uncompressed (it says
    how to decompress everything else)."""
    raise CorruptError(f"{what} is marked compressed")
