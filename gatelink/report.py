"""Rendering scan results: JSON (the machine contract), CSV and a readable text report.

Every renderer is deterministic: the same results give byte-identical output (no dates, no
absolute paths beyond what the caller passed, stable ordering).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from . import __version__
from .gates import GateDB
from .image import Image
from .jsonfmt import dumps
from .scan import ScanResult

JSON_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class InputFailure:
    path: str
    error: str


UNKNOWN_SHOWN = 24  # unknown gate numbers listed in the text summary


def _image_json(img: Image) -> dict[str, object]:
    return {
        "regions": [
            {"name": r.name, "kind": r.kind.value, "file_offset": r.file_offset, "address": r.address,
             "size": r.size, "bitness": r.bitness, "note": r.note}
            for r in img.regions
        ],
        "facts": img.facts,
    }


def scan_json(results: Sequence[ScanResult], failures: Sequence[InputFailure], db: GateDB,
              rendered: Sequence[str] | None = None) -> str:
    """The JSON report. ``rendered``: each result's entry already made by
    :func:`scan_json_input` (a batch renders them in its worker processes)."""
    entries = list(rendered) if rendered is not None else [scan_json_input(r) for r in results]
    head = {"gatelink": __version__, "schema": JSON_SCHEMA_VERSION, "gate_database": db.describe()}
    out = "{\n" + "".join(f" {json.dumps(k)}: {dumps(v, 1)},\n" for k, v in head.items())
    out += ' "inputs": ' + ("[\n" + ",\n".join("  " + e for e in entries) + "\n ]" if entries else "[]") + ",\n"
    out += ' "errors": ' + dumps([{"path": f.path, "error": f.error} for f in failures], 1) + "\n}"
    return out + "\n"


def scan_json_input(r: ScanResult) -> str:
    """One input's entry of the JSON report, as it appears inside ``"inputs"``."""
    return dumps({
        "path": r.image.path,
        "format": r.image.format,
        **_image_json(r.image),
        "warnings": r.warnings,
        "summary": r.summary(),
        "sites": [s.to_json() for s in r.sites],
        "near_misses": [n.to_json() for n in r.near_misses],
    }, 2)


CSV_COLUMNS = (
    "record", "path", "file_offset", "address", "region", "bitness", "shape", "length", "gate",
    "selector", "gate_kind", "gate_name", "confidence", "reason", "detail",
)


def scan_csv(results: Sequence[ScanResult], include_near_misses: bool) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in results:
        for s in r.sites:
            w.writerow(["site", r.image.path, s.file_offset, f"{s.address:#x}", s.region, s.bitness, s.shape,
                        s.length, s.gate, "" if s.selector is None else s.selector, s.gate_kind or "",
                        s.gate_name or "", s.confidence, "", s.evidence])
        if include_near_misses:
            for n in r.near_misses:
                w.writerow(["near_miss", r.image.path, n.file_offset,
                            "" if n.address is None else f"{n.address:#x}", n.region, "", n.shape or "",
                            "", "", "", "", "", "", n.reason, n.detail])
    return out.getvalue()


def scan_text(results: Sequence[ScanResult], failures: Sequence[InputFailure], db: GateDB,
              include_near_misses: bool, width: int = 120, color: bool = False) -> str:
    buf = io.StringIO()
    con = Console(file=buf, width=width, color_system="standard" if color else None, force_terminal=color,
                  highlight=False, soft_wrap=False)
    con.print(f"gatelink {__version__}; gates: " + "; ".join(s.describe() for s in db.sources))
    for r in results:
        img = r.image
        con.print()
        con.print(f"[bold]{img.path}[/bold]: {_format_line(img)}")
        for w in r.warnings:
            con.print(f"  warning: {w}")
        if r.sites:
            t = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
            for col in ("address", "offset", "region", "shape", "gate", "kind", "name", "confidence"):
                t.add_column(col, justify="right" if col in ("address", "offset", "gate") else "left")
            for s in r.sites:
                t.add_row(f"{s.address:#x}", f"{s.file_offset:#x}", s.region, s.shape, str(s.gate),
                          s.gate_kind or "?", s.gate_name or "[italic]unknown[/italic]", s.confidence)
            con.print(t)
        summ = r.summary()
        con.print(f"  {summ['sites']} sites; shapes: {_counts(summ['by_shape'])}; "
                  f"kinds: {_counts(summ['by_gate_kind'])}; confidence: {_counts(summ['by_confidence'])}")
        unknown = summ["unknown_gates"]
        assert isinstance(unknown, list)
        if unknown:
            shown = ", ".join(f"{u['kind']} {u['gate']}" for u in unknown[:UNKNOWN_SHOWN])
            more = f" and {len(unknown) - UNKNOWN_SHOWN} more (all in --format json)" if len(unknown) > UNKNOWN_SHOWN else ""
            con.print(f"  unknown gates ({len(unknown)}): {shown}{more}")
        con.print(f"  near misses: {summ['near_misses']} ({_counts(summ['near_misses_by_reason'])})")
        if include_near_misses and r.near_misses:
            t = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
            for col in ("offset", "address", "region", "looks like", "reason", "detail"):
                t.add_column(col)
            for n in r.near_misses:
                t.add_row(f"{n.file_offset:#x}", "" if n.address is None else f"{n.address:#x}", n.region,
                          n.shape or "", n.reason, n.detail)
            con.print(t)
    for f in failures:
        con.print()
        con.print(f"[bold]{f.path}[/bold]: error: {f.error}")
    return buf.getvalue()


def _format_line(img: Image) -> str:
    f = img.facts
    bits = []
    if img.format.startswith("pe"):
        bits.append(f"{img.format}, {f.get('machine')}")
        bits.append("RDOS subsystem 0xAD05" if f.get("rdos") else f"subsystem {f.get('subsystem_name')}")
    elif img.format.startswith("rdv"):
        bits.append(f"{img.format} driver, entry {f.get('entry_point', 0):#x}, code sel {f.get('code_selector', 0):#x}")
    elif img.format == "bootimg":
        bits.append(f"boot image, {len(f.get('objects', []))} objects, {f.get('devices')} drivers")  # type: ignore[arg-type]
    else:
        bits.append(f"{img.format} image at {f.get('base', 0):#x}")
    code = [r for r in img.code_regions]
    bits.append(f"{len(code)} code region{'s' if len(code) != 1 else ''}")
    return ", ".join(bits)


def _counts(d: object) -> str:
    assert isinstance(d, dict)
    return ", ".join(f"{k} {v}" for k, v in d.items()) or "none"
