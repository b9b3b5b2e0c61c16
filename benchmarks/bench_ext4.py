#!/usr/bin/env python3
"""ext4 writer: conv against ``mke2fs -t ext4 -d`` on the same tree and size.

    python benchmarks/bench_ext4.py                  # /work/rootfs if present + synthetic trees
    python benchmarks/bench_ext4.py /path/to/rootfs  # that tree + synthetic trees
    python benchmarks/bench_ext4.py --only nested,onedir --files 20000

Trees: a given root filesystem; ``nested``: N small files in a nested tree;
``onedir``: N small files in one directory; ``large``: G GiB of large files.
For each, in one go and into the same image size with 4 KiB blocks:
  conv convert 'dir:TREE -> ext4[size=S,inodes=N] -> raw:OUT'
  mke2fs -q -F -t ext4 -b 4096 -N N -d TREE OUT S
Each run is one subprocess; wall time and peak RSS come from os.wait4. The
ratio is conv / mke2fs (below 1: conv is faster). Every conv image is judged
by ``e2fsck -fn`` so a fast wrong answer does not count.
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


def build_nested(root: str, count: int) -> None:
    """``count`` small files (50 B - 4 KB) three directory levels deep."""
    rng = random.Random(7)
    for i in range(count):
        d = os.path.join(root, f"a{i // 10000:02d}", f"b{i // 500 % 20:02d}", f"c{i // 50 % 10}")
        if i % 50 == 0:
            os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"file{i:06d}.txt"), "wb") as f:
            f.write(rng.randbytes(rng.randrange(50, 4096)))


def build_onedir(root: str, count: int) -> None:
    """``count`` tiny files in one directory."""
    os.makedirs(root)
    for i in range(count):
        with open(os.path.join(root, f"entry-{i:06d}.conf"), "wb") as f:
            f.write(b"%d\n" % i)


def build_large(root: str, gib: int) -> None:
    """``gib`` GiB of incompressible data in 512 MiB files."""
    os.makedirs(root)
    chunk = random.Random(3).randbytes(1 << 20)
    for i in range(gib * 2):
        with open(os.path.join(root, f"blob{i}.bin"), "wb") as f:
            for j in range(512):
                f.write(chunk[j:] + chunk[:j])


def du_bytes(root: str) -> tuple[int, int]:
    """(bytes the tree occupies, number of entries)."""
    total = entries = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            st = os.lstat(os.path.join(dirpath, name))
            total += st.st_blocks * 512 + 256
            entries += 1
    return total, entries


def timed(cmd: list[str], limit: float | None = None) -> tuple[float, int]:
    """(wall seconds, peak RSS in MiB) of one subprocess. Past ``limit``
    seconds it is killed and the time reported is a lower bound (negative)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while limit is not None:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() - start > limit:
            proc.kill()
            _, status, usage = os.wait4(proc.pid, 0)
            return -(time.perf_counter() - start), usage.ru_maxrss // 1024
        time.sleep(0.05)
    else:
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode() if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({code}):\n{err}")
    return wall, usage.ru_maxrss // 1024


def run_pair(name: str, tree: str, work: str, limit: float | None) -> dict:
    used, entries = du_bytes(tree)
    size_mib = (used * 13 // 10 >> 20) + 160
    inodes = entries * 12 // 10 + 1024  # the same inode count for both
    conv_img = os.path.join(work, "conv.img")
    mk_img = os.path.join(work, "mke2fs.img")
    for p in (conv_img, mk_img):
        if os.path.exists(p):
            os.unlink(p)
    conv = [sys.executable, "-m", "convcore.cli", "convert",
            f"dir:{tree} -> ext4[size={size_mib}M,inodes={inodes}] -> raw:{conv_img}"]
    mk = ["mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-N", str(inodes), "-d", tree,
          mk_img, f"{size_mib}M"]
    conv_wall, conv_rss = timed(conv)
    fsck = subprocess.run(["e2fsck", "-fn", conv_img], capture_output=True, text=True)
    if fsck.returncode != 0:
        raise SystemExit(f"e2fsck rejects conv's image of {name}:\n{fsck.stdout}")
    os.unlink(conv_img)
    mk_wall, mk_rss = timed(mk, limit)
    os.unlink(mk_img)
    return {"name": name, "size": size_mib, "conv_wall": conv_wall, "mk_wall": mk_wall,
            "conv_rss": conv_rss, "mk_rss": mk_rss}


def report(rows: list[dict]) -> None:
    sys.stdout.flush()
    print(f"\n{'tree':28} {'size':>7} {'conv s':>8} {'mke2fs s':>9} {'time x':>7} "
          f"{'conv MiB':>9} {'mke2fs MiB':>11}")
    for r in rows:
        # a negative mke2fs time: it was stopped there, so the ratio is an upper bound
        mk = f"{-r['mk_wall']:.0f}+" if r["mk_wall"] < 0 else f"{r['mk_wall']:.2f}"
        ratio = r["conv_wall"] / abs(r["mk_wall"])
        print(f"{r['name']:28} {r['size']:6d}M {r['conv_wall']:8.2f} {mk:>9} "
              f"{'<' if r['mk_wall'] < 0 else ' '}{ratio:6.3f} {r['conv_rss']:9d} "
              f"{r['mk_rss']:11d}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tree", nargs="?", help="a root filesystem (default: /work/rootfs if present)")
    ap.add_argument("--files", type=int, default=100_000, help="files in the synthetic trees")
    ap.add_argument("--gib", type=int, default=4, help="GiB of large files")
    ap.add_argument("--only", default="rootfs,nested,onedir,large")
    ap.add_argument("--work", default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument("--mke2fs-limit", type=float, default=900,
                    help="stop mke2fs after this many seconds (it is quadratic in one directory)")
    args = ap.parse_args()
    for tool in ("mke2fs", "e2fsck"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    only = set(args.only.split(","))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-ext4-", dir=args.work) as work:
        tree = args.tree or ("/work/rootfs" if os.path.isdir("/work/rootfs") else None)
        if tree and "rootfs" in only:
            rows.append(run_pair(f"rootfs {tree}"[:28], tree, work, args.mke2fs_limit))
            report(rows[-1:])
        builders = [("nested", f"{args.files} files nested", build_nested, args.files),
                    ("onedir", f"{args.files} files in one dir", build_onedir, args.files),
                    ("large", f"{args.gib} GiB of large files", build_large, args.gib)]
        for key, name, build, n in builders:
            if key not in only:
                continue
            src = os.path.join(work, key)
            build(src, n)
            rows.append(run_pair(name, src, work, args.mke2fs_limit))
            shutil.rmtree(src)
            report(rows[-1:])
    report(rows)


if __name__ == "__main__":
    main()
