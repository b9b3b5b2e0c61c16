"""Hostile tables: corrupt headers, bad CRCs, overlaps, loops, truncation."""

from __future__ import annotations

import random
import struct
import zlib

import pytest

from convcore.blockdev import FileVolume
from convcore.errors import ConvError, CorruptError
from convcore.format import PartitionRequest
from convcore.plugins import registry

MiB = 1 << 20
HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")


@pytest.fixture
def disk(write_disk, content):
    return write_disk("gpt", [PartitionRequest(content(MiB, 1), name="one", type="linux"),
                              PartitionRequest(content(MiB, 2), name="two", type="home")])


def _partitions(path, table="gpt"):
    volume = FileVolume(path)
    try:
        return registry().get(table).partitions(volume)
    finally:
        volume.close()


def _patch(path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _read(path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def _rewrite_header(path, lba: int, **changes) -> None:
    """Change header fields and fix the header CRC, as a buggy tool would."""
    fields = list(HEADER.unpack(_read(path, lba * 512, HEADER.size)))
    names = ["signature", "revision", "header_size", "header_crc32", "reserved", "my_lba",
             "alternate_lba", "first_usable", "last_usable", "disk_guid", "entries_lba",
             "num_entries", "entry_size", "entries_crc32"]
    for key, value in changes.items():
        fields[names.index(key)] = value
    fields[3] = 0
    fields[3] = zlib.crc32(HEADER.pack(*fields))
    _patch(path, lba * 512, HEADER.pack(*fields))


def _rewrite_entry(path, index: int, first: int, last: int) -> None:
    """Move entry ``index`` in both arrays and fix every CRC."""
    import os
    last_lba = os.path.getsize(path) // 512 - 1
    for header_lba in (1, last_lba):
        header = HEADER.unpack(_read(path, header_lba * 512, HEADER.size))
        entries_lba = header[10]
        _patch(path, entries_lba * 512 + index * 128 + 32, struct.pack("<QQ", first, last))
        crc = zlib.crc32(_read(path, entries_lba * 512, 128 * 128))
        _rewrite_header(path, header_lba, entries_crc32=crc)


def test_corrupt_primary_header_falls_back_to_backup_and_warns_once(disk, capfd):
    good = _partitions(disk)
    _patch(disk, 512 + 40, b"\xff\xff")  # inside first_usable_lba: CRC no longer matches
    volume = FileVolume(disk)
    try:
        gpt = registry().get("gpt")
        assert gpt.partitions(volume) == good
        part = gpt.decode(volume, gpt.parse_options({"part": "two"}), None)
        assert part.offset == good[1].start
    finally:
        volume.close()
    err = capfd.readouterr().err
    assert err == "conv: warning: primary GPT header is corrupt, using the backup\n"


def test_corrupt_primary_entry_array_falls_back_to_backup(disk, capfd):
    good = _partitions(disk)
    _patch(disk, 2 * 512 + 56, "évil".encode("utf-16-le"))  # a name: the array CRC breaks
    assert _partitions(disk) == good
    assert "using the backup" in capfd.readouterr().err


def test_wiped_primary_header_uses_backup(disk, capfd):
    good = _partitions(disk)
    _patch(disk, 512, bytes(512))
    assert _partitions(disk) == good
    assert "using the backup" in capfd.readouterr().err


def test_both_headers_corrupt_is_one_line(disk):
    import os
    _patch(disk, 512 + 40, b"\xff")
    _patch(disk, os.path.getsize(disk) - 512 + 40, b"\xff")
    with pytest.raises(CorruptError) as e:
        _partitions(disk)
    assert str(e.value) == ("GPT: primary header: header CRC mismatch at LBA 1; "
                            f"backup header: header CRC mismatch at LBA "
                            f"{os.path.getsize(disk) // 512 - 1}")


def test_absurd_entry_count_is_refused_without_allocating(disk):
    import os
    last = os.path.getsize(disk) // 512 - 1
    for lba in (1, last):
        _rewrite_header(disk, lba, num_entries=0xFFFFFFFF)
    with pytest.raises(CorruptError, match="absurd partition entry count 4294967295"):
        _partitions(disk)
    for lba in (1, last):
        _rewrite_header(disk, lba, num_entries=128, entry_size=7)
    with pytest.raises(CorruptError, match="partition entry size 7 is invalid"):
        _partitions(disk)


def test_entries_outside_the_disk_are_refused(disk):
    import os
    last = os.path.getsize(disk) // 512 - 1
    for lba in (1, last):
        _rewrite_header(disk, lba, entries_lba=1 << 40)
    with pytest.raises(CorruptError, match="partition entries at LBA 1099511627776"):
        _partitions(disk)


def test_overlapping_partitions_are_refused(disk):
    _rewrite_entry(disk, 1, 3000, 6000)  # partition 1 covers 2048..4095
    with pytest.raises(CorruptError, match="GPT partitions 1 and 2 overlap"):
        _partitions(disk)


def test_partition_outside_usable_area_is_refused(disk):
    _rewrite_entry(disk, 1, 4096, 1 << 33)
    with pytest.raises(CorruptError, match=r"GPT partition 2: LBA 4096\.\.8589934592 lies "
                                            "outside the usable area"):
        _partitions(disk)


def test_truncated_disk_is_one_line(disk, tmp_path):
    cut = tmp_path / "cut.img"
    cut.write_bytes(_read(disk, 0, 3 * MiB))
    with pytest.raises(CorruptError, match="describes a disk of 8192 sectors, the image has "
                                           "6144 \\(truncated") as e:
        _partitions(str(cut))
    assert "\n" not in str(e.value)


def _damage(disk, regions, rounds: int, seed: int):
    """Yield after each round of 1-4 random byte changes inside ``regions``;
    each round's changes are undone before the next."""
    rng = random.Random(seed)
    with open(disk, "r+b") as f:
        for _ in range(rounds):
            spots = {}
            for _ in range(rng.randint(1, 4)):
                lo, hi = rng.choice(regions)
                spot = rng.randrange(lo, hi)
                f.seek(spot)
                old = spots.setdefault(spot, f.read(1)[0])
                f.seek(spot)
                f.write(bytes([(old + rng.randrange(1, 256)) % 256]))
            f.flush()
            yield
            for spot, old in spots.items():
                f.seek(spot)
                f.write(bytes([old]))
            f.flush()


def test_random_damage_to_one_copy_always_recovers(disk):
    import os
    good = _partitions(disk)
    size = os.path.getsize(disk)
    for regions in ([(512, 34 * 512)], [(size - 33 * 512, size)]):
        for _ in _damage(disk, regions, 100, 5):
            assert _partitions(disk) == good


def test_random_damage_to_both_copies_is_a_table_or_one_line(disk):
    import os
    good = _partitions(disk)
    size = os.path.getsize(disk)
    errors = 0
    for _ in _damage(disk, [(512, 34 * 512), (size - 33 * 512, size)], 200, 6):
        try:
            assert _partitions(disk) == good
        except ConvError as e:
            assert "\n" not in str(e) and str(e).startswith("GPT: primary header: ")
            errors += 1
    assert errors > 0  # some rounds hit both copies


# --------------------------------------------------------------------------
# MBR


@pytest.fixture
def dos_disk(write_disk):
    return write_disk("mbr", [PartitionRequest(None, size=MiB) for _ in range(6)])


def test_ebr_chain_loop_is_refused(dos_disk):
    parts = _partitions(dos_disk, "mbr")
    assert [p.number for p in parts] == [1, 2, 3, 5, 6, 7]
    # Point the second EBR's link back at the first EBR (relative LBA 0).
    second_ebr = parts[4].start - MiB
    _patch(dos_disk, second_ebr + 446 + 16 + 8, struct.pack("<I", 0))
    _patch(dos_disk, second_ebr + 446 + 16 + 4, b"\x05")
    with pytest.raises(CorruptError, match="loops at sector"):
        _partitions(dos_disk, "mbr")


def test_mbr_partition_past_the_end_is_refused(dos_disk):
    _patch(dos_disk, 446 + 12, struct.pack("<I", 0x7FFFFFFF))
    with pytest.raises(CorruptError, match="MBR partition 1: sectors 2048..2147485694 lie past "
                                           "the end"):
        _partitions(dos_disk, "mbr")


def test_mbr_overlap_is_refused(dos_disk):
    _patch(dos_disk, 446 + 16 + 8, struct.pack("<I", 3000))  # partition 2 starts inside 1
    with pytest.raises(CorruptError, match="MBR partitions 1 and 2 overlap"):
        _partitions(dos_disk, "mbr")


def test_ebr_without_signature_is_refused(dos_disk):
    parts = _partitions(dos_disk, "mbr")
    _patch(dos_disk, parts[3].start - MiB + 510, b"\0\0")
    with pytest.raises(CorruptError, match="has no 55aa signature"):
        _partitions(dos_disk, "mbr")


def test_usable_area_over_the_tables_is_refused(disk):
    import os
    last = os.path.getsize(disk) // 512 - 1
    for lba in (1, last):
        _rewrite_header(disk, lba, first_usable=1)
    with pytest.raises(CorruptError, match="usable area LBA 1..8158 covers the partition table"):
        _partitions(disk)
