"""raw: a volume as a plain host file, holes kept as holes."""

from __future__ import annotations

import errno
import os

from convcore.blockdev import FileTarget, FileVolume, Volume
from convcore.errors import NoSpaceError
from convcore.format import Context


def source(path: str, opts: dict, ctx: Context) -> Volume:
    return FileVolume(path)


def sink(plan, path: str, opts: dict, ctx: Context) -> None:
    """Write ``plan`` (a Plan or readable Volume) to a new sparse file."""
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
