"""Progress on stderr: a tqdm bar, or nothing when quiet or not a TTY."""

from __future__ import annotations

from typing import Any


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_description(self, desc: str) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def bar(total: int | None, desc: str, unit: str = "B", disabled: bool = False):
    """A context-managed bar that only appears for work over about a second."""
    if disabled:
        return _NoBar()
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B",
                unit_divisor=1024, delay=1.0, leave=False, dynamic_ncols=True)
