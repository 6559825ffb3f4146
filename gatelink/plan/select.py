"""The plan for one concrete site: the cheapest proven plan for its shape, address, final form,
fetch model and policy.

Everything downstream of the checker (the patch table, pad-and-align, audits) asks this one
question per site, so it lives here, once, with a cache. A plan's safety depends only on the
site's bytes, the plan's steps relative to the site, and where chunk and 64-byte line
boundaries fall *inside* the site (:func:`.matrix.class_key`); synthesis therefore runs once per
class and its state sequence is replayed at each member's address (the stores are re-chosen for
that address, the states are the same, so the proof carries over).

The plan is a *template*: operand bytes (``off``, ``sel``, ``rel``) stay variables, proven for
every value of their declared domains, so one plan serves whatever the kernel's selectors and
entry points turn out to be at run time.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from ..catalog import shape as shape_by_id
from .builders import BUILDERS
from .checker import Checker
from .forms import FormError, make_site, policy_for
from .library import lookup as library_lookup
from .matrix import class_key, plan_from_states
from .model import RDOS_POLICY, Domain, FetchModel, Order, PatchSite, Plan, Policy
from .synth import MAX_SYNCS, MAX_WRITES, synthesize

# The model gatelink assumes unless told otherwise (docs/safety.md, "The default model"):
# instruction bytes fetched in aligned 8-byte chunks, in any order. It assumes less than the
# forum thread's (8, monotone) and far less than the cache-line atomicity practitioners observe
# (64), and every site can still be patched with at most two syncs under it.
DEFAULT_MODEL = FetchModel(8, Order.ARBITRARY)


@dataclass(frozen=True)
class Chosen:
    """The plan chosen for one site (or why there is none).

    ``site`` is the template at the site's address (``original`` with ``gate`` variables,
    ``final`` with ``off``/``sel``/``rel`` variables). ``plan`` is None when no plan is safe
    within the synthesis bound and no builder's plan is safe either (``proof`` says so).
    ``resume`` is the offset inside the site of the instruction that traps first (the far call
    or UD2; 1 for the ``push ebp`` shapes): where a first fault is reported and re-executed.
    """

    site: PatchSite
    plan: Plan | None
    model: FetchModel
    policy: Policy
    proof: str
    resume: int

    @property
    def syncs(self) -> int | None:
        return None if self.plan is None else self.plan.syncs

    @property
    def writes(self) -> int | None:
        return None if self.plan is None else self.plan.writes


def choose(
    shape_id: str,
    address: int,
    form: str = "far",
    model: FetchModel = DEFAULT_MODEL,
    policy: Policy = RDOS_POLICY,
    bitness: int | None = None,
    domains: dict[str, Domain] | None = None,
) -> Chosen:
    """The cheapest proven plan for a ``shape_id`` site at ``address`` turned into ``form``.

    Cheapest: fewest syncs, then fewest writes (synthesis, exhaustive within its bound); where
    synthesis finds nothing, the cheapest safe plan of the named builders (``int3-sync`` is safe
    wherever its stores fit). Raises :class:`FormError` when the form does not fit the shape.
    """
    doms = tuple(sorted(domains.items())) if domains else ()
    return _choose_cached(shape_id, address, form, bitness, model, policy, doms)


@functools.lru_cache(maxsize=65536)
def _choose_cached(shape_id: str, address: int, form: str, bitness: int | None, model: FetchModel,
                   policy: Policy, doms: tuple[tuple[str, Domain], ...]) -> Chosen:
    site = make_site(shape_id, form, address, bitness, domains=dict(doms) or None)
    dk = tuple(sorted((k, d.size, d.values) for k, d in site.domains.items()))
    resume = shape_by_id(site.shape).call_at
    key = (class_key(site, model, policy), dk)
    cls = _CLASS_PLANS.get(key)
    if cls is None:
        # The shipped plan-class library answers the default policy and domains at once
        # (.library); anything else is synthesised.
        cls = library_lookup(site, model, policy, not doms)
        if cls is None:
            cls = _class_plan(site, model, policy)
        _CLASS_PLANS[key] = cls
    states, syncs, proof, builder, note = cls
    if states is None:
        return Chosen(site, None, model, policy, proof, resume)
    return Chosen(site, plan_from_states(site, states, syncs, builder, note), model, policy, proof, resume)


# The plan of each class as (states, sync points, proof, builder, note): synthesis, the expensive
# part, runs once per class whatever the member it is asked for first.
_ClassPlan = tuple[tuple[tuple[int, ...], ...] | None, tuple[int, ...], str, str, str]
_CLASS_PLANS: dict[tuple[object, ...], _ClassPlan] = {}


def _class_plan(site: PatchSite, model: FetchModel, policy: Policy) -> _ClassPlan:
    pol = policy_for(site, policy)
    res = synthesize(site, model, pol, MAX_SYNCS, MAX_WRITES)
    if res.plan is not None:
        return (tuple(res.plan.states(site)), res.plan.sync_points(), res.proof, "synthesis", res.plan.note)
    best: tuple[str, Plan] | None = None
    for name, build in BUILDERS.items():
        built = build(site, model)
        if built is None or built.site.final != site.final:
            continue  # builders that end in other final bytes do not give this site's final form
        verdict = Checker(built.site, model, pol).check(built.plan)
        if verdict.safe and (best is None or (built.plan.syncs, built.plan.writes) < (best[1].syncs, best[1].writes)):
            best = (name, built.plan)
    if best is None:
        return (None, (), res.proof, "", "")
    name, plan = best
    return (tuple(plan.states(site)), plan.sync_points(), f"{res.proof}; builder {name} is safe", name, plan.note)


__all__ = ["DEFAULT_MODEL", "Chosen", "FormError", "choose"]
