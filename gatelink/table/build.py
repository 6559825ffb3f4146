"""From a scan to a patch table: one proven plan per site and form, shared between sites.

Eager or lazy (``docs/table-format.md``, "Eager and lazy sites"): patching a site up front
that is not code corrupts the program, while patching on first fault cannot, because the CPU
itself reports that it executed a far call at that address. So a ``certain`` site, whose first
byte a chain of proven instruction boundaries reaches, is eager by default; a ``likely`` site,
resting on heuristic evidence, is lazy: it is patched only when it faults, which is the proof
that it is a stub. ``eager="all"`` and ``eager="none"`` override this for every site.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from ..catalog import shape as shape_by_id
from ..image import Image
from ..plan.forms import FormError, domains_for
from ..plan.model import RDOS_POLICY, Domain, FetchModel, Policy, Write, is_var, var_field, var_index
from ..plan.select import DEFAULT_MODEL, choose
from ..scan import CERTAIN, ScanResult, Site
from .model import (
    FLAG_EAGER,
    FLAG_LAZY,
    FLAG_NEEDS_SYNC,
    TABLE_FORMS,
    Identity,
    PatchTable,
    PlanStep,
    PlanTemplate,
    TableRegion,
    TableSite,
)

EAGER_POLICIES = ("certain", "all", "none")


def identity_of(image: Image) -> Identity:
    """The table's image identity: file size and SHA-256 of the code regions' bytes in order."""
    h = hashlib.sha256()
    for r in image.code_regions:
        h.update(image.region_bytes(r))
    return Identity(len(image.data), h.digest())


def is_eager(site: Site, eager: str) -> bool:
    """The eager/lazy decision for one site (see the module docstring for why)."""
    if eager == "all":
        return True
    if eager == "none":
        return False
    return site.confidence == CERTAIN


def build_table(
    scan: ScanResult,
    model: FetchModel = DEFAULT_MODEL,
    forms: Sequence[str] = ("far",),
    eager: str = "certain",
    policy: Policy = RDOS_POLICY,
    domains: dict[str, Domain] | None = None,
) -> PatchTable:
    """The patch table of ``scan``'s image: every site, with its plan for each of ``forms``
    proven under ``model`` and ``policy`` for every operand value in ``domains`` (default: the
    RDOS selector range and any offset / rel32; see :func:`gatelink.plan.forms.domains_for`)."""
    if eager not in EAGER_POLICIES:
        raise ValueError(f"eager must be one of {', '.join(EAGER_POLICIES)}, not {eager!r}")
    forms = tuple(forms)
    for f in forms:
        if f not in TABLE_FORMS:
            raise ValueError(f"unknown form {f!r}; table forms: {', '.join(TABLE_FORMS)}")
    if len(set(forms)) != len(forms) or not forms:
        raise ValueError("forms must be distinct and at least one")
    image = scan.image
    code = image.code_regions
    region_index = {r.name: i for i, r in enumerate(code)}
    regions = [TableRegion(r.name, r.address, r.file_offset, r.size, r.bitness or 32) for r in code]
    plans: list[PlanTemplate] = []
    plan_index: dict[PlanTemplate, int] = {}
    sites: list[TableSite] = []
    for s in scan.sites:
        idxs: list[int | None] = []
        needs_sync = False
        for f in forms:
            tpl = _template(s, f, model, policy, domains)
            if tpl is None:
                idxs.append(None)
                continue
            i = plan_index.get(tpl)
            if i is None:
                i = plan_index[tpl] = len(plans)
                plans.append(tpl)
            idxs.append(i)
            needs_sync |= tpl.syncs > 0
        flags = (FLAG_EAGER if is_eager(s, eager) else FLAG_LAZY) | (FLAG_NEEDS_SYNC if needs_sync else 0)
        original = bytes(image.data[s.file_offset : s.file_offset + s.length])
        sites.append(TableSite(region_index[s.region], s.address, s.file_offset, s.shape, s.gate, s.gate_kind,
                               s.selector, s.confidence, flags, original, tuple(idxs)))
    sites.sort(key=lambda t: (t.region, t.address))
    doms = dict(domains_for(shape_by_id("A"), "far"))
    if domains:
        doms.update(domains)
    doms.pop("ctx", None)
    doms.pop("gate", None)
    return PatchTable(image.format, identity_of(image), model, policy, doms, forms, regions, sites, plans)


def _template(site: Site, form: str, model: FetchModel, policy: Policy,
              domains: dict[str, Domain] | None) -> PlanTemplate | None:
    try:
        chosen = choose(site.shape, site.address, form, model, policy, site.bitness, domains)
    except FormError:
        return None
    if chosen.plan is None:
        return None
    steps = tuple(PlanStep(st.offset, tuple(st.data)) if isinstance(st, Write) else PlanStep(0, ())
                  for st in chosen.plan.steps)
    final = chosen.site.final
    rel = [i for i, a in enumerate(final) if is_var(a) and var_field(a) == "rel"]
    rel_end = None
    if rel:
        last = max(rel, key=lambda i: var_index(final[i]))
        rel_end = last + 1
    return PlanTemplate(site.shape, form, site.bitness, final, steps, chosen.resume, rel_end)
