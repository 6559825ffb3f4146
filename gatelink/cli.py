"""The ``gatelink`` command line: a thin layer over the library.

Exit codes (README): 0 success, 2 usage error, 3 unreadable or malformed input, 70 internal
error. Results go to stdout or ``-o``; diagnostics to stderr, one line each; a progress bar
only when stderr is a terminal. Set ``GATELINK_DEBUG=1`` to see tracebacks of internal errors.
"""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import __version__
from .errors import EXIT_INPUT, EXIT_INTERNAL, EXIT_USAGE, GatelinkError, InputError, UsageError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Find RDOS gate stubs in x86 binaries and plan provably safe SMP patches for them.",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)

OUTPUT_FORMATS = ("text", "json", "csv")
INPUT_FORMATS = ("pe", "rdv", "bootimg", "raw")


def _err(msg: str) -> None:
    sys.stderr.write(f"gatelink: {msg}\n")


def write_output(text: str, out: Optional[Path]) -> None:
    """Write to stdout, or atomically to ``out`` (temp file in the same folder, then rename)."""
    if out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    target = Path(out)
    folder = target.parent if str(target.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise UsageError(f"cannot write {out}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, target)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise UsageError(f"cannot write {out}: {e.strerror or e}") from None


def _parse_int(text: str, what: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise UsageError(f"{what} must be a number (decimal or 0x hex), not {text!r}") from None


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
    from . import formats as _formats
    from .gates import load as load_gates
    from .report import InputFailure, scan_csv, scan_json, scan_text
    from .scan import scan as run_scan

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


EXIT_UNSAFE = 1  # verify: a plan was checked and is not safe


def _models(values: list[str]) -> list:
    from .plan import STANDARD_MODELS, FetchModel

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
    from .plan import RDOS_POLICY, STRICT_POLICY

    try:
        return {"rdos": RDOS_POLICY, "strict": STRICT_POLICY}[name]
    except KeyError:
        raise UsageError(f"unknown --policy {name!r}: choose rdos or strict") from None


def _shapes(values: list[str]) -> list[str]:
    from .catalog import SHAPES_BY_ID

    out = []
    for v in values:
        for part in v.split(","):
            part = part.strip().upper()
            if part not in SHAPES_BY_ID:
                raise UsageError(f"unknown shape {part!r}; shapes: {', '.join(SHAPES_BY_ID)}")
            out.append(part)
    return out


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
    from .plan.matrix import BASE_ADDRESS, BUILDER_NAMES
    from .plan.report import plans_json, plans_text, run_plans

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
    from .plan.matrix import BUILDER_NAMES, run_matrix
    from .plan.report import matrix_json, matrix_text, matrix_plans_json, verify_file

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


def _width() -> int:
    if sys.stdout.isatty():
        try:
            return max(80, os.get_terminal_size().columns)
        except OSError:
            pass
    return 120


class _Progress:
    """A rich progress bar on stderr, only used when stderr is a terminal."""

    def __init__(self, files: int) -> None:
        from rich.console import Console
        from rich.progress import Progress

        self._p = Progress(console=Console(stderr=True), transient=True)
        self._p.start()
        self._task = self._p.add_task("scanning", total=files)

    def advance(self, nbytes: int) -> None:
        pass

    def next_file(self) -> None:
        self._p.advance(self._task)

    def close(self) -> None:
        self._p.stop()


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
