"""The ``conv`` command: its entry point. User errors are one line and a
non-zero exit. The commands themselves are a typer app (convcore.commands);
a plain ``conv [-q] [--debug] [--seed S] convert CHAIN`` runs without it:
importing typer and its click is a fifth of a small conversion's time."""

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


def _plain_convert(args: list[str]) -> tuple[list[str], bool, bool, str | None] | None:
    """(chain, quiet, debug, seed) when ``args`` are global options conv
    knows and ``convert`` with only chain words after it (no option, no
    --help, ``->`` allowed); None for anything typer should parse."""
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
        elif arg == "convert":
            break
        else:
            return None
        i += 1
    chain = args[i + 1:]
    if i >= len(args) or not chain or any(a.startswith("-") and a != "->" for a in chain):
        return None
    return chain, quiet, debug, seed


def _run(args: list[str]) -> None:
    plain = _plain_convert(args)
    if plain is None:
        from convcore.commands import app
        app(args=args, prog_name="conv", standalone_mode=False)
        return
    chain, quiet, debug, seed = plain
    from convcore.format import Context
    from convcore.pipeline import convert
    ctx = Context(seed=seed, quiet=quiet, debug=debug)
    ctx.one_shot = True
    convert(chain, ctx)


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
