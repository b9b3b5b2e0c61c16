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


def _str2hashbuf(msg: bytes, num: int) -> list[int]:
    """Pack up to ``num`` words of ``msg`` big-end-first, padded with the length."""
    length = len(msg)
    pad = (length | (length << 8)) & _M
    pad = (pad | (pad << 16)) & _M
    out: list[int] = []
    val = pad
    msg = msg[: num * 4]
    for i, c in enumerate(msg):
        val = (c + (val << 8)) & _M
        if i % 4 == 3:
            out.append(val)
            val = pad
    if len(out) < num and len(msg) % 4:
        out.append(val)
    while len(out) < num:
        out.append(pad)
    return out


def _rotl(x: int, s: int) -> int:
    return ((x << s) | (x >> (32 - s))) & _M


def _half_md4(buf: list[int], x: list[int]) -> None:
    a, b, c, d = buf

    def f(x_, y, z):
        return z ^ (x_ & (y ^ z))

    def g(x_, y, z):
        return ((x_ & y) + ((x_ ^ y) & z)) & _M

    def h(x_, y, z):
        return x_ ^ y ^ z

    a = _rotl((a + f(b, c, d) + x[0]) & _M, 3)
    d = _rotl((d + f(a, b, c) + x[1]) & _M, 7)
    c = _rotl((c + f(d, a, b) + x[2]) & _M, 11)
    b = _rotl((b + f(c, d, a) + x[3]) & _M, 19)
    a = _rotl((a + f(b, c, d) + x[4]) & _M, 3)
    d = _rotl((d + f(a, b, c) + x[5]) & _M, 7)
    c = _rotl((c + f(d, a, b) + x[6]) & _M, 11)
    b = _rotl((b + f(c, d, a) + x[7]) & _M, 19)

    a = _rotl((a + g(b, c, d) + x[1] + _K2) & _M, 3)
    d = _rotl((d + g(a, b, c) + x[3] + _K2) & _M, 5)
    c = _rotl((c + g(d, a, b) + x[5] + _K2) & _M, 9)
    b = _rotl((b + g(c, d, a) + x[7] + _K2) & _M, 13)
    a = _rotl((a + g(b, c, d) + x[0] + _K2) & _M, 3)
    d = _rotl((d + g(a, b, c) + x[2] + _K2) & _M, 5)
    c = _rotl((c + g(d, a, b) + x[4] + _K2) & _M, 9)
    b = _rotl((b + g(c, d, a) + x[6] + _K2) & _M, 13)

    a = _rotl((a + h(b, c, d) + x[3] + _K3) & _M, 3)
    d = _rotl((d + h(a, b, c) + x[7] + _K3) & _M, 9)
    c = _rotl((c + h(d, a, b) + x[2] + _K3) & _M, 11)
    b = _rotl((b + h(c, d, a) + x[6] + _K3) & _M, 15)
    a = _rotl((a + h(b, c, d) + x[1] + _K3) & _M, 3)
    d = _rotl((d + h(a, b, c) + x[5] + _K3) & _M, 9)
    c = _rotl((c + h(d, a, b) + x[0] + _K3) & _M, 11)
    b = _rotl((b + h(c, d, a) + x[4] + _K3) & _M, 15)

    buf[0] = (buf[0] + a) & _M
    buf[1] = (buf[1] + b) & _M
    buf[2] = (buf[2] + c) & _M
    buf[3] = (buf[3] + d) & _M


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
