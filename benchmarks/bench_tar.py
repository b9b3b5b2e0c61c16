#!/usr/bin/env python3
"""dir -> tar: conv against GNU tar on the same tree, side by side.

    python benchmarks/bench_tar.py                   # synthetic tree, moderate sizes
    python benchmarks/bench_tar.py /work/rootfs      # a real root filesystem
    python benchmarks/bench_tar.py --small-files 100000 --flat-entries 100000 \\
        --sparse-size 4G --dense-size 2G             # the big run

Each run is one subprocess (`conv convert 'dir:TREE -> tar:OUT'` or `tar`);
wall time and peak RSS come from /usr/bin/time. The ratio is
conv / GNU tar (below 1 means conv is faster). Every output is checked for
the same member count with `tar -tf`, so a fast wrong answer does not count.
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

from convcore.format import parse_size


def build_tree(root: str, small_files: int, flat_entries: int, sparse_size: int,
               dense_size: int) -> None:
    """Nested small files, one huge directory, sparse and dense big files."""
    rng = random.Random(1)
    os.makedirs(root)
    per_dir = 100
    for i in range(small_files):
        d = os.path.join(root, "nested", f"a{i // (per_dir * 50):03d}",
                         f"b{i // per_dir % 50:02d}")
        if i % per_dir == 0:
            os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:07d}.txt"), "wb") as f:
            f.write(rng.randbytes(rng.randrange(0, 8192)))
    flat = os.path.join(root, "flat")
    os.makedirs(flat)
    for i in range(flat_entries):
        with open(os.path.join(flat, f"entry-{i:07d}"), "wb") as f:
            f.write(b"%d\n" % i)
    big = os.path.join(root, "big")
    os.makedirs(big)
    if sparse_size:
        with open(os.path.join(big, "sparse.img"), "wb") as f:
            step = 64 << 20
            for off in range(0, sparse_size, step):
                f.seek(off)
                f.write(rng.randbytes(1 << 20))
            f.truncate(sparse_size)
    if dense_size:
        block = rng.randbytes(1 << 20)
        with open(os.path.join(big, "dense.bin"), "wb") as f:
            for i in range(dense_size >> 20):
                # half random, half text-like: compressible but not trivially
                f.write(block[: 1 << 19] + (b"line %09d of dense data\n" % i) * 21845
                        + bytes((1 << 19) - 21845 * 24))


def measure(cmd: list[str], env: dict | None = None) -> tuple[float, int]:
    """(wall seconds, peak RSS KiB) of one command, from /usr/bin/time (so the
    RSS is the command's own, not this script's pages in a forked child)."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        proc = subprocess.run(["/usr/bin/time", "-o", report.name, "-f", "%e %M", *cmd],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        if proc.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                     f"{proc.stderr.decode(errors='replace')}")
        wall, rss = report.read().split()[-2:]
    return float(wall), int(rss)


def members(path: str) -> int:
    out = subprocess.run(["tar", "-tf", path], capture_output=True, check=True).stdout
    return out.count(b"\n")


def extract(conv: str, archive: str, work: str, env: dict) -> tuple[float, int, float, int]:
    """conv tar -> dir against tar -xpf of the same archive."""
    ours, theirs = os.path.join(work, "x-conv"), os.path.join(work, "x-tar")
    c_wall, c_rss = measure([conv, "--quiet", "convert", f"tar:{archive} -> dir:{ours}"], env)
    os.makedirs(theirs)
    t_wall, t_rss = measure(["tar", "-xpf", archive, "-C", theirs])
    shutil.rmtree(ours)
    shutil.rmtree(theirs)
    return c_wall, c_rss, t_wall, t_rss


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
    args = ap.parse_args()

    work = args.work or tempfile.mkdtemp(prefix="bench-tar-")
    os.makedirs(work, exist_ok=True)
    try:
        tree = args.tree
        if tree is None:
            tree = os.path.join(work, "tree")
            t0 = time.perf_counter()
            build_tree(tree, args.small_files, args.flat_entries, args.sparse_size,
                       args.dense_size)
            print(f"built {tree} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        conv = shutil.which("conv") or sys.exit("conv is not installed")
        env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000")
        cpus = os.cpu_count() or 1
        gnu = {
            "none": [["tar", "-cf"], ["tar", "-S", "-cf"]],
            "zst": [["tar", "-I", f"zstd -3 -T{cpus}", "-cf"]],
            "gz": [["tar", "-I", "gzip -6", "-cf"]],
            "xz": [["tar", "-I", f"xz -6 -T{cpus}", "-cf"]],
        }
        suffix = {"none": ".tar", "zst": ".tar.zst", "gz": ".tar.gz", "xz": ".tar.xz"}
        rows = []
        extract_rows: list[tuple[float, int, float, int]] = []
        for comp in args.compress.split(","):
            out = os.path.join(work, f"conv{suffix[comp]}")
            c_wall, c_rss = measure([conv, "--quiet", "convert",
                                     f"dir:{tree} -> tar:{out}"], env)
            c_size, c_members = os.path.getsize(out), members(out)
            os.unlink(out)
            for base in gnu[comp]:
                ref = os.path.join(work, f"gnu{suffix[comp]}")
                t_wall, t_rss = measure([*base, ref, "-C", tree, "."])
                t_size, t_members = os.path.getsize(ref), members(ref)
                if comp == "none" and "-S" in base and args.extract:
                    extract_rows.append(extract(conv, ref, work, env))
                os.unlink(ref)
                if t_members != c_members:
                    print(f"warning: {comp}: conv wrote {c_members} members, "
                          f"GNU tar {t_members}", file=sys.stderr)
                rows.append((comp, " ".join(base[:-1]), c_wall, c_rss, c_size,
                             t_wall, t_rss, t_size))
        print(f"\ntree: {tree}")
        print(f"| {'output':6} | {'GNU tar command':26} | conv s | conv MiB RSS | "
              f"conv MiB out | tar s | tar MiB RSS | tar MiB out | time ratio |")
        print("|" + "|".join(["---"] * 9) + "|")
        for comp, cmd, cw, cr, cs, tw, tr, ts in rows:
            print(f"| {comp:6} | {cmd:26} | {cw:6.2f} | {cr / 1024:11.0f} | "
                  f"{cs / 2**20:12.0f} | {tw:5.2f} | {tr / 1024:11.0f} | "
                  f"{ts / 2**20:11.0f} | {cw / tw:10.2f} |")
        for cw, cr, tw, tr in extract_rows:
            print(f"\nextract (GNU tar -S archive -> directory)\n"
                  f"| conv s | conv MiB RSS | tar -xpf s | tar MiB RSS | time ratio |\n"
                  f"|---|---|---|---|---|\n"
                  f"| {cw:6.2f} | {cr / 1024:11.0f} | {tw:10.2f} | {tr / 1024:11.0f} | "
                  f"{cw / tw:10.2f} |")
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
