"""The typer side of the ``gatelink`` command line (``gatelink.cli.main`` comes here unless
:mod:`.quick` answered first).

One module per command group registers its commands on the shared typer app
(:mod:`.common`); :func:`main` maps every failure to its documented exit code.
Set ``GATELINK_DEBUG=1`` to see tracebacks of internal errors.

Start-up is what a build pays per call, so :func:`main` imports only the module of the command
being run (found by its ``@app.command("name")`` line, without importing anything); help, an
unknown name or no command imports them all. A new command module needs no registration here.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Annotated

import typer

from .. import __version__
from ..errors import EXIT_INTERNAL, EXIT_USAGE, GatelinkError
from .common import _err, app, write_output

__all__ = ["app", "main", "register_commands", "write_output"]

# Modules here that register no command.
_NOT_COMMANDS = frozenset({"__init__", "common", "batchopts", "run", "quick"})
# Used when the sources cannot be read (a zipped install): every command module.
_KNOWN_MODULES = ("audit", "harness", "pad", "plans", "runtime", "scan", "table")
_COMMAND_RE = re.compile(r"""@app\.command\(\s*["']([\w-]+)["']""")


def _command_modules() -> dict[str, str]:
    """Command name -> the module defining it, read from the sources (no imports)."""
    out: dict[str, str] = {}
    try:
        for f in sorted(Path(__file__).parent.glob("*.py")):
            if f.stem not in _NOT_COMMANDS:
                for name in _COMMAND_RE.findall(f.read_text(encoding="utf-8")):
                    out.setdefault(name, f.stem)
    except OSError:
        pass
    return out


def register_commands(argv: list[str] | None = None) -> None:
    """Import the module of the command ``argv`` runs, or every command module (for help, an
    unknown command, or ``argv`` None). Importing a module registers its commands on ``app``."""
    modules = _command_modules()
    name = next((a for a in argv if not a.startswith("-")), None) if argv is not None else None
    if name is not None and name in modules:
        wanted = [modules[name]]
    elif argv and name is None and not {"-h", "--help"} & set(argv):
        wanted = []  # --version: no command runs
    else:
        wanted = sorted(set(modules.values()) | set(_KNOWN_MODULES if not modules else ()))
    for m in wanted:
        importlib.import_module(f".{m}", __package__)


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Show the version and exit.")] = False,
) -> None:
    if version:
        sys.stdout.write(f"gatelink {__version__}\n")
        raise typer.Exit(0)


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the app and maps every failure to its documented exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        register_commands(args)
        rv = app(args=argv, prog_name="gatelink", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except typer.Exit as e:
        return int(e.exit_code or 0)
    except SystemExit as e:  # click's own exits
        return int(e.code or 0) if isinstance(e.code, int) else EXIT_USAGE
    except GatelinkError as e:
        _err(f"error: {e}")
        return e.exit_code
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # noqa: BLE001 - the one place that turns bugs into exit 70
        # typer's (vendored) click raises UsageError & co. in non-standalone mode; recognise
        # them by their interface rather than importing a private module.
        fmt = getattr(e, "format_message", None)
        if fmt is not None and hasattr(e, "exit_code"):
            if type(e).__name__ in ("UsageError", "BadParameter", "MissingParameter", "NoSuchOption",
                                    "BadOptionUsage", "BadArgumentUsage"):
                _err(f"usage error: {fmt()} (see gatelink -h)")
                return EXIT_USAGE
            _err(f"error: {fmt()}")
            return EXIT_USAGE
        if type(e).__name__ == "Abort":
            return 130
        _err(f"internal error: {type(e).__name__}: {e} (set GATELINK_DEBUG=1 for a traceback)")
        if os.environ.get("GATELINK_DEBUG"):
            traceback.print_exc()
        return EXIT_INTERNAL
