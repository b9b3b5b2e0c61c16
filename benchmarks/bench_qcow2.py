#!/usr/bin/env python3
"""qcow2: conv against qemu-img convert on the same raw disks, side by side.

    python benchmarks/bench_qcow2.py                 # /work/rootfs if present, else synthetic
    python benchmarks/bench_qcow2.py /path/to/rootfs
    python benchmarks/bench_qcow2.py --synthetic --sparse-data 200M

Inputs (built once, not timed):
  ext4    an ext4 image of the tree: mke2fs -t ext4 -d TREE img SIZE
  sparse  an 8 GiB raw disk holding ~200 MB of mixed data in scattered runs

Write, for each input and mode:
  none    conv convert 'raw:IN -> qcow2:OUT'                 vs qemu-img convert -O qcow2
  zlib    conv convert 'raw:IN -> qcow2[compress=zlib]:OUT'  vs qemu-img convert -c -O qcow2
  zstd    conv convert 'raw:IN -> qcow2[compress=zstd]:OUT'  vs ... -o compression_type=zstd
Read: each qemu-img-made image back to raw (conv 'qcow2:X -> raw:Y' vs qemu-img -O raw).

qemu-img runs with its defaults (-m 8 coroutines, in-order writes for
compressed output). conv runs as users run it: the `conv` entry script installed
beside this Python (not a pyenv shim, which adds its own bash and pyenv start-up),
`conv convert CHAIN`, one process per run; `--via api` runs
convcore.pipeline.convert in a fresh interpreter instead (no CLI imports). The
start-up cost alone (`conv formats`, and the API's imports) is printed once on
its own line. Modules are byte-compiled once before anything is timed, as an
installed package is: with PYTHONDONTWRITEBYTECODE set, a checkout's edited
modules would otherwise be compiled from source on every run (~15 ms).
Wall time, CPU time (user+sys) and peak RSS come from benchmarks/harness.py.
Ratios are conv / qemu-img (below 1: conv is faster/smaller). Every conv output
is judged with qemu-img check and compare, so a fast wrong answer does not count.
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


def build_ext4(tree: str, out: str, size: str) -> None:
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", tree, out, size], check=True)


def build_sparse(out: str, data_size: int, disk_size: int = 8 << 30) -> None:
    """Runs of 1 MiB spread over the disk: half text, a quarter random, a quarter
    mostly zeros with a little data (as a filesystem's metadata looks)."""
    rng = random.Random(2)
    runs = data_size // MiB
    stride = disk_size // runs
    text = b"".join(b"%08d the quick brown fox jumps over the lazy dog\n" % k
                    for k in range(MiB // 58 + 1))[:MiB]
    with open(out, "wb") as f:
        f.truncate(disk_size)
        for r in range(runs):
            kind = r % 4
            if kind in (0, 1):
                chunk = text
            elif kind == 2:
                chunk = rng.randbytes(MiB)
            else:
                chunk = rng.randbytes(4096) + bytes(MiB - 8192) + rng.randbytes(4096)
            f.seek(r * stride + rng.randrange(0, 64) * 4096)
            f.write(chunk)


def byte_compile() -> None:
    """Compile convcore and every conv plugin package (what an install does),
    so no timed run compiles a module from source."""
    import importlib.metadata
    import importlib.util

    import convcore
    dirs = {os.path.dirname(convcore.__file__)}
    for ep in importlib.metadata.entry_points(group="conv"):
        spec = importlib.util.find_spec(ep.module.split(".")[0])
        if spec is not None and spec.origin:
            dirs.add(os.path.dirname(spec.origin))
    subprocess.run([sys.executable, "-m", "compileall", "-q", *sorted(dirs)],
                   stdout=subprocess.DEVNULL, check=True)


def conv_command(chain: str, via: str) -> list[str]:
    if via == "api":
        return harness.conv_api(chain)
    return harness.conv_cli("convert", chain)


def judge(raw: str, image: str) -> None:
    for cmd in (["qemu-img", "check", "-q", image],
                ["qemu-img", "compare", "-q", "-f", "raw", "-F", "qcow2", raw, image]):
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"{' '.join(cmd)}: exit {p.returncode}\n{p.stdout}{p.stderr}")


def warm(path: str) -> None:
    """Read the input once so both tools start from the page cache."""
    subprocess.run(["cat", path], stdout=subprocess.DEVNULL, check=True)


MODES = {
    "none": ([], ""),
    "zlib": (["-c"], "[compress=zlib]"),
    "zstd": (["-c", "-o", "compression_type=zstd"], "[compress=zstd]"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("tree", nargs="?", help="root tree for the ext4 image "
                    "(default: /work/rootfs if present, else a synthetic tree)")
    ap.add_argument("--synthetic", action="store_true", help="ignore /work/rootfs")
    ap.add_argument("--synthetic-size", type=parse_size, default=parse_size("300M"))
    ap.add_argument("--ext4-size", default="1G")
    ap.add_argument("--sparse-data", type=parse_size, default=parse_size("200M"))
    ap.add_argument("--modes", default="none,zlib,zstd")
    ap.add_argument("--inputs", default="ext4,sparse")
    ap.add_argument("--work", help="work directory (default: a temp dir, removed after)")
    ap.add_argument("--via", choices=("cli", "api"), default="cli",
                    help="run conv as the `conv convert` command (default) or through "
                    "convcore.pipeline.convert in a fresh interpreter")
    harness.add_repeat(ap)
    args = ap.parse_args()
    harness.require_tools("qemu-img", "mke2fs", "cmp")
    tree = args.tree
    if tree is None and not args.synthetic:
        tree = harness.default_rootfs()
    with harness.scratch("bench-qcow2-", args.work) as work:
        inputs = {}
        wanted = args.inputs.split(",")
        if "ext4" in wanted:
            if tree is None:
                tree = os.path.join(work, "tree")
                with harness.built(tree):
                    harness.mixed_root(tree, args.synthetic_size, max_lines=5000)
            inputs["ext4"] = os.path.join(work, "rootfs.ext4")
            build_ext4(tree, inputs["ext4"], args.ext4_size)
        if "sparse" in wanted:
            inputs["sparse"] = os.path.join(work, "sparse8g.raw")
            build_sparse(inputs["sparse"], args.sparse_data)

        byte_compile()
        print(f"ext4 input from: {tree or '-'}; conv via {args.via} "
              f"({' '.join(conv_command('CHAIN', args.via)[:2])} ...); {harness.machine_line()}")
        for label, cmd in (("conv CLI start-up alone (conv formats)", harness.conv_cli("formats")),
                           ("API imports alone (import convcore.pipeline)",
                            [sys.executable, "-c", "import convcore.pipeline"])):
            startup = harness.repeat(cmd, args.repeat)
            print(f"{label}: {startup.wall:.2f} s wall, {startup.cpu:.2f} s CPU, "
                  f"{startup.rss_mib:.0f} MiB")
        table = harness.Table("qcow2 (ratio: conv / qemu-img convert)",
                              ["input", "op", *harness.PAIR_COLUMNS, "conv MiB out",
                               "qemu MiB out", "size x"])
        for name, raw in inputs.items():
            warm(raw)
            for mode in args.modes.split(","):
                qargs, copts = MODES[mode]
                q_out = os.path.join(work, f"{name}-{mode}.qemu.qcow2")
                c_out = os.path.join(work, f"{name}-{mode}.conv.qcow2")
                ours, theirs = harness.side_by_side(
                    conv_command(f"raw:{raw} -> qcow2{copts}:{c_out}", args.via),
                    ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", *qargs, raw, q_out],
                    args.repeat, prepare=harness.clearing(q_out, c_out))
                judge(raw, c_out)
                q_size, c_size = os.path.getsize(q_out), os.path.getsize(c_out)
                table.row(name, f"write {mode}", *harness.pair_cells(ours, theirs),
                          harness.mib(c_size), harness.mib(q_size),
                          f"{c_size / q_size:.3f}")

                # read side: qemu-img's image back to raw
                q_raw, c_raw = q_out + ".raw", c_out + ".raw"
                ours, theirs = harness.side_by_side(
                    conv_command(f"qcow2:{q_out} -> raw:{c_raw}", args.via),
                    ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", q_out, q_raw],
                    args.repeat, prepare=harness.clearing(q_raw, c_raw))
                p = subprocess.run(["cmp", q_raw, c_raw], capture_output=True, text=True)
                if p.returncode != 0:
                    sys.exit(f"read back differs: {p.stdout}{p.stderr}")
                table.row(name, f"read {mode}", *harness.pair_cells(ours, theirs), "", "", "")
                harness.clearing(q_raw, c_raw, q_out, c_out)()
        table.print()
        print(f"\n{harness.machine_line()}")


if __name__ == "__main__":
    main()
