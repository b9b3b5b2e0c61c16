"""conv-qcow2: read and write QEMU qcow2 disk images.

Only registration lives here; the writer and reader are imported when a stage
runs, so loading conv's plugins stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable

from convcore import hookimpl
from convcore.format import VOLUME, Format, Option

QCOW2_MAGIC = b"QFI\xfb"


def _source(path, opts, ctx):
    from conv_qcow2.reader import source
    return source(path, opts, ctx)


def _sink(plan, path, opts, ctx):
    from conv_qcow2.writer import sink
    return sink(plan, path, opts, ctx)


def _cluster_size(text: str) -> int:
    from convcore.format import parse_size
    size = parse_size(text)
    if size < 512 or size > 2 << 20 or size & (size - 1):
        raise ValueError(f"{text!r} is not a power of two from 512 to 2M")
    return size


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"{text!r} is not a positive number")
    return value


OPTIONS = [
    Option("compat", "1.1", "qcow2 version: 1.1 (version 3) or 0.10 (version 2)",
           choices=("1.1", "0.10")),
    Option("cluster_size", 65536, "cluster size, a power of two from 512 to 2M (default 64K)",
           _cluster_size),
    Option("compress", "none", "compress clusters", choices=("none", "zlib", "zstd")),
    Option("level", None, "compression level (zlib 0-9, default 6; zstd 1-22, default 3)", int),
    Option("backing", None, "write an overlay over this backing image (path as stored in "
           "the header, relative to the output's directory)"),
    Option("backing_format", None, "format of the backing image (default: detected)",
           choices=("raw", "qcow2")),
    Option("threads", None, "compression and copy threads (default: all cores)",
           _positive_int),
]


def _format() -> Format:
    return Format(
        name="qcow2",
        help="QEMU qcow2 disk image: a volume written as a sparse, optionally compressed "
             "file, read back lazily",
        options=OPTIONS,
        source=_source, source_kind=VOLUME,
        sink=_sink, sink_kind=VOLUME,
        layer="container",
    )


@hookimpl
def conv_register_formats(register: Callable[[Format], None]) -> None:
    register(_format())


@hookimpl
def conv_detect(head: bytes) -> str | None:
    return "qcow2" if head[:4] == QCOW2_MAGIC else None
