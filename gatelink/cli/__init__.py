"""The ``gatelink`` command line: a thin layer over the library.

One module per command group registers its commands on the shared typer app
(:mod:`.common`); :func:`main` maps every failure to its documented exit code.
Set ``GATELINK_DEBUG=1`` to see tracebacks of internal errors.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Annotated

import typer

from .. import __version__
from ..errors import EXIT_INTERNAL, EXIT_USAGE, GatelinkError
from . import plans as _plans  # noqa: F401  (registers its commands)
from . import scan as _scan  # noqa: F401
from .common import _err, app, write_output

__all__ = ["app", "main", "write_output"]


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Show the version and exit.")] = False,
) -> None:
    if version:
        sys.stdout.write(f"gatelink {__version__}\n")
        raise typer.Exit(0)


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the app and maps every failure to its documented exit code."""
    try:
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


def _entry() -> None:  # pragma: no cover
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    _entry()
