"""The patch table: every gate site of an image with its proven plans, for a loader or a fault
handler (``docs/table-format.md``).

``build_table(scan_result)`` makes one; the runtime (:mod:`gatelink.runtime`) applies it.
"""

from __future__ import annotations

from .build import EAGER_POLICIES, build_table, identity_of, is_eager
from .model import (
    FLAG_EAGER,
    FLAG_LAZY,
    FLAG_NEEDS_SYNC,
    FLAG_PADDED,
    FORMAT_VERSION,
    TABLE_FORMS,
    Identity,
    PatchTable,
    PlanStep,
    PlanTemplate,
    TableRegion,
    TableSite,
)

__all__ = [
    "EAGER_POLICIES", "FLAG_EAGER", "FLAG_LAZY", "FLAG_NEEDS_SYNC", "FLAG_PADDED", "FORMAT_VERSION",
    "TABLE_FORMS", "Identity", "PatchTable", "PlanStep", "PlanTemplate", "TableRegion", "TableSite",
    "build_table", "identity_of", "is_eager",
]
