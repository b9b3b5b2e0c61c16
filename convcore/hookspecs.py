"""The conv_* hooks: the whole contract between conv and a format plugin.

A plugin is a distribution with an entry point in group ``conv``::

    [project.entry-points.conv]
    foo = "conv_foo"

whose module implements any of these hooks with ``@convcore.hookimpl``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from convcore.format import Format

hookspec = pluggy.HookspecMarker("conv")


@hookspec
def conv_register_formats(register: Callable[[Format], None]) -> None:
    """Register the formats this plugin provides.

    Called once when the plugin manager loads, before any chain is planned.
    Call ``register(Format(...))`` for each format; registering a name twice
    is an error reported as a warning naming both distributions. Keep this
    cheap: import codec modules inside the Format's callables, not here, so
    ``conv --help`` stays fast.
    """


@hookspec
def conv_detect(head: bytes) -> str | None:
    """Recognise a format by its magic.

    Called by ``image:PATH`` and ``conv info`` on the first 64 KiB of a file
    or of a volume found inside one (a partition, a qcow2's guest disk).
    Return the name of a registered format whose ``layer`` is "container",
    "table" or "filesystem", or None. When several answer, containers win
    over tables, and tables over filesystems.
    """
