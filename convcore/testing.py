"""Helpers shared by conv's test suites (core and plugins).

- ``require_tool(name)``: skip when a reference tool is missing, fail on CI.
- ``make_sample_dir(path)``: a small tree with every kind of entry a root
  filesystem has, for round-trip tests.
- ``run_conv(*args)``: the CLI in a fresh process, as a user runs it.
- ``scan_dir(path)`` / ``scan_tree(tree)``: what a user compares after a round
  trip (type, mode, owner, times, size, content hash, link target, device,
  xattrs, hardlink groups), in one comparable form.
- ``write_plan(plan, path)``: a plan (or readable volume) written into a
  new sparse file, as the raw sink writes it.
- ``flip_byte(path, offset)``: damage one byte of a file in place.
- ``damage_rounds(image, live, read)``: flip random bits of an image over and
  over; every read must give a result or a one-line ConvError.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Sequence

from convcore.errors import ConvError
from convcore.tree import Kind, Tree

#: mtime used by make_sample_dir, with nanoseconds to catch truncation.
SAMPLE_MTIME_NS = 1_700_000_000_123_456_789


def require_tool(*names: str) -> None:
    """Skip the calling test when a tool is missing; with CI=true, fail."""
    import pytest

    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        msg = f"reference tool not installed: {', '.join(missing)}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)


def is_root() -> bool:
    return os.geteuid() == 0


def xattrs_supported(path: str) -> bool:
    probe = os.path.join(path, ".xattr-probe")
    open(probe, "w").close()
    try:
        os.setxattr(probe, "user.probe", b"1")
        return True
    except OSError:
        return False
    finally:
        os.unlink(probe)


def make_sample_dir(root: str, *, devices: bool | None = None) -> str:
    """Fill ``root`` with one of everything. Devices only when root (or when
    ``devices`` says so). Returns ``root``."""
    os.makedirs(root, exist_ok=True)
    j = lambda *p: os.path.join(root, *p)  # noqa: E731
    os.makedirs(j("etc"))
    os.makedirs(j("usr", "bin"))
    os.makedirs(j("empty"))
    os.makedirs(j("var", "lib", "deep", "er", "still"))
    with open(j("etc", "hostname"), "w") as f:
        f.write("conv-test\n")
    with open(j("etc", "empty-file"), "w"):
        pass
    with open(j("usr", "bin", "tool"), "wb") as f:
        f.write(b"\x7fELF" + bytes(range(256)) * 300)
    os.chmod(j("usr", "bin", "tool"), 0o4755)
    os.chmod(j("empty"), 0o1777)
    with open(j("var", "lib", "deep", "er", "still", "file.txt"), "w") as f:
        f.write("deep\n" * 1000)
    # A sparse file: data, a 1 MiB hole, data, and a trailing hole.
    with open(j("var", "sparse.img"), "wb") as f:
        f.write(b"A" * 5000)
        f.seek(5000 + (1 << 20))
        f.write(b"B" * 4096)
        f.truncate(3 << 20)
    # Many names in one directory (htree / directory index paths).
    os.makedirs(j("many"))
    for i in range(300):
        with open(j("many", f"entry-{i:04d}-{'x' * (i % 40)}"), "w") as f:
            f.write(str(i))
    os.symlink("hostname", j("etc", "short-link"))
    os.symlink("/" + "long/" * 30 + "target", j("etc", "long-link"))
    os.symlink("../etc/hostname", j("usr", "abs-rel-link"))
    os.link(j("usr", "bin", "tool"), j("usr", "bin", "tool-hardlink"))
    os.link(j("etc", "hostname"), j("var", "hostname-link"))
    os.mkfifo(j("var", "fifo"))
    with open(j("unicode-名前-é.txt"), "w") as f:
        f.write("unicode\n")
    if xattrs_supported(root):
        os.setxattr(j("etc", "hostname"), "user.comment", b"hello")
        os.setxattr(j("usr", "bin", "tool"), "user.big", b"v" * 300)
        os.setxattr(j("empty"), "user.dir", b"on a directory")
    if devices if devices is not None else is_root():
        os.mknod(j("var", "null"), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.mknod(j("var", "sda"), 0o660 | stat.S_IFBLK, os.makedev(8, 0))
        os.mknod(j("var", "bigdev"), 0o600 | stat.S_IFCHR, os.makedev(300, 70000))
        os.chown(j("etc", "hostname"), 1000, 1000)
        os.chown(j("var", "sda"), 0, 6)
        os.lchown(j("etc", "short-link"), 100000, 100001)
        if xattrs_supported(root):
            os.setxattr(j("usr", "bin", "tool"), "security.capability",
                        bytes.fromhex("0100000200200000000000000000000000000000"))
    # Fixed times last (creating children touches directory mtimes).
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), ns=(SAMPLE_MTIME_NS, SAMPLE_MTIME_NS),
                     follow_symlinks=False)
    os.utime(root, ns=(SAMPLE_MTIME_NS, SAMPLE_MTIME_NS))
    return root


def _hash(read) -> str:
    h = hashlib.sha256()
    for chunk in iter(lambda: read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


def scan_dir(root: str, *, atime: bool = False, xattr_prefixes=("user.", "security.")) -> dict:
    """{path: metadata} for a host directory, comparable with scan_tree."""
    out: dict[str, dict] = {}
    inodes: dict[tuple[int, int], str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in [""] + sorted(dirnames + filenames) if dirpath == root else sorted(
                dirnames + filenames):
            full = os.path.join(dirpath, name) if name else dirpath
            rel = os.path.relpath(full, root)
            rel = "" if rel == "." else rel
            if rel in out:
                continue
            st = os.lstat(full)
            rec = {
                "type": stat.S_IFMT(st.st_mode),
                "mode": stat.S_IMODE(st.st_mode),
                "uid": st.st_uid,
                "gid": st.st_gid,
                "mtime_ns": st.st_mtime_ns,
            }
            if atime:
                rec["atime_ns"] = st.st_atime_ns
            if stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in inodes:
                    rec["hardlink_of"] = inodes[key]
                else:
                    inodes[key] = rel
                rec["size"] = st.st_size
                with open(full, "rb") as f:
                    rec["sha256"] = _hash(f.read)
            elif stat.S_ISLNK(st.st_mode):
                rec["target"] = os.readlink(full)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                rec["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
            try:
                names = os.listxattr(full, follow_symlinks=False)
            except OSError:
                names = []
            rec["xattrs"] = {n: os.getxattr(full, n, follow_symlinks=False)
                             for n in sorted(names) if n.startswith(tuple(xattr_prefixes))}
            out[rel] = rec
    return out


def scan_tree(tree: Tree, *, atime: bool = False, xattr_prefixes=("user.", "security.")) -> dict:
    """{path: metadata} for a Tree, in scan_dir's form."""
    out: dict[str, dict] = {}
    for entry in tree:
        inode = tree.resolve(entry)
        rec = {
            "type": inode.kind.value,
            "mode": inode.mode & 0o7777,
            "uid": inode.uid,
            "gid": inode.gid,
            "mtime_ns": inode.mtime_ns,
        }
        if atime:
            rec["atime_ns"] = inode.atime_ns
        if inode.kind is Kind.FILE:
            if entry.link is not None:
                rec["hardlink_of"] = entry.link
            rec["size"] = inode.size
            data = inode.data
            if data is None:
                rec["sha256"] = hashlib.sha256(b"").hexdigest()
            else:
                with data.open() as f:
                    rec["sha256"] = _hash(f.read)
        elif inode.kind is Kind.SYMLINK:
            rec["target"] = inode.target
        elif inode.kind in (Kind.CHAR, Kind.BLOCK):
            rec["rdev"] = tuple(inode.rdev)
        rec["xattrs"] = {n: v for n, v in sorted(inode.xattrs.items())
                         if n.startswith(tuple(xattr_prefixes))}
        out[entry.path] = rec
    return out


def normalize_hardlinks(scan: dict) -> dict:
    """Replace ``hardlink_of`` by group membership so that which name came
    first (an ordering detail) does not matter in comparisons."""
    groups: dict[str, set[str]] = {}
    for path, rec in scan.items():
        if "hardlink_of" in rec:
            groups.setdefault(rec["hardlink_of"], {rec["hardlink_of"]}).add(path)
    member = {p: min(g) for g in groups.values() for p in g}
    out = {}
    for path, rec in scan.items():
        rec = dict(rec)
        rec.pop("hardlink_of", None)
        if path in member:
            rec["link_group"] = member[path]
        out[path] = rec
    return out


def run_conv(*args: str, env: dict | None = None, check: bool = False,
             cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run the ``conv`` CLI as a user would, in a fresh process."""
    import sys
    full_env = dict(os.environ)
    full_env.update(env or {})
    p = subprocess.run([sys.executable, "-m", "convcore.cli", *args], capture_output=True,
                       text=True, env=full_env, cwd=cwd)
    if check and p.returncode != 0:
        raise AssertionError(f"conv {' '.join(args)} exited {p.returncode}:\n{p.stderr}")
    return p


def run(*cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run a reference tool, capturing text output; raise with its output on failure."""
    p = subprocess.run(list(cmd), capture_output=True, text=True, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def write_plan(plan, path: str | os.PathLike) -> str:
    """Write ``plan`` (a Plan or readable Volume) into a new sparse file at
    ``path`` (replacing one there), as the raw sink does; returns the path."""
    from convcore.blockdev import FileTarget
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.ftruncate(fd, plan.size)
        plan.write_to(FileTarget(fd, plan.size))
    finally:
        os.close(fd)
    return os.fspath(path)


def flip_byte(path: str, offset: int, mask: int = 0x5A) -> None:
    """Damage a file in place: the byte at ``offset`` XORed with ``mask``,
    the size unchanged."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ mask]))


def damage_rounds(image: str, live: Sequence[int], read: Callable[[str], object], *,
                  rounds: int, max_flips: int, seed: str) -> dict[str, int]:
    """Rewrite ``image`` ``rounds`` times with 1..``max_flips`` random bits
    flipped at offsets drawn from ``live`` (the pristine bytes are the
    image's bytes on entry) and call ``read(image)`` each time: it may
    succeed or raise a one-line ConvError; any other exception fails the
    test where it is raised. Returns how many rounds ended each way ("ok",
    "error"); the image is left damaged."""
    with open(image, "rb") as f:
        pristine = f.read()
    rng = random.Random(seed)
    outcomes = {"ok": 0, "error": 0}
    for _ in range(rounds):
        damaged = bytearray(pristine)
        for _ in range(rng.randint(1, max_flips)):
            damaged[rng.choice(live)] ^= 1 << rng.randrange(8)
        with open(image, "wb") as f:
            f.write(damaged)
        try:
            read(image)
        except ConvError as e:
            assert "\n" not in str(e), f"a multi-line error: {e}"
            outcomes["error"] += 1
        else:
            outcomes["ok"] += 1
    return outcomes


def scratch_dirs(tmp_path, monkeypatch) -> tuple:
    """(an output directory, an empty TMPDIR) under ``tmp_path``, with
    TMPDIR (and tempfile's cached choice) pointing at the latter, so a
    test sees whether temporary files went beside the output."""
    out, tmpdir = tmp_path / "out", tmp_path / "tmpdir"
    out.mkdir()
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    return out, tmpdir


def open_at_sink(monkeypatch) -> list[list[str]]:
    """Where this process's open fds point each time a sink starts
    (``pipeline.write_atomically``), when every scratch file is alive. A
    nameless file reads ``DIR/#INODE (deleted)`` or ``DIR/NAME (deleted)``."""
    from convcore import pipeline
    seen: list[list[str]] = []
    original = pipeline.write_atomically

    def spy(path, write):
        names = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                names.append(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                pass
        seen.append(names)
        return original(path, write)

    monkeypatch.setattr(pipeline, "write_atomically", spy)
    return seen


def deleted_in(names: Sequence[str], directory) -> list[str]:
    """The nameless files among ``names`` (as open_at_sink gives) that
    live in ``directory``."""
    return [n for n in names if n.startswith(f"{directory}/") and n.endswith(" (deleted)")]


def child_pids() -> set[int]:
    """Process ids of this process's live (or unreaped) children, from every
    thread's /proc children list; a thread that ends while they are read
    (a pool's, an xdist worker's) has none left to report."""
    pids: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                pids.update(int(p) for p in f.read().split())
        except FileNotFoundError:
            continue
    return pids
