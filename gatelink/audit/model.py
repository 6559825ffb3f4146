"""The audit of one image: every gate site with its alignment, chosen plan and verdict.

A verdict answers the question an OS developer asks of each site: can the kernel patch it
while other cores run it, and at what price? It rests on the cheapest proven plan for the site
(:func:`gatelink.plan.select.choose`) under the fetch model the user states, and on whether
moving the site (``gatelink pad``) would buy a plan without syncs.

Verdicts (``docs/audit.md``), the first that applies:

``unknown-gate``  the gate number is not in the gate database (the kernel will resolve it to
                  the undefined-gate handler, which returns with carry set)
``no-plan``       no proven plan for the final form (the form does not fit the shape, or nothing
                  is safe within the synthesis bound)
``needs-sync``    the plan needs a sync (an IPI to every core), and ``gatelink pad`` (asked with
                  the same model, form and policy, writing nothing) refuses the site: something
                  refers inside it, it is too short for a jump, no address gives a sync-free
                  plan under the model, ...; pad's reason is the detail
``needs-pad``     the plan needs a sync here, and ``gatelink pad`` would move or reshape the site
                  to where its plan needs none
``patchable``     the plan needs no sync

Without pad's answer (``audit(..., pad=False)``) the rule falls back to alignments alone:
``needs-pad`` when some alignment mod 64 of the shape has a sync-free plan under the model,
``needs-sync`` when none has.

The plan status (``no-plan``, ``needs-sync``, ``needs-pad``, ``patchable``) is kept as well, so
an unknown gate that needs a sync is still found by ``--fail-on needs-sync``.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..catalog import shape as shape_by_id
from ..errors import GatelinkError, UsageError
from ..image import Image
from ..plan.forms import FormError
from ..plan.model import LINE, RDOS_POLICY, FetchModel, Plan, Policy, Write
from ..plan.select import DEFAULT_MODEL, choose
from ..scan import NearMiss, ScanResult, Site
from ..table.build import EAGER_POLICIES, is_eager

if TYPE_CHECKING:
    from ..pad import SiteAction

PATCHABLE = "patchable"
NEEDS_PAD = "needs-pad"
NEEDS_SYNC = "needs-sync"
NO_PLAN = "no-plan"
UNKNOWN_GATE = "unknown-gate"

# Most severe first: the order verdicts are decided in and listed in summaries.
VERDICTS = (UNKNOWN_GATE, NO_PLAN, NEEDS_SYNC, NEEDS_PAD, PATCHABLE)
PLAN_STATUSES = (NO_PLAN, NEEDS_SYNC, NEEDS_PAD, PATCHABLE)

# What each verdict means, in one line (reports, SARIF rule texts, docs).
VERDICT_HELP = {
    UNKNOWN_GATE: "the gate number is not in the gate database: the kernel resolves it to the "
                  "undefined-gate handler, which returns with carry set",
    NO_PLAN: "no proven patch plan for the final form: the form does not fit the shape, or no plan "
             "is safe within the synthesis bound",
    NEEDS_SYNC: "the cheapest proven plan needs a sync (an IPI serialising every core) and no "
                "alignment of this shape avoids it under the fetch model: padding cannot help",
    NEEDS_PAD: "the cheapest proven plan needs a sync here, but the shape has a sync-free plan at "
               "another alignment: gatelink pad can move the site there",
    PATCHABLE: "a proven plan patches the site without any sync",
}

# What each near-miss reason means (docs/scanning.md, "Near misses").
REASON_HELP = {
    "inside-instruction": "the stub bytes start inside another instruction (an operand, an immediate)",
    "no-boundary-evidence": "no proven or heuristic instruction boundary reaches the bytes: data "
                            "after a ret, a jump table, text; if it is a stub it is patched on "
                            "first fault only and is in no patch table",
    "non-code-region": "stub bytes in a data section or object",
    "selector-out-of-range": "a stub form with a selector 0..7 that no shape of that form uses",
    "wrong-bitness": "a 16-bit form in 32-bit code or the reverse: it decodes as a different "
                     "instruction",
    "unknown-form": "a far call to a selector 0..7 at a proven boundary that matches no shape",
    "straddles-region-end": "the stub would run past the end of its code region",
    "64-bit-code": "stub bytes in 64-bit code, where no RDOS stub is expected",
    "relocated-bytes": "a base relocation covers bytes of the stub: they are an address the linker placed",
    "inside-jump-table": "the stub bytes lie in a jump table the scanner read",
    "ambiguous-start": "a shorter stub reading inside a longer one, on heuristic evidence only",
    "not-a-stub": "no stub shape starts at a location the caller gave (verify_sites)",
}


def reason_help(reason: str) -> str:
    """What a near-miss reason means (docs/scanning.md has the full table)."""
    return REASON_HELP.get(reason, f"near miss: {reason} (see docs/scanning.md)")


@dataclass(frozen=True)
class AuditSite:
    """One site of the scan, audited.

    ``align64`` is the site's address mod 64. ``changed`` is the span (first, last) of site
    offsets whose bytes the final form changes; ``chunk_crossings`` and ``line_crossings`` the
    site offsets at which a boundary of the model's fetch chunk, or of a 64-byte line, falls
    inside that span (a boundary at offset ``i`` separates byte ``i - 1`` from byte ``i``).
    ``plan`` is the chosen plan in short notation (``w8@+1`` stores 8 bytes at site offset 1;
    ``sync`` serialises every core); ``pad_shift`` is, for a site that needs a sync, how many
    bytes later it would have to start (1..63) to get a sync-free plan in place (None when no
    alignment helps). ``pad_action`` and ``pad_reason`` are what ``gatelink pad`` would do with
    the site (``kept``, ``moved``, ``reshaped``, ``refused``) and why; empty when pad was not
    asked.
    """

    site: Site
    align64: int
    changed: tuple[int, int]
    chunk_crossings: tuple[int, ...]
    line_crossings: tuple[int, ...]
    plan: str
    writes: int | None
    syncs: int | None
    builder: str
    eager: bool
    plan_status: str
    verdict: str
    pad_shift: int | None
    detail: str
    pad_action: str = ""
    pad_reason: str = ""

    def to_json(self) -> dict[str, object]:
        d = self.site.to_json()
        d.pop("evidence", None)
        d.update({
            "align64": self.align64, "changed": list(self.changed),
            "chunk_crossings": list(self.chunk_crossings), "line_crossings": list(self.line_crossings),
            "plan": self.plan, "writes": self.writes, "syncs": self.syncs, "builder": self.builder,
            "eager": self.eager, "plan_status": self.plan_status, "verdict": self.verdict,
            "pad_shift": self.pad_shift, "pad_action": self.pad_action, "pad_reason": self.pad_reason,
            "detail": self.detail, "evidence": self.site.evidence,
        })
        return d

    @property
    def crossing_text(self) -> str:
        """``chunk+5 line+8``, or ``-`` when the changing bytes cross no boundary."""
        parts = [f"chunk+{i}" for i in self.chunk_crossings if i not in self.line_crossings]
        parts += [f"line+{i}" for i in self.line_crossings]
        return " ".join(parts) or "-"


@dataclass
class Audit:
    """The audit of one scanned image."""

    scan: ScanResult
    model: FetchModel
    policy: Policy
    form: str
    sites: list[AuditSite] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what limited the audit (reported as warnings)

    @property
    def image(self) -> Image:
        return self.scan.image

    @property
    def warnings(self) -> list[str]:
        """The scan's warnings, then the audit's own notes."""
        return [*self.scan.warnings, *self.notes]

    @property
    def near_misses(self) -> list[NearMiss]:
        return self.scan.near_misses

    def summary(self) -> dict[str, object]:
        """Counts per verdict, plan status, shape, confidence, near-miss reason, and the sites per
        gate (the binary's API surface). Every verdict is listed, with 0 where none applies."""
        return summarise(self.sites, self.near_misses)


def summarise(sites: Sequence[AuditSite], near_misses: Sequence[NearMiss]) -> dict[str, object]:
    verdicts = Counter(a.verdict for a in sites)
    statuses = Counter(a.plan_status for a in sites)
    gates: dict[tuple[str, int], list[AuditSite]] = {}
    for a in sites:
        gates.setdefault((a.site.gate_kind or "?", a.site.gate), []).append(a)
    return {
        "sites": len(sites),
        "by_verdict": {v: verdicts.get(v, 0) for v in VERDICTS},
        "by_plan_status": {v: statuses.get(v, 0) for v in PLAN_STATUSES},
        "by_shape": dict(sorted(Counter(a.site.shape for a in sites).items())),
        "by_confidence": dict(sorted(Counter(a.site.confidence for a in sites).items())),
        "eager": sum(1 for a in sites if a.eager),
        "lazy": sum(1 for a in sites if not a.eager),
        "syncs": sum(a.syncs or 0 for a in sites),
        "distinct_gates": len(gates),
        "gates": [
            {"kind": k, "gate": g, "name": v[0].site.gate_name, "sites": len(v),
             "by_verdict": {x: n for x, n in sorted(Counter(a.verdict for a in v).items(),
                                                     key=lambda t: VERDICTS.index(t[0]))}}
            for (k, g), v in sorted(gates.items())
        ],
        "near_misses": len(near_misses),
        "near_misses_by_reason": dict(sorted(Counter(n.reason for n in near_misses).items())),
    }


def plan_text(plan: Plan | None) -> str:
    """``w2@+7 sync w8@+0``: stores as w<bytes>@+<site offset>, syncs as ``sync``."""
    if plan is None:
        return ""
    return " ".join(f"w{len(s.data)}@+{s.offset}" if isinstance(s, Write) else "sync" for s in plan.steps)


@functools.lru_cache(maxsize=4096)
def sync_free_alignments(shape_id: str, bitness: int, form: str, model: FetchModel, policy: Policy) -> frozenset[int]:
    """The alignments (address mod 64) at which a ``shape_id`` site has a proven plan without
    syncs under ``model``: where ``gatelink pad`` could move a site that needs one."""
    out = set()
    for a in range(LINE):
        try:
            c = choose(shape_id, LINE + a, form, model, policy, bitness)
        except FormError:
            return frozenset()
        if c.plan is not None and c.plan.syncs == 0:
            out.add(a)
    return frozenset(out)


def _changing_span(site: Site, form_changed: tuple[int, ...] | None) -> tuple[int, int]:
    if form_changed:
        return min(form_changed), max(form_changed)
    # No plan site to ask: the gate and selector fields are what a patch rewrites.
    s = shape_by_id(site.shape)
    end = (s.sel_at + 2) if s.sel_at is not None else s.gate_at + s.gate_size
    return s.gate_at, end - 1


def _other_forms(site: Site, form: str) -> str:
    from ..plan.forms import FORMS, applicable

    fit = [f for f in FORMS if f not in (form, "undefined") and applicable(site.shape, f, site.bitness)]
    return f"; forms that fit: {', '.join(fit)} (--form)" if fit else "; no final form fits this shape"


def audit_site(site: Site, model: FetchModel = DEFAULT_MODEL, policy: Policy = RDOS_POLICY,
               form: str = "far", eager: str = "certain", pad: SiteAction | None = None) -> AuditSite:
    """The audit of one site (see the module docstring for the verdict rule). ``pad`` is what
    ``gatelink pad`` would do with it; without it, the alignment rule decides."""
    detail = ""
    try:
        chosen = choose(site.shape, site.address, form, model, policy, site.bitness)
    except FormError as e:
        chosen = None
        detail = str(e) + _other_forms(site, form)
    plan = chosen.plan if chosen is not None else None
    lo, hi = _changing_span(site, chosen.site.changed() if chosen is not None else None)
    inner = range(lo + 1, hi + 1)
    chunk_x = tuple(i for i in inner if (site.address + i) % model.chunk == 0)
    line_x = tuple(i for i in inner if (site.address + i) % LINE == 0)
    pad_shift = None
    if plan is None:
        status = NO_PLAN
        if chosen is not None:
            detail = chosen.proof
    elif plan.syncs == 0:
        status = PATCHABLE
    else:
        free = sync_free_alignments(site.shape, site.bitness, form, model, policy)
        align = site.address % LINE
        if free:
            pad_shift = min((a - align) % LINE for a in free)
        here = f"{plan.syncs} sync{'s' if plan.syncs > 1 else ''} here"
        if pad is not None:
            if pad.action in ("moved", "reshaped"):
                status = NEEDS_PAD
                detail = f"{here}; gatelink pad: {pad.action} ({pad.reason})"
            else:
                status = NEEDS_SYNC
                detail = f"{here}; gatelink pad: {pad.action}: {pad.reason}"
        elif free:
            status = NEEDS_PAD
            detail = f"{here}; a sync-free plan {pad_shift} byte{'s' if pad_shift != 1 else ''} later"
        else:
            status = NEEDS_SYNC
            detail = f"every alignment of shape {site.shape} needs a sync under {model}"
    verdict = UNKNOWN_GATE if site.gate_name is None else status
    if verdict == UNKNOWN_GATE:
        detail = f"{site.gate_kind or 'unknown-kind'} gate {site.gate} not in the gate database" + (
            f"; plan: {status}" + (f" ({detail})" if detail else "") if status != PATCHABLE else "")
    return AuditSite(
        site=site, align64=site.address % LINE, changed=(lo, hi), chunk_crossings=chunk_x,
        line_crossings=line_x, plan=plan_text(plan), writes=plan.writes if plan else None,
        syncs=plan.syncs if plan else None, builder=plan.builder if plan else "",
        eager=is_eager(site, eager), plan_status=status, verdict=verdict, pad_shift=pad_shift, detail=detail,
        pad_action=pad.action if pad is not None else "", pad_reason=pad.reason if pad is not None else "",
    )


def pad_actions(scan: ScanResult, model: FetchModel, policy: Policy, form: str) -> dict[int, SiteAction]:
    """What ``gatelink pad`` would do with each site (by file offset): pad asked with the same
    model, form and policy, on the scan already made, writing nothing and scanning nothing."""
    from ..pad import pad

    res = pad(scan.image, model, forms=(form,), policy=policy, scan_result=scan, verify=False)
    return {a.site.file_offset: a for a in res.actions}


def audit(scan: ScanResult, model: FetchModel = DEFAULT_MODEL, policy: Policy = RDOS_POLICY,
          form: str = "far", eager: str = "certain", pad: bool = True) -> Audit:
    """Audit every site of ``scan`` under ``model`` and ``policy`` for the final ``form``.

    ``eager`` is the table's eager policy (``certain``: certain sites eager, likely ones lazy;
    ``all``; ``none``). ``pad``: ask ``gatelink pad`` which sites it can fix (``needs-pad``) and
    which it refuses (``needs-sync``); False decides by alignments alone. Plans are cached per
    alignment class, so large images cost little more than their number of distinct shapes and
    alignments.
    """
    if eager not in EAGER_POLICIES:
        raise UsageError(f"eager must be one of {', '.join(EAGER_POLICIES)}, not {eager!r}")
    out = Audit(scan, model, policy, form)
    actions: dict[int, SiteAction] = {}
    if pad and any(_needs_sync(s, model, policy, form) for s in scan.sites):
        try:
            actions = pad_actions(scan, model, policy, form)
        except GatelinkError as e:  # pad cannot take this image: judge by alignment alone
            out.notes.append(f"gatelink pad cannot lay out this image ({e}); needs-pad and needs-sync are "
                             "judged by alignment alone")
    out.sites = [audit_site(s, model, policy, form, eager, actions.get(s.file_offset)) for s in scan.sites]
    return out


def _needs_sync(site: Site, model: FetchModel, policy: Policy, form: str) -> bool:
    try:
        plan = choose(site.shape, site.address, form, model, policy, site.bitness).plan
    except FormError:
        return False
    return plan is not None and plan.syncs > 0


def matches_fail_on(a: AuditSite, names: frozenset[str]) -> bool:
    """Whether ``--fail-on names`` is triggered by this site (its verdict or its plan status)."""
    return a.verdict in names or a.plan_status in names


__all__ = [
    "NEEDS_PAD", "NEEDS_SYNC", "NO_PLAN", "PATCHABLE", "PLAN_STATUSES", "REASON_HELP", "UNKNOWN_GATE",
    "VERDICTS", "VERDICT_HELP", "Audit", "AuditSite", "audit", "audit_site", "matches_fail_on", "pad_actions",
    "plan_text", "reason_help", "summarise", "sync_free_alignments",
]
