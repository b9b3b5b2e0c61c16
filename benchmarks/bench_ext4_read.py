#!/usr/bin/env python3
"""ext4 reader: conv against ``debugfs -R 'rdump / OUT'`` on the same image.

    python benchmarks/bench_ext4_read.py                  # /work/rootfs if present + synthetic
    python benchmarks/bench_ext4_read.py /path/to/rootfs  # that tree + synthetic trees
    python benchmarks/bench_ext4_read.py --only nested --files 100000

Each tree is put into an image by ``mke2fs -t ext4 -d`` (not timed); then, in
one go on that image:
  conv convert 'raw:IMG -> ext4 -> dir:OUT'
  debugfs -R 'rdump / OUT' IMG
Each run is one subprocess measured by benchmarks/harness.py (wall, CPU, peak
RSS). The ratio is conv / debugfs (below 1: conv is faster). Both extractions
must hold the same names and the same bytes (compared by size and a sample of
contents) so a fast wrong answer does not count.
"""

from __future__ import annotations

import argparse
import os
import random
import stat
import subprocess

import harness

MiB = harness.MiB


def listing(root: str) -> dict[str, int]:
    """{relative path: size of a regular file, -1 for a directory or symlink}.
    Devices, FIFOs and sockets are left out: rdump does not extract them."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode):
                out[os.path.relpath(full, root)] = st.st_size
            elif stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
                out[os.path.relpath(full, root)] = -1
    return out


def same_bytes(a: str, b: str, paths: list[str]) -> bool:
    for rel in paths:
        with open(os.path.join(a, rel), "rb") as f, open(os.path.join(b, rel), "rb") as g:
            while True:
                x, y = f.read(MiB), g.read(MiB)
                if x != y:
                    return False
                if not x:
                    break
    return True


def run_pair(table: harness.Table, name: str, tree: str, work: str, times: int) -> None:
    used, entries = harness.tree_usage(tree)
    size_mib = (used * 13 // 10 >> 20) + 160
    image = os.path.join(work, "fs.img")
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096",
                    "-N", str(entries * 12 // 10 + 1024), "-d", tree, image, f"{size_mib}M"],
                   check=True, capture_output=True)
    conv_out, dbg_out = os.path.join(work, "conv-out"), os.path.join(work, "debugfs-out")
    trash = os.path.join(work, "trash")
    ours, theirs = harness.side_by_side(
        harness.conv_cli("convert", f"raw:{image} -> ext4 -> dir:{conv_out}"),
        ["debugfs", "-R", f"rdump / {dbg_out}", image], times,
        prepare=harness.setting_aside(trash, conv_out, mkdirs=[dbg_out]))
    got, want = listing(conv_out), listing(dbg_out)
    if got != want:
        missing = sorted(set(want) ^ set(got))[:5]
        raise SystemExit(f"{name}: conv and debugfs extract different trees: {missing}")
    files = sorted(p for p, size in want.items() if size >= 0)
    sample = random.Random(1).sample(files, min(200, len(files)))
    if not same_bytes(conv_out, dbg_out, sample):
        raise SystemExit(f"{name}: conv and debugfs extract different bytes")
    harness.clearing(conv_out, dbg_out, image, trash)()
    table.row(name, entries, *harness.pair_cells(ours, theirs),
              f"same names, sizes, {len(sample)} files' bytes")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tree", nargs="?", help="a root filesystem (default: /work/rootfs if present)")
    ap.add_argument("--files", type=int, default=20_000, help="files in the nested tree")
    ap.add_argument("--gib", type=int, default=1, help="GiB of large files")
    ap.add_argument("--only", default="rootfs,nested,large")
    ap.add_argument("--work", default=None, help="scratch directory (default: a temp dir)")
    harness.add_repeat(ap)
    args = ap.parse_args()
    harness.require_tools("mke2fs", "debugfs")
    only = set(args.only.split(","))
    table = harness.Table("ext4 -> dir (ratio: conv / debugfs rdump)",
                          ["tree", "entries", *harness.PAIR_COLUMNS, "check"])
    print(harness.machine_line())
    with harness.scratch("bench-ext4-read-", args.work) as work:
        tree = args.tree or harness.default_rootfs()
        if tree and "rootfs" in only:
            run_pair(table, f"rootfs {tree}", tree, work, args.repeat)
        builders = [
            ("nested", f"{args.files} files nested", lambda root: harness.small_files(
                root, args.files, harness.random_bytes(50, 4096), seed=7, per_dir=50)),
            ("large", f"{args.gib} GiB of large files", lambda root: harness.large_files(
                root, args.gib << 30, 256 * MiB)),
        ]
        for name, src in harness.synthetic_trees(work, builders, only):
            run_pair(table, name, src, work, args.repeat)
    table.print()
    print(f"\n{harness.machine_line()}")


if __name__ == "__main__":
    main()
