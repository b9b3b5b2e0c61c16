"""Run a function in a forked child process, for work the GIL serialises.

A loop of short system calls (lstat and listxattr per entry of a directory
scan; open, read and close per small file of a filesystem writer) is mostly
kernel time, yet threads cannot overlap it: each call hands the GIL back and
waits to take it again, and a thread running Python beside it holds the GIL
for up to ``sys.getswitchinterval()`` at a time. A forked child has its own
interpreter and GIL, so the kernel work of both processes runs on both cores.

The child starts with a copy-on-write view of the parent (the tree, the
plan) and shares its open file descriptors, so it can ``pwrite`` into the
output itself. What it returns travels back through ``marshal`` (plain
values: ints, strings, bytes, tuples, lists, dicts) in an anonymous memory
file, so a large result never blocks on a pipe the parent is not reading.

A ConvError raised in the child comes back as the same class with the same
message; any other exception, or a child killed by a signal, is a ConvError
naming what happened (a traceback in a child would be a bug report nobody
could read). Callers must not rely on the child: ``forking()`` is false
where fork is unavailable or disabled (``CONV_NO_FORK=1``), and then they
run the same function in-process.
"""

from __future__ import annotations

import marshal
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from convcore import errors
from convcore.errors import ConvError

_OK, _ERROR, _CRASH = 0, 1, 2


def forking() -> bool:
    """Whether work may be moved into a forked child on this machine."""
    return (hasattr(os, "fork") and hasattr(os, "memfd_create")
            and sys.platform.startswith("linux") and not os.environ.get("CONV_NO_FORK"))


class Forked:
    """``fn(*args)`` running in a child process from the moment this is made.

    ``result()`` waits for it and returns its value (or raises its error);
    ``cancel()`` kills it. As a context manager, leaving the block without
    having collected the result kills the child, so an error in the parent
    never leaves a process behind writing into an output being removed.
    """

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self._out = os.memfd_create("conv-forked", os.MFD_CLOEXEC)
        try:
            # flush before forking: the child exits without flushing, but a
            # buffer inherited unflushed would otherwise be written twice
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
        except BaseException:
            os.close(self._out)
            raise
        if pid == 0:  # pragma: no cover - runs in the child; its effects are tested
            self._child(fn, args)
        self.pid = pid
        self._done = False

    def _child(self, fn: Callable[..., Any], args: tuple) -> None:
        status = 0
        try:
            # Ctrl-C goes to the whole process group: the parent reports it
            # and kills this child; a second traceback from here helps nobody.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                value: tuple = (_OK, fn(*args))
            except ConvError as e:
                value = (_ERROR, type(e).__name__, str(e))
            except BaseException as e:  # noqa: BLE001 - reported to the parent as one line
                value = (_CRASH, f"{type(e).__name__}: {e}")
            try:
                data = marshal.dumps(value)
            except ValueError as e:
                data = marshal.dumps((_CRASH, f"unmarshallable result: {e}"))
            view = memoryview(data)
            while view:
                view = view[os.write(self._out, view):]
        except BaseException:  # noqa: BLE001 - no way to report; the status says it
            status = 70
        finally:
            os._exit(status)

    def result(self) -> Any:
        """Wait for the child; its return value, or its error raised here."""
        if self._done:
            raise RuntimeError("Forked.result() called twice")
        self._done = True
        try:
            _, status = _waitpid(self.pid)
            if os.WIFSIGNALED(status):
                raise ConvError(f"a worker process was killed by signal {os.WTERMSIG(status)}")
            if os.WEXITSTATUS(status) != 0:
                raise ConvError(f"a worker process failed (exit status {os.WEXITSTATUS(status)})")
            size = os.fstat(self._out).st_size
            data = os.pread(self._out, size, 0) if size else b""
        finally:
            os.close(self._out)
        try:
            value = marshal.loads(data)
        except (EOFError, ValueError, TypeError):
            raise ConvError("a worker process returned no result") from None
        if value[0] == _OK:
            return value[1]
        if value[0] == _ERROR:
            cls = getattr(errors, value[1], ConvError)
            if not (isinstance(cls, type) and issubclass(cls, ConvError)):
                cls = ConvError
            raise cls(value[2])
        raise ConvError(f"a worker process failed: {value[1]}")

    def cancel(self) -> None:
        """Kill the child (if still running) and reap it."""
        if self._done:
            return
        self._done = True
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _waitpid(self.pid)
        os.close(self._out)

    def __enter__(self) -> Forked:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


def _waitpid(pid: int) -> tuple[int, int]:
    while True:
        try:
            return os.waitpid(pid, 0)
        except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for safety
            continue
