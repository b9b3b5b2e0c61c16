#!/usr/bin/env python3
"""OCI layouts: conv against umoci on the same tree, side by side.

    python benchmarks/bench_oci.py                 # synthetic tree, moderate sizes
    python benchmarks/bench_oci.py /work/rootfs    # a real root filesystem
    python benchmarks/bench_oci.py --small-files 50000 --dense-size 1G

write: a directory becomes a one-layer gzip image
    conv convert 'dir:TREE -> oci[ref=t]:LAYOUT'   vs   umoci repack (of a bundle holding TREE)
read: that image (umoci's) is unpacked into a directory
    conv convert 'oci[ref=t]:LAYOUT -> dir:OUT'    vs   umoci unpack --rootless
read into a filesystem: conv in one step against the two-step way
    conv convert 'oci[ref=t]:LAYOUT -> ext4 -> raw:OUT'      vs   umoci unpack + mke2fs -d
    conv convert 'oci[ref=t]:LAYOUT -> squashfs -> raw:OUT'  vs   umoci unpack + mksquashfs

Each run is one subprocess; wall time and peak RSS come from os.wait4 of
that process. The ratio is conv / umoci (below 1 means conv is faster). The
outputs are checked for the same number of entries, so a fast wrong answer
does not count.
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


def build_tree(root: str, small_files: int, dense_size: int) -> None:
    """Nested small files plus one big, partly compressible file."""
    rng = random.Random(1)
    per_dir = 100
    os.makedirs(root)
    for i in range(small_files):
        d = os.path.join(root, "usr", f"a{i // (per_dir * 50):03d}", f"b{i // per_dir % 50:02d}")
        if i % per_dir == 0:
            os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:07d}.txt"), "wb") as f:
            f.write(rng.randbytes(rng.randrange(0, 4096)) + b"text " * rng.randrange(0, 2000))
    os.makedirs(os.path.join(root, "big"))
    block = rng.randbytes(1 << 19)
    with open(os.path.join(root, "big", "dense.bin"), "wb") as f:
        for i in range(dense_size >> 20):
            f.write(block + (b"line %09d of dense data\n" % i) * 21845
                    + bytes((1 << 19) - 21845 * 24))


def measure(cmd: list[str], env: dict | None = None) -> tuple[float, int]:
    """(wall seconds, peak RSS KiB) of one subprocess."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{err}")
    return wall, usage.ru_maxrss


def count_entries(root: str) -> int:
    return sum(len(dirs) + len(files) for _, dirs, files in os.walk(root))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("tree", nargs="?", help="tree to pack (default: build a synthetic one)")
    ap.add_argument("--work", help="work directory (default: a temp dir, removed after)")
    ap.add_argument("--small-files", type=int, default=10000)
    ap.add_argument("--dense-size", type=parse_size, default=parse_size("128M"))
    args = ap.parse_args()

    conv = shutil.which("conv") or sys.exit("conv is not installed")
    umoci = shutil.which("umoci") or sys.exit("umoci is not installed")
    work = args.work or tempfile.mkdtemp(prefix="bench-oci-")
    os.makedirs(work, exist_ok=True)
    env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000")
    j = lambda *p: os.path.join(work, *p)  # noqa: E731
    try:
        tree = args.tree
        if tree is None:
            tree = j("tree")
            t0 = time.perf_counter()
            build_tree(tree, args.small_files, args.dense_size)
            print(f"built {tree} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        rows = []

        # write: a directory into a one-layer image
        c = measure([conv, "--quiet", "convert", f"dir:{tree} -> oci[ref=t]:{j('conv-layout')}"],
                    env)
        # umoci's way: unpack an empty image, fill the bundle's rootfs (not
        # timed), repack. (umoci 0.4.7's `insert` writes a truncated layer.)
        subprocess.run([umoci, "init", "--layout", j("umoci-layout")], check=True)
        subprocess.run([umoci, "new", "--image", f"{j('umoci-layout')}:t"], check=True)
        subprocess.run([umoci, "unpack", "--rootless", "--image", f"{j('umoci-layout')}:t",
                        j("umoci-work")], check=True, capture_output=True)
        os.rmdir(j("umoci-work", "rootfs"))
        subprocess.run(["cp", "-a", tree, j("umoci-work", "rootfs")], check=True)
        u = measure([umoci, "repack", "--image", f"{j('umoci-layout')}:t", j("umoci-work")])
        rows.append(("dir -> oci (gzip layer)", "umoci repack", c, u))

        # read: umoci's image into a directory
        c = measure([conv, "--quiet", "convert",
                     f"oci[ref=t]:{j('umoci-layout')} -> dir:{j('conv-out')}"], env)
        u = measure([umoci, "unpack", "--rootless", "--image", f"{j('umoci-layout')}:t",
                     j("umoci-bundle")])
        rows.append(("oci -> dir", "umoci unpack --rootless", c, u))
        n_conv, n_umoci = count_entries(j("conv-out")), count_entries(j("umoci-bundle", "rootfs"))
        if n_conv != n_umoci:
            print(f"warning: conv unpacked {n_conv} entries, umoci {n_umoci}", file=sys.stderr)

        # read into a filesystem: conv in one step; the classic way is
        # umoci unpack, then mke2fs -d / mksquashfs over the unpacked rootfs
        # (the reference time adds the unpack measured above).
        rootfs = j("umoci-bundle", "rootfs")
        c = measure([conv, "--quiet", "convert",
                     f"oci[ref=t]:{j('umoci-layout')} -> ext4 -> raw:{j('conv.ext4')}"], env)
        size = os.path.getsize(j("conv.ext4"))
        m = measure(["mke2fs", "-q", "-F", "-t", "ext4", "-d", rootfs, j("ref.ext4"),
                     f"{size // 1024}k"], env)
        rows.append(("oci -> ext4", "umoci unpack + mke2fs -d", c, (u[0] + m[0], max(u[1], m[1]))))
        c = measure([conv, "--quiet", "convert",
                     f"oci[ref=t]:{j('umoci-layout')} -> squashfs -> raw:{j('conv.sqfs')}"],
                    env)
        m = measure(["mksquashfs", rootfs, j("ref.sqfs"), "-no-progress", "-quiet"], env)
        rows.append(("oci -> squashfs (gzip)", "umoci unpack + mksquashfs", c,
                     (u[0] + m[0], max(u[1], m[1]))))

        print(f"\ntree: {tree} ({count_entries(tree)} entries)")
        print("| conversion | reference | conv s | conv MiB RSS | ref s | ref MiB RSS | "
              "time ratio |")
        print("|---|---|---|---|---|---|---|")
        for what, ref, (cw, cr), (uw, ur) in rows:
            print(f"| {what} | {ref} | {cw:.2f} | {cr / 1024:.0f} | {uw:.2f} | "
                  f"{ur / 1024:.0f} | {cw / uw:.2f} |")
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
