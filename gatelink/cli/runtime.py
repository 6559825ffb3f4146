"""``gatelink apply`` and ``gatelink unpatch``: patch an image's sites up front from its patch
table, resolving gates through a registry, and put the original bytes back.

Both are all or nothing: every site is checked first and nothing is written unless every
check passed. The output goes to ``-o OUT`` (atomically); ``--in-place`` rewrites FILE itself
(``-o`` naming FILE without ``--in-place`` is refused, so an input is never overwritten by
accident). Exit codes: 0 done, 2 usage, 3 bad input (unreadable or malformed file, table or
registry; an image that does not match the table; a registry value outside the table's
proven domains).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from ..errors import InputError, UsageError
from ..fsutil import read_input
from .common import _err, app

MAX_TABLE_FILE = 256 << 20


def _load_table(table: Path | None, data: bytes, file: Path) -> tuple[object, bytes | None]:
    """The patch table (from ``table``, else embedded in ``data``) and, for an embedded one,
    the image as it was without it."""
    from ..table import read_table
    from ..table.embed import extract

    emb = extract(data, None, str(file))
    if table is None:
        if emb is None:
            raise UsageError(f"{file}: no patch table embedded in it; give --table FILE.gltab")
        return read_table(emb.table, f"{file} (embedded table)"), emb.original
    raw = read_input(table, "table", MAX_TABLE_FILE)
    if raw[:4] == b"GLTB":
        t = read_table(raw, str(table))
    elif raw.lstrip()[:1] == b"{":
        from ..table import read_json

        t = read_json(raw, str(table))
    else:
        raise InputError(str(table), "not a gatelink patch table (neither the binary GLTB format nor its JSON form)")
    return t, (emb.original if emb is not None else None)


def _output(file: Path, output: Path | None, in_place: bool) -> Path:
    if in_place:
        if output is not None:
            raise UsageError("-o and --in-place exclude each other")
        return file
    if output is None:
        raise UsageError("give -o OUT for the patched image (or --in-place to rewrite FILE)")
    try:
        same = output.exists() and os.path.samefile(output, file)
    except OSError:
        same = False
    if same or output.resolve() == file.resolve():
        raise UsageError(f"-o {output} is the input itself: add --in-place to rewrite it")
    return output


def _registry(path: Path, gates: list[Path]) -> object:
    from ..gates import load as load_gates
    from ..runtime import load_registry

    db = load_gates([str(g) for g in gates]) if gates else None
    if db is not None:
        for w in db.warnings:
            _err(f"warning: {w}")
    return load_registry(path, db)


@app.command("apply")
def apply_cmd(
    file: Annotated[Path, typer.Argument(help="The image the table was built for (unpatched).", show_default=False)],
    registry: Annotated[Path, typer.Option("--registry", "-r", help="Gate registry (TOML): where each gate resolves (docs/runtime.md).", show_default=False)],
    table: Annotated[Path | None, typer.Option("--table", "-t", help="Patch table (binary .gltab or its JSON form); default: the table embedded in FILE.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the patched image here (atomically).")] = None,
    in_place: Annotated[bool, typer.Option("--in-place", help="Rewrite FILE itself (atomically).")] = False,
    all_: Annotated[bool, typer.Option("--all", help="Patch the lazy sites too (default: the eager sites only, the lazy ones are left for the fault handler).")] = False,
    eager_only: Annotated[bool, typer.Option("--eager-only", help="Patch the eager sites only (the default).")] = False,
    gates: Annotated[list[Path], typer.Option("--gates", help="Gate list for registry entries given by name (os.def, user.def, OW header, CSV); replaces the bundled names for the kinds it defines. Repeatable.")] = [],  # noqa: B006
) -> None:
    """Patch every eager site of FILE to its final call, up front: each site's gate resolved
    through the registry, its plan's final bytes filled in. Checks first that FILE is the
    table's image and every site holds its original bytes; writes nothing otherwise (exit 3)."""
    from ..fsutil import atomic_write
    from ..runtime import apply_image

    if all_ and eager_only:
        raise UsageError("--all and --eager-only exclude each other")
    out = _output(file, output, in_place)
    reg = _registry(registry, gates)
    data = read_input(file, "image")
    t, without = _load_table(table, data, file)
    patched, res = apply_image(t, data, reg, lazy=all_, path=str(file), without_table=without)  # type: ignore[arg-type]
    atomic_write(out, patched)
    typer.echo(f"{file}: {res.summary()} -> {out}")


@app.command("unpatch")
def unpatch_cmd(
    file: Annotated[Path, typer.Argument(help="An image patched by apply (or a running image's dump).", show_default=False)],
    table: Annotated[Path | None, typer.Option("--table", "-t", help="Patch table (binary .gltab or its JSON form); default: the table embedded in FILE.")] = None,
    registry: Annotated[Path | None, typer.Option("--registry", "-r", help="Gate registry: accept only the exact final bytes it gives (default: any final form of the table, with values in its proven domains).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the restored image here (atomically).")] = None,
    in_place: Annotated[bool, typer.Option("--in-place", help="Rewrite FILE itself (atomically).")] = False,
    gates: Annotated[list[Path], typer.Option("--gates", help="Gate list for registry entries given by name. Repeatable.")] = [],  # noqa: B006
) -> None:
    """Put the original bytes back at every patched site of FILE. A site must hold its
    original bytes or a final form of the table; the result must be, byte for byte, the image
    the table was built for. Writes nothing otherwise (exit 3)."""
    from ..fsutil import atomic_write
    from ..runtime import unpatch_image

    out = _output(file, output, in_place)
    reg = _registry(registry, gates) if registry is not None else None
    if registry is None and gates:
        raise UsageError("--gates applies to --registry entries given by name")
    data = read_input(file, "image")
    t, without = _load_table(table, data, file)
    restored, res = unpatch_image(t, data, reg, path=str(file), without_table=without)  # type: ignore[arg-type]
    atomic_write(out, restored)
    typer.echo(f"{file}: {res.summary()} -> {out}")
