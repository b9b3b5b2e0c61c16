#!/usr/bin/env python3
"""squashfs -> dir: conv's reader against unsquashfs, side by side.

    python benchmarks/bench_squashfs_read.py                  # synthetic tree
    python benchmarks/bench_squashfs_read.py /work/rootfs     # a real root filesystem
    python benchmarks/bench_squashfs_read.py --small-files 100000 --comp zstd,gzip,xz,lz4

For each codec, mksquashfs builds one image from the tree (not timed); then
`unsquashfs -d OUT -p N IMG` and `conv convert 'raw:IMG -> squashfs -> dir:OUT'`
extract it, each as one subprocess whose wall time and peak RSS come from
os.wait4 (wall and CPU time). Both get the same number of cores. The ratio is conv / unsquashfs
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
import shutil
import stat
import subprocess
import sys
import tempfile
import time

from convcore.format import parse_size


def build_tree(root: str, small_files: int, dense_size: int, sparse_size: int) -> None:
    """Nested small files, one big compressible file and a sparse one."""
    rng = random.Random(1)
    os.makedirs(root)
    per_dir = 100
    for i in range(small_files):
        d = os.path.join(root, "nested", f"a{i // (per_dir * 50):03d}",
                         f"b{i // per_dir % 50:02d}")
        if i % per_dir == 0:
            os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:07d}.txt"), "wb") as f:
            # text-like so the codecs have work to do
            f.write(b"".join(b"%d %s\n" % (j, rng.choice((b"alpha", b"beta", b"gamma")))
                             for j in range(rng.randrange(0, 600))))
    big = os.path.join(root, "big")
    os.makedirs(big)
    if dense_size:
        block = rng.randbytes(1 << 19)
        with open(os.path.join(big, "dense.bin"), "wb") as f:
            for i in range(dense_size >> 20):
                f.write(block + (b"line %09d of dense data\n" % i) * 21845
                        + bytes((1 << 19) - 21845 * 24))
    if sparse_size:
        with open(os.path.join(big, "sparse.img"), "wb") as f:
            for off in range(0, sparse_size, 64 << 20):
                f.seek(off)
                f.write(rng.randbytes(1 << 20))
            f.truncate(sparse_size)


def measure(cmd: list[str]) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds (user + system), peak RSS KiB) of one
    subprocess. CPU time is the steadier figure on a shared machine."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{err}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss


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
    args = ap.parse_args()
    for tool in ("mksquashfs", "unsquashfs", "conv"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed")
    cores = os.cpu_count() or 1
    work = tempfile.mkdtemp(prefix="bench-sqfs-read-")
    print(f"squashfs -> dir, block size {args.block_size}, {cores} cores, "
          f"tree: {args.tree or 'synthetic'}")
    print(f"{'codec':6} {'image MiB':>9} {'unsquashfs s':>12} {'conv s':>8} {'ratio':>6} "
          f"{'unsq CPU s':>10} {'conv CPU s':>10} {'unsq RSS MiB':>12} {'conv RSS MiB':>12} "
          f"{'read-only s':>11}  output", flush=True)
    try:
        tree = args.tree
        if tree is None:
            tree = os.path.join(work, "tree")
            build_tree(tree, args.small_files, args.dense_size, args.sparse_size)
        for comp in args.comp.split(","):
            img = os.path.join(work, f"{comp}.sqfs")
            subprocess.run(["mksquashfs", tree, img, "-noappend", "-quiet", "-no-progress",
                            "-comp", comp, "-b", args.block_size, "-processors", str(cores)],
                           check=True, stdout=subprocess.DEVNULL)
            ref_out, conv_out = os.path.join(work, "ref"), os.path.join(work, "conv")
            rw, rc, rr = measure(["unsquashfs", "-q", "-n", "-p", str(cores), "-d", ref_out, img])
            chain = f"raw:{img} -> squashfs -> dir:{conv_out}"
            cw, cc, cr = measure(["conv", "-q", "convert", chain])
            read_only, _, _ = measure([sys.executable, "-c", READ_ONLY, img])
            verdict = "not checked" if args.no_verify else (same_trees(ref_out, conv_out)
                                                             or "same")
            print(f"{comp:6} {os.path.getsize(img) / 2**20:9.1f} {rw:12.2f} {cw:8.2f} "
                  f"{cw / rw:6.2f} {rc:10.2f} {cc:10.2f} {rr / 1024:12.0f} {cr / 1024:12.0f} "
                  f"{read_only:11.2f}  "
                  f"{verdict}", flush=True)
            shutil.rmtree(ref_out, ignore_errors=True)
            shutil.rmtree(conv_out, ignore_errors=True)
            os.unlink(img)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
