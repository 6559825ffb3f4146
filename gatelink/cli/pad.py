"""``gatelink pad``: rewrite a binary so that every gate site is patchable with no sync."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from ..errors import UsageError
from .batchopts import check_jobs, raw_options
from .common import (
    EXIT_UNSAFE,
    BaseOption,
    BitnessOption,
    _err,
    _policy,
    app,
    write_output,
)

REPORT_FORMATS = ("text", "json")


@app.command("pad")
def pad_cmd(
    file: Annotated[Path, typer.Argument(help="Binary to pad: PE32, .rdv, boot image, or raw with --raw.", show_default=False)],
    model: Annotated[str, typer.Option("--model", "-m", help="Fetch model CHUNK,ORDER the output must need no sync under, e.g. 8,arbitrary.", show_default=False)],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the padded binary here (atomically). Required unless --dry-run.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Plan and report only; write no binary.")] = False,
    format: Annotated[str, typer.Option("--format", "-f", help="Report format: text or json.")] = "text",
    map_file: Annotated[Path | None, typer.Option("--map", help="Write the old -> new address map of moved and reshaped stubs here.")] = None,
    report: Annotated[Path | None, typer.Option("--report", help="Write the report here (atomically) instead of stdout.")] = None,
    form: Annotated[list[str], typer.Option("--form", help="Final form(s) the plans must reach with no sync: far (default), callgate, near, pushcs. Repeatable.")] = [],  # noqa: B006
    policy: Annotated[str, typer.Option("--policy", help="Invalid-selector policy: rdos or strict.")] = "rdos",
    raw: Annotated[bool, typer.Option("--raw", help="Read FILE as a raw image (no headers); needs --bitness.")] = False,
    bitness: BitnessOption = None,
    base: BaseOption = None,
    gates: Annotated[list[Path], typer.Option("--gates", help="Gate list for names in the report (os.def, user.def, OW header, CSV). Repeatable.")] = [],  # noqa: B006
    all_: Annotated[bool, typer.Option("--all", help="List kept sites in the text report too.")] = False,
    certain_only: Annotated[bool, typer.Option("--certain-only", help="Rewrite only sites the scanner proved certain; refuse likely ones (reason not-certain).")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 when any site is refused (the output is still written).")] = False,
    jobs: Annotated[int | None, typer.Option("--jobs", "-j", help="Worker processes for scanning large code regions (default: one per CPU).")] = None,
) -> None:
    """Pad and align FILE: keep, reshape or move every gate stub so that its lazy patch needs no
    sync under --model, and write the result to -o (the input is never modified)."""
    from .. import formats as _formats
    from ..gates import load as load_gates
    from ..pad import REFUSED, pad
    from ..pad.report import pad_json, pad_map, pad_text
    from ..plan import FetchModel

    fmt = format.lower()
    if fmt not in REPORT_FORMATS:
        raise UsageError(f"unknown --format {format!r}: choose text or json")
    try:
        fetch = FetchModel.parse(model)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if output is None and not dry_run:
        raise UsageError("give -o OUT for the padded binary, or --dry-run")
    if output is not None and dry_run:
        raise UsageError("--dry-run writes nothing: drop -o")
    if output is not None and _same_file(file, output):
        raise UsageError(f"-o {output} is the input: pad never modifies its input, write a new file")
    forms = tuple(form) or ("far",)
    from ..plan.forms import FORMS

    for f in forms:
        if f not in FORMS or f == "undefined":
            raise UsageError(f"unknown --form {f!r}: choose far, callgate, near or pushcs")
    raw_opts = raw_options(raw, bitness, base)
    check_jobs(jobs)
    db = load_gates([str(g) for g in gates])
    for w in db.warnings:
        _err(f"warning: {w}")
    image = _formats.open_image(file, raw=raw_opts)
    for w in image.warnings:
        _err(f"warning: {file}: {w}")
    result = pad(image, fetch, forms=forms, policy=_policy(policy), gates=db, jobs=jobs, certain_only=certain_only)
    if output is not None:
        from ..fsutil import atomic_write

        mode = os.stat(file).st_mode & 0o777
        atomic_write(output, result.data, mode=None if os.path.exists(output) else mode)
    if map_file is not None:
        write_output(pad_map(result), map_file)
    text = pad_json(result) if fmt == "json" else pad_text(result, str(output) if output else None, all_)
    write_output(text, report)
    if strict and result.by_action(REFUSED):
        raise typer.Exit(EXIT_UNSAFE)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)
