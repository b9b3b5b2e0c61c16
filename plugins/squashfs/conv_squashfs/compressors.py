"""SquashFS codecs: compress/decompress one block, and the compressor-options block.

Each codec writes the stream format squashfs-tools does, with its defaults,
so the kernel and unsquashfs read our blocks and mksquashfs's defaults need
no options block (gzip's zlib streams come from libdeflate where installed,
faster than zlib and a little smaller). ``compress`` is thread-safe and releases the
GIL inside the codec library, so a thread pool uses every core.

Readers use ``codec_from_superblock(compression_id, options_bytes, block_size)``
and ``Codec.decompress(data, max_size)``, which never produces more than
``max_size`` bytes (a hostile block cannot balloon memory).
"""

from __future__ import annotations

import threading
import zlib
from typing import ClassVar

from conv_squashfs import layout
from convcore.errors import CorruptError, UnsupportedError, UsageError


class Codec:
    """One compressor configured for one image."""

    name: ClassVar[str] = ""
    comp_id: ClassVar[int] = 0
    default_level: ClassVar[int | None] = None

    def __init__(self, block_size: int, level: int | None = None) -> None:
        self.block_size = block_size
        self.level = self.default_level if level is None else level

    def compress(self, data) -> bytes:
        """Compress one block (bytes-like); the result may be larger than the
        input, callers then store the block uncompressed."""
        raise NotImplementedError

    def decompress(self, data, max_size: int) -> bytes:
        """Decompress one block into at most ``max_size`` bytes; CorruptError
        when the data is not a valid stream or would produce more."""
        raise NotImplementedError

    def options(self) -> bytes | None:
        """The compressor-options structure, or None when mksquashfs's defaults
        apply (then no options block is written)."""
        return None

    @classmethod
    def from_options(cls, block_size: int, raw: bytes | None) -> Codec:
        """The codec an image's options block describes (None: defaults)."""
        return cls(block_size)

    def _too_big(self, max_size: int) -> CorruptError:
        return CorruptError(f"{self.name} block decompresses to more than {max_size} bytes")

    def _bad(self, err: Exception) -> CorruptError:
        return CorruptError(f"{self.name} block does not decompress: {err}")


class GzipCodec(Codec):
    """zlib streams (with the zlib header), as mksquashfs's gzip."""

    name = "gzip"
    comp_id = layout.COMP_GZIP
    default_level = 9
    window_size = 15

    def __init__(self, block_size: int, level: int | None = None) -> None:
        super().__init__(block_size, level)
        if not 1 <= self.level <= 9:
            raise UsageError(f"squashfs[level={self.level}]: gzip levels are 1 to 9")
        self._compress = _zlib_stream_compressor()

    def compress(self, data) -> bytes:
        return self._compress(data, self.level)

    def decompress(self, data, max_size: int) -> bytes:
        d = zlib.decompressobj()
        try:
            out = d.decompress(data, max_size)
        except zlib.error as e:
            raise self._bad(e) from None
        if d.unconsumed_tail:
            raise self._too_big(max_size)
        if not d.eof:
            raise self._bad(ValueError("stream is truncated"))
        return out

    def options(self) -> bytes | None:
        if self.level == self.default_level:
            return None
        return layout.GZIP_OPTIONS.pack(self.level, self.window_size, 0)

    @classmethod
    def from_options(cls, block_size: int, raw: bytes | None) -> Codec:
        if raw is None:
            return cls(block_size)
        opts = _read_options(layout.GZIP_OPTIONS, raw, cls.name)
        if not 1 <= opts.compression_level <= 9:
            raise CorruptError(f"gzip options: bad level {opts.compression_level}")
        return cls(block_size, opts.compression_level)


def _zlib_stream_compressor():
    """``compress(data, level)`` giving a zlib stream: libdeflate's (the
    ``deflate`` distribution) where installed, else zlib's. The same format
    that every zlib reads (the kernel's, unsquashfs's); on a Debian root's
    blocks at level 6, 3x faster than zlib with output 1.4% smaller, and it
    lets go of the GIL too. Its bytes differ from zlib's: an image is the
    same for the same input, options and libdeflate."""
    try:
        from deflate import zlib_compress
    except ImportError:
        return zlib.compress
    return zlib_compress


def _lzma_decompress(codec: Codec, fmt: int, data, max_size: int) -> bytes:
    """xz and lzma blocks: at most ``max_size`` bytes out, one whole stream."""
    lzma = codec._lzma  # type: ignore[attr-defined]
    d = lzma.LZMADecompressor(format=fmt)
    try:
        out = d.decompress(data, max_size)
    except lzma.LZMAError as e:
        raise codec._bad(e) from None
    if not d.eof:
        raise codec._too_big(max_size) if not d.needs_input else codec._bad(
            ValueError("stream is truncated"))
    return out


class XzCodec(Codec):
    """xz streams with CRC32 check and an LZMA2 dictionary of one block; with
    BCJ filters, every filter is tried and the smallest result kept (and the
    plain one competes too), like mksquashfs."""

    name = "xz"
    comp_id = layout.COMP_XZ
    default_level = 6  # LZMA_PRESET_DEFAULT

    def __init__(self, block_size: int, level: int | None = None, bcj: str = "",
                 dictionary_size: int | None = None) -> None:
        super().__init__(block_size, level)
        import lzma
        if not 0 <= self.level <= 9:
            raise UsageError(f"squashfs[level={self.level}]: xz presets are 0 to 9")
        self.dictionary_size = dictionary_size or block_size
        self.filter_mask = 0
        for name in (n.strip().lower() for n in bcj.split(",") if n.strip()):
            if name not in layout.XZ_FILTER_NAMES:
                raise UsageError(f"squashfs[bcj={bcj}]: unknown filter {name!r} "
                                 f"(known: {', '.join(layout.XZ_FILTER_NAMES)})")
            self.filter_mask |= layout.XZ_FILTER_NAMES[name]
        self._chains = [self._chain(None)]
        for name, bit in layout.XZ_FILTER_NAMES.items():
            if self.filter_mask & bit:
                self._chains.append(self._chain(name))
        self._lzma = lzma

    def _chain(self, bcj: str | None) -> list[dict]:
        import lzma
        lzma2: dict = {"id": lzma.FILTER_LZMA2, "preset": self.level,
                       "dict_size": self.dictionary_size}
        # The same literal/position tuning mksquashfs applies per BCJ filter.
        if bcj == "armthumb":
            lzma2["lp"] = 1
        elif bcj in ("powerpc", "arm", "sparc"):
            lzma2.update(lp=2, lc=2)
        elif bcj == "ia64":
            lzma2.update(pb=4, lp=4, lc=0)
        if bcj is None:
            return [lzma2]
        ids = {"x86": lzma.FILTER_X86, "powerpc": lzma.FILTER_POWERPC,
               "ia64": lzma.FILTER_IA64, "arm": lzma.FILTER_ARM,
               "armthumb": lzma.FILTER_ARMTHUMB, "sparc": lzma.FILTER_SPARC}
        return [{"id": ids[bcj]}, lzma2]

    def compress(self, data) -> bytes:
        lzma = self._lzma
        best = None
        for chain in self._chains:
            out = lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32,
                                filters=chain)
            if best is None or len(out) < len(best):
                best = out
        return best  # type: ignore[return-value]

    def decompress(self, data, max_size: int) -> bytes:
        return _lzma_decompress(self, self._lzma.FORMAT_XZ, data, max_size)

    def options(self) -> bytes | None:
        if self.dictionary_size == self.block_size and not self.filter_mask:
            return None
        return layout.XZ_OPTIONS.pack(self.dictionary_size, self.filter_mask)

    @classmethod
    def from_options(cls, block_size: int, raw: bytes | None) -> Codec:
        if raw is None:
            return cls(block_size)
        opts = _read_options(layout.XZ_OPTIONS, raw, cls.name)
        names = [n for n, bit in layout.XZ_FILTER_NAMES.items()
                 if opts.executable_filters & bit]
        if not 4096 <= opts.dictionary_size <= (1 << 30):
            raise CorruptError(f"xz options: bad dictionary size {opts.dictionary_size}")
        return cls(block_size, bcj=",".join(names), dictionary_size=opts.dictionary_size)


class LzmaCodec(Codec):
    """Legacy LZMA "alone" streams (unsquashfs reads them; Linux does not)."""

    name = "lzma"
    comp_id = layout.COMP_LZMA
    default_level = 5  # squashfs-tools' LZMA_OPTIONS
    props_size = 5

    def __init__(self, block_size: int, level: int | None = None) -> None:
        super().__init__(block_size, level)
        import lzma
        if not 0 <= self.level <= 9:
            raise UsageError(f"squashfs[level={self.level}]: lzma presets are 0 to 9")
        self._lzma = lzma
        self._filters = [{"id": lzma.FILTER_LZMA1, "preset": self.level,
                          "dict_size": block_size}]

    def compress(self, data) -> bytes:
        lzma = self._lzma
        out = bytearray(lzma.compress(data, format=lzma.FORMAT_ALONE, filters=self._filters))
        # The alone header's 8-byte size field is "unknown" (-1) from the encoder;
        # squashfs-tools fills in the real size, which the decoder then checks.
        out[self.props_size:self.props_size + 8] = len(data).to_bytes(8, "little")
        return bytes(out)

    def decompress(self, data, max_size: int) -> bytes:
        return _lzma_decompress(self, self._lzma.FORMAT_ALONE, data, max_size)


class Lz4Codec(Codec):
    """Raw LZ4 blocks (no frame); ``level`` selects LZ4 HC at that level."""

    name = "lz4"
    comp_id = layout.COMP_LZ4
    default_level = None

    def __init__(self, block_size: int, level: int | None = None, hc: bool | None = None) -> None:
        super().__init__(block_size, level)
        try:
            import lz4.block
        except ImportError:
            raise UnsupportedError("squashfs lz4 needs the 'lz4' package (pip install lz4)") \
                from None
        self._block = lz4.block
        self.hc = (level is not None) if hc is None else hc
        if self.level is not None and not 1 <= self.level <= 12:
            raise UsageError(f"squashfs[level={self.level}]: lz4 HC levels are 1 to 12")

    def compress(self, data) -> bytes:
        if self.hc:
            return self._block.compress(data, mode="high_compression",
                                        compression=self.level or 9, store_size=False)
        return self._block.compress(data, store_size=False)

    def decompress(self, data, max_size: int) -> bytes:
        try:
            return self._block.decompress(data, uncompressed_size=max_size)
        except Exception as e:  # lz4.block.LZ4BlockError
            raise self._bad(e) from None

    def options(self) -> bytes | None:
        # mksquashfs always records the lz4 format version.
        return layout.LZ4_OPTIONS.pack(layout.LZ4_LEGACY, layout.LZ4_HC if self.hc else 0)

    @classmethod
    def from_options(cls, block_size: int, raw: bytes | None) -> Codec:
        if raw is None:
            raise CorruptError("lz4 image has no compressor options block")
        opts = _read_options(layout.LZ4_OPTIONS, raw, cls.name)
        if opts.version != layout.LZ4_LEGACY:
            raise UnsupportedError(f"lz4 options: unknown lz4 format version {opts.version}")
        return cls(block_size, hc=bool(opts.flags & layout.LZ4_HC))


class ZstdCodec(Codec):
    """Zstandard frames (with the content size, no checksum), one compressor
    context per thread."""

    name = "zstd"
    comp_id = layout.COMP_ZSTD
    default_level = 15

    def __init__(self, block_size: int, level: int | None = None) -> None:
        super().__init__(block_size, level)
        import zstandard
        if self.level == 0 or not -(1 << 17) <= self.level <= zstandard.MAX_COMPRESSION_LEVEL:
            raise UsageError(f"squashfs[level={self.level}]: zstd levels are 1 to "
                             f"{zstandard.MAX_COMPRESSION_LEVEL} (or negative)")
        self._zstd = zstandard
        self._local = threading.local()

    def compress(self, data) -> bytes:
        cctx = getattr(self._local, "cctx", None)
        if cctx is None:
            cctx = self._local.cctx = self._zstd.ZstdCompressor(level=self.level)
        return cctx.compress(data)

    def decompress(self, data, max_size: int) -> bytes:
        zstandard = self._zstd
        dctx = getattr(self._local, "dctx", None)
        if dctx is None:
            dctx = self._local.dctx = zstandard.ZstdDecompressor()
        try:
            declared = zstandard.frame_content_size(data)
        except zstandard.ZstdError as e:
            raise self._bad(e) from None
        if declared > max_size:
            raise self._too_big(max_size)
        try:
            return dctx.decompress(data, max_output_size=max_size)
        except zstandard.ZstdError as e:
            raise self._bad(e) from None

    def options(self) -> bytes | None:
        if self.level == self.default_level:
            return None
        return layout.ZSTD_OPTIONS.pack(self.level & 0xFFFFFFFF)

    @classmethod
    def from_options(cls, block_size: int, raw: bytes | None) -> Codec:
        if raw is None:
            return cls(block_size)
        level = _read_options(layout.ZSTD_OPTIONS, raw, cls.name).compression_level
        if level >= 1 << 31:
            level -= 1 << 32
        if level == 0:
            raise CorruptError("zstd options: compression level 0")
        return cls(block_size, level)


class LzoCodec(Codec):
    """LZO1X (python-lzo, when installed): lzo1x_999 at level 8 (mksquashfs's
    default), or lzo1x_1 with ``level=1``; python-lzo offers no other."""

    name = "lzo"
    comp_id = layout.COMP_LZO
    default_level = 8
    algorithm_1x_1 = 0
    algorithm_1x_999 = 4

    def __init__(self, block_size: int, level: int | None = None) -> None:
        super().__init__(block_size, level)
        try:
            import lzo
        except ImportError:
            raise UnsupportedError("squashfs lzo needs the 'python-lzo' package") from None
        if self.level not in (1, 8):
            raise UsageError(f"squashfs[level={self.level}]: lzo offers level 1 (lzo1x_1) "
                             f"or 8 (lzo1x_999)")
        self._lzo = lzo

    def compress(self, data) -> bytes:
        # python-lzo's level 9 is lzo1x_999_compress (level 8 inside liblzo).
        return self._lzo.compress(bytes(data), 1 if self.level == 1 else 9, False)

    def decompress(self, data, max_size: int) -> bytes:
        try:
            return self._lzo.decompress(bytes(data), False, max_size)
        except Exception as e:  # lzo.error
            raise self._bad(e) from None

    def options(self) -> bytes | None:
        if self.level == self.default_level:
            return None
        return layout.LZO_OPTIONS.pack(self.algorithm_1x_1, 0)

    @classmethod
    def from_options(cls, block_size: int, raw: bytes | None) -> Codec:
        # Every LZO1X variant decompresses alike; the options only say how it was made.
        if raw is not None:
            _read_options(layout.LZO_OPTIONS, raw, cls.name)
        return cls(block_size)


CODECS: dict[str, type[Codec]] = {c.name: c for c in
                                  (GzipCodec, XzCodec, LzmaCodec, Lz4Codec, ZstdCodec, LzoCodec)}
CODECS_BY_ID: dict[int, type[Codec]] = {c.comp_id: c for c in CODECS.values()}


def _read_options(struct_layout: layout.Layout, raw: bytes, name: str):
    if len(raw) < struct_layout.size:
        raise CorruptError(f"{name} compressor options are {len(raw)} bytes, "
                           f"expected {struct_layout.size}")
    return struct_layout.read(raw)


def make_codec(name: str, block_size: int, level: int | None = None, bcj: str = "") -> Codec:
    """The codec a writer uses for ``comp=name`` ``level=`` ``bcj=``."""
    try:
        cls = CODECS[name]
    except KeyError:
        raise UsageError(f"squashfs[comp={name}]: unknown compressor "
                         f"(known: {', '.join(CODECS)})") from None
    if bcj and cls is not XzCodec:
        raise UsageError(f"squashfs[bcj={bcj}]: BCJ filters need comp=xz")
    if cls is XzCodec:
        return XzCodec(block_size, level, bcj)
    return cls(block_size, level)


def codec_from_superblock(compression_id: int, options: bytes | None, block_size: int) -> Codec:
    """The codec a reader needs, from the superblock's id and options block."""
    try:
        cls = CODECS_BY_ID[compression_id]
    except KeyError:
        raise UnsupportedError(f"unknown squashfs compressor id {compression_id}") from None
    return cls.from_options(block_size, options)
