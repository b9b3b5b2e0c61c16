"""conv: turn any image source into any image target, through format plugins."""

import pluggy

__version__ = "0.1.0"

#: decorate plugin hook implementations with this (``@convcore.hookimpl``).
hookimpl = pluggy.HookimplMarker("conv")
