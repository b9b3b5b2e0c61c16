"""Extended attributes as ext4 stores them: in the inode body when they fit,
else in one shared xattr block (identical blocks are stored once)."""

from __future__ import annotations

import struct

from conv_ext4.layout import (
    ACL_ENTRY,
    ACL_ENTRY_SHORT,
    ACL_GROUP,
    ACL_HEADER,
    ACL_USER,
    EXT4_ACL_VERSION,
    POSIX_ACL_XATTR_VERSION,
    XATTR_BLOCK_HEADER,
    XATTR_ENTRY,
    XATTR_MAGIC,
    XATTR_PREFIXES,
)
from convcore.errors import CorruptError, UnsupportedError

_M = 0xFFFFFFFF
_VFS_ACL_ENTRY = struct.Struct("<HHI")
_LE32 = struct.Struct("<I")
# Longest prefix first so "system.posix_acl_access" wins over "system.".
_PREFIXES = sorted(((p, i) for i, p in XATTR_PREFIXES.items()), key=lambda pi: -len(pi[0]))


class XattrItem:
    """One attribute in on-disk form: name index, name suffix, value."""

    __slots__ = ("index", "name", "value", "hash")

    def __init__(self, index: int, name: bytes, value: bytes) -> None:
        self.index = index
        self.name = name
        self.value = value
        self.hash = entry_hash(name, value)

    @property
    def entry_size(self) -> int:
        return (XATTR_ENTRY.size + len(self.name) + 3) & ~3

    @property
    def value_size(self) -> int:
        return (len(self.value) + 3) & ~3

    @property
    def sort_key(self) -> tuple[int, int, bytes]:
        # The kernel searches block entries in this order and stops early.
        return (self.index, len(self.name), self.name)


def entry_hash(name: bytes, value: bytes) -> int:
    """ext2fs_ext_attr_hash_entry: names as unsigned chars, value as le32 words."""
    h = 0
    for c in name:
        h = ((h << 5) & _M) ^ (h >> 27) ^ c
    if value:
        padded = value + bytes(-len(value) % 4)
        for (word,) in struct.iter_unpack("<I", padded):
            h = ((h << 16) & _M) ^ (h >> 16) ^ word
    return h


def _acl_to_disk(value: bytes, what: str) -> bytes:
    """The VFS's POSIX ACL xattr (version 2, 8-byte entries) -> ext4's form."""
    if len(value) < 4 or (len(value) - 4) % _VFS_ACL_ENTRY.size:
        raise CorruptError(f"{what}: POSIX ACL of {len(value)} bytes is malformed")
    (version,) = _LE32.unpack_from(value)
    if version != POSIX_ACL_XATTR_VERSION:
        raise CorruptError(f"{what}: POSIX ACL version {version} is not 2")
    out = [ACL_HEADER.struct.pack(EXT4_ACL_VERSION)]
    for tag, perm, ident in _VFS_ACL_ENTRY.iter_unpack(value[4:]):
        if tag in (ACL_USER, ACL_GROUP):
            out.append(ACL_ENTRY.struct.pack(tag, perm, ident))
        else:
            out.append(ACL_ENTRY_SHORT.struct.pack(tag, perm))
    return b"".join(out)


def _split_name(full: str, what: str) -> tuple[int, str]:
    for prefix, index in _PREFIXES:
        if full.startswith(prefix):
            return index, full[len(prefix):]
    raise UnsupportedError(f"{what}: xattr {full!r} has a namespace ext4 cannot store")


def to_items(xattrs: dict[str, bytes], what: str) -> list[XattrItem]:
    items = []
    for full, value in xattrs.items():
        index, suffix = _split_name(full, what)
        if index in (2, 3):
            if suffix:
                raise UnsupportedError(f"{what}: xattr {full!r} has a namespace ext4 cannot store")
            value = _acl_to_disk(value, what)
        name = suffix.encode("utf-8", "surrogateescape")
        if len(name) > 255:
            raise UnsupportedError(f"{what}: xattr name {full!r} is longer than 255 bytes")
        items.append(XattrItem(index, name, bytes(value)))
    items.sort(key=lambda it: it.sort_key)
    return items


def _pack_entries(items: list[XattrItem], buf: bytearray, first: int, end: int,
                  base: int) -> None:
    """Entries from ``first`` upward, values from ``end`` downward; value
    offsets count from ``base``."""
    pos = first
    vpos = end
    for it in items:
        vpos -= it.value_size
        buf[vpos:vpos + len(it.value)] = it.value
        XATTR_ENTRY.struct.pack_into(buf, pos, len(it.name), it.index,
                                     vpos - base if it.value else 0, 0,
                                     len(it.value), it.hash)
        buf[pos + XATTR_ENTRY.size:pos + XATTR_ENTRY.size + len(it.name)] = it.name
        pos += it.entry_size
    # the list ends with four zero bytes (already zero)


def split(items: list[XattrItem], ibody_space: int, block_size: int,
          what: str) -> tuple[list[XattrItem], list[XattrItem]]:
    """(in-inode, in-block) items: the inode body takes what fits, in order."""
    inode: list[XattrItem] = []
    used = 4 + 4  # magic + end marker
    rest: list[XattrItem] = []
    for it in items:
        need = it.entry_size + it.value_size
        if not rest and ibody_space and used + need <= ibody_space:
            inode.append(it)
            used += need
        else:
            rest.append(it)
    if rest:
        need = XATTR_BLOCK_HEADER.size + 4 + sum(it.entry_size + it.value_size for it in rest)
        if need > block_size:
            raise UnsupportedError(
                f"{what}: xattrs need {need} bytes, more than one {block_size}-byte "
                f"block (ea_inode is not supported)")
    return inode, rest


def ibody(items: list[XattrItem], space: int) -> bytes:
    """The in-inode xattr area (``space`` bytes after i_extra_isize)."""
    buf = bytearray(space)
    _LE32.pack_into(buf, 0, XATTR_MAGIC)
    _pack_entries(items, buf, 4, space, 4)
    return bytes(buf)


def block(items: list[XattrItem], block_size: int) -> bytes:
    """An xattr block without refcount and checksum (filled when written)."""
    buf = bytearray(block_size)
    h = 0
    for it in items:
        h = ((h << 16) & _M) ^ (h >> 16) ^ it.hash
    XATTR_BLOCK_HEADER.struct.pack_into(buf, 0, XATTR_MAGIC, 0, 1, h, 0, b"")
    _pack_entries(items, buf, XATTR_BLOCK_HEADER.size, block_size, 0)
    return bytes(buf)
