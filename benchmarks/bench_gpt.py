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

Each step is one subprocess measured by benchmarks/harness.py (the
reference's time is the sum of its steps, its RSS the largest). Ratios are
conv / reference (below 1: conv is faster or smaller). Outputs are judged:
sgdisk -v on every disk, and the partitions compared byte for byte.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys

import harness

from convcore.format import parse_size

MiB = harness.MiB


def build_sparse(out: str, size: int = 1 << 30, runs: int = 64) -> None:
    rng = random.Random(2)
    with open(out, "wb") as f:
        f.truncate(size)
        for r in range(runs):
            f.seek(r * (size // runs))
            f.write(rng.randbytes(MiB))


def conv(*args: str) -> list[str]:
    return harness.conv_cli("--quiet", *args)


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
    parser.add_argument("--workdir", default=None, help="scratch directory (default: a temp dir)")
    harness.add_repeat(parser)
    args = parser.parse_args()
    harness.require_tools("mke2fs", "sgdisk", "dd", "truncate")
    env = harness.reproducible_env()
    table = harness.Table("gpt (ratio: conv / the reference steps, summed)",
                          ["case", *harness.PAIR_COLUMNS, "check"])
    with harness.scratch("bench-gpt-", args.workdir) as work:
        tree = args.tree
        if tree is None:
            tree = os.path.join(work, "tree")
            with harness.built(tree):
                harness.mixed_root(tree, parse_size(args.synthetic_size), max_lines=3000)
        data = harness.file_bytes(tree)
        fs_size = max(64 * MiB, (data * 3 // 2 + 64 * MiB) // MiB * MiB)
        fs_mib = fs_size // MiB
        print(f"tree: {tree} ({data / MiB:.0f} MiB of files); ext4 size {fs_mib} MiB; "
              f"{harness.machine_line()}", flush=True)

        # tree -> ext4 -> gpt disk
        conv_disk = os.path.join(work, "conv-disk.img")
        ref_fs = os.path.join(work, "ref-fs.img")
        ref_disk = os.path.join(work, "ref-disk.img")
        disk_mib = fs_mib + 2
        ours, ref = harness.side_by_side(
            conv("convert", f"dir:{tree} -> ext4[size={fs_mib}M] -> gpt -> raw:{conv_disk}"),
            harness.Steps(
                ["mke2fs", "-q", "-F", "-t", "ext4", "-d", tree, ref_fs, f"{fs_mib}M"],
                ["truncate", "-s", f"{disk_mib}M", ref_disk],
                ["sgdisk", "-n", f"1:2048:+{fs_mib}M", "-t", "1:8304", ref_disk],
                ["dd", f"if={ref_fs}", f"of={ref_disk}", "bs=1M", "seek=1",
                 "conv=notrunc,sparse", "status=none"]),
            args.repeat, prepare=harness.clearing(conv_disk, ref_fs, ref_disk),
            env=env, ref_env=env)
        sgdisk_ok(conv_disk)
        sgdisk_ok(ref_disk)
        table.row("tree->ext4->gpt", *harness.pair_cells(ours, ref), "sgdisk -v clean")

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
        built = os.path.join(work, "built.img")
        ref_built = os.path.join(work, "ref-built.img")
        ours, ref = harness.side_by_side(
            conv("build", spec),
            harness.Steps(
                ["truncate", "-s", f"{fs_mib + 1024 + 3}M", ref_built],
                ["sgdisk", "-n", f"1:2048:+{fs_mib}M", "-n", "2:0:+1G", ref_built],
                ["dd", f"if={ref_fs}", f"of={ref_built}", "bs=1M", "seek=1",
                 "conv=notrunc,sparse", "status=none"],
                ["dd", f"if={sparse}", f"of={ref_built}", "bs=1M", f"seek={fs_mib + 1}",
                 "conv=notrunc,sparse", "status=none"]),
            args.repeat, prepare=harness.clearing(built, ref_built), env=env)
        sgdisk_ok(built)
        sgdisk_ok(ref_built)
        ok = (same_range(built, MiB, ref_fs, 0, fs_size)
              and same_range(built, (fs_mib + 1) * MiB, sparse, 0, 1 << 30))
        table.row("build (2 images)", *harness.pair_cells(ours, ref),
                  "partitions equal" if ok else "MISMATCH")

        # extract partition 1
        p1 = os.path.join(work, "p1.img")
        ref_p1 = os.path.join(work, "ref-p1.img")
        ours, ref = harness.side_by_side(
            conv("convert", f"raw:{built} -> gpt[part=1] -> raw:{p1}"),
            ["dd", f"if={built}", f"of={ref_p1}", "bs=1M", "skip=1", f"count={fs_mib}",
             "conv=sparse", "status=none"],
            args.repeat, prepare=harness.clearing(p1, ref_p1), env=env)
        ok = os.path.getsize(p1) == os.path.getsize(ref_p1) and same_range(
            p1, 0, ref_p1, 0, fs_size)
        table.row("extract part=1", *harness.pair_cells(ours, ref),
                  "equal to dd" if ok else "MISMATCH")

        # What any conv run costs before it does work, for reading the rows above.
        ours, ref = harness.side_by_side(conv("formats"), ["sgdisk", "--version"], args.repeat,
                                         env=env)
        table.row("startup only", *harness.pair_cells(ours, ref),
                  "conv formats vs sgdisk --version")
    table.print()
    print(f"\n{harness.machine_line()}")


if __name__ == "__main__":
    main()
