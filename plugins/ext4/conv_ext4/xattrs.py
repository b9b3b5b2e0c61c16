"""Extended attributes: in the inode body after i_extra_isize, and in one
(possibly shared) xattr block. POSIX ACLs are stored in ext4's compact form
and handed out in the form getxattr(2) returns."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from conv_ext4 import layout
from conv_ext4.layout import (
    ACL_GROUP,
    ACL_UNDEFINED_ID,
    ACL_USER,
    EXT4_ACL_VERSION,
    POSIX_ACL_XATTR_VERSION,
    XATTR_INDEX_ENCRYPTION,
    XATTR_MAGIC,
    XATTR_PREFIXES,
    XATTR_SIZE_MAX,
)
from convcore.errors import CorruptError

XATTR_HEADER = layout.XATTR_BLOCK_HEADER.struct
XATTR_ENTRY = layout.XATTR_ENTRY.struct
ACL_HEADER = layout.ACL_HEADER.struct
ACL_SHORT = layout.ACL_ENTRY_SHORT.struct
ACL_FULL = layout.ACL_ENTRY.struct
HIDDEN_INDEXES = {XATTR_INDEX_ENCRYPTION}
ACL_INDEXES = {2, 3}  # system.posix_acl_access, system.posix_acl_default
__all__ = ["XATTR_HEADER", "XATTR_MAGIC", "parse", "acl_to_xattr"]


def acl_to_xattr(value: bytes, where: str) -> bytes:
    """ext4's on-disk ACL (short entries for the _OBJ/MASK/OTHER tags) to the
    posix_acl_xattr form of the VFS (every entry 8 bytes, version 2)."""
    if len(value) < ACL_HEADER.size or ACL_HEADER.unpack_from(value)[0] != EXT4_ACL_VERSION:
        raise CorruptError(f"{where}: POSIX ACL has a bad header")
    out = bytearray(ACL_HEADER.pack(POSIX_ACL_XATTR_VERSION))
    pos = ACL_HEADER.size
    while pos < len(value):
        if pos + ACL_SHORT.size > len(value):
            raise CorruptError(f"{where}: POSIX ACL entry is truncated")
        tag, perm = ACL_SHORT.unpack_from(value, pos)
        if tag in (ACL_USER, ACL_GROUP):
            if pos + ACL_FULL.size > len(value):
                raise CorruptError(f"{where}: POSIX ACL entry is truncated")
            ident = ACL_FULL.unpack_from(value, pos)[2]
            pos += ACL_FULL.size
        else:
            ident = ACL_UNDEFINED_ID
            pos += ACL_SHORT.size
        out += ACL_FULL.pack(tag, perm, ident)
    return bytes(out)


RawEntry = tuple[int, bytes, int, int, int]  # index, name, value_offs, value_inum, size


def iter_entries(buf: bytes, start: int, end: int, where: str) -> Iterator[RawEntry]:
    """Entries from ``start`` up to the 4 zero bytes that end the list."""
    pos = start
    while True:
        if pos + 4 > end:
            raise CorruptError(f"{where}: xattr list runs past its end")
        if buf[pos: pos + 4] == b"\0\0\0\0":
            return
        if pos + XATTR_ENTRY.size > end:
            raise CorruptError(f"{where}: xattr entry is truncated")
        name_len, index, value_offs, value_inum, size, _ = XATTR_ENTRY.unpack_from(buf, pos)
        name_end = pos + XATTR_ENTRY.size + name_len
        if name_end > end:
            raise CorruptError(f"{where}: xattr name runs past its end")
        yield index, bytes(buf[pos + XATTR_ENTRY.size: name_end]), value_offs, value_inum, size
        pos = (name_end + 3) & ~3


def parse(buf: bytes, entries_start: int, end: int, value_base: int, where: str,
          read_ea_inode: Callable[[int, int], bytes] | None) -> dict[str, bytes]:
    """Attributes in ``buf``: entries from ``entries_start``, values at
    ``value_base + value_offs`` and inside ``end``. ``read_ea_inode(ino,
    size)`` fetches a value stored in its own inode (ea_inode feature).
    Inline data comes back as ``system.data``; the caller takes it out."""
    out: dict[str, bytes] = {}
    for index, name, value_offs, value_inum, size in iter_entries(buf, entries_start, end, where):
        if index in HIDDEN_INDEXES:
            continue
        prefix = XATTR_PREFIXES.get(index)
        if prefix is None:
            raise CorruptError(f"{where}: xattr {name!r} has unknown name index {index}")
        if size > XATTR_SIZE_MAX:
            raise CorruptError(f"{where}: xattr value of {size} bytes is too large")
        if value_inum:
            if read_ea_inode is None:
                raise CorruptError(f"{where}: xattr value in inode {value_inum} without ea_inode")
            value = read_ea_inode(value_inum, size)
        else:
            lo = value_base + value_offs
            if value_offs < 0 or lo + size > end or lo < entries_start:
                raise CorruptError(
                    f"{where}: xattr value at offset {value_offs} (+{size}) lies outside")
            value = bytes(buf[lo: lo + size])
        try:
            text = name.decode()
        except UnicodeDecodeError:
            raise CorruptError(f"{where}: xattr name {name!r} is not UTF-8") from None
        if index in ACL_INDEXES:
            if text:
                raise CorruptError(f"{where}: ACL xattr has a name suffix {text!r}")
            value = acl_to_xattr(value, where)
        out[prefix + text] = value
    return out
