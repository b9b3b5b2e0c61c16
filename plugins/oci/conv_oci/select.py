"""Picking one image out of an index: by ``ref=``, by ``platform=``, or the
only one there is; anything else is an error listing what is there."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from conv_oci.model import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    Descriptor,
    Platform,
    parse_index,
    short,
)
from convcore.errors import CorruptError, UsageError

#: nested indexes deeper than this are hostile (or a loop).
MAX_INDEX_DEPTH = 8
#: buildx stores provenance/SBOM documents as fake-platform manifests.
_REFERENCE_TYPE = "vnd.docker.reference.type"


@dataclass
class Candidate:
    """A manifest reachable from the top index."""

    desc: Descriptor
    ref: str | None
    platform: Platform | None

    def describe(self) -> str:
        parts = [f"ref={self.ref}" if self.ref else "(no ref)"]
        if self.platform is not None:
            parts.append(str(self.platform))
        parts.append(short(self.desc.digest))
        return " ".join(parts)


def candidates(top: list[Descriptor], read_blob: Callable[[Descriptor], bytes]) -> list[Candidate]:
    """Every image manifest reachable from ``top``, nested indexes followed;
    a nested manifest inherits the ref name of the index that holds it."""
    found: list[Candidate] = []

    def walk(descs: list[Descriptor], ref: str | None, depth: int, seen: frozenset[str]) -> None:
        for desc in descs:
            name = desc.ref_name or ref
            if desc.media_type in INDEX_TYPES:
                if desc.digest in seen or depth >= MAX_INDEX_DEPTH:
                    raise CorruptError(f"index {short(desc.digest)} nests too deep or "
                                       "contains itself")
                nested = parse_index(read_blob(desc), f"index {short(desc.digest)}")
                walk(nested, name, depth + 1, seen | {desc.digest})
            elif desc.media_type in MANIFEST_TYPES or not desc.media_type:
                if desc.annotations.get(_REFERENCE_TYPE):
                    continue
                found.append(Candidate(desc, name, desc.platform))

    walk(top, None, 0, frozenset())
    return found


def choose(found: list[Candidate], ref: str | None, platform: Platform | None, where: str,
           platform_of: Callable[[Candidate], Platform]) -> Candidate:
    """The one image ``ref``/``platform`` select. ``platform_of`` reads a
    manifest's config for candidates whose descriptor has no platform."""
    if not found:
        raise CorruptError(f"{where}: the index lists no image manifests")
    pool = found
    if ref is not None:
        pool = [c for c in pool if c.ref == ref]
        if not pool:
            refs = sorted({c.ref for c in found if c.ref})
            raise UsageError(f"{where}: no image with ref={ref!r}; refs there: "
                             f"{', '.join(refs) or 'none'}")
    if platform is not None:
        for c in pool:
            if c.platform is None:
                c.platform = platform_of(c)
        matching = [c for c in pool if platform.matches(c.platform)]  # type: ignore[arg-type]
        if not matching:
            raise UsageError(f"{where}: no image for platform={platform}; there: "
                             f"{'; '.join(c.describe() for c in pool)}")
        pool = matching
    if len(pool) > 1:
        raise UsageError(f"{where}: several images, choose one with ref= or platform=: "
                         f"{'; '.join(c.describe() for c in pool)}")
    return pool[0]
