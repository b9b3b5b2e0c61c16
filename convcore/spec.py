"""TOML disk specs for ``conv build``: several partitions in one disk.

::

    [disk]
    table = "gpt"              # or "mbr"
    size = "4G"                # optional; default just big enough
    sector_size = 512
    output = "disk.qcow2"      # relative to the spec's directory
    container = "qcow2"        # or "raw"; default by suffix
    [disk.container_options]
    compress = "zstd"

    [[partition]]
    name = "esp"
    type = "esp"
    size = "64M"
    content = { type = "raw", source = "esp.img" }

    [[partition]]
    name = "root"
    type = "root-x86-64"
    size = "rest"
    content = { type = "ext4", source = "dir:./rootfs", options = { label = "root" } }

A content's ``source`` is a chain source as ``conv convert`` takes it
(``dir:./rootfs``, ``oci:./layout``, ``tar:root.tar.zst``, or a bare path);
for ``type = "raw"`` it is an image whose bytes fill the partition.

``load`` checks everything it can before any input is read, and every error
names the spec file, the line and the key; ``build`` then writes the disk
through a temporary name beside the output, renamed on success.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from convcore.blockdev import Volume
from convcore.errors import ConvError, UsageError
from convcore.format import VOLUME, Context, PartitionRequest, parse_size

DISK_KEYS = ("table", "size", "sector_size", "align", "entries", "output", "container",
             "container_options")
PARTITION_KEYS = ("name", "type", "size", "content", "attributes", "uuid", "bootable")
CONTENT_KEYS = ("type", "source", "options")
RAW = "raw"
REST = "rest"


@dataclass
class ContentSpec:
    """What fills a partition: a filesystem built from a source, or raw bytes."""

    type: str
    source: str
    options: dict[str, str] = field(default_factory=dict)


@dataclass
class PartitionSpec:
    index: int  # 0-based position in the spec
    name: str = ""
    type: str | None = None
    size: int | str | None = None
    content: ContentSpec | None = None
    attributes: list[str] = field(default_factory=list)
    uuid: str | None = None
    bootable: bool = False


@dataclass
class DiskSpec:
    path: str  # the spec file
    base_dir: str  # relative paths in the spec start here
    table: str = "gpt"
    size: int | None = None
    sector_size: int = 512
    align: int | None = None
    entries: int | None = None
    output: str | None = None  # absolute
    container: str | None = None  # None: by the output's suffix
    container_options: dict[str, str] = field(default_factory=dict)
    partitions: list[PartitionSpec] = field(default_factory=list)

    def table_options(self) -> dict[str, str]:
        """The partition table format's options, as text."""
        raw: dict[str, str] = {}
        if self.size is not None:
            raw["size"] = str(self.size)
        if self.align is not None:
            raw["align"] = str(self.align)
        if self.table == "gpt":
            raw["sector_size"] = str(self.sector_size)
            if self.entries is not None:
                raw["entries"] = str(self.entries)
        return raw

    def container_for(self, output: str) -> str:
        if self.container:
            return self.container
        return "qcow2" if output.lower().endswith(".qcow2") else RAW


# --------------------------------------------------------------------------
# Line numbers: tomllib gives none, so find keys in the text.


_HEADER_RE = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(?:#.*)?$")


class _Locator:
    """Finds the line of a key path such as ("partition", 1, "content", "type")."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.headers: list[tuple[int, str, bool]] = []
        for i, line in enumerate(self.lines):
            m = _HEADER_RE.match(line)
            if m:
                self.headers.append((i, m.group(2).replace(" ", ""), m.group(1) == "[["))

    def _section(self, name: str, nth: int | None) -> tuple[int, int] | None:
        """Line range of table ``name`` (or the nth ``[[name]]``), subtables included."""
        count = -1
        for k, (line, header, array) in enumerate(self.headers):
            if header != name or (nth is not None and not array):
                continue
            count += 1
            if nth is not None and count != nth:
                continue
            end = len(self.lines)
            for line2, header2, _ in self.headers[k + 1:]:
                if not header2.startswith(name + "."):
                    end = line2
                    break
            return line, end
        return None

    def _find(self, key: str, lo: int, hi: int) -> tuple[int, bool] | None:
        """(line, is_header) of ``key`` in [lo, hi): a ``key =`` line first,
        then a subtable header ending in ``.key``, then an inline ``{ key =``."""
        k = re.escape(key)
        plain = re.compile(rf'^\s*"?{k}"?\s*=')
        header = re.compile(rf'^\s*\[\[?\s*[^\]]*\.{k}\s*\]')
        inline = re.compile(rf'[{{,]\s*"?{k}"?\s*=')
        for pattern, is_header in ((plain, False), (header, True), (inline, False)):
            for i in range(lo, hi):
                if pattern.search(self.lines[i]):
                    return i, is_header
        return None

    def line(self, *path: str | int) -> int:
        """1-based line of the deepest part of ``path`` found (at least 1)."""
        if not path:
            return 1
        head, rest = path[0], list(path[1:])
        nth = None
        if rest and isinstance(rest[0], int):
            nth = rest.pop(0)
        section = self._section(str(head), nth)
        if section is None:
            found = self._find(str(head), 0, len(self.lines))
            return found[0] + 1 if found else 1
        best, (lo, hi) = section[0], section
        for key in rest:
            found = self._find(str(key), lo, hi)
            if found is None:
                break
            best = found[0]
            if found[1]:
                # The subtable runs to the next header that is not inside it.
                name = next(h[1] for h in self.headers if h[0] == best)
                sub_end = next((h[0] for h in self.headers
                                if h[0] > best and not h[1].startswith(name + ".")),
                               len(self.lines))
                lo, hi = best + 1, min(hi, sub_end)
            else:
                lo, hi = best, best + 1  # an inline table: TOML 1.0 keeps it on one line
        return best + 1


class _Spec:
    """Errors that name the spec file, the line and the key."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.locator = _Locator(text)

    def error(self, message: str, *key: str | int) -> UsageError:
        line = self.locator.line(*key)
        return UsageError(f"{self.path}:{line}: {_dotted(key)}: {message}")


def _dotted(key: tuple) -> str:
    out = ""
    for part in key:
        if isinstance(part, int):
            out += f"[{part + 1}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "spec"


# --------------------------------------------------------------------------
# Loading and validating


def _text_value(value: Any) -> str:
    """A TOML value as the option text a stage parses."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float, str)):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, (str, int)) for v in value):
        return ",".join(str(v) for v in value)
    raise ValueError(f"expected a string, number or yes/no, got {type(value).__name__}")


def _options(spec: _Spec, raw: Any, *key: str | int) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise spec.error("expected a table of options", *key)
    out = {}
    for name, value in raw.items():
        try:
            out[str(name)] = _text_value(value)
        except ValueError as e:
            raise spec.error(str(e), *key, name) from None
    return out


def _check_options(spec: _Spec, fmt, options: dict[str, str], *key: str | int) -> None:
    """Parse a stage's options now; an error points at the option's own line."""
    for name, text in options.items():
        try:
            fmt.parse_options({name: text})
        except UsageError as e:
            raise spec.error(str(e), *key, name) from None


def _size(spec: _Spec, value: Any, *key: str | int, rest: bool = False) -> int | str:
    if rest and value == REST:
        return REST
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        also = ' or "rest"' if rest else ""
        raise spec.error(f'expected a size such as "64M"{also}', *key)
    try:
        size = parse_size(str(value))
    except ValueError as e:
        raise spec.error(str(e), *key) from None
    if size <= 0:
        raise spec.error("must be more than 0 bytes", *key)
    return size


def _string(spec: _Spec, value: Any, *key: str | int) -> str:
    if not isinstance(value, str):
        raise spec.error(f"expected a string, got {type(value).__name__}", *key)
    return value


def _check_keys(spec: _Spec, table: dict, allowed: tuple[str, ...], *key: str | int) -> None:
    for name in table:
        if name not in allowed:
            raise spec.error(f"unknown key (allowed: {', '.join(allowed)})", *key, name)


def load(spec_path: str) -> DiskSpec:
    """Read and validate a spec; nothing is built and no input is opened
    beyond checking that it exists."""
    try:
        with open(spec_path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        from convcore.errors import NotFoundError
        raise NotFoundError(f"{spec_path}: no such spec file") from None
    except IsADirectoryError:
        raise UsageError(f"{spec_path}: is a directory, not a TOML spec") from None
    text = data.decode("utf-8", "replace")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{spec_path}: not valid TOML: {e}") from None
    spec = _Spec(spec_path, text)
    base = os.path.dirname(os.path.abspath(spec_path))
    disk = DiskSpec(path=spec_path, base_dir=base)

    _check_keys(spec, doc, ("disk", "partition"))
    d = doc.get("disk", {})
    if not isinstance(d, dict):
        raise spec.error("expected a [disk] table", "disk")
    _check_keys(spec, d, DISK_KEYS, "disk")
    _load_disk(spec, d, disk)

    parts = doc.get("partition")
    if not parts:
        raise spec.error("a spec needs at least one [[partition]]", "disk")
    if not isinstance(parts, list) or not all(isinstance(p, dict) for p in parts):
        raise spec.error("write partitions as [[partition]] tables", "partition")
    for index, p in enumerate(parts):
        disk.partitions.append(_load_partition(spec, p, index, disk))
    _dry_layout(spec, disk)
    return disk


def _load_disk(spec: _Spec, d: dict, disk: DiskSpec) -> None:
    from convcore.plugins import registry
    reg = registry()
    if "table" in d:
        disk.table = _string(spec, d["table"], "disk", "table")
    try:
        table = reg.get(disk.table)
    except UsageError as e:
        raise spec.error(str(e), "disk", "table") from None
    if table.layout is None:
        raise spec.error(f"{disk.table} is not a partition table (use gpt or mbr)",
                         "disk", "table")
    if "size" in d:
        disk.size = int(_size(spec, d["size"], "disk", "size"))
    if "align" in d:
        disk.align = int(_size(spec, d["align"], "disk", "align"))
    if "sector_size" in d:
        sector = d["sector_size"]
        allowed = (512, 4096) if disk.table == "gpt" else (512,)
        if sector not in allowed or isinstance(sector, bool):
            raise spec.error(f"{sector!r} is not one of {', '.join(map(str, allowed))}",
                             "disk", "sector_size")
        disk.sector_size = sector
    if "entries" in d:
        if disk.table != "gpt":
            raise spec.error("only a gpt table has an entry count", "disk", "entries")
        if not isinstance(d["entries"], int) or isinstance(d["entries"], bool):
            raise spec.error("expected a number", "disk", "entries")
        disk.entries = d["entries"]
    if "output" in d:
        out = _string(spec, d["output"], "disk", "output")
        disk.output = os.path.join(disk.base_dir, os.path.expanduser(out))
    if "container" in d:
        disk.container = _string(spec, d["container"], "disk", "container")
        try:
            fmt = reg.get(disk.container)
        except UsageError as e:
            raise spec.error(str(e), "disk", "container") from None
        if fmt.sink is None or fmt.sink_kind != VOLUME:
            raise spec.error(f"{disk.container} cannot hold a disk (use raw or qcow2)",
                             "disk", "container")
    if "container_options" in d:
        disk.container_options = _options(spec, d["container_options"], "disk",
                                          "container_options")
    container = disk.container or (disk.container_for(disk.output) if disk.output else None)
    if container is not None:
        _check_options(spec, reg.get(container), disk.container_options, "disk",
                       "container_options")
    try:
        table.parse_options(disk.table_options())
    except UsageError as e:
        raise spec.error(str(e), "disk") from None


def _load_partition(spec: _Spec, p: dict, index: int, disk: DiskSpec) -> PartitionSpec:
    key = ("partition", index)
    _check_keys(spec, p, PARTITION_KEYS, *key)
    part = PartitionSpec(index=index)
    if "name" in p:
        part.name = _string(spec, p["name"], *key, "name")
    if "type" in p:
        part.type = _string(spec, p["type"], *key, "type")
    if "size" in p:
        part.size = _size(spec, p["size"], *key, "size", rest=True)
    if "uuid" in p:
        part.uuid = _string(spec, p["uuid"], *key, "uuid")
    if "bootable" in p:
        if not isinstance(p["bootable"], bool):
            raise spec.error("expected true or false", *key, "bootable")
        part.bootable = p["bootable"]
    if "attributes" in p:
        attrs = p["attributes"]
        if isinstance(attrs, str):
            attrs = [a for a in attrs.split(",") if a.strip()]
        if not isinstance(attrs, list) or not all(isinstance(a, (str, int)) for a in attrs):
            raise spec.error("expected a list of attribute names", *key, "attributes")
        part.attributes = [str(a).strip() for a in attrs]
    if "content" in p:
        part.content = _load_content(spec, p["content"], key, disk)
    if part.content is None and part.size is None:
        raise spec.error("a partition without content needs a size", *key)
    return part


def _load_content(spec: _Spec, c: Any, key: tuple, disk: DiskSpec) -> ContentSpec:
    from convcore.plugins import registry
    ckey = (*key, "content")
    if not isinstance(c, dict):
        raise spec.error('expected a table such as { type = "ext4", source = "dir:./root" }',
                         *ckey)
    _check_keys(spec, c, CONTENT_KEYS, *ckey)
    for required in ("type", "source"):
        if required not in c:
            raise spec.error(f"missing key {required!r}", *ckey)
    content = ContentSpec(type=_string(spec, c["type"], *ckey, "type"),
                          source=_string(spec, c["source"], *ckey, "source"))
    if "options" in c:
        content.options = _options(spec, c["options"], *ckey, "options")
    if content.type == RAW:
        if content.options:
            raise spec.error("raw content takes no options", *ckey, "options")
    else:
        try:
            fmt = registry().get(content.type)
        except UsageError as e:
            raise spec.error(str(e), *ckey, "type") from None
        if fmt.encode is None or fmt.encode_kind != "tree":
            raise spec.error(f"{content.type} does not build a filesystem from files "
                             "(use a filesystem such as ext4 or squashfs, or raw)",
                             *ckey, "type")
        _check_options(spec, fmt, content.options, *ckey, "options")
    try:
        stages = _source_stages(content.source, disk.base_dir, content.type == RAW)
        if stages is not None:
            from convcore.pipeline import Chain
            Chain(stages, need_sink=False)  # checks formats and options, reads nothing
            path = stages[0].path
        else:
            path = _absolute(content.source, disk.base_dir)
    except ConvError as e:
        raise spec.error(str(e), *ckey, "source") from None
    if path is not None and not os.path.lexists(path):
        prefix = re.match(r"^([A-Za-z0-9_.+-]+)(\[[^\]]*\])?:", content.source.strip())
        if prefix and prefix.group(1) not in registry().formats:
            try:  # 'nope:./tree' is more likely a typo of a format than a file name
                registry().get(prefix.group(1))
            except UsageError as e:
                raise spec.error(str(e), *ckey, "source") from None
        raise spec.error(f"{path}: no such file or directory", *ckey, "source")
    return content


def _absolute(path: str, base: str) -> str:
    return os.path.join(base, os.path.expanduser(path))


def _source_stages(source: str, base: str, raw: bool):
    """The chain stages of a content source, its first path made absolute;
    None for a bare image path of raw content (opened as a container)."""
    from convcore.pipeline import _STAGE_RE, ARROW, Stage, parse_chain
    from convcore.plugins import registry
    text = source.strip()
    if ARROW not in text:
        m = _STAGE_RE.match(text)
        known = m is not None and m.group("path") is not None and (
            m.group("name") == "image" or m.group("name") in registry().formats)
        if not known:
            path = _absolute(text, base)
            if raw:
                return None
            name = "image"
            if os.path.isdir(path):
                name = "oci" if os.path.exists(os.path.join(path, "oci-layout")) else "dir"
            return [Stage(name, {}, path, 0, f"{name}:{text}")]
    stages = parse_chain(text)
    if stages[0].path is not None:
        stages[0].path = _absolute(stages[0].path, base)
    return stages


class _Placeholder:
    """Stands in for content while checking a layout before anything is built."""

    size = 0
    fs_type = None


def _dry_layout(spec: _Spec, disk: DiskSpec) -> None:
    """Let the table format check types, names, attributes and sizes now,
    so a typo fails before a filesystem is built."""
    from convcore.plugins import registry
    table = registry().get(disk.table)
    requests = [PartitionRequest(content=_Placeholder() if p.content else None, name=p.name,
                                 type=p.type, size=p.size, attributes=p.attributes,
                                 uuid=p.uuid, bootable=p.bootable)
                for p in disk.partitions]
    try:
        table.layout(requests, table.parse_options(disk.table_options()), Context())  # type: ignore[misc]
    except ConvError as e:
        m = re.search(r"partition (\d+)", str(e))
        if m is None:
            raise spec.error(str(e), "disk") from None
        index = _partition_index(disk, int(m.group(1)))
        text = str(e)
        key = next((k for words, k in _ERROR_KEYS if any(w in text for w in words)), None)
        raise spec.error(text, "partition", index, *([key] if key else [])) from None


#: words in a table format's error -> the partition key it is about
_ERROR_KEYS = ((("partition type", "type "), "type"), (("attribute",), "attributes"),
               (("name is",), "name"), (("uuid",), "uuid"),
               (("content needs", "size", "2 TiB"), "size"))


def _partition_index(disk: DiskSpec, number: int) -> int:
    """A table's partition number -> its index in the spec (MBR numbers
    logical partitions from 5, after three primaries)."""
    count = len(disk.partitions)
    if disk.table == "mbr" and count > 4 and number > 4:
        index = number - 2
    else:
        index = number - 1
    return min(max(index, 0), count - 1)


# --------------------------------------------------------------------------
# Building


def build(spec_path: str, ctx: Context, output: str | None = None) -> None:
    """``conv build``: write the disk a spec describes. ``output`` (relative
    to the current directory) overrides the spec's output."""
    from convcore.pipeline import scratch_dir_for, write_atomically
    from convcore.plugins import registry
    disk = load(spec_path)
    with open(spec_path, "rb") as f:
        ctx.derive_seed(f.read().decode("utf-8", "replace"))
    out = os.path.abspath(output) if output else disk.output
    if not out:
        raise UsageError(f"{spec_path}: disk.output: no output path (add output = \"disk.img\" "
                         "to [disk] or pass --output)")
    ctx.scratch_dir = scratch_dir_for(out)
    reg = registry()
    container = reg.get(disk.container_for(out))
    if container.sink is None or container.sink_kind != VOLUME:
        raise UsageError(f"{spec_path}: {container.name} cannot hold a disk (use raw or qcow2)")
    container_opts = container.parse_options(disk.container_options)
    table = reg.get(disk.table)
    table_opts = table.parse_options(disk.table_options())

    opened: list[Volume] = []
    try:
        requests = []
        for part in disk.partitions:
            content = None
            if part.content is not None:
                content = _build_content(part, disk, ctx, out, opened)
            requests.append(PartitionRequest(
                content=content, name=part.name, type=part.type, size=part.size,
                attributes=part.attributes, uuid=part.uuid, bootable=part.bootable))
        plan = table.layout(requests, table_opts, ctx)  # type: ignore[misc]
        write_atomically(out, lambda tmp: container.sink(plan, tmp, container_opts, ctx))
    finally:
        for volume in opened:
            volume.close()


def _build_content(part: PartitionSpec, disk: DiskSpec, ctx: Context, out: str,
                   opened: list[Volume]):
    from convcore.pipeline import Chain, detect_layer, open_container
    from convcore.plugins import registry
    from convcore.tree import Tree
    content = part.content
    assert content is not None
    where = f"{disk.path}: partition {part.index + 1}" + (f" ({part.name})" if part.name else "")
    reg = registry()
    stages = _source_stages(content.source, disk.base_dir, content.type == RAW)
    source_path = stages[0].path if stages is not None else _absolute(content.source,
                                                                      disk.base_dir)
    if source_path and os.path.abspath(source_path) == out:
        raise UsageError(f"{where}: the output would overwrite the content's source")
    try:
        if stages is None:
            value: Any = open_container(reg, source_path, ctx)[0]
        else:
            value = Chain(stages, need_sink=False).run(ctx)
        if isinstance(value, Volume):
            opened.append(value)
        if content.type == RAW:
            if not isinstance(value, Volume):
                raise UsageError(f"raw content needs an image, but {content.source!r} gives "
                                 "files (use a filesystem type such as ext4)")
            return value
        for _ in range(4):  # an image: peel the table and find the filesystem
            if isinstance(value, Tree):
                break
            fmt = detect_layer(reg, value)
            if fmt is None:
                raise UsageError(f"no filesystem conv can read was found in {content.source!r}")
            value = fmt.decode(value, fmt.parse_options({}), ctx)  # type: ignore[misc]
        if not isinstance(value, Tree):
            raise UsageError(f"no files found in {content.source!r}")
        if ctx.epoch is not None:
            value.clamp_times(ctx.epoch * 1_000_000_000)
        fmt = reg.get(content.type)
        return fmt.encode(value, fmt.parse_options(content.options), ctx)  # type: ignore[misc]
    except ConvError as e:
        raise type(e)(f"{where}: {e}") from None
