#!/usr/bin/env python3
"""ext4 writer: conv against ``mke2fs -t ext4 -d`` on the same tree and size.

    python benchmarks/bench_ext4.py                  # /work/rootfs if present + synthetic trees
    python benchmarks/bench_ext4.py /path/to/rootfs  # that tree + synthetic trees
    python benchmarks/bench_ext4.py --only nested,onedir --files 20000

Trees: a given root filesystem; ``nested``: N small files in a nested tree;
``onedir``: N small files in one directory; ``large``: G GiB of large files;
``memory`` (not in the default set): conv alone on tiny-file trees of N and
2N files, for the peak RSS each entry adds (the slope between the two).
For each, in one go and into the same image size with 4 KiB blocks:
  conv convert 'dir:TREE -> ext4[size=S,inodes=N] -> raw:OUT'
  mke2fs -q -F -t ext4 -b 4096 -N N -d TREE OUT S
Each run is one subprocess measured by benchmarks/harness.py (wall, CPU, peak
RSS). The ratio is conv / mke2fs (below 1: conv is faster). mke2fs is stopped
after --mke2fs-limit seconds (it is quadratic in one directory); its time then
reads "N+" and the ratio "<x". Every conv image is judged by ``e2fsck -fn``
so a fast wrong answer does not count.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess

import harness

MiB = harness.MiB


def run_pair(table: harness.Table, name: str, tree: str, work: str, limit: float | None,
             times: int) -> None:
    used, entries = harness.tree_usage(tree)
    size_mib = (used * 13 // 10 >> 20) + 160
    inodes = entries * 12 // 10 + 1024  # the same inode count for both
    conv_img = os.path.join(work, "conv.img")
    mk_img = os.path.join(work, "mke2fs.img")
    conv = harness.conv_cli("convert", f"dir:{tree} -> ext4[size={size_mib}M,inodes={inodes}]"
                            f" -> raw:{conv_img}")
    mk = ["mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-N", str(inodes), "-d", tree,
          mk_img, f"{size_mib}M"]
    # one image on disk at a time: conv's is judged and removed before mke2fs runs
    ours = harness.repeat(conv, times, prepare=harness.clearing(conv_img))
    fsck = subprocess.run(["e2fsck", "-fn", conv_img], capture_output=True, text=True)
    if fsck.returncode != 0:
        raise SystemExit(f"e2fsck rejects conv's image of {name}:\n{fsck.stdout}")
    os.unlink(conv_img)
    theirs = harness.repeat(mk, times, prepare=harness.clearing(mk_img), limit=limit)
    harness.clearing(mk_img)()
    table.row(name, f"{size_mib}M", entries, *harness.pair_cells(ours, theirs), "e2fsck -fn clean")


def memory_slope(work: str, files: int, times: int) -> None:
    """Peak RSS of the whole conv process at N and 2N entries, and the slope
    (what each entry costs; a tree's data does not count: files of 1-99 bytes)."""
    table = harness.Table("dir -> ext4 peak RSS per entry (conv alone)",
                          ["entries", "conv s", "conv CPU s", "conv MiB RSS"])
    points = []
    for count in (files, 2 * files):
        root = os.path.join(work, f"mem{count}")
        with harness.built(f"{count} tiny files"):
            harness.small_files(root, count, harness.random_bytes(1, 100), seed=7, per_dir=50)
        entries = harness.count_entries(root)
        img = os.path.join(work, "mem.img")
        run = harness.repeat(harness.conv_cli("convert", f"dir:{root} -> ext4 -> raw:{img}"),
                             times, prepare=harness.clearing(img))
        harness.clearing(img)()
        shutil.rmtree(root, ignore_errors=True)
        points.append((entries, run.rss_kib))
        table.row(entries, harness.seconds(run), f"{run.cpu:.2f}", f"{run.rss_mib:.0f}")
    (n1, r1), (n2, r2) = points
    table.print()
    print(f"\nslope: {(r2 - r1) * 1024 / (n2 - n1):.0f} bytes of peak RSS per entry "
          f"({n1} -> {n2} entries)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tree", nargs="?", help="a root filesystem (default: /work/rootfs if present)")
    ap.add_argument("--files", type=int, default=100_000, help="files in the synthetic trees")
    ap.add_argument("--gib", type=int, default=4, help="GiB of large files")
    ap.add_argument("--only", default="rootfs,nested,onedir,large",
                    help="comma-separated cases: rootfs,nested,onedir,large,memory")
    ap.add_argument("--work", default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument("--mke2fs-limit", type=float, default=900,
                    help="stop mke2fs after this many seconds (it is quadratic in one directory)")
    harness.add_repeat(ap)
    args = ap.parse_args()
    harness.require_tools("mke2fs", "e2fsck")
    only = set(args.only.split(","))
    table = harness.Table("dir -> ext4 (ratio: conv / mke2fs -d)",
                          ["tree", "image", "entries", *harness.PAIR_COLUMNS, "check"])
    print(harness.machine_line())
    with harness.scratch("bench-ext4-", args.work) as work:
        tree = args.tree or harness.default_rootfs()
        if tree and "rootfs" in only:
            run_pair(table, f"rootfs {tree}", tree, work, args.mke2fs_limit, args.repeat)
        builders = [
            ("nested", f"{args.files} files nested", lambda root: harness.small_files(
                root, args.files, harness.random_bytes(50, 4096), seed=7, per_dir=50)),
            ("onedir", f"{args.files} files in one dir", lambda root: harness.one_dir(
                root, args.files, name="entry-{:06d}.conf")),
            ("large", f"{args.gib} GiB of large files", lambda root: harness.large_files(
                root, args.gib << 30, 512 * MiB)),
        ]
        for name, src in harness.synthetic_trees(work, builders, only):
            run_pair(table, name, src, work, args.mke2fs_limit, args.repeat)
        if table.rows:
            table.print()
        if "memory" in only:
            print()
            memory_slope(work, args.files, args.repeat)
    print(f"\n{harness.machine_line()}")


if __name__ == "__main__":
    main()
