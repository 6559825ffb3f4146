"""The quick path of ``gatelink table --check``: "fresh" from the table's stamp, with nothing but
the standard library loaded.

A build runs ``gatelink table --check`` once per binary on every make, so the answer for a
table that is up to date must cost little beyond the interpreter's own start. ``gatelink
table`` stamps each table with one digest of the whole input file, the options and the gate
lists (:func:`table_stamp`). This module reads the table's header and build info,
recomputes the stamp for the command line it was given, and answers 0 when they are equal.

It answers nothing else: every other case (a different stamp, options it does not handle such
as ``--raw``, ``--embed`` or a source or JSON table, a missing or damaged file)
returns None and the full ``--check`` decides, with its exact reasons and exit codes. So it can
only be fast, never wrong: an equal stamp means the table is what ``gatelink table`` would write
again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import zlib

from .. import __version__

STAMP_VERSION = 1

# docs/table-format.md, "Header"
_MAGIC = b"GLTB"
_HEADER = 160
_MAX_TABLE = 1 << 30  # total_size's bound
_MODEL = re.compile(r"\(?\s*(\d+)\s*[,:]\s*(arbitrary|arb|monotone|mono)\s*\)?", re.IGNORECASE)
_ORDERS = {"arbitrary": "arbitrary", "arb": "arbitrary", "monotone": "monotone", "mono": "monotone"}
_CHUNKS = {1, 2, 4, 8, 16, 32, 64}
_FORMS = ("far", "callgate", "near", "pushcs")
_VALUED = {"--model": "model", "-m": "model", "--form": "form", "--eager": "eager", "--policy": "policy",
           "--selectors": "selectors", "--output": "output", "-o": "output", "--jobs": "jobs", "-j": "jobs",
           "--gates": "gates"}
_REPEATED = ("form", "gates")


def table_stamp(gatelink: str, input_sha256: str, model: str, forms: tuple[str, ...] | list[str], eager: str,
                policy: str, selectors: str, raw: tuple[int, int] | None, gates: tuple[str, ...], body: str) -> str:
    """The stamp ``gatelink table`` writes into a table's build info: one digest of everything
    that decides the table's content (the whole input file, the options, the gate lists, the
    gatelink version) and of the content itself (``body``, :func:`body_sha256`), so that a table
    changed after it was written no longer matches. ``model`` is ``CHUNK,ORDER`` with the order
    spelled out, ``selectors`` the ``--selectors`` text without spaces (empty: the default
    domains), ``raw`` (bitness, base) for a raw image, ``gates`` the gate lists as
    ``path:version``."""
    doc = [STAMP_VERSION, gatelink, input_sha256, model, list(forms), eager, policy, selectors,
           list(raw) if raw is not None else None, list(gates), body]
    return hashlib.sha256(json.dumps(doc, separators=(",", ":")).encode("utf-8")).hexdigest()


def body_sha256(table: bytes) -> str:
    """SHA-256 of a binary table up to its build info (the last section), with the fields that
    depend on the build info zeroed (total size, CRC, build info size): what the stamp covers
    of the table itself."""
    build_off = struct.unpack_from("<I", table, 128)[0]
    body = bytearray(table[:build_off])
    body[8:16] = bytes(8)
    body[132:136] = bytes(4)
    return hashlib.sha256(body).hexdigest()


def quick_main(argv: list[str]) -> int | None:
    """0 when ``argv`` is ``table --check ...`` and every table it names is fresh by its stamp;
    None when the full command line must run."""
    if not argv or argv[0] != "table" or "--check" not in argv:
        return None
    opts: dict[str, list[str]] = {}
    files: list[str] = []
    i = 1
    while i < len(argv):
        a = argv[i]
        if a == "--check" or a == "--sidecar":
            i += 1
            continue
        name, eq, val = a.partition("=")
        if name in _VALUED:
            if not eq:
                if i + 1 >= len(argv):
                    return None
                val = argv[i + 1]
                i += 1
            opts.setdefault(_VALUED[name], []).append(val)
        elif a.startswith("-") and a != "-":
            return None  # an option this path does not handle
        else:
            files.append(a)
        i += 1
    if not files or any(len(v) > 1 for k, v in opts.items() if k not in _REPEATED):
        return None
    output = opts.get("output", [None])[0]
    if output is not None and len(files) != 1:
        return None
    m = _MODEL.fullmatch(opts.get("model", ["8,arbitrary"])[0].strip())
    if m is None or int(m.group(1)) not in _CHUNKS:
        return None
    model = f"{int(m.group(1))},{_ORDERS[m.group(2).lower()]}"
    forms = tuple(f.strip() for v in opts.get("form", ["far"]) for f in v.split(",") if f.strip())
    if not forms or len(set(forms)) != len(forms) or any(f not in _FORMS for f in forms):
        return None
    eager = opts.get("eager", ["certain"])[0]
    policy = opts.get("policy", ["rdos"])[0]
    if eager not in ("certain", "all", "none") or policy not in ("rdos", "strict"):
        return None
    selectors = opts.get("selectors", [""])[0].replace(" ", "")
    gates = _gates_identity(opts.get("gates", []))
    if gates is None:
        return None
    for f in files:
        if not _fresh(f, output if output is not None else f + ".gltab", model, forms, eager, policy, selectors, gates):
            return None
    return 0


def _gates_identity(paths: list[str]) -> tuple[str, ...] | None:
    """The gate lists' ``path:version``, as :func:`gatelink.gates.identity` gives them: the
    bundled list, then each ``--gates`` file, versioned by the digest of its bytes. (A file that
    does not parse never got into a table, so an equal digest means one that did.)"""
    bundled = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "rdos-gates.csv")
    sources = [("bundled", bundled)]
    if paths:
        import pathlib  # only here: without --gates the quick path does not pay for it

        # Named as the full command line names them, str(Path(p)): "./g.csv" is "g.csv".
        sources += [(str(pathlib.PurePath(p)), p) for p in paths]
    out = []
    for name, path in sources:
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
        except OSError:
            return None
        out.append(f"{name}:sha256:{hashlib.sha256(raw).hexdigest()[:12]}")
    return tuple(out)


def _fresh(image_path: str, table_path: str, model: str, forms: tuple[str, ...], eager: str, policy: str,
           selectors: str, gates: tuple[str, ...]) -> bool:
    try:
        with open(table_path, "rb") as fh:
            table = fh.read(_MAX_TABLE + 1)
    except OSError:
        return False
    if (not _HEADER <= len(table) <= _MAX_TABLE or table[:4] != _MAGIC
            or struct.unpack_from("<H", table, 4)[0] != 1):
        return False
    try:
        # A sidecar's identity is the whole file: its size is in the header (file_size), so a
        # binary of another size is stale without reading it.
        if os.path.getsize(image_path) != struct.unpack_from("<Q", table, 24)[0]:
            return False
        with open(image_path, "rb") as fh:
            image = fh.read()
    except OSError:
        return False
    total, crc = struct.unpack_from("<II", table, 8)
    if total != len(table) or zlib.crc32(table[:12] + b"\0\0\0\0" + table[16:]) != crc:
        return False
    build_off, build_size = struct.unpack_from("<II", table, 128)
    if not _HEADER <= build_off <= build_off + build_size <= len(table):
        return False
    try:
        build = json.loads(table[build_off : build_off + build_size].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    if not isinstance(build, dict) or not isinstance(build.get("stamp"), str) or build.get("gatelink") != __version__:
        return False
    want = table_stamp(__version__, hashlib.sha256(image).hexdigest(), model, forms, eager, policy, selectors, None,
                       gates, body_sha256(table))
    return bool(build["stamp"] == want)
