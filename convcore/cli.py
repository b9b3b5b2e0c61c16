"""The ``conv`` command: its entry point. User errors are one line and a
non-zero exit. The commands themselves are a typer app (convcore.commands);
a plain ``conv [-q] [--debug] [--seed S] convert CHAIN`` (or ``formats
[--json]``) runs without it: importing typer and its click is a fifth of a
small conversion's time."""

from __future__ import annotations

import atexit
import os
import sys

from convcore.errors import ConvError


def __getattr__(name: str):
    # ``convcore.cli.app`` as before the commands moved to convcore.commands
    if name == "app":
        from convcore.commands import app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _plain(args: list[str]) -> tuple[str, list[str], bool, bool, str | None] | None:
    """(command, its words, quiet, debug, seed) when ``args`` are global
    options conv knows and then ``convert`` with only chain words after it
    (no option, no --help, ``->`` allowed) or ``formats [--json]``; None for
    anything typer should parse."""
    quiet = debug = False
    seed = None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-q", "--quiet"):
            quiet = True
        elif arg == "--debug":
            debug = True
        elif arg == "--seed" and i + 1 < len(args):
            i += 1
            seed = args[i]
        elif arg.startswith("--seed="):
            seed = arg[len("--seed="):]
        elif arg in ("convert", "formats"):
            break
        else:
            return None
        i += 1
    if i >= len(args):
        return None
    command, rest = args[i], args[i + 1:]
    if command == "formats":
        return (command, rest, quiet, debug, seed) if rest in ([], ["--json"]) else None
    if not rest or any(a.startswith("-") and a != "->" for a in rest):
        return None
    return command, rest, quiet, debug, seed


def _plain_convert(args: list[str]) -> tuple[list[str], bool, bool, str | None] | None:
    """(chain, quiet, debug, seed) of a plain ``convert`` (see ``_plain``)."""
    plain = _plain(args)
    if plain is None or plain[0] != "convert":
        return None
    return plain[1], plain[2], plain[3], plain[4]


def _run(args: list[str]) -> None:
    plain = _plain(args)
    if plain is None:
        from convcore.commands import app
        app(args=args, prog_name="conv", standalone_mode=False)
        return
    command, rest, quiet, debug, seed = plain
    if command == "formats":
        show_formats(as_json=bool(rest))
        return
    from convcore.format import Context
    from convcore.pipeline import convert
    ctx = Context(seed=seed, quiet=quiet, debug=debug)
    ctx.one_shot = True
    convert(rest, ctx)


def show_formats(as_json: bool) -> None:
    """``conv formats``: every format's directions, kinds, options and
    distribution. Here rather than in convcore.commands so that a plain
    ``conv formats`` runs without typer (25 ms of its 63)."""
    from convcore.plugins import registry
    rows = []
    for name, fmt in sorted(registry().formats.items()):
        rows.append({
            "name": name,
            "help": fmt.help,
            "reads": bool(fmt.source or fmt.decode),
            "writes": bool(fmt.encode or fmt.sink),
            "directions": fmt.describe_directions(),
            "options": [{"name": o.name, "default": _jsonable(o.default), "help": o.help,
                         **({"choices": list(o.choices)} if o.choices else {})}
                        for o in fmt.options],
            "distribution": fmt.distribution,
        })
    if as_json:
        import json
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        rw = "/".join(x for x, on in (("reads", row["reads"]), ("writes", row["writes"])) if on)
        print(f"{row['name']:<10} {rw:<13} {row['help']}  [{row['distribution']}]")
        for d in row["directions"]:
            print(f"{'':13}{d}")
        for o in row["options"]:
            default = "" if o["default"] in (None, "") else f" (default: {o['default']})"
            choices = f" {{{'|'.join(o['choices'])}}}" if "choices" in o else ""
            print(f"{'':13}{o['name']}={choices} {o['help']}{default}")


def _jsonable(value: object) -> object:
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors are one line and a non-zero exit."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    # File names are bytes: print undecodable ones as their bytes (as ls
    # does), whatever the locale's encoding would refuse.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="surrogateescape")
    try:
        _run(args)
    except ConvError as e:
        if debug:
            raise
        print(f"conv: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("conv: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except MemoryError:
        print("conv: out of memory", file=sys.stderr)
        return 1
    except OSError as e:
        if debug:
            raise
        where = f": {e.filename}" if e.filename else ""
        print(f"conv: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except Exception as e:
        code = _typer_outcome(e)
        if code is not None:
            return code
        if debug:  # a bug: still one line, the traceback on --debug
            raise
        print(f"conv: internal error: {type(e).__name__}: {e} (run with --debug for details)",
              file=sys.stderr)
        return 70
    return 0


def _typer_outcome(e: Exception) -> int | None:
    """The exit code for typer's own exceptions (bad usage of the command,
    --version's exit), None for anything else."""
    if "convcore.commands" not in sys.modules:
        return None
    import typer

    from convcore.commands import click_errors
    if isinstance(e, click_errors()):
        e.show()  # type: ignore[attr-defined]
        return 2
    if isinstance(e, typer.Exit):
        return e.exit_code
    return None


def run() -> None:
    """The ``conv`` script: main(), then leave without the interpreter's
    teardown, which frees every object one by one (30-50 ms after a 100k-entry
    conversion, once the work is done). atexit handlers (a plugin's) still
    run and the standard streams are flushed; conv's own scratch files are
    unnamed and its children reaped before main() returns."""
    code = main()
    try:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        code = code or 141
    except BaseException:
        sys.exit(code)  # let the normal exit report it
    os._exit(code)


if __name__ == "__main__":
    run()
