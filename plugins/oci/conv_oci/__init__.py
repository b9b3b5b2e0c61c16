"""conv-oci: OCI image layouts (directories, oci-archive tars, docker save
tarballs) to a tree, and a tree to a one-layer OCI image layout.

Only registration lives here; the reader and writer are imported when a stage
runs, so loading conv's plugins stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable

from convcore import hookimpl
from convcore.format import TREE, Format, Option


def _source(path, opts, ctx):
    from conv_oci.source import source
    return source(path, opts, ctx)


def _sink(tree, path, opts, ctx):
    from conv_oci.sink import sink
    return sink(tree, path, opts, ctx)


def _platform(text: str) -> str:
    # Checked when the chain is parsed, so a typo fails before anything is read.
    from conv_oci.model import Platform
    return str(Platform.parse(text))


def _level(text: str) -> int:
    level = int(text)
    if not 1 <= level <= 19:
        raise ValueError(f"level {level} is out of range (1-9 for gzip, 1-19 for zstd)")
    return level


OPTIONS = [
    Option("ref", None, "image to read (org.opencontainers.image.ref.name, or a docker "
           "RepoTag); the name written into index.json (default: latest)"),
    Option("platform", None, "os/arch[/variant] to pick from an image index; the platform "
           "written into the config (default: the host's)", _platform),
    Option("whiteouts", "apply", "reading: apply (whiteouts delete lower files) or "
           "keep/overlay (leave overlayfs markers: char 0:0, trusted.overlay.opaque=y); "
           "writing: keep/overlay turn such markers back into .wh. entries",
           choices=("apply", "keep", "overlay")),
    Option("compress", "gzip", "layer compression when writing", choices=("gzip", "zstd")),
    Option("level", None, "compression level (default: 6 for gzip, 3 for zstd)", _level),
]


@hookimpl
def conv_register_formats(register: Callable[[Format], None]) -> None:
    register(Format(
        name="oci",
        help="OCI image layout (a directory, an oci-archive or docker save tar): layers "
             "stacked into a tree; a tree written as a one-layer image layout",
        options=OPTIONS,
        source=_source, source_kind=TREE,
        sink=_sink, sink_kind=TREE,
    ))
