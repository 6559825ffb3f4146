"""The audit as JSON (``docs/audit.md``, "JSON"): the machine contract, one record per line."""

from __future__ import annotations

import json
from collections.abc import Iterable
from itertools import chain

from .. import __version__
from ..report import _RECORD
from . import AuditReport

JSON_SCHEMA_VERSION = 1

_CONTAINERS = (dict, list)


def _records(doc: list[object]) -> bool:
    """A non-empty list of dicts whose values are scalars, lists of scalars or dicts of scalars:
    one line each. (C-level iteration where it can: an audit has millions of values.)"""
    if not doc or not all(type(x) is dict for x in doc):
        return False
    values: Iterable[object] = chain.from_iterable(map(dict.values, doc))  # type: ignore[arg-type]
    nested = [v for v in values if type(v) is list or type(v) is dict]
    inner = chain.from_iterable(v.values() if isinstance(v, dict) else v for v in nested)  # type: ignore[union-attr]
    return not any(issubclass(t, _CONTAINERS) for t in set(map(type, inner)))


def _dumps(doc: object, depth: int = 0) -> str:
    """Indented by structure, each record (a dict inside a list) on a line of its own: readable,
    grep-friendly, and fast (records go through the C encoder)."""
    pad = " " * (depth + 1)
    if isinstance(doc, dict):
        if not doc:
            return "{}"
        items = [f"{pad}{json.dumps(k)}: {_dumps(v, depth + 1)}" for k, v in doc.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * depth + "}"
    if isinstance(doc, list) and _records(doc):
        return "[\n" + ",\n".join(pad + _RECORD(x) for x in doc) + "\n" + " " * depth + "]"
    if isinstance(doc, list) and any(isinstance(x, (dict, list)) for x in doc):
        return "[\n" + ",\n".join(pad + _dumps(x, depth + 1) for x in doc) + "\n" + " " * depth + "]"
    return _RECORD(doc)


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
    return _dumps(audit_document(report)) + "\n"
