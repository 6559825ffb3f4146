"""``gatelink plans`` and ``gatelink verify``: plans for one site class, and the proof matrix."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import UsageError
from .common import EXIT_UNSAFE, _models, _policy, _shapes, app, write_output


@app.command("plans")
def plans_cmd(
    shape: Annotated[str, typer.Option("--shape", "-s", help="Stub shape: A..I, L7, L8, L7P, L8P, U5, U7.")] = "A",
    alignment: Annotated[int, typer.Option("--alignment", "-a", help="Site address mod 64.")] = 0,
    model: Annotated[list[str], typer.Option("--model", "-m", help="Fetch model CHUNK,ORDER (e.g. 8,monotone); repeatable; default the five standard ones.")] = [],  # noqa: B006
    form: Annotated[str, typer.Option("--form", help="Final form: far, pushcs, callgate, near, undefined.")] = "far",
    builder: Annotated[list[str], typer.Option("--builder", "-b", help="rdos, thread, int3-sync, single-store, synthesis; repeatable; default all.")] = [],  # noqa: B006
    policy: Annotated[str, typer.Option("--policy", help="Invalid-selector policy: rdos (default) or strict (0..7 only).")] = "rdos",
    format: Annotated[str, typer.Option("--format", "-f", help="text or json (the plan contract).")] = "text",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write here (atomically) instead of stdout.")] = None,
) -> None:
    """Show each builder's plan for one shape, alignment, final form and model, with every
    intermediate state decoded, and its proof or the witness that breaks it."""
    from ..plan.matrix import BASE_ADDRESS, BUILDER_NAMES
    from ..plan.report import plans_json, plans_text, run_plans

    sid = _shapes([shape])[0]
    if not 0 <= alignment < 64:
        raise UsageError("--alignment must be 0..63")
    names = builder or list(BUILDER_NAMES)
    for b in names:
        if b not in BUILDER_NAMES:
            raise UsageError(f"unknown builder {b!r}; builders: {', '.join(BUILDER_NAMES)}")
    if format not in ("text", "json"):
        raise UsageError("--format must be text or json")
    runs = run_plans(sid, form, BASE_ADDRESS + alignment, _models(model), names, _policy(policy))
    text = plans_json(runs) if format == "json" else plans_text(runs)
    write_output(text, output)


@app.command("verify")
def verify_cmd(
    plan: Annotated[Optional[Path], typer.Option("--plan", help="Check the plans in this JSON file (one plan, a list, or {\"plans\": [...]}) instead of the matrix.")] = None,
    shapes: Annotated[list[str], typer.Option("--shape", "-s", help="Shapes for the matrix (default all); repeatable or comma-separated.")] = [],  # noqa: B006
    model: Annotated[list[str], typer.Option("--model", "-m", help="Fetch models CHUNK,ORDER; default the five standard ones.")] = [],  # noqa: B006
    builder: Annotated[list[str], typer.Option("--builder", "-b", help="Builders (default all, with synthesis).")] = [],  # noqa: B006
    policy: Annotated[str, typer.Option("--policy", help="Invalid-selector policy: rdos (default) or strict.")] = "rdos",
    format: Annotated[str, typer.Option("--format", "-f", help="text or json.")] = "text",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write here (atomically) instead of stdout.")] = None,
    jobs: Annotated[Optional[int], typer.Option("--jobs", "-j", help="Worker processes (default: one per CPU).")] = None,
    plans_out: Annotated[Optional[Path], typer.Option("--plans-out", help="Also write every plan of the matrix in the plan JSON format (large).")] = None,
) -> None:
    """Prove the matrix (shapes x alignments 0..63 x models x builders) or check hand-written
    plans (--plan). Exit 1 if a checked --plan is unsafe."""
    from ..plan.matrix import BUILDER_NAMES, run_matrix
    from ..plan.report import matrix_json, matrix_plans_json, matrix_text, verify_file

    if format not in ("text", "json"):
        raise UsageError("--format must be text or json")
    if plan is not None:
        text, all_safe = verify_file(plan, format)
        write_output(text, output)
        if not all_safe:
            raise typer.Exit(EXIT_UNSAFE)
        return
    names = builder or list(BUILDER_NAMES)
    for b in names:
        if b not in BUILDER_NAMES:
            raise UsageError(f"unknown builder {b!r}; builders: {', '.join(BUILDER_NAMES)}")
    if jobs is not None and jobs < 1:
        raise UsageError("--jobs must be at least 1")
    progress = None
    bar = None
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import Progress

        bar = Progress(console=Console(stderr=True), transient=True)
        bar.start()
        task = bar.add_task("proving", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

    try:
        res = run_matrix(_shapes(shapes) or None, models=_models(model), builders=names, policy=_policy(policy),
                         jobs=jobs, progress=progress)
    finally:
        if bar is not None:
            bar.stop()
    text = matrix_json(res) if format == "json" else matrix_text(res)
    write_output(text, output)
    if plans_out is not None:
        write_output(matrix_plans_json(res, _policy(policy)), plans_out)
