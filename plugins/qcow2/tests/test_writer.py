"""qcow2 writer, judged by qemu-img check / compare / info / map."""

from __future__ import annotations

import json
import os
import struct

import pytest
from conv_qcow2.writer import sink

from convcore.blockdev import FileTarget, FileVolume, Plan
from convcore.errors import CorruptError, NoSpaceError, UsageError
from convcore.format import Context
from convcore.testing import run, write_plan
from convcore.tree import BytesData, FileRangeData, SegmentData

MiB = 1 << 20
GiB = 1 << 30


def write(src, out: str, **opts) -> str:
    sink(src, out, opts, Context())
    return out


def header_field(path: str, fmt: str, offset: int) -> int:
    with open(path, "rb") as f:
        f.seek(offset)
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]


@pytest.mark.parametrize("opts, cluster, compat, compression", [
    ({}, 65536, "1.1", "zlib"),
    ({"compat": "0.10"}, 65536, "0.10", None),
    ({"cluster_size": 512}, 512, "1.1", "zlib"),
    ({"cluster_size": 2 * MiB}, 2 * MiB, "1.1", "zlib"),
    ({"compress": "zlib"}, 65536, "1.1", "zlib"),
    ({"compress": "zlib", "compat": "0.10"}, 65536, "0.10", None),
    ({"compress": "zlib", "cluster_size": 512, "level": 9}, 512, "1.1", "zlib"),
    ({"compress": "zstd"}, 65536, "1.1", "zstd"),
    ({"compress": "zstd", "cluster_size": 4096, "level": 19}, 4096, "1.1", "zstd"),
])
def test_options_judged_by_qemu(qemu, sample_raw, tmp_path, opts, cluster, compat, compression):
    out = write(FileVolume(sample_raw), str(tmp_path / "out.qcow2"), **opts)
    qemu.check(out)
    qemu.compare(sample_raw, out)
    info = qemu.info(out)
    assert info["virtual-size"] == os.path.getsize(sample_raw)
    assert info["cluster-size"] == cluster
    assert info["format-specific"]["data"]["compat"] == compat
    if compression is not None:
        assert info["format-specific"]["data"]["compression-type"] == compression


def _allocated(mapping: list[dict]) -> int:
    return sum(m["length"] for m in mapping if m["data"])


def test_holes_and_zero_runs_stay_unallocated(qemu, sample_raw, tmp_path):
    for opts in ({}, {"compress": "zlib"}):
        out = write(FileVolume(sample_raw), str(tmp_path / f"o{len(opts)}.qcow2"), **opts)
        mapping = qemu.map(out)
        for m in mapping:  # the 128 KiB of written zeros at 4 MiB hold no data
            if m["data"]:
                assert m["start"] + m["length"] <= 4 * MiB or m["start"] >= 4 * MiB + 128 * 1024
        # data: 4 random runs, ~1.3 MB of text, the tail: well under 3 MiB of 6 MiB
        assert _allocated(mapping) < 3 * MiB


def test_sparse_2tib_disk(qemu, tmp_path):
    raw = str(tmp_path / "big.raw")
    with open(raw, "wb") as f:
        f.truncate(2 << 40)
        for off in (0, 700 * GiB + 4096, (2 << 40) - MiB):
            f.seek(off)
            f.write(bytes(range(256)) * 4096)
    # 4 KiB clusters: a 2 TiB disk needs a 8 MiB (2048-cluster) L1 table
    out = write(FileVolume(raw), str(tmp_path / "big.qcow2"), cluster_size=4096)
    qemu.check(out)
    qemu.compare(raw, out)
    assert qemu.info(out)["virtual-size"] == 2 << 40
    assert header_field(out, ">I", 36) == (2 << 40) // (4096 * 512)  # l1_size
    assert os.path.getsize(out) < 16 * MiB
    out64 = write(FileVolume(raw), str(tmp_path / "big64.qcow2"), compress="zstd")
    qemu.check(out64)
    qemu.compare(raw, out64)


def test_multi_cluster_refcount_table(qemu, sample_raw, tmp_path):
    out = write(FileVolume(sample_raw), str(tmp_path / "small.qcow2"), cluster_size=512)
    qemu.check(out)
    # ~5000 host clusters of 512 bytes: 20 refcount blocks, table over one cluster
    assert header_field(out, ">I", 56) >= 1  # refcount_table_clusters
    with open(sample_raw, "ab") as f:
        f.truncate(24 * MiB)
        f.seek(8 * MiB)
        f.write(bytes(range(256)) * (40 * 1024))
    out2 = write(FileVolume(sample_raw), str(tmp_path / "more.qcow2"), cluster_size=512)
    assert header_field(out2, ">I", 56) > 1
    qemu.check(out2)
    qemu.compare(sample_raw, out2)


def test_reproducible_and_thread_count_independent(sample_raw, tmp_path):
    for opts in ({}, {"compress": "zlib"}, {"compress": "zstd"}):
        outs = []
        for i, threads in enumerate((1, 2, 2)):
            outs.append(write(FileVolume(sample_raw), str(tmp_path / f"{len(outs)}-{i}.qcow2"),
                              threads=threads, **opts))
        blobs = [open(p, "rb").read() for p in outs]
        assert blobs[0] == blobs[1] == blobs[2], opts
        for p in outs:
            os.unlink(p)


class ScriptedPlan(Plan):
    """A writer as the chain runs one: metadata pwrites (partial, unaligned,
    rewritten), file data through copy_from_data/copy_from_fd, a window."""

    def __init__(self, tmp_path, size: int = 9 * MiB) -> None:
        self.size = size
        self.src = str(tmp_path / "payload.bin")
        with open(self.src, "wb") as f:
            f.write(bytes(range(251)) * 8000)  # ~2 MB, not cluster aligned
            f.seek(3 * MiB)
            f.write(b"after a hole" * 1000)
        self.sparse_src = str(tmp_path / "sparse.bin")
        with open(self.sparse_src, "wb") as f:
            f.write(b"S" * 5000)
            f.seek(MiB)
            f.write(b"T" * 7000)

    def write_to(self, target) -> None:
        target.pwrite(b"superblock" * 100, 1024)
        target.pwrite(b"\x01" * 70_000, 60_000)              # crosses cluster boundaries
        target.copy_from_data(FileRangeData(self.src), 200_000)  # shares a cluster with the above
        target.copy_from_data(FileRangeData(self.sparse_src, holes=True), 5 * MiB + 100)
        target.copy_from_data(BytesData(b"small file"), 7 * MiB - 5)
        vol = FileVolume(self.src)
        try:
            target.copy_from_data(SegmentData(vol, 300_000, [(0, 100_000, 0),
                                                             (200_000, 12_000, 3 * MiB)]),
                                  6 * MiB + 33)
        finally:
            vol.close()
        with open(self.src, "rb") as f:
            target.copy_from_fd(f.fileno(), 4096, 150_000, 8 * MiB - 70_000)
        window = target.window(4 * MiB, MiB)
        window.pwrite(b"in a window", 1000)
        target.pwrite(bytes(4096), 2 * MiB)                   # zeros into an unallocated cluster
        target.pwrite(b"rewritten", 1024)                      # rewrite in place
        assert target.pread(9, 1024) == b"rewritten"
        assert target.pread(12, 4 * MiB + 999) == b"\0in a window"


def test_in_place_plan_matches_raw_sink(qemu, tmp_path):
    plan = ScriptedPlan(tmp_path)
    raw = write_plan(plan, tmp_path / "plan.raw")
    for opts in ({}, {"cluster_size": 512}, {"compat": "0.10", "cluster_size": 2 * MiB},
                 {"compress": "zstd"}):
        out = write(plan, str(tmp_path / f"plan{len(os.listdir(tmp_path))}.qcow2"), **opts)
        qemu.check(out)
        qemu.compare(raw, out)
    # compressed plans go through a temporary raw file that must not remain
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".conv-qcow2-")]


def test_in_place_write_outside_disk_is_nospace(tmp_path):
    class Overrun(Plan):
        size = MiB

        def write_to(self, target):
            target.pwrite(b"x" * 10, MiB - 5)

    with pytest.raises(NoSpaceError, match="overruns"):
        write(Overrun(), str(tmp_path / "o.qcow2"))


def test_bad_options_are_usage_errors(sample_raw, tmp_path):
    with pytest.raises(UsageError, match="compat=1.1"):
        write(FileVolume(sample_raw), str(tmp_path / "a.qcow2"), compress="zstd", compat="0.10")
    with pytest.raises(UsageError, match="cluster_size"):
        write(FileVolume(sample_raw), str(tmp_path / "b.qcow2"), cluster_size=3000)

    class Huge(Plan):
        size = 1 << 50

        def write_to(self, target):
            pass

    with pytest.raises(UsageError, match="L1 table"):
        write(Huge(), str(tmp_path / "c.qcow2"), cluster_size=512)


def _mutated_copy(base: str, path: str) -> str:
    """The base with one cluster changed, one zeroed, one added in a hole."""
    with open(base, "rb") as f:
        data = bytearray(f.read())
    data[10:20] = b"overlay!!!"                  # cluster 0 changes
    data[3 * MiB:3 * MiB + 65536] = bytes(65536)  # a data cluster becomes zeros
    data[2 * MiB + 65536 * 10:2 * MiB + 65536 * 10 + 5] = b"added"  # into a hole
    with open(path, "wb") as f:
        f.write(data)
    return path


@pytest.mark.parametrize("compat, compress, backing_fmt", [
    ("1.1", "none", "raw"), ("0.10", "none", "raw"), ("1.1", "zstd", "qcow2"),
    ("1.1", "zlib", None),
])
def test_backing_overlay(qemu, sample_raw, tmp_path, compat, compress, backing_fmt):
    base = sample_raw
    if backing_fmt == "qcow2":
        base = write(FileVolume(sample_raw), str(tmp_path / "base.qcow2"))
    new = _mutated_copy(sample_raw, str(tmp_path / "new.raw"))
    opts = {"compat": compat, "compress": compress, "backing": os.path.basename(base)}
    if backing_fmt:
        opts["backing_format"] = backing_fmt
    out = write(FileVolume(new), str(tmp_path / "ovl.qcow2"), **opts)
    qemu.check(out)
    qemu.compare(new, out)
    info = qemu.info(out)
    assert info["backing-filename"] == os.path.basename(base)
    assert info["backing-filename-format"] == (backing_fmt or "raw")
    own = [m for m in qemu.map(out) if m["depth"] == 0 and (m["data"] or m["zero"])
           and m.get("present", True)]
    # only the three clusters that differ from the backing image are stored
    assert sum(m["length"] for m in own) == 3 * 65536, own


@pytest.mark.parametrize("size", [0, 512, 1000, 3 * 65536 + 512])
def test_empty_and_tiny_disks(qemu, tmp_path, size):
    raw = str(tmp_path / "tiny.raw")
    with open(raw, "wb") as f:
        f.truncate(size)
        f.write(b"x" * min(size, 10))
    for opts in ({}, {"compress": "zlib"}):
        out = write(FileVolume(raw), str(tmp_path / f"tiny{len(opts)}.qcow2"), **opts)
        qemu.check(out)
        qemu.compare(raw, out)
        assert qemu.info(out)["virtual-size"] == -(-size // 512) * 512  # as qemu-img rounds


class TwoThreadPlan(Plan):
    """Two writer threads (as the ext4 writer uses) sharing clusters: one
    writes 4 KiB "metadata" blocks, the other "file data", interleaved by
    timing."""

    size = 4 * MiB

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def write_to(self, target) -> None:
        import threading
        import time

        def meta() -> None:
            for i in range(0, 64, 3):
                target.pwrite(bytes([i + 1]) * 4096, i * 65536)
                time.sleep(self.delay)

        def data() -> None:
            for i in range(64):
                if i % 3:
                    target.pwrite(bytes([200 + i % 50]) * 8192, i * 65536 + 4096)
                    time.sleep(self.delay / 2)

        threads = [threading.Thread(target=meta), threading.Thread(target=data)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def test_writer_threads_give_the_same_bytes(qemu, tmp_path):
    raw = str(tmp_path / "two.raw")
    fd = os.open(raw, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    os.ftruncate(fd, TwoThreadPlan.size)
    TwoThreadPlan(0).write_to(FileTarget(fd, TwoThreadPlan.size))
    os.close(fd)
    outs = []
    for i, delay in enumerate((0.0, 0.001, 0.0005)):
        out = write(TwoThreadPlan(delay), str(tmp_path / f"two{i}.qcow2"))
        qemu.check(out)
        qemu.compare(raw, out)
        outs.append(open(out, "rb").read())
    assert outs[0] == outs[1] == outs[2]


def test_compressed_from_a_host_file_plan_reads_it_in_place(tmp_path, monkeypatch):
    """A plan whose bytes already sit in a host file (a squashfs image) is
    compressed from that file: no temporary raw copy beside the output."""
    import tempfile

    from conv_qcow2.reader import Qcow2Volume
    from conv_squashfs.writer import encode as squashfs_encode

    from convcore.builtin.dirfmt import source as dir_source
    from convcore.testing import make_sample_dir

    root = make_sample_dir(str(tmp_path / "root"), devices=False)
    ctx = Context(seed="s")
    ctx.scratch_dir = str(tmp_path)
    plan = squashfs_encode(dir_source(root, {}, ctx), {}, ctx)
    assert plan.host_file() is not None
    made: list[str] = []
    real_mkstemp = tempfile.mkstemp
    monkeypatch.setattr(tempfile, "mkstemp",
                        lambda *a, **k: made.append("mkstemp") or real_mkstemp(*a, **k))
    out = write(plan, str(tmp_path / "out.qcow2"), compress="zstd")
    assert made == []
    want = os.pread(plan.host_file(), plan.size, 0)
    with Qcow2Volume(out) as volume:
        assert volume.read_exact(plan.size, 0) == want


def _big_raw(path: str) -> str:
    """18 MiB: data runs that straddle the 4 MiB copy chunks at unaligned
    offsets, a zero run inside data, holes between runs."""
    import random
    rnd = random.Random(5)
    with open(path, "wb") as f:
        f.truncate(18 * MiB + 1536)
        for off, n in ((0, 9 * MiB + 4096), (10 * MiB + 512, 3 * MiB + 700),
                       (15 * MiB - 12345, 2 * MiB)):
            f.seek(off)
            f.write(rnd.randbytes(n))
        f.seek(2 * MiB)
        f.write(bytes(3 * 65536 + 100))  # zeros inside a data range
    return path


@pytest.mark.parametrize("cluster_size", [512, 65536, 2 * MiB])
def test_parallel_copy_gives_the_one_thread_bytes(qemu, tmp_path, cluster_size):
    """A raw disk copied by the worker threads of Qcow2Target is identical,
    byte for byte, to the one-thread copy, and clean in qemu-img."""
    raw = _big_raw(str(tmp_path / "big.raw"))
    blobs = []
    for i, threads in enumerate((1, 2, 2, 3)):
        out = write(FileVolume(raw), str(tmp_path / f"p{i}.qcow2"), threads=threads,
                    cluster_size=cluster_size)
        qemu.check(out)
        qemu.compare(raw, out)
        # the space reserved ahead of the data (fallocate) is cut off at the end
        report = json.loads(run("qemu-img", "check", "--output=json", out).stdout)
        assert os.path.getsize(out) == report["image-end-offset"]
        with open(out, "rb") as f:
            blobs.append(f.read())
        os.unlink(out)
    assert blobs[0] == blobs[1] == blobs[2] == blobs[3]


def test_parallel_copy_then_overwrite_and_closed_fd(qemu, tmp_path):
    """copy_from_fd may return before its bytes land: the caller closes its fd
    at once, and later writes and reads over the same range see the copy
    first, as with one thread."""
    raw = _big_raw(str(tmp_path / "big.raw"))

    class CopyThenPatch(Plan):
        size = 20 * MiB

        def write_to(self, target) -> None:
            with open(raw, "rb") as f:
                target.copy_from_fd(f.fileno(), 0, 12 * MiB, MiB)
            target.pwrite(b"patched" * 1000, 5 * MiB)
            assert target.pread(7, 5 * MiB) == b"patched"
            with open(raw, "rb") as f:
                target.copy_from_fd(f.fileno(), MiB, 4 * MiB, 14 * MiB)
            target.copy_from_data(BytesData(bytes(70_000)), 15 * MiB)  # zeros over data

    want = str(tmp_path / "want.raw")
    fd = os.open(want, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    os.ftruncate(fd, CopyThenPatch.size)
    CopyThenPatch().write_to(FileTarget(fd, CopyThenPatch.size))
    os.close(fd)
    blobs = []
    for threads in (1, 2):
        out = write(CopyThenPatch(), str(tmp_path / f"c{threads}.qcow2"), threads=threads)
        qemu.check(out)
        qemu.compare(want, out)
        with open(out, "rb") as f:
            blobs.append(f.read())
    assert blobs[0] == blobs[1]


def test_parallel_copy_of_a_short_input_is_one_error(tmp_path):
    src = str(tmp_path / "short.bin")
    with open(src, "wb") as f:
        f.write(b"x" * MiB)

    class Short(Plan):
        size = 16 * MiB

        def write_to(self, target) -> None:
            with open(src, "rb") as f:
                target.copy_from_fd(f.fileno(), 0, 9 * MiB, 0)

    with pytest.raises(CorruptError, match="input ended early"):
        write(Short(), str(tmp_path / "s.qcow2"), threads=2)
