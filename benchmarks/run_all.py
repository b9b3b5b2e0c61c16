#!/usr/bin/env python3
"""Every benchmark once, one after the other, into one markdown report.

    python benchmarks/run_all.py                       # moderate sizes, /work/rootfs if present
    python benchmarks/run_all.py --tree /path/to/rootfs --only ext4,qcow2 > figures.md
    python benchmarks/run_all.py --budget 25           # start nothing new after 25 minutes

Each script runs in its own process (never two at once: on a small machine
they would disturb each other's figures), with the load average noted before
it. Its tables go to stdout as they come; its progress lines to stderr.
A script that fails is reported and the next one runs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

#: (name, arguments at a moderate size; "{tree}" is the real tree, when given),
#: the ones with targets in the issues first
MODERATE: list[tuple[str, list[str]]] = [
    ("ext4", ["{tree}", "--files", "20000", "--gib", "1", "--mke2fs-limit", "300"]),
    ("squashfs", ["{tree}", "--small", "20000"]),
    ("qcow2", ["{tree}"]),
    ("tar", ["{tree}"]),
    ("ext4_read", ["{tree}", "--files", "20000", "--gib", "1"]),
    ("squashfs_read", ["{tree}"]),
    ("gpt", ["{tree}"]),
    ("oci", ["{tree}"]),
    ("dir", ["{tree}"]),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tree", default="/work/rootfs" if os.path.isdir("/work/rootfs") else None,
                    help="real tree for the scripts that take one (default: /work/rootfs)")
    ap.add_argument("--only", help="comma-separated names, e.g. ext4,tar")
    ap.add_argument("--budget", type=float, help="minutes: start no script after this long")
    args = ap.parse_args()
    only = set(args.only.split(",")) if args.only else None
    began = time.perf_counter()
    for name, argv in MODERATE:
        script = os.path.join(HERE, f"bench_{name}.py")
        if (only and name not in only) or not os.path.exists(script):
            continue
        if args.budget is not None and time.perf_counter() - began > args.budget * 60:
            print(f"\n## bench_{name}.py: not run ({args.budget:g} minutes are up)", flush=True)
            continue
        cmd = [sys.executable, script]
        for arg in argv:
            if arg == "{tree}":
                if args.tree:
                    cmd.append(args.tree)
            else:
                cmd.append(arg)
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"\n## {' '.join(os.path.relpath(c) for c in cmd[1:])}\n\n"
              f"load average before: {load}; {time.strftime('%H:%M:%S UTC', time.gmtime())}",
              flush=True)
        start = time.perf_counter()
        proc = subprocess.run(cmd)
        print(f"\n({time.perf_counter() - start:.0f} s in all"
              f"{'' if proc.returncode == 0 else f'; FAILED with exit code {proc.returncode}'})",
              flush=True)


if __name__ == "__main__":
    main()
