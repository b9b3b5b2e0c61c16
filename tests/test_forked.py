"""convcore.forked: work in a child process, results and errors back as one line."""

from __future__ import annotations

import os
import signal
import time

import pytest

from convcore.errors import ConvError, CorruptError, NotFoundError
from convcore.forked import Forked, forking

pytestmark = pytest.mark.skipif(not forking(), reason="needs os.fork and memfd_create")


def _value(n: int) -> dict:
    return {"pid": os.getpid(), "items": [(i, str(i), b"x" * (i % 7)) for i in range(n)]}


def test_result_comes_back_from_another_process():
    got = Forked(_value, 5).result()
    assert got["pid"] != os.getpid()
    assert got["items"] == [(i, str(i), b"x" * (i % 7)) for i in range(5)]


def test_large_result_does_not_block():
    # 24 MB: far beyond a pipe's buffer; the parent reads only after waiting
    got = Forked(lambda: b"\x01" * (24 << 20)).result()
    assert len(got) == 24 << 20 and got[:1] == b"\x01" and got[-1:] == b"\x01"


def _raise(cls: type, message: str) -> None:
    raise cls(message)


@pytest.mark.parametrize("cls", [ConvError, CorruptError, NotFoundError])
def test_conv_error_keeps_its_class_and_message(cls):
    with pytest.raises(cls) as info:
        Forked(_raise, cls, "/a/b: file is shorter than its recorded size").result()
    assert type(info.value) is cls
    assert str(info.value) == "/a/b: file is shorter than its recorded size"


def test_a_bug_in_the_child_is_one_conv_error_line():
    with pytest.raises(ConvError) as info:
        Forked(lambda: {}["missing"]).result()
    assert str(info.value) == "a worker process failed: KeyError: 'missing'"


def test_an_unmarshallable_result_is_reported():
    with pytest.raises(ConvError, match="unmarshallable result"):
        Forked(lambda: object()).result()


def test_a_child_killed_by_a_signal_is_reported():
    with pytest.raises(ConvError, match="killed by signal 9"):
        Forked(lambda: os.kill(os.getpid(), signal.SIGKILL)).result()


def test_child_writes_into_an_inherited_descriptor(tmp_path):
    path = tmp_path / "out"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        assert Forked(os.pwrite, fd, b"from the child", 4096).result() == 14
    finally:
        os.close(fd)
    data = path.read_bytes()
    assert data[4096:] == b"from the child" and data[:4096] == bytes(4096)


def test_leaving_the_block_kills_a_running_child(tmp_path):
    marker = tmp_path / "late"

    def slow() -> None:
        time.sleep(30)
        marker.write_text("still ran")

    start = time.monotonic()
    with pytest.raises(RuntimeError), Forked(slow) as child:
        pid = child.pid
        raise RuntimeError("the parent failed")
    assert time.monotonic() - start < 10
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # already reaped: no zombie left
    assert not marker.exists()


def test_result_then_exit_is_harmless():
    with Forked(lambda: 7) as child:
        assert child.result() == 7
    with pytest.raises(RuntimeError):
        child.result()


def test_no_fork_when_disabled(monkeypatch):
    monkeypatch.setenv("CONV_NO_FORK", "1")
    assert not forking()
