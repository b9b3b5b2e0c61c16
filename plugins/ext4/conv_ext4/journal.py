"""An empty jbd2 journal: its size as mke2fs picks it and its superblock."""

from __future__ import annotations

from conv_ext4.csum import crc32c_raw
from conv_ext4.layout import (
    JBD2_CRC32C_CHKSUM,
    JBD2_FEATURE_INCOMPAT_CSUM_V3,
    JBD2_MAGIC,
    JBD2_SUPERBLOCK_V2,
    JOURNAL_SUPERBLOCK,
)


def default_journal_blocks(blocks_count: int) -> int:
    """ext2fs_default_journal_size(): journal blocks for a filesystem size
    (0: too small for a journal)."""
    if blocks_count < 2048:
        return 0
    for limit, size in ((32768, 1024), (256 * 1024, 4096), (512 * 1024, 8192),
                        (4096 * 1024, 16384), (8192 * 1024, 32768),
                        (16384 * 1024, 65536), (32768 * 1024, 131072)):
        if blocks_count < limit:
            return size
    return 262144


def superblock(block_size: int, blocks: int, uuid: bytes, csum: bool) -> bytes:
    """The journal's first block: an empty, clean v2 superblock."""
    sb = bytearray(JOURNAL_SUPERBLOCK.pack(
        h_magic=JBD2_MAGIC, h_blocktype=JBD2_SUPERBLOCK_V2,
        s_blocksize=block_size, s_maxlen=blocks, s_first=1, s_sequence=1,
        s_feature_incompat=JBD2_FEATURE_INCOMPAT_CSUM_V3 if csum else 0,
        s_uuid=uuid, s_nr_users=1,
        s_checksum_type=JBD2_CRC32C_CHKSUM if csum else 0,
    ))
    if csum:
        off = JOURNAL_SUPERBLOCK.offsets["s_checksum"]
        sb[off:off + 4] = crc32c_raw(0xFFFFFFFF, sb).to_bytes(4, "big")
    return bytes(sb)
