"""Chains: parse ``'a -> b[opt=v] -> c:path'``, type-check, plan, then write.

A chain reads from its first stage and writes with its last. In between, the
chain first *decodes* (a qcow2 file into a disk volume, a GPT disk into one
partition, an ext4 volume into a tree), then *encodes* (a tree into an ext4
plan, that plan into a GPT disk plan). Decoders only read; encoders only plan.
Nothing is written until every stage has been resolved and planned, and then
only the sink writes: to a temporary name beside the target, renamed on
success and removed on failure.
"""

from __future__ import annotations

import contextlib
import os
import re
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

from convcore.blockdev import FileVolume, Volume
from convcore.errors import ConvError, CorruptError, NotFoundError, UnsupportedError, UsageError
from convcore.format import FILE, TREE, VOLUME, Context, Format
from convcore.plugins import Registry, registry
from convcore.tree import Tree

HEAD_SIZE = 64 * 1024
ARROW = "->"

_STAGE_RE = re.compile(r"^(?P<name>[A-Za-z0-9_.+-]+)(?:\[(?P<opts>[^\]]*)\])?(?::(?P<path>.*))?$",
                       re.DOTALL)


@dataclass
class Stage:
    """One parsed stage: ``name[options]:path``."""

    name: str
    options: dict[str, str] = field(default_factory=dict)
    path: str | None = None
    index: int = 0
    text: str = ""

    @property
    def label(self) -> str:
        return f"stage {self.index + 1} ({self.text!r})"


def parse_options(text: str, where: str) -> dict[str, str]:
    """``a=1,b=x`` -> dict. A piece without ``=`` continues the previous
    value, so ``exclude=*.o,*.pyc`` keeps its comma."""
    out: dict[str, str] = {}
    last: str | None = None
    for piece in text.split(","):
        if "=" in piece:
            key, _, value = piece.partition("=")
            key = key.strip()
            if not key:
                raise UsageError(f"{where}: empty option name in [{text}]")
            out[key] = value.strip()
            last = key
        elif piece.strip():
            if last is None:
                # A bare word is a yes/no flag: ``squashfs[all_root]``.
                out[piece.strip()] = "yes"
                continue
            out[last] += "," + piece.strip()
    return out


def parse_chain(args: str | Sequence[str]) -> list[Stage]:
    """Parse a chain given as one string or as shell words.

    Accepts ``'a -> b -> c'``, ``a '->' b '->' c`` and ``a --to b --to c``
    (an unquoted ``->`` is a shell redirection).
    """
    words = [args] if isinstance(args, str) else list(args)
    text = " ".join("->" if w == "--to" else w for w in words)
    parts = [p.strip() for p in text.split(ARROW)]
    if not parts or any(not p for p in parts):
        raise UsageError(f"bad chain {text!r}: write stages as 'SOURCE -> STAGE -> SINK'")
    stages = []
    for i, part in enumerate(parts):
        m = _STAGE_RE.match(part)
        if not m:
            raise UsageError(
                f"stage {i + 1} ({part!r}): expected NAME, NAME:PATH or NAME[opt=value,...]:PATH")
        where = f"stage {i + 1} ({part!r})"
        opts = parse_options(m.group("opts") or "", where)
        path = m.group("path")
        if path is not None:
            path = path.strip()
            if not path:
                raise UsageError(f"{where}: empty path after ':'")
        stages.append(Stage(m.group("name"), opts, path, i, part))
    return stages


# --------------------------------------------------------------------------
# Resolution helpers


def _kind_of(value: Any) -> str:
    return TREE if isinstance(value, Tree) else VOLUME


def _head(volume: Volume) -> bytes:
    return volume.pread(min(HEAD_SIZE, volume.size), 0)


def detect_layer(reg: Registry, volume: Volume) -> Format | None:
    """The table or filesystem format found at the start of a volume."""
    if volume.size == 0:
        return None
    fmt = reg.detect(_head(volume))
    if fmt is None or fmt.decode is None:
        return None
    return fmt


def open_container(reg: Registry, path: str, ctx: Context) -> tuple[Volume, Format]:
    """Open a file as a volume: a detected container (qcow2) or raw."""
    if os.path.isdir(path):
        raise UsageError(f"{path}: is a directory, not an image (use dir:{path} or oci:{path})")
    probe = FileVolume(path)
    try:
        fmt = reg.detect(_head(probe))
    finally:
        probe.close()
    if fmt is None or fmt.layer != "container" or fmt.source is None:
        fmt = reg.get("raw")
    return fmt.source(path, fmt.parse_options({}), ctx), fmt


def _mismatch(stage: Stage, fmt: Format, kind: str) -> UsageError:
    accepts = [d for d in fmt.describe_directions() if not d.startswith("reads file")]
    hint = ""
    if kind == VOLUME and fmt.encode_kind == TREE:
        hint = "; to read a filesystem first, insert it (e.g. '-> ext4 ->')"
    elif kind == TREE and (fmt.encode_kind == VOLUME or fmt.sink_kind == VOLUME):
        hint = "; to make a volume from a tree, insert a filesystem (e.g. '-> ext4 ->')"
    does = "; ".join(accepts) or "no directions"
    return UsageError(f"{stage.label}: {fmt.name} cannot take a {kind} here ({does}){hint}")


@dataclass
class Step:
    """A resolved stage: the format, its direction, its parsed options."""

    stage: Stage
    fmt: Format
    direction: str
    options: dict[str, Any]


class Chain:
    """A parsed chain bound to the registry; ``run`` executes it."""

    def __init__(self, stages: list[Stage], reg: Registry | None = None,
                 need_sink: bool = True) -> None:
        self.reg = reg or registry()
        self.stages = stages
        self.need_sink = need_sink
        self._precheck()

    def _format(self, stage: Stage) -> Format:
        try:
            return self.reg.get(stage.name)
        except UsageError as e:
            raise UsageError(f"{stage.label}: {e}") from None

    def _options(self, stage: Stage, fmt: Format) -> dict[str, Any]:
        try:
            return fmt.parse_options(stage.options)
        except UsageError as e:
            raise UsageError(f"{stage.label}: {e}") from None

    def _precheck(self) -> None:
        """Everything that can be checked without reading the input."""
        first, last = self.stages[0], self.stages[-1]
        if first.path is None:
            raise UsageError(f"{first.label}: the first stage needs a path, e.g. "
                             f"{first.name}:./input")
        if self.need_sink:
            if len(self.stages) < 2:
                raise UsageError("a chain needs a source and a sink: 'SOURCE -> ... -> SINK:PATH'")
            if last.path is None:
                raise UsageError(f"{last.label}: the last stage needs an output path, e.g. "
                                 f"{last.name}:out (or add '-> raw:out.img')")
        for stage in self.stages[1:-1] if self.need_sink else self.stages[1:]:
            if stage.path is not None:
                raise UsageError(f"{stage.label}: only the first and last stages take a path")
        for stage in self.stages:
            if stage.name == "image" and stage.index == 0:
                continue
            if stage.name == "image":
                raise UsageError(f"{stage.label}: image: only opens an input (first stage)")
            fmt = self._format(stage)
            self._options(stage, fmt)
        if self.need_sink:
            out = os.path.abspath(last.path)  # type: ignore[arg-type]
            if out == os.path.abspath(first.path):
                raise UsageError(f"{last.label}: the output would overwrite the input")

    def identity(self) -> list[str]:
        """The chain's stages and options without paths (paths differ between
        build machines; the content they hold is fingerprinted instead), and
        without an output container, so ``-> raw`` and ``-> qcow2`` hold the
        same filesystem bytes."""
        stages = self.stages
        if self.need_sink and stages[-1].name in self.reg.formats and \
                self.reg.formats[stages[-1].name].layer == "container":
            stages = stages[:-1]
        return [f"{s.name}[{','.join(f'{k}={v}' for k, v in sorted(s.options.items()))}]"
                for s in stages]

    # -- execution
    def open_source(self, ctx: Context) -> tuple[Any, int]:
        """Run the first stage (and, for ``image:``, peel what it detects).
        Returns the value and the index of the next stage to apply."""
        first = self.stages[0]
        path = first.path or ""
        if first.name == "image":
            nxt = self.stages[1] if len(self.stages) > 1 else None
            with blame(path):
                value, _ = open_container(self.reg, path, ctx)
                value = self._peel(value, nxt, ctx)
            if isinstance(value, Volume) and nxt is not None and not self._takes_volume(nxt):
                raise CorruptError(f"{path}: no partition table or filesystem that conv reads "
                                   f"was found in its {value.size} bytes")
            return value, 1
        fmt = self._format(first)
        opts = self._options(first, fmt)
        if fmt.source is not None:
            if not os.path.lexists(path):
                raise NotFoundError(f"{path}: no such file or directory")
            if fmt.feeds:
                ctx.file_feed = self._prepare_feed(ctx)
            with blame(path):
                return fmt.source(path, opts, ctx), 1
        if fmt.decode is not None:
            with blame(path):
                volume, _ = open_container(self.reg, path, ctx)
                return fmt.decode(volume, opts, ctx), 1
        raise UsageError(f"{first.label}: {fmt.name} cannot read an input")

    def _prepare_feed(self, ctx: Context) -> Any:
        """The FileFeed of the stage after the source, when it encodes the
        tree and wants one (convcore.feed)."""
        if len(self.stages) < 2:
            return None
        stage = self.stages[1]
        fmt = self._format(stage)
        if fmt.prepare_encode is None or fmt.encode is None or fmt.encode_kind != TREE:
            return None
        if (self.need_sink and len(self.stages) == 2 and fmt.sink is not None
                and fmt.sink_kind == TREE):
            return None  # 'dir:a -> tar:b': a tree sink, not the encoder
        return fmt.prepare_encode(self._options(stage, fmt), ctx)

    def _takes_volume(self, stage: Stage) -> bool:
        fmt = self._format(stage)
        return bool(fmt.decode or (fmt.encode and fmt.encode_kind == VOLUME)
                    or (fmt.sink and fmt.sink_kind == VOLUME))

    def _peel(self, value: Any, nxt: Stage | None, ctx: Context) -> Any:
        """``image:``: decode the tables and filesystems it detects until the
        next stage takes over: a volume sink (raw, qcow2) keeps the volume, a
        stage that decodes the detected layer itself gets it as is."""
        last = nxt is not None and nxt.index == len(self.stages) - 1
        nfmt = self._format(nxt) if nxt is not None else None
        for _ in range(8):  # container > table > filesystem, with headroom
            if not isinstance(value, Volume):
                return value
            if (nfmt is not None and last and nxt.path is not None  # type: ignore[union-attr]
                    and nfmt.sink is not None and nfmt.sink_kind == VOLUME):
                return value
            detected = detect_layer(self.reg, value)
            if detected is None:
                return value
            if nfmt is not None and nfmt.decode is not None and (
                    detected.name == nfmt.name or detected.layer != "table"):
                return value
            value = detected.decode(value, detected.parse_options({}), ctx)  # type: ignore[misc]
        return value

    def run(self, ctx: Context) -> Any:
        """Execute the chain; returns the final value (a Tree or Volume when
        the chain has no sink)."""
        if self.need_sink:
            ctx.scratch_dir = scratch_dir_for(self.stages[-1].path or "")
        try:
            return self._run(ctx)
        finally:
            feed, ctx.file_feed = ctx.file_feed, None
            if feed is not None:  # not taken: the run failed before its encoder
                feed.close()

    def _run(self, ctx: Context) -> Any:
        value, start = self.open_source(ctx)
        if isinstance(value, Tree) and ctx.epoch is not None:
            # The seed covers the times as read, before they are clamped.
            if not ctx.seed_given:
                ctx.derive_seed(*self.identity(), fingerprint(value))
            value.clamp_times(ctx.epoch * 1_000_000_000)
        else:
            # Nothing changes the source's value in place from here on.
            identity = self.identity()
            ctx.derive_seed_later(lambda source=value: (*identity, fingerprint(source)))
        encoding = False
        end = len(self.stages) - 1 if self.need_sink else len(self.stages)
        for stage in self.stages[start:end]:
            fmt = self._format(stage)
            opts = self._options(stage, fmt)
            kind = _kind_of(value)
            decode = (not encoding and kind == VOLUME and fmt.decode is not None)
            if decode and fmt.encode is not None and fmt.encode_kind == VOLUME:
                # Both directions take a volume (gpt): decode a disk that holds
                # this table, or when asked for a partition; else wrap it.
                picked = "part" in stage.options
                detected = detect_layer(self.reg, value)
                decode = picked or (detected is not None and detected.name == fmt.name)
            if decode:
                with blame(self.stages[0].path or ""):
                    value = fmt.decode(value, opts, ctx)  # type: ignore[misc]
                if isinstance(value, Tree) and ctx.epoch is not None:
                    value.clamp_times(ctx.epoch * 1_000_000_000)
            elif fmt.encode is not None and fmt.encode_kind == kind:
                value = fmt.encode(value, opts, ctx)
                encoding = True
            else:
                raise _mismatch(stage, fmt, kind)
        if not self.need_sink:
            return value
        return self._sink(value, ctx)

    def _sink(self, value: Any, ctx: Context) -> None:
        stage = self.stages[-1]
        fmt = self._format(stage)
        opts = self._options(stage, fmt)
        kind = _kind_of(value)
        if fmt.sink is not None and fmt.sink_kind == kind:
            sink, sink_opts = fmt.sink, opts
        elif fmt.encode is not None and fmt.encode_kind == kind:
            # 'dir:x -> ext4:out.img': encode, then write the volume raw.
            value = fmt.encode(value, opts, ctx)
            raw = self.reg.get("raw")
            sink, sink_opts = raw.sink, raw.parse_options({})
        else:
            raise _mismatch(stage, fmt, kind)
        assert sink is not None and stage.path is not None
        write_atomically(stage.path, lambda tmp: sink(value, tmp, sink_opts, ctx))


@contextlib.contextmanager
def blame(path: str) -> Iterator[None]:
    """Name the input in a reader's error when the reader did not (a
    filesystem reader knows offsets and inodes, not the file it was given)."""
    try:
        yield
    except (CorruptError, UnsupportedError) as e:
        if not path or path in str(e):
            raise
        raise type(e)(f"{path}: {e}") from None


def fingerprint(value: Any) -> str:
    """A cheap digest of what a chain reads (tree metadata, or a volume's size
    and first bytes), so the default seed differs between different inputs."""
    from convcore.format import _sha256
    h = _sha256(b"")
    if isinstance(value, Tree):
        _tree_digest(h, value)
    elif isinstance(value, Volume):
        h.update(str(value.size).encode())
        h.update(_head(value))
    return h.hexdigest()


#: the fields of an entry the digest covers, each read for a whole directory
#: at once: integers packed into an array, strings joined
_INT_FIELDS = tuple(map(attrgetter, ("kind._value_", "mode", "size", "mtime_ns")))
_STR_FIELDS = tuple(map(attrgetter, ("path", "target")))
_LINK = attrgetter("link")


def _tree_digest(h: Any, tree: Tree) -> None:
    """Feed ``h`` the path, kind, mode, size, mtime, symlink target and
    hardlink target of every entry: each directory's children in the tree's
    order, directories in path order (not in the order a source happened to
    fill them in, which a split scan does not fix). C-level per entry (one
    attrgetter over a directory's children at a time): about 0.4 us an
    entry where a repr of a tuple per entry cost 1.2 us."""
    children = tree._children
    update = h.update
    for path in sorted(children):
        kids = list(children[path].values())
        if not path:
            kids.insert(0, tree.root)
        update(b"\0%d\0" % len(kids))
        for get in _STR_FIELDS:
            update("\0".join(map(get, kids)).encode("utf-8", "surrogateescape"))
        try:
            for get in _INT_FIELDS:
                update(array("q", map(get, kids)))
        except (OverflowError, TypeError):  # beyond 64 bits: an odd archive's time
            update(repr([tuple(get(e) for get in _INT_FIELDS) for e in kids]).encode())
        links = list(map(_LINK, kids))
        if links.count(None) != len(links):
            update(repr(links).encode("utf-8", "surrogateescape"))


def scratch_dir_for(output: str) -> str | None:
    """Where a run writing ``output`` keeps its temporary files: beside the
    output, on its filesystem (``Context.scratch_dir``); None (TMPDIR)
    when that directory does not exist, which write_atomically reports."""
    parent = os.path.dirname(os.path.abspath(output))
    return parent if os.path.isdir(parent) else None


def write_atomically(path: str, write) -> None:
    """Call ``write(tmp)`` with a fresh temporary name beside ``path``; rename
    it to ``path`` on success, remove it on any failure."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    name = os.path.basename(path)
    if not os.path.isdir(parent):
        raise UsageError(f"{path}: the output directory {parent} does not exist")
    if os.path.isdir(path) and not os.path.islink(path) and os.listdir(path):
        raise UsageError(f"{path}: exists and is a non-empty directory")
    # os.urandom, not tempfile: importing tempfile (and random) costs ~5 ms of
    # every command's start-up.
    token = os.urandom(4).hex()
    tmp = os.path.join(parent, f".conv-tmp-{token}-{name}")
    try:
        write(tmp)
        if os.path.isdir(path) and not os.path.islink(path):
            os.rmdir(path)  # an empty directory gets replaced
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: str) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            import shutil  # only on failure: ~4 ms of start-up otherwise
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.unlink(path)
    except OSError:
        pass


def convert(chain: str | Sequence[str], ctx: Context | None = None) -> None:
    """``conv convert``: run a chain that ends in a sink."""
    Chain(parse_chain(chain)).run(ctx or Context())


def open_tree(spec: str | Sequence[str], ctx: Context | None = None) -> Tree:
    """A tree from a chain without a sink, or from a bare path (a directory,
    or an image whose filesystem is detected)."""
    ctx = ctx or Context()
    stages = _source_stages(spec)
    value = Chain(stages, need_sink=False).run(ctx)
    if isinstance(value, Volume):
        fmt = detect_layer(registry(), value)
        if fmt is not None:
            value = fmt.decode(value, fmt.parse_options({}), ctx)  # type: ignore[misc]
    if not isinstance(value, Tree):
        raise UsageError(f"{spec if isinstance(spec, str) else ' '.join(spec)}: "
                         "no filesystem conv can read was found")
    return value


def _source_stages(spec: str | Sequence[str]) -> list[Stage]:
    text = (spec if isinstance(spec, str) else " ".join(spec)).strip()
    if ARROW not in text:
        m = _STAGE_RE.match(text)
        known = m is not None and m.group("path") is not None and (
            m.group("name") == "image" or m.group("name") in registry().formats)
        if not known:
            name = "image"
            if os.path.isdir(text):
                name = "oci" if os.path.exists(os.path.join(text, "oci-layout")) else "dir"
            return [Stage(name, {}, text, 0, f"{name}:{text}")]
    return parse_chain(text)


__all__ = ["Chain", "ConvError", "FILE", "Stage", "convert", "open_tree", "parse_chain",
           "write_atomically"]
