"""Placeholder: being written (issue 2)."""

from __future__ import annotations

from convcore.errors import UnsupportedError
from convcore.format import Option

OPTIONS: list[Option] = []


def source(path, opts, ctx):
    raise UnsupportedError("not written yet")


def sink(tree, path, opts, ctx):
    raise UnsupportedError("not written yet")
