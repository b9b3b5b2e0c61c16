"""qcow2 reader: a qcow2 file as a lazy, random-access Volume.

Every offset, size and count comes from a possibly hostile file, so each is
checked against the file before use; memory stays bounded (L1 capped as qemu
caps it, an LRU of L2 tables, decompression limited to one cluster).
"""

from __future__ import annotations

import os
import re
import sys
import threading
import zlib
from array import array
from bisect import bisect_right
from collections import OrderedDict, deque
from collections.abc import Iterator
from operator import itemgetter

from conv_qcow2 import layout
from convcore.blockdev import FileVolume, Volume
from convcore.errors import CorruptError, NotFoundError, UnsupportedError
from convcore.format import Context
from convcore.tree import COPY_CHUNK, copy_range

_BIG_ENDIAN = sys.byteorder == "big"
_ZEROS = memoryview(bytes(1 << 21))
#: a compressed L2 entry without its flag bits: host offset and sector count.
_DESCRIPTOR_MASK = (1 << 62) - 1

#: how deep a backing chain may go before we call it a loop.
MAX_CHAIN = 32
#: bytes of mapping (runs built from L2 tables) kept in memory per image.
L2_CACHE_BYTES = 32 << 20
#: about what one cached run costs (a 4-tuple and its ints).
_RUN_BYTES = 160
_NONZERO = re.compile(rb"[^\0]")
_START = itemgetter(0)

# what a guest range is backed by
UNALLOCATED, ZERO, DATA, COMPRESSED = range(4)


def source(path: str, opts: dict, ctx: Context) -> Volume:
    return Qcow2Volume(path)


def _from_be(data: bytes) -> array:
    table = array("Q", data)
    if not _BIG_ENDIAN:
        table.byteswap()
    return table


class Qcow2Volume(Volume):
    """The guest disk of a qcow2 image (and of its backing chain)."""

    def __init__(self, path: str | os.PathLike, _chain: tuple[str, ...] = ()) -> None:
        self.path = os.fspath(path)
        self.description = "qcow2"
        self.backing: Volume | None = None
        self._file = None
        self.fd = -1
        try:
            self._file = FileVolume(self.path, "file")
            self.fd = self._file.fd
            self.file_size = self._file.size
            self._open(_chain)
        except BaseException:
            self.close()
            raise

    # -- header

    def _open(self, chain: tuple[str, ...]) -> None:
        name = self.path
        head = self._file.read_exact(layout.HEADER_V2.size, 0, f"{name}: qcow2 header")
        h = layout.Header(*layout.HEADER_V2.unpack(head))
        if h.magic != layout.MAGIC:
            raise CorruptError(f"{name}: not a qcow2 image (bad magic)")
        if h.version not in (2, 3):
            raise UnsupportedError(f"{name}: qcow2 version {h.version} is not supported")
        if not layout.MIN_CLUSTER_BITS <= h.cluster_bits <= layout.MAX_CLUSTER_BITS:
            raise CorruptError(f"{name}: cluster_bits {h.cluster_bits} outside 9..21")
        cs = 1 << h.cluster_bits
        header_cluster = self._file.pread(cs, 0)
        if h.version == 3:
            if len(header_cluster) < layout.HEADER_V3_LENGTH:
                raise CorruptError(f"{name}: version 3 header is truncated")
            incompat, compat, autoclear, refcount_order, header_length = \
                layout.HEADER_V3_EXT.unpack_from(header_cluster, layout.HEADER_V2.size)
            if header_length < layout.HEADER_V3_LENGTH or header_length > len(header_cluster):
                raise CorruptError(f"{name}: header_length {header_length} is out of range")
            compression = header_cluster[104] if header_length > 104 else 0
            h = h._replace(incompatible_features=incompat, compatible_features=compat,
                           autoclear_features=autoclear, refcount_order=refcount_order,
                           header_length=header_length, compression_type=compression)
        self.header = h
        if h.crypt_method:
            raise UnsupportedError(f"{name}: encrypted qcow2 images are not supported")
        if h.incompatible_features & layout.INCOMPAT_DATA_FILE:
            raise UnsupportedError(f"{name}: qcow2 with an external data file is not supported")
        unknown = h.incompatible_features & ~layout.INCOMPAT_KNOWN
        if unknown:
            raise UnsupportedError(f"{name}: unknown qcow2 incompatible features {unknown:#x}")
        if h.refcount_order > 6:
            raise CorruptError(f"{name}: refcount_order {h.refcount_order} is above 6")
        if h.compression_type not in layout.COMPRESSION_NAMES:
            raise UnsupportedError(f"{name}: unknown compression type {h.compression_type}")
        if h.compression_type and not h.incompatible_features & layout.INCOMPAT_COMPRESSION:
            raise CorruptError(f"{name}: compression type set without its incompatible bit")

        self.cluster_bits = h.cluster_bits
        self.cluster_size = cs
        self.size = h.size
        self.extended_l2 = bool(h.incompatible_features & layout.INCOMPAT_EXTL2)
        if self.extended_l2 and h.cluster_bits < 14:
            raise CorruptError(f"{name}: extended L2 entries need clusters of 16 KiB or more")
        self.entry_words = 2 if self.extended_l2 else 1
        self.l2_entries = cs // (8 * self.entry_words)
        self.subcluster_size = cs // layout.SUBCLUSTERS if self.extended_l2 else cs
        self.csize_shift, self.csize_mask = layout.compressed_layout(h.cluster_bits)
        self.compressed_offset_mask = (1 << self.csize_shift) - 1

        backing_format = self._extensions(header_cluster, h)
        self._check_refcount_table(h)
        self._load_l1(h)
        self._runs_cache: OrderedDict[int, list[tuple[int, int, int, int]]] = OrderedDict()
        self._runs_cached = 0
        self._runs_budget = L2_CACHE_BYTES // _RUN_BYTES
        self._cluster_cache: tuple[int, bytes] | None = None

        backing_name = None
        if h.backing_file_offset:
            if h.backing_file_size > layout.MAX_BACKING_NAME or \
                    h.backing_file_offset + h.backing_file_size > len(header_cluster):
                raise CorruptError(f"{name}: backing file name lies outside the header cluster")
            raw_name = header_cluster[h.backing_file_offset:
                                      h.backing_file_offset + h.backing_file_size]
            backing_name = raw_name.decode("utf-8", "surrogateescape")
        self.backing_file = backing_name
        self.backing_format = backing_format
        if backing_name:
            self.backing = self._open_backing(backing_name, backing_format, chain)

        #: the backing images below this one, nearest first: {"file", "format"}.
        self.backing_chain: list[dict] = []
        if self.backing is not None:
            self.backing_chain.append({"file": backing_name,
                                       "format": backing_format or self.backing.description})
        if isinstance(self.backing, Qcow2Volume):
            self.backing_chain += self.backing.backing_chain
        st = os.fstat(self.fd)
        self.info = {
            "format": "qcow2",
            "virtual_size": self.size,
            "cluster_size": cs,
            "version": h.version,
            "compat": "1.1" if h.version == 3 else "0.10",
            "compression_type": layout.COMPRESSION_NAMES[h.compression_type],
            "extended_l2": self.extended_l2,
            "file_size": self.file_size,
            "allocated_bytes": st.st_blocks * 512,
        }
        if self.backing_chain:
            self.info["backing_chain"] = " -> ".join(
                f"{b['file']} ({b['format']})" for b in self.backing_chain)

    def _extensions(self, cluster: bytes, h: layout.Header) -> str | None:
        """Walk the header extensions; returns the backing format name."""
        backing_format = None
        pos = h.header_length if h.version == 3 else layout.HEADER_V2.size
        end = len(cluster)
        if h.backing_file_offset and h.backing_file_offset < end:
            end = h.backing_file_offset
        while pos + layout.EXTENSION.size <= end:
            kind, length = layout.EXTENSION.unpack_from(cluster, pos)
            pos += layout.EXTENSION.size
            if kind == layout.EXT_END:
                break
            if pos + length > end:
                raise CorruptError(f"{self.path}: header extension {kind:#x} overruns the header")
            data = cluster[pos:pos + length]
            if kind == layout.EXT_BACKING_FORMAT:
                backing_format = data.decode("ascii", "replace")
            elif kind == layout.EXT_DATA_FILE:
                raise UnsupportedError(
                    f"{self.path}: qcow2 with an external data file is not supported")
            elif kind == layout.EXT_ENCRYPTION:
                raise UnsupportedError(f"{self.path}: encrypted qcow2 images are not supported")
            pos += length + (-length % 8)
        return backing_format

    def _check_refcount_table(self, h: layout.Header) -> None:
        cs = self.cluster_size
        if h.refcount_table_offset % cs:
            raise CorruptError(f"{self.path}: refcount table offset {h.refcount_table_offset} "
                               "is not cluster aligned")
        if h.refcount_table_offset + h.refcount_table_clusters * cs > self.file_size:
            raise CorruptError(f"{self.path}: refcount table at offset {h.refcount_table_offset} "
                               f"({h.refcount_table_clusters} clusters) lies past the end of "
                               "the file")

    def _load_l1(self, h: layout.Header) -> None:
        cs = self.cluster_size
        l2_span = self.l2_entries * cs
        needed = -(-h.size // l2_span)
        if h.l1_size * 8 > layout.MAX_L1_BYTES:
            raise CorruptError(f"{self.path}: L1 table of {h.l1_size} entries is above "
                               "qemu's 32 MiB limit")
        if h.l1_size < needed:
            raise CorruptError(f"{self.path}: L1 table of {h.l1_size} entries is too small for "
                               f"a {h.size}-byte disk")
        if h.l1_size and h.l1_table_offset % cs:
            raise CorruptError(f"{self.path}: L1 table offset {h.l1_table_offset} is not "
                               "cluster aligned")
        self.l1 = _from_be(self._file.read_exact(h.l1_size * 8, h.l1_table_offset,
                                                 f"{self.path}: L1 table"))

    def _open_backing(self, name: str, fmt: str | None, chain: tuple[str, ...]) -> Volume:
        path = name if os.path.isabs(name) else os.path.join(os.path.dirname(self.path), name)
        me = os.path.realpath(self.path)
        chain = (*chain, me)
        if len(chain) > MAX_CHAIN:
            raise CorruptError(f"{self.path}: backing chain deeper than {MAX_CHAIN} images")
        if os.path.realpath(path) in chain:
            raise CorruptError(f"{self.path}: backing file {name} loops back into its own chain")
        if not os.path.exists(path):
            raise NotFoundError(f"{self.path}: backing file {name} not found")
        if fmt is None:
            with open(path, "rb") as f:
                fmt = "qcow2" if f.read(4) == layout.MAGIC else "raw"
        if fmt == "qcow2":
            return Qcow2Volume(path, chain)
        if fmt == "raw":
            return FileVolume(path, "raw")
        raise UnsupportedError(f"{self.path}: backing format {fmt!r} is not supported")

    # -- mapping
    #
    # Each L2 table is turned, in one pass, into runs: (guest start, guest end,
    # kind, host offset or compressed descriptor), host-contiguous data clusters
    # merged. Reads, copies and data_ranges() all work from these runs, so a
    # copy is a few large copy_file_range calls rather than a walk per cluster.

    def _read_l2(self, index: int) -> tuple[bytes, array] | None:
        offset = self.l1[index] & layout.L1_OFFSET_MASK
        if not offset:
            return None
        if offset % self.cluster_size:
            raise CorruptError(f"{self.path}: L2 table offset {offset} (L1 entry {index}) "
                               "is not cluster aligned")
        raw = self._file.read_exact(self.cluster_size, offset,
                                    f"{self.path}: L2 table (L1 entry {index})")
        return raw, _from_be(raw)

    def _runs(self, index: int) -> list[tuple[int, int, int, int]]:
        """The runs of L2 table ``index`` (cached, least recently used out)."""
        runs = self._runs_cache.get(index)
        if runs is not None:
            self._runs_cache.move_to_end(index)
            return runs
        runs = self._build_runs(index)
        self._runs_cache[index] = runs
        self._runs_cached += len(runs)
        while self._runs_cached > self._runs_budget and len(self._runs_cache) > 1:
            self._runs_cached -= len(self._runs_cache.popitem(last=False)[1])
        return runs

    def _build_runs(self, index: int) -> list[tuple[int, int, int, int]]:
        cs, bits = self.cluster_size, self.cluster_bits
        base = index * self.l2_entries << bits
        span_end = min(base + (self.l2_entries << bits), self.size)
        if base >= span_end:
            return []
        loaded = self._read_l2(index)
        if loaded is None:
            return [(base, span_end, UNALLOCATED, 0)]
        raw, table = loaded
        words = self.entry_words
        count = (span_end - base + cs - 1) >> bits
        zero_flag = self.header.version >= 3
        file_size = self.file_size
        runs: list[tuple[int, int, int, int]] = []
        # the run being grown: start, end, kind, host offset at start
        rs = re_ = base
        rk, rw = UNALLOCATED, 0
        j = 0
        while j < count:
            entry = table[j * words]
            if not entry and (words == 1 or not table[j * words + 1]):
                # skip a stretch of unallocated entries in C, not one by one
                m = _NONZERO.search(raw, j * 8 * words, count * 8 * words)
                nj = m.start() // (8 * words) if m else count
                kind, where, j0, j = UNALLOCATED, 0, j, nj
                g, gend = base + (j0 << bits), min(base + (nj << bits), span_end)
            else:
                g = base + (j << bits)
                gend = min(g + cs, span_end)
                j += 1
                if entry & layout.OFLAG_COMPRESSED:
                    # never merged: each compressed cluster is read on its own
                    if rs < re_:
                        runs.append((rs, re_, rk, rw))
                    runs.append((g, gend, COMPRESSED, entry & _DESCRIPTOR_MASK))
                    rs = re_ = gend
                    continue
                host = entry & layout.L2_OFFSET_MASK
                if host & (cs - 1):
                    raise CorruptError(f"{self.path}: data cluster offset {host} for guest "
                                       f"offset {g} is not cluster aligned")
                if host >= file_size:
                    raise CorruptError(f"{self.path}: data cluster at offset {host} for guest "
                                       f"offset {g} lies past the end of the file")
                if words == 2:
                    if rs < re_:
                        runs.append((rs, re_, rk, rw))
                    rs = re_ = self._sub_runs(runs, table[j * 2 - 1], host, g, gend)
                    continue
                if entry & layout.OFLAG_ZERO and zero_flag:
                    kind, where = ZERO, 0
                elif host:
                    kind, where = DATA, host
                else:
                    kind, where = UNALLOCATED, 0
            if kind == rk and re_ == g and (kind != DATA or rw + (g - rs) == where):
                re_ = gend
            else:
                if rs < re_:
                    runs.append((rs, re_, rk, rw))
                rs, re_, rk, rw = g, gend, kind, where
        if rs < re_:
            runs.append((rs, re_, rk, rw))
        return runs

    def _sub_runs(self, runs: list, bitmap: int, host: int, start: int, end: int) -> int:
        """Append the runs of one extended-L2 cluster; returns ``end``."""
        sc = self.subcluster_size
        c = start >> self.cluster_bits
        for sub in range(layout.SUBCLUSTERS):
            s = start + sub * sc
            if s >= end:
                break
            kind = self._sub_kind(bitmap, sub, host, c)
            e = min(s + sc, end)
            where = host + sub * sc if kind == DATA else 0
            last = runs[-1] if runs else None
            if last is not None and last[1] == s and last[2] == kind and \
                    (kind != DATA or last[3] + (s - last[0]) == where):
                runs[-1] = (last[0], e, kind, last[3])
            else:
                runs.append((s, e, kind, where))
        return end

    def _pieces(self, offset: int, end: int) -> Iterator[tuple[int, int, int, int]]:
        """(guest, length, kind, host offset of guest or descriptor) covering
        [offset, end), ascending; a piece never spans two L2 tables."""
        span_bits = self.cluster_bits
        l2 = self.l2_entries
        pos = offset
        while pos < end:
            runs = self._runs((pos >> span_bits) // l2)
            if not runs:
                raise CorruptError(f"{self.path}: guest offset {pos} lies past the disk")
            i = bisect_right(runs, pos, key=_START) - 1
            while pos < end and i < len(runs):
                s, e, kind, where = runs[i]
                n = min(e, end) - pos
                if kind == DATA:
                    where += pos - s
                yield pos, n, kind, where
                pos += n
                i += 1

    def _sub_kind(self, bitmap: int, sub: int, host: int, c: int) -> int:
        allocated = bitmap >> sub & 1
        zero = bitmap >> (32 + sub) & 1
        if allocated and zero:
            raise CorruptError(f"{self.path}: subcluster {sub} of guest cluster {c} is both "
                               "allocated and zero")
        if allocated:
            if not host:
                raise CorruptError(f"{self.path}: guest cluster {c} has allocated subclusters "
                                   "but no host cluster")
            return DATA
        return ZERO if zero else UNALLOCATED

    def _read_compressed(self, descriptor: int, c: int) -> bytes:
        """The stored bytes of a compressed cluster (with whatever trails it
        in its last sector)."""
        offset = descriptor & self.compressed_offset_mask
        sectors = ((descriptor >> self.csize_shift) & self.csize_mask) + 1
        length = sectors * layout.SECTOR - (offset & (layout.SECTOR - 1))
        if offset >= self.file_size:
            raise CorruptError(f"{self.path}: compressed cluster for guest offset "
                               f"{c * self.cluster_size} at offset {offset} lies past the end "
                               "of the file")
        return self._file.pread(min(length, self.file_size - offset), offset)

    def _inflate(self, packed: bytes, c: int) -> bytes:
        """Decompress one cluster, never past the cluster size. Thread-safe."""
        cs = self.cluster_size
        what = f"{self.path}: compressed cluster for guest offset {c * cs}"
        if self.header.compression_type == layout.COMPRESSION_ZSTD:
            out = _unzstd(packed, cs, what)
        else:
            d = zlib.decompressobj(-12)
            try:
                out = d.decompress(packed, cs)
                if len(out) == cs and not d.eof and d.decompress(d.unconsumed_tail, 1):
                    raise CorruptError(f"{what} inflates beyond the {cs}-byte cluster size")
            except zlib.error as e:
                raise CorruptError(f"{what} does not inflate: {e}") from None
        if len(out) != cs:
            raise CorruptError(f"{what} inflates to {len(out)} bytes, not {cs}")
        return out

    def _decompress(self, descriptor: int, c: int) -> bytes:
        if self._cluster_cache is not None and self._cluster_cache[0] == c:
            return self._cluster_cache[1]
        out = self._inflate(self._read_compressed(descriptor, c), c)
        self._cluster_cache = (c, out)
        return out

    # -- Volume API

    def readinto(self, buf: memoryview | bytearray, offset: int) -> int:
        view = memoryview(buf).cast("B")
        want = max(0, min(len(view), self.size - offset))
        if want <= 0:
            return 0
        cmask = self.cluster_size - 1
        for guest, n, kind, where in _join_data(self._pieces(offset, offset + want)):
            piece = view[guest - offset:guest - offset + n]
            if kind == DATA:
                got = self._file.readinto(piece, where)
                if got < n:  # a last cluster cut short by the end of the file reads as zeros
                    piece[got:] = _ZEROS[:n - got]
            elif kind == COMPRESSED:
                within = guest & cmask
                cluster = self._decompress(where, guest >> self.cluster_bits)
                piece[:] = memoryview(cluster)[within:within + n]
            elif kind == UNALLOCATED and self.backing is not None and guest < self.backing.size:
                got = self.backing.readinto(piece[:min(n, self.backing.size - guest)], guest)
                piece[got:] = _ZEROS[:n - got]
            else:
                _zero_fill(piece)
        return want

    def copy_to_fd(self, offset: int, length: int, fd: int, dst_offset: int,
                   buf: bytearray | None = None) -> None:
        if offset < 0 or offset + length > self.size:
            raise CorruptError(f"range at offset {offset} (+{length}) lies outside the image")
        view: memoryview | None = None
        for guest, n, kind, where in _join_data(self._pieces(offset, offset + length)):
            dst = dst_offset + guest - offset
            if kind == DATA and where + n <= self.file_size:
                copy_range(self.fd, where, fd, dst, n, buf)
                continue
            if view is None:
                view = memoryview(buf if buf is not None else
                                  bytearray(min(COPY_CHUNK, max(length, 1))))
            done = 0
            while done < n:
                chunk = view[:min(len(view), n - done)]
                got = self.readinto(chunk, guest + done)
                os.pwrite(fd, chunk[:got], dst + done)
                done += got

    def write_to(self, target) -> None:
        """Copy the whole disk into ``target``: plain clusters through
        copy_from_volume (copy_file_range for file targets), compressed ones
        decompressed on a thread pool, all written in disk order."""
        from concurrent.futures import ThreadPoolExecutor

        threads = os.cpu_count() or 1
        pending: deque = deque()  # (offset, length, future or None), in disk order

        def flush_one() -> None:
            offset, length, fut = pending.popleft()
            if fut is None:
                target.copy_from_volume(self, offset, length, offset)
            else:
                within = offset & (self.cluster_size - 1)
                target.pwrite(memoryview(fut.result())[within:within + length], offset)

        with ThreadPoolExecutor(threads, thread_name_prefix="conv-qcow2-read") as pool:
            for start, length in self.data_ranges():
                for pos, n, kind, where in self._pieces(start, start + length):
                    if kind == COMPRESSED:
                        c = pos >> self.cluster_bits
                        packed = self._read_compressed(where, c)
                        pending.append((pos, n, pool.submit(self._inflate, packed, c)))
                    elif pending and pending[-1][2] is None \
                            and pending[-1][0] + pending[-1][1] == pos:
                        last = pending.pop()
                        pending.append((last[0], last[1] + n, None))
                    else:
                        pending.append((pos, n, None))
                    while len(pending) > threads * 8:
                        flush_one()
            while pending:
                flush_one()

    def data_ranges(self) -> Iterator[tuple[int, int]]:
        own: list[tuple[int, int, bool]] = []
        for start, end, is_data in self._own_ranges():
            # coalesce as we go: a big image is a few long runs, not a tuple per cluster
            if own and own[-1][1] == start and own[-1][2] == is_data:
                own[-1] = (own[-1][0], end, is_data)
            else:
                own.append((start, end, is_data))
        data = [(s, e) for s, e, is_data in own if is_data]
        if self.backing is not None:
            visible = min(self.backing.size, self.size)
            backing = ((s, min(s + n, visible)) for s, n in self.backing.data_ranges()
                       if s < visible)
            data = _union(data, _subtract(backing, [(s, e) for s, e, _ in own]))
        return ((s, e - s) for s, e in _merge(data))

    def _own_ranges(self) -> Iterator[tuple[int, int, bool]]:
        """(start, end, holds data) for every guest range this image decides
        itself (data, compressed or zero), ascending."""
        l2_span = self.l2_entries << self.cluster_bits
        for index in range(min(len(self.l1), -(-self.size // l2_span))):
            if not self.l1[index] & layout.L1_OFFSET_MASK:
                continue
            for start, end, kind, _ in self._runs(index):
                if kind != UNALLOCATED:
                    yield start, end, kind != ZERO

    def close(self) -> None:
        if self.backing is not None:
            self.backing.close()
            self.backing = None
        if self._file is not None:
            self._file.close()
            self._file = None
            self.fd = -1


_zstd_local = threading.local()


def _unzstd(packed: bytes, cs: int, what: str) -> bytes:
    import zstandard
    dctx = getattr(_zstd_local, "dctx", None)
    if dctx is None:  # a decompressor serves one thread at a time
        dctx = _zstd_local.dctx = zstandard.ZstdDecompressor()
    try:
        # the frame header's content size decides the allocation: check it first
        declared = zstandard.frame_content_size(packed)
        if declared > cs:
            raise CorruptError(f"{what} inflates beyond the {cs}-byte cluster size")
        # bytes after the frame belong to the next cluster (allow_extra_data)
        return dctx.decompress(packed, max_output_size=cs)
    except zstandard.ZstdError as e:
        raise CorruptError(f"{what} does not decompress: {e}") from None


def _join_data(pieces: Iterator[tuple[int, int, int, int]]) \
        -> Iterator[tuple[int, int, int, int]]:
    """``pieces`` with host-contiguous data pieces joined across L2 tables."""
    held = None
    for piece in pieces:
        if held is not None and piece[2] == DATA and held[2] == DATA \
                and held[3] + held[1] == piece[3]:
            held = (held[0], held[1] + piece[1], DATA, held[3])
            continue
        if held is not None:
            yield held
        held = piece
    if held is not None:
        yield held


def _zero_fill(view: memoryview) -> None:
    for pos in range(0, len(view), len(_ZEROS)):
        n = min(len(_ZEROS), len(view) - pos)
        view[pos:pos + n] = _ZEROS[:n]


def _merge(ranges) -> Iterator[tuple[int, int]]:
    cur = None
    for s, e in ranges:
        if cur is not None and s <= cur[1]:
            cur = (cur[0], max(cur[1], e))
            continue
        if cur is not None:
            yield cur
        cur = (s, e)
    if cur is not None:
        yield cur


def _subtract(ranges, holes: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """Parts of ascending ``ranges`` outside ascending, disjoint ``holes``."""
    i = 0
    for s, e in ranges:
        while i < len(holes) and holes[i][1] <= s:
            i += 1
        j = i
        while s < e and j < len(holes) and holes[j][0] < e:
            hs, he = holes[j]
            if hs > s:
                yield s, hs
            s = max(s, he)
            j += 1
        if s < e:
            yield s, e


def _union(a, b) -> list[tuple[int, int]]:
    import heapq
    return list(_merge(heapq.merge(a, b)))
