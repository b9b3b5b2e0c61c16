#!/usr/bin/env python3
"""squashfs writer: conv against mksquashfs on the same tree, side by side.

    python benchmarks/bench_squashfs.py                  # /work/rootfs (if present) + 100k files
    python benchmarks/bench_squashfs.py /path/to/rootfs  # that tree + 100k small files
    python benchmarks/bench_squashfs.py --small 20000 --codecs zstd,gzip --repeat 3

For every tree and codec, runs in one go:
  conv convert 'dir:TREE -> squashfs[comp=C,level=L,block_size=BS,threads=N] -> raw:OUT'
  mksquashfs TREE OUT -comp C -Xcompression-level L -b BS -processors N -noappend
(xz has no level in mksquashfs 4.5 and conv uses the same preset; lz4 runs
without -Xhc on both sides). Each run is one subprocess; wall time and peak
RSS (and user + system CPU seconds, telling on a shared machine) come from
os.wait4. Ratios are conv / mksquashfs (below 1: conv is
faster/smaller). Each conv image is judged by ``unsquashfs -s``/``-lln``, so a
fast wrong answer does not count.
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

CODECS = {"zstd": 3, "gzip": 6, "xz": None, "lz4": None}


def build_small_files(root: str, count: int) -> None:
    """``count`` small files (50 B to 6 KB of text and a little noise) in
    directories of 500, the shape of a source tree or a node_modules."""
    rng = random.Random(4)
    words = [bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz", k=rng.randrange(2, 10)))
             for _ in range(2000)]
    for i in range(count):
        d = os.path.join(root, f"pkg{i // 500:04d}")
        if i % 500 == 0:
            os.makedirs(d, exist_ok=True)
        n = rng.randrange(5, 600)
        body = b" ".join(rng.choices(words, k=n))
        if i % 10 == 0:
            body += rng.randbytes(rng.randrange(10, 500))
        with open(os.path.join(d, f"file{i:06d}.txt"), "wb") as f:
            f.write(body)


def timed(cmd: list[str]) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds (user + system), peak RSS in MiB) of one subprocess."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss // 1024


def run_pair(tree: str, comp: str, level: int | None, block_size: int, threads: int,
             work: str, repeat: int = 1) -> dict:
    conv_img = os.path.join(work, f"conv-{comp}.sqfs")
    mk_img = os.path.join(work, f"mk-{comp}.sqfs")
    for p in (conv_img, mk_img):
        if os.path.exists(p):
            os.unlink(p)
    opts = [f"comp={comp}", f"block_size={block_size}", f"threads={threads}"]
    mk = ["mksquashfs", tree, mk_img, "-comp", comp, "-b", str(block_size),
          "-processors", str(threads), "-noappend", "-quiet", "-no-progress"]
    if level is not None:
        opts.append(f"level={level}")
        mk += ["-Xcompression-level", str(level)]
    conv = [sys.executable, "-m", "convcore.cli", "convert",
            f"dir:{tree} -> squashfs[{','.join(opts)}] -> raw:{conv_img}"]
    # Alternate the two tools and keep each one's best run: on a shared
    # machine the other load only ever adds time.
    conv_runs, mk_runs = [], []
    for _ in range(repeat):
        for p in (conv_img, mk_img):
            if os.path.exists(p):
                os.unlink(p)
        conv_runs.append(timed(conv))
        mk_runs.append(timed(mk))
    conv_wall, conv_cpu, conv_rss = (min(r[i] for r in conv_runs) for i in range(3))
    mk_wall, mk_cpu, mk_rss = (min(r[i] for r in mk_runs) for i in range(3))
    subprocess.run(["unsquashfs", "-s", conv_img], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["unsquashfs", "-lln", conv_img], check=True, stdout=subprocess.DEVNULL)
    return {"comp": comp, "conv_wall": conv_wall, "mk_wall": mk_wall, "conv_cpu": conv_cpu,
            "mk_cpu": mk_cpu, "conv_rss": conv_rss,
            "mk_rss": mk_rss, "conv_size": os.path.getsize(conv_img),
            "mk_size": os.path.getsize(mk_img)}


def report(name: str, rows: list[dict]) -> None:
    print(f"\n{name}")
    print(f"{'codec':6} {'conv s':>7} {'mksq s':>7} {'time x':>7} {'conv cpu':>8} "
          f"{'mksq cpu':>8} {'cpu x':>6} {'conv MiB':>8} {'mksq MiB':>8} {'conv size':>11} "
          f"{'mksq size':>11} {'size x':>7}")
    for r in rows:
        print(f"{r['comp']:6} {r['conv_wall']:7.2f} {r['mk_wall']:7.2f} "
              f"{r['conv_wall'] / r['mk_wall']:7.2f} {r['conv_cpu']:8.2f} {r['mk_cpu']:8.2f} "
              f"{r['conv_cpu'] / r['mk_cpu']:6.2f} {r['conv_rss']:8d} {r['mk_rss']:8d} "
              f"{r['conv_size']:11d} {r['mk_size']:11d} {r['conv_size'] / r['mk_size']:7.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tree", nargs="?", help="tree to pack (default: /work/rootfs if present)")
    ap.add_argument("--small", type=int, default=100_000, help="small-file tree size (0: skip)")
    ap.add_argument("--codecs", default=",".join(CODECS))
    ap.add_argument("--block-size", type=int, default=128 * 1024)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per tool, alternating; the best wall/CPU/RSS of each is shown")
    args = ap.parse_args()
    for tool in ("mksquashfs", "unsquashfs"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]

    with tempfile.TemporaryDirectory(prefix="bench-squashfs-") as work:
        trees = []
        tree = args.tree or ("/work/rootfs" if os.path.isdir("/work/rootfs") else None)
        if tree:
            trees.append((f"tree {tree}", tree))
        if args.small:
            small = os.path.join(work, "small")
            build_small_files(small, args.small)
            trees.append((f"{args.small} small files", small))
        print(f"block size {args.block_size}, {args.threads} threads; "
              f"levels: {', '.join(f'{c}={CODECS.get(c)}' for c in codecs)}")
        for name, path in trees:
            rows = [run_pair(path, c, CODECS.get(c), args.block_size, args.threads, work,
                             args.repeat)
                    for c in codecs]
            report(name, rows)


if __name__ == "__main__":
    main()
