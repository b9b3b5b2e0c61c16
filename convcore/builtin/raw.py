"""raw: a volume as a plain host file, holes kept as holes."""

from __future__ import annotations

import errno
import os

from convcore.blockdev import FileTarget, FileVolume, Volume
from convcore.errors import NoSpaceError
from convcore.format import Context

#: linkat errors that mean "copy instead": another filesystem (EXDEV), a
#: file that had a name and lost it, not an O_TMPFILE (ENOENT), a filesystem
#: or policy that refuses (EPERM, EACCES, EOPNOTSUPP), too many links (EMLINK)
_CANNOT_LINK = (errno.EXDEV, errno.ENOENT, errno.EPERM, errno.EACCES, errno.EOPNOTSUPP,
                errno.EMLINK)


def source(path: str, opts: dict, ctx: Context) -> Volume:
    return FileVolume(path)


def sink(plan, path: str, opts: dict, ctx: Context) -> None:
    """Write ``plan`` (a Plan or readable Volume) to a new sparse file."""
    if _link_in_place(plan, path):
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        try:
            os.ftruncate(fd, plan.size)
        except OSError as e:
            if e.errno in (errno.EFBIG, errno.ENOSPC):
                raise NoSpaceError(
                    f"{path}: cannot make a {plan.size}-byte file: {e.strerror}") from None
            raise
        with ctx.progress(None, f"writing {os.path.basename(path).split('-', 3)[-1]}") as bar:
            plan.write_to(FileTarget(fd, plan.size, progress=bar))
    finally:
        os.close(fd)


def _link_in_place(plan, path: str) -> bool:
    """Give the plan's finished host file the name ``path`` (no byte moves:
    a squashfs image is built in a scratch file beside the output). False
    when the plan has no such file or it cannot be linked there."""
    host_file = getattr(plan, "host_file", None)
    fd = host_file() if host_file is not None else None
    if fd is None or os.fstat(fd).st_size != plan.size:
        return False
    # linkat(AT_SYMLINK_FOLLOW) on the magic link reaches the nameless
    # file. os.link calls plain link(2) (which would link the /proc entry
    # itself: EXDEV) unless a dir fd is given, so the parent's is.
    parent = os.open(os.path.dirname(os.path.abspath(path)),
                     os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.link(f"/proc/self/fd/{fd}", os.path.basename(path), dst_dir_fd=parent)
    except OSError as e:
        if e.errno in _CANNOT_LINK:
            return False
        raise
    finally:
        os.close(parent)
    return True
