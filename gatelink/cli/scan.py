"""``gatelink scan``: every gate stub in the given binaries."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import EXIT_INPUT, InputError, UsageError
from .common import _err, _parse_int, _Progress, _width, app, write_output

OUTPUT_FORMATS = ("text", "json", "csv")
INPUT_FORMATS = ("pe", "rdv", "bootimg", "raw")


def _split_formats(values: list[str]) -> tuple[str, str | None]:
    """``--format`` takes output formats (text, json, csv) and input formats (pe, rdv,
    bootimg, raw); give it twice to set both."""
    out = None
    inp = None
    for v in values:
        v = v.lower()
        if v in OUTPUT_FORMATS:
            if out is not None and out != v:
                raise UsageError(f"--format given two output formats: {out} and {v}")
            out = v
        elif v in INPUT_FORMATS:
            if inp is not None and inp != v:
                raise UsageError(f"--format given two input formats: {inp} and {v}")
            inp = v
        else:
            raise UsageError(
                f"unknown --format {v!r}: output formats are {', '.join(OUTPUT_FORMATS)}, "
                f"input formats {', '.join(INPUT_FORMATS)}"
            )
    return out or "text", inp


@app.command("scan")
def scan_cmd(
    files: Annotated[list[Path], typer.Argument(help="Binaries to scan: PE32, .rdv, boot image, or raw with --raw.", show_default=False)],
    format: Annotated[list[str], typer.Option("--format", "-f", help="Output format text|json|csv (default text); also accepts an input format pe|rdv|bootimg|raw to override detection. Repeatable.")] = [],  # noqa: B006
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write results here (atomically) instead of stdout.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="List near misses in text and CSV output too (JSON always has them).")] = False,
    raw: Annotated[bool, typer.Option("--raw", help="Read the files as raw images (no headers); needs --bitness.")] = False,
    bitness: Annotated[Optional[int], typer.Option("--bitness", help="Code bitness of a raw image: 16 or 32.")] = None,
    base: Annotated[Optional[str], typer.Option("--base", help="Load address of a raw image (default 0).")] = None,
    gates: Annotated[list[Path], typer.Option("--gates", help="Gate list to use (os.def, user.def, OW header, CSV); replaces the bundled names for the kinds it defines. Repeatable.")] = [],  # noqa: B006
    jobs: Annotated[Optional[int], typer.Option("--jobs", "-j", help="Worker processes for large code regions (default: one per CPU). The result is the same for any number.")] = None,
) -> None:
    """Find every gate stub in FILES, with its gate name, shape and evidence."""
    from .. import formats as _formats
    from ..gates import load as load_gates
    from ..report import InputFailure, scan_csv, scan_json, scan_text
    from ..scan import scan as run_scan

    out_fmt, in_fmt = _split_formats(format)
    raw_opts = None
    if raw or in_fmt == "raw":
        if bitness is None:
            raise UsageError("--raw needs --bitness 16 or 32")
        if bitness not in (16, 32):
            raise UsageError(f"--bitness must be 16 or 32, not {bitness}")
        raw_opts = _formats.RawOptions(bitness, _parse_int(base, "--base") if base is not None else 0)
    elif bitness is not None or base is not None:
        raise UsageError("--bitness and --base apply to raw images only (add --raw)")
    if jobs is not None and jobs < 1:
        raise UsageError(f"--jobs must be 1 or more, not {jobs}")
    db = load_gates([str(g) for g in gates])
    for w in db.warnings:
        _err(f"warning: {w}")
    results = []
    failures = []
    progress = _Progress(len(files)) if sys.stderr.isatty() else None
    for f in files:
        try:
            img = _formats.open_image(f, format=None if in_fmt == "raw" else in_fmt, raw=raw_opts)
            res = run_scan(img, db, progress=progress.advance if progress else None, jobs=jobs)
        except InputError as e:
            _err(f"error: {e}")
            failures.append(InputFailure(str(f), e.problem))
            continue
        finally:
            if progress:
                progress.next_file()
        for w in res.warnings:
            _err(f"warning: {f}: {w}")
        results.append(res)
    if progress:
        progress.close()
    if out_fmt == "json":
        text = scan_json(results, failures, db)
    elif out_fmt == "csv":
        text = scan_csv(results, all_)
    else:
        color = output is None and sys.stdout.isatty()
        text = scan_text(results, failures, db, all_, width=_width(), color=color)
    write_output(text, output)
    if failures:
        raise typer.Exit(EXIT_INPUT)
