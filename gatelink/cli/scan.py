"""``gatelink scan``: every gate stub in the given binaries."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import EXIT_INPUT, UsageError
from .common import BaseOption, BitnessOption, RawFlag, _width, app, write_output

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
    raw: RawFlag = False,
    bitness: BitnessOption = None,
    base: BaseOption = None,
    gates: Annotated[list[Path], typer.Option("--gates", help="Gate list to use (os.def, user.def, OW header, CSV); replaces the bundled names for the kinds it defines. Repeatable.")] = [],  # noqa: B006
    jobs: Annotated[Optional[int], typer.Option("--jobs", "-j", help="Worker processes (default: one per CPU): several files are shared out between them, one file's large code regions otherwise. The result is the same for any number.")] = None,
    cache: Annotated[Optional[Path], typer.Option("--cache", help="Keep results in this folder by content hash: unchanged inputs are not scanned again.")] = None,
) -> None:
    """Find every gate stub in FILES, with its gate name, shape and evidence."""
    from ..gates import load as load_gates
    from .batchopts import Diagnostics, RunMemo, check_jobs, raw_options, scan_inputs

    out_fmt, in_fmt = _split_formats(format)
    raw_opts = raw_options(raw or in_fmt == "raw", bitness, base)
    check_jobs(jobs)
    db = load_gates([str(g) for g in gates])
    color = out_fmt == "text" and output is None and sys.stdout.isatty()
    width = _width()
    memo = RunMemo(cache, "scan", (out_fmt, all_, color, width if out_fmt == "text" else 0), files, db, in_fmt,
                   raw_opts) if cache is not None else None
    if memo is not None:
        code = memo.replay(output)
        if code is not None:
            raise typer.Exit(code)
    from ..report import (  # (rich, the scanner: not for a replay)
        JSON_SCHEMA_VERSION,
        InputFailure,
        scan_csv,
        scan_json,
        scan_json_input,
        scan_text,
    )

    diag = Diagnostics()
    for w in db.warnings:
        diag(f"warning: {w}")
    if out_fmt == "json":
        # Each input's JSON is made by the worker that scanned it: the parent only joins them.
        pairs, failed = scan_inputs(files, db, in_fmt, raw_opts, jobs, cache, diag=diag,
                                    derive=scan_json_input, derive_key=f"scan-json-{JSON_SCHEMA_VERSION}", lean=True)
    else:
        pairs, failed = scan_inputs(files, db, in_fmt, raw_opts, jobs, cache, diag=diag)
    results = [res for res, _ in pairs]
    failures = [InputFailure(p, problem) for p, problem in failed]
    if out_fmt == "json":
        text = scan_json(results, failures, db, rendered=[str(d) for _, d in pairs])
    elif out_fmt == "csv":
        text = scan_csv(results, all_)
    else:
        text = scan_text(results, failures, db, all_, width=width, color=color)
    write_output(text, output)
    code = EXIT_INPUT if failures else 0
    if memo is not None:
        memo.store(text, diag, code)
    if code:
        raise typer.Exit(code)
