#!/usr/bin/env python3
"""dir -> tar: conv against GNU tar on the same tree, side by side.

    python benchmarks/bench_tar.py                   # synthetic tree, moderate sizes
    python benchmarks/bench_tar.py /work/rootfs      # a real root filesystem
    python benchmarks/bench_tar.py --small-files 100000 --flat-entries 100000 \\
        --sparse-size 4G --dense-size 2G             # the big run

Each run is one subprocess (`conv convert 'dir:TREE -> tar:OUT'` or `tar`),
measured by benchmarks/harness.py (wall, CPU, peak RSS). The ratio is
conv / GNU tar (below 1 means conv is faster). Every output is checked for
the same member count with `tar -tf`, so a fast wrong answer does not count.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import harness

from convcore.format import parse_size


def build_tree(root: str, small_files: int, flat_entries: int, sparse_size: int,
               dense_size: int) -> None:
    """Nested small files, one huge directory, sparse and dense big files."""
    harness.small_files(os.path.join(root, "nested"), small_files,
                        harness.random_bytes(0, 8192))
    harness.one_dir(os.path.join(root, "flat"), flat_entries)
    harness.big_files(os.path.join(root, "big"), dense_size=dense_size, sparse_size=sparse_size)


def members(path: str) -> int:
    out = subprocess.run(["tar", "-tf", path], capture_output=True, check=True).stdout
    return out.count(b"\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("tree", nargs="?", help="tree to archive (default: build a synthetic one)")
    ap.add_argument("--work", help="work directory (default: a temp dir, removed after)")
    ap.add_argument("--small-files", type=int, default=20000)
    ap.add_argument("--flat-entries", type=int, default=20000)
    ap.add_argument("--sparse-size", type=parse_size, default=parse_size("1G"))
    ap.add_argument("--dense-size", type=parse_size, default=parse_size("256M"))
    ap.add_argument("--no-extract", dest="extract", action="store_false",
                    help="skip timing tar -> dir extraction")
    ap.add_argument("--compress", default="none,zst,gz",
                    help="comma-separated: none, zst, gz, xz")
    harness.add_repeat(ap)
    args = ap.parse_args()
    harness.require_tools("tar", "zstd", "gzip", "xz")

    with harness.scratch("bench-tar-", args.work) as work:
        tree = args.tree
        if tree is None:
            tree = os.path.join(work, "tree")
            with harness.built(tree):
                build_tree(tree, args.small_files, args.flat_entries, args.sparse_size,
                           args.dense_size)
        env = harness.reproducible_env()
        cpus = os.cpu_count() or 1
        gnu = {
            "none": [["tar", "-cf"], ["tar", "-S", "-cf"]],
            "zst": [["tar", "-I", f"zstd -3 -T{cpus}", "-cf"]],
            "gz": [["tar", "-I", "gzip -6", "-cf"]],
            "xz": [["tar", "-I", f"xz -6 -T{cpus}", "-cf"]],
        }
        suffix = {"none": ".tar", "zst": ".tar.zst", "gz": ".tar.gz", "xz": ".tar.xz"}
        print(f"tree: {tree}; {harness.machine_line()}")
        table = harness.Table("dir -> tar (ratio: conv / GNU tar)",
                              ["output", "GNU tar command", *harness.PAIR_COLUMNS,
                               "conv MiB out", "tar MiB out"])
        extract_table = harness.Table(
            "extract: the GNU tar -S archive -> directory (ratio: conv / tar -xpf)",
            harness.PAIR_COLUMNS)
        for comp in args.compress.split(","):
            out = os.path.join(work, f"conv{suffix[comp]}")
            for base in gnu[comp]:
                ref = os.path.join(work, f"gnu{suffix[comp]}")
                ours, theirs = harness.side_by_side(
                    harness.conv_cli("--quiet", "convert", f"dir:{tree} -> tar:{out}"),
                    [*base, ref, "-C", tree, "."], args.repeat,
                    prepare=harness.clearing(out, ref), env=env)
                c_size, c_members = os.path.getsize(out), members(out)
                t_size, t_members = os.path.getsize(ref), members(ref)
                if t_members != c_members:
                    print(f"warning: {comp}: conv wrote {c_members} members, "
                          f"GNU tar {t_members}", file=sys.stderr)
                table.row(comp, " ".join(base[:-1]), *harness.pair_cells(ours, theirs),
                          f"{c_size / 2**20:.0f}", f"{t_size / 2**20:.0f}")
                if comp == "none" and "-S" in base and args.extract:
                    x_ours, x_theirs = os.path.join(work, "x-conv"), os.path.join(work, "x-tar")
                    trash = os.path.join(work, "x-trash")
                    extract_table.row(*harness.pair_cells(*harness.side_by_side(
                        harness.conv_cli("--quiet", "convert", f"tar:{ref} -> dir:{x_ours}"),
                        ["tar", "-xpf", ref, "-C", x_theirs], args.repeat,
                        prepare=harness.setting_aside(trash, x_ours, mkdirs=[x_theirs]),
                        env=env)))
                    harness.clearing(x_ours, x_theirs, trash)()
                harness.clearing(out, ref)()
        table.print()
        if extract_table.rows:
            extract_table.print()
        print(f"\n{harness.machine_line()}")


if __name__ == "__main__":
    main()
