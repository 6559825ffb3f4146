"""The audit as JSON (``docs/audit.md``, "JSON"): the machine contract, one record per line."""

from __future__ import annotations

from .. import __version__
from ..jsonfmt import dumps, shallow_records
from . import AuditReport

JSON_SCHEMA_VERSION = 1


def audit_document(report: AuditReport) -> dict[str, object]:
    """The JSON document as Python objects (what :func:`render_json` writes)."""
    inputs = []
    for a in report.audits:
        img = a.image
        inputs.append({
            "path": img.path,
            "format": img.format,
            "regions": [
                {"name": r.name, "kind": r.kind.value, "file_offset": r.file_offset, "address": r.address,
                 "size": r.size, "bitness": r.bitness}
                for r in img.regions
            ],
            "warnings": a.warnings,
            "summary": a.summary(),
            "sites": [s.to_json() for s in a.sites],
            "near_misses": [n.to_json() for n in a.near_misses],
        })
    return {
        "gatelink": __version__,
        "schema": JSON_SCHEMA_VERSION,
        "report": "audit",
        "settings": report.settings(),
        "gate_database": report.gates.describe(),
        "inputs": inputs,
        "totals": report.totals(),
        "errors": [{"path": f.path, "error": f.problem} for f in report.failures],
    }


def render_json(report: AuditReport) -> str:
    return dumps(audit_document(report), records=shallow_records) + "\n"
