"""Layer blobs read once each, and stacked into one tree.

One sequential read per blob does everything: the compressed bytes are
hashed as they are read (digest checked at the end, before the tree exists,
so no output is ever written from a bad blob), decompressed once, the tar
bytes hashed when a diff_id is to be checked, the headers parsed, and each
file's data left where a writer can ``copy_file_range`` it:

- an uncompressed layer's files stay in the blob (a FileRangeData on the
  blob, or on the outer archive holding it);
- a compressed layer's files are spooled while decompressing into one
  nameless scratch file (``Spool``) beside the chain's output (on its
  filesystem, not in a TMPDIR that may be RAM), holes left unwritten: the
  writer never decompresses again.

Layers are read top-down, last first, so that what the upper layers replace,
white out or make opaque is known when a lower layer streams by: the data of
a lower file that cannot survive is skipped, not spooled (``Shadow``). That
guess works on the members' literal paths; the exact stacking (``LayerMerger``,
bottom-up, with symlinked parents and hardlinks resolved as runtimes do)
runs on the headers afterwards. When it keeps a file whose data was skipped
(a hardlink later in the same layer to a file an upper layer replaces, or a
path redirected by a symlink), that layer is read once more for those files
only (tests/test_single_pass.py shows both); the guess only ever costs that
second read or some spool space, never a wrong tree.
"""

from __future__ import annotations

import errno
import hashlib
import os
import queue
import threading
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from conv_oci.model import short
from conv_oci.whiteouts import CHANGE, OPAQUE, WHITEOUT, LayerMerger, classify, layer_errors
from convcore.builtin.tar_codec import StreamCursor
from convcore.builtin.tar_reader import PlainArchive, plain_member_data, scan_stream
from convcore.errors import CorruptError, NoSpaceError, NotFoundError
from convcore.format import scratch_file
from convcore.tree import BytesData, Data, Entry, FileRangeData, Tree

#: raw bytes read per call, and the most decompressed bytes produced per call
READ_CHUNK = 1 << 20
OUT_CHUNK = 1 << 20
#: decompressed chunks in flight between the reading thread and the parser
QUEUE_DEPTH = 4
#: spooled files start on a block boundary: holes of sparse files stay
#: holes, and filesystems that share extents can reflink aligned ranges
SPOOL_ALIGN = 4096

_EMPTY = BytesData(b"")


@dataclass
class LayerBlob:
    """Where a layer's bytes are (a file, or a window of one) and what they
    must hash to."""

    label: str  # names the layer in errors: a short digest or a member name
    path: str
    offset: int
    size: int
    #: the blob's digest (``sha256:...``), None when only the diff_id is known
    digest: str | None = None
    #: the uncompressed tar's digest, None when it is not checked
    diff_id: str | None = None
    #: prefix of a diff_id mismatch message (``layer X`` when None)
    where: str | None = None


# --------------------------------------------------------------------------
# One sequential read of a blob


class _ZstdFrames:
    """Follows zstd frame and block headers in bytes passing by, to tell a
    complete stream from one cut off (zstandard's reader ends quietly)."""

    def __init__(self) -> None:
        self._skip = 0
        self._head = bytearray()
        self._need = 4  # a frame's magic
        self._state = "magic"
        self._checksum = False

    @property
    def complete(self) -> bool:
        return self._state == "magic" and not self._head and not self._skip

    def feed(self, data: memoryview) -> None:
        pos, end = 0, len(data)
        while pos < end:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                continue
            step = min(self._need - len(self._head), end - pos)
            self._head += data[pos:pos + step]
            pos += step
            if len(self._head) == self._need:
                self._parse()

    def _parse(self) -> None:
        head = bytes(self._head)
        self._head.clear()
        if self._state == "magic":
            magic = int.from_bytes(head[:4], "little")
            if magic & 0xFFFFFFF0 == 0x184D2A50:  # skippable frame
                self._state, self._need = "skippable", 4
            elif magic == 0xFD2FB528:
                self._state, self._need = "descriptor", 1
            else:
                raise zlib.error("not a zstd frame")
        elif self._state == "skippable":
            self._skip = int.from_bytes(head, "little")
            self._state, self._need = "magic", 4
        elif self._state == "descriptor":
            fhd = head[0]
            single = fhd >> 5 & 1
            self._checksum = bool(fhd >> 2 & 1)
            self._skip = ((0 if single else 1) + (0, 1, 2, 4)[fhd & 3]
                          + ((1 if single else 0), 2, 4, 8)[fhd >> 6])
            self._state, self._need = "block", 3
        elif self._state == "block":
            value = int.from_bytes(head, "little")
            kind, length = value >> 1 & 3, value >> 3
            self._skip = 1 if kind == 1 else length
            if value & 1:
                self._skip += 4 if self._checksum else 0
                self._state, self._need = "magic", 4


class LayerStream:
    """The tar bytes of one blob, read once from its start to its end: the
    raw bytes hashed as they are read, decompressed once (compression told
    by magic: docker labels plain layers as gzip), the tar bytes hashed when
    asked. The cursor ``scan_stream`` reads headers and data from.

    Reading, hashing and decompressing run on a thread of their own, a few
    chunks ahead of the parser: zlib, zstandard, hashlib and pread release
    the GIL, so on two cores they overlap the parsing and spooling."""

    def __init__(self, blob: LayerBlob, hash_tar: bool) -> None:
        self.blob = blob
        self.where = f"layer {blob.label}"
        self.pos = 0  # tar bytes handed out
        try:
            self._fd = os.open(blob.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise NotFoundError(f"{self.where}: cannot read {blob.path}: {e.strerror}") from None
        self._raw_pos = blob.offset
        self._raw_end = blob.offset + blob.size
        algorithm = blob.digest.partition(":")[0] if blob.digest else "sha256"
        self._raw_hash = hashlib.new(algorithm) if blob.digest else None
        self._tar_hash = hashlib.sha256() if hash_tar else None
        self._out: memoryview = memoryview(b"")
        self._queue: queue.Queue = queue.Queue(QUEUE_DEPTH)
        self._stopping = False
        self._ended = False
        self._thread: threading.Thread | None = None
        try:
            first = self._read_raw()
        except BaseException:
            os.close(self._fd)
            raise
        if first[:2] == b"\x1f\x8b":
            self.compression = "gz"
            self._input: bytes | memoryview = first
            self._z: Any = zlib.decompressobj(31)
            self._produce: Callable[[], bytes | memoryview] = self._gzip
        elif first[:4] == b"\x28\xb5\x2f\xfd":
            import zstandard
            self.compression = "zst"
            self._frames = _ZstdFrames()
            self._pending_raw: bytes | memoryview | None = first
            self._zstd = zstandard.ZstdDecompressor().stream_reader(
                self, read_size=READ_CHUNK, read_across_frames=True, closefd=False)
            self._zerror: type[Exception] = zstandard.ZstdError
            self._produce = self._zstd_chunk
        else:
            self.compression = "none"
            self._out = first
            self._produce = self._read_raw
            if self._raw_hash is not None and algorithm == "sha256":
                self._tar_hash = None  # the tar is the blob: one hash tells both
            elif self._tar_hash is not None:
                self._tar_hash.update(first)
        self._thread = threading.Thread(target=self._run, name="conv-oci-layer", daemon=True)
        self._thread.start()

    # -- the reading thread
    def _read_raw(self) -> memoryview:
        """The next raw bytes (a fresh buffer: the parser may still hold the
        last one), hashed; empty at the blob's end."""
        want = min(READ_CHUNK, self._raw_end - self._raw_pos)
        if want <= 0:
            return memoryview(b"")
        view = memoryview(bytearray(want))
        got = 0
        while got < want:
            n = os.preadv(self._fd, [view[got:]], self._raw_pos + got)
            if n == 0:
                raise CorruptError(f"{self.where}: {self.blob.path} ends at byte "
                                   f"{self._raw_pos + got}, inside the blob (truncated?)")
            got += n
        self._raw_pos += got
        if self._raw_hash is not None:
            self._raw_hash.update(view)
        return view

    def read(self, n: int = -1) -> bytes | memoryview:
        """The raw reader zstandard pulls from (tar bytes: ``read_tar``)."""
        if self._pending_raw is not None:
            data, self._pending_raw = self._pending_raw, None
        else:
            data = self._read_raw()
        self._frames.feed(memoryview(data))
        return data

    def _gzip(self) -> bytes | memoryview:
        while True:
            z = self._z
            if z is None:
                if not self._input:
                    self._input = self._read_raw()
                    if not self._input:
                        return b""
                if self._input[:2] != b"\x1f\x8b":
                    raise zlib.error("data after the end of the gzip stream")
                z = self._z = zlib.decompressobj(31)
            if not self._input:
                self._input = self._read_raw()
                if not self._input:
                    raise EOFError
            out = z.decompress(self._input, OUT_CHUNK)
            self._input = z.unconsumed_tail
            if z.eof:
                self._input = z.unused_data
                self._z = None
            if out:
                return out

    def _zstd_chunk(self) -> bytes | memoryview:
        out = self._zstd.read(OUT_CHUNK)
        if not out and not self._frames.complete:
            raise EOFError
        return out

    def _run(self) -> None:
        try:
            while not self._stopping:
                out = self._produce()
                if out and self._tar_hash is not None:
                    self._tar_hash.update(out)
                self._queue.put(out)
                if not out:
                    return
        except BaseException as e:  # handed to the parser, raised there
            self._queue.put(e)

    def _stop(self) -> None:
        """Stop the reading thread and wait for it (it may be blocked on a
        full queue)."""
        thread = self._thread
        if thread is None:
            return
        self._stopping = True
        while thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        thread.join()
        self._thread = None

    # -- the cursor scan_stream reads
    def _next(self) -> bool:
        """The next decompressed chunk; False at the end of the tar."""
        if self._ended:
            return False
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._ended = True
            if isinstance(item, (zlib.error, EOFError, OSError, *self._codec_errors())):
                raise self._corrupt(item) from None
            raise item
        if not item:
            self._ended = True
            return False
        self._out = memoryview(item)
        return True

    def _codec_errors(self) -> tuple[type[Exception], ...]:
        return (self._zerror,) if self.compression == "zst" else ()

    # "layer X: the gz stream is truncated (after N bytes of tar data)": the
    # core tar reader's words, with the layer for the file name
    _corrupt = StreamCursor._corrupt

    @property
    def path(self) -> str:
        return self.where

    def readinto(self, view: memoryview) -> int:
        """Fill ``view`` with the next tar bytes; short only at the end."""
        done, total = 0, len(view)
        while done < total:
            if not self._out and not self._next():
                break
            n = min(len(self._out), total - done)
            view[done:done + n] = self._out[:n]
            self._out = self._out[n:]
            done += n
        self.pos += done
        return done

    def copy_out(self, fd: int, offset: int, n: int) -> int:
        """Write the next ``n`` tar bytes into ``fd`` at ``offset``, straight
        from the decompressed chunks; returns how many there were."""
        done = 0
        while done < n:
            if not self._out and not self._next():
                break
            k = min(len(self._out), n - done)
            _pwrite_all(fd, self._out[:k], offset + done)
            self._out = self._out[k:]
            done += k
        self.pos += done
        return done

    def read_tar(self, n: int) -> bytes:
        buf = bytearray(n)
        return bytes(buf[:self.readinto(memoryview(buf))])

    def skip(self, n: int) -> int:
        """Move ``n`` tar bytes on (every byte still passes the hashes)."""
        left = n
        while left > 0:
            if not self._out and not self._next():
                break
            step = min(len(self._out), left)
            self._out = self._out[step:]
            left -= step
        self.pos += n - left
        return n - left

    def finish(self) -> None:
        """Read the rest of the blob (the tar's tail too, when it is hashed)."""
        if self.blob.diff_id is not None:
            while self._out or self._next():
                self.pos += len(self._out)
                self._out = memoryview(b"")
        self.drain()

    def drain(self) -> None:
        """Stop decompressing and hash the raw bytes not read yet (also
        after a parse error, to tell a corrupt blob from a well-formed bad
        one)."""
        self._stop()
        if self._raw_hash is None:
            return
        while self._read_raw():
            pass

    def check(self) -> None:
        """Both digests, once the whole blob was read."""
        self.check_digest()
        diff_id = self.blob.diff_id
        tar_hash = self._tar_hash or self._raw_hash
        if diff_id is not None and tar_hash is not None and \
                f"sha256:{tar_hash.hexdigest()}" != diff_id:
            raise CorruptError(f"{self.blob.where or self.where} does not match its diff_id "
                               f"{short(diff_id)}")

    def check_digest(self) -> None:
        digest = self.blob.digest
        if digest is not None and self._raw_pos == self._raw_end and \
                self._raw_hash is not None and \
                digest.partition(":")[2] != self._raw_hash.hexdigest():
            raise CorruptError(f"blob {short(digest)} does not match its digest")

    def close(self) -> None:
        self._stop()
        os.close(self._fd)


# LayerStream is also the raw file zstandard reads, and scan_stream's cursor
# wants ``read(n)`` to give tar bytes: the cursor is a thin view.
class _TarCursor:
    __slots__ = ("_s",)

    def __init__(self, stream: LayerStream) -> None:
        self._s = stream

    @property
    def pos(self) -> int:
        return self._s.pos

    def read(self, n: int) -> bytes:
        return self._s.read_tar(n)

    def readinto(self, view: memoryview) -> int:
        return self._s.readinto(view)

    def skip(self, n: int) -> int:
        return self._s.skip(n)


# --------------------------------------------------------------------------
# Spooled file data


class SpoolData(FileRangeData):
    """A file of a compressed layer: a range of the spool once spooled.
    Until then (its data skipped as hidden) ``path`` is empty and
    ``member`` says where to find it: (layer index, tar stream offset)."""

    __slots__ = ("spool", "member", "segments")

    def __init__(self, size: int, segments: list[tuple[int, int, int]],
                 member: tuple[int, int]) -> None:
        super().__init__("", 0, size)
        self.spool: Spool | None = None  # keeps the spool open while data lives
        self.member = member
        #: (file offset, length, tar stream offset), as the tar scan gives
        self.segments = segments


class Spool:
    """Decompressed file data kept for the writer: one nameless scratch file
    in ``directory`` (``convcore.format.scratch_file``; None: TMPDIR), which
    goes when its last user does, on exit or on error, reached through
    /proc/self/fd. Files start block-aligned; holes are never written."""

    def __init__(self, directory: str | None = None) -> None:
        self._file = scratch_file(directory, "conv-oci-spool-")
        self.fd = self._file.fileno()
        self.path = f"/proc/self/fd/{self.fd}"
        self.end = 0

    def close(self) -> None:
        self._file.close()

    def take(self, stream: LayerStream, data: SpoolData) -> None:
        """Move ``data``'s bytes from the stream (at its first data byte)
        into the spool."""
        base = -(-self.end // SPOOL_ALIGN) * SPOOL_ALIGN
        for fo, n, _ in data.segments:
            if stream.copy_out(self.fd, base + fo, n) != n:
                raise CorruptError(f"member data at tar offset {stream.pos} is truncated")
        self.end = base + data.size
        sparse = len(data.segments) != 1 or data.segments[0][:2] != (0, data.size)
        if sparse and os.fstat(self.fd).st_size < self.end:
            os.ftruncate(self.fd, self.end)  # a trailing hole must exist
        data.path, data.offset, data.holes, data.spool = self.path, base, sparse, self


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    try:
        while len(view):
            n = os.pwrite(fd, view, offset)
            view = view[n:]
            offset += n
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            where = os.path.dirname(os.readlink(f"/proc/self/fd/{fd}"))
            raise NoSpaceError(f"no space left in {where} for the decompressed "
                               "layer data (spooled beside the output, else in TMPDIR)") from None
        raise


# --------------------------------------------------------------------------
# Stacking


class Shadow:
    """What the layers above the one being read do to lower paths, on the
    members' literal paths: a lower file is hidden when an upper layer
    puts anything at its path, whites out or puts a non-directory at an
    ancestor, or makes an ancestor opaque, and no upper hardlink names it."""

    def __init__(self) -> None:
        self.gone: set[str] = set()  # whited out, or a non-directory: below goes too
        self.replaced: set[str] = set()  # a directory: replaces a lower file
        self.opaque: set[str] = set()
        self.linked: set[str] = set()

    def hides(self, path: str) -> bool:
        if path in self.linked:
            return False
        if path in self.gone or path in self.replaced:
            return True
        while path:
            path = path.rpartition("/")[0]
            if path in self.opaque or path in self.gone:
                return True
        return False

    def add(self, entries: Iterable[Entry]) -> None:
        """Take in one layer (after its own members were read: a layer's
        whiteouts hide only lower layers)."""
        for entry in entries:
            what, path = classify(entry.path)
            if what is WHITEOUT:
                self.gone.add(path)
            elif what is OPAQUE:
                self.opaque.add(path)
            elif what is CHANGE:
                if entry.link is not None:
                    self.linked.add(entry.link)
                (self.replaced if entry.is_dir() else self.gone).add(path)


def _read_layer(index: int, blob: LayerBlob, shadow: Shadow | None,
                spool: Callable[[], Spool], wanted: dict[int, SpoolData] | None = None
                ) -> list[Entry]:
    """One pass over a blob: its members, each compressed file's data
    spooled unless ``shadow`` hides it. ``wanted`` (a second pass): spool
    only these placeholders, by tar offset."""
    stream = LayerStream(blob, hash_tar=blob.diff_id is not None)
    cursor = _TarCursor(stream)
    entries: list[Entry] = []
    try:
        try:
            with layer_errors(blob.label):
                if stream.compression == "none":
                    archive = PlainArchive(blob.path)
                    base = blob.offset

                    def make_data(size: int, segments: list[tuple[int, int, int]],
                                  data_offset: int, body: int, where: str) -> Data:
                        return plain_member_data(archive, size,
                                                 [(f, n, base + a) for f, n, a in segments])
                    entries = list(scan_stream(cursor, stream.where, make_data))
                else:
                    def make_data(size: int, segments: list[tuple[int, int, int]],
                                  data_offset: int, body: int, where: str) -> Data:
                        if not size:
                            return _EMPTY
                        return SpoolData(size, segments, (index, data_offset))
                    for entry in scan_stream(cursor, stream.where, make_data):
                        entries.append(entry)
                        data = entry.data
                        if not isinstance(data, SpoolData):
                            continue
                        if wanted is not None:
                            keep = wanted.get(data.member[1])
                            if keep is not None:
                                spool().take(stream, keep)
                        elif classify(entry.path)[0] is CHANGE and \
                                (shadow is None or not shadow.hides(entry.path)):
                            spool().take(stream, data)
                stream.finish()
        except CorruptError:
            stream.drain()
            stream.check_digest()  # a bad blob is told as such, not by its symptom
            raise
        stream.check()
    finally:
        stream.close()
    return entries


def stack_layers(blobs: list[LayerBlob], whiteouts: str,
                 scratch_dir: str | None = None) -> Tree:
    """The merged tree of ``blobs`` (bottom layer first). Every blob is read
    and verified before this returns. Decompressed file data is spooled in
    ``scratch_dir`` (``Context.scratch_dir``; None: TMPDIR)."""
    merger = LayerMerger(whiteouts)
    spools: list[Spool] = []

    def spool() -> Spool:
        if not spools:
            spools.append(Spool(scratch_dir))
        return spools[0]

    try:
        layers: list[list[Entry]] = [[] for _ in blobs]
        shadow = Shadow()
        for index in reversed(range(len(blobs))):
            layers[index] = _read_layer(index, blobs[index], shadow, spool)
            if index:
                with layer_errors(blobs[index].label):
                    shadow.add(layers[index])
        del shadow
        for blob, entries in zip(blobs, layers, strict=True):
            merger.apply(entries, blob.label)
        del layers
        tree = merger.finish()

        skipped: dict[int, dict[int, SpoolData]] = {}
        for entry in tree:
            data = entry.data
            if isinstance(data, SpoolData) and not data.path and entry.link is None:
                skipped.setdefault(data.member[0], {})[data.member[1]] = data
        for index in sorted(skipped):
            _read_layer(index, blobs[index], None, spool, skipped[index])
    except BaseException:
        for s in spools:
            s.close()  # now, not when the traceback lets go of the entries
        raise
    return tree
