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
two layers: image t2 = t plus a layer (made by umoci, not timed) that
deletes the tree's largest second-level directory and rewrites every tenth
file, as an upgrade would; what it hides of the lower layer is never spooled
    conv convert 'oci[ref=t2]:LAYOUT -> dir:OUT'             vs   umoci unpack --rootless
    conv convert 'oci[ref=t2]:LAYOUT -> ext4 -> raw:OUT'     vs   umoci unpack + mke2fs -d

Each run is one subprocess measured by benchmarks/harness.py (wall, CPU, peak
RSS). The ratio is conv / umoci (below 1 means conv is faster). The
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

import harness

from convcore.format import parse_size


def mixed_text(rng: random.Random, i: int) -> bytes:
    """Up to 4 KB of noise and then up to 10 KB of one repeated word."""
    return rng.randbytes(rng.randrange(0, 4096)) + b"text " * rng.randrange(0, 2000)


def build_tree(root: str, small_files: int, dense_size: int) -> None:
    """Nested small files plus one big, partly compressible file."""
    harness.small_files(os.path.join(root, "usr"), small_files, mixed_text)
    os.makedirs(os.path.join(root, "big"))
    harness.dense_file(os.path.join(root, "big", "dense.bin"), dense_size)


def upgrade(rootfs: str) -> str:
    """Change an unpacked tree as an upgrade layer would: delete its
    largest second-level directory, append a line to every tenth regular
    file. Returns what was deleted."""
    sizes: dict[str, int] = {}
    files: list[str] = []
    for dirpath, dirnames, filenames in os.walk(rootfs):
        dirnames.sort()
        rel = os.path.relpath(dirpath, rootfs).split(os.sep)
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if os.path.isfile(path) and not os.path.islink(path):
                files.append(path)
                if len(rel) >= 2 and rel[0] != ".":
                    key = os.path.join(rootfs, rel[0], rel[1])
                    sizes[key] = sizes.get(key, 0) + os.path.getsize(path)
    doomed = max(sizes, key=sizes.__getitem__) if sizes else ""
    if doomed:
        shutil.rmtree(doomed)
    for path in files[::10]:
        if not path.startswith(doomed + os.sep) and os.access(path, os.W_OK):
            with open(path, "ab") as f:
                f.write(b"\n# upgraded\n")
    return os.path.relpath(doomed, rootfs) if doomed else "nothing"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("tree", nargs="?", help="tree to pack (default: build a synthetic one)")
    ap.add_argument("--work", help="work directory (default: a temp dir, removed after)")
    ap.add_argument("--small-files", type=int, default=10000)
    ap.add_argument("--dense-size", type=parse_size, default=parse_size("128M"))
    harness.add_repeat(ap)
    args = ap.parse_args()
    harness.require_tools("umoci", "mke2fs", "mksquashfs", "cp")
    env = harness.reproducible_env()
    times = args.repeat
    table = harness.Table("OCI (ratio: conv / the reference)",
                          ["conversion", "reference", *harness.PAIR_COLUMNS])
    with harness.scratch("bench-oci-", args.work) as work:
        j = lambda *p: os.path.join(work, *p)  # noqa: E731
        tree = args.tree
        if tree is None:
            tree = j("tree")
            with harness.built(tree):
                build_tree(tree, args.small_files, args.dense_size)
        print(f"tree: {tree} ({harness.count_entries(tree)} entries); "
              f"{harness.machine_line()}", flush=True)
        layout = j("umoci-layout")

        def umoci_bundle() -> None:
            """umoci's way to write: unpack an empty image, fill the bundle's
            rootfs (not timed), then repack. (umoci 0.4.7's `insert` writes a
            truncated layer.)"""
            harness.clearing(j("conv-layout"), layout, j("umoci-work"))()
            subprocess.run(["umoci", "init", "--layout", layout], check=True)
            subprocess.run(["umoci", "new", "--image", f"{layout}:t"], check=True)
            subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{layout}:t",
                            j("umoci-work")], check=True, capture_output=True)
            os.rmdir(j("umoci-work", "rootfs"))
            subprocess.run(["cp", "-a", tree, j("umoci-work", "rootfs")], check=True)

        # write: a directory into a one-layer image
        c, u = harness.side_by_side(
            harness.conv_cli("--quiet", "convert", f"dir:{tree} -> oci[ref=t]:{j('conv-layout')}"),
            ["umoci", "repack", "--image", f"{layout}:t", j("umoci-work")], times,
            prepare=umoci_bundle, env=env)
        table.row("dir -> oci (gzip layer)", "umoci repack", *harness.pair_cells(c, u))

        rootfs = j("umoci-bundle", "rootfs")

        def to_dir(tag: str, what: str) -> harness.Run:
            """``oci -> dir`` against umoci unpack of image ``tag``; returns
            umoci's run (leaving its rootfs for the mke2fs reference)."""
            c, unpack = harness.side_by_side(
                harness.conv_cli("--quiet", "convert",
                                 f"oci[ref={tag}]:{layout} -> dir:{j('conv-out')}"),
                ["umoci", "unpack", "--rootless", "--image", f"{layout}:{tag}",
                 j("umoci-bundle")],
                times, prepare=harness.clearing(j("conv-out"), j("umoci-bundle")), env=env)
            table.row(f"{what} -> dir", "umoci unpack --rootless", *harness.pair_cells(c, unpack))
            n_conv, n_umoci = harness.count_entries(j("conv-out")), harness.count_entries(rootfs)
            if n_conv != n_umoci:
                print(f"warning: conv unpacked {n_conv} entries, umoci {n_umoci}",
                      file=sys.stderr)
            return unpack

        def to_ext4(tag: str, what: str, unpack: harness.Run) -> None:
            """``oci -> ext4`` in one step against umoci unpack + mke2fs -d
            (the reference time adds the unpack measured before)."""
            c = harness.repeat(harness.conv_cli(
                "--quiet", "convert", f"oci[ref={tag}]:{layout} -> ext4 -> raw:{j('conv.ext4')}"),
                times, prepare=harness.clearing(j("conv.ext4")), env=env)
            size = os.path.getsize(j("conv.ext4"))
            m = harness.repeat(["mke2fs", "-q", "-F", "-t", "ext4", "-d", rootfs, j("ref.ext4"),
                                f"{size // 1024}k"], times, env=env)
            table.row(f"{what} -> ext4", "umoci unpack + mke2fs -d",
                      *harness.pair_cells(c, unpack.then(m)))

        # read: umoci's image into a directory, and into filesystems: conv
        # in one step; the classic way is umoci unpack, then mke2fs -d /
        # mksquashfs over the unpacked rootfs
        unpack = to_dir("t", "oci")
        to_ext4("t", "oci", unpack)
        c = harness.repeat(harness.conv_cli(
            "--quiet", "convert", f"oci[ref=t]:{layout} -> squashfs -> raw:{j('conv.sqfs')}"),
            times, prepare=harness.clearing(j("conv.sqfs")), env=env)
        m = harness.repeat(["mksquashfs", rootfs, j("ref.sqfs"), "-no-progress", "-quiet"],
                           times, prepare=harness.clearing(j("ref.sqfs")), env=env)
        table.row("oci -> squashfs (gzip)", "umoci unpack + mksquashfs",
                  *harness.pair_cells(c, unpack.then(m)))

        # two layers: the upper one hides part of the lower
        shutil.rmtree(j("umoci-bundle"), ignore_errors=True)
        subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{layout}:t",
                        j("umoci-bundle")], check=True, capture_output=True)
        gone = upgrade(rootfs)
        subprocess.run(["umoci", "repack", "--image", f"{layout}:t2", j("umoci-bundle")],
                       check=True)
        print(f"two layers: the upper one deletes {gone} and rewrites every tenth file",
              flush=True)
        to_ext4("t2", "oci (2 layers)", to_dir("t2", "oci (2 layers)"))
    table.print()
    print(f"\n{harness.machine_line()}")


if __name__ == "__main__":
    main()
