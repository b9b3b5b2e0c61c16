"""A small thread pool for writers: tasks run in submission order.

Not concurrent.futures: importing it pulls in logging, traceback and
textwrap (4-5 ms of every conversion's start-up), and a Future hands its
result over through a Condition (more GIL hand-offs per task) where one
lock will do.
"""

from __future__ import annotations

import threading
from _thread import allocate_lock
from collections.abc import Callable
from queue import Empty, SimpleQueue


class Task:
    """One call run by a ``Pool`` thread; ``result`` waits for it."""

    __slots__ = ("fn", "args", "value", "error", "_done")

    def __init__(self, fn: Callable[..., object], args: tuple) -> None:
        self.fn: Callable[..., object] | None = fn
        self.args = args
        self.value: object = None
        self.error: BaseException | None = None
        self._done = allocate_lock()
        self._done.acquire()  # held until the task has run

    def run(self) -> None:
        try:
            self.value = self.fn(*self.args)  # type: ignore[misc]
        except BaseException as e:
            self.error = e
        finally:
            self.fn = self.args = None  # type: ignore[assignment]
            self._done.release()

    def result(self) -> object:
        """The call's value, or its exception raised here."""
        done = self._done
        done.acquire()
        done.release()  # for the next caller
        if self.error is not None:
            raise self.error
        return self.value


class Pool:
    """``threads`` threads, started here, running tasks in submission order.

    Use as a context manager: leaving it drops the tasks not started yet and
    waits for the running ones, so an error does not wait for the rest of
    the work (a task's own error is raised by its ``result``)."""

    def __init__(self, threads: int, name: str = "conv") -> None:
        self._tasks: SimpleQueue[Task | None] = SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}_{i}", daemon=True)
                         for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def _work(self) -> None:
        get = self._tasks.get
        while (task := get()) is not None:
            task.run()

    def submit(self, fn: Callable[..., object], *args: object) -> Task:
        task = Task(fn, args)
        self._tasks.put(task)
        return task

    def shutdown(self) -> None:
        """Drop the tasks not started, and wait for the running ones."""
        tasks = self._tasks
        try:
            while True:
                tasks.get_nowait()
        except Empty:
            pass
        for _ in self._threads:
            tasks.put(None)
        for thread in self._threads:
            thread.join()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
