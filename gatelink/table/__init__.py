"""The patch table: every gate site of an image with its proven plans, for a loader or a fault
handler (``docs/table-format.md``).

``build_table(scan_result)`` makes one; ``write_table`` / ``read_table`` encode and decode the
binary format, ``table_json`` / ``read_json`` its JSON mirror; ``check_identity`` tells whether
a table belongs to an image; the runtime (:mod:`gatelink.runtime`) applies it.

``build_table`` and its helpers (which pull in the planner) are imported on first use, so that
reading and checking a table stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .binary import TableError, read_table, write_table
from .check import check_identity, identity_problems
from .model import (
    FLAG_EAGER,
    FLAG_LAZY,
    FLAG_NEEDS_SYNC,
    FLAG_PADDED,
    FORMAT_VERSION,
    TABLE_FORMS,
    BuildInfo,
    Identity,
    PatchTable,
    PlanStep,
    PlanTemplate,
    TableRegion,
    TableSite,
)

if TYPE_CHECKING:
    from .build import EAGER_POLICIES, build_table, identity_of, is_eager
    from .jsonform import read_json, table_json

_LAZY = {
    "EAGER_POLICIES": ".build", "build_table": ".build", "identity_of": ".build", "is_eager": ".build",
    "read_json": ".jsonform", "table_json": ".jsonform",
}


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(mod, __name__), name)


__all__ = [
    "EAGER_POLICIES", "FLAG_EAGER", "FLAG_LAZY", "FLAG_NEEDS_SYNC", "FLAG_PADDED", "FORMAT_VERSION",
    "TABLE_FORMS", "BuildInfo", "Identity", "PatchTable", "PlanStep", "PlanTemplate", "TableError", "TableRegion",
    "TableSite", "build_table", "check_identity", "identity_of", "identity_problems", "is_eager", "read_json",
    "read_table", "table_json", "write_table",
]
