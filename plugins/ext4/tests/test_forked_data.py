"""The ext4 writer's forked data copy: a child process copies host files
into the output while the parent writes metadata. Same bytes as the threaded
copy, judged by e2fsck; a source that changed after the scan is one line
naming it, and no failure leaves a child process behind."""

from __future__ import annotations

import glob
import os
import random
import re

import pytest
from conv_ext4 import _formats, writer
from conv_ext4.writer import encode

from convcore.blockdev import FileTarget
from convcore.builtin import dirfmt
from convcore.errors import ConvError, CorruptError, UnsupportedError
from convcore.format import Context
from convcore.testing import child_pids, make_sample_dir, require_tool, run, write_plan
from convcore.tree import BytesData, Entry, FileRangeData, Kind, Tree


def _opts(**kw) -> dict:
    fmt = _formats()[0]
    opts = {o.name: o.default for o in fmt.options}
    opts.update(kw)
    return opts


@pytest.fixture
def forks(monkeypatch) -> list[int]:
    """Fork for any amount of data; counts the forks the writer makes."""
    if not writer.forking():
        pytest.skip("fork is not available here")
    monkeypatch.setattr(writer, "_FORK_MIN_BYTES", 0)
    made: list[int] = []
    real = writer.Forked

    def counting(*args):
        made.append(1)
        return real(*args)
    monkeypatch.setattr(writer, "Forked", counting)
    return made


def _fill(root: str, files: int, seed: int = 1) -> str:
    """Nested small files, a few larger ones and a sparse one."""
    rng = random.Random(seed)
    for i in range(files):
        d = os.path.join(root, f"d{i // 40}", f"e{i % 3}")
        os.makedirs(d, exist_ok=True)
        size = rng.choice([1, 50, 4095, 4096, 4097, 9000, 70000, 300000])
        with open(os.path.join(d, f"f{i}"), "wb") as f:
            f.write(rng.randbytes(size))
    with open(os.path.join(root, "sparse"), "wb") as f:
        f.write(b"a" * 70000)
        f.seek(5 << 20)
        f.write(b"b" * 5000)
    return root


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("forked")
    return {"sample": make_sample_dir(str(base / "sample")),
            "files": _fill(str(base / "files"), 600)}


def _write(tree: Tree, path, offset: int = 0, **kw) -> bytes:
    """The image bytes, written into a file at ``offset`` (a partition)."""
    plan = encode(tree, _opts(**kw), Context(seed="forked"))
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, plan.size + 2 * offset)
        target = FileTarget(fd, plan.size + 2 * offset)
        plan.write_to(target.window(offset, plan.size) if offset else target)
        return os.pread(fd, plan.size, offset)
    finally:
        os.close(fd)


@pytest.mark.parametrize("name,fs,block_size,offset", [
    ("files", "ext4", 4096, 0), ("files", "ext4", 1024, 1 << 20), ("files", "ext2", 1024, 0),
    ("files", "ext3", 4096, 3 << 20), ("sample", "ext4", 4096, 0), ("sample", "ext2", 1024, 0),
])
def test_forked_copy_gives_the_threaded_bytes(trees, forks, monkeypatch, tmp_path, name, fs,
                                              block_size, offset):
    require_tool("e2fsck")
    tree = dirfmt.source(trees[name], {}, Context())
    if name == "files":  # and files from no host file: a stream in the parent
        for i in range(5):
            tree.add(Entry(f"mem{i}", Kind.FILE, mode=0o600,
                           data=BytesData(random.Random(i).randbytes(30000 * i + 1))))
    forked = _write(tree, tmp_path / "forked.img", offset, fs=fs, block_size=block_size)
    assert forks, "the data was not copied in a child"
    monkeypatch.setenv("CONV_NO_FORK", "1")
    threaded = _write(tree, tmp_path / "threaded.img", offset, fs=fs, block_size=block_size)
    assert len(forks) == 1
    assert forked == threaded
    (tmp_path / "fs.img").write_bytes(forked)
    run("e2fsck", "-fn", str(tmp_path / "fs.img"))
    assert not child_pids()


def _victims(root: str) -> list[str]:
    """The first and the last small file in inode order: the child claims
    the first batch at once, the parent joins at the end."""
    names = sorted(os.path.relpath(p, root) for p in glob.glob(f"{root}/d*/e*/f*")
                   if os.path.getsize(p) <= 4096)
    return [names[0], names[-1]]


@pytest.mark.parametrize("which", [0, 1])
@pytest.mark.parametrize("change", ["removed", "shrunk"])
def test_source_changed_after_the_scan(tmp_path, forks, which, change):
    src = _fill(str(tmp_path / "src"), 600, seed=which)
    tree = dirfmt.source(src, {}, Context())
    plan = encode(tree, _opts(), Context(seed="forked"))
    victim = _victims(src)[which]
    if change == "removed":
        os.unlink(os.path.join(src, victim))
    else:
        os.truncate(os.path.join(src, victim), 0)
    with pytest.raises(ConvError) as info:
        write_plan(plan, tmp_path / "out.img")
    assert forks
    message = str(info.value)
    assert "\n" not in message and f"/{victim}" in message
    assert ("No such file" if change == "removed" else "shorter") in message
    assert not child_pids()


def test_a_metadata_failure_kills_the_copying_child(tmp_path, forks):
    """The parent fails (an owner ext4 cannot store) while the child is stuck
    opening a FIFO: the child is killed, not left behind, and the error is the
    parent's."""
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    plain = tmp_path / "plain"
    plain.write_bytes(b"p" * 4096)
    tree = Tree(Entry("", Kind.DIR, mode=0o755))
    tree.add(Entry("blocked", Kind.FILE, mode=0o644, data=FileRangeData(fifo, size=4096)))
    tree.add(Entry("plain", Kind.FILE, mode=0o644, data=FileRangeData(str(plain))))
    tree.add(Entry("owner", Kind.FILE, mode=0o644, uid=1 << 33, data=FileRangeData(str(plain))))
    plan = encode(tree, _opts(), Context(seed="forked"))
    with pytest.raises(UnsupportedError, match="/owner: uid/gid"):
        write_plan(plan, tmp_path / "out.img")
    assert forks
    assert not child_pids()


@pytest.mark.parametrize("uid,gid", [(-1, 0), (0, -5), (1 << 32, 0), (0, 1 << 40)])
def test_owner_out_of_range_is_one_line(tmp_path, uid, gid):
    tree = Tree(Entry("", Kind.DIR, mode=0o755))
    tree.add(Entry("odd", Kind.FILE, mode=0o644, uid=uid, gid=gid))
    plan = encode(tree, _opts(), Context(seed="forked"))
    with pytest.raises(UnsupportedError, match=f"^/odd: uid/gid {uid}/{gid} out of range$"):
        write_plan(plan, tmp_path / "out.img")


@pytest.mark.parametrize("sec", [0, (1 << 31) - 1, 1 << 31, -1, -(1 << 31), (1 << 33) + 5])
def test_times_either_side_of_2038(tmp_path, sec):
    """Each timestamp field on its own at the edges of the 32-bit range: the
    fast path for 1970-2038 and the encoded one meet without a gap."""
    require_tool("debugfs")
    ns = sec * 1_000_000_000 + 123
    tree = Tree(Entry("", Kind.DIR, mode=0o755))
    tree.add(Entry("a", Kind.FILE, mode=0o644, atime_ns=ns, mtime_ns=5, ctime_ns=5,
                   crtime_ns=5))
    tree.add(Entry("m", Kind.FILE, mode=0o644, mtime_ns=ns, atime_ns=5, ctime_ns=5,
                   crtime_ns=5))
    tree.add(Entry("c", Kind.FILE, mode=0o644, ctime_ns=ns, atime_ns=5, mtime_ns=5,
                   crtime_ns=5))
    tree.add(Entry("r", Kind.FILE, mode=0o644, crtime_ns=ns, atime_ns=5, mtime_ns=5,
                   ctime_ns=5))
    img = write_plan(encode(tree, _opts(), Context(seed="forked")), tmp_path / "t.img")
    run("e2fsck", "-fn", img)
    for name, field in (("a", "atime"), ("m", "mtime"), ("c", "ctime"), ("r", "crtime")):
        out = run("debugfs", "-R", f"stat /{name}", img).stdout
        times = {}
        for key, lo, extra in re.findall(r"^\s*(\w+): 0x([0-9a-f]+):([0-9a-f]+)", out, re.M):
            lo, extra = int(lo, 16), int(extra, 16)
            s = (lo - (1 << 32) if lo & 0x80000000 else lo) + ((extra & 3) << 32)
            times[key] = s * 1_000_000_000 + (extra >> 2)
        assert times[field] == ns, (name, out)
        assert all(v == 5 for k, v in times.items() if k != field), (name, out)


def _fragmented(tmp_path) -> tuple[str, str]:
    """A tree whose one file spans block groups at 1K blocks (several runs)."""
    src = tmp_path / "src"
    src.mkdir()
    big = src / "big"
    big.write_bytes(random.Random(3).randbytes(12 << 20))
    os.utime(big, ns=(1_000_000_000, 2_000_000_000))
    return str(src), str(big)


def test_a_file_in_several_runs_leaves_its_atime(tmp_path, forks):
    """Read with O_NOATIME like every other source file: a second conversion
    sees the same times (relatime would move this atime, older than mtime)."""
    src, big = _fragmented(tmp_path)
    tree = dirfmt.source(src, {}, Context())
    plan = encode(tree, _opts(block_size=1024), Context(seed="forked"))
    assert plan.p.runs, "the file should lie in several runs"
    img = write_plan(plan, tmp_path / "out.img")
    assert forks
    assert os.stat(big).st_atime_ns == 1_000_000_000
    out = tmp_path / "big.out"
    run("debugfs", "-R", f"dump /big {out}", img)
    assert out.read_bytes() == open(big, "rb").read()


def test_a_file_in_several_runs_removed_after_the_scan(tmp_path, forks):
    src, big = _fragmented(tmp_path)
    tree = dirfmt.source(src, {}, Context())
    plan = encode(tree, _opts(block_size=1024), Context(seed="forked"))
    os.unlink(big)
    with pytest.raises(ConvError, match=f"^/big: cannot read {big}: No such file"):
        write_plan(plan, tmp_path / "out.img")
    assert not child_pids()


class _Broken(BytesData):
    """File data from no host file that fails when read."""

    def readinto(self, offset, buf):
        raise CorruptError("mem: the archive ends early")

    def copy_to(self, fd, dst_offset, buf=None):
        raise CorruptError("mem: the archive ends early")


def test_a_failing_stream_beside_the_child_is_one_line(trees, tmp_path, forks):
    tree = dirfmt.source(trees["files"], {}, Context())
    tree.add(Entry("mem", Kind.FILE, mode=0o600, data=_Broken(b"x" * 100000)))
    plan = encode(tree, _opts(), Context(seed="forked"))
    with pytest.raises(CorruptError, match="^mem: the archive ends early$"):
        write_plan(plan, tmp_path / "out.img")
    assert forks
    assert not child_pids()
