"""File data written while the source is still being read (convcore.feed).

For ``dir:ROOT -> squashfs``, the writer's data phase starts on the files a
directory scan has found so far, in a forked child with its own GIL and
pool, while the parent goes on scanning: on a 2-core machine the Debian
root's scan (a sixth of the conversion) had the second core idle.

The child runs the same ``DataWriter`` over the same files in the same
order as ``ImageWriter`` would (the files of a scanned directory go in tree
order, which is the order the scan finds them), into the same scratch file
from the same offset, so the bytes are the same; ``ImageWriter`` checks that
the files fed are exactly its own list before it takes the child's records,
and otherwise kills the child and writes the data itself.
"""

from __future__ import annotations

import marshal
import os
import struct
import sys
from array import array
from collections.abc import Sequence

from conv_squashfs import layout
from conv_squashfs.datawriter import DataWriter, FileData
from convcore.feed import FileFeed
from convcore.forked import Forked
from convcore.format import Context
from convcore.tree import Data, FileRangeData, gc_paused

#: a frame of files: its byte length, then a marshal of (tree path, host
#: path, offset, size, holes) tuples; a length of 0 ends the list
_FRAME = struct.Struct("<I")


def data_start(codec) -> int:
    """Where file data begins: after the superblock and the compressor
    options' metadata block, if the codec has options."""
    options = codec.options()
    if options is None:
        return layout.SUPERBLOCK_SIZE
    return layout.SUPERBLOCK_SIZE + layout.METADATA_HEADER.size + len(options)


class EarlyData(FileFeed):
    """A forked child writing the data of the files fed to it.

    The files go to the child in frames appended to an anonymous memory
    file, each followed by a byte on a pipe to wake it: a write there never
    blocks the scan, and a child that stopped (an unreadable file) can
    neither make the scan wait nor raise SIGPIPE in it (this side keeps the
    pipe's read end open too)."""

    def __init__(self, settings, ctx: Context) -> None:
        from conv_squashfs.writer import SWITCH_INTERVAL
        self.image = ctx.scratch_file("conv-squashfs-")
        self.start = data_start(settings.codec)
        #: every file fed, in order; None once the feed stopped
        self.fed: list[Data] | None = []
        self.ended = False
        self.child: Forked | None = None
        self._frames = self._wake_r = self._wake_w = -1
        try:
            self._frames = os.memfd_create("conv-squashfs-feed", os.MFD_CLOEXEC)
            self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
            self.child = Forked(_write_fed_data, self._frames, self._wake_r, self._wake_w,
                                self.image.fileno(), self.start, settings, SWITCH_INTERVAL)
        except BaseException:
            self._close_channel()
            self.image.close()
            raise

    # -- the source's side

    def add(self, files: Sequence[tuple[str, Data]]) -> None:
        if self.fed is None:
            return
        out = []
        for path, data in files:
            if not isinstance(data, FileRangeData):
                self.stop()  # nothing else can be rebuilt in the child
                return
            out.append((path, data.path, data.offset, data.size, data.holes))
        self.fed += [data for _, data in files]
        blob = marshal.dumps(out)
        self._send(_FRAME.pack(len(blob)) + blob)

    def end(self) -> None:
        if self.fed is None:
            return
        self._send(_FRAME.pack(0))
        self.ended = True
        # the child reads what is left, then sees the end of the pipe
        self._close_channel()

    def stop(self) -> None:
        self.fed = None
        self._cancel()

    def _send(self, frame: bytes) -> None:
        os.write(self._frames, frame)  # appends: a memory file takes it whole
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # the child has wake-ups it has not read yet

    # -- the encoder's side

    def result(self, files: list[Data], start: int) -> tuple[int, list, list[FileData]] | None:
        """(end of the data, fragment table, a record per file) if the child
        wrote exactly ``files`` from ``start``; else None, the child stopped
        (the caller writes the data itself)."""
        child = self.child
        if (child is None or not self.ended or start != self.start
                or self.fed != files):
            self._cancel()
            return None
        self.child = None
        end, fragment_table, packed = child.result()
        records = []
        for size, blocks_start, sizes, fragment, offset, sparse in packed:
            rec = FileData(size, True)
            rec.blocks_start = blocks_start
            if sizes:
                rec.block_sizes = array("I")
                rec.block_sizes.frombytes(sizes)
            rec.fragment = fragment
            rec.fragment_offset = offset
            rec.sparse = sparse
            records.append(rec)
        return end, fragment_table, records

    def _close_channel(self) -> None:
        for name in ("_frames", "_wake_r", "_wake_w"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)

    def take_image(self):
        """The scratch file the image goes to, which the caller now owns."""
        image, self.image = self.image, None
        return image

    def _cancel(self) -> None:
        self._close_channel()
        if self.child is not None:
            self.child.cancel()
            self.child = None

    def close(self) -> None:
        """Kill the child, and close the image unless the encoder took it."""
        self._cancel()
        if self.image is not None:
            self.image.close()
            self.image = None


def _write_fed_data(frames: int, wake_r: int, wake_w: int, fd: int, start: int, settings,
                    switch_interval: float) -> tuple | None:
    """The child: the data of each file in the frames appended to
    ``frames``, written into ``fd`` from ``start``; returns (end, fragment
    table, per file (size, blocks_start, block sizes as bytes, fragment,
    fragment offset, sparse)), or None when the parent gave up (the wake-up
    pipe ended before the end frame)."""
    os.close(wake_w)
    os.set_blocking(wake_r, True)  # the parent's end stays non-blocking
    sys.setswitchinterval(switch_interval)
    writer = DataWriter(fd, start, settings.codec, settings.block_size, settings.threads,
                        settings.fragments, settings.dedup)
    done = 0  # bytes of frames taken
    buf = b""
    try:
        with gc_paused():
            while True:
                woke = os.read(wake_r, 4096)
                have = os.fstat(frames).st_size
                if have > done:
                    buf += os.pread(frames, have - done, done)
                    done = have
                ended = False
                while len(buf) >= _FRAME.size:
                    (length,) = _FRAME.unpack_from(buf)
                    if length == 0:
                        ended = True
                        break
                    if len(buf) < _FRAME.size + length:
                        break
                    batch = marshal.loads(buf[_FRAME.size:_FRAME.size + length])
                    buf = buf[_FRAME.size + length:]
                    writer.add_more([(path, FileRangeData(host, offset, size, holes))
                                     for path, host, offset, size, holes in batch])
                if ended:
                    break
                if not woke:
                    return None
            writer.end_more()
            end = writer.finish()
    finally:
        writer.close()
    return (end, writer.fragment_table,
            [(rec.size, rec.blocks_start, rec.block_sizes.tobytes(), rec.fragment,
              rec.fragment_offset, rec.sparse) for rec in writer.records.values()])
