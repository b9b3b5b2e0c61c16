#!/usr/bin/env python3
"""ext4 reader: conv against ``debugfs -R 'rdump / OUT'`` on the same image.

    python benchmarks/bench_ext4_read.py                  # /work/rootfs if present + synthetic
    python benchmarks/bench_ext4_read.py /path/to/rootfs  # that tree + synthetic trees
    python benchmarks/bench_ext4_read.py --only nested --files 100000

Each tree is put into an image by ``mke2fs -t ext4 -d`` (not timed); then, in
one go on that image:
  conv convert 'raw:IMG -> ext4 -> dir:OUT'
  debugfs -R 'rdump / OUT' IMG
Each run is one subprocess; wall time and peak RSS come from os.wait4. The
ratio is conv / debugfs (below 1: conv is faster). Both extractions must hold
the same names and the same bytes (compared by size and a sample of
contents) so a fast wrong answer does not count.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import stat
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


def build_large(root: str, gib: int) -> None:
    """``gib`` GiB of incompressible data in 256 MiB files."""
    os.makedirs(root)
    chunk = random.Random(3).randbytes(1 << 20)
    for i in range(gib * 4):
        with open(os.path.join(root, f"blob{i}.bin"), "wb") as f:
            for j in range(256):
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
                x, y = f.read(1 << 20), g.read(1 << 20)
                if x != y:
                    return False
                if not x:
                    break
    return True


def timed(cmd: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS in MiB) of one subprocess."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode() if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({code}):\n{err}")
    return wall, usage.ru_maxrss // 1024


def run_pair(name: str, tree: str, work: str) -> dict:
    used, entries = du_bytes(tree)
    size_mib = (used * 13 // 10 >> 20) + 160
    image = os.path.join(work, "fs.img")
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096",
                    "-N", str(entries * 12 // 10 + 1024), "-d", tree, image, f"{size_mib}M"],
                   check=True, capture_output=True)
    conv_out, dbg_out = os.path.join(work, "conv-out"), os.path.join(work, "debugfs-out")
    os.mkdir(dbg_out)
    conv_wall, conv_rss = timed([sys.executable, "-m", "convcore.cli", "convert",
                                 f"raw:{image} -> ext4 -> dir:{conv_out}"])
    dbg_wall, dbg_rss = timed(["debugfs", "-R", f"rdump / {dbg_out}", image])
    got, want = listing(conv_out), listing(dbg_out)
    if got != want:
        missing = sorted(set(want) ^ set(got))[:5]
        raise SystemExit(f"{name}: conv and debugfs extract different trees: {missing}")
    files = sorted(p for p, size in want.items() if size >= 0)
    sample = random.Random(1).sample(files, min(200, len(files)))
    if not same_bytes(conv_out, dbg_out, sample):
        raise SystemExit(f"{name}: conv and debugfs extract different bytes")
    for d in (conv_out, dbg_out):
        shutil.rmtree(d)
    os.unlink(image)
    return {"name": name, "entries": entries, "conv_wall": conv_wall, "dbg_wall": dbg_wall,
            "conv_rss": conv_rss, "dbg_rss": dbg_rss}


def report(rows: list[dict]) -> None:
    sys.stdout.flush()
    print(f"\n{'tree':28} {'entries':>8} {'conv s':>8} {'debugfs s':>10} {'time x':>7} "
          f"{'conv MiB':>9} {'debugfs MiB':>12}")
    for r in rows:
        print(f"{r['name']:28} {r['entries']:8d} {r['conv_wall']:8.2f} {r['dbg_wall']:10.2f} "
              f"{r['conv_wall'] / r['dbg_wall']:7.3f} {r['conv_rss']:9d} {r['dbg_rss']:12d}",
              flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tree", nargs="?", help="a root filesystem (default: /work/rootfs if present)")
    ap.add_argument("--files", type=int, default=20_000, help="files in the nested tree")
    ap.add_argument("--gib", type=int, default=1, help="GiB of large files")
    ap.add_argument("--only", default="rootfs,nested,large")
    ap.add_argument("--work", default=None, help="scratch directory (default: a temp dir)")
    args = ap.parse_args()
    for tool in ("mke2fs", "debugfs"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    only = set(args.only.split(","))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-ext4-read-", dir=args.work) as work:
        tree = args.tree or ("/work/rootfs" if os.path.isdir("/work/rootfs") else None)
        if tree and "rootfs" in only:
            rows.append(run_pair(f"rootfs {tree}"[:28], tree, work))
            report(rows[-1:])
        builders = [("nested", f"{args.files} files nested", build_nested, args.files),
                    ("large", f"{args.gib} GiB of large files", build_large, args.gib)]
        for key, name, build, n in builders:
            if key not in only:
                continue
            src = os.path.join(work, key)
            build(src, n)
            rows.append(run_pair(name, src, work))
            shutil.rmtree(src)
            report(rows[-1:])
    report(rows)


if __name__ == "__main__":
    main()
