"""Shared pieces of the benchmark scripts: measuring a command, running conv
and a reference tool side by side, synthetic trees, and markdown tables.

Every measured command runs under ``/usr/bin/time`` (a small C program) and
not straight from this Python process: Linux records the old address space's
peak RSS at exec, so a child forked or vforked from a Python script reports at
least the script's own peak RSS (a 300 MiB script makes ``true`` "use"
300 MiB). ``time`` forks the command from its own small image and reports that
child's ``wait4`` ``ru_maxrss``; CPU time (user + system of the command and
everything it waited for) comes from our own ``os.wait4`` of ``time``.

No timing here is an assertion: the scripts print figures, people judge them.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

MiB = 1 << 20
GiB = 1 << 30
TIME = "/usr/bin/time"


@dataclass(frozen=True)
class Run:
    """What one command (or a sequence of steps, see ``then``) cost."""

    wall: float
    """seconds, measured around the process"""
    cpu: float
    """user + system seconds of the command and its children"""
    rss_kib: int
    """peak resident set of the largest single process, KiB"""
    timed_out: bool = False
    """stopped at its time limit: ``wall`` and ``cpu`` are lower bounds"""
    output: bytes = b""
    """the command's stdout, when ``measure`` was asked to keep it"""

    @property
    def rss_mib(self) -> float:
        return self.rss_kib / 1024

    def then(self, other: Run) -> Run:
        """A two-step pipeline run one step after the other: times add up, the
        peak is the larger of the two."""
        return Run(self.wall + other.wall, self.cpu + other.cpu,
                   max(self.rss_kib, other.rss_kib), self.timed_out or other.timed_out,
                   self.output + other.output)


def best(runs: Sequence[Run]) -> Run:
    """One figure from repeated runs: the fastest wall time (the least disturbed
    by the other users of a shared machine), the lowest CPU time and the
    highest peak RSS (memory is not noise)."""
    return Run(min(r.wall for r in runs), min(r.cpu for r in runs),
               max(r.rss_kib for r in runs), any(r.timed_out for r in runs))


class Steps(tuple):
    """Commands run one after the other and measured as one (the reference
    way of doing in several tools what conv does in one command)."""

    def __new__(cls, *cmds: Sequence[str]) -> Steps:
        return super().__new__(cls, cmds)


Command = Sequence[str] | Steps


def measure(cmd: Command, *, env: dict[str, str] | None = None,
            limit: float | None = None, cwd: str | None = None, keep_output: bool = False) -> Run:
    """Run ``cmd`` once, output discarded. A non-zero exit stops the benchmark
    with the command's stderr (a fast failure is not a result). Past ``limit``
    seconds the command is killed and the run is marked ``timed_out``.
    ``Steps`` add up (see ``Run.then``); ``limit`` applies to each step.
    ``keep_output``: the command's stdout is kept in ``Run.output`` (it goes
    to a file, not a pipe, so the command never waits on us)."""
    if isinstance(cmd, Steps):
        total = Run(0.0, 0.0, 0)
        for step in cmd:
            total = total.then(measure(step, env=env, limit=limit, cwd=cwd,
                                       keep_output=keep_output))
        return total
    if not os.path.exists(TIME):
        sys.exit(f"{TIME} is needed to measure peak RSS (Debian package: time)")
    # stderr goes to a file: a chatty command must not block on a full pipe
    with (tempfile.NamedTemporaryFile("r", prefix="bench-", suffix=".time") as report,
          tempfile.TemporaryFile(prefix="bench-", suffix=".err") as errors,
          tempfile.TemporaryFile(prefix="bench-", suffix=".out") as output):
        start = time.perf_counter()
        # a session of its own, so a time limit can stop time and the command together
        proc = subprocess.Popen([TIME, "-q", "-f", "%M", "-o", report.name, *cmd],
                                stdout=output if keep_output else subprocess.DEVNULL,
                                stderr=errors,
                                env=env, cwd=cwd, start_new_session=True)
        timed_out = False
        if limit is None:
            _, status, usage = os.wait4(proc.pid, 0)
        else:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.perf_counter() - start > limit:
                    os.killpg(proc.pid, signal.SIGKILL)
                    _, status, usage = os.wait4(proc.pid, 0)
                    timed_out = True
                    break
                time.sleep(0.02)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if timed_out:
            return Run(wall, usage.ru_utime + usage.ru_stime, 0, timed_out=True)
        if proc.returncode != 0:
            errors.seek(0)
            err = errors.read().decode(errors="replace")
            sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err}")
        lines = report.read().split()
        output.seek(0)
        kept = output.read() if keep_output else b""
    rss = int(lines[-1]) if lines else 0
    return Run(wall, usage.ru_utime + usage.ru_stime, rss, output=kept)


def repeat(cmd: Command, times: int, *, prepare: Callable[[], None] | None = None,
           env: dict[str, str] | None = None, limit: float | None = None) -> Run:
    """``best`` of ``times`` runs of ``cmd``; ``prepare`` (e.g. removing the last
    output) runs before each one, untimed."""
    runs = []
    for _ in range(max(1, times)):
        if prepare is not None:
            prepare()
        runs.append(measure(cmd, env=env, limit=limit))
    return best(runs)


def side_by_side(conv: Command, ref: Command, times: int = 1, *,
                 prepare: Callable[[], None] | None = None,
                 before_each: Callable[[], None] | None = None,
                 env: dict[str, str] | None = None, ref_env: dict[str, str] | None = None,
                 limit: float | None = None) -> tuple[Run, Run]:
    """conv and the reference, alternating ``times`` times (conv first) so both
    see the same machine; ``best`` of each. ``prepare`` runs before each pair,
    ``before_each`` (e.g. ``warming``) before each of the two commands, both
    untimed. The outputs of the last pair are left in place for the caller
    to judge."""
    ours, theirs = [], []
    for _ in range(max(1, times)):
        if prepare is not None:
            prepare()
        if before_each is not None:
            before_each()
        ours.append(measure(conv, env=env))
        if before_each is not None:
            before_each()
        theirs.append(measure(ref, env=ref_env, limit=limit))
    return best(ours), best(theirs)


def warming(root: str) -> Callable[[], None]:
    """A ``before_each`` step: read every regular file under ``root``, so the
    command starts with the whole tree in the page cache. Some machines page
    cold page cache out within seconds (DAMON pageout on a VM): without this,
    a run after a long one (xz) read part of its input from disk, a cost of
    the machine that landed on whichever tool came next."""

    def warm() -> None:
        buf = bytearray(1 << 20)
        dirs = [root]
        while dirs:
            try:
                entries = list(os.scandir(dirs.pop()))
            except OSError:
                continue
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    dirs.append(entry.path)
                    continue
                if not entry.is_file(follow_symlinks=False):
                    continue  # never open a FIFO or a device
                try:
                    fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
                except OSError:
                    continue
                try:
                    while os.readv(fd, [buf]) == len(buf):
                        pass
                except OSError:
                    pass
                finally:
                    os.close(fd)

    return warm


def clearing(*paths: str, mkdirs: Sequence[str] = ()) -> Callable[[], None]:
    """A ``prepare`` step: remove ``paths`` (files or whole trees) left by the last
    run, then create the empty directories ``mkdirs``."""

    def clear() -> None:
        for path in (*paths, *mkdirs):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.unlink(path)
        for path in mkdirs:
            os.makedirs(path)

    return clear


def setting_aside(trash: str, *paths: str, mkdirs: Sequence[str] = ()) -> Callable[[], None]:
    """A ``prepare`` step for commands that create many files: move the last
    run's ``paths`` into ``trash`` (remove it when done) instead of deleting
    them, then create the empty directories ``mkdirs``. Files deleted just
    before a run make ext4's inode allocator skip each recently freed inode
    (``recently_deleted``): 70% of an extraction's CPU in a profile, whoever
    extracts next."""
    count = 0

    def set_aside() -> None:
        nonlocal count
        os.makedirs(trash, exist_ok=True)
        for path in (*paths, *mkdirs):
            if os.path.lexists(path):
                count += 1
                os.rename(path, os.path.join(trash, f"{count}-{os.path.basename(path)}"))
        for path in mkdirs:
            os.makedirs(path)

    return set_aside


# -- command lines -------------------------------------------------------------

def conv_cli(*args: str) -> list[str]:
    """The ``conv`` command as users run it (the one installed beside this
    Python, else ``python -m convcore.cli``)."""
    script = os.path.join(os.path.dirname(sys.executable), "conv")
    if os.path.exists(script):
        return [script, *args]
    return [sys.executable, "-m", "convcore.cli", *args]


def conv_api(chain: str) -> list[str]:
    """A fresh interpreter calling convcore.pipeline.convert: conv's work
    without the CLI's imports (``conv formats`` shows what those add)."""
    return [sys.executable, "-c",
            "import sys; from convcore.pipeline import convert; convert(sys.argv[1])", chain]


def reproducible_env() -> dict[str, str]:
    return dict(os.environ, SOURCE_DATE_EPOCH="1700000000")


def require_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        sys.exit(f"not installed: {', '.join(missing)}")


# -- scratch space and the command line ---------------------------------------

@contextmanager
def scratch(prefix: str, keep: str | None = None) -> Iterator[str]:
    """A work directory: ``keep`` when given (left in place), else a temporary
    one removed afterwards."""
    if keep:
        os.makedirs(keep, exist_ok=True)
        yield keep
        return
    work = tempfile.mkdtemp(prefix=prefix)
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def add_repeat(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="run each side N times, alternating, and keep the fastest "
                             "(default 1)")


def machine_line() -> str:
    """Cores and load average, printed with every table: a figure taken on a
    busy shared machine reads differently."""
    one, five, fifteen = os.getloadavg()
    return (f"{os.cpu_count()} cores; load average {one:.2f} {five:.2f} {fifteen:.2f}; "
            f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")


def default_rootfs() -> str | None:
    """The Debian root filesystem the lead builds, when it is there."""
    return "/work/rootfs" if os.path.isdir("/work/rootfs") else None


# -- synthetic trees ------------------------------------------------------------

Content = Callable[[random.Random, int], bytes]
"""(rng, file number) -> the bytes of one synthetic file"""


def random_bytes(low: int, high: int) -> Content:
    """Incompressible files of ``low`` to ``high`` - 1 bytes."""
    return lambda rng, i: rng.randbytes(rng.randrange(low, high))


def small_files(root: str, count: int, content: Content, *, seed: int = 1,
                per_dir: int = 100, name: str = "f{:07d}.txt") -> None:
    """``count`` small files, ``per_dir`` to a directory, two levels deep
    (``a000/b00``, 50 directories to a parent): a source tree's shape."""
    rng = random.Random(seed)
    for i in range(count):
        d = os.path.join(root, f"a{i // (per_dir * 50):03d}", f"b{i // per_dir % 50:02d}")
        if i % per_dir == 0:
            os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, name.format(i)), "wb") as f:
            f.write(content(rng, i))


def one_dir(root: str, count: int, *, name: str = "entry-{:07d}") -> None:
    """``count`` tiny files (their number and a newline) in one directory."""
    os.makedirs(root, exist_ok=True)
    for i in range(count):
        with open(os.path.join(root, name.format(i)), "wb") as f:
            f.write(b"%d\n" % i)


def sparse_file(path: str, size: int, *, seed: int = 2, every: int = 64 * MiB,
                run: int = MiB) -> None:
    """``size`` bytes of holes with ``run`` bytes of random data every ``every``."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        for off in range(0, size, every):
            f.seek(off)
            f.write(rng.randbytes(min(run, size - off)))
        f.truncate(size)


def dense_file(path: str, size: int, *, seed: int = 3) -> None:
    """``size`` bytes (whole MiB), each MiB half random and half numbered text
    lines with a zero tail: compressible, but not trivially."""
    half = random.Random(seed).randbytes(MiB // 2)
    lines = 21845  # 24-byte lines that fit in half a MiB
    with open(path, "wb") as f:
        for i in range(size // MiB):
            f.write(half + (b"line %09d of dense data\n" % i) * lines
                    + bytes(MiB // 2 - lines * 24))


def large_files(root: str, total: int, file_size: int, *, seed: int = 3) -> None:
    """``total`` bytes of incompressible data in files of ``file_size`` (whole
    MiB), written a MiB at a time from one rotated random MiB."""
    os.makedirs(root, exist_ok=True)
    chunk = random.Random(seed).randbytes(MiB)
    for i in range(max(1, total // file_size)):
        with open(os.path.join(root, f"blob{i}.bin"), "wb") as f:
            for j in range(file_size // MiB):
                f.write(chunk[j:] + chunk[:j])


def mixed_root(root: str, size: int, *, max_lines: int = 5000, seed: int = 1) -> None:
    """About ``size`` bytes shaped like /usr: a third random binaries
    (1-200 KB), the rest config-like text, 200 files to a directory."""
    rng = random.Random(seed)
    written = i = 0
    while written < size:
        d = os.path.join(root, "usr", f"d{i // 200:04d}")
        os.makedirs(d, exist_ok=True)
        if i % 3 == 0:
            data = rng.randbytes(rng.randrange(1000, 200_000))
        else:
            data = b"".join(b"config line %d = value %d\n" % (i, j)
                            for j in range(rng.randrange(10, max_lines)))
        with open(os.path.join(d, f"f{i:06d}"), "wb") as f:
            f.write(data)
        written += len(data)
        i += 1


def big_files(root: str, *, dense_size: int = 0, sparse_size: int = 0) -> None:
    """``root``/dense.bin and ``root``/sparse.img, each when its size is not 0."""
    os.makedirs(root, exist_ok=True)
    if dense_size:
        dense_file(os.path.join(root, "dense.bin"), dense_size)
    if sparse_size:
        sparse_file(os.path.join(root, "sparse.img"), sparse_size)


Builder = Callable[[str], None]
"""builds a synthetic tree at the path it is given"""


def synthetic_trees(work: str, builders: Sequence[tuple[str, str, Builder]],
                    only: set[str]) -> Iterator[tuple[str, str]]:
    """For each (key, label, builder) whose key is in ``only``: build the tree
    in ``work`` (untimed), yield (label, path), and remove it once the caller
    is done with it, so one synthetic tree is on disk at a time."""
    for key, label, build in builders:
        if key not in only:
            continue
        path = os.path.join(work, key)
        with built(label):
            build(path)
            # the new tree's writeback (4 GiB for the large-file case) would
            # otherwise land on whichever side runs first
            os.sync()
        try:
            yield label, path
        finally:
            shutil.rmtree(path, ignore_errors=True)


def tree_usage(root: str) -> tuple[int, int]:
    """(bytes the tree occupies on disk plus 256 per entry, number of entries
    below ``root``): what a filesystem image of it needs, roughly."""
    total = entries = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            st = os.lstat(os.path.join(dirpath, name))
            total += st.st_blocks * 512 + 256
            entries += 1
    return total, entries


def file_bytes(root: str) -> int:
    """Sum of the regular files' apparent sizes."""
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def count_entries(root: str) -> int:
    return sum(len(dirs) + len(files) for _, dirs, files in os.walk(root))


@contextmanager
def built(what: str) -> Iterator[None]:
    """Say on stderr how long building an input took (it is never timed)."""
    start = time.perf_counter()
    yield
    print(f"built {what} in {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)


# -- tables -----------------------------------------------------------------------

def seconds(run: Run) -> str:
    return f"{run.wall:.0f}+" if run.timed_out else f"{run.wall:.2f}"


def ratio(ours: float, theirs: float, *, bound: bool = False) -> str:
    """ours / theirs to 2 decimals (3 below 0.1); ``bound``: theirs was stopped
    early, so the ratio is at most this."""
    if theirs <= 0:
        return "-"
    r = ours / theirs
    text = f"{r:.3f}" if r < 0.1 else f"{r:.2f}"
    return f"<{text}" if bound else text


def mib(n_bytes: float) -> str:
    return f"{n_bytes / MiB:.1f}"


PAIR_COLUMNS = ["conv s", "ref s", "time x", "conv CPU s", "ref CPU s", "conv MiB RSS",
                "ref MiB RSS", "RSS x"]


def pair_cells(ours: Run, ref: Run) -> list[str]:
    """The cells under PAIR_COLUMNS: times, their ratio (below 1: conv is
    faster), CPU seconds and peak RSS of both."""
    return [seconds(ours), seconds(ref), ratio(ours.wall, ref.wall, bound=ref.timed_out),
            f"{ours.cpu:.2f}", f"{ref.cpu:.2f}", f"{ours.rss_mib:.0f}",
            "-" if ref.timed_out else f"{ref.rss_mib:.0f}",
            "-" if ref.timed_out else ratio(ours.rss_kib, ref.rss_kib)]


class Table:
    """A markdown table on stdout (``print``); each row is also echoed to stderr
    as it comes in, so a long run shows its progress."""

    def __init__(self, title: str, columns: Sequence[str]) -> None:
        self.title = title
        self.columns = list(columns)
        self.rows: list[list[str]] = []

    def row(self, *cells: object) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{len(cells)} cells for {len(self.columns)} columns")
        text = [str(c) for c in cells]
        self.rows.append(text)
        pairs = zip(self.columns, text, strict=True)
        print(f"[{self.title}] " + ", ".join(f"{c}: {t}" for c, t in pairs),
              file=sys.stderr, flush=True)

    def print(self) -> None:
        print(f"\n{self.title}\n")
        print(f"| {' | '.join(self.columns)} |")
        print(f"|{'|'.join('---' for _ in self.columns)}|")
        for cells in self.rows:
            print(f"| {' | '.join(cells)} |")
        sys.stdout.flush()
