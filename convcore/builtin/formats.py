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
    return Format(
        name="dir",
        help="a directory tree on the host",
        options=DIR_OPTIONS,
        source=_lazy("dirfmt", "source"), source_kind=TREE, feeds=True,
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


def parse_owner(text: str) -> tuple[int, int]:
    uid, sep, gid = text.partition(":")
    try:
        values = (int(uid), int(gid) if sep else int(uid))
    except ValueError:
        raise ValueError(f"{text!r} is not UID:GID (numbers, e.g. 0:0)") from None
    if min(values) < 0 or max(values) >= 1 << 32:
        raise ValueError(f"{text!r}: ids must be between 0 and 4294967295")
    return values


def parse_globs(text: str) -> tuple[str, ...]:
    return tuple(g.strip().strip("/").removeprefix("./") for g in text.split(",") if g.strip())


#: the dir format's options (here, not in dirfmt, so registering dir imports
#: nothing heavy)
DIR_OPTIONS: list[Option] = [
    Option("owner", None, "UID:GID to own every entry (build root images without root)",
           parse=parse_owner),
    Option("exclude", None, "comma-separated globs matched against the path inside the "
           "directory; excluding a directory excludes everything below it",
           parse=parse_globs),
]


__all__ = ["Option"]
