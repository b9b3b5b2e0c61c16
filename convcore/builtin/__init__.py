"""Formats every install has: dir, tar and raw.

Registered through the same hooks as third-party plugins; the modules that do
the work are imported only when a stage runs.
"""

from __future__ import annotations

from collections.abc import Callable

from convcore import hookimpl
from convcore.format import FILE, TREE, VOLUME, Format, Option


def _lazy(module: str, func: str) -> Callable:
    def call(*args, **kwargs):
        import importlib
        return getattr(importlib.import_module(f"convcore.builtin.{module}"), func)(*args, **kwargs)
    call.__name__ = func
    return call


@hookimpl
def conv_register_formats(register: Callable[[Format], None]) -> None:
    from convcore.builtin.formats import dir_format, raw_format, tar_format
    register(dir_format())
    register(tar_format())
    register(raw_format())


@hookimpl
def conv_detect(head: bytes) -> str | None:
    return None  # raw is the fallback container, never detected by magic


__all__ = ["FILE", "TREE", "VOLUME", "Option", "_lazy"]
