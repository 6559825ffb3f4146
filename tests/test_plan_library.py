"""The shipped plan-class library (gatelink/data/plan-library.json.gz): every stored plan is
proven by the checker, a sample equals fresh synthesis, and choose() answers from it."""

from __future__ import annotations

import random

import pytest

from gatelink.plan import library
from gatelink.plan.checker import Checker
from gatelink.plan.forms import policy_for
from gatelink.plan.matrix import plan_from_states
from gatelink.plan.model import RDOS_POLICY, FetchModel, Order
from gatelink.plan.select import _class_plan, choose

DEFAULT = FetchModel(8, Order.ARBITRARY)


def _entries() -> list[tuple[library.LibKey, object, FetchModel, library.ClassPlan]]:
    lib = library._load()
    out = []
    for key, site, model in library.classes():
        cp = lib.get(key)
        if cp is not None:
            out.append((key, site, model, cp))
    return out


def _prove(site: object, model: FetchModel, cp: library.ClassPlan) -> None:
    states, syncs, proof, builder, note = cp
    assert states is not None, "every library class has a plan"
    plan = plan_from_states(site, states, syncs, builder, note)  # type: ignore[arg-type]
    assert not plan.problems(site)  # type: ignore[arg-type]
    v = Checker(site, model, policy_for(site, RDOS_POLICY)).check(plan)  # type: ignore[arg-type]
    assert v.safe, (site.shape, site.form, site.address, model)  # type: ignore[attr-defined]


def test_library_covers_the_default_model() -> None:
    lib = library._load()
    assert lib, "the plan-class library is missing (python -m gatelink.plan.library --regenerate)"
    keys = set(lib)
    every = {k for k, _, _ in library.classes()}
    assert keys <= every, "library holds classes that no longer exist: regenerate it"
    default = {k for k in every if (k[3], k[4]) == (8, "arbitrary")}
    assert default <= keys, f"{len(default - keys)} classes of the default model are missing"


def test_sample_of_stored_plans_reproved() -> None:
    entries = _entries()
    rng = random.Random(8)
    sample = rng.sample(entries, min(80, len(entries)))
    for _, site, model, cp in sample:
        _prove(site, model, cp)


@pytest.mark.slow
def test_every_stored_plan_reproved() -> None:
    for _, site, model, cp in _entries():
        _prove(site, model, cp)


def test_library_matches_fresh_synthesis() -> None:
    entries = [e for e in _entries() if e[0][1] in ("far", "callgate") and e[0][3] >= 8]
    rng = random.Random(11)
    for _, site, model, cp in rng.sample(entries, min(25, len(entries))):
        assert _class_plan(site, model, RDOS_POLICY) == cp  # type: ignore[arg-type]


@pytest.mark.slow
def test_library_matches_fresh_synthesis_all_forms() -> None:
    rng = random.Random(12)
    entries = _entries()
    for _, site, model, cp in rng.sample(entries, min(200, len(entries))):
        assert _class_plan(site, model, RDOS_POLICY) == cp  # type: ignore[arg-type]


def test_choose_answers_from_the_library() -> None:
    entries = [e for e in _entries() if e[2] == DEFAULT]
    key, site, model, cp = entries[len(entries) // 2]
    # another member of the same class, at another address: same states
    addr = site.address + 64  # type: ignore[attr-defined]
    c = choose(site.shape, addr, site.form, model, RDOS_POLICY, site.bitness)  # type: ignore[attr-defined]
    assert c.plan is not None
    assert tuple(c.plan.states(c.site)) == cp[0]
