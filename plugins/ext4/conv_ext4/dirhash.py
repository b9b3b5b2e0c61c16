"""Directory-index hashes (e2fsprogs lib/ext2fs/dirhash.c): half_md4 and tea.

An htree sorts a directory's names by these 31-bit hashes; e2fsck and the
kernel recompute them, so they must match bit for bit. Names are hashed as
unsigned chars (the superblock says so with FLAGS_UNSIGNED_HASH).
"""

from __future__ import annotations

import struct

from conv_ext4.layout import HASH_HALF_MD4, HASH_TEA

_M = 0xFFFFFFFF
_K2 = 0o13240474631
_K3 = 0o15666365641
_DEFAULT_SEED = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)
_SEED = struct.Struct("<4I")
_BE_WORDS = [struct.Struct(f">{n}I") for n in range(9)]


def _str2hashbuf(msg: bytes, num: int) -> list[int]:
    """Up to ``num`` big-endian words of ``msg``, padded with its length.
    (e2fsprogs shifts chars into a register seeded with the padding; after
    four chars the padding is gone, so whole words are plain big-endian.)"""
    length = len(msg)
    pad = (length | (length << 8)) & _M
    pad = (pad | (pad << 16)) & _M
    msg = msg[: num * 4]
    full, rem = divmod(len(msg), 4)
    out = list(_BE_WORDS[full].unpack_from(msg)) if full else []
    if rem:
        out.append(((pad << (8 * rem)) | int.from_bytes(msg[full * 4:], "big")) & _M)
    out.extend([pad] * (num - len(out)))
    return out


def _half_md4(buf: list[int], x: list[int]) -> None:
    # the three MD4 rounds written out: no per-step function calls on this hot path
    a, b, c, d = buf
    m = _M
    a = (a + (d ^ (b & (c ^ d))) + x[0]) & m
    a = ((a << 3) | (a >> 29)) & m
    d = (d + (c ^ (a & (b ^ c))) + x[1]) & m
    d = ((d << 7) | (d >> 25)) & m
    c = (c + (b ^ (d & (a ^ b))) + x[2]) & m
    c = ((c << 11) | (c >> 21)) & m
    b = (b + (a ^ (c & (d ^ a))) + x[3]) & m
    b = ((b << 19) | (b >> 13)) & m
    a = (a + (d ^ (b & (c ^ d))) + x[4]) & m
    a = ((a << 3) | (a >> 29)) & m
    d = (d + (c ^ (a & (b ^ c))) + x[5]) & m
    d = ((d << 7) | (d >> 25)) & m
    c = (c + (b ^ (d & (a ^ b))) + x[6]) & m
    c = ((c << 11) | (c >> 21)) & m
    b = (b + (a ^ (c & (d ^ a))) + x[7]) & m
    b = ((b << 19) | (b >> 13)) & m
    a = (a + ((b & c) + ((b ^ c) & d)) + x[1] + _K2) & m
    a = ((a << 3) | (a >> 29)) & m
    d = (d + ((a & b) + ((a ^ b) & c)) + x[3] + _K2) & m
    d = ((d << 5) | (d >> 27)) & m
    c = (c + ((d & a) + ((d ^ a) & b)) + x[5] + _K2) & m
    c = ((c << 9) | (c >> 23)) & m
    b = (b + ((c & d) + ((c ^ d) & a)) + x[7] + _K2) & m
    b = ((b << 13) | (b >> 19)) & m
    a = (a + ((b & c) + ((b ^ c) & d)) + x[0] + _K2) & m
    a = ((a << 3) | (a >> 29)) & m
    d = (d + ((a & b) + ((a ^ b) & c)) + x[2] + _K2) & m
    d = ((d << 5) | (d >> 27)) & m
    c = (c + ((d & a) + ((d ^ a) & b)) + x[4] + _K2) & m
    c = ((c << 9) | (c >> 23)) & m
    b = (b + ((c & d) + ((c ^ d) & a)) + x[6] + _K2) & m
    b = ((b << 13) | (b >> 19)) & m
    a = (a + (b ^ c ^ d) + x[3] + _K3) & m
    a = ((a << 3) | (a >> 29)) & m
    d = (d + (a ^ b ^ c) + x[7] + _K3) & m
    d = ((d << 9) | (d >> 23)) & m
    c = (c + (d ^ a ^ b) + x[2] + _K3) & m
    c = ((c << 11) | (c >> 21)) & m
    b = (b + (c ^ d ^ a) + x[6] + _K3) & m
    b = ((b << 15) | (b >> 17)) & m
    a = (a + (b ^ c ^ d) + x[1] + _K3) & m
    a = ((a << 3) | (a >> 29)) & m
    d = (d + (a ^ b ^ c) + x[5] + _K3) & m
    d = ((d << 9) | (d >> 23)) & m
    c = (c + (d ^ a ^ b) + x[0] + _K3) & m
    c = ((c << 11) | (c >> 21)) & m
    b = (b + (c ^ d ^ a) + x[4] + _K3) & m
    b = ((b << 15) | (b >> 17)) & m
    buf[0] = (buf[0] + a) & m
    buf[1] = (buf[1] + b) & m
    buf[2] = (buf[2] + c) & m
    buf[3] = (buf[3] + d) & m

def _tea(buf: list[int], x: list[int]) -> None:
    total = 0
    b0, b1 = buf[0], buf[1]
    a, b, c, d = x[0], x[1], x[2], x[3]
    for _ in range(16):
        total = (total + 0x9E3779B9) & _M
        b0 = (b0 + ((((b1 << 4) + a) & _M) ^ ((b1 + total) & _M) ^ (((b1 >> 5) + b) & _M))) & _M
        b1 = (b1 + ((((b0 << 4) + c) & _M) ^ ((b0 + total) & _M) ^ (((b0 >> 5) + d) & _M))) & _M
    buf[0] = (buf[0] + b0) & _M
    buf[1] = (buf[1] + b1) & _M


class DirHasher:
    """Hashes names for one filesystem (its hash seed and version)."""

    def __init__(self, seed: bytes, version: int = HASH_HALF_MD4) -> None:
        words = _SEED.unpack(seed)
        self.seed = words if any(words) else _DEFAULT_SEED
        if version not in (HASH_HALF_MD4, HASH_TEA):
            raise ValueError(f"unsupported directory hash version {version}")
        self.version = version

    def __call__(self, name: bytes) -> tuple[int, int]:
        """(major hash with the low bit clear, minor hash) of a name."""
        buf = list(self.seed)
        if self.version == HASH_HALF_MD4:
            for pos in range(0, max(len(name), 1), 32):
                _half_md4(buf, _str2hashbuf(name[pos:], 8))
            major, minor = buf[1], buf[2]
        else:
            for pos in range(0, max(len(name), 1), 16):
                _tea(buf, _str2hashbuf(name[pos:], 4))
            major, minor = buf[0], buf[1]
        return major & ~1 & _M, minor
