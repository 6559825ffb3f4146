"""From a scan to a patch table: one proven plan per site and form, shared between sites.

Eager or lazy (``docs/table-format.md``, "Eager and lazy sites"): patching a site up front
that is not code corrupts the program, while patching on first fault cannot, because the CPU
itself reports that it executed a far call at that address. So a ``certain`` site, whose first
byte a chain of proven instruction boundaries reaches, is eager by default; a ``likely`` site,
resting on heuristic evidence, is lazy: it is patched only when it faults, which is the proof
that it is a stub. ``eager="all"`` and ``eager="none"`` override this for every site.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence

from ..image import Image
from ..plan.forms import FormError
from ..plan.model import (
    LINE,
    RDOS_POLICY,
    Domain,
    FetchModel,
    Policy,
    Write,
    is_var,
    var_field,
    var_index,
)
from ..plan.select import DEFAULT_MODEL, choose
from ..scan import CERTAIN, ScanResult, Site
from .check import form_domains, layout_digest
from .model import (
    FLAG_EAGER,
    FLAG_LAZY,
    FLAG_NEEDS_SYNC,
    TABLE_FORMS,
    BuildInfo,
    Identity,
    PatchTable,
    PlanStep,
    PlanTemplate,
    TableRegion,
    TableSite,
)

EAGER_POLICIES = ("certain", "all", "none")

__all__ = ["EAGER_POLICIES", "build_info", "build_table", "form_domains", "identity_of", "is_eager", "layout_digest"]


def identity_of(image: Image) -> Identity:
    """The table's image identity: file size and SHA-256 of the code regions' bytes in order."""
    h = hashlib.sha256()
    for r in image.code_regions:
        h.update(image.region_bytes(r))
    return Identity(len(image.data), h.digest())


def build_info(scan: ScanResult, eager: str) -> BuildInfo:
    """The build info of a table made from ``scan`` (``docs/table-format.md``, "Build info")."""
    from .. import __version__

    gates = tuple(f"{s.path}:{s.version}" for s in scan.gates.sources) if scan.gates is not None else ()
    return BuildInfo(__version__, eager, gates, layout_digest(scan.image))


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
    # _template returns one object per (shape, form, bitness, line offset): look it up by
    # identity first, by (slower) equality only the first time it is seen.
    by_id: dict[int, tuple[int, bool, PlanTemplate]] = {}  # the template kept: its id stays its own
    sites: list[TableSite] = []
    for s in scan.sites:
        idxs: list[int | None] = []
        needs_sync = False
        for f in forms:
            tpl = _template(s, f, model, policy, domains)
            if tpl is None:
                idxs.append(None)
                continue
            known = by_id.get(id(tpl))
            if known is None:
                i = plan_index.get(tpl)
                if i is None:
                    i = plan_index[tpl] = len(plans)
                    plans.append(tpl)
                known = by_id[id(tpl)] = (i, tpl.syncs > 0, tpl)
            idxs.append(known[0])
            needs_sync |= known[1]
        flags = (FLAG_EAGER if is_eager(s, eager) else FLAG_LAZY) | (FLAG_NEEDS_SYNC if needs_sync else 0)
        original = bytes(image.data[s.file_offset : s.file_offset + s.length])
        sites.append(TableSite(region_index[s.region], s.address, s.file_offset, s.shape, s.gate, s.gate_kind,
                               s.selector, s.confidence, flags, original, tuple(idxs)))
    sites.sort(key=lambda t: (t.region, t.address))
    fd = form_domains(forms, domains)
    return PatchTable(image.format, identity_of(image), model, policy, dict(fd[forms[0]]), forms, regions, sites,
                      plans, form_domains=fd, build=build_info(scan, eager))


def _template(site: Site, form: str, model: FetchModel, policy: Policy,
              domains: dict[str, Domain] | None) -> PlanTemplate | None:
    # A template depends on the site's address only through its position in a 64-byte line
    # (chunk boundaries, store alignment and line crossings all repeat every 64 bytes), so
    # one is made per (shape, form, bitness, address mod 64): a 4,000-site image needs a few
    # hundred, not one per site.
    # Only the fields the form fills: a selector domain must not make a near-call plan look
    # different from the one the plan library holds.
    used = FORM_FIELDS.get(form, ())
    doms = tuple(sorted((k, d) for k, d in domains.items() if k in used)) if domains else ()
    return _template_at(site.shape, site.bitness, site.address % LINE, form, model, policy, doms)


# The template fields each final form fills at patch time.
FORM_FIELDS = {"far": ("off", "sel"), "callgate": ("sel",), "near": ("rel",), "pushcs": ("rel",)}


@functools.lru_cache(maxsize=16384)
def _template_at(shape: str, bitness: int, line_offset: int, form: str, model: FetchModel, policy: Policy,
                 doms: tuple[tuple[str, Domain], ...]) -> PlanTemplate | None:
    address = 0x1000 + line_offset
    try:
        chosen = choose(shape, address, form, model, policy, bitness, dict(doms) or None)
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
    return PlanTemplate(shape, form, bitness, final, steps, chosen.resume, rel_end)
