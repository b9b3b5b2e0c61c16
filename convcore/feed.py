"""Regular files a source announces while it is still reading the rest.

A tree encoder whose work is mostly file data (squashfs compresses it) can
start on the first files while the source is still walking the others, on
another core: for a Debian root that walk is a sixth of the conversion, time
in which the other core would have nothing to do.

The pipeline arranges it when the source's format says it can announce its
files (``Format.feeds``) and the stage right after it encodes a tree and
can take them (``Format.prepare_encode``): that hook runs first and returns
a FileFeed (or None), which the source finds on ``Context.file_feed`` and
calls as it goes; the encoder then gets the finished Tree as usual and takes
its feed back from the context (``take``).

A feed is only a head start. The encoder must check that what it was fed is
what the tree holds, and do the work from the tree when it is not (a source
that stopped announcing, a tree changed in between): the output never
depends on whether a feed ran.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from convcore.format import Context
    from convcore.tree import Data


class FileFeed:
    """What a source calls while it reads; an encoder's subclass does the
    work. Every method may be called from the source's thread only."""

    def add(self, files: Sequence[tuple[str, Data]]) -> None:
        """Files found since the last call, as (tree path, data): every
        regular file that holds its inode (not the further names of a
        hardlinked one) and has data, empty files included, in tree order
        (depth first, each directory's children in byte order of name)."""

    def end(self) -> None:
        """The source has announced every file of the tree it returns."""

    def stop(self) -> None:
        """The source will not announce the rest (it went on in a way that
        does not find files in tree order); the files announced so far are
        still the first ones of the tree, in order, so an encoder may keep
        its work on them and do the rest from the tree."""

    def close(self) -> None:
        """Release what the feed holds (a worker process, a scratch file);
        the pipeline calls it when the run ends, also after an error, so it
        must be safe to call again or after the encoder took the work."""


def take(ctx: Context) -> FileFeed | None:
    """The feed the pipeline prepared for the encoder now running (its own,
    from ``prepare_encode``), which no one else may use after it."""
    feed, ctx.file_feed = ctx.file_feed, None
    return feed
