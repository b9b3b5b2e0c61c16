"""Errors conv reports to users as one line.

Every error a user can cause (bad syntax, a missing file, a corrupt image, a
size that is too small) is a ConvError; the CLI prints ``conv: <message>`` and
exits with ``exit_code``. Anything else is a bug and keeps its traceback.

Each kind also subclasses the matching builtin (dissect-style), so library
callers can write ``except FileNotFoundError`` without importing conv.
"""

from __future__ import annotations


class ConvError(Exception):
    """Base of every user-facing conv error."""

    exit_code = 1


class UsageError(ConvError, ValueError):
    """Bad chain syntax, unknown format or option, kind mismatch (exit 2)."""

    exit_code = 2


class NotFoundError(ConvError, FileNotFoundError):
    """A path, a partition, or a file inside an image does not exist."""

    def __init__(self, message: str) -> None:
        # FileNotFoundError's OSError constructor would mangle a single message.
        Exception.__init__(self, message)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class CorruptError(ConvError, ValueError):
    """An input image or archive is malformed; the message names where."""


class UnsupportedError(ConvError, NotImplementedError):
    """A valid input that uses a feature conv does not handle (encryption, ...)."""


class NoSpaceError(ConvError, OSError):
    """The output does not fit: the tree is larger than the asked-for size, or
    the host disk is full. The message says how much is needed."""

    def __init__(self, message: str) -> None:
        Exception.__init__(self, message)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
