"""``gatelink table``: write (or check) the patch table of each input (docs/table-format.md)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from ..formats import RawOptions
    from ..plan.model import Domain
    from ..table.model import PatchTable

from ..errors import EXIT_INPUT, InputError, UsageError
from .batchopts import check_jobs, raw_options
from .common import BaseOption, BitnessOption, RawFlag, _err, _policy, app

EXIT_STALE = 1
TABLE_FORMATS = ("binary", "json")
EAGER_CHOICES = ("certain", "all", "none")
DEFAULT_MODEL_TEXT = "8,arbitrary"


def _forms(values: list[str]) -> tuple[str, ...]:
    from ..table.model import TABLE_FORMS

    out: list[str] = []
    for v in values or ["far"]:
        for part in v.split(","):
            p = part.strip().lower()
            if p not in TABLE_FORMS:
                raise UsageError(f"unknown --form {p!r}; table forms: {', '.join(TABLE_FORMS)}")
            if p in out:
                raise UsageError(f"--form {p} given twice")
            out.append(p)
    return tuple(out)


def _suffix(fmt: str, c: bool, asm: bool) -> str:
    if c:
        return ".gltab.c"
    if asm:
        return ".gltab.asm"
    return ".gltab.json" if fmt == "json" else ".gltab"


class _Input:
    """One input file: its image without any embedded table, and that table if there is one."""

    def __init__(self, path: Path, in_fmt: str | None, raw_opts: object) -> None:
        from .. import formats
        from ..table.locate import image_without_table

        self.path = path
        img = formats.open_image(path, format=in_fmt, raw=raw_opts)  # type: ignore[arg-type]
        self.image, self.embedded = image_without_table(img)


@app.command("table")
def table_cmd(
    files: Annotated[list[Path], typer.Argument(help="Binaries: PE32, .rdv, boot image, or raw with --raw.", show_default=False)],
    model: Annotated[str, typer.Option("--model", "-m", help="Fetch model the plans are proven under, CHUNK,ORDER.")] = DEFAULT_MODEL_TEXT,
    form: Annotated[list[str], typer.Option("--form", help="Final forms to carry plans for: far, callgate, near, pushcs; repeatable or comma-separated; the first is the default form (default far).")] = [],  # noqa: B006
    eager: Annotated[str, typer.Option("--eager", help="Which sites to patch up front: certain (default: proven sites eager, likely ones lazy), all, none.")] = "certain",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the table (or, with --embed, the image) here; one input only.")] = None,
    sidecar: Annotated[bool, typer.Option("--sidecar", help="Write FILE.gltab (.gltab.json, .gltab.c, .gltab.asm) beside each input (the default).")] = False,
    embed: Annotated[bool, typer.Option("--embed", help="Put the table into the image: a .gltab section (PE) or a trailer (.rdv); in place unless -o.")] = False,
    c: Annotated[bool, typer.Option("--c", help="Write C99 source defining the table bytes, for a kernel to link in.")] = False,
    asm: Annotated[bool, typer.Option("--asm", help="Write nasm source defining the table bytes.")] = False,
    symbol: Annotated[str, typer.Option("--symbol", help="Symbol name for --c / --asm (NAME and NAME_size).")] = "gatelink_table",
    format: Annotated[str, typer.Option("--format", "-f", help="binary (default) or json (the JSON mirror).")] = "binary",
    check: Annotated[bool, typer.Option("--check", help="Write nothing: exit 0 if the existing table is up to date with the input and options, 1 if stale or missing.")] = False,
    policy: Annotated[str, typer.Option("--policy", help="Invalid-selector policy: rdos (default) or strict.")] = "rdos",
    raw: RawFlag = False,
    bitness: BitnessOption = None,
    base: BaseOption = None,
    gates: Annotated[list[Path], typer.Option("--gates", help="Gate list (os.def, user.def, OW header, CSV), as for scan. Repeatable.")] = [],  # noqa: B006
    jobs: Annotated[int | None, typer.Option("--jobs", "-j", help="Scanner worker processes (the result is the same for any number).")] = None,
    selectors: Annotated[str | None, typer.Option("--selectors", help="Selectors the kernel fills in at patch time (the plans are proven for exactly these): values and ranges, e.g. 0x23 or 0x400-0xFFF/8. Default: RDOS code selectors 0x400..0xFFF step 8 (call gates 0x403.. for callgate).")] = None,
) -> None:
    """Write the patch table of each FILE: every gate site with its proven plan templates,
    eager or lazy, for a loader or fault handler. Exit 0 done (or up to date), 1 stale
    (--check), 2 usage, 3 bad input or table."""
    from ..gates import load as load_gates
    from ..plan.model import FetchModel

    try:
        fetch_model = FetchModel.parse(model)
    except ValueError as e:
        raise UsageError(str(e)) from None
    forms = _forms(form)
    if eager not in EAGER_CHOICES:
        raise UsageError(f"--eager must be certain, all or none, not {eager!r}")
    fmt = format.lower()
    if fmt not in TABLE_FORMATS:
        raise UsageError(f"--format must be binary or json, not {format!r}")
    if c and asm:
        raise UsageError("--c and --asm exclude each other")
    if (c or asm) and fmt == "json":
        raise UsageError("--c / --asm write the binary table as source; --format json does not apply")
    if embed and (c or asm or fmt == "json" or sidecar):
        raise UsageError("--embed puts the binary table into the image; it excludes --sidecar, --c, --asm and --format json")
    if output is not None and sidecar:
        raise UsageError("-o and --sidecar exclude each other")
    if output is not None and len(files) != 1:
        raise UsageError("-o takes one input file; with several, each gets a sidecar (--sidecar)")
    from ..table.emit import check_symbol

    try:
        check_symbol(symbol)
    except ValueError as e:
        raise UsageError(str(e)) from None
    pol = _policy(policy)
    raw_opts = raw_options(raw, bitness, base)
    check_jobs(jobs)
    domains = None
    if selectors is not None:
        from ..plan.model import parse_selectors

        try:
            domains = {"sel": parse_selectors(selectors)}
        except ValueError as e:
            raise UsageError(f"--selectors: {e}") from None
    if check:
        # --check answers from stored identities: the gate lists' digests, not their contents.
        from ..gates import identity as gates_identity

        db: object = gates_identity([str(g) for g in gates])
    else:
        db = load_gates([str(g) for g in gates])
        for w in db.warnings:  # type: ignore[attr-defined]
            _err(f"warning: {w}")
    opts = _Options(fetch_model, forms, eager, pol, fmt, c, asm, symbol, embed, output, db, jobs, domains,
                    (selectors or "").replace(" ", ""), raw_opts)
    failed = False
    stale = False
    for f in files:
        try:
            inp = _Input(f, "raw" if raw else None, raw_opts)
            if check:
                reasons = _check_one(inp, opts)
                if reasons:
                    stale = True
                    _err(f"{f}: table is stale: {'; '.join(reasons)}")
            else:
                _write_one(inp, opts)
        except InputError as e:
            _err(f"error: {e}")
            failed = True
        except UsageError as e:
            if len(files) == 1:
                raise
            _err(f"error: {e}")
            failed = True
    if failed:
        raise typer.Exit(EXIT_INPUT)
    if stale:
        raise typer.Exit(EXIT_STALE)


class _Options:
    def __init__(self, model: object, forms: tuple[str, ...], eager: str, policy: object, fmt: str, c: bool,
                 asm: bool, symbol: str, embed: bool, output: Path | None, db: object, jobs: int | None,
                 domains: dict[str, Domain] | None, selectors: str, raw: RawOptions | None) -> None:
        self.model, self.forms, self.eager, self.policy = model, forms, eager, policy
        self.fmt, self.c, self.asm, self.symbol, self.embed, self.output = fmt, c, asm, symbol, embed, output
        self.db, self.jobs, self.domains = db, jobs, domains
        self.selectors, self.raw = selectors, raw  # the --selectors text without spaces, for the stamp

    def stamp(self, data: bytes, table: PatchTable) -> str:
        """The stamp of ``table`` written for the input bytes ``data`` with these options, as
        :func:`gatelink.cli.quick.table_stamp` recomputes it from a command line."""
        import hashlib

        from ..table.binary import write_table
        from .quick import body_sha256, table_stamp

        m = self.model
        return table_stamp(table.build.gatelink, hashlib.sha256(data).hexdigest(),
                           f"{m.chunk},{m.order.value}", self.forms, self.eager, self.policy.name,  # type: ignore[attr-defined]
                           self.selectors, (self.raw.bitness, self.raw.base) if self.raw is not None else None,
                           table.build.gates, body_sha256(write_table(table)))

    def target(self, path: Path) -> Path:
        if self.output is not None:
            return self.output
        if self.embed:
            return path
        return Path(str(path) + _suffix(self.fmt, self.c, self.asm))


def _encode(table: object, opts: _Options, image_name: str) -> bytes | str:
    from ..table.binary import write_table

    binary = write_table(table)  # type: ignore[arg-type]
    if opts.c or opts.asm:
        from ..table.emit import asm_source, c_source

        return (c_source if opts.c else asm_source)(table, binary, image_name, opts.symbol)  # type: ignore[arg-type]
    if opts.fmt == "json":
        from ..table.jsonform import table_json

        return table_json(table, binary)  # type: ignore[arg-type]
    return binary


def _write_one(inp: _Input, opts: _Options) -> None:
    import dataclasses

    from ..fsutil import atomic_write
    from ..scan import scan as run_scan
    from ..table.build import build_table

    res = run_scan(inp.image, opts.db, jobs=opts.jobs)  # type: ignore[arg-type]
    for w in res.warnings:
        _err(f"warning: {inp.path}: {w}")
    table = build_table(res, opts.model, opts.forms, opts.eager, opts.policy, opts.domains)  # type: ignore[arg-type]
    table.build = dataclasses.replace(table.build, stamp=opts.stamp(inp.image.data, table))
    missing = sum(1 for s in table.sites if all(p is None for p in s.plans))
    if missing:
        _err(f"warning: {inp.path}: {missing} sites have no plan for the forms {','.join(opts.forms)} "
             "(they keep trapping; add another --form)")
    out = _encode(table, opts, os.path.basename(str(inp.path)))
    target = opts.target(inp.path)
    if opts.embed:
        from ..table.embed import embed

        assert isinstance(out, bytes)
        atomic_write(target, embed(inp.image.data, inp.image.format, out, str(inp.path)))
    else:
        atomic_write(target, out)


def _check_one(inp: _Input, opts: _Options) -> list[str]:
    """Why the table for ``inp`` is stale (empty: up to date); no scan, no synthesis."""
    from .. import __version__
    from ..table.binary import read_table
    from ..table.check import form_domains, layout_digest, stale_reasons
    from ..table.model import BuildInfo

    target = opts.target(inp.path)
    tpath = str(target)
    if opts.embed:
        if target == inp.path:
            emb = inp.embedded
        else:
            emb = _Input(target, None, None).embedded
        if emb is None:
            return [f"no table embedded in {target}"]
        table = read_table(emb, tpath)
    else:
        try:
            data = target.read_bytes()
        except FileNotFoundError:
            return [f"no table at {target}"]
        except OSError as e:
            raise InputError(tpath, f"cannot read: {e.strerror or e}") from None
        if opts.c or opts.asm:
            from ..table.emit import read_source

            table = read_table(read_source(data.decode("utf-8", "replace"), tpath), tpath)
        elif opts.fmt == "json":
            from ..table.jsonform import read_json

            table = read_json(data, tpath)
        else:
            table = read_table(data, tpath)
    domains = form_domains(opts.forms, opts.domains)
    gates = opts.db  # the gate lists' identity (see table_cmd)
    assert isinstance(gates, tuple)
    build = BuildInfo(__version__, opts.eager, gates, layout_digest(inp.image))
    return stale_reasons(table, inp.image, model=opts.model, forms=opts.forms, build=build, policy=opts.policy,
                         domains=domains)

