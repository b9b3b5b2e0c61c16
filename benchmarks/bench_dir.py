#!/usr/bin/env python3
"""dir scan: conv's `dir:` source and Tree walk against `find -printf`, per entry.

    python benchmarks/bench_dir.py                      # synthetic tree, moderate sizes
    python benchmarks/bench_dir.py /work/rootfs         # a real root filesystem
    python benchmarks/bench_dir.py --nested 100000 --flat 100000    # the big run

What is timed (each in its own subprocess, so peak RSS is that process's own):

- conv: ``convcore.builtin.dirfmt.source`` (lstat, listxattr, readlink per
  entry), then one pass over ``tree.sorted()`` and ``tree.link_counts()``,
  i.e. the per-entry work every tree writer pays before writing a byte;
- reference: ``find TREE -printf '%s %m %u %T@\\n' >/dev/null`` (an lstat per
  entry and a uid lookup, in C).

A third, untimed child reports the scanned Tree's bytes per entry
(tracemalloc). The page cache is warmed with one untimed ``find`` first; each side runs
``--repeat`` times and the fastest run counts. Per-entry µs is wall time over
the entry count; the ratio is conv / find (below 1 means conv is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import harness


def build_tree(root: str, nested: int, flat: int) -> None:
    """``nested`` small files 100 to a directory two levels deep, ``flat``
    tiny files in one directory, and a few hardlinks and symlinks."""
    harness.small_files(os.path.join(root, "nested"), nested, lambda rng, i: b"x" * 100)
    flat_dir = os.path.join(root, "flat")
    harness.one_dir(flat_dir, flat)
    links = os.path.join(root, "links")
    os.makedirs(links)
    for i in range(min(1000, flat)):
        os.link(os.path.join(flat_dir, f"entry-{i:07d}"), os.path.join(links, f"hard-{i}"))
        os.symlink(f"../flat/entry-{i:07d}", os.path.join(links, f"soft-{i}"))


def measure_conv(tree: str) -> None:
    """Child mode: time the scan and the walks in this process; print JSON."""
    from convcore.builtin import dirfmt
    from convcore.format import Context

    t0 = time.perf_counter()
    c0 = time.process_time()
    scanned = dirfmt.source(tree, {"owner": None, "exclude": ()}, Context())
    t1 = time.perf_counter()
    count = 0
    size = 0
    for entry in scanned.sorted():
        count += 1
        size += entry.size
    t2 = time.perf_counter()
    counts = scanned.link_counts()
    t3 = time.perf_counter()
    cpu = time.process_time() - c0
    print(json.dumps({"entries": count, "bytes": size, "links": len(counts),
                      "scan": t1 - t0, "sorted": t2 - t1, "link_counts": t3 - t2,
                      "cpu": cpu}))


def measure_memory(tree: str) -> None:
    """Child mode: the scanned Tree's own bytes per entry (tracemalloc, after
    the imports), printed as JSON. Separate from the timed run: tracing
    slows allocation several times."""
    import gc
    import tracemalloc

    from convcore.builtin import dirfmt
    from convcore.format import Context

    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    scanned = dirfmt.source(tree, {"owner": None, "exclude": ()}, Context())
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    print(json.dumps({"entries": len(scanned), "bytes": held}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("tree", nargs="?", help="tree to scan (default: build a synthetic one)")
    ap.add_argument("--work", help="work directory (default: a temp dir, removed after)")
    ap.add_argument("--nested", type=int, default=20000, help="small files in nested dirs")
    ap.add_argument("--flat", type=int, default=20000, help="files in one directory")
    ap.add_argument("--repeat", type=int, default=3, help="runs per side; the fastest counts")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        measure_conv(args.child)
        return
    if args.memory_child:
        measure_memory(args.memory_child)
        return

    with harness.scratch("bench-dir-", args.work) as work:
        tree = args.tree
        if tree is None:
            tree = os.path.join(work, "tree")
            with harness.built(tree):
                build_tree(tree, args.nested, args.flat)
        find = ["find", tree, "-printf", r"%s %m %u %T@\n"]
        subprocess.run(find, stdout=subprocess.DEVNULL, check=True)  # warm the cache

        best_conv: dict | None = None
        conv_rss = 0
        for _ in range(args.repeat):
            run = harness.measure([sys.executable, os.path.abspath(__file__), "--child", tree],
                                  keep_output=True)
            result = json.loads(run.output)
            result["wall"] = run.wall
            conv_rss = max(conv_rss, run.rss_kib)
            if best_conv is None or result["scan"] < best_conv["scan"]:
                best_conv = result
        assert best_conv is not None
        found = harness.repeat(find, args.repeat)
        find_wall, find_rss = found.wall, found.rss_kib
        # the same entries are counted, or the comparison means nothing
        listed = subprocess.run(["find", tree], capture_output=True, check=True).stdout
        n_find = listed.count(b"\n")
        if n_find != best_conv["entries"]:
            sys.exit(f"entry counts differ: conv {best_conv['entries']}, find {n_find}")

        traced = json.loads(subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--memory-child", tree],
            capture_output=True, check=True).stdout)
        n = best_conv["entries"]
        conv_walk = best_conv["scan"] + best_conv["sorted"] + best_conv["link_counts"]
        print(f"tree: {tree} ({n} entries); {harness.machine_line()}")
        table = harness.Table("dir scan (ratio: conv in-process total / find -printf)",
                              ["step", "wall s", "µs/entry", "RSS MiB"])
        rows = [
            ("conv dir source (scan)", best_conv["scan"], None),
            ("conv tree.sorted() iteration", best_conv["sorted"], None),
            ("conv tree.link_counts()", best_conv["link_counts"], None),
            ("conv total (in process)", conv_walk, conv_rss),
            ("conv process (python start incl.)", best_conv["wall"], conv_rss),
            ("find -printf (reference)", find_wall, find_rss),
        ]
        for name, secs, rss in rows:
            table.row(name, f"{secs:.3f}", f"{secs / n * 1e6:.2f}",
                      "" if rss is None else f"{rss / 1024:.1f}")
        table.print()
        print(f"\nconv CPU in process: {best_conv['cpu']:.3f} s "
              f"({best_conv['cpu'] / n * 1e6:.2f} µs/entry); "
              f"ratio conv total / find: {harness.ratio(conv_walk, find_wall)}; "
              f"the Tree holds {traced['bytes'] / traced['entries']:.0f} B/entry "
              "(tracemalloc)")


if __name__ == "__main__":
    main()
