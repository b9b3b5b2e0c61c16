#!/usr/bin/env python3
"""squashfs -> dir: conv's reader against unsquashfs, side by side.

    python benchmarks/bench_squashfs_read.py                  # synthetic tree
    python benchmarks/bench_squashfs_read.py /work/rootfs     # a real root filesystem
    python benchmarks/bench_squashfs_read.py --small-files 100000 --comp zstd,gzip,xz,lz4

For each codec, mksquashfs builds one image from the tree (not timed); then
`unsquashfs -d OUT -p N IMG` and `conv convert 'raw:IMG -> squashfs -> dir:OUT'`
extract it, each as one subprocess measured by benchmarks/harness.py (wall,
CPU, peak RSS). Both get the same number of cores. The ratio is conv / unsquashfs
(below 1 means conv is faster). The two extractions are compared file by
file (type, mode, size, content), so a fast wrong answer does not count.
"read-only" is conv's reader alone (decode, then read every file's data into
one buffer, nothing written): what the reader costs apart from the dir sink.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import random
import stat
import subprocess
import sys

import harness

from convcore.format import parse_size


def text_lines(rng: random.Random, i: int) -> bytes:
    """Up to 600 short numbered lines of three words: the codecs have work to do."""
    return b"".join(b"%d %s\n" % (j, rng.choice((b"alpha", b"beta", b"gamma")))
                    for j in range(rng.randrange(0, 600)))


def build_tree(root: str, small_files: int, dense_size: int, sparse_size: int) -> None:
    """Nested small files, one big compressible file and a sparse one."""
    harness.small_files(os.path.join(root, "nested"), small_files, text_lines)
    harness.big_files(os.path.join(root, "big"), dense_size=dense_size, sparse_size=sparse_size)


#: conv's reader alone, through its Python API: decode the image and read
#: every file's contents into one reused buffer (no output written)
READ_ONLY = """
import sys
from convcore.blockdev import FileVolume
from conv_squashfs.reader import decode
buf = memoryview(bytearray(1 << 20))
tree = decode(FileVolume(sys.argv[1]), {}, None)
for entry in tree.data_order():
    data = entry.data
    for start, length in data.extents():
        pos, end = start, start + length
        while pos < end:
            pos += data.readinto(pos, buf[: min(len(buf), end - pos)])
"""


def same_trees(a: str, b: str) -> str | None:
    """None when both extractions hold the same entries, else the first difference."""
    for dirpath, dirnames, filenames in os.walk(a):
        rel = os.path.relpath(dirpath, a)
        other = os.path.join(b, rel)
        theirs = set(os.listdir(other))
        if theirs != set(dirnames) | set(filenames):
            return f"{rel}: entries differ"
        for name in filenames:
            pa, pb = os.path.join(dirpath, name), os.path.join(other, name)
            sa, sb = os.lstat(pa), os.lstat(pb)
            if (sa.st_mode, sa.st_size) != (sb.st_mode, sb.st_size):
                return f"{rel}/{name}: mode or size differs"
            if stat.S_ISREG(sa.st_mode) and not filecmp.cmp(pa, pb, shallow=False):
                return f"{rel}/{name}: content differs"
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("tree", nargs="?", help="tree to pack (default: a synthetic one)")
    ap.add_argument("--comp", default="zstd,gzip,xz,lz4")
    ap.add_argument("--block-size", default="128K")
    ap.add_argument("--small-files", type=int, default=20000)
    ap.add_argument("--dense-size", type=parse_size, default=parse_size("64M"))
    ap.add_argument("--sparse-size", type=parse_size, default=parse_size("1G"))
    ap.add_argument("--no-verify", action="store_true")
    ap.add_argument("--work", default=None, help="scratch directory (default: a temp dir)")
    harness.add_repeat(ap)
    args = ap.parse_args()
    harness.require_tools("mksquashfs", "unsquashfs")
    cores = os.cpu_count() or 1
    print(f"squashfs -> dir, block size {args.block_size}, tree: {args.tree or 'synthetic'}; "
          f"{harness.machine_line()}", flush=True)
    table = harness.Table("squashfs -> dir (ratio: conv / unsquashfs, same number of cores)",
                          ["codec", "image MiB", *harness.PAIR_COLUMNS, "read-only s",
                           "output"])
    with harness.scratch("bench-sqfs-read-", args.work) as work:
        tree = args.tree
        if tree is None:
            tree = os.path.join(work, "tree")
            with harness.built(tree):
                build_tree(tree, args.small_files, args.dense_size, args.sparse_size)
        for comp in args.comp.split(","):
            img = os.path.join(work, f"{comp}.sqfs")
            subprocess.run(["mksquashfs", tree, img, "-noappend", "-quiet", "-no-progress",
                            "-comp", comp, "-b", args.block_size, "-processors", str(cores)],
                           check=True, stdout=subprocess.DEVNULL)
            ref_out, conv_out = os.path.join(work, "ref"), os.path.join(work, "conv")
            trash = os.path.join(work, "trash")
            ours, theirs = harness.side_by_side(
                harness.conv_cli("-q", "convert", f"raw:{img} -> squashfs -> dir:{conv_out}"),
                ["unsquashfs", "-q", "-n", "-p", str(cores), "-d", ref_out, img], args.repeat,
                prepare=harness.setting_aside(trash, ref_out, conv_out))
            read_only = harness.repeat([sys.executable, "-c", READ_ONLY, img], args.repeat)
            verdict = "not checked" if args.no_verify else (same_trees(ref_out, conv_out)
                                                             or "same")
            table.row(comp, f"{os.path.getsize(img) / 2**20:.1f}",
                      *harness.pair_cells(ours, theirs), f"{read_only.wall:.2f}", verdict)
            harness.clearing(ref_out, conv_out, img, trash)()
    table.print()
    print(f"\n{harness.machine_line()}")


if __name__ == "__main__":
    main()
