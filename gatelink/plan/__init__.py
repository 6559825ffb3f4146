"""Patch plans and their proof (docs/safety.md).

``make_site`` gives a site template for a shape and final form; builders give plans; the
checker proves them under a fetch model or returns a witness; synthesis finds the cheapest
safe plan; :func:`.select.choose` the plan for one concrete site.

The names below load on first use, so code that needs only the data model
(:mod:`.model`, e.g. ``gatelink table --check``) does not import the decoder.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .checker import Checker, CheckResult, PlanError, Witness, check
    from .forms import FORMS, FormError, make_site, policy_for
    from .model import (
        RDOS_POLICY,
        STANDARD_MODELS,
        STRICT_POLICY,
        SYNC,
        Domain,
        FetchModel,
        Order,
        PatchSite,
        Plan,
        Policy,
        SelectorRule,
        Step,
        Sync,
        Write,
    )

_LAZY = {
    **{n: ".checker" for n in ("Checker", "CheckResult", "PlanError", "Witness", "check")},
    **{n: ".forms" for n in ("FORMS", "FormError", "make_site", "policy_for")},
    **{n: ".model" for n in ("RDOS_POLICY", "STANDARD_MODELS", "STRICT_POLICY", "SYNC", "Domain", "FetchModel",
                             "Order", "PatchSite", "Plan", "Policy", "SelectorRule", "Step", "Sync", "Write")},
}


def __getattr__(name: str) -> Any:
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'gatelink.plan' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "FORMS", "RDOS_POLICY", "STANDARD_MODELS", "STRICT_POLICY", "SYNC", "CheckResult", "Checker",
    "Domain", "FetchModel", "FormError", "Order", "PatchSite", "Plan", "PlanError", "Policy",
    "SelectorRule", "Step", "Sync", "Witness", "Write", "check", "make_site", "policy_for",
]
