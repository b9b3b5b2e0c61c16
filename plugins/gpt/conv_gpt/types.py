"""Partition type names: GPT type GUIDs, MBR type bytes and GPT attribute bits.

Names follow the Discoverable Partitions Specification (``root-x86-64``,
``usr-arm64``, ``esp``, ``xbootldr``, ...) with sfdisk's descriptions, so
``conv info`` and ``sfdisk --json`` talk about the same thing. A type may also
be given as a GUID (GPT) or as a hex byte (MBR).
"""

from __future__ import annotations

import platform
import re
import uuid

from convcore.errors import UsageError

#: (name, GUID, description as sfdisk prints it)
GPT_TYPES: list[tuple[str, str, str]] = [
    ("esp", "c12a7328-f81f-11d2-ba4b-00a0c93ec93b", "EFI System"),
    ("xbootldr", "bc13c2ff-59e6-4262-a352-b275fd6f7172", "Linux extended boot"),
    ("bios-boot", "21686148-6449-6e6f-744e-656564454649", "BIOS boot"),
    ("linux", "0fc63daf-8483-4772-8e79-3d69d8477de4", "Linux filesystem"),
    ("swap", "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f", "Linux swap"),
    ("home", "933ac7e1-2eb4-4f13-b844-0e14e2aef915", "Linux home"),
    ("srv", "3b8f8425-20e0-4f3b-907f-1a25a76f98e8", "Linux server data"),
    ("var", "4d21b016-b534-45c2-a9fb-5c16e091fd2d", "Linux variable data"),
    ("tmp", "7ec6f557-3bc5-4aca-b293-16ef5df639d1", "Linux temporary data"),
    ("user-home", "773f91ef-66d4-49b5-bd83-d683bf40ad16", "Linux user's home"),
    ("linux-lvm", "e6d6d379-f507-44c2-a23c-238f2a3df928", "Linux LVM"),
    ("linux-raid", "a19d880f-05fc-4d3b-a006-743f0f84911e", "Linux RAID"),
    ("linux-luks", "ca7d7ccb-63ed-4c53-861c-1742536059cc", "Linux LUKS"),
    ("linux-dm-crypt", "7ffec5c9-2d00-49b7-8941-3ea10a5586b7", "Linux dm-crypt"),
    ("linux-reserved", "8da63339-0007-60c0-c436-083ac8230908", "Linux reserved"),
    ("microsoft-basic-data", "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7", "Microsoft basic data"),
    ("microsoft-reserved", "e3c9e316-0b5c-4db8-817d-f92df00215ae", "Microsoft reserved"),
    ("windows-recovery", "de94bba4-06d1-4d40-a16a-bfd50179d6ac",
     "Windows recovery environment"),
    ("prep", "9e1a2d38-c612-4316-aa26-8b49521e5a8b", "PowerPC PReP boot"),
    ("root-x86", "44479540-f297-41b2-9af7-d131d5f0458a", "Linux root (x86)"),
    ("root-x86-64", "4f68bce3-e8cd-4db1-96e7-fbcaf984b709", "Linux root (x86-64)"),
    ("root-alpha", "6523f8ae-3eb1-4e2a-a05a-18b695ae656f", "Linux root (Alpha)"),
    ("root-arc", "d27f46ed-2919-4cb8-bd25-9531f3c16534", "Linux root (ARC)"),
    ("root-arm", "69dad710-2ce4-4e3c-b16c-21a1d49abed3", "Linux root (ARM)"),
    ("root-arm64", "b921b045-1df0-41c3-af44-4c6f280d3fae", "Linux root (ARM-64)"),
    ("root-ia64", "993d8d3d-f80e-4225-855a-9daf8ed7ea97", "Linux root (IA-64)"),
    ("root-loongarch64", "77055800-792c-4f94-b39a-98c91b762bb6", "Linux root (LoongArch-64)"),
    ("root-mips-le", "37c58c8a-d913-4156-a25f-48b1b64e07f0", "Linux root (MIPS-32 LE)"),
    ("root-mips64-le", "700bda43-7a34-4507-b179-eeb93d7a7ca3", "Linux root (MIPS-64 LE)"),
    ("root-ppc", "1de3f1ef-fa98-47b5-8dcd-4a860a654d78", "Linux root (PPC)"),
    ("root-ppc64", "912ade1d-a839-4913-8964-a10eee08fbd2", "Linux root (PPC64)"),
    ("root-ppc64-le", "c31c45e6-3f39-412e-80fb-4809c4980599", "Linux root (PPC64LE)"),
    ("root-riscv32", "60d5a7fe-8e7d-435c-b714-3dd8162144e1", "Linux root (RISC-V-32)"),
    ("root-riscv64", "72ec70a6-cf74-40e6-bd49-4bda08e8f224", "Linux root (RISC-V-64)"),
    ("root-s390", "08a7acea-624c-4a20-91e8-6e0fa67d23f9", "Linux root (S390)"),
    ("root-s390x", "5eead9a9-fe09-4a1e-a1d7-520d00531306", "Linux root (S390X)"),
    ("root-tilegx", "c50cdd70-3862-4cc3-90e1-809a8c93ee2c", "Linux root (TILE-Gx)"),
    ("usr-x86", "75250d76-8cc6-458e-bd66-bd47cc81a812", "Linux /usr (x86)"),
    ("usr-x86-64", "8484680c-9521-48c6-9c11-b0720656f69e", "Linux /usr (x86-64)"),
    ("usr-alpha", "e18cf08c-33ec-4c0d-8246-c6c6fb3da024", "Linux /usr (Alpha)"),
    ("usr-arc", "7978a683-6316-4922-bbee-38bff5a2fecc", "Linux /usr (ARC)"),
    ("usr-arm", "7d0359a3-02b3-4f0a-865c-654403e70625", "Linux /usr (ARM)"),
    ("usr-arm64", "b0e01050-ee5f-4390-949a-9101b17104e9", "Linux /usr (ARM-64)"),
    ("usr-ia64", "4301d2a6-4e3b-4b2a-bb94-9e0b2c4225ea", "Linux /usr (IA-64)"),
    ("usr-loongarch64", "e611c702-575c-4cbe-9a46-434fa0bf7e3f", "Linux /usr (LoongArch-64)"),
    ("usr-mips-le", "0f4868e9-9952-4706-979f-3ed3a473e947", "Linux /usr (MIPS-32 LE)"),
    ("usr-mips64-le", "c97c1f32-ba06-40b4-9f22-236061b08aa8", "Linux /usr (MIPS-64 LE)"),
    ("usr-ppc", "7d14fec5-cc71-415d-9d6c-06bf0b3c3eaf", "Linux /usr (PPC)"),
    ("usr-ppc64", "2c9739e2-f068-46b3-9fd0-01c5a9afbcca", "Linux /usr (PPC64)"),
    ("usr-ppc64-le", "15bb03af-77e7-4d4a-b12b-c0d084f7491c", "Linux /usr (PPC64LE)"),
    ("usr-riscv32", "b933fb22-5c3f-4f91-af90-e2bb0fa50702", "Linux /usr (RISC-V-32)"),
    ("usr-riscv64", "beaec34b-8442-439b-a40b-984381ed097d", "Linux /usr (RISC-V-64)"),
    ("usr-s390", "cd0f869b-d0fb-4ca0-b141-9ea87cc78d66", "Linux /usr (S390)"),
    ("usr-s390x", "8a4f5770-50aa-4ed3-874a-99b710db6fea", "Linux /usr (S390X)"),
    ("usr-tilegx", "55497029-c7c1-44cc-aa39-815ed1558630", "Linux /usr (TILE-Gx)"),
    ("root-x86-verity", "d13c5d3b-b5d1-422a-b29f-9454fdc89d76", "Linux root verity (x86)"),
    ("root-x86-64-verity", "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5", "Linux root verity (x86-64)"),
    ("root-alpha-verity", "fc56d9e9-e6e5-4c06-be32-e74407ce09a5", "Linux root verity (Alpha)"),
    ("root-arc-verity", "24b2d975-0f97-4521-afa1-cd531e421b8d", "Linux root verity (ARC)"),
    ("root-arm-verity", "7386cdf2-203c-47a9-a498-f2ecce45a2d6", "Linux root verity (ARM)"),
    ("root-arm64-verity", "df3300ce-d69f-4c92-978c-9bfb0f38d820", "Linux root verity (ARM-64)"),
    ("root-ia64-verity", "86ed10d5-b607-45bb-8957-d350f23d0571", "Linux root verity (IA-64)"),
    ("root-loongarch64-verity", "f3393b22-e9af-4613-a948-9d3bfbd0c535",
     "Linux root verity (LoongArch-64)"),
    ("root-mips-le-verity", "d7d150d2-2a04-4a33-8f12-16651205ff7b",
     "Linux root verity (MIPS-32 LE)"),
    ("root-mips64-le-verity", "16b417f8-3e06-4f57-8dd2-9b5232f41aa6",
     "Linux root verity (MIPS-64 LE)"),
    ("root-ppc-verity", "98cfe649-1588-46dc-b2f0-add147424925", "Linux root verity (PPC)"),
    ("root-ppc64-verity", "9225a9a3-3c19-4d89-b4f6-eeff88f17631", "Linux root verity (PPC64)"),
    ("root-ppc64-le-verity", "906bd944-4589-4aae-a4e4-dd983917446a", "Linux root verity (PPC64LE)"),
    ("root-riscv32-verity", "ae0253be-1167-4007-ac68-43926c14c5de",
     "Linux root verity (RISC-V-32)"),
    ("root-riscv64-verity", "b6ed5582-440b-4209-b8da-5ff7c419ea3d",
     "Linux root verity (RISC-V-64)"),
    ("root-s390-verity", "7ac63b47-b25c-463b-8df8-b4a94e6c90e1", "Linux root verity (S390)"),
    ("root-s390x-verity", "b325bfbe-c7be-4ab8-8357-139e652d2f6b", "Linux root verity (S390X)"),
    ("root-tilegx-verity", "966061ec-28e4-4b2e-b4a5-1f0a825a1d84", "Linux root verity (TILE-Gx)"),
    ("usr-x86-verity", "8f461b0d-14ee-4e81-9aa9-049b6fb97abd", "Linux /usr verity (x86)"),
    ("usr-x86-64-verity", "77ff5f63-e7b6-4633-acf4-1565b864c0e6", "Linux /usr verity (x86-64)"),
    ("usr-alpha-verity", "8cce0d25-c0d0-4a44-bd87-46331bf1df67", "Linux /usr verity (Alpha)"),
    ("usr-arc-verity", "fca0598c-d880-4591-8c16-4eda05c7347c", "Linux /usr verity (ARC)"),
    ("usr-arm-verity", "c215d751-7bcd-4649-be90-6627490a4c05", "Linux /usr verity (ARM)"),
    ("usr-arm64-verity", "6e11a4e7-fbca-4ded-b9e9-e1a512bb664e", "Linux /usr verity (ARM-64)"),
    ("usr-ia64-verity", "6a491e03-3be7-4545-8e38-83320e0ea880", "Linux /usr verity (IA-64)"),
    ("usr-loongarch64-verity", "f46b2c26-59ae-48f0-9106-c50ed47f673d",
     "Linux /usr verity (LoongArch-64)"),
    ("usr-mips-le-verity", "46b98d8d-b55c-4e8f-aab3-37fca7f80752",
     "Linux /usr verity (MIPS-32 LE)"),
    ("usr-mips64-le-verity", "3c3d61fe-b5f3-414d-bb71-8739a694a4ef",
     "Linux /usr verity (MIPS-64 LE)"),
    ("usr-ppc-verity", "df765d00-270e-49e5-bc75-f47bb2118b09", "Linux /usr verity (PPC)"),
    ("usr-ppc64-verity", "bdb528a5-a259-475f-a87d-da53fa736a07", "Linux /usr verity (PPC64)"),
    ("usr-ppc64-le-verity", "ee2b9983-21e8-4153-86d9-b6901a54d1ce", "Linux /usr verity (PPC64LE)"),
    ("usr-riscv32-verity", "cb1ee4e3-8cd0-4136-a0a4-aa61a32e8730", "Linux /usr verity (RISC-V-32)"),
    ("usr-riscv64-verity", "8f1056be-9b05-47c4-81d6-be53128e5b54", "Linux /usr verity (RISC-V-64)"),
    ("usr-s390-verity", "b663c618-e7bc-4d6d-90aa-11b756bb1797", "Linux /usr verity (S390)"),
    ("usr-s390x-verity", "31741cc4-1a2a-4111-a581-e00b447d2d06", "Linux /usr verity (S390X)"),
    ("usr-tilegx-verity", "2fb4bf56-07fa-42da-8132-6b139f2026ae", "Linux /usr verity (TILE-Gx)"),
    ("root-x86-verity-sig", "5996fc05-109c-48de-808b-23fa0830b676",
     "Linux root verity sign. (x86)"),
    ("root-x86-64-verity-sig", "41092b05-9fc8-4523-994f-2def0408b176",
     "Linux root verity sign. (x86-64)"),
    ("root-alpha-verity-sig", "d46495b7-a053-414f-80f7-700c99921ef8",
     "Linux root verity sign. (Alpha)"),
    ("root-arc-verity-sig", "143a70ba-cbd3-4f06-919f-6c05683a78bc",
     "Linux root verity sign. (ARC)"),
    ("root-arm-verity-sig", "42b0455f-eb11-491d-98d3-56145ba9d037",
     "Linux root verity sign. (ARM)"),
    ("root-arm64-verity-sig", "6db69de6-29f4-4758-a7a5-962190f00ce3",
     "Linux root verity sign. (ARM-64)"),
    ("root-ia64-verity-sig", "e98b36ee-32ba-4882-9b12-0ce14655f46a",
     "Linux root verity sign. (IA-64)"),
    ("root-loongarch64-verity-sig", "5afb67eb-ecc8-4f85-ae8e-ac1e7c50e7d0",
     "Linux root verity sign. (LoongArch-64)"),
    ("root-mips-le-verity-sig", "c919cc1f-4456-4eff-918c-f75e94525ca5",
     "Linux root verity sign. (MIPS-32 LE)"),
    ("root-mips64-le-verity-sig", "904e58ef-5c65-4a31-9c57-6af5fc7c5de7",
     "Linux root verity sign. (MIPS-64 LE)"),
    ("root-ppc-verity-sig", "1b31b5aa-add9-463a-b2ed-bd467fc857e7",
     "Linux root verity sign. (PPC)"),
    ("root-ppc64-verity-sig", "f5e2c20c-45b2-4ffa-bce9-2a60737e1aaf",
     "Linux root verity sign. (PPC64)"),
    ("root-ppc64-le-verity-sig", "d4a236e7-e873-4c07-bf1d-bf6cf7f1c3c6",
     "Linux root verity sign. (PPC64LE)"),
    ("root-riscv32-verity-sig", "3a112a75-8729-4380-b4cf-764d79934448",
     "Linux root verity sign. (RISC-V-32)"),
    ("root-riscv64-verity-sig", "efe0f087-ea8d-4469-821a-4c2a96a8386a",
     "Linux root verity sign. (RISC-V-64)"),
    ("root-s390-verity-sig", "3482388e-4254-435a-a241-766a065f9960",
     "Linux root verity sign. (S390)"),
    ("root-s390x-verity-sig", "c80187a5-73a3-491a-901a-017c3fa953e9",
     "Linux root verity sign. (S390X)"),
    ("root-tilegx-verity-sig", "b3671439-97b0-4a53-90f7-2d5a8f3ad47b",
     "Linux root verity sign. (TILE-Gx)"),
    ("usr-x86-verity-sig", "974a71c0-de41-43c3-be5d-5c5ccd1ad2c0", "Linux /usr verity sign. (x86)"),
    ("usr-x86-64-verity-sig", "e7bb33fb-06cf-4e81-8273-e543b413e2e2",
     "Linux /usr verity sign. (x86-64)"),
    ("usr-alpha-verity-sig", "5c6e1c76-076a-457a-a0fe-f3b4cd21ce6e",
     "Linux /usr verity sign. (Alpha)"),
    ("usr-arc-verity-sig", "94f9a9a1-9971-427a-a400-50cb297f0f35", "Linux /usr verity sign. (ARC)"),
    ("usr-arm-verity-sig", "d7ff812f-37d1-4902-a810-d76ba57b975a", "Linux /usr verity sign. (ARM)"),
    ("usr-arm64-verity-sig", "c23ce4ff-44bd-4b00-b2d4-b41b3419e02a",
     "Linux /usr verity sign. (ARM-64)"),
    ("usr-ia64-verity-sig", "8de58bc2-2a43-460d-b14e-a76e4a17b47f",
     "Linux /usr verity sign. (IA-64)"),
    ("usr-loongarch64-verity-sig", "b024f315-d330-444c-8461-44bbde524e99",
     "Linux /usr verity sign. (LoongArch-64)"),
    ("usr-mips-le-verity-sig", "3e23ca0b-a4bc-4b4e-8087-5ab6a26aa8a9",
     "Linux /usr verity sign. (MIPS-32 LE)"),
    ("usr-mips64-le-verity-sig", "f2c2c7ee-adcc-4351-b5c6-ee9816b66e16",
     "Linux /usr verity sign. (MIPS-64 LE)"),
    ("usr-ppc-verity-sig", "7007891d-d371-4a80-86a4-5cb875b9302e", "Linux /usr verity sign. (PPC)"),
    ("usr-ppc64-verity-sig", "0b888863-d7f8-4d9e-9766-239fce4d58af",
     "Linux /usr verity sign. (PPC64)"),
    ("usr-ppc64-le-verity-sig", "c8bfbd1e-268e-4521-8bba-bf314c399557",
     "Linux /usr verity sign. (PPC64LE)"),
    ("usr-riscv32-verity-sig", "c3836a13-3137-45ba-b583-b16c50fe5eb4",
     "Linux /usr verity sign. (RISC-V-32)"),
    ("usr-riscv64-verity-sig", "d2f9000a-7a18-453f-b5cd-4d32f77a7b32",
     "Linux /usr verity sign. (RISC-V-64)"),
    ("usr-s390-verity-sig", "17440e4f-a8d0-467f-a46e-3912ae6ef2c5",
     "Linux /usr verity sign. (S390)"),
    ("usr-s390x-verity-sig", "3f324816-667b-46ae-86ee-9b0c0c6c11b4",
     "Linux /usr verity sign. (S390X)"),
    ("usr-tilegx-verity-sig", "4ede75e2-6ccc-4cc8-b9c7-70334b087510",
     "Linux /usr verity sign. (TILE-Gx)"),
]

#: other spellings users type (sfdisk's aliases and common names)
GPT_ALIASES: dict[str, str] = {
    "uefi": "esp", "efi": "esp", "linux-generic": "linux", "linux-swap": "swap",
    "lvm": "linux-lvm", "raid": "linux-raid", "luks": "linux-luks",
    "linux-home": "home", "bios": "bios-boot", "msdata": "microsoft-basic-data",
    # sfdisk's one-letter shortcuts
    "l": "linux", "s": "swap", "h": "home", "u": "esp", "r": "linux-raid", "v": "linux-lvm",
}

#: the names an unknown-type error suggests
_COMMON_GPT = ("esp", "xbootldr", "bios-boot", "linux", "swap", "home", "srv", "var", "tmp",
               "linux-lvm", "linux-raid", "linux-luks")

_GPT_BY_NAME = {name: uuid.UUID(guid) for name, guid, _ in GPT_TYPES}
_GPT_BY_GUID = {uuid.UUID(guid): (name, desc) for name, guid, desc in GPT_TYPES}
#: sfdisk's descriptions ("Linux filesystem") work as names too
_GPT_BY_DESCRIPTION = {desc.lower(): name for name, _, desc in GPT_TYPES}

#: (name, type byte, description as fdisk prints it)
MBR_TYPES: list[tuple[str, int, str]] = [
    ("fat12", 0x01, "FAT12"),
    ("fat16-small", 0x04, "FAT16 <32M"),
    ("extended", 0x05, "Extended"),
    ("fat16", 0x06, "FAT16"),
    ("ntfs", 0x07, "HPFS/NTFS/exFAT"),
    ("fat32-chs", 0x0B, "W95 FAT32"),
    ("fat32", 0x0C, "W95 FAT32 (LBA)"),
    ("fat16-lba", 0x0E, "W95 FAT16 (LBA)"),
    ("extended-lba", 0x0F, "W95 Ext'd (LBA)"),
    ("prep", 0x41, "PPC PReP Boot"),
    ("swap", 0x82, "Linux swap / Solaris"),
    ("linux", 0x83, "Linux"),
    ("linux-extended", 0x85, "Linux extended"),
    ("linux-lvm", 0x8E, "Linux LVM"),
    ("freebsd", 0xA5, "FreeBSD"),
    ("xbootldr", 0xEA, "Linux extended boot"),
    ("gpt", 0xEE, "GPT"),
    ("esp", 0xEF, "EFI (FAT-12/16/32)"),
    ("linux-raid", 0xFD, "Linux raid autodetect"),
]

MBR_ALIASES: dict[str, str] = {
    "uefi": "esp", "efi": "esp", "lvm": "linux-lvm", "raid": "linux-raid",
    "vfat": "fat32", "fat": "fat32", "linux-swap": "swap", "linux-generic": "linux",
    # sfdisk's one-letter shortcuts, except E (extended), which reads as hex 0e
    "l": "linux", "s": "swap", "x": "linux-extended", "u": "esp", "r": "linux-raid",
    "v": "linux-lvm",
}

_MBR_BY_NAME = {name: byte for name, byte, _ in MBR_TYPES}
_MBR_BY_BYTE = {byte: (name, desc) for name, byte, desc in MBR_TYPES}

#: MBR types that hold a chain of logical partitions
MBR_EXTENDED = frozenset({0x05, 0x0F, 0x85})

#: GPT attribute bits by name (UEFI 5.3.3, and the DPS bits 59, 60, 63)
GPT_ATTRIBUTES: dict[str, int] = {
    "required": 0,
    "no-block-io": 1,
    "legacy-bios-bootable": 2,
    "grow-fs": 59,
    "read-only": 60,
    "no-auto": 63,
}
_ATTRIBUTE_ALIASES = {
    "required-partition": "required", "platform-required": "required",
    "legacy-boot": "legacy-bios-bootable", "bootable": "legacy-bios-bootable",
    "growfs": "grow-fs", "grow-file-system": "grow-fs", "readonly": "read-only",
    "no-automount": "no-auto",
}
_BIT_NAMES = {bit: name for name, bit in GPT_ATTRIBUTES.items()}

_GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                      r"[0-9a-fA-F]{12}$")
_MBR_HEX_RE = re.compile(r"^(0x)?[0-9a-fA-F]{1,2}$")

#: platform.machine() -> DPS architecture suffix
_HOST_ARCH = {
    "x86_64": "x86-64", "amd64": "x86-64", "i386": "x86", "i486": "x86", "i586": "x86",
    "i686": "x86", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm", "armv6l": "arm",
    "riscv64": "riscv64", "ppc64le": "ppc64-le", "ppc64": "ppc64", "s390x": "s390x",
    "loongarch64": "loongarch64", "ia64": "ia64", "alpha": "alpha",
}


def host_root_type() -> str:
    """The DPS root partition type for the machine conv runs on."""
    arch = _HOST_ARCH.get(platform.machine().lower())
    return f"root-{arch}" if arch else "linux"


def default_type(content, table: str) -> str:
    """A partition type that fits the content (its ``fs_type``, or for a
    readable volume the filesystem its magic shows): a root partition for this
    machine when it holds a filesystem."""
    fs_type = getattr(content, "fs_type", None)
    if fs_type is None and content is not None and hasattr(content, "pread") and content.size:
        from convcore.plugins import registry
        found = registry().detect(content.pread(64 << 10, 0))
        if found is not None and found.layer == "filesystem":
            fs_type = found.name
    if fs_type in ("vfat", "fat", "fat32", "fat16", "fat12"):
        return "esp" if table == "gpt" else "fat32"
    if fs_type == "swap":
        return "swap"
    if fs_type:
        return host_root_type() if table == "gpt" else "linux"
    return "linux"


def _known(names) -> str:
    return ", ".join(sorted(names))


def gpt_type(text: str) -> uuid.UUID:
    """A type name or GUID -> the type GUID."""
    key = text.strip().lower()
    key = GPT_ALIASES.get(key, key)
    key = _GPT_BY_DESCRIPTION.get(key, key)
    if key in _GPT_BY_NAME:
        return _GPT_BY_NAME[key]
    if _GUID_RE.match(key):
        guid = uuid.UUID(key)
        if guid.int == 0:
            raise UsageError("partition type 00000000-... marks an unused entry")
        return guid
    raise UsageError(f"unknown partition type {text!r} (use a GUID or a name: "
                     f"{', '.join(_COMMON_GPT)}, root-ARCH, usr-ARCH such as root-x86-64)")


def gpt_type_name(guid: uuid.UUID) -> str:
    """A type GUID -> its name, or the GUID itself when conv has no name for it."""
    found = _GPT_BY_GUID.get(guid)
    return found[0] if found else str(guid)


def gpt_type_description(guid: uuid.UUID) -> str:
    found = _GPT_BY_GUID.get(guid)
    return found[1] if found else "unknown"


def mbr_type(text: str) -> int:
    """A type name or hex byte (``83``, ``0x83``) -> the type byte. DPS Linux
    names (``root-x86-64``, ``home``, ...) map to Linux (83) so one spec can
    switch tables."""
    key = text.strip().lower()
    key = MBR_ALIASES.get(key, key)
    if key in _MBR_BY_NAME:
        return _MBR_BY_NAME[key]
    if _MBR_HEX_RE.match(key):
        byte = int(key, 16)
        if byte == 0:
            raise UsageError("partition type 00 marks an unused entry")
        return byte
    dps = GPT_ALIASES.get(key, key)
    if dps in _GPT_BY_NAME and (dps.startswith(("root-", "usr-"))
                                or dps in ("home", "srv", "var", "tmp", "user-home")):
        return 0x83
    raise UsageError(f"unknown partition type {text!r} (use a hex byte such as 83 "
                     f"or one of: {_known(_MBR_BY_NAME)})")


def mbr_type_name(byte: int) -> str:
    found = _MBR_BY_BYTE.get(byte)
    return found[0] if found else f"{byte:02x}"


def gpt_attributes(names) -> int:
    """Attribute names (or ``bit:N`` / a bit number) -> the 64-bit field."""
    value = 0
    for raw in names:
        key = str(raw).strip().lower()
        if not key:
            continue
        key = _ATTRIBUTE_ALIASES.get(key, key)
        if key in GPT_ATTRIBUTES:
            bit = GPT_ATTRIBUTES[key]
        else:
            digits = key.removeprefix("bit:").removeprefix("guid:")
            if not digits.isdigit() or not 0 <= int(digits) < 64:
                raise UsageError(f"unknown partition attribute {raw!r} (use bit:N or one "
                                 f"of: {_known(GPT_ATTRIBUTES)})")
            bit = int(digits)
        value |= 1 << bit
    return value


def gpt_attribute_names(value: int) -> list[str]:
    """The 64-bit attribute field -> names (``bit:N`` for unnamed bits)."""
    return [_BIT_NAMES.get(bit, f"bit:{bit}") for bit in range(64) if value >> bit & 1]
