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

A large tree's scan stops the feed when it splits (its pieces are found out
of tree order). The child then stops after the batch it is on, writes what
it has queued, and hands its writer's state over (``DataWriter.suspend``):
the parent's writer resumes from there with the rest of the files, to the
bytes one writer would have made. A 12k-file tree was 9% slower with the
early child than without before this (its work on the first files was
thrown away), and is now as fast.
"""

from __future__ import annotations

import gc
import marshal
import os
import struct
import sys
from array import array
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from conv_squashfs import layout
from convcore.errors import ConvError
from convcore.feed import FileFeed
from convcore.forked import Forked, forking
from convcore.format import Context
from convcore.tree import Data, FileRangeData

if TYPE_CHECKING:
    from conv_squashfs.datawriter import FileData
    from conv_squashfs.writer import Settings

#: a frame's byte length, before its marshal
_FRAME = struct.Struct("<I")


class _Outbox:
    """One side's frames to the other: each appended to an anonymous memory
    file (which takes it whole, so the sender never waits), then a byte on
    a pipe wakes the reader. The sender keeps the pipe's read end open too:
    a reader that stopped cannot make a send raise SIGPIPE."""

    def __init__(self) -> None:
        self.frames = os.memfd_create("conv-squashfs-frames", os.MFD_CLOEXEC)
        self.wake_r, self.wake_w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self.wake_w, False)

    def send(self, value) -> None:
        blob = marshal.dumps(value)
        os.write(self.frames, _FRAME.pack(len(blob)) + blob)
        try:
            os.write(self.wake_w, b"\0")
        except BlockingIOError:
            pass  # the reader has wake-ups it has not read yet

    def close_sending(self) -> None:
        """No more frames: the reader sees the end once it has them all."""
        if self.wake_w >= 0:
            os.close(self.wake_w)
            self.wake_w = -1

    def close(self) -> None:
        self.close_sending()
        for name in ("frames", "wake_r"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)


class _Inbox:
    """The reading side of an _Outbox (the same descriptors, in the other
    process)."""

    def __init__(self, box: _Outbox) -> None:
        self.frames, self.wake_r = box.frames, box.wake_r
        self._done = 0
        self._buf = b""

    def receive(self, wait: bool = True) -> list | None:
        """The frames' values sent since the last call, waiting for one;
        None once the sender has closed and every frame was received.
        Without ``wait``: those there are now, perhaps none."""
        while True:
            woke = os.read(self.wake_r, 4096) if wait else b"\0"
            have = os.fstat(self.frames).st_size
            if have > self._done:
                self._buf += os.pread(self.frames, have - self._done, self._done)
                self._done = have
            values = []
            buf, pos = self._buf, 0
            while len(buf) - pos >= _FRAME.size:
                (length,) = _FRAME.unpack_from(buf, pos)
                if len(buf) - pos - _FRAME.size < length:
                    break
                values.append(marshal.loads(buf[pos + _FRAME.size:pos + _FRAME.size + length]))
                pos += _FRAME.size + length
            self._buf = buf[pos:]
            if values or not wait:
                return values
            if not woke:
                return None


#: the last frame of a feed the source stopped (an ended one's is None)
_SUSPEND = "suspend"
#: on _SUSPEND the child drops the batches it has not started (the tests
#: turn this off to hand over at a point they know)
_SUSPEND_AT_ONCE = True


def _record(size: int, blocks_start: int, sizes: bytes, fragment: int, offset: int,
            sparse: int) -> FileData:
    """A FileData from the values the child sends (see ``_values``)."""
    from conv_squashfs.datawriter import FileData

    rec = FileData(size, True)
    rec.blocks_start = blocks_start
    if sizes:
        rec.block_sizes = array("I")
        rec.block_sizes.frombytes(sizes)
    rec.fragment = fragment
    rec.fragment_offset = offset
    rec.sparse = sparse
    return rec


def _values(rec: FileData) -> tuple:
    return (rec.size, rec.blocks_start, rec.block_sizes.tobytes(), rec.fragment,
            rec.fragment_offset, rec.sparse)


def data_start(codec) -> int:
    """Where file data begins: after the superblock and the compressor
    options' metadata block, if the codec has options."""
    options = codec.options()
    if options is None:
        return layout.SUPERBLOCK_SIZE
    return layout.SUPERBLOCK_SIZE + layout.METADATA_HEADER.size + len(options)


def prepare(opts: dict, ctx: Context) -> EarlyData | None:
    """Before a directory scan: a child that writes file data as the scan
    finds files."""
    if opts.get("exclude") or not forking():
        return None  # excluded files are only known from the whole tree
    # The data writer and its codec are imported here, before the fork: in
    # the child they were 10-16 ms (copy-on-write faults on top of the
    # imports) in which the data, the critical path, waited while the
    # other core scanned; the parent needs them for its own tables anyway.
    from conv_squashfs.writer import Settings
    settings = Settings.from_options(opts)
    if ctx.one_shot:
        # What is alive now (the imports) stays alive to the end: frozen,
        # no collection walks it, in either process; in the child such a
        # walk (4 ms) also copied every page it touched.
        gc.freeze()
    return EarlyData(settings, ctx)


class Handover:
    """What the child wrote: the data of the first ``count`` files of the
    encoder's list, and then either all of it (``end``, ``fragment_table``)
    or, when the source stopped feeding, a ``state`` (DataWriter.suspend)
    from which the encoder's own writer goes on with the files from
    ``count`` on, to the same bytes."""

    __slots__ = ("count", "end", "fragment_table", "state")

    def __init__(self, count: int, end: int = 0, fragment_table: list | None = None,
                 state: dict | None = None) -> None:
        self.count = count
        self.end = end
        self.fragment_table = fragment_table or []
        self.state = state


class EarlyData(FileFeed):
    """A forked child writing the data of the files fed to it, and sending
    back each file's record as it is ready (so the parent writes inodes
    while the child finishes the data)."""

    def __init__(self, settings: Settings, ctx: Context) -> None:
        self.image = ctx.scratch_file("conv-squashfs-")
        #: every file fed, in order; None once the child is gone
        self.fed: list[Data] | None = []
        #: the source announced every file (end), or stopped (stop)
        self.ended = False
        self.stopped = False
        self.child: Forked | None = None
        self._files: _Outbox | None = None
        self._records: _Outbox | None = None
        try:
            self._files = _Outbox()
            self._records = _Outbox()
            self.child = Forked(_write_fed_data, self._files, self._records,
                                self.image.fileno(), settings)
            self._records.close_sending()  # the child's copy: its exit ends them
        except BaseException:
            self.close()
            raise

    # -- the source's side

    def add(self, files: Sequence[tuple[str, Data]]) -> None:
        if self.fed is None or self._files is None:
            return
        out = []
        for path, data in files:
            if not isinstance(data, FileRangeData):
                # nothing else can be rebuilt in the child: it keeps the
                # files before this one
                self.fed += [data for _, data in files[:len(out)]]
                if out:
                    self._files.send(out)
                self.stop()
                return
            out.append((path, data.path, data.offset, data.size, data.holes))
        self.fed += [data for _, data in files]
        self._files.send(out)

    def end(self) -> None:
        self._finish(None)
        self.ended = self.fed is not None

    def stop(self) -> None:
        """The files fed stay the first ones in tree order: the child writes
        them, then hands its writer's state over (``_SUSPEND``)."""
        if not self.fed:
            self.fed = None
            self._cancel()
            return
        self._finish(_SUSPEND)
        self.stopped = self.fed is not None

    def _finish(self, last: object) -> None:
        if self.fed is None or self._files is None:
            return
        self._files.send(last)
        self._files.close()
        self._files = None

    # -- the encoder's side

    def result(self, files: list[Data], start: int,
               ready: Callable[[int, list[FileData]], object]) -> Handover | None:
        """If the child wrote ``files`` from ``start`` (all of them when the
        source ended the feed, the first ones when it stopped it): calls
        ``ready(index, records)`` as records of the files from ``index`` on
        come in, and returns what it did. Else None, the child is gone (the
        caller writes the data itself)."""
        child, fed = self.child, self.fed
        if child is None or fed is None or not (
                (self.ended and fed == files)
                or (self.stopped and len(fed) <= len(files) and fed == files[:len(fed)])):
            self._cancel()
            return None
        inbox = _Inbox(self._records)  # type: ignore[arg-type]
        first = inbox.receive()  # where the child began writing
        if first is not None and first[0] != start:
            self._cancel()
            return None
        batches = first[1:] if first is not None else None
        index = 0
        while batches is not None:
            for packed in batches:
                records = [_record(*values) for values in packed]
                ready(index, records)
                index += len(records)
            batches = inbox.receive()
        self.child = None
        got = child.result()
        if got[0] == "suspended":
            _, count, state, later = got
            for at, values in later:
                ready(at, [_record(*values)])
            return Handover(count, state=state)
        _, end, fragment_table = got
        if index != len(files):
            raise ConvError(f"the data writer process sent {index} of {len(files)} "
                            "files' records")
        return Handover(len(fed), end, fragment_table)

    def take_image(self):
        """The scratch file the image goes to, which the caller now owns."""
        image, self.image = self.image, None
        return image

    def _cancel(self) -> None:
        # the child first: it must not see its records' reader gone (EPIPE)
        if self.child is not None:
            self.child.cancel()
            self.child = None
        for box in (self._files, self._records):
            if box is not None:
                box.close()
        self._files = self._records = None

    def close(self) -> None:
        """Kill the child, and close the image unless the encoder took it."""
        self._cancel()
        if self.image is not None:
            self.image.close()
            self.image = None


def _write_fed_data(files: _Outbox, records: _Outbox, fd: int,
                    settings: Settings) -> tuple | None:
    """The child: the data of each file in the frames of ``files``, written
    into ``fd`` from where the image's data begins, which goes back first on
    ``records``; then each file's record (``_values``), in order, as soon as
    it is ready. Returns ("ended", end, fragment table) after the end frame;
    after a ``_SUSPEND`` frame ("suspended", how many files it took, the
    writer's state, (index, values) of each record ready but not sent);
    None when the parent gave up (the files ended without either)."""
    from conv_squashfs.datawriter import DataWriter
    from conv_squashfs.writer import SWITCH_INTERVAL

    # No cyclic GC in this process, which ends when the data is written: its
    # objects are acyclic, and the collection when a pause ended walked them
    # all (5 ms at the end of the critical path).
    gc.disable()
    files.close_sending()
    os.close(records.wake_r)
    sys.setswitchinterval(SWITCH_INTERVAL)
    start = data_start(settings.codec)
    records.send(start)
    writer = DataWriter(fd, start, settings.codec, settings.block_size, settings.threads,
                        settings.fragments, settings.dedup)
    order: list[FileData] = []  # every file's record, in the order fed
    sent = 0

    def send_ready() -> None:
        nonlocal sent
        end = sent
        while end < len(order) and order[end].ready:
            end += 1
        if end > sent:
            records.send([_values(rec) for rec in order[sent:end]])
            sent = end

    inbox = _Inbox(files)
    batches: deque = deque()
    last: object = ()  # the last frame once received: None (end) or _SUSPEND
    try:
        while True:
            if last == ():
                got = inbox.receive(wait=not batches)
                if got is None:
                    return None  # the parent gave up
                if got and (got[-1] is None or got[-1] == _SUSPEND):
                    last = got.pop()
                    if last == _SUSPEND and _SUSPEND_AT_ONCE:
                        # The source stopped: hand over now, with the batches
                        # not started yet (the parent writes them; here they
                        # would take a core from the rest of its scan).
                        batches.clear()
                        got = []
                batches += got
            if not batches:
                if last == ():
                    continue
                break
            batch = batches.popleft()
            base = len(order)
            writer.add_more([(base + i, path, FileRangeData(host, offset, size, holes))
                             for i, (path, host, offset, size, holes)
                             in enumerate(batch)], send_ready)
            order += map(writer.records.__getitem__, range(base, base + len(batch)))
            send_ready()
        if last == _SUSPEND:
            state = writer.suspend()
            send_ready()
            later = [(i, _values(rec)) for i, rec in enumerate(order[sent:], sent) if rec.ready]
            return "suspended", len(order), state, later
        writer.end_more(send_ready)
        end = writer.finish()
        send_ready()
    finally:
        writer.close()
    return "ended", end, writer.fragment_table
