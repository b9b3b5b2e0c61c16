"""Temporary files go beside the output (``Context.scratch_dir``), never to
TMPDIR, and leave nothing behind; a squashfs image built there becomes the
output by a link, not a copy, with the same bytes and mode as a copy gives."""

from __future__ import annotations

import errno
import os
import stat
import tempfile

import pytest

from convcore import pipeline
from convcore import spec as specs
from convcore.format import Context, scratch_file
from convcore.testing import deleted_in, open_at_sink, require_tool, run, scratch_dirs

pytest.importorskip("conv_squashfs.writer")


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    return scratch_dirs(tmp_path, monkeypatch)


@pytest.fixture
def scratch_files(monkeypatch) -> list:
    """Every file Context.scratch_file opened (kept alive for fstat)."""
    import convcore.format as fmt
    made: list = []
    original = fmt.scratch_file

    def spy(directory, prefix="conv-"):
        f = original(directory, prefix)
        made.append(f)
        return f

    monkeypatch.setattr(fmt, "scratch_file", spy)
    return made


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _unsquashfs_ok(image) -> str:
    require_tool("unsquashfs")
    return run("unsquashfs", "-lln", str(image)).stdout


@pytest.mark.parametrize("sink", ["squashfs[comp=lz4] -> raw:{}", "squashfs[comp=lz4]:{}"])
def test_squashfs_spool_is_beside_the_output_and_linked_into_place(
        sample_dir, dirs, monkeypatch, scratch_files, sink):
    out, tmpdir = dirs
    seen = open_at_sink(monkeypatch)
    image = out / "root.sqfs"
    pipeline.convert(f"dir:{sample_dir} -> {sink.format(image)}", Context())
    (at_sink,) = seen
    assert deleted_in(at_sink, out), at_sink
    assert not [n for n in at_sink if n.startswith(f"{tmpdir}/")]
    assert os.listdir(tmpdir) == []
    assert os.listdir(out) == ["root.sqfs"]
    # No copy: the output is the very file the writer built the image in.
    (spool,) = scratch_files
    st = os.stat(image)
    assert os.fstat(spool.fileno()).st_ino == st.st_ino
    assert st.st_nlink == 1
    assert stat.S_IMODE(st.st_mode) == 0o644 & ~_umask()
    assert st.st_size % 4096 == 0
    assert "squashfs-root/etc/hostname" in _unsquashfs_ok(image)


@pytest.mark.parametrize("why", ["EXDEV", "no O_TMPFILE"])
def test_when_linking_is_not_possible_the_image_is_copied(
        sample_dir, dirs, scratch_files, monkeypatch, why):
    out, tmpdir = dirs
    chain = f"dir:{sample_dir} -> squashfs[comp=lz4] -> raw:{{}}"
    pipeline.convert(chain.format(out / "linked.sqfs"), Context())
    if why == "EXDEV":
        def cross_device(src, dst, *args, **kw):
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), src, None, dst)
        monkeypatch.setattr(os, "link", cross_device)
    else:
        # A filesystem without O_TMPFILE: a named temporary, unlinked at
        # once, which linkat cannot bring back (ENOENT).
        monkeypatch.delattr(os, "O_TMPFILE")
        monkeypatch.setattr(tempfile, "_O_TMPFILE_WORKS", False, raising=False)
    pipeline.convert(chain.format(out / "copied.sqfs"), Context())
    copied = os.stat(out / "copied.sqfs")
    assert os.fstat(scratch_files[1].fileno()).st_ino != copied.st_ino
    assert (out / "copied.sqfs").read_bytes() == (out / "linked.sqfs").read_bytes()
    assert stat.S_IMODE(copied.st_mode) == 0o644 & ~_umask()
    assert sorted(os.listdir(out)) == ["copied.sqfs", "linked.sqfs"]
    assert os.listdir(tmpdir) == []
    assert "squashfs-root/etc/hostname" in _unsquashfs_ok(out / "copied.sqfs")


def test_a_partition_table_still_copies_the_image(sample_dir, dirs, scratch_files):
    pytest.importorskip("conv_gpt")
    out, _ = dirs
    disk = out / "disk.img"
    pipeline.convert(f"dir:{sample_dir} -> squashfs -> gpt -> raw:{disk}", Context())
    (spool,) = scratch_files
    assert os.fstat(spool.fileno()).st_ino != os.stat(disk).st_ino
    # The image sits in partition 1, byte for byte.
    size = os.fstat(spool.fileno()).st_size
    with open(disk, "rb") as f:
        f.seek(1 << 20)
        assert f.read(size) == os.pread(spool.fileno(), size, 0)
    assert os.listdir(out) == ["disk.img"]


@pytest.mark.parametrize("stop", [KeyboardInterrupt, OSError])
@pytest.mark.parametrize("where", ["encode", "sink"])
def test_nothing_is_left_after_an_error_or_ctrl_c(sample_dir, dirs, monkeypatch, stop, where):
    out, tmpdir = dirs
    if where == "encode":
        from conv_squashfs import writer

        def interrupted(self, *args):
            raise stop("stopped while writing the tables")
        monkeypatch.setattr(writer.ImageWriter, "_write_tables", interrupted)
    else:  # after the image was linked to its temporary name
        def interrupted(src, dst):
            raise stop("stopped before the rename")
        monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(stop):
        pipeline.convert(f"dir:{sample_dir} -> squashfs -> raw:{out / 'root.sqfs'}", Context())
    assert os.listdir(out) == []
    assert os.listdir(tmpdir) == []


def test_conv_build_spools_beside_its_output(sample_dir, dirs, monkeypatch):
    pytest.importorskip("conv_gpt")
    out, tmpdir = dirs
    seen = open_at_sink(monkeypatch)
    spec = out.parent / "disk.toml"
    spec.write_text(f"""[disk]
output = "{out / 'disk.img'}"

[[partition]]
name = "usr"
content = {{ type = "squashfs", source = "dir:{sample_dir}" }}
""")
    specs.build(str(spec), Context())
    (at_sink,) = seen
    assert deleted_in(at_sink, out), at_sink
    assert not [n for n in at_sink if n.startswith(f"{tmpdir}/")]
    assert os.listdir(out) == ["disk.img"]
    assert os.listdir(tmpdir) == []


def test_scratch_file_falls_back_to_tmpdir(dirs):
    out, tmpdir = dirs
    os.chmod(out, 0o500)
    try:
        for directory in (str(out / "gone"), str(out) if os.geteuid() else None):
            with scratch_file(directory) as f:
                f.write(b"spooled")
                f.flush()
                where = os.readlink(f"/proc/self/fd/{f.fileno()}")
                assert where.startswith(f"{tmpdir}/") and where.endswith(" (deleted)")
                assert os.pread(f.fileno(), 7, 0) == b"spooled"
    finally:
        os.chmod(out, 0o755)
    assert os.listdir(out) == [] and os.listdir(tmpdir) == []


@pytest.mark.parametrize("link", [True, False])
def test_output_mode_follows_the_umask_linked_or_copied(sample_dir, dirs, monkeypatch, link):
    out, _ = dirs
    if not link:
        def cross_device(src, dst, *args, **kw):
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), src, None, dst)
        monkeypatch.setattr(os, "link", cross_device)
    old = os.umask(0o027)
    try:
        pipeline.convert(f"dir:{sample_dir} -> squashfs:{out / 'root.sqfs'}", Context())
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(out / "root.sqfs").st_mode) == 0o640
