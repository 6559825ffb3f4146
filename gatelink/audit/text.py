"""The audit as text for a person at a terminal: per input the site table, the near misses and
the summary (verdicts, plan statuses, shapes, confidence, and the gates the binary calls).

Columns are laid out here rather than by rich: an audit of a large image has thousands of rows,
and no line is ever wrapped or cut (a row cut short loses its verdict).
"""

from __future__ import annotations

from collections.abc import Sequence

from .. import __version__
from ..report import _format_line
from . import AuditReport
from .model import VERDICTS

# ANSI colours of the verdicts on a terminal (the HTML report uses the same hues).
VERDICT_ANSI = {
    "patchable": "\x1b[32m", "needs-pad": "\x1b[33m", "needs-sync": "\x1b[31m", "no-plan": "\x1b[35m",
    "unknown-gate": "\x1b[1;34m",
}
_RESET = "\x1b[0m"
_BOLD = "\x1b[1m"


def _counts(d: object) -> str:
    assert isinstance(d, dict)
    return ", ".join(f"{k} {v}" for k, v in d.items() if v) or "none"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: frozenset[str], indent: int,
           paint: dict[int, dict[str, str]] | None = None) -> list[str]:
    """Aligned columns, two spaces apart; ``paint[col][text]`` wraps a cell in a colour code."""
    widths = [len(h) for h in headers]
    for r in rows:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
    pad = " " * indent

    def line(cells: Sequence[str], head: bool = False) -> str:
        parts = []
        for i, c in enumerate(cells):
            text = c.rjust(widths[i]) if headers[i] in right else c.ljust(widths[i])
            if paint and not head and i in paint and c in paint[i]:
                text = paint[i][c] + text + _RESET
            parts.append(text)
        return (pad + "  ".join(parts)).rstrip()

    return [line(headers, True)] + [line(r) for r in rows]


def _summary(out: list[str], summ: dict[str, object], indent: str) -> None:
    out.append(f"{indent}{summ['sites']} sites; verdicts: {_counts(summ['by_verdict'])}")
    out.append(f"{indent}plan status: {_counts(summ['by_plan_status'])}; {summ['syncs']} syncs in all; "
               f"eager {summ['eager']}, lazy {summ['lazy']}")
    out.append(f"{indent}shapes: {_counts(summ['by_shape'])}; confidence: {_counts(summ['by_confidence'])}")
    out.append(f"{indent}near misses: {summ['near_misses']} ({_counts(summ['near_misses_by_reason'])})")
    gates = summ["gates"]
    assert isinstance(gates, list)
    out.append(f"{indent}gates called ({summ['distinct_gates']} distinct):")
    rows = [(g["kind"], str(g["gate"]), g["name"] or "unknown", str(g["sites"]), _counts(g["by_verdict"]))
            for g in gates]
    out.extend(_table(("kind", "gate", "name", "sites", "verdicts"), rows, frozenset({"gate", "sites"}),
                      len(indent) + 2))


SITE_HEADERS = ("address", "offset", "region", "shape", "gate", "kind", "name", "conf", "align", "crosses", "plan",
                "syncs", "load", "verdict")
SITE_RIGHT = frozenset({"address", "offset", "gate", "align", "syncs"})


def render_text(report: AuditReport, width: int = 120, color: bool = False) -> str:
    """``width`` is accepted for symmetry with the other text reports; tables are never cut."""
    bold = (lambda s: _BOLD + s + _RESET) if color else (lambda s: s)
    paint = {SITE_HEADERS.index("verdict"): VERDICT_ANSI} if color else None
    out = [f"gatelink {__version__} audit; fetch model {report.model}; policy {report.policy.name}; "
           f"form {report.form}; eager {report.eager}",
           "gates: " + "; ".join(s.describe() for s in report.gates.sources)]
    for x in report.audits:
        img = x.image
        out.append("")
        out.append(f"{bold(img.path)}: {_format_line(img)}")
        for w in x.warnings:
            out.append(f"  warning: {w}")
        if x.sites:
            rows: list[tuple[str, ...]] = []
            for a in x.sites:
                s = a.site
                rows.append((f"{s.address:#x}", f"{s.file_offset:#x}", s.region, s.shape, str(s.gate),
                             s.gate_kind or "?", s.gate_name or "unknown", s.confidence, str(a.align64),
                             a.crossing_text, a.plan or "-", "-" if a.syncs is None else str(a.syncs),
                             "eager" if a.eager else "lazy", a.verdict))
            out.extend(_table(SITE_HEADERS, rows, SITE_RIGHT, 2, paint))
        if x.near_misses:
            out.append(f"  near misses ({len(x.near_misses)}):")
            near_rows: list[tuple[str, ...]] = [(f"{n.file_offset:#x}", "" if n.address is None else f"{n.address:#x}", n.region, n.shape or "",
                     n.reason, n.detail) for n in x.near_misses]
            out.extend(_table(("offset", "address", "region", "looks like", "reason", "detail"), near_rows,
                              frozenset({"offset", "address"}), 2))
        out.append("  summary:")
        _summary(out, x.summary(), "    ")
    for f in report.failures:
        out.append("")
        out.append(f"{bold(f.path)}: error: {f.problem}")
    if len(report.audits) > 1:
        out.append("")
        out.append(bold(f"all {len(report.audits)} inputs") + ":")
        _summary(out, report.totals(), "  ")
    out.append("")
    out.append("plan: wN@+K stores N bytes at site offset K, sync serialises every core; crosses: the chunk and line "
               "boundaries inside the changing bytes; verdicts: " + ", ".join(VERDICTS) + " (docs/audit.md)")
    return "\n".join(out) + "\n"
