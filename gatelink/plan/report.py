"""Rendering plans, proofs and the verify matrix (text, JSON, Markdown)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..decode import format_bytes
from ..errors import InputError
from ..fsutil import read_input
from .builders import BUILDERS
from .checker import Checker, CheckResult, PlanError
from .export import PlanFormatError, instance, plan_json, read_plan
from .forms import FormError, make_site, policy_for
from .matrix import BUILDER_NAMES, MatrixResult
from .model import FetchModel, PatchSite, Plan, Policy, Write, atoms_text, is_var
from .synth import SynthResult, synthesize


@dataclass
class PlanRun:
    builder: str
    model: FetchModel
    policy: Policy
    site: PatchSite | None
    plan: Plan | None
    result: CheckResult | None
    note: str = ""
    synth: SynthResult | None = None


def run_plans(shape: str, form: str, address: int, models: Sequence[FetchModel], builders: Sequence[str],
              policy: Policy, bitness: int | None = None) -> list[PlanRun]:
    try:
        site = make_site(shape, form, address, bitness)
    except FormError as e:
        from ..errors import UsageError

        raise UsageError(str(e)) from None
    runs = []
    for m in models:
        for name in builders:
            if name == "synthesis":
                sr = synthesize(site, m, policy_for(site, policy))
                if sr.plan is None:
                    runs.append(PlanRun(name, m, policy, site, None, None, sr.proof, sr))
                    continue
                pol = policy_for(site, policy)
                res = Checker(site, m, pol).check(sr.plan)
                runs.append(PlanRun(name, m, pol, site, sr.plan, res, sr.proof, sr))
                continue
            built = BUILDERS[name](site, m)
            if built is None:
                runs.append(PlanRun(name, m, policy, None, None, None, "does not apply to this shape and form"))
                continue
            pol = policy_for(built.site, policy)
            res = Checker(built.site, m, pol).check(built.plan)
            runs.append(PlanRun(name, m, pol, built.site, built.plan, res, built.plan.note))
    return runs


def _state_lines(site: PatchSite, plan: Plan) -> list[str]:
    """Every state of the plan, decoded (unknown operand bytes shown as a representative 00)."""
    lines = []
    states = plan.states(site)
    syncs = set(plan.sync_points())
    steps = [s for s in plan.steps if isinstance(s, Write)]
    for k, st in enumerate(states):
        buf = bytes(0 if is_var(a) else a for a in st)
        dec = "; ".join(t for _, _, t in format_bytes(buf, site.bitness, site.address))
        how = "original" if k == 0 else f"write {steps[k - 1].offset}:{atoms_text(steps[k - 1].data)}"
        lines.append(f"    S{k}  {atoms_text(st):<44}  {dec}   [{how}]")
        if k in syncs and k < len(states) - 1:
            lines.append("        -- sync --")
    return lines


def plans_text(runs: Sequence[PlanRun]) -> str:
    out = []
    first = next((r.site for r in runs if r.site is not None), None)
    if first is not None:
        out.append(f"shape {first.shape}, form {first.form}, {first.bitness}-bit, site at {first.address:#x} "
                   f"(alignment {first.address % 64}), {first.length} bytes")
        out.append(f"  original {atoms_text(first.original)}   final {atoms_text(first.final)}")
        out.append("  domains: " + ", ".join(f"{k} {d.text}" for k, d in sorted(first.domains.items())))
    for r in runs:
        out.append("")
        head = f"{r.builder} under {r.model}"
        if r.plan is None:
            out.append(f"{head}: {r.note}")
            continue
        assert r.result is not None and r.site is not None
        verdict = "SAFE" if r.result.safe else "UNSAFE"
        out.append(f"{head}: {verdict}, {r.plan.syncs} syncs, {r.plan.writes} writes ({r.plan.note})")
        out.append(f"  policy: {r.policy.describe()}")
        out.extend(_state_lines(r.site, r.plan))
        if r.synth is not None:
            out.append(f"  minimality: {r.synth.proof}")
        out.append(f"  explored {r.result.explored} instruction fetches in {r.result.situations} situations")
        if not r.result.safe and r.result.witness is not None:
            out.append("  witness: " + r.result.witness.describe().replace("\n", "\n  "))
    return "\n".join(out) + "\n"


def plans_json(runs: Sequence[PlanRun]) -> str:
    docs = []
    for r in runs:
        if r.plan is None or r.site is None:
            docs.append({"builder": r.builder, "model": r.model.to_json(), "applicable": r.plan is not None or r.synth is not None,
                         "note": r.note})
            continue
        d = plan_json(r.site, r.plan, r.model, r.policy, template_result=r.result)
        if r.synth is not None:
            d["minimality"] = r.synth.proof
        docs.append(d)
    return json.dumps({"plans": docs}, indent=1) + "\n"


# -- verify --plan ---------------------------------------------------------------------------


def verify_file(path: Path, fmt: str) -> tuple[str, bool]:
    raw = read_input(path)
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(str(path), f"not JSON: {e}") from None
    items = doc.get("plans") if isinstance(doc, dict) and "plans" in doc else doc
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list) or not items:
        raise InputError(str(path), "expected a plan object, a list of plans, or {\"plans\": [...]}")
    results = []
    for i, item in enumerate(items):
        where = f"plan {i}"
        try:
            site, plan, model, policy = read_plan(item, where)
            res = Checker(site, model, policy).check(plan)
        except (PlanFormatError, PlanError) as e:
            raise InputError(str(path), str(e)) from None
        results.append((site, plan, model, policy, res))
    all_safe = all(r[4].safe for r in results)
    if fmt == "json":
        out = []
        for site, plan, model, policy, res in results:
            out.append(plan_json(site, plan, model, policy, instance_result=res))
        return json.dumps({"plans": out, "all_safe": all_safe}, indent=1) + "\n", all_safe
    lines = []
    for i, (site, plan, model, policy, res) in enumerate(results):
        verdict = "SAFE" if res.safe else "UNSAFE"
        lines.append(f"plan {i} ({plan.builder}, shape {site.shape}, {site.address:#x}, {model}): {verdict}, "
                     f"{plan.syncs} syncs, {plan.writes} writes; {res.explored} fetches explored")
        lines.extend(_state_lines(site, plan))
        if not res.safe and res.witness is not None:
            lines.append("  witness: " + res.witness.describe().replace("\n", "\n  "))
    return "\n".join(lines) + "\n", all_safe


# -- the matrix ------------------------------------------------------------------------------


def _summary(res: MatrixResult) -> dict[tuple[str, str, str], dict[str, Any]]:
    agg: dict[tuple[str, str, str], dict[str, Any]] = defaultdict(lambda: {"applicable": 0, "safe": 0, "syncs": set(), "writes": set()})
    for c in res.cells:
        a = agg[(c.shape, str(c.model), c.builder)]
        if not c.applicable:
            continue
        a["applicable"] += 1
        if c.safe:
            a["safe"] += 1
            a["syncs"].add(c.syncs)
            a["writes"].add(c.writes)
    return agg


def _rng(values: set[int]) -> str:
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def _cell_text(a: dict[str, Any], short: bool = False) -> str:
    if a["applicable"] == 0:
        return "n/a"
    if a["safe"] == 0:
        return "unsafe" if short else f"unsafe {a['applicable']}/{a['applicable']}"
    if a["safe"] == a["applicable"]:
        return f"safe s{_rng(a['syncs'])} w{_rng(a['writes'])}"
    return f"safe {a['safe']}/{a['applicable']} s{_rng(a['syncs'])}"


def _layout(res: MatrixResult) -> tuple[list[str], list[str], list[str]]:
    shapes = list(dict.fromkeys(c.shape for c in res.cells))
    models = list(dict.fromkeys(str(c.model) for c in res.cells))
    builders = [b for b in BUILDER_NAMES if any(c.builder == b for c in res.cells)]
    return shapes, models, builders


def matrix_text(res: MatrixResult) -> str:
    agg = _summary(res)
    shapes, models, builders = _layout(res)
    aligns = len({c.alignment for c in res.cells})
    out = [f"verify matrix: {len(shapes)} shapes x {aligns} alignments x {len(models)} models x {len(builders)} builders "
           f"= {len(res.cells)} plans; {res.classes} classes, {res.checks} checks, {res.explored} instruction fetches "
           f"explored, {res.seconds:.1f} s",
           "cell: safe alignments (of those where the builder applies), sync count s, write count w"]
    w = max(len(b) for b in builders) + 2
    for s in shapes:
        out.append("")
        out.append(f"shape {s}")
        out.append("  " + "model".ljust(16) + "".join(b.ljust(max(w, 22)) for b in builders))
        for m in models:
            out.append("  " + m.ljust(16) + "".join(_cell_text(agg[(s, m, b)]).ljust(max(w, 22)) for b in builders))
    return "\n".join(out) + "\n"


def matrix_json(res: MatrixResult) -> str:
    agg = _summary(res)
    shapes, models, builders = _layout(res)
    summary = [
        {"shape": s, "model": m, "builder": b, "applicable": agg[(s, m, b)]["applicable"], "safe": agg[(s, m, b)]["safe"],
         "syncs": sorted(agg[(s, m, b)]["syncs"]), "writes": sorted(agg[(s, m, b)]["writes"])}
        for s in shapes for m in models for b in builders
    ]
    doc = {"cells": [c.to_json() for c in res.cells], "summary": summary, "classes": res.classes,
           "checks": res.checks, "explored": res.explored}
    return json.dumps(doc, indent=None, separators=(",", ":")) + "\n"


def matrix_plans_json(res: MatrixResult, policy: Policy) -> str:
    """Every applicable plan of the matrix in the plan contract format (concrete instances)."""
    out = []
    for c in res.cells:
        if c.plan is None or c.site is None:
            continue
        pol = policy_for(c.site, policy)
        out.append(plan_json(c.site, c.plan, c.model, pol))
    return json.dumps({"plans": out}, indent=None, separators=(",", ":")) + "\n"


def matrix_markdown(res: MatrixResult) -> str:
    """The matrix as a Markdown table per model (for docs/safety.md)."""
    agg = _summary(res)
    shapes, models, builders = _layout(res)
    lines = []
    for m in models:
        lines.append(f"#### Model {m}")
        lines.append("")
        lines.append("| shape | " + " | ".join(builders) + " |")
        lines.append("|---|" + "---|" * len(builders))
        for s in shapes:
            lines.append(f"| {s} | " + " | ".join(_cell_text(agg[(s, m, b)], short=True) for b in builders) + " |")
        lines.append("")
    return "\n".join(lines)


__all__ = ["instance"]
