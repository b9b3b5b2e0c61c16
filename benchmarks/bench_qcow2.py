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
compressed output). conv runs through its Python API (convcore.pipeline.convert)
in a fresh interpreter, one subprocess per run; the fixed start-up cost of the
`conv` command itself (its CLI imports) is printed once on its own line. Wall
time, CPU time (user+sys) and peak RSS come from os.wait4. Ratios are
conv / qemu-img (below 1: conv is faster/smaller). Every conv output is judged
with qemu-img check and compare, so a fast wrong answer does not count.
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

MiB = 1 << 20


def build_tree(root: str, size: int) -> None:
    """A synthetic root: small text files, binaries (random), a big log."""
    rng = random.Random(1)
    written = 0
    i = 0
    while written < size:
        d = os.path.join(root, "usr", f"d{i // 200:04d}")
        os.makedirs(d, exist_ok=True)
        if i % 3 == 0:
            data = rng.randbytes(rng.randrange(1000, 200_000))
        else:
            data = b"".join(b"config line %d = value %d\n" % (i, j)
                            for j in range(rng.randrange(10, 5000)))
        with open(os.path.join(d, f"f{i:06d}"), "wb") as f:
            f.write(data)
        written += len(data)
        i += 1


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


def measure(cmd: list[str]) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, peak RSS KiB) of one subprocess."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{err}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss


def conv_cmd(chain: str) -> list[str]:
    return [sys.executable, "-c",
            "import sys; from convcore.pipeline import convert; convert(sys.argv[1])", chain]


def judge(raw: str, image: str) -> None:
    for cmd in (["qemu-img", "check", "-q", image],
                ["qemu-img", "compare", "-q", "-f", "raw", "-F", "qcow2", raw, image]):
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"{' '.join(cmd)}: exit {p.returncode}\n{p.stdout}{p.stderr}")


def rm(*paths: str) -> None:
    for p in paths:
        if os.path.exists(p):
            os.unlink(p)


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
    args = ap.parse_args()

    conv = os.path.join(os.path.dirname(sys.executable), "conv")
    if not os.path.exists(conv):
        conv = shutil.which("conv") or sys.exit("conv is not installed")
    if not shutil.which("qemu-img"):
        sys.exit("qemu-img is not installed")
    work = args.work or tempfile.mkdtemp(prefix="bench-qcow2-")
    os.makedirs(work, exist_ok=True)
    tree = args.tree
    if tree is None and not args.synthetic and os.path.isdir("/work/rootfs"):
        tree = "/work/rootfs"
    try:
        inputs = {}
        wanted = args.inputs.split(",")
        if "ext4" in wanted:
            if tree is None:
                tree = os.path.join(work, "tree")
                build_tree(tree, args.synthetic_size)
            inputs["ext4"] = os.path.join(work, "rootfs.ext4")
            build_ext4(tree, inputs["ext4"], args.ext4_size)
        if "sparse" in wanted:
            inputs["sparse"] = os.path.join(work, "sparse8g.raw")
            build_sparse(inputs["sparse"], args.sparse_data)

        print(f"ext4 input from: {tree or '-'}; cores: {os.cpu_count()}; "
              f"load average: {os.getloadavg()[0]:.1f}")
        s_wall, s_cpu, s_rss = measure([conv, "formats"])
        print(f"conv CLI start-up alone (conv formats): {s_wall:.2f} s wall, {s_cpu:.2f} s CPU, "
              f"{s_rss // 1024} MiB")
        header = (f"{'input':<7} {'op':<7} {'conv s':>7} {'qemu s':>7} {'ratio':>6} "
                  f"{'conv cpu':>8} {'qemu cpu':>8} {'conv RSS':>8} {'qemu RSS':>8} "
                  f"{'conv size':>10} {'qemu size':>10} {'size':>6}")
        print(header)
        print("-" * len(header))
        for name, raw in inputs.items():
            warm(raw)
            for mode in args.modes.split(","):
                qargs, copts = MODES[mode]
                q_out = os.path.join(work, f"{name}-{mode}.qemu.qcow2")
                c_out = os.path.join(work, f"{name}-{mode}.conv.qcow2")
                rm(q_out, c_out)
                q_wall, q_cpu, q_rss = measure(["qemu-img", "convert", "-f", "raw", "-O",
                                                "qcow2", *qargs, raw, q_out])
                c_wall, c_cpu, c_rss = measure(conv_cmd(f"raw:{raw} -> qcow2{copts}:{c_out}"))
                judge(raw, c_out)
                q_size, c_size = os.path.getsize(q_out), os.path.getsize(c_out)
                print(f"{name:<7} {'w ' + mode:<7} {c_wall:7.2f} {q_wall:7.2f} "
                      f"{c_wall / q_wall:6.2f} {c_cpu:8.2f} {q_cpu:8.2f} "
                      f"{c_rss // 1024:7d}M {q_rss // 1024:7d}M "
                      f"{c_size / MiB:9.1f}M {q_size / MiB:9.1f}M {c_size / q_size:6.3f}",
                      flush=True)

                # read side: qemu-img's image back to raw
                q_raw, c_raw = q_out + ".raw", c_out + ".raw"
                rm(q_raw, c_raw)
                rq_wall, rq_cpu, rq_rss = measure(["qemu-img", "convert", "-f", "qcow2", "-O",
                                                   "raw", q_out, q_raw])
                rc_wall, rc_cpu, rc_rss = measure(conv_cmd(f"qcow2:{q_out} -> raw:{c_raw}"))
                p = subprocess.run(["cmp", q_raw, c_raw], capture_output=True, text=True)
                if p.returncode != 0:
                    sys.exit(f"read back differs: {p.stdout}{p.stderr}")
                print(f"{name:<7} {'r ' + mode:<7} {rc_wall:7.2f} {rq_wall:7.2f} "
                      f"{rc_wall / rq_wall:6.2f} {rc_cpu:8.2f} {rq_cpu:8.2f} "
                      f"{rc_rss // 1024:7d}M {rq_rss // 1024:7d}M", flush=True)
                rm(q_raw, c_raw, q_out, c_out)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
