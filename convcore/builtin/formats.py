"""Registrations of the built-in formats (no heavy imports here)."""

from __future__ import annotations

from convcore.builtin import _lazy
from convcore.format import TREE, VOLUME, Format, Option


def raw_format() -> Format:
    return Format(
        name="raw",
        help="a plain image file: a volume to a file and back, holes kept as holes",
        source=_lazy("raw", "source"), source_kind=VOLUME,
        sink=_lazy("raw", "sink"), sink_kind=VOLUME,
        layer="container",
    )


def dir_format() -> Format:
    # Filled in by the dir/tar work (convcore/builtin/dirfmt.py).
    from convcore.builtin.dirfmt import OPTIONS
    return Format(
        name="dir",
        help="a directory tree on the host",
        options=OPTIONS,
        source=_lazy("dirfmt", "source"), source_kind=TREE,
        sink=_lazy("dirfmt", "sink"), sink_kind=TREE,
    )


def tar_format() -> Format:
    from convcore.builtin.tarfmt import OPTIONS
    return Format(
        name="tar",
        help="a tar archive, plain or compressed (.gz, .zst, .xz by suffix or magic)",
        options=OPTIONS,
        source=_lazy("tarfmt", "source"), source_kind=TREE,
        sink=_lazy("tarfmt", "sink"), sink_kind=TREE,
    )


__all__ = ["Option"]
