"""The squashfs plan's image file: built in ``Context.scratch_dir``, holding
exactly the bytes ``write_to`` copies, so the raw sink may link it instead."""

from __future__ import annotations

import os

from conv_squashfs import OPTIONS
from conv_squashfs.writer import encode

from convcore.builtin import dirfmt
from convcore.format import Context
from convcore.testing import make_sample_dir, require_tool, run, write_plan


def test_host_file_is_in_scratch_dir_and_holds_the_plan(tmp_path):
    src = make_sample_dir(str(tmp_path / "root"))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    ctx = Context(epoch=1_700_000_000)
    ctx.scratch_dir = str(scratch)
    tree = dirfmt.source(src, {o.name: o.default for o in dirfmt.OPTIONS}, ctx)
    plan = encode(tree, {o.name: o.default for o in OPTIONS}, ctx)
    fd = plan.host_file()
    assert fd is not None
    where = os.readlink(f"/proc/self/fd/{fd}")
    assert where.startswith(f"{scratch}/") and where.endswith(" (deleted)")
    assert os.listdir(scratch) == []
    assert os.fstat(fd).st_size == plan.size

    copied = tmp_path / "copied.sqfs"
    write_plan(plan, copied)
    assert copied.read_bytes() == os.pread(fd, plan.size + 1, 0)
    require_tool("unsquashfs")
    assert "squashfs-root/etc/hostname" in run("unsquashfs", "-lln", str(copied)).stdout
    plan.close()
