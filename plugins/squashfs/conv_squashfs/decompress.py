"""Bounded decompression for the reader: every block of an image is hostile.

Each function takes the compressed bytes and the most bytes the block may
hold (8 KiB for metadata, the block size for data) and returns the output, or
raises CorruptError naming ``what`` when the stream is damaged or would grow
past the limit. No codec is asked to allocate more than ``limit`` bytes.
"""

from __future__ import annotations

from collections.abc import Callable

from conv_squashfs.layout import COMPRESSOR_NAMES
from convcore.errors import CorruptError, UnsupportedError

#: (data, limit, what) -> decompressed bytes
Decompressor = Callable[[bytes, int, str], bytes]



def _too_big(what: str, limit: int) -> CorruptError:
    return CorruptError(f"{what} decompresses to more than {limit} bytes")


def _damaged(what: str, err: Exception) -> CorruptError:
    return CorruptError(f"{what} does not decompress: {err}")


def _gzip(data: bytes, limit: int, what: str) -> bytes:
    import zlib

    d = zlib.decompressobj()
    try:
        out = d.decompress(data, limit)
    except zlib.error as e:
        raise _damaged(what, e) from None
    if d.unconsumed_tail:
        raise _too_big(what, limit)
    if not d.eof:
        raise CorruptError(f"{what} is a truncated zlib stream")
    return out


def _lzma_format(fmt: int) -> Decompressor:
    def run(data: bytes, limit: int, what: str) -> bytes:
        import lzma

        d = lzma.LZMADecompressor(format=fmt)
        try:
            out = d.decompress(data, max_length=limit)
        except lzma.LZMAError as e:
            raise _damaged(what, e) from None
        if not d.eof:
            # Either output stopped at the limit with more to come, or the
            # stream was cut short; both are corrupt for a squashfs block.
            if not d.needs_input:
                raise _too_big(what, limit)
            raise CorruptError(f"{what} is a truncated {'xz' if fmt == 1 else 'lzma'} stream")
        return out

    return run


def _lz4(data: bytes, limit: int, what: str) -> bytes:
    import lz4.block

    try:
        # With uncompressed_size the output buffer is ``limit`` bytes and the
        # safe decoder stops with an error instead of writing past it.
        return lz4.block.decompress(data, uncompressed_size=limit)
    except lz4.block.LZ4BlockError as e:
        raise _damaged(what, e) from None


def _zstd(data: bytes, limit: int, what: str) -> bytes:
    import zstandard

    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as e:
        raise _damaged(what, e) from None
    # max_output_size is ignored when the frame declares its size, so check
    # the declaration first.
    if declared > limit:
        raise _too_big(what, limit)
    try:
        return zstandard.ZstdDecompressor().decompress(data, max_output_size=limit)
    except zstandard.ZstdError as e:
        raise _damaged(what, e) from None


def _lzo(data: bytes, limit: int, what: str) -> bytes:
    import lzo  # checked importable by decompressor_for

    try:
        return lzo.decompress(data, False, limit)
    except lzo.error as e:
        raise _damaged(what, e) from None


def decompressor_for(compression: int) -> Decompressor:
    """The bounded decompressor for a superblock compression id."""
    name = COMPRESSOR_NAMES.get(compression)
    if name is None:
        raise CorruptError(f"superblock: unknown compression id {compression}")
    if name == "lzo":
        try:
            import lzo  # noqa: F401
        except ImportError:
            raise UnsupportedError(
                "squashfs image is lzo-compressed; install python-lzo to read it") from None
        return _lzo
    if name == "gzip":
        return _gzip
    if name == "xz":
        import lzma
        return _lzma_format(lzma.FORMAT_XZ)
    if name == "lzma":
        import lzma
        return _lzma_format(lzma.FORMAT_ALONE)
    if name == "lz4":
        return _lz4
    return _zstd
