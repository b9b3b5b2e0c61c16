"""``conv info``: what an image holds, layer by layer, without writing."""

from __future__ import annotations

import os
from typing import Any

from convcore.blockdev import Volume
from convcore.errors import ConvError
from convcore.format import Context, Format
from convcore.pipeline import ARROW, Chain, _source_stages, detect_layer, open_container
from convcore.plugins import registry
from convcore.tree import Kind, Tree

_TAR_MAGICS = (b"\x1f\x8b", b"\x28\xb5\x2f\xfd", b"\xfd7zXZ\x00")


def _tree_summary(fmt_name: str, tree: Tree) -> dict[str, Any]:
    files = [e for e in tree if e.kind is Kind.FILE and e.link is None]
    return {"format": fmt_name, **tree.info, "entries": len(tree),
            "files": len(files), "file_bytes": sum(e.size for e in files)}


def _filesystem(fmt: Format, volume: Volume, ctx: Context) -> dict[str, Any]:
    try:
        tree = fmt.decode(volume, fmt.parse_options({}), ctx)  # type: ignore[misc]
    except ConvError as e:
        return {"format": fmt.name, "error": str(e)}
    return _tree_summary(fmt.name, tree)


def _volume_layers(volume: Volume, ctx: Context, report: dict[str, Any]) -> None:
    reg = registry()
    fmt = detect_layer(reg, volume)
    if fmt is None:
        report["filesystem"] = None
        return
    if fmt.layer == "table" and fmt.partitions is not None:
        parts = []
        for p in fmt.partitions(volume):
            row: dict[str, Any] = {k: v for k, v in vars(p).items()}
            row["attributes"] = list(p.attributes)
            try:
                inner = volume.window(p.start, p.size, f"partition {p.number}")
                fs = detect_layer(reg, inner)
                row["filesystem"] = _filesystem(fs, inner, ctx) if fs is not None else None
            except ConvError as e:
                row["filesystem"] = {"error": str(e)}
            parts.append(row)
        report["table"] = {"format": fmt.name, "partitions": parts}
    else:
        report["filesystem"] = _filesystem(fmt, volume, ctx)


def describe(path: str, ctx: Context) -> dict[str, Any]:
    """A JSON-able description of an image, a directory, or a chain's result."""
    reg = registry()
    text = path.strip()
    stages = _source_stages(text)
    report: dict[str, Any] = {"path": text}
    stage = stages[0]
    if ARROW in text or stage.name not in ("image", "dir"):
        value = Chain(stages, need_sink=False).run(ctx)
        if isinstance(value, Tree):
            report["tree"] = _tree_summary(stages[-1].name, value)
        else:
            report["volume"] = {"size": value.size, **value.info}
            _volume_layers(value, ctx, report)
        return report
    if stage.name == "dir":
        fmt = reg.get("dir")
        tree = fmt.source(text, fmt.parse_options({}), ctx)  # type: ignore[misc]
        report["tree"] = _tree_summary("dir", tree)
        return report
    if not os.path.lexists(text):
        from convcore.errors import NotFoundError
        raise NotFoundError(f"{text}: no such file or directory")
    with open(text, "rb") as f:
        head = f.read(512)
    if head.startswith(_TAR_MAGICS) or head[257:262] == b"ustar":
        fmt = reg.get("tar")
        tree = fmt.source(text, fmt.parse_options({}), ctx)  # type: ignore[misc]
        report["tree"] = _tree_summary("tar", tree)
        return report
    volume, container = open_container(reg, text, ctx)
    report["container"] = {"format": container.name, "size": volume.size,
                           "file_size": os.path.getsize(text), **volume.info}
    _volume_layers(volume, ctx, report)
    return report


def _size(n: Any) -> str:
    if not isinstance(n, int):
        return str(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _facts(d: dict[str, Any], skip: tuple[str, ...] = ()) -> str:
    parts = []
    for k, v in d.items():
        if k in skip or isinstance(v, (dict, list)) and not v:
            continue
        if k.endswith(("size", "bytes")) and isinstance(v, int):
            v = _size(v)
        parts.append(f"{k}={v}")
    return ", ".join(parts)


def _fs_line(fs: dict[str, Any] | None) -> str:
    if not fs:
        return "none detected"
    if "format" not in fs or "error" in fs:
        return f"{fs.get('format', '?')}: unreadable: {fs.get('error', '')}"
    return f"{fs['format']}: {_facts(fs, ('format',))}"


def render(report: dict[str, Any]) -> str:
    """The human form of ``describe``."""
    lines = [report["path"]]
    if "container" in report:
        c = report["container"]
        lines.append(f"  container: {c['format']}: {_facts(c, ('format',))}")
    if "volume" in report:
        lines.append(f"  volume: {_facts(report['volume'])}")
    if report.get("table"):
        t = report["table"]
        lines.append(f"  partition table: {t['format']}, {len(t['partitions'])} partitions")
        for p in t["partitions"]:
            lines.append(f"    {p['number']}: start={p['start']} size={_size(p['size'])} "
                         f"type={p['type_name']} ({p['type_id']})"
                         + (f" name={p['name']!r}" if p.get("name") else "")
                         + (f" uuid={p['uuid']}" if p.get("uuid") else ""))
            lines.append(f"       filesystem: {_fs_line(p.get('filesystem'))}")
    if "filesystem" in report:
        lines.append(f"  filesystem: {_fs_line(report['filesystem'])}")
    if "tree" in report:
        t = report["tree"]
        lines.append(f"  {t['format']}: {_facts(t, ('format',))}")
    return "\n".join(lines)
