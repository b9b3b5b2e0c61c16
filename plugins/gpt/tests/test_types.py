"""Partition type names and GUIDs, checked against sfdisk's own tables."""

from __future__ import annotations

import uuid

import pytest
from conv_gpt import types

from convcore.errors import UsageError
from convcore.testing import require_tool, run


def _sfdisk_types(label: str) -> dict[str, str]:
    """sfdisk -T: {id (lowercase GUID or hex byte): description}."""
    require_tool("sfdisk")
    out = run("sfdisk", "--label", label, "-T").stdout
    table = {}
    for line in out.splitlines()[1:]:
        if line.strip():
            ident, _, desc = line.strip().partition(" ")
            table[ident.lower()] = desc.strip()
    return table


def test_every_gpt_type_we_name_is_sfdisks_guid_and_description():
    sfdisk = _sfdisk_types("gpt")
    missing = []
    for name, guid, desc in types.GPT_TYPES:
        if guid in sfdisk:
            assert sfdisk[guid] == desc, name
        else:
            missing.append(name)
    # util-linux 2.38 lacks only these two dm-crypt/LUKS types from the DPS.
    assert sorted(missing) == ["linux-dm-crypt", "linux-luks"]


def test_every_mbr_type_we_name_is_sfdisks_byte_and_description():
    sfdisk = _sfdisk_types("dos")
    for name, byte, desc in types.MBR_TYPES:
        assert sfdisk[f"{byte:x}"] == desc, name


def test_dps_root_names_for_every_architecture():
    assert str(types.gpt_type("root-x86-64")) == "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
    assert str(types.gpt_type("usr-arm64")) == "b0e01050-ee5f-4390-949a-9101b17104e9"
    assert str(types.gpt_type("root-riscv64-verity-sig")) == \
        "efe0f087-ea8d-4469-821a-4c2a96a8386a"
    names = {name for name, _, _ in types.GPT_TYPES}
    for arch in ("x86", "x86-64", "arm", "arm64", "ia64", "loongarch64", "riscv32", "riscv64",
                 "ppc64-le", "s390x"):
        for kind in ("root", "usr"):
            for suffix in ("", "-verity", "-verity-sig"):
                assert f"{kind}-{arch}{suffix}" in names


def test_aliases_guids_and_hex_bytes():
    assert types.gpt_type("U") == types.gpt_type("esp") == types.gpt_type("EFI System")
    assert types.gpt_type("Linux filesystem") == types.gpt_type("linux")
    guid = "12345678-1234-5678-1234-567812345678"
    assert types.gpt_type(guid) == uuid.UUID(guid)
    assert types.gpt_type_name(uuid.UUID(guid)) == guid
    assert types.mbr_type("0x83") == types.mbr_type("83") == types.mbr_type("L") == 0x83
    assert types.mbr_type("e") == 0x0E  # hex, not sfdisk's E shortcut
    assert types.mbr_type("root-x86-64") == 0x83
    assert types.mbr_type_name(0x8E) == "linux-lvm" and types.mbr_type_name(0x42) == "42"
    with pytest.raises(UsageError, match="unused entry"):
        types.gpt_type("00000000-0000-0000-0000-000000000000")
    with pytest.raises(UsageError, match="unused entry"):
        types.mbr_type("0")


def test_attribute_bits():
    value = types.gpt_attributes(["required", "no-block-io", "legacy-bios-bootable",
                                  "grow-fs", "read-only", "no-auto", "bit:48"])
    assert value == (1 << 0) | (1 << 1) | (1 << 2) | (1 << 59) | (1 << 60) | (1 << 63) | (1 << 48)
    assert types.gpt_attribute_names(value) == [
        "required", "no-block-io", "legacy-bios-bootable", "bit:48", "grow-fs", "read-only",
        "no-auto"]
    with pytest.raises(UsageError, match="bit:64"):
        types.gpt_attributes(["bit:64"])
