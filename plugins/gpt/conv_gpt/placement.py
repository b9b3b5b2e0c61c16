"""Where partitions go: aligned starts, sizes, ``size=rest``, the disk size.

Shared by the GPT and MBR writers; the tables themselves are their business.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from convcore.errors import NoSpaceError, UsageError
from convcore.format import PartitionRequest

REST = "rest"


@dataclass
class Placed:
    """A partition with its place on the disk, in bytes."""

    number: int  # 1-based, as the table numbers it
    request: PartitionRequest
    start: int
    size: int
    #: MBR logical partitions: where the EBR describing it sits (bytes)
    ebr: int | None = None

    @property
    def end(self) -> int:
        return self.start + self.size

    @property
    def label(self) -> str:
        name = self.request.name
        return f"partition {self.number}" + (f" ({name})" if name else "")


def align_up(value: int, align: int) -> int:
    return -(-value // align) * align


def align_down(value: int, align: int) -> int:
    return value // align * align


def human(n: int) -> str:
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.4g} {unit}"
    return f"{n} bytes"


def content_size(request: PartitionRequest) -> int:
    return int(request.content.size) if request.content is not None else 0


def check_geometry(table: str, sector: int, align: int) -> None:
    if align <= 0 or align % sector:
        raise UsageError(f"{table}: align={align} is not a multiple of the {sector}-byte sector")


def place(table: str, requests: Sequence[PartitionRequest], numbers: Sequence[int],
          ebr: Sequence[bool], *, sector: int, align: int, first_free: int,
          tail: int, disk_size: int | None) -> tuple[list[Placed], int]:
    """Lay ``requests`` out in order from ``first_free`` (bytes), each start
    aligned, ``tail`` bytes kept free at the end of the disk (the GPT backup).

    ``ebr[i]`` reserves one sector before partition i for an MBR extended boot
    record. Sizes left to conv (just big enough, or ``rest``) are whole
    ``align`` units, so every partition also ends aligned. Returns the placed
    partitions and the disk size: ``disk_size`` when given, else the smallest
    whole number of ``align`` units that holds everything.
    """
    if disk_size is not None and disk_size % sector:
        raise UsageError(f"{table}: size={disk_size} is not a multiple of the "
                         f"{sector}-byte sector")
    rests = [i for i, r in enumerate(requests) if r.size == REST]
    if len(rests) > 1:
        raise UsageError(f"{table}: only one partition may have size=rest "
                         f"(partitions {numbers[rests[0]]} and {numbers[rests[1]]} do)")

    sizes: list[int] = []
    for i, r in enumerate(requests):
        need = align_up(content_size(r), sector)
        label = f"partition {numbers[i]}" + (f" ({r.name})" if r.name else "")
        if r.size == REST:
            if r.content is None and disk_size is None:
                raise UsageError(f"{table}: {label} has size=rest and no content: "
                                 "give the disk a size")
            sizes.append(align_up(need, align) or align)
        elif r.size is None:
            if r.content is None:
                raise UsageError(f"{table}: {label} has neither a size nor content")
            sizes.append(align_up(need, align) or align)
        else:
            size = int(r.size)
            if size <= 0:
                raise UsageError(f"{table}: {label} has size {size}")
            size = align_up(size, sector)
            if size < need:
                raise NoSpaceError(f"{table}: {label} is {human(size)} but its content "
                                   f"needs {content_size(r)} bytes")
            sizes.append(size)

    placed = _place_sizes(requests, numbers, ebr, sizes, sector, align, first_free)
    end = placed[-1].end if placed else first_free
    if disk_size is None:
        return placed, align_up(end + tail, align)

    slack = disk_size - tail - end
    if slack < 0:
        raise NoSpaceError(f"{table}: the partitions need a disk of {end + tail} bytes "
                           f"({human(end + tail)}), size= gives {disk_size}")
    if rests and slack:
        i = rests[0]
        # Growing by whole align units keeps every later start aligned.
        sizes[i] += align_down(slack, align)
        placed = _place_sizes(requests, numbers, ebr, sizes, sector, align, first_free)
    return placed, disk_size


def _place_sizes(requests, numbers, ebr, sizes, sector, align, first_free) -> list[Placed]:
    placed: list[Placed] = []
    pos = first_free
    for i, r in enumerate(requests):
        record = None
        if ebr[i]:
            record = align_up(pos, align)
            pos = record + sector
        start = align_up(pos, align)
        placed.append(Placed(numbers[i], r, start, sizes[i], record))
        pos = start + sizes[i]
    return placed
