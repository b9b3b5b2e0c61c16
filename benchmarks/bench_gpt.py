#!/usr/bin/env python3
"""gpt: conv against mke2fs + sgdisk + dd on the same inputs, side by side.

    python benchmarks/bench_gpt.py                  # a synthetic tree (default 128M)
    python benchmarks/bench_gpt.py /work/rootfs     # a real tree
    python benchmarks/bench_gpt.py --synthetic-size 512M

Cases (inputs built once, not timed):
  tree->disk   conv convert 'dir:TREE -> ext4[size=S] -> gpt -> raw:OUT'
               vs  mke2fs -d TREE fs.img S; truncate; sgdisk -n -t; dd conv=notrunc,sparse
               (conv writes the filesystem in place inside the disk; the reference
               copies it in a second pass)
  build        conv build disk.toml (an ext4 image and a 1 GiB sparse image as raw contents)
               vs  truncate; sgdisk -n -n; dd; dd
  extract      conv convert 'raw:DISK -> gpt[part=1] -> raw:P1'
               vs  dd skip=... count=... conv=sparse

Each step is one subprocess; wall time is measured around it and peak RSS
comes from /usr/bin/time (the reference's time is the sum of its steps, its
RSS the largest). Ratios are
conv / reference (below 1: conv is faster or smaller). Outputs are judged:
sgdisk -v on every disk, and the partitions compared byte for byte.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

from convcore.format import parse_size

MiB = 1 << 20


def build_tree(root: str, size: int) -> None:
    """A synthetic root: config-like text, random binaries, one large file."""
    rng = random.Random(1)
    written = 0
    i = 0
    while written < size:
        d = os.path.join(root, "usr", f"d{i // 200:04d}")
        os.makedirs(d, exist_ok=True)
        if i % 3 == 0:
            data = rng.randbytes(rng.randrange(1000, 200_000))
        else:
            data = b"".join(b"config line %d = value %d\n" % (i, j)
                            for j in range(rng.randrange(10, 3000)))
        with open(os.path.join(d, f"f{i:06d}"), "wb") as f:
            f.write(data)
        written += len(data)
        i += 1


def tree_bytes(root: str) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def build_sparse(out: str, size: int = 1 << 30, runs: int = 64) -> None:
    rng = random.Random(2)
    with open(out, "wb") as f:
        f.truncate(size)
        for r in range(runs):
            f.seek(r * (size // runs))
            f.write(rng.randbytes(MiB))


class Timed:
    """Wall time and peak RSS of a sequence of subprocesses.

    Peak RSS comes from /usr/bin/time -f %M: a child forked straight from this
    Python process would count the parent's pages it started with."""

    def __init__(self, scratch: str) -> None:
        self.wall = 0.0
        self.rss_kib = 0
        self.report = os.path.join(scratch, "time.out")

    def run(self, *cmd: str, env: dict | None = None) -> None:
        start = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", self.report, *cmd],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        self.wall += time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr.decode()}")
        with open(self.report) as f:
            self.rss_kib = max(self.rss_kib, int(f.read().split()[-1]))


def conv(*args: str) -> list[str]:
    return [sys.executable, "-m", "convcore.cli", "--quiet", *args]


def sgdisk_ok(path: str) -> None:
    out = subprocess.run(["sgdisk", "-v", path], capture_output=True, text=True).stdout
    if "No problems found" not in out:
        sys.exit(f"sgdisk -v {path}:\n{out}")


def same_range(a: str, a_off: int, b: str, b_off: int, length: int) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        fa.seek(a_off)
        fb.seek(b_off)
        while length:
            n = min(length, 8 * MiB)
            if fa.read(n) != fb.read(n):
                return False
            length -= n
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("tree", nargs="?", help="a directory tree (default: synthetic)")
    parser.add_argument("--synthetic-size", default="128M")
    parser.add_argument("--workdir", default=None, help="scratch directory (default: /tmp)")
    args = parser.parse_args()
    for tool in ("mke2fs", "sgdisk", "dd", "truncate", "/usr/bin/time"):
        if shutil.which(tool) is None:
            sys.exit(f"needs {tool}")

    work = tempfile.mkdtemp(prefix="bench-gpt-", dir=args.workdir)
    env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000")
    rows: list[tuple[str, Timed, Timed, str]] = []
    try:
        tree = args.tree
        if tree is None:
            tree = os.path.join(work, "tree")
            build_tree(tree, parse_size(args.synthetic_size))
        data = tree_bytes(tree)
        fs_size = max(64 * MiB, (data * 3 // 2 + 64 * MiB) // MiB * MiB)
        fs_mib = fs_size // MiB
        print(f"tree: {tree} ({data / MiB:.0f} MiB of files); ext4 size {fs_mib} MiB",
              flush=True)

        # tree -> ext4 -> gpt disk
        ours, ref = Timed(work), Timed(work)
        conv_disk = os.path.join(work, "conv-disk.img")
        ours.run(*conv("convert", f"dir:{tree} -> ext4[size={fs_mib}M] -> gpt -> "
                       f"raw:{conv_disk}"), env=env)
        ref_fs = os.path.join(work, "ref-fs.img")
        ref_disk = os.path.join(work, "ref-disk.img")
        disk_mib = fs_mib + 2
        ref.run("mke2fs", "-q", "-F", "-t", "ext4", "-d", tree, ref_fs, f"{fs_mib}M", env=env)
        ref.run("truncate", "-s", f"{disk_mib}M", ref_disk)
        ref.run("sgdisk", "-n", f"1:2048:+{fs_mib}M", "-t", "1:8304", ref_disk)
        ref.run("dd", f"if={ref_fs}", f"of={ref_disk}", "bs=1M", "seek=1",
                "conv=notrunc,sparse", "status=none")
        sgdisk_ok(conv_disk)
        sgdisk_ok(ref_disk)
        rows.append(("tree->ext4->gpt", ours, ref, "sgdisk -v clean"))

        # build: two existing images into one disk
        sparse = os.path.join(work, "sparse.img")
        build_sparse(sparse)
        spec = os.path.join(work, "disk.toml")
        with open(spec, "w") as f:
            f.write(f'[disk]\noutput = "built.img"\n\n'
                    f'[[partition]]\nname = "root"\ntype = "root-x86-64"\n'
                    f'content = {{ type = "raw", source = "{ref_fs}" }}\n\n'
                    f'[[partition]]\nname = "data"\ntype = "linux"\n'
                    f'content = {{ type = "raw", source = "{sparse}" }}\n')
        ours, ref = Timed(work), Timed(work)
        ours.run(*conv("build", spec), env=env)
        built = os.path.join(work, "built.img")
        ref_built = os.path.join(work, "ref-built.img")
        ref.run("truncate", "-s", f"{fs_mib + 1024 + 3}M", ref_built)
        ref.run("sgdisk", "-n", f"1:2048:+{fs_mib}M", "-n", "2:0:+1G", ref_built)
        ref.run("dd", f"if={ref_fs}", f"of={ref_built}", "bs=1M", "seek=1",
                "conv=notrunc,sparse", "status=none")
        ref.run("dd", f"if={sparse}", f"of={ref_built}", "bs=1M", f"seek={fs_mib + 1}",
                "conv=notrunc,sparse", "status=none")
        sgdisk_ok(built)
        sgdisk_ok(ref_built)
        ok = (same_range(built, MiB, ref_fs, 0, fs_size)
              and same_range(built, (fs_mib + 1) * MiB, sparse, 0, 1 << 30))
        rows.append(("build (2 images)", ours, ref, "partitions equal" if ok else "MISMATCH"))

        # extract partition 1
        ours, ref = Timed(work), Timed(work)
        p1 = os.path.join(work, "p1.img")
        ours.run(*conv("convert", f"raw:{built} -> gpt[part=1] -> raw:{p1}"), env=env)
        ref_p1 = os.path.join(work, "ref-p1.img")
        ref.run("dd", f"if={built}", f"of={ref_p1}", "bs=1M", "skip=1", f"count={fs_mib}",
                "conv=sparse", "status=none")
        ok = os.path.getsize(p1) == os.path.getsize(ref_p1) and same_range(
            p1, 0, ref_p1, 0, fs_size)
        rows.append(("extract part=1", ours, ref, "equal to dd" if ok else "MISMATCH"))

        # What any conv run costs before it does work, for reading the rows above.
        ours, ref = Timed(work), Timed(work)
        ours.run(*conv("formats"), env=env)
        ref.run("sgdisk", "--version")
        rows.append(("startup only", ours, ref, "conv formats vs sgdisk --version"))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"{'case':<18} {'conv s':>8} {'ref s':>8} {'ratio':>6} {'conv MiB':>9} "
          f"{'ref MiB':>8} {'ratio':>6}  check")
    for name, ours, ref, check in rows:
        print(f"{name:<18} {ours.wall:8.2f} {ref.wall:8.2f} {ours.wall / ref.wall:6.2f} "
              f"{ours.rss_kib / 1024:9.1f} {ref.rss_kib / 1024:8.1f} "
              f"{ours.rss_kib / max(ref.rss_kib, 1):6.2f}  {check}")


if __name__ == "__main__":
    main()
