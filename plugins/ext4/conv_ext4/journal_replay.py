"""Replay an internal jbd2 journal in memory, the way mounting would.

A filesystem copied after a crash (incompat flag RECOVER set) keeps its
newest metadata, and with data=journal its newest data, in the journal.
``replay_journal(fs)`` reads the log with the three passes of the kernel's
and e2fsprogs' recovery.c (scan for the end of the log, collect revoke
records, replay) and returns where each replayed filesystem block's copy is
in the journal; the reader then reads through an ``OverlayVolume``, the
image with those blocks taken from the journal. The input is never written.
Fast commits (ext4's own log after the jbd2 one) are not replayed: a journal
that has some pending is one UnsupportedError line, one without is replayed
like any other.

What ends the log is what ends it for e2fsck: a block without the jbd2
magic or with the wrong sequence, an unknown block type, a transaction
without its commit block, a commit block that fails its checksum. Where
e2fsck reports a corrupt journal and still goes on (a commit block or a
data block failing its checksum, a descriptor block failing its checksum
inside the log), conv gives the same filesystem e2fsck's replay gives and
one warning naming the journal block; nonsense in the structure itself (the
journal superblock, block numbers outside the journal or the filesystem,
a log that runs around the whole journal) is a one-line CorruptError.

Facts from the kernel's Documentation/filesystems/ext4/journal.rst and
e2fsprogs' e2fsck/recovery.c, e2fsck/journal.c and lib/ext2fs/kernel-jbd.h.
"""

from __future__ import annotations

import os
import struct
import zlib
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from typing import TYPE_CHECKING

from conv_ext4 import layout as L
from conv_ext4.csum import crc32c_raw
from convcore.blockdev import Volume
from convcore.errors import CorruptError, UnsupportedError
from convcore.tree import Kind

if TYPE_CHECKING:
    from conv_ext4.filesystem import Ext4

_HEADER = struct.Struct(">III")  # h_magic, h_blocktype, h_sequence
_BE16 = struct.Struct(">H")
_BE32 = struct.Struct(">I")
_BE64 = struct.Struct(">Q")
_MAGIC_BYTES = _BE32.pack(L.JBD2_MAGIC)

JBD2_FEATURE_COMPAT_CHECKSUM = 0x1
JBD2_KNOWN_INCOMPAT = (L.JBD2_FEATURE_INCOMPAT_REVOKE | L.JBD2_FEATURE_INCOMPAT_64BIT
                       | L.JBD2_FEATURE_INCOMPAT_ASYNC_COMMIT | L.JBD2_FEATURE_INCOMPAT_CSUM_V2
                       | L.JBD2_FEATURE_INCOMPAT_CSUM_V3 | L.JBD2_FEATURE_INCOMPAT_FAST_COMMIT)
JBD2_CRC32_CHKSUM = 1
JBD2_CRC32_CHKSUM_SIZE = 4
JBD2_FLAG_ESCAPE = 1
JBD2_FLAG_SAME_UUID = 2
JBD2_FLAG_LAST_TAG = 8
#: journal_block_tag_t with csum v2 and 64bit, and journal_block_tag3_t.
TAG_BYTES_V2_64 = 14
TAG3_BYTES = 16
TAIL_BYTES = 4  # jbd2_journal_block_tail: crc32c of a descriptor or revoke block
REVOKE_HEADER_BYTES = 16  # journal header + r_count
COMMIT_CHKSUM_TYPE = 12
COMMIT_CHKSUM_SIZE = 13
COMMIT_CHKSUM = 16
COMMIT_SEC = 48
_JSB_CHECKSUM = L.JOURNAL_SUPERBLOCK.offsets["s_checksum"]

JBD2_MIN_JOURNAL_BLOCKS = 1024
JBD2_DEFAULT_FAST_COMMIT_BLOCKS = 256
#: ext4_fc_tl (tag, length) and the ext4_fc_head value (features, tid).
_FC_HEAD = struct.Struct("<HHII")
EXT4_FC_TAG_HEAD = 0x0009

#: how to read such an image anyway, for the errors that stop a replay.
AS_ON_DISK = "ext4[recover=no] reads the image as it is on disk"

_SCAN, _REVOKE, _REPLAY = "scan", "revoke", "replay"

# crc32_be (journal checksum v1) through zlib's reflected crc32: a
# non-reflected CRC equals the bit reversal of the reflected one over
# bit-reversed bytes, so the whole block stays in C.
_REVERSE_BITS = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))


def _reverse32(x: int) -> int:
    return int(f"{x:032b}"[::-1], 2)


def crc32_be(crc: int, data: bytes) -> int:
    """The kernel's ``crc32_be(crc, data)`` (no inversions)."""
    state = zlib.crc32(data.translate(_REVERSE_BITS), _reverse32(crc) ^ 0xFFFFFFFF)
    return _reverse32(state ^ 0xFFFFFFFF)


def _tid_gt(x: int, y: int) -> bool:
    """Transaction ids compare modulo 2^32, as the kernel's tid_gt()."""
    return 0 < (x - y) & 0xFFFFFFFF < 0x80000000


def _tid_geq(x: int, y: int) -> bool:
    return (x - y) & 0xFFFFFFFF < 0x80000000


class OverlayVolume(Volume):
    """``base`` with some filesystem blocks read from elsewhere in it (their
    copies in the journal). ``blocks`` maps a filesystem block to the byte
    offset of its copy and whether the copy is escaped (its first four bytes,
    the jbd2 magic, were zeroed in the journal)."""

    def __init__(self, base: Volume, block_size: int,
                 blocks: dict[int, tuple[int, bool]]) -> None:
        self.base = base
        self.size = base.size
        self.description = base.description
        self.info = base.info
        self.block_size = block_size
        self.blocks = blocks
        self._sorted = sorted(blocks)

    def _pieces(self, offset: int, length: int) -> Iterator[tuple[int, int, int, bool]]:
        """(offset, length, source offset, escaped at offset 0 of a block)
        runs covering [offset, offset + length)."""
        bs = self.block_size
        end = offset + length
        pos = offset
        keys = self._sorted
        i = bisect_left(keys, offset // bs)
        while i < len(keys) and keys[i] * bs < end:
            block = keys[i]
            start = block * bs
            if pos < start:
                yield pos, start - pos, pos, False
                pos = start
            src, escaped = self.blocks[block]
            # Blocks logged one after the other usually sit one after the
            # other in the journal too: one piece (one copy_file_range) for
            # the run, unless a block needs its magic put back.
            run_end = start + bs
            i += 1
            while (not escaped and i < len(keys) and keys[i] * bs == run_end
                   and run_end < end):
                nsrc, nescaped = self.blocks[keys[i]]
                if nescaped or nsrc != src + run_end - start:
                    break
                run_end += bs
                i += 1
            hi = min(end, run_end)
            yield pos, hi - pos, src + pos - start, escaped and pos - start < 4
            pos = hi
        if pos < end:
            yield pos, end - pos, pos, False

    def readinto(self, buf: memoryview | bytearray, offset: int) -> int:
        view = memoryview(buf)
        want = max(0, min(len(view), self.size - offset))
        if not self._sorted:
            return self.base.readinto(view[:want], offset)
        done = 0
        for pos, n, src, escaped in self._pieces(offset, want):
            part = view[pos - offset:pos - offset + n]
            got = self.base.readinto(part, src)
            if escaped:
                skip = pos % self.block_size
                restore = _MAGIC_BYTES[skip:skip + n]
                part[:len(restore)] = restore
            done += got
            if got < n:
                break
        return done

    def copy_to_fd(self, offset: int, length: int, fd: int, dst_offset: int,
                   buf: bytearray | None = None) -> None:
        if offset < 0 or offset + length > self.size:
            raise CorruptError(f"range at offset {offset} (+{length}) lies outside the image")
        for pos, n, src, escaped in self._pieces(offset, length):
            if escaped:  # a few bytes differ from the journal's copy
                part = bytearray(n)
                self.readinto(part, pos)
                os.pwrite(fd, part, dst_offset + pos - offset)
            else:
                self.base.copy_to_fd(src, n, fd, dst_offset + pos - offset, buf)

    def data_ranges(self) -> Iterator[tuple[int, int]]:
        bs = self.block_size
        ranges = sorted([*self.base.data_ranges(), *((b * bs, bs) for b in self._sorted)])
        start = end = -1
        for s, n in ranges:
            if s > end:
                if end > start:
                    yield start, end - start
                start, end = s, s + n
            else:
                end = max(end, s + n)
        if end > start:
            yield start, end - start


class Replay:
    """What a replay found: the overlay and what to tell the user."""

    def __init__(self) -> None:
        self.blocks: dict[int, tuple[int, bool]] = {}
        self.transactions = 0
        self.warnings: list[str] = []


class Journal:
    """An internal jbd2 journal: its superblock checked, its blocks mapped
    through the journal inode."""

    def __init__(self, fs: Ext4, ino: int) -> None:
        node = fs.inode(ino)
        if node.kind is not Kind.FILE or node.inline:
            raise CorruptError(f"journal inode {ino} is not a regular file")
        self.volume = fs.volume
        bs = self.block_size = fs.block_size
        self.ino = ino
        segments = node.segments()
        # journal block -> byte offset, through (first block, count, offset) runs
        self._starts = [f // bs for f, _, _ in segments]
        self._runs = [(f // bs, n // bs, v) for f, n, v in segments]
        self.total = node.size // bs
        raw = self.volume.read_exact(L.JOURNAL_SUPERBLOCK.size, self.offset(0),
                                     f"journal superblock (inode {ino})")
        self._load_super(raw, fs.block_size)

    def offset(self, jblock: int) -> int:
        """Byte offset in the image of journal block ``jblock``."""
        if jblock >= self.total:
            raise CorruptError(
                f"journal block {jblock} lies outside the {self.total}-block journal")
        i = bisect_right(self._starts, jblock) - 1
        if i < 0 or jblock >= self._runs[i][0] + self._runs[i][1]:
            raise CorruptError(f"journal block {jblock} is a hole in journal inode {self.ino}")
        first, _count, where = self._runs[i]
        return where + (jblock - first) * self.block_size

    def block(self, jblock: int) -> bytes:
        return self.volume.read_exact(self.block_size, self.offset(jblock),
                                      f"journal block {jblock}")

    def _load_super(self, raw: bytes, fs_block_size: int) -> None:
        jsb = L.JOURNAL_SUPERBLOCK.unpack(raw)
        where = f"journal superblock (inode {self.ino})"
        if jsb.h_magic != L.JBD2_MAGIC:
            raise CorruptError(f"{where}: no jbd2 magic")
        if jsb.h_blocktype == L.JBD2_SUPERBLOCK_V1:
            compat = incompat = ro_compat = 0
        elif jsb.h_blocktype == L.JBD2_SUPERBLOCK_V2:
            compat, incompat = jsb.s_feature_compat, jsb.s_feature_incompat
            ro_compat = jsb.s_feature_ro_compat
            if jsb.s_nr_users > 1:
                raise UnsupportedError(
                    f"{where}: the journal is shared by {jsb.s_nr_users} filesystems")
        else:
            raise CorruptError(f"{where}: unknown block type {jsb.h_blocktype}")
        if incompat & ~JBD2_KNOWN_INCOMPAT or ro_compat:
            raise UnsupportedError(
                f"{where}: unknown journal features {incompat & ~JBD2_KNOWN_INCOMPAT:#x}/"
                f"{ro_compat:#x}")
        v2 = bool(incompat & L.JBD2_FEATURE_INCOMPAT_CSUM_V2)
        v3 = bool(incompat & L.JBD2_FEATURE_INCOMPAT_CSUM_V3)
        self.csum_v1 = bool(compat & JBD2_FEATURE_COMPAT_CHECKSUM)
        self.csum_v23 = v2 or v3
        if (v2 and v3) or (self.csum_v23 and self.csum_v1):
            raise CorruptError(f"{where}: more than one checksum version")
        if self.csum_v23:
            if jsb.s_checksum_type != L.JBD2_CRC32C_CHKSUM:
                raise CorruptError(f"{where}: unknown checksum type {jsb.s_checksum_type}")
            unsummed = raw[:_JSB_CHECKSUM] + b"\0\0\0\0" + raw[_JSB_CHECKSUM + 4:]
            if crc32c_raw(0xFFFFFFFF, unsummed) != jsb.s_checksum:
                raise CorruptError(f"{where}: checksum mismatch")
            self.seed = crc32c_raw(0xFFFFFFFF, jsb.s_uuid)
        self.csum_v3 = v3
        self.wide = bool(incompat & L.JBD2_FEATURE_INCOMPAT_64BIT)
        self.async_commit = bool(incompat & L.JBD2_FEATURE_INCOMPAT_ASYNC_COMMIT)
        self.fast_commit = bool(incompat & L.JBD2_FEATURE_INCOMPAT_FAST_COMMIT)
        if jsb.s_blocksize != fs_block_size:
            raise CorruptError(f"{where}: block size {jsb.s_blocksize} is not the "
                               f"filesystem's {fs_block_size}")
        if jsb.s_maxlen > self.total:
            raise CorruptError(f"{where}: {jsb.s_maxlen} blocks, but journal inode "
                               f"{self.ino} holds {self.total}")
        self.total = jsb.s_maxlen
        if not 1 <= jsb.s_first < jsb.s_maxlen:
            raise CorruptError(f"{where}: first log block {jsb.s_first} is invalid")
        self.first = jsb.s_first
        self.last = jsb.s_maxlen
        if self.fast_commit:
            # The fast commit area ends the journal; the log wraps before it.
            fc_blocks = jsb.s_num_fc_blks or JBD2_DEFAULT_FAST_COMMIT_BLOCKS
            if jsb.s_maxlen - fc_blocks < JBD2_MIN_JOURNAL_BLOCKS:
                raise CorruptError(f"{where}: {fc_blocks} fast commit blocks leave too "
                                   "small a log")
            self.last = jsb.s_maxlen - fc_blocks
        self.sequence = jsb.s_sequence
        self.start = jsb.s_start
        if self.start and not self.first <= self.start < self.last:
            raise CorruptError(f"{where}: log start {self.start} lies outside the log "
                               f"({self.first}..{self.last - 1})")
        if self.csum_v3:
            self.tag_bytes = TAG3_BYTES
        else:
            self.tag_bytes = TAG_BYTES_V2_64 - (0 if v2 else 2) - (0 if self.wide else 4)
        self.tail = TAIL_BYTES if self.csum_v23 else 0

    # -- the log
    def _wrap(self, jblock: int) -> int:
        return jblock - (self.last - self.first) if jblock >= self.last else jblock

    def _tail_ok(self, data: bytes) -> bool:
        end = self.block_size - TAIL_BYTES
        crc = crc32c_raw(self.seed, data[:end] + b"\0\0\0\0")
        return crc == _BE32.unpack_from(data, end)[0]

    def _commit_ok(self, data: bytes) -> bool:
        crc = crc32c_raw(self.seed, data[:COMMIT_CHKSUM] + b"\0\0\0\0"
                         + data[COMMIT_CHKSUM + 4:])
        return crc == _BE32.unpack_from(data, COMMIT_CHKSUM)[0]

    def _tag_ok(self, data: bytes, tag_at: int, sequence: int, desc: bytes) -> bool:
        crc = crc32c_raw(crc32c_raw(self.seed, _BE32.pack(sequence)), data)
        if self.csum_v3:
            return crc == _BE32.unpack_from(desc, tag_at + 12)[0]
        return crc & 0xFFFF == _BE16.unpack_from(desc, tag_at + 4)[0]

    def _tags(self, desc: bytes) -> list[tuple[int, int, int]]:
        """(filesystem block, flags, tag offset) of a descriptor block's tags."""
        tags = []
        pos = _HEADER.size
        limit = self.block_size - self.tail
        step = self.tag_bytes
        while pos + step <= limit:
            block = _BE32.unpack_from(desc, pos)[0]
            flags = _BE16.unpack_from(desc, pos + 6)[0]
            if self.wide:
                block |= _BE32.unpack_from(desc, pos + 8)[0] << 32
            tags.append((block, flags, pos))
            pos += step if flags & JBD2_FLAG_SAME_UUID else step + 16
            if flags & JBD2_FLAG_LAST_TAG:
                break
        return tags

    def _revokes(self, data: bytes, jblock: int) -> Iterator[int]:
        count = _BE32.unpack_from(data, _HEADER.size)[0]
        if count > self.block_size - self.tail:
            raise CorruptError(f"journal block {jblock}: revoke block claims {count} bytes")
        fmt, size = (_BE64, 8) if self.wide else (_BE32, 4)
        for pos in range(REVOKE_HEADER_BYTES, count - size + 1, size):
            yield fmt.unpack_from(data, pos)[0]

    def recover(self, fs_bytes: int) -> Replay | None:
        """Replay the log onto an image of ``fs_bytes`` bytes; None when the
        journal is empty."""
        if not self.start:
            return None
        result = Replay()
        self._tagged: set[int] = set()
        self._revoked: dict[int, int] = {}
        self.end: int | None = None
        self.failed = False
        self._pass(_SCAN, result, fs_bytes)
        if self.failed:
            return result  # e2fsck replays nothing after a failed scan
        if self.fast_commit and self._fast_commits_pending():
            raise UnsupportedError(
                f"journal block {self.last + 1}: fast commits of transaction {self.end} need "
                f"replaying, which conv does not do ({AS_ON_DISK})")
        self._pass(_REVOKE, result, fs_bytes)
        self._pass(_REPLAY, result, fs_bytes)
        result.transactions = (self.end - self.sequence) & 0xFFFFFFFF
        return result

    def _fast_commits_pending(self) -> bool:
        """Whether the fast commit area starts with a head tag for the
        transaction after the log (what e2fsck's scan looks for first)."""
        block = self.block(self.last + 1)
        tag, length, _features, tid = _FC_HEAD.unpack_from(block, 0)
        return tag == EXT4_FC_TAG_HEAD and length >= 8 and tid == self.end

    def _pass(self, kind: str, result: Replay, fs_bytes: int) -> None:
        """One walk of the log, as do_one_pass() in recovery.c."""
        bs = self.block_size
        seq = self.sequence
        jblock = self.start
        walked = 0
        limit = self.last - self.first + 1  # the whole ring, and one to see its end
        need_check_commit_time = False
        last_commit_time = 0
        crc_v1 = 0xFFFFFFFF
        check_block = 0  # the descriptor or revoke block that failed its checksum

        def step() -> int:
            nonlocal jblock, walked
            walked += 1
            if walked > limit:
                raise CorruptError(f"journal block {jblock}: the log runs around the whole "
                                   "journal without ending")
            here = jblock
            jblock = self._wrap(jblock + 1)
            return here

        while True:
            if kind != _SCAN and _tid_geq(seq, self.end):  # type: ignore[arg-type]
                break
            here = step()
            data = self.block(here)
            magic, btype, bseq = _HEADER.unpack_from(data)
            if magic != L.JBD2_MAGIC or bseq != seq:
                break
            if btype == L.JBD2_DESCRIPTOR_BLOCK:
                if self.csum_v23 and not self._tail_ok(data):
                    if kind != _SCAN:
                        raise CorruptError(f"journal block {here}: descriptor block of "
                                           f"transaction {seq} fails its checksum")
                    need_check_commit_time = True
                    check_block = here
                tags = self._tags(data)
                if kind == _SCAN:
                    self._tagged.update(b for b, _, _ in tags)
                    if self.csum_v1 and not need_check_commit_time and self.end is None:
                        crc_v1 = crc32_be(crc_v1, data)
                        for _ in tags:
                            crc_v1 = crc32_be(crc_v1, self.block(step()))
                        continue
                if kind != _REPLAY:
                    for _ in tags:
                        step()
                    continue
                for block, flags, tag_at in tags:
                    io = step()
                    revoked = self._revoked.get(block)
                    if revoked is not None and not _tid_gt(seq, revoked):
                        continue
                    if self.csum_v23 and not self._tag_ok(self.block(io), tag_at, seq, data):
                        result.warnings.append(
                            f"journal block {io} (filesystem block {block}, transaction "
                            f"{seq}) fails its checksum; not replayed, as e2fsck does")
                        continue
                    if (block + 1) * bs > fs_bytes:
                        raise CorruptError(
                            f"journal block {here}: transaction {seq} writes block {block}, "
                            f"beyond the {fs_bytes // bs}-block filesystem")
                    result.blocks[block] = (self.offset(io), bool(flags & JBD2_FLAG_ESCAPE))
            elif btype == L.JBD2_COMMIT_BLOCK:
                commit_time = _BE64.unpack_from(data, COMMIT_SEC)[0]
                if need_check_commit_time:
                    if commit_time >= last_commit_time:
                        # recovery.c fails the scan: e2fsck replays nothing.
                        result.warnings.append(
                            f"journal block {check_block}: transaction {seq} fails its "
                            "checksum; the journal is not replayed, as e2fsck does")
                        self.failed = True
                        return
                    break  # stale blocks of an older log: the end
                bad = False
                if kind == _SCAN and self.csum_v1:
                    if self.end is not None:
                        break
                    found = _BE32.unpack_from(data, COMMIT_CHKSUM)[0]
                    ctype, csize = data[COMMIT_CHKSUM_TYPE], data[COMMIT_CHKSUM_SIZE]
                    bad = not ((found == crc_v1 and ctype == JBD2_CRC32_CHKSUM
                                and csize == JBD2_CRC32_CHKSUM_SIZE)
                               or (ctype == 0 and csize == 0 and found == 0))
                    crc_v1 = 0xFFFFFFFF
                if kind == _SCAN and (bad or self.csum_v23 and not self._commit_ok(data)):
                    if commit_time < last_commit_time:
                        break  # stale blocks of an older log: the end
                    self.end = seq
                    result.warnings.append(
                        f"journal block {here}: transaction {seq} fails its commit "
                        "checksum; replayed the transactions before it, as e2fsck does")
                    if not self.async_commit:
                        break
                if kind == _SCAN:
                    last_commit_time = commit_time
                seq = (seq + 1) & 0xFFFFFFFF
            elif btype == L.JBD2_REVOKE_BLOCK:
                if kind == _SCAN and self.csum_v23 and not self._tail_ok(data):
                    need_check_commit_time = True
                    check_block = here
                if kind == _REVOKE:
                    for block in self._revokes(data, here):
                        if block in self._tagged:
                            old = self._revoked.get(block)
                            if old is None or _tid_gt(seq, old):
                                self._revoked[block] = seq
            else:
                break
        if kind == _SCAN and self.end is None:
            self.end = seq


def replay_journal(fs: Ext4) -> Replay | None:
    """Replay ``fs``'s internal journal; None when there is nothing to replay."""
    sb = fs.sb
    if sb.s_journal_inum == 0:
        raise UnsupportedError(
            "the filesystem needs recovery from an external journal device, which conv "
            f"does not read ({AS_ON_DISK})")
    if sb.s_journal_inum > fs.inodes_count:
        raise CorruptError(f"superblock: journal inode {sb.s_journal_inum} is out of range")
    journal = Journal(fs, sb.s_journal_inum)
    return journal.recover(fs.volume.size)
