"""The ``conv`` commands (typer). Plugin modules load only when a command needs
them, so ``conv --help`` stays fast. The entry point, error handling and the
typer-free path of a plain ``conv convert`` are in convcore.cli."""

from __future__ import annotations

import json
import stat
import sys
import time
from typing import Annotated

import typer

from convcore import __version__

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Convert between disk-image formats in userspace: directories, tar, OCI layouts, "
         "ext2/3/4, SquashFS, GPT/MBR, raw and qcow2.\n\n"
         "Example: conv convert 'dir:./rootfs -> ext4 -> gpt -> qcow2:disk.qcow2'",
)


class _State:
    quiet = False
    debug = False
    seed: str | None = None


def _context():
    from convcore.format import Context
    ctx = Context(seed=_State.seed, quiet=_State.quiet, debug=_State.debug)
    ctx.one_shot = True
    return ctx


def _version(value: bool) -> None:
    if value:
        print(f"conv {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    seed: Annotated[str | None, typer.Option(
        "--seed", help="Seed for UUIDs and hash seeds (default: SOURCE_DATE_EPOCH, or fixed).")
    ] = None,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version.")] = False,
) -> None:
    _State.quiet = quiet
    _State.debug = debug
    _State.seed = seed


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def convert(
    ctx: typer.Context,
    chain: Annotated[list[str], typer.Argument(
        help="'SOURCE -> STAGE -> ... -> SINK:PATH' as one quoted argument, or the stages as "
             "separate arguments with '->' quoted or --to between them.")],
) -> None:
    """Convert along a chain, e.g. 'oci:./layout -> ext4 -> gpt -> qcow2:out.qcow2'."""
    from convcore.pipeline import convert as run
    run(list(chain) + list(ctx.args), _context())


@app.command()
def build(spec: Annotated[str, typer.Argument(help="A TOML disk spec.")],
          output: Annotated[str | None, typer.Option(
              "--output", "-o", help="Write here instead of the spec's output.")] = None) -> None:
    """Build a multi-partition disk from a TOML spec."""
    from convcore import spec as specs
    specs.build(spec, _context(), output=output)


@app.command()
def formats(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable.")] = False
            ) -> None:
    """List every format: directions, kinds, options and the distribution providing it."""
    from convcore.cli import show_formats
    show_formats(as_json)


@app.command()
def info(path: Annotated[str, typer.Argument(
             help="An image file (raw, qcow2, partitioned or not), a directory, an OCI layout, "
                  "or a chain without a sink.")],
         as_json: Annotated[bool, typer.Option("--json", help="Machine-readable.")] = False
         ) -> None:
    """Show the layers of an image: container, partitions, filesystem, sizes."""
    from convcore.inspect import describe, render
    report = describe(path, _context())
    print(json.dumps(report, indent=2, default=str) if as_json else render(report))


def _mode_string(mode: int) -> str:
    return stat.filemode(mode)


@app.command("ls")
def ls(source: Annotated[str, typer.Argument(
           help="An image, a directory, or a chain without a sink "
                "(e.g. 'qcow2:vm.qcow2 -> gpt[part=2]').")],
       path: Annotated[str, typer.Argument(help="Directory or file inside.")] = "/",
       recursive: Annotated[bool, typer.Option("--recursive", "-r")] = False,
       as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List files inside an image without mounting it."""
    from convcore.pipeline import open_tree
    from convcore.tree import Kind
    tree = open_tree(source, _context())
    top = tree.get(path)
    if recursive:
        prefix = f"{top.path}/" if top.path else ""
        entries = [e for e in tree if e.path.startswith(prefix) or e.path == top.path]
    elif top.is_dir():
        entries = tree.children(top.path)
    else:
        entries = [top]
    rows = []
    for e in entries:
        node = tree.resolve(e)
        row = {"path": "/" + e.path, "type": node.kind.name.lower(), "mode": node.st_mode,
               "uid": node.uid, "gid": node.gid, "size": node.size if node.kind is Kind.FILE
               else 0, "mtime_ns": node.mtime_ns}
        if node.kind is Kind.SYMLINK:
            row["target"] = node.target
        if node.kind in (Kind.CHAR, Kind.BLOCK):
            row["rdev"] = list(node.rdev)
        if e.link is not None:
            row["hardlink"] = "/" + e.link
        if node.xattrs:
            row["xattrs"] = sorted(node.xattrs)
        rows.append(row)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(row["mtime_ns"] // 10**9))
        size = f"{row['rdev'][0]}, {row['rdev'][1]}" if "rdev" in row else str(row["size"])
        name = row["path"] if recursive else (row["path"].rpartition("/")[2] or "/")
        extra = f" -> {row['target']}" if "target" in row else (
            f" link to {row['hardlink']}" if "hardlink" in row else "")
        print(f"{_mode_string(row['mode'])} {row['uid']:>5} {row['gid']:>5} {size:>10} "
              f"{when} {name}{extra}")


@app.command("cat")
def cat(source: Annotated[str, typer.Argument(help="An image, a directory, or a chain.")],
        path: Annotated[str, typer.Argument(help="File inside.")]) -> None:
    """Write a file from inside an image to stdout."""
    from convcore.errors import UsageError
    from convcore.pipeline import open_tree
    from convcore.tree import Kind
    tree = open_tree(source, _context())
    entry = tree.resolve(tree.get(path))
    if entry.kind is not Kind.FILE:
        raise UsageError(f"{path}: is a {entry.kind.name.lower()}, not a regular file")
    if entry.data is None or entry.size == 0:
        return
    out = sys.stdout.buffer
    with entry.data.open() as f:
        while chunk := f.read(1 << 20):
            out.write(chunk)
    out.flush()


def click_errors() -> type[Exception]:
    """The base class of click's usage errors: typer 0.26+ carries its own
    copy of click; older ones use click itself."""
    try:
        from typer._click.exceptions import ClickException
    except ImportError:
        from click import ClickException
    return ClickException
