"""Plans as JSON: the contract other tools check independently, and its reader.

One plan::

    {"shape", "bitness", "address", "original" (hex), "final" (hex, a concrete instance),
     "context" (hex, bytes after the site),
     "steps": [{"op": "write", "offset", "data" (hex)} | {"op": "sync"}],
     "model": {"chunk", "order"},
     "policy": {"invalid_selectors": [[lo, hi], ...], "invalid_rules": [...], "call_gates": [...],
                "int_vectors": [...], "ud2": bool, "int3": bool},
     "builder", "safe", "syncs", "writes", ...}

``safe`` is the verdict for this concrete instance. ``template`` describes the plan as a
template (unknown operand bytes named ``off0``, ``sel1``...) and ``template_safe`` its verdict
for every value of the declared ``domains``.
"""

from __future__ import annotations

from typing import Any

from .checker import CheckResult, Checker
from .forms import DEFAULT_CONTEXT
from .model import (
    Atom,
    FetchModel,
    Order,
    PatchSite,
    Plan,
    Policy,
    Step,
    Sync,
    Write,
    atoms_hex,
    atoms_text,
    is_var,
    substitute,
)

# Operand values of the exported concrete instance.
EXAMPLE_VALUES = {"gate": 0x0123, "off": 0x00012340, "sel": 0x0408, "rel": 0x00001230}


def example_values(site: PatchSite) -> dict[str, int]:
    vals = dict(EXAMPLE_VALUES)
    dom = site.domains.get("sel")
    if dom is not None and dom.values is not None and vals["sel"] not in dom.values:
        vals["sel"] = min(dom.values)
    return vals


def instance(site: PatchSite, plan: Plan, values: dict[str, int] | None = None) -> tuple[PatchSite, Plan]:
    """The concrete instance of a template site and plan (context: the C headers' carry check)."""
    vals = values or example_values(site)
    ctx = site.context
    if any(is_var(a) for a in ctx):
        ctx = tuple(DEFAULT_CONTEXT[site.bitness])
    s = PatchSite(site.shape, site.bitness, site.address, substitute(site.original, vals),
                  substitute(site.final, vals), substitute(ctx, vals), site.domains, site.form)
    steps: list[Step] = []
    for st in plan.steps:
        steps.append(Write(st.offset, substitute(st.data, vals)) if isinstance(st, Write) else st)
    return s, Plan(tuple(steps), plan.builder, plan.note)


def plan_json(site: PatchSite, plan: Plan, model: FetchModel, policy: Policy,
              template_result: CheckResult | None = None, instance_result: CheckResult | None = None) -> dict[str, Any]:
    """The contract JSON of one plan (checks the concrete instance if no result is given)."""
    inst_site, inst_plan = instance(site, plan)
    if instance_result is None:
        instance_result = Checker(inst_site, model, policy).check(inst_plan)
    doc: dict[str, Any] = {
        "shape": site.shape,
        "form": site.form,
        "bitness": site.bitness,
        "address": site.address,
        "original": atoms_hex(inst_site.original),
        "final": atoms_hex(inst_site.final),
        "context": atoms_hex(inst_site.context),
        "steps": [s.to_json() for s in inst_plan.steps],
        "model": model.to_json(),
        "policy": policy.to_json(),
        "builder": plan.builder,
        "safe": instance_result.safe,
        "syncs": plan.syncs,
        "writes": plan.writes,
        "note": plan.note,
        "explored": instance_result.explored,
    }
    if not instance_result.safe and instance_result.witness is not None:
        doc["witness"] = instance_result.witness.to_json()
    if site.is_template():
        doc["template"] = {
            "original": atoms_text(site.original),
            "final": atoms_text(site.final),
            "context": atoms_text(site.context),
            "steps": [{"op": "write", "offset": s.offset, "data": atoms_text(s.data)} if isinstance(s, Write)
                      else {"op": "sync"} for s in plan.steps],
        }
        doc["domains"] = {k: d.text for k, d in sorted(site.domains.items())}
        if template_result is not None:
            doc["template_safe"] = template_result.safe
            if not template_result.safe and template_result.witness is not None:
                doc["template_witness"] = template_result.witness.to_json()
    return doc


class PlanFormatError(ValueError):
    """A plan file that does not follow the contract."""


def _hex(d: dict[str, Any], key: str, where: str) -> tuple[Atom, ...]:
    v = d.get(key)
    if not isinstance(v, str):
        raise PlanFormatError(f"{where}: '{key}' must be a hex string")
    try:
        return tuple(bytes.fromhex(v.replace(" ", "")))
    except ValueError:
        raise PlanFormatError(f"{where}: '{key}' is not hex: {v[:40]!r}") from None


def _int(d: dict[str, Any], key: str, where: str, default: int | None = None) -> int:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, str):
            try:
                return int(v, 0)
            except ValueError:
                pass
        raise PlanFormatError(f"{where}: '{key}' must be an integer")
    return v


def read_plan(d: Any, where: str = "plan") -> tuple[PatchSite, Plan, FetchModel, Policy]:
    """A concrete plan from its JSON (as written by :func:`plan_json` or by hand)."""
    if not isinstance(d, dict):
        raise PlanFormatError(f"{where}: a plan is a JSON object")
    bitness = _int(d, "bitness", where, 32)
    if bitness not in (16, 32):
        raise PlanFormatError(f"{where}: bitness must be 16 or 32")
    address = _int(d, "address", where)
    if not 0 <= address < 1 << 32:
        raise PlanFormatError(f"{where}: address out of range")
    original = _hex(d, "original", where)
    final = _hex(d, "final", where)
    context = _hex(d, "context", where) if "context" in d else tuple(DEFAULT_CONTEXT[bitness])
    if len(original) != len(final) or not 1 <= len(original) <= 32:
        raise PlanFormatError(f"{where}: original and final must have the same length, 1..32 bytes")
    if len(context) > 64:
        raise PlanFormatError(f"{where}: context longer than 64 bytes")
    steps_raw = d.get("steps")
    if not isinstance(steps_raw, list) or len(steps_raw) > 64:
        raise PlanFormatError(f"{where}: 'steps' must be a list of at most 64 steps")
    steps: list[Step] = []
    for i, st in enumerate(steps_raw):
        w = f"{where} step {i}"
        if not isinstance(st, dict) or st.get("op") not in ("write", "sync"):
            raise PlanFormatError(f"{w}: each step is {{'op': 'write', 'offset', 'data'}} or {{'op': 'sync'}}")
        if st["op"] == "sync":
            steps.append(Sync())
        else:
            steps.append(Write(_int(st, "offset", w), _hex(st, "data", w)))
    m = d.get("model")
    if not isinstance(m, dict):
        raise PlanFormatError(f"{where}: 'model' must be {{'chunk', 'order'}}")
    try:
        model = FetchModel(_int(m, "chunk", where), Order(m.get("order")))
    except ValueError as e:
        raise PlanFormatError(f"{where}: bad model: {e}") from None
    pol = d.get("policy", {})
    if not isinstance(pol, dict):
        raise PlanFormatError(f"{where}: 'policy' must be an object")
    try:
        policy = Policy.from_json(pol)
    except (TypeError, ValueError, AssertionError) as e:
        raise PlanFormatError(f"{where}: bad policy: {e}") from None
    site = PatchSite(str(d.get("shape", "?")), bitness, address, original, final, context, {}, str(d.get("form", "far")))
    return site, Plan(tuple(steps), str(d.get("builder", "manual"))), model, policy
