"""Patch plans and their proof (docs/safety.md).

``make_site`` gives a site template for a shape and final form; builders give plans; the
checker proves them under a fetch model or returns a witness; synthesis finds the cheapest
safe plan.
"""

from __future__ import annotations

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

__all__ = [
    "FORMS", "RDOS_POLICY", "STANDARD_MODELS", "STRICT_POLICY", "SYNC", "CheckResult", "Checker",
    "Domain", "FetchModel", "FormError", "Order", "PatchSite", "Plan", "PlanError", "Policy",
    "SelectorRule", "Step", "Sync", "Witness", "Write", "check", "make_site", "policy_for",
]
