"""Journal replay: images whose journal needs recovery read as e2fsck leaves
them after replaying it.

Every image starts as mke2fs -d made it ("before"). debugfs changes a copy
("after"); the blocks that differ go into the journal of "before" as
transactions (debugfs journal_open / journal_write / journal_close), which
sets needs_recovery. The judge is e2fsck -fy on a copy: after its replay,
conv and debugfs must see exactly what conv sees on the unrecovered image.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import struct
import subprocess

import pytest
from conv_ext4.journal_replay import crc32_be
from conv_ext4.reader import Ext4, decode

from convcore.blockdev import FileVolume
from convcore.errors import CorruptError, UnsupportedError
from convcore.testing import damage_rounds, flip_byte, require_tool, run, scan_dir, scan_tree

JBD2_MAGIC = b"\xc0\x3b\x39\x98"
BLOCK = 4096

#: name -> (mke2fs arguments, debugfs journal_open arguments)
VARIANTS = {
    "ext4-csum-v3": (["-t", "ext4", "-b", "4096"], "-c"),
    "ext4-csum-v2-1k": (["-t", "ext4", "-b", "1024"], "-c -v 2"),
    "ext4-nocsum": (["-t", "ext4", "-b", "4096", "-O", "^metadata_csum"], ""),
    "ext4-32bit-v1": (["-t", "ext4", "-b", "2048", "-O", "^metadata_csum,^64bit"], "-c"),
    "ext3": (["-t", "ext3", "-b", "1024"], ""),
}


def _closing(volume):
    from contextlib import closing
    return closing(volume)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("jsrc") / "tree"
    rng = random.Random("journal-replay")
    os.makedirs(root / "etc")
    os.makedirs(root / "var" / "lib")
    (root / "etc" / "hostname").write_text("before\n")
    (root / "data.bin").write_bytes(rng.randbytes(3 * BLOCK + 100))
    # A block that starts with the jbd2 magic is escaped in the journal.
    (root / "magic.bin").write_bytes(JBD2_MAGIC + rng.randbytes(2 * BLOCK))
    for i in range(20):
        (root / "var" / "lib" / f"f{i:02d}").write_text(f"file {i}\n" * (i + 1))
    os.symlink("etc/hostname", root / "link")
    return str(root)


def _mkfs(source: str, image: str, args: list[str], size: str = "16M") -> str:
    require_tool("mke2fs", "debugfs", "e2fsck")
    run("mke2fs", "-q", "-F", *args, "-d", source, image, size)
    return image


def _block_size(image: str) -> int:
    with _closing(FileVolume(image)) as volume:
        return Ext4(volume).block_size


def _debugfs(image: str, cmd: str) -> str:
    return run("debugfs", "-R", cmd, image).stdout


def _blocks(image: str, path: str) -> list[int]:
    return [int(b) for b in _debugfs(image, f"blocks {path}").split()]


def _modify(before: str, after: str, commands: list[str], tmp_path) -> None:
    shutil.copyfile(before, after)
    script = tmp_path / "modify.cmds"
    script.write_text("\n".join(commands) + "\n")
    out = run("debugfs", "-w", "-f", str(script), after)
    assert "rror" not in out.stdout + out.stderr, out.stdout + out.stderr


def _poke_block(image: str, block: int, data: bytes) -> None:
    bs = _block_size(image)
    with open(image, "r+b") as f:
        f.seek(block * bs)
        f.write(data.ljust(bs, b"\0"))


def _changed(before: str, after: str) -> dict[int, bytes]:
    """Blocks of ``after`` that differ from ``before``."""
    bs = _block_size(before)
    out = {}
    with open(before, "rb") as a, open(after, "rb") as b:
        block = 0
        while True:
            x, y = a.read(bs), b.read(bs)
            if not x:
                return out
            if x != y:
                out[block] = y
            block += 1


class Txn:
    """One transaction for debugfs journal_write."""

    def __init__(self, blocks: dict[int, bytes] | None = None, revoke: list[int] = (),
                 commit: bool = True) -> None:
        self.blocks = blocks or {}
        self.revoke = list(revoke)
        self.commit = commit


def _journal(image: str, txns: list[Txn], open_args: str, tmp_path) -> str:
    """Write ``txns`` into the journal of ``image`` (debugfs sets
    needs_recovery); returns debugfs logdump -a."""
    lines = [f"jo {open_args}".strip()]
    for i, txn in enumerate(txns):
        words = ["jw"]
        if txn.blocks:
            words += ["-b", ",".join(str(b) for b in txn.blocks)]
        if txn.revoke:
            words += ["-r", ",".join(str(b) for b in txn.revoke)]
        if not txn.commit:
            words.append("-c")
        if txn.blocks:
            data = tmp_path / f"txn{i}.bin"
            data.write_bytes(b"".join(txn.blocks.values()))
            words.append(str(data))
        lines.append(" ".join(words))
    lines.append("jc")
    script = tmp_path / "journal.cmds"
    script.write_text("\n".join(lines) + "\n")
    out = run("debugfs", "-w", "-f", str(script), image)
    assert "rror" not in out.stdout + out.stderr, out.stdout + out.stderr
    assert "needs_recovery" in run("dumpe2fs", "-h", image).stdout
    return _debugfs(image, "logdump -a")


def _sha(image: str) -> str:
    with open(image, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _conv_view(image: str, **opts) -> dict:
    with _closing(FileVolume(image)) as volume:
        return scan_tree(decode(volume, opts, None))


def _e2fsck_view(image: str, tmp_path) -> tuple[dict, dict, str]:
    """e2fsck -fy on a copy (the judge replays the journal), then conv's
    view of the result and what debugfs rdump extracts from it."""
    fixed = str(tmp_path / "fixed.img")
    shutil.copyfile(image, fixed)
    fsck = run("e2fsck", "-fy", fixed, check=False)
    assert fsck.returncode in (0, 1), fsck.stdout + fsck.stderr
    assert "needs_recovery" not in run("dumpe2fs", "-h", fixed).stdout
    out = tmp_path / "rdump"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    run("debugfs", "-R", f"rdump / {out}", fixed)
    return _conv_view(fixed), scan_dir(str(out)), fsck.stdout


def _projection(scan: dict) -> dict:
    """What debugfs rdump keeps whoever runs it: names, types, modes, sizes,
    contents, symlink targets."""
    keep = ("type", "mode", "size", "sha256", "target")
    return {p: {k: v for k, v in rec.items() if k in keep}
            for p, rec in scan.items() if p and p != "lost+found"}


def _assert_judged(image: str, tmp_path, expected: dict) -> str:
    """conv's view of the unrecovered ``image`` equals ``expected`` (the
    "after" image's view), equals conv's and debugfs's view after e2fsck
    replayed it, and reading never wrote the image. Returns e2fsck's output."""
    digest = _sha(image)
    view = _conv_view(image)
    assert _sha(image) == digest
    fixed_view, rdump_view, fsck_out = _e2fsck_view(image, tmp_path)
    assert "recovering journal" in fsck_out
    assert view == expected
    assert fixed_view == view
    assert _projection(rdump_view) == _projection(view)
    return fsck_out


@pytest.fixture(params=sorted(VARIANTS))
def variant(request, source, tmp_path_factory):
    name = request.param
    mkfs_args, open_args = VARIANTS[name]
    base = tmp_path_factory.mktemp(name)
    return _mkfs(source, str(base / "before.img"), mkfs_args), open_args, name


def test_metadata_and_data_replayed(variant, tmp_path):
    """A new file, a new directory, a changed inode and a changed data block:
    inode table, bitmaps, group descriptors, the superblock, directory and
    data blocks all come from the journal."""
    before, open_args, _name = variant
    image, after = str(tmp_path / "img"), str(tmp_path / "after")
    hostfile = tmp_path / "new.txt"
    hostfile.write_bytes(b"new file from the journal\n" * 300)
    _modify(before, after, [
        f"write {hostfile} new.txt", "mkdir var/newdir",
        "sif etc/hostname mode 0100600", "sif etc/hostname uid 4321",
        "symlink var/newdir/ln ../../data.bin", "ssv volume_name replayed",
    ], tmp_path)
    data_block = _blocks(after, "data.bin")[1]
    bs = _block_size(before)
    _poke_block(after, data_block, b"rewritten" * (bs // 9))
    changed = _changed(before, after)
    sb_block = 1 if bs == 1024 else 0
    assert {data_block, sb_block, sb_block + 1} <= set(changed)  # and the descriptors
    shutil.copyfile(before, image)
    _journal(image, [Txn(changed)], open_args, tmp_path)
    expected = _conv_view(after)
    assert _conv_view(image, recover=False) == _conv_view(before)
    _assert_judged(image, tmp_path, expected)
    assert expected["new.txt"]["size"] == 26 * 300
    assert expected["etc/hostname"]["uid"] == 4321
    with _closing(FileVolume(image)) as volume:
        info = decode(volume, {}, None).info
    assert info["label"] == "replayed" and "needs_recovery" not in info["features"]
    assert info["journal_replayed"] == 1


def test_several_transactions_the_last_uncommitted(variant, tmp_path):
    before, open_args, _name = variant
    image, mid, after = (str(tmp_path / n) for n in ("img", "mid", "after"))
    _modify(before, mid, ["sif etc/hostname mode 0100640"], tmp_path)
    _modify(mid, after, ["sif var/lib/f03 mode 0100604"], tmp_path)
    first, second = _changed(before, mid), _changed(mid, after)
    third = {_blocks(before, "data.bin")[0]: b"uncommitted".ljust(_block_size(before), b"!")}
    shutil.copyfile(before, image)
    log = _journal(image, [Txn(first), Txn(second), Txn(third, commit=False)], open_args,
                   tmp_path)
    assert "sequence 3, type 1" in log
    _assert_judged(image, tmp_path, _conv_view(after))


def test_revoked_block_is_not_replayed(variant, tmp_path):
    """A block revoked by a later transaction keeps its on-disk contents; one
    logged again after the revoke is replayed."""
    before, open_args, name = variant
    image, after = str(tmp_path / "img"), str(tmp_path / "after")
    bs = _block_size(before)
    blocks = _blocks(before, "data.bin")
    _modify(before, after, ["sif etc/hostname mode 0100611"], tmp_path)
    inode_txn = _changed(before, after)
    shutil.copyfile(before, image)
    # debugfs journal_write misplaces the next transaction after one with
    # both blocks and revokes (it underestimates its length): keep them apart.
    log = _journal(image, [
        Txn({blocks[0]: b"A" * bs, blocks[1]: b"B" * bs}),
        Txn(revoke=[blocks[0], blocks[1]]),
        Txn({**inode_txn, blocks[1]: b"C" * bs}),
    ], open_args, tmp_path)
    assert "sequence 3, type 2 (commit block)" in log
    assert f"Revoke FS block {blocks[0]}" in log
    if name.endswith("-v1"):
        # debugfs counts the revoke block into a v1 (crc32_be) commit
        # checksum, the kernel and e2fsck do not: transaction 2 is corrupt
        # for them, and only transaction 1 is replayed.
        shutil.copyfile(before, after)
        _poke_block(after, blocks[0], b"A" * bs)
        _poke_block(after, blocks[1], b"B" * bs)
        out = _assert_judged(image, tmp_path, _conv_view(after))
        assert "Journal transaction 2 was corrupt" in out
        return
    _poke_block(after, blocks[1], b"C" * bs)  # what replay gives: only the relogged block
    _assert_judged(image, tmp_path, _conv_view(after))


def test_escaped_block(variant, tmp_path):
    """A block starting with the jbd2 magic is logged escaped (its magic
    zeroed, JBD2_FLAG_ESCAPE); replay puts the magic back, through the
    block reads and through conv convert's copy path."""
    before, open_args, _name = variant
    image, after = str(tmp_path / "img"), str(tmp_path / "after")
    bs = _block_size(before)
    block = _blocks(before, "magic.bin")[0]
    new = (JBD2_MAGIC + b"escaped" * (bs // 7))[:bs]
    shutil.copyfile(before, after)
    _poke_block(after, block, new)
    shutil.copyfile(before, image)
    log = _journal(image, [Txn({block: new})], open_args, tmp_path)
    assert re.search(rf"FS block {block} logged at journal block \d+ \(flags 0x9\)", log)
    _assert_judged(image, tmp_path, _conv_view(after))
    out = tmp_path / "out"
    run("conv", "convert", f"raw:{image} -> ext4 -> dir:{out}")
    assert (out / "magic.bin").read_bytes()[:bs] == new
    copied = _projection(scan_dir(str(out)))
    assert copied == _projection(_conv_view(after))


def test_cli_recover_no_warns_once_and_shows_the_disk(source, tmp_path):
    before = _mkfs(source, str(tmp_path / "before.img"), ["-t", "ext4"])
    image, after = str(tmp_path / "img"), str(tmp_path / "after")
    block = _blocks(before, "etc/hostname")[0]
    shutil.copyfile(before, after)
    _poke_block(after, block, b"AFTER!\n")
    shutil.copyfile(before, image)
    _journal(image, [Txn(_changed(before, after))], "-c", tmp_path)
    plain = subprocess.run(["conv", "cat", image, "/etc/hostname"], capture_output=True,
                           text=True)
    assert (plain.returncode, plain.stdout, plain.stderr) == (0, "AFTER!\n", "")
    raw = subprocess.run(["conv", "cat", f"raw:{image} -> ext4[recover=no]", "/etc/hostname"],
                         capture_output=True, text=True)
    assert (raw.returncode, raw.stdout) == (0, "before\n")
    assert raw.stderr == ("conv: warning: the ext4 journal needs recovery; recover=no shows "
                          "the image without replaying it (what the kernel shows after "
                          "mounting may differ)\n")
    info = run("conv", "info", image).stdout
    assert "journal_replayed=1" in info and "needs_recovery" not in info


def _journal_block_offset(image: str, jblock: int) -> int:
    return int(_debugfs(image, f"bmap <8> {jblock}").strip()) * _block_size(image)


def _csum_image(source: str, tmp_path) -> tuple[str, str, str]:
    before = _mkfs(source, str(tmp_path / "before.img"), ["-t", "ext4", "-b", "4096"])
    return before, str(tmp_path / "img"), str(tmp_path / "after")


def test_corrupt_data_block_is_skipped_with_a_warning(source, tmp_path, capfd):
    """A logged block failing its checksum (csum v3): like e2fsck, replay
    everything else and keep that block as it is on disk; one warning."""
    before, image, after = _csum_image(source, tmp_path)
    bs = _block_size(before)
    data = _blocks(before, "data.bin")[0]
    _modify(before, after, ["sif etc/hostname mode 0100600"], tmp_path)
    txn = _changed(before, after)
    txn[data] = b"D" * bs
    shutil.copyfile(before, image)
    log = _journal(image, [Txn(txn)], "-c", tmp_path)
    jblock = int(re.search(rf"FS block {data} logged at journal block (\d+)", log).group(1))
    flip_byte(image, _journal_block_offset(image, jblock) + 100)
    capfd.readouterr()
    fsck_out = _assert_judged(image, tmp_path, _conv_view(after))
    assert "checksum" in fsck_out.lower()
    err = capfd.readouterr().err
    assert err == (f"conv: warning: journal block {jblock} (filesystem block {data}, "
                   "transaction 1) fails its checksum; not replayed, as e2fsck does\n")


def _two_transactions_one_damaged(source: str, tmp_path, block_re: str,
                                  byte: int) -> tuple[str, str, str, int]:
    """Transaction 1 changes an inode, 2 a data block (csum v3); the journal
    block that ``block_re`` finds in logdump gets one byte flipped.
    Returns before, the image, the state after transaction 1, that block."""
    before, image, after = _csum_image(source, tmp_path)
    _modify(before, after, ["sif etc/hostname mode 0100600"], tmp_path)
    first = _changed(before, after)
    second = {_blocks(before, "data.bin")[0]: b"E" * _block_size(before)}
    shutil.copyfile(before, image)
    log = _journal(image, [Txn(first), Txn(second)], "-c", tmp_path)
    jblock = int(re.search(block_re, log).group(1))
    flip_byte(image, _journal_block_offset(image, jblock) + byte)
    return before, image, after, jblock


@pytest.mark.parametrize("block_re,byte,shows,fsck_says,warning", [
    (r"sequence 2, type 2 \(commit block\) at block (\d+)", 200, "after",
     "Journal transaction 2 was corrupt",
     "journal block {}: transaction 2 fails its commit checksum; replayed the transactions "
     "before it, as e2fsck does"),
    (r"sequence 1, type 1 \(descriptor block\) at block (\d+)", 300, "before",
     "Journal checksum error",
     "journal block {}: transaction 1 fails its checksum; the journal is not replayed, as "
     "e2fsck does"),
], ids=["commit-ends-the-log", "descriptor-means-no-replay"])
def test_damaged_transaction_as_e2fsck(source, tmp_path, capfd, block_re, byte, shows,
                                       fsck_says, warning):
    """The second transaction's commit block fails its checksum: the first
    is replayed. The first one's descriptor block fails its checksum inside
    the log: recovery.c fails its scan and e2fsck replays nothing. conv
    shows the same and says so once."""
    before, image, after, jblock = _two_transactions_one_damaged(source, tmp_path, block_re,
                                                                 byte)
    capfd.readouterr()
    fsck_out = _assert_judged(image, tmp_path, _conv_view({"after": after,
                                                           "before": before}[shows]))
    assert fsck_says in fsck_out
    assert capfd.readouterr().err == f"conv: warning: {warning.format(jblock)}\n"


def _nocsum_journal(source: str, tmp_path) -> tuple[str, int, str]:
    """An image with one committed transaction in a journal without
    checksums; returns the image, the journal's byte offset and logdump."""
    before = _mkfs(source, str(tmp_path / "before.img"), ["-t", "ext4", "-O", "^metadata_csum"])
    image = str(tmp_path / "img")
    shutil.copyfile(before, image)
    block = _blocks(before, "data.bin")[0]
    log = _journal(image, [Txn({block: b"x" * _block_size(image)})], "", tmp_path)
    return image, _journal_block_offset(image, 0), log


def _decode_all(image: str) -> None:
    with _closing(FileVolume(image)) as volume:
        tree = decode(volume, {}, None)
        for entry in tree:
            if entry.data is not None and entry.link is None:
                entry.data.read(0, 1 << 16)


def test_structural_damage_is_one_line(source, tmp_path):
    image, jsb, log = _nocsum_journal(source, tmp_path)
    bs = _block_size(image)
    pristine = open(image, "rb").read()

    def damaged(offset: int, data: bytes) -> None:
        with open(image, "wb") as f:
            f.write(pristine)
            f.seek(offset)
            f.write(data)

    damaged(jsb, b"\0\0\0\0")
    with pytest.raises(CorruptError, match=r"^journal superblock \(inode 8\): no jbd2 magic$"):
        _decode_all(image)
    damaged(jsb + 28, struct.pack(">I", 5000))  # s_start
    with pytest.raises(CorruptError, match=r"log start 5000 lies outside the log"):
        _decode_all(image)
    damaged(jsb + 16, struct.pack(">I", 1 << 20))  # s_maxlen
    with pytest.raises(CorruptError, match=r"1048576 blocks, but journal inode 8 holds"):
        _decode_all(image)
    desc = int(re.search(r"type 1 \(descriptor block\) at block (\d+)", log).group(1))
    damaged(jsb + desc * bs + 12, struct.pack(">I", 0xFFFFFF))  # the tag's block number
    with pytest.raises(CorruptError, match=rf"^journal block {desc}: transaction 1 writes "
                       r"block 16777215, beyond the \d+-block filesystem$"):
        _decode_all(image)
    # Every log block a revoke block of transaction 1 and no commit: the log
    # would run around forever.
    revoke = struct.pack(">IIII", 0xC03B3998, 5, 1, 16).ljust(bs, b"\0")
    maxlen = struct.unpack_from(">I", pristine, jsb + 16)[0]
    damaged(jsb + bs, revoke * (maxlen - 1))
    with pytest.raises(CorruptError, match=r"^journal block \d+: the log runs around the "
                       "whole journal without ending$"):
        _decode_all(image)


def test_random_journal_damage_is_a_clean_error(source, tmp_path):
    """Flipped bytes in the live journal blocks: a tree or a ConvError, one
    line, never a traceback or a hang."""
    image, jsb, log = _nocsum_journal(source, tmp_path)
    bs = _block_size(image)
    pristine = open(image, "rb").read()
    # The superblock, descriptor and commit blocks (not the logged data).
    blocks = [0, *(int(b) for b in re.findall(r"\(\w+ block\) at block (\d+)", log))]
    live = [jsb + b * bs + i for b in blocks for i in range(bs) if pristine[jsb + b * bs + i]]
    outcomes = damage_rounds(image, live, _decode_all, rounds=60, max_flips=6,
                             seed="journal-damage")
    assert outcomes["error"] > 0


def test_crc32_be_matches_the_bitwise_definition():
    def slow(crc: int, data: bytes) -> int:
        for byte in data:
            crc ^= byte << 24
            for _ in range(8):
                crc = (crc << 1 ^ 0x04C11DB7 if crc & 0x80000000 else crc << 1) & 0xFFFFFFFF
        return crc

    data = random.Random(1).randbytes(300)
    assert crc32_be(0xFFFFFFFF, data) == slow(0xFFFFFFFF, data)
    assert crc32_be(0x12345678, data[:7]) == slow(0x12345678, data[:7])



# -- bitmap checksums (metadata_csum)

@pytest.mark.parametrize("which", ["block", "inode"])
@pytest.mark.parametrize("args", [["-b", "4096"], ["-b", "1024", "-O", "^64bit"]],
                         ids=["64bit", "32bit-desc"])
def test_bitmap_checksum_mismatch_names_the_group(source, tmp_path, which, args):
    """A flipped bit in a bitmap: e2fsck -fn objects, conv says which group
    and which bitmap (16-bit checksums with 32-byte descriptors)."""
    image = _mkfs(source, str(tmp_path / "img"), ["-t", "ext4", *args])
    _conv_view(image)  # clean: the checksums verify
    dump = run("dumpe2fs", image).stdout
    block = int(re.search(rf"{which.capitalize()} bitmap at (\d+)", dump).group(1))
    flip_byte(image, block * _block_size(image) + 1)  # inodes 9-16 or blocks 8-15: in use
    assert run("e2fsck", "-fn", image, check=False).returncode != 0
    with pytest.raises(CorruptError, match=rf"^group 0: {which} bitmap checksum mismatch$"):
        _conv_view(image)


def test_overlay_volume_reads_and_copies_like_the_replayed_image(tmp_path):
    """OverlayVolume against a model (the image with the blocks copied over):
    reads and copy_to_fd at random offsets and lengths, across runs of
    adjacent logged blocks, escaped blocks and untouched ones."""
    from conv_ext4.journal_replay import OverlayVolume

    bs = 1024
    rng = random.Random("overlay")
    base = bytearray(rng.randbytes(64 * bs))
    path = tmp_path / "base.img"
    path.write_bytes(base)
    # fs blocks 3-6 logged in a row at journal blocks 40-43, 8 escaped at 44,
    # 9 at 50 (not adjacent in the journal), 20 at 45, 63 (the last) at 46.
    blocks = {3: 40, 4: 41, 5: 42, 6: 43, 8: 44, 9: 50, 20: 45, 63: 46}
    escaped = {8}
    base[44 * bs:44 * bs + 4] = b"\0\0\0\0"
    path.write_bytes(base)
    model = bytearray(base)
    for fs_block, jblock in blocks.items():
        model[fs_block * bs:(fs_block + 1) * bs] = base[jblock * bs:(jblock + 1) * bs]
    model[8 * bs:8 * bs + 4] = JBD2_MAGIC
    with _closing(FileVolume(str(path))) as volume:
        overlay = OverlayVolume(volume, bs, {b: (j * bs, b in escaped)
                                             for b, j in blocks.items()})
        out = os.open(tmp_path / "copy", os.O_RDWR | os.O_CREAT)
        try:
            for _ in range(400):
                offset = rng.randrange(len(model))
                length = rng.randrange(0, 12 * bs)
                want = bytes(model[offset:offset + length])
                assert overlay.pread(length, offset) == want
                length = len(want)
                overlay.copy_to_fd(offset, length, out, 7)
                assert os.pread(out, length, 7) == want
        finally:
            os.close(out)
        assert overlay.read_exact(bs, 8 * bs)[:4] == JBD2_MAGIC
        assert sum(n for _, n in overlay.data_ranges()) == len(model)


def test_cli_inside_a_gpt_partition(source, tmp_path):
    """conv cat on a disk whose partition holds a filesystem needing
    recovery: the replay reads the journal through the partition window."""
    require_tool("sgdisk")
    before = _mkfs(source, str(tmp_path / "before.img"), ["-t", "ext4"], "8M")
    image, after = str(tmp_path / "img"), str(tmp_path / "after")
    block = _blocks(before, "etc/hostname")[0]
    shutil.copyfile(before, after)
    _poke_block(after, block, b"parted\n")  # the size stays 7
    shutil.copyfile(before, image)
    _journal(image, [Txn(_changed(before, after))], "-c", tmp_path)
    disk = str(tmp_path / "disk.img")
    with open(disk, "wb") as f:
        f.truncate(12 << 20)
    run("sgdisk", "-o", "-n", "1:2048:+8M", "-t", "1:8300", disk)
    with open(image, "rb") as src, open(disk, "r+b") as dst:
        dst.seek(2048 * 512)
        dst.write(src.read())
    assert run("conv", "cat", disk, "/etc/hostname").stdout == "parted\n"


def test_recover_no_skips_bitmap_checks_of_a_half_written_state(source, tmp_path, capfd):
    """The kernel writes descriptors and bitmaps back at different times: on
    disk, a descriptor may already carry the checksum of a bitmap that is
    still only in the journal. recover=no reads that state without calling
    the bitmap corrupt; the default replays and both agree again."""
    before, image, after = _csum_image(source, tmp_path)
    hostfile = tmp_path / "new.txt"
    hostfile.write_bytes(b"x" * 50000)
    _modify(before, after, [f"write {hostfile} new.txt"], tmp_path)
    changed = _changed(before, after)
    bitmap = int(re.search(r"Block bitmap at (\d+)", run("dumpe2fs", after).stdout).group(1))
    assert bitmap in changed and 1 in changed
    shutil.copyfile(before, image)
    _journal(image, [Txn(changed)], "-c", tmp_path)
    _poke_block(image, 1, changed[1])  # the descriptors went to disk, the bitmap did not
    assert _conv_view(image, recover=False) == _conv_view(before)
    assert "needs recovery" in capfd.readouterr().err
    _assert_judged(image, tmp_path, _conv_view(after))


def test_async_commit_follows_recovery_c(source, tmp_path, capfd):
    """With async_commit a commit failing its checksum does not stop the
    scan: recovery.c ends the log at the last failing commit, so with
    transactions 1 and 2 failing and 3 fine, transaction 1 is replayed
    (e2fsck does so too)."""
    from conv_ext4.csum import crc32c_raw

    before, image, mid = _csum_image(source, tmp_path)
    _modify(before, mid, ["sif etc/hostname mode 0100600"], tmp_path)
    bs = _block_size(before)
    data = _blocks(before, "data.bin")
    shutil.copyfile(before, image)
    log = _journal(image, [Txn(_changed(before, mid)), Txn({data[0]: b"2" * bs}),
                           Txn({data[1]: b"3" * bs})], "-c", tmp_path)
    jsb = _journal_block_offset(image, 0)
    with open(image, "r+b") as f:
        f.seek(jsb)
        sb = bytearray(f.read(1024))
        incompat = struct.unpack_from(">I", sb, 40)[0] | 0x4  # JBD2 ASYNC_COMMIT
        struct.pack_into(">I", sb, 40, incompat)
        struct.pack_into(">I", sb, 0xFC, 0)
        struct.pack_into(">I", sb, 0xFC, crc32c_raw(0xFFFFFFFF, bytes(sb)))
        f.seek(jsb)
        f.write(sb)
    for seq in (1, 2):
        commit = int(re.search(rf"sequence {seq}, type 2 \(commit block\) at block (\d+)",
                               log).group(1))
        flip_byte(image, _journal_block_offset(image, commit) + 200)
    capfd.readouterr()
    _assert_judged(image, tmp_path, _conv_view(mid))
    assert capfd.readouterr().err.count("fails its commit checksum") == 2


# -- journals the kernel wrote

def _try_loop_mount(image: str, where: str, opts: str) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    r = subprocess.run(["mount", "-o", f"loop,{opts}" if opts else "loop", image, where],
                       capture_output=True, timeout=60)
    return r.returncode == 0


@pytest.mark.parametrize("args,opts", [(["-t", "ext4"], ""),
                                       (["-t", "ext4", "-b", "1024"], "data=journal"),
                                       (["-t", "ext3"], "")],
                         ids=["ext4", "ext4-1k-data-journal", "ext3"])
def test_kernel_journal(source, tmp_path, args, opts):
    """The image of a mounted filesystem, copied right after an fsync (the
    journal is committed, its blocks not yet written back): conv shows what
    e2fsck's replay gives and the names the kernel showed at that moment.
    Needs root and loop devices; skipped otherwise."""
    image = _mkfs(source, str(tmp_path / "k.img"), args, "32M")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if not _try_loop_mount(image, str(mnt), opts):
        pytest.skip("cannot loop-mount (needs root and loop devices)")
    snaps = []
    try:
        rng = random.Random("kernel-journal")
        os.sync()
        for r in range(3):
            shutil.copytree(source, mnt / f"copy{r}", symlinks=True)
            for victim in sorted((mnt / "var" / "lib").iterdir())[r::3]:
                victim.unlink()
            (mnt / "etc" / "hostname").write_text(f"round {r}\n")
            fd = os.open(mnt / f"copy{r}" / "rand", os.O_WRONLY | os.O_CREAT)
            os.write(fd, rng.randbytes(70000))
            os.fsync(fd)
            os.close(fd)
            names = {os.path.relpath(os.path.join(d, n), mnt)
                     for d, dirs, files in os.walk(mnt) for n in dirs + files}
            snap = str(tmp_path / f"snap{r}.img")
            shutil.copyfile(image, snap)
            snaps.append((snap, names))
    finally:
        subprocess.run(["umount", str(mnt)], check=True, timeout=60)
    rng = random.Random("kernel-journal")
    mattered = 0
    for r, (snap, names) in enumerate(snaps):
        assert "needs_recovery" in run("dumpe2fs", "-h", snap).stdout
        view = _conv_view(snap)
        try:  # the disk alone is older, or not even consistent
            mattered += view != _conv_view(snap, recover=False)
        except CorruptError:
            mattered += 1
        fixed_view, _rdump, fsck_out = _e2fsck_view(snap, tmp_path)
        assert "recovering journal" in fsck_out
        assert fixed_view == view
        assert set(view) - {""} == names
        with _closing(FileVolume(snap)) as volume:
            tree = decode(volume, {}, None)
            assert tree.get(f"copy{r}/rand").data.read(0, 70000) == rng.randbytes(70000)
            assert tree.get("etc/hostname").data.read(0, 100) == f"round {r}\n".encode()
    # The kernel may have written some metadata back already, never all of it
    # this fast.
    assert mattered


def test_corruption_after_replay_says_so(source, tmp_path):
    """A journal without checksums that logs garbage over the root directory:
    the error names the block and says recover=no reads the disk as it is."""
    before = _mkfs(source, str(tmp_path / "before.img"), ["-t", "ext4", "-O", "^metadata_csum"])
    image = str(tmp_path / "img")
    shutil.copyfile(before, image)
    root = _blocks(before, "/")[0]
    _journal(image, [Txn({root: b"\xff" * _block_size(image)})], "", tmp_path)
    with pytest.raises(CorruptError, match=rf"^directory inode 2, block {root}: .*"
                       r" \(after replaying the journal; ext4\[recover=no\] reads the image as it "
                       r"is on disk\)$"):
        _conv_view(image)
    assert _conv_view(image, recover=False) == _conv_view(before)


def _set_fast_commit(image: str, fc_blocks: int) -> int:
    """Mark the journal as the kernel does when it mounts a fast_commit
    filesystem (debugfs does not); returns the first fast commit block."""
    from conv_ext4.csum import crc32c_raw

    jsb = _journal_block_offset(image, 0)
    with open(image, "r+b") as f:
        f.seek(jsb)
        sb = bytearray(f.read(1024))
        struct.pack_into(">I", sb, 40, struct.unpack_from(">I", sb, 40)[0] | 0x20)
        struct.pack_into(">I", sb, 0x54, fc_blocks)
        struct.pack_into(">I", sb, 0xFC, 0)
        struct.pack_into(">I", sb, 0xFC, crc32c_raw(0xFFFFFFFF, bytes(sb)))
        f.seek(jsb)
        f.write(sb)
        return struct.unpack_from(">I", sb, 16)[0] - fc_blocks + 1


def test_fast_commit_journal(source, tmp_path):
    """A journal with fast commits: replayed like any other when its fast
    commit area holds nothing for the next transaction (e2fsck judges);
    one line when it does, since conv does not replay fast commits."""
    before = _mkfs(source, str(tmp_path / "before.img"),
                   ["-t", "ext4", "-b", "4096", "-O", "fast_commit", "-J", "size=16"], "64M")
    image, after = str(tmp_path / "img"), str(tmp_path / "after")
    _modify(before, after, ["sif etc/hostname mode 0100600"], tmp_path)
    shutil.copyfile(before, image)
    _journal(image, [Txn(_changed(before, after))], "-c", tmp_path)
    fc_first = _set_fast_commit(image, 64)
    assert "fast_commit" in run("dumpe2fs", "-h", image).stdout
    _assert_judged(image, tmp_path, _conv_view(after))
    # A head tag (EXT4_FC_TAG_HEAD, 8 bytes: features 0, tid 2) for the
    # transaction after the log.
    with open(image, "r+b") as f:
        f.seek(_journal_block_offset(image, fc_first))
        f.write(struct.pack("<HHII", 9, 8, 0, 2))
    with pytest.raises(UnsupportedError, match=rf"^journal block {fc_first}: fast commits of "
                       r"transaction 2 need replaying, which conv does not do "
                       r"\(ext4\[recover=no\] reads"):
        _conv_view(image)


def test_kernel_fast_commits(source, tmp_path):
    """fast_commit mounted by the kernel: an fsync'd new file leaves fast
    commits (one line: conv does not replay them); after a sync, a full
    commit, the image reads as e2fsck's replay leaves it. Needs root and
    loop devices; skipped otherwise."""
    image = _mkfs(source, str(tmp_path / "k.img"), ["-t", "ext4", "-O", "fast_commit"], "64M")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if not _try_loop_mount(image, str(mnt), ""):
        pytest.skip("cannot loop-mount (needs root and loop devices)")
    fast, full = str(tmp_path / "fast.img"), str(tmp_path / "full.img")
    try:
        shutil.copytree(source, mnt / "copy", symlinks=True)
        os.sync()  # without a full commit first, the first fsync here was not a fast one
        fd = os.open(mnt / "fsynced", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"fast\n")
        os.fsync(fd)
        os.close(fd)
        shutil.copyfile(image, fast)
        (mnt / "var" / "lib" / "f00").unlink()
        os.sync()
        shutil.copyfile(image, full)
    finally:
        subprocess.run(["umount", str(mnt)], check=True, timeout=60)
    with pytest.raises(UnsupportedError, match=r"^journal block \d+: fast commits of "
                       r"transaction \d+ need replaying"):
        _conv_view(fast)
    view = _conv_view(full)
    fixed_view, _rdump, _out = _e2fsck_view(full, tmp_path)
    assert fixed_view == view and "fsynced" in view and "var/lib/f00" not in view


def test_needs_recovery_with_an_empty_journal_still_checks_bitmaps(tmp_path):
    """needs_recovery over an empty journal (s_start 0): nothing to replay,
    as e2fsck finds; the bitmaps of the journal inode's group are checked
    like any other."""
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    (tiny / "one").write_text("1\n")  # every inode in the journal inode's table block
    image = _mkfs(str(tiny), str(tmp_path / "img"), ["-t", "ext4", "-b", "4096"], "8M")
    run("debugfs", "-w", "-R", "feature needs_recovery", image)
    assert "needs_recovery" in run("dumpe2fs", "-h", image).stdout
    clean = _conv_view(image)
    block = int(re.search(r"Inode bitmap at (\d+)", run("dumpe2fs", image).stdout).group(1))
    flip_byte(image, block * _block_size(image) + 1)
    with pytest.raises(CorruptError, match=r"^group 0: inode bitmap checksum mismatch$"):
        _conv_view(image)
    assert clean


def test_external_journal_needing_recovery_is_one_line(tmp_path):
    """A filesystem whose journal is on another device cannot be replayed
    from this image alone: one line, and recover=no still reads it."""
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    (tiny / "one").write_text("1\n")
    image = _mkfs(str(tiny), str(tmp_path / "img"), ["-t", "ext4"], "8M")
    run("debugfs", "-w", "-R", "ssv journal_inum 0", image)
    run("debugfs", "-w", "-R", "feature needs_recovery", image)
    with pytest.raises(UnsupportedError, match=r"^the filesystem needs recovery from an "
                       r"external journal device, which conv does not read \(ext4\[recover=no\]"):
        _conv_view(image)
    assert "one" in _conv_view(image, recover=False)


def test_version_1_journal_superblock(source, tmp_path):
    """A v1 journal superblock (ext3 of the early 2000s: no feature words,
    8-byte tags) replays like a v2 one without features."""
    before = _mkfs(source, str(tmp_path / "before.img"), ["-t", "ext3", "-b", "1024"])
    image, after = str(tmp_path / "img"), str(tmp_path / "after")
    _modify(before, after, ["sif etc/hostname mode 0100600"], tmp_path)
    shutil.copyfile(before, image)
    _journal(image, [Txn(_changed(before, after))], "", tmp_path)
    jsb = _journal_block_offset(image, 0)
    with open(image, "r+b") as f:
        f.seek(jsb + 4)
        f.write(struct.pack(">I", 3))  # JBD2_SUPERBLOCK_V1
        f.seek(jsb + 36)
        f.write(bytes(12))  # no feature words in v1
    _assert_judged(image, tmp_path, _conv_view(after))
