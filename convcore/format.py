"""What a plugin registers: a Format with its directions and options.

Kinds: ``"tree"`` (a convcore.tree.Tree), ``"volume"`` (a readable
convcore.blockdev.Volume, or a Plan when writing), ``"file"`` (a host path).

A format implements any of four directions; the planner picks one per stage
from the kind flowing in and the stage's position in the chain:

=========  ============================  ======================================
direction  signature                     example
=========  ============================  ======================================
source     (path, opts, ctx) -> kind     dir, tar, oci -> tree; raw, qcow2 -> volume
decode     (Volume, opts, ctx) -> kind   ext4/squashfs -> tree; gpt picks a partition
encode     (input, opts, ctx) -> Plan    ext4/squashfs: tree -> Plan; gpt: Plan -> Plan
sink       (input, path, opts, ctx)      tar, dir, oci: tree; raw, qcow2: Plan/Volume
=========  ============================  ======================================

``opts`` is a dict of every declared option, parsed, defaults filled in.
A sink writes to ``path``, which does not exist yet: the pipeline gives it a
temporary name beside the real target and renames it only on success.

A tree encoder may also start before its source has finished: with
``prepare_encode`` it hands a source that ``feeds`` (dir) a FileFeed to
announce regular files on as it finds them (see convcore.feed).
"""

from __future__ import annotations

import errno
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

from convcore.errors import UsageError

if TYPE_CHECKING:
    import uuid

TREE = "tree"
VOLUME = "volume"
FILE = "file"

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTPE]?)(i?B?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40,
               "P": 1 << 50, "E": 1 << 60}


def parse_size(text: str) -> int:
    """``"512"``, ``"64K"``, ``"2G"``, ``"1.5GiB"`` -> bytes (binary units)."""
    m = _SIZE_RE.match(str(text))
    if not m:
        raise ValueError(f"not a size: {text!r} (use e.g. 512, 64K, 2G)")
    value = float(m.group(1)) * _SIZE_UNITS[m.group(2).upper()]
    if value != int(value):
        raise ValueError(f"not a whole number of bytes: {text!r}")
    return int(value)


def parse_bool(text: str) -> bool:
    t = str(text).strip().lower()
    if t in ("1", "yes", "true", "on", ""):
        return True
    if t in ("0", "no", "false", "off"):
        return False
    raise ValueError(f"not yes/no: {text!r}")


@dataclass
class Option:
    """One ``name=value`` a stage accepts.

    ``parse`` turns the string into a value and raises ValueError with a
    readable message for bad input; ``choices`` restricts the string form.
    """

    name: str
    default: Any = None
    help: str = ""
    parse: Callable[[str], Any] = str
    choices: Sequence[str] | None = None

    def convert(self, text: str) -> Any:
        if self.choices is not None and text not in self.choices:
            raise ValueError(f"{text!r} is not one of {', '.join(self.choices)}")
        return self.parse(text)


@dataclass
class PartitionRequest:
    """One partition a partitioner lays out (``conv build`` or a chain).

    ``size`` is bytes, ``None`` (just big enough for ``content``) or
    ``"rest"`` (fill the disk). ``type`` is a name (``"esp"``,
    ``"root-x86-64"``) or a GUID / MBR type byte as text; ``None`` picks one
    from ``content.fs_type``.
    """

    content: Any  # a Plan or a readable Volume, or None for an empty partition
    name: str = ""
    type: str | None = None
    size: int | str | None = None
    attributes: Sequence[str] = ()
    uuid: str | None = None
    bootable: bool = False


@dataclass
class PartitionInfo:
    """A partition found by a table reader (``conv info``, ``[part=N]``)."""

    number: int
    start: int
    size: int
    type_name: str
    type_id: str  # GUID for GPT, hex type byte for MBR
    uuid: str = ""
    name: str = ""
    attributes: Sequence[str] = ()


@dataclass
class Format:
    """A format plugin's registration. See the module docstring."""

    name: str
    help: str
    options: list[Option] = field(default_factory=list)
    source: Callable[..., Any] | None = None
    source_kind: str = TREE
    decode: Callable[..., Any] | None = None
    decode_kind: str = TREE
    encode: Callable[..., Any] | None = None
    encode_kind: str = TREE  # the kind it consumes; it always produces a Plan
    sink: Callable[..., None] | None = None
    sink_kind: str = TREE
    #: for partition tables: lay out several partitions into one disk Plan.
    layout: Callable[[list[PartitionRequest], dict, Context], Any] | None = None
    #: for partition tables: list what a volume holds.
    partitions: Callable[[Any], list[PartitionInfo]] | None = None
    #: for sources: announces regular files on ``Context.file_feed`` as it
    #: finds them (see convcore.feed).
    feeds: bool = False
    #: for tree encoders: called with the stage's options before a feeding
    #: source runs right before this stage; returns a FileFeed for the
    #: source to fill, which encode takes back (convcore.feed.take), or None.
    prepare_encode: Callable[[dict, Context], Any] | None = None
    #: where it sits when ``image:`` peels a file: container, table, filesystem.
    layer: str | None = None
    #: the distribution that registered it (filled in by the plugin manager).
    distribution: str = ""

    def option(self, name: str) -> Option:
        for opt in self.options:
            if opt.name == name:
                return opt
        names = ", ".join(o.name for o in self.options) or "none"
        raise UsageError(f"{self.name}: unknown option {name!r} (options: {names})")

    def parse_options(self, raw: dict[str, str]) -> dict[str, Any]:
        values = {o.name: o.default for o in self.options}
        for key, text in raw.items():
            opt = self.option(key)
            try:
                values[key] = opt.convert(text)
            except ValueError as e:
                raise UsageError(f"{self.name}[{key}=...]: {e}") from None
        return values

    @property
    def directions(self) -> list[str]:
        return [d for d in ("source", "decode", "encode", "sink") if getattr(self, d)]

    def describe_directions(self) -> list[str]:
        """What each direction takes and gives, in words (``conv formats``,
        kind-mismatch errors)."""
        out = []
        if self.source:
            out.append(f"reads file -> {self.source_kind}")
        if self.decode:
            out.append(f"reads volume -> {self.decode_kind}")
        if self.encode:
            out.append(f"writes {self.encode_kind} -> volume")
        if self.sink:
            out.append(f"writes {self.sink_kind} -> file ({self.name}:PATH)")
        return out


class Context:
    """What every stage may use: reproducibility, progress, options of the run.

    No stage reads the clock or ``os.urandom``: UUIDs, hash seeds and
    timestamps come from here, so the same input and options give the same
    bytes.
    """

    def __init__(self, seed: str | None = None, epoch: int | None = None,
                 quiet: bool = False, debug: bool = False) -> None:
        env_epoch = os.environ.get("SOURCE_DATE_EPOCH")
        if epoch is None and env_epoch is not None:
            try:
                epoch = int(env_epoch)
            except ValueError:
                raise UsageError(f"SOURCE_DATE_EPOCH is not an integer: {env_epoch!r}") from None
        #: seconds; clamps tree times, and is the time written into filesystem
        #: headers (0 when unset, never the clock).
        self.epoch = epoch
        #: True when the user chose the seed (--seed); otherwise a chain may
        #: mix what it reads into it (``derive_seed``).
        self.seed_given = seed is not None
        self._seed = seed if seed is not None else (str(epoch) if epoch is not None else "conv")
        #: inputs for ``derive_seed`` not computed yet (``derive_seed_later``)
        self._seed_inputs: Callable[[], Sequence[str]] | None = None
        self.quiet = quiet
        self.debug = debug
        #: where this run's temporary files go (a squashfs image being built,
        #: decompressed OCI layer data): the output's directory, set by the
        #: pipeline before any stage runs, so they cost space on the output's
        #: filesystem rather than RAM when TMPDIR is a tmpfs, and a finished
        #: image can be linked into place there. None: TMPDIR.
        self.scratch_dir: str | None = None
        #: True when the process ends with this run (the ``conv`` command):
        #: a stage may then trade process-wide hygiene for speed, e.g. keep a
        #: large tree out of garbage collection (``gc.freeze``), which in a
        #: long-lived library caller would also pin the caller's objects.
        self.one_shot = False
        #: the FileFeed of the stage after a feeding source, from the moment
        #: the source runs until that stage's encoder takes it (convcore.feed)
        self.file_feed: Any = None

    def derive_seed(self, *inputs: str) -> None:
        """Without --seed, make the seed depend on what is being built (the
        chain's sources and options, not the output name), so two different
        disks built the same day do not share filesystem and partition
        UUIDs, while the same command still gives the same bytes."""
        if not self.seed_given:
            self._seed = _sha256("\0".join((self.seed, *inputs)).encode()).hexdigest()

    def derive_seed_later(self, inputs: Callable[[], Sequence[str]]) -> None:
        """``derive_seed(*inputs())`` when the seed is first used: a chain
        whose stages never ask for UUIDs or salts (squashfs, tar) skips
        fingerprinting its input (50 ms for 100k files). ``inputs`` must
        give then what it would give now."""
        if not self.seed_given:
            self._derive_pending()  # an earlier deferred derivation comes first
            self._seed_inputs = inputs

    def _derive_pending(self) -> None:
        inputs, self._seed_inputs = self._seed_inputs, None
        if inputs is not None:
            self.derive_seed(*inputs())

    @property
    def seed(self) -> str:
        self._derive_pending()
        return self._seed

    @property
    def timestamp(self) -> int:
        """Seconds to stamp into headers (mkfs time, ...)."""
        return self.epoch or 0

    def uuid(self, *names: str) -> uuid.UUID:
        """A stable random-looking UUID (version 4 bits) for ``names``."""
        from uuid import UUID
        digest = _sha256("\0".join((self.seed, *names)).encode()).digest()
        return UUID(bytes=digest[:16], version=4)

    def random_bytes(self, n: int, *names: str) -> bytes:
        """``n`` stable pseudo-random bytes for ``names`` (hash seeds, salts)."""
        out = b""
        counter = 0
        while len(out) < n:
            out += _sha256("\0".join((self.seed, *names, str(counter))).encode()).digest()
            counter += 1
        return out[:n]

    def scratch_file(self, prefix: str = "conv-") -> BinaryIO:
        """An open, nameless binary file for this run's temporary data, in
        ``scratch_dir`` (else TMPDIR). Nothing is ever left behind: see
        ``scratch_file``."""
        return scratch_file(self.scratch_dir, prefix)

    def progress(self, total: int | None, desc: str, unit: str = "B"):
        """A progress bar (tqdm) on stderr, or a no-op when quiet / not a TTY.
        Use as a context manager; call ``.update(n)``."""
        from convcore.progress import bar
        return bar(total, desc, unit, disabled=self.quiet or not sys.stderr.isatty())


def scratch_file(directory: str | None, prefix: str = "conv-") -> BinaryIO:
    """An open binary file with no name, in ``directory`` (None: TMPDIR).

    O_TMPFILE where the filesystem has it: created with mode 0o644 less the
    umask, as the raw sink creates its outputs, and without O_EXCL, so a
    finished image can be linked into place as the output
    (``os.link("/proc/self/fd/N", name)``). Else a named temporary file,
    unlinked at once. A directory that takes neither (read-only, no
    permission, gone) gives way to TMPDIR.
    """
    if directory is not None:
        try:
            return _nameless_file(directory, prefix)
        except OSError:
            pass
    return _nameless_file(None, prefix)


def _nameless_file(directory: str | None, prefix: str) -> BinaryIO:
    # tempfile (with shutil, random, bz2 and lzma: ~3 ms) only where needed:
    # a squashfs output's scratch file is O_TMPFILE beside it
    o_tmpfile = getattr(os, "O_TMPFILE", 0)
    if o_tmpfile:
        if directory is None:
            import tempfile
            directory = tempfile.gettempdir()
        try:
            fd = os.open(directory,
                         os.O_RDWR | os.O_CLOEXEC | o_tmpfile, 0o644)
        except OSError as e:
            # A filesystem without O_TMPFILE says EOPNOTSUPP (EISDIR from
            # kernels that predate the flag).
            if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
        else:
            return open(fd, "w+b")
    import tempfile
    return tempfile.TemporaryFile(prefix=prefix, dir=directory)


def _sha256(data: bytes):
    """hashlib.sha256 without importing hashlib (its OpenSSL binding costs a
    few ms of every command's start): the builtin module gives the same
    digests."""
    try:
        from _sha256 import sha256  # CPython <= 3.11
    except ImportError:
        try:
            from _sha2 import sha256  # CPython 3.12+
        except ImportError:
            from hashlib import sha256
    return sha256(data)
