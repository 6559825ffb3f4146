"""Pad and align (``gatelink pad``): rewrite a binary so that every gate site can be patched
lazily with no sync under a chosen fetch model (docs/pad.md).

Entry point::

    from gatelink.pad import pad
    result = pad(image, FetchModel(8, Order.ARBITRARY))
    result.data          # the new file's bytes
    result.actions       # per site: kept / reshaped / moved / refused, with the reason
    result.to_json()     # the report contract
"""

from __future__ import annotations

from .core import (
    ACTIONS,
    KEPT,
    MOVED,
    REFUSALS,
    REFUSED,
    RESHAPED,
    AreaUse,
    PadResult,
    SiteAction,
    pad,
)
from .layout import Requirements

__all__ = [
    "ACTIONS", "KEPT", "MOVED", "REFUSALS", "REFUSED", "RESHAPED", "AreaUse", "PadResult", "Requirements",
    "SiteAction", "pad",
]
