#!/usr/bin/env python3
"""squashfs writer: conv against mksquashfs on the same tree, side by side.

    python benchmarks/bench_squashfs.py                  # /work/rootfs (if present) + 100k files
    python benchmarks/bench_squashfs.py /path/to/rootfs  # that tree + 100k small files
    python benchmarks/bench_squashfs.py --small 20000 --codecs zstd,gzip --repeat 3
    python benchmarks/bench_squashfs.py --small-tree /tmp/small100k   # built once, reused

For every tree and codec, runs in one go:
  conv convert 'dir:TREE -> squashfs[comp=C,level=L,block_size=BS,threads=N] -> raw:OUT'
  mksquashfs TREE OUT -comp C -Xcompression-level L -b BS -processors N -noappend
(xz has no level in mksquashfs 4.5 and conv uses the same preset; lz4 runs
without -Xhc on both sides). Each run is one subprocess measured by
benchmarks/harness.py (wall, user + system CPU seconds -- telling on a shared
machine -- and peak RSS). Ratios are conv / mksquashfs (below 1: conv is
faster/smaller). Each conv image is judged by ``unsquashfs -s``/``-lln``, so a
fast wrong answer does not count.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess

import harness

CODECS = {"zstd": 3, "gzip": 6, "xz": None, "lz4": None}


def build_small_files(root: str, count: int) -> None:
    """``count`` small files (50 B to 6 KB of text and a little noise) in
    directories of 500, the shape of a source tree or a node_modules."""
    vocabulary = random.Random(4)
    words = [bytes(vocabulary.choices(b"abcdefghijklmnopqrstuvwxyz",
                                      k=vocabulary.randrange(2, 10)))
             for _ in range(2000)]

    def text(rng: random.Random, i: int) -> bytes:
        body = b" ".join(rng.choices(words, k=rng.randrange(5, 600)))
        if i % 10 == 0:
            body += rng.randbytes(rng.randrange(10, 500))
        return body

    harness.small_files(root, count, text, seed=4, per_dir=500, name="file{:06d}.txt")


def run_pair(table: harness.Table, tree: str, comp: str, level: int | None, block_size: int,
             threads: int, work: str, repeat: int = 1) -> None:
    conv_img = os.path.join(work, f"conv-{comp}.sqfs")
    mk_img = os.path.join(work, f"mk-{comp}.sqfs")
    opts = [f"comp={comp}", f"block_size={block_size}", f"threads={threads}"]
    mk = ["mksquashfs", tree, mk_img, "-comp", comp, "-b", str(block_size),
          "-processors", str(threads), "-noappend", "-quiet", "-no-progress"]
    if level is not None:
        opts.append(f"level={level}")
        mk += ["-Xcompression-level", str(level)]
    conv = harness.conv_cli("convert",
                            f"dir:{tree} -> squashfs[{','.join(opts)}] -> raw:{conv_img}")
    # alternating, each one's best run: on a shared machine other load only adds time
    ours, theirs = harness.side_by_side(conv, mk, repeat,
                                        prepare=harness.clearing(conv_img, mk_img),
                                        before_each=harness.warming(tree))
    subprocess.run(["unsquashfs", "-s", conv_img], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["unsquashfs", "-lln", conv_img], check=True, stdout=subprocess.DEVNULL)
    conv_size, mk_size = os.path.getsize(conv_img), os.path.getsize(mk_img)
    table.row(comp, *harness.pair_cells(ours, theirs), harness.ratio(ours.cpu, theirs.cpu),
              conv_size, mk_size, f"{conv_size / mk_size:.4f}")
    harness.clearing(conv_img, mk_img)()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tree", nargs="?", help="tree to pack (default: /work/rootfs if present)")
    ap.add_argument("--small", type=int, default=100_000, help="small-file tree size (0: skip)")
    ap.add_argument("--small-tree", metavar="DIR",
                    help="keep the small-file tree here and reuse it when it exists "
                         "(building 100k files is slow on a busy disk)")
    ap.add_argument("--codecs", default=",".join(CODECS))
    ap.add_argument("--block-size", type=int, default=128 * 1024)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    harness.add_repeat(ap)
    args = ap.parse_args()
    harness.require_tools("mksquashfs", "unsquashfs")
    codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]

    with harness.scratch("bench-squashfs-") as work:
        trees = []
        tree = args.tree or harness.default_rootfs()
        if tree:
            trees.append((f"tree {tree}", tree))
        if args.small:
            small = args.small_tree or os.path.join(work, "small")
            if not (args.small_tree and os.path.isdir(small)):
                with harness.built(f"{args.small} small files"):
                    build_small_files(small, args.small)
            trees.append((f"{args.small} small files", small))
        print(f"block size {args.block_size}, {args.threads} threads; "
              f"levels: {', '.join(f'{c}={CODECS.get(c)}' for c in codecs)}; "
              f"{harness.machine_line()}")
        for name, path in trees:
            table = harness.Table(f"dir -> squashfs, {name} (ratio: conv / mksquashfs)",
                                  ["codec", *harness.PAIR_COLUMNS, "CPU x", "conv bytes",
                                   "mksq bytes", "size x"])
            for c in codecs:
                run_pair(table, path, c, CODECS.get(c), args.block_size, args.threads, work,
                         args.repeat)
            table.print()
    print(f"\n{harness.machine_line()}")


if __name__ == "__main__":
    main()
