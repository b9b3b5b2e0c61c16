"""Writing the squashfs xattr table, deduplicated as mksquashfs does it.

Identical xattr sets share one id. Values longer than 128 bytes (less when a
set is huge) are stored out of line, and any value of 8 bytes or more that
was stored before is referenced instead of repeated.
"""

from __future__ import annotations

from conv_squashfs import layout
from conv_squashfs.compressors import Codec
from conv_squashfs.metadata_writer import MetadataWriter, build_table
from convcore.errors import UnsupportedError

_PREFIXES = [(prefix.encode(), kind) for kind, prefix in layout.XATTR_PREFIXES.items()]
_TARGET_MAX = 65536
_U32 = 0xFFFFFFFF  # mksquashfs's XATTR_TARGET_MAX for one set's inline size


class XattrWriter:
    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self.kv = MetadataWriter(codec)
        self._ids = bytearray()
        self._count = 0
        self._sets: dict[tuple, int] = {}
        self._values: dict[bytes, int] = {}  # value -> ref of its XATTR_VALUE record
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return self._count

    def add(self, xattrs: dict[str, bytes], path: str) -> int:
        """The xattr id of this set (INVALID_XATTR when empty)."""
        if not xattrs:
            return layout.INVALID_XATTR
        items = []
        for name, value in sorted(xattrs.items()):
            raw = name.encode("utf-8", "surrogateescape")
            for prefix, kind in _PREFIXES:
                if raw.startswith(prefix) and len(raw) > len(prefix):
                    if len(raw) - len(prefix) > 0xFFFF or len(value) > _U32:
                        raise UnsupportedError(f"/{path}: xattr {name[:40]!r} is too large "
                                               f"for squashfs")
                    items.append((kind, raw[len(prefix):], raw, bytes(value)))
                    break
            else:
                if name not in self._warned:
                    self._warned.add(name)
                    import logging  # rare: ~4 ms of every start-up at module level
                    logging.getLogger(__name__).warning(
                        "squashfs cannot store xattr %s (on /%s); left out", name, path)
        if not items:
            return layout.INVALID_XATTR
        key = tuple((raw, value) for _, _, raw, value in items)
        found = self._sets.get(key)
        if found is not None:
            return found

        # Which values go out of line: shrink the inline limit until the set
        # fits the target, as mksquashfs does.
        inline_max = layout.XATTR_INLINE_MAX
        while True:
            ool = [len(v) > inline_max for _, _, _, v in items]
            total = sum(4 + len(n) + 4 + (layout.XATTR_OOL_SIZE if o else len(v))
                        for (_, n, _, v), o in zip(items, ool, strict=True))
            if total <= _TARGET_MAX or inline_max == layout.XATTR_OOL_SIZE:
                break
            inline_max = max(inline_max // 2, layout.XATTR_OOL_SIZE)

        refs: list[int | None] = []
        for (_, _, _, value), out_of_line in zip(items, ool, strict=True):
            ref = self._values.get(value) if len(value) >= layout.XATTR_OOL_SIZE else None
            if ref is None and out_of_line:
                ref = self.kv.ref
                self.kv.write(layout.XATTR_VALUE.pack(len(value)) + value)
                self._values[value] = ref
            refs.append(ref)

        first = self.kv.ref
        size = 0
        for (kind, name, raw, value), ref in zip(items, refs, strict=True):
            if ref is not None:
                self.kv.write(layout.XATTR_ENTRY.pack(kind | layout.XATTR_VALUE_OOL, len(name))
                              + name + layout.XATTR_VALUE.pack(layout.XATTR_OOL_SIZE)
                              + layout.XATTR_OOL_REF.pack(ref))
            else:
                self.kv.write(layout.XATTR_ENTRY.pack(kind, len(name)) + name)
                if len(value) >= layout.XATTR_OOL_SIZE:
                    self._values[value] = self.kv.ref
                self.kv.write(layout.XATTR_VALUE.pack(len(value)) + value)
            size += len(raw) + 1 + len(value)

        index = self._count
        self._ids += layout.XATTR_ID.pack(first, len(items), size)
        self._count += 1
        self._sets[key] = index
        return index

    def build(self, base: int) -> tuple[bytes, int]:
        """The whole table placed at absolute ``base``: key/value blocks, id
        blocks, the id table header and its index. Returns (bytes, offset of
        the header = the superblock's xattr_id_table_start)."""
        kv = bytes(self.kv.finish())
        id_blocks, id_index = build_table(self.codec, self._ids, base + len(kv))
        header = layout.XATTR_ID_TABLE.pack(base, self._count, 0)
        table_start = base + len(kv) + len(id_blocks)
        return kv + id_blocks + header + id_index, table_start
