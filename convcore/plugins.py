"""The plugin manager: built-in formats and entry-point group ``conv``.

A plugin that fails to import or to register prints one warning naming it and
is skipped; the other formats keep working. ``CONV_DISABLE_PLUGINS=a,b``
blocks plugins by entry-point name (or ``builtin``).
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from functools import lru_cache
from typing import NamedTuple

import pluggy

from convcore import hookspecs
from convcore.errors import UsageError
from convcore.format import Format

GROUP = "conv"
LAYER_ORDER = {"container": 0, "table": 1, "filesystem": 2}


def warn(message: str) -> None:
    print(f"conv: warning: {message}", file=sys.stderr)


class Registry:
    """Every registered format, by name."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self.formats: dict[str, Format] = {}

    def add(self, fmt: Format, distribution: str) -> None:
        if fmt.name in self.formats:
            other = self.formats[fmt.name].distribution
            warn(f"format {fmt.name!r} from {distribution} ignored: {other} already provides it")
            return
        fmt.distribution = distribution
        self.formats[fmt.name] = fmt

    def get(self, name: str) -> Format:
        try:
            return self.formats[name]
        except KeyError:
            known = ", ".join(sorted(self.formats))
            raise UsageError(f"unknown format {name!r} (known: {known})") from None

    def detect(self, head: bytes) -> Format | None:
        """The format whose magic matches ``head``, containers first."""
        found = []
        for name in self.pm.hook.conv_detect(head=head):
            if name and name in self.formats:
                found.append(self.formats[name])
        found.sort(key=lambda f: (LAYER_ORDER.get(f.layer or "", 9), f.name))
        return found[0] if found else None


def _disabled() -> set[str]:
    return {p.strip() for p in os.environ.get("CONV_DISABLE_PLUGINS", "").split(",") if p.strip()}


class EntryPoint(NamedTuple):
    """One ``[conv]`` entry point: ``name = module[:attr]`` of a distribution."""

    name: str
    value: str
    dist: str

    def load(self) -> object:
        module, _, attr = self.value.partition(":")
        obj: object = importlib.import_module(module.strip())
        for part in attr.strip().split(".") if attr.strip() else ():
            obj = getattr(obj, part)
        return obj


_NORMALIZE = re.compile(r"[-_.]+")


def entry_points(group: str = GROUP) -> list[EntryPoint]:
    """The ``group`` entry points of the distributions on sys.path, as
    ``importlib.metadata.entry_points(group=...)`` finds them (the first
    distribution of a name on the path wins), read straight from the
    ``*.dist-info`` and ``*.egg-info`` directories: importing
    importlib.metadata costs more than conv's whole plugin loading."""
    header = f"[{group}]"
    seen: set[str] = set()
    found: list[EntryPoint] = []
    for base in sys.path:
        try:
            names = sorted(os.listdir(base or "."))
        except OSError:  # a zip file, a missing directory
            continue
        for info in names:
            if not info.endswith((".dist-info", ".egg-info")):
                continue
            key = _NORMALIZE.sub("_", info.rpartition(".")[0].partition("-")[0]).lower()
            if key in seen:
                continue
            seen.add(key)
            folder = os.path.join(base, info)
            try:
                with open(os.path.join(folder, "entry_points.txt"), encoding="utf-8") as f:
                    text = f.read()
            except OSError:
                continue
            if header not in text:
                continue
            dist = _dist_name(folder) or key
            section = None
            for line in text.splitlines():
                line = line.strip()
                if line.startswith("["):
                    section = line
                elif section == header and "=" in line and not line.startswith(("#", ";")):
                    name, _, value = line.partition("=")
                    found.append(EntryPoint(name.strip(), value.strip(), dist))
    return found


def _dist_name(folder: str) -> str | None:
    """The ``Name:`` of a distribution's METADATA (PKG-INFO for an egg)."""
    for meta in ("METADATA", "PKG-INFO"):
        try:
            with open(os.path.join(folder, meta), encoding="utf-8") as f:
                for line in f:
                    if line.startswith("Name:"):
                        return line[5:].strip()
                    if not line.strip():
                        break
        except OSError:
            continue
    return None


@lru_cache(maxsize=1)
def registry() -> Registry:
    """Load every plugin once and return the registry."""
    pm = pluggy.PluginManager("conv")
    pm.add_hookspecs(hookspecs)
    disabled = _disabled()
    reg = Registry(pm)

    plugins: list[tuple[str, str, object]] = []
    if "builtin" not in disabled:
        from convcore import builtin
        plugins.append(("builtin", "conv", builtin))
    for ep in sorted(entry_points(GROUP), key=lambda e: e.name):
        if ep.name in disabled:
            continue
        dist = ep.dist
        try:
            module = ep.load()
        except Exception as e:  # a broken plugin must not take conv down
            warn(f"plugin {ep.name!r} ({dist}) failed to load: {type(e).__name__}: {e}")
            continue
        plugins.append((ep.name, dist, module))

    for name, dist, module in plugins:
        try:
            pm.register(module, name=name)
        except Exception as e:
            warn(f"plugin {name!r} ({dist}) is not a valid conv plugin: {e}")
            continue
        hook = getattr(module, "conv_register_formats", None)
        if hook is None:
            continue
        try:
            hook(register=lambda fmt, _d=dist: reg.add(fmt, _d))
        except Exception as e:
            warn(f"plugin {name!r} ({dist}) failed to register: {type(e).__name__}: {e}")
            pm.unregister(module)
    return reg
