"""The ``gatelink`` command line: a thin layer over the library.

:func:`main` is the console script. The one call a build makes per binary on every run,
``gatelink table --check``, is answered by :mod:`.quick` from the table's stamp when the table
is fresh, before typer or any of gatelink's heavier modules are imported; everything else (and
every answer other than "fresh") goes to the typer application in :mod:`.run`.
"""

from __future__ import annotations

import sys
from typing import Any

from .quick import quick_main

__all__ = ["app", "main", "register_commands", "write_output"]


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the command line and return its exit code (README, "Exit codes")."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        rc = quick_main(args)
    except KeyboardInterrupt:  # as the full command line answers it
        sys.stderr.write("gatelink: interrupted\n")
        return 130
    if rc is not None:
        return rc
    from .run import main as full_main

    return full_main(argv)


def __getattr__(name: str) -> Any:
    if name in ("app", "register_commands", "write_output"):
        from . import run

        return getattr(run, name)
    raise AttributeError(f"module 'gatelink.cli' has no attribute {name!r}")
