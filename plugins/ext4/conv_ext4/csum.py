"""The checksums ext4 metadata carries: crc32c (metadata_csum) and crc16 (gdt_csum).

ext4 chains crc32c without the final inversion the usual crc32c API applies,
so ``crc32c_raw(seed, data)`` is the kernel's ``ext4_chksum(seed, data)``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import cache

_MASK32 = 0xFFFFFFFF


def _load_crc32c() -> Callable[..., int]:
    """The crc32c distribution's C function ``crc32c(data, value=0)``.

    Loaded from its extension module without running the package's
    ``__init__``, which imports importlib.metadata (for ``__version__``) and
    its command line's argparse: 24 ms, a third of a small ext4 conversion.
    Any surprise in how the package is laid out falls back to the import.
    """
    package = sys.modules.get("crc32c")
    if package is None:
        try:
            from importlib.machinery import PathFinder
            from importlib.util import module_from_spec

            found = PathFinder.find_spec("crc32c")
            spec = PathFinder.find_spec("crc32c._crc32c",
                                        found.submodule_search_locations if found else None)
            if spec is not None and spec.loader is not None and found is not None:
                module = module_from_spec(spec)
                spec.loader.exec_module(module)
                return module.crc32c
        except (ImportError, OSError, AttributeError):
            pass
        import crc32c as package
    return package.crc32c


#: ``crc32c(data, value=0)``: the usual crc32c (inverted in and out)
crc32c = _load_crc32c()


def crc32c_raw(seed: int, data: bytes | bytearray | memoryview) -> int:
    """The kernel's ``crc32c_le(seed, data)``: no pre- or post-inversion."""
    return crc32c(data, value=seed ^ _MASK32) ^ _MASK32


@cache
def _crc16_table() -> tuple[int, ...]:
    # built on first use: 1 ms of every ext4 start-up, for the few
    # filesystems read with gdt_csum and no metadata_csum
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


def crc16(crc: int, data: bytes | bytearray | memoryview) -> int:
    """e2fsprogs' ``ext2fs_crc16`` (reflected poly 0x8005), for group
    descriptors of filesystems with gdt_csum (uninit_bg) but no metadata_csum."""
    table = _crc16_table()
    for b in bytes(data):
        crc = (crc >> 8) ^ table[(crc ^ b) & 0xFF]
    return crc & 0xFFFF
