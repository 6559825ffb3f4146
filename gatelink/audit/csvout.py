"""The audit as CSV: one row per site and per near miss (``record`` says which)."""

from __future__ import annotations

import csv
import io

from . import AuditReport

CSV_COLUMNS = (
    "record", "path", "file_offset", "address", "region", "bitness", "shape", "length", "gate", "gate_kind",
    "gate_name", "confidence", "align64", "changed", "chunk_crossings", "line_crossings", "plan", "writes",
    "syncs", "eager", "plan_status", "verdict", "pad_shift", "pad_action", "reason", "detail",
)


def _ints(xs: tuple[int, ...]) -> str:
    return " ".join(str(x) for x in xs)


def render_csv(report: AuditReport) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for x in report.audits:
        path = x.image.path
        for a in x.sites:
            s = a.site
            w.writerow([
                "site", path, s.file_offset, f"{s.address:#x}", s.region, s.bitness, s.shape, s.length, s.gate,
                s.gate_kind or "", s.gate_name or "", s.confidence, a.align64, f"{a.changed[0]}-{a.changed[1]}",
                _ints(a.chunk_crossings), _ints(a.line_crossings), a.plan, "" if a.writes is None else a.writes,
                "" if a.syncs is None else a.syncs, "eager" if a.eager else "lazy", a.plan_status, a.verdict,
                "" if a.pad_shift is None else a.pad_shift, a.pad_action, "", a.detail,
            ])
        for n in x.near_misses:
            w.writerow([
                "near_miss", path, n.file_offset, "" if n.address is None else f"{n.address:#x}", n.region, "",
                n.shape or "", "", "", "", "", "", "" if n.address is None else n.address % 64, "", "", "", "",
                "", "", "", "", "", "", "", n.reason, n.detail,
            ])
    for f in report.failures:
        w.writerow(["error", f.path] + [""] * (len(CSV_COLUMNS) - 4) + ["", f.problem])
    return out.getvalue()
