"""``gatelink audit``: every gate site with its alignment, plan and verdict, for people and CI."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import EXIT_INPUT, UsageError
from .common import BaseOption, BitnessOption, RawFlag, _width, app, write_output

AUDIT_FORMATS = ("text", "json", "csv", "sarif", "html")
INPUT_FORMATS = ("pe", "rdv", "bootimg", "raw")
EXIT_FAIL_ON = 1  # a --fail-on verdict or reason was found


def _split_formats(values: list[str]) -> tuple[str, str | None]:
    out = None
    inp = None
    for v in values:
        v = v.lower()
        if v in AUDIT_FORMATS:
            if out is not None and out != v:
                raise UsageError(f"--format given two output formats: {out} and {v}")
            out = v
        elif v in INPUT_FORMATS:
            if inp is not None and inp != v:
                raise UsageError(f"--format given two input formats: {inp} and {v}")
            inp = v
        else:
            raise UsageError(f"unknown --format {v!r}: output formats are {', '.join(AUDIT_FORMATS)}, "
                             f"input formats {', '.join(INPUT_FORMATS)}")
    return out or "text", inp


@app.command("audit")
def audit_cmd(
    files: Annotated[list[Path], typer.Argument(help="Binaries to audit: PE32, .rdv, boot image, or raw with --raw.", show_default=False)],
    model: Annotated[str, typer.Option("--model", "-m", help="Fetch model CHUNK,ORDER the plans are proven under, e.g. 8,arbitrary (the default), 8,monotone, 64,arbitrary.")] = "8,arbitrary",
    format: Annotated[list[str], typer.Option("--format", "-f", help="Output format text|json|csv|sarif|html (default text); also accepts an input format pe|rdv|bootimg|raw. Repeatable.")] = [],  # noqa: B006
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the report here (atomically) instead of stdout.")] = None,
    fail_on: Annotated[list[str], typer.Option("--fail-on", help="Exit 1 if any site has one of these verdicts (unknown-gate, no-plan, needs-sync, needs-pad, patchable) or any near miss has one of these reasons (or near-miss for any). Comma separated, repeatable.")] = [],  # noqa: B006
    form: Annotated[str, typer.Option("--form", help="Final form the plans patch to: far (default), callgate, near, pushcs, undefined.")] = "far",
    policy: Annotated[str, typer.Option("--policy", help="Invalid-selector policy: rdos (default) or strict.")] = "rdos",
    eager: Annotated[str, typer.Option("--eager", help="Which sites a table patches up front: certain (default; likely ones lazily), all, none.")] = "certain",
    raw: RawFlag = False,
    bitness: BitnessOption = None,
    base: BaseOption = None,
    gates: Annotated[list[Path], typer.Option("--gates", help="Gate list to use (os.def, user.def, OW header, CSV); replaces the bundled names for the kinds it defines. Repeatable.")] = [],  # noqa: B006
    jobs: Annotated[Optional[int], typer.Option("--jobs", "-j", help="Worker processes for scanning (default: one per CPU).")] = None,
    cache: Annotated[Optional[Path], typer.Option("--cache", help="Keep scan results in this folder by content hash: unchanged inputs are not scanned again.")] = None,
) -> None:
    """Audit FILES: every site's alignment, chosen plan, syncs and verdict; near misses; summaries."""
    from ..audit import AuditReport, InputProblem, audit, parse_fail_on, render
    from ..gates import load as load_gates
    from ..plan import FetchModel
    from ..plan.forms import FORMS
    from ..table.build import EAGER_POLICIES
    from .batchopts import Diagnostics, RunMemo, check_jobs, raw_options, scan_inputs
    from .common import _policy

    out_fmt, in_fmt = _split_formats(format)
    raw_opts = raw_options(raw or in_fmt == "raw", bitness, base)
    check_jobs(jobs)
    try:
        fetch = FetchModel.parse(model)
    except ValueError as e:
        raise UsageError(f"--model: {e}") from None
    if form not in FORMS:
        raise UsageError(f"unknown --form {form!r}; forms: {', '.join(FORMS)}")
    if eager not in EAGER_POLICIES:
        raise UsageError(f"unknown --eager {eager!r}; choose {', '.join(EAGER_POLICIES)}")
    pol = _policy(policy)
    names = parse_fail_on(fail_on)
    db = load_gates([str(g) for g in gates])
    color = out_fmt == "text" and output is None and sys.stdout.isatty()
    width = _width()
    key = f"audit {fetch} {pol!r} {form} {eager}"
    memo = RunMemo(cache, "audit", (out_fmt, key, names, color, width if out_fmt == "text" else 0), files, db,
                   in_fmt, raw_opts, key) if cache is not None else None
    if memo is not None:
        code = memo.replay(output)
        if code is not None:
            raise typer.Exit(code)
    diag = Diagnostics()
    for w in db.warnings:
        diag(f"warning: {w}")
    derive = functools.partial(audit, model=fetch, policy=pol, form=form, eager=eager)
    pairs, failed = scan_inputs(files, db, in_fmt, raw_opts, jobs, cache, "auditing", derive, key, diag=diag)
    report = AuditReport([a for _, a in pairs], db, fetch, pol, form, eager,  # type: ignore[misc]
                         [InputProblem(p, problem) for p, problem in failed])
    text = render(report, out_fmt, width=width, color=color)
    write_output(text, output)
    code = 0
    if failed:
        code = EXIT_INPUT
    else:
        hits = report.triggered(names)
        if hits:
            diag("audit failed: " + ", ".join(f"{n} {name}" for name, n in hits) + " (--fail-on)")
            code = EXIT_FAIL_ON
    if memo is not None:
        memo.store(text, diag, code)
    if code:
        raise typer.Exit(code)
