"""What every command shares: the typer app, one-line errors, atomic output, option parsing.

Exit codes (README): 0 success, 1 a check failed (verify, table --check), 2 usage error,
3 unreadable or malformed input, 70 internal error. Results go to stdout or ``-o``;
diagnostics to stderr, one line each; a progress bar only when stderr is a terminal.

Command modules import only this module and typer at import time; everything heavy (decoders,
the checker, rich) is imported inside the command that needs it, so the CLI starts fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import (
    UsageError,
)
from ..fsutil import atomic_write

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Find RDOS gate stubs in x86 binaries and plan provably safe SMP patches for them.",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    # Docstrings are wrapped source text: let help reflow their paragraphs.
    rich_markup_mode="markdown",
)



def _err(msg: str) -> None:
    sys.stderr.write(f"gatelink: {msg}\n")


def write_output(text: str, out: Optional[Path]) -> None:
    """Write to stdout, or atomically to ``out`` (temp file in the same folder, then rename)."""
    if out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    atomic_write(out, text)


def _parse_int(text: str, what: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise UsageError(f"{what} must be a number (decimal or 0x hex), not {text!r}") from None


# The raw-image options, the same in every command that reads binaries (batchopts.raw_options
# turns them into RawOptions).
RawFlag = Annotated[bool, typer.Option("--raw", help="Read the files as raw images (no headers); needs --bitness.")]
BitnessOption = Annotated[Optional[int], typer.Option("--bitness", help="Code bitness of a raw image: 16 or 32.")]
BaseOption = Annotated[Optional[str], typer.Option("--base", help="Load address of a raw image (default 0).")]


EXIT_UNSAFE = 1  # verify: a plan was checked and is not safe


def _models(values: list[str]) -> list:
    from ..plan import STANDARD_MODELS, FetchModel

    if not values:
        return list(STANDARD_MODELS)
    out = []
    for v in values:
        try:
            out.append(FetchModel.parse(v))
        except ValueError as e:
            raise UsageError(str(e)) from None
    return out


def _policy(name: str):
    from ..plan import RDOS_POLICY, STRICT_POLICY

    try:
        return {"rdos": RDOS_POLICY, "strict": STRICT_POLICY}[name]
    except KeyError:
        raise UsageError(f"unknown --policy {name!r}: choose rdos or strict") from None


def _shapes(values: list[str]) -> list[str]:
    from ..catalog import SHAPES_BY_ID

    out = []
    for v in values:
        for part in v.split(","):
            part = part.strip().upper()
            if part not in SHAPES_BY_ID:
                raise UsageError(f"unknown shape {part!r}; shapes: {', '.join(SHAPES_BY_ID)}")
            out.append(part)
    return out


def _width() -> int:
    if sys.stdout.isatty():
        try:
            return max(80, os.get_terminal_size().columns)
        except OSError:
            pass
    return 120
