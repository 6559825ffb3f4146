"""The SMP simulator: proven plans never break under racing lazy patches; plans the checker
rejects, and runtimes that skip a step of the protocol, do (the simulator has power)."""

from __future__ import annotations

import functools

import pytest
from conftest import FIXTURES, ROOT

from gatelink import open_image, scan
from gatelink.plan.builders import BUILDERS
from gatelink.plan.checker import check
from gatelink.plan.forms import make_site
from gatelink.plan.model import RDOS_POLICY, FetchModel
from gatelink.runtime import lazy as lazy_mod
from gatelink.runtime import load_registry, parse_registry
from gatelink.runtime.sim import (
    SimConfig,
    Simulator,
    SiteSpec,
    build_image,
    image_memory,
    simulate,
    standard_specs,
)
from gatelink.table import build_table

M8A = FetchModel.parse("8,arbitrary")


@functools.cache
def image(model_text: str, n: int, forms: tuple[str, ...], seed: int = 1):
    model = FetchModel.parse(model_text)
    return build_image(standard_specs(model, seed, n, forms), model, forms=forms, seed=seed, undefined=(2, 7))


def _exercised(res, n):
    assert res.executions >= n and not res.violations, res.violations[0].describe() if res.violations else ""
    assert res.racing > n // 3 and res.patches and res.waits and res.syncs and res.rearms


@pytest.mark.parametrize("model, n, forms, executions", [
    ("8,arbitrary", 20, ("far", "callgate", "near", "pushcs"), 20_000),
    ("8,monotone", 12, ("far", "callgate", "near"), 10_000),
    ("16,arbitrary", 12, ("far", "callgate", "near"), 10_000),
    ("64,arbitrary", 8, ("far", "near"), 6_000),
    ("1,arbitrary", 6, ("far", "callgate"), 5_000),
])
def test_proven_plans_never_break(model, n, forms, executions):
    im = image(model, n, forms)
    res = simulate(im, executions, SimConfig(cores=4, seed=7))
    _exercised(res, executions)


@pytest.mark.parametrize("schedule, versions, cores", [
    ("random", "uniform", 2), ("bursty", "oldest", 3), ("starve", "newest", 6), ("mixed", "mixed", 8),
])
def test_every_schedule(schedule, versions, cores):
    im = image("8,arbitrary", 20, ("far", "callgate", "near", "pushcs"))
    res = simulate(im, 8_000, SimConfig(cores=cores, seed=3, schedule=schedule, versions=versions))
    assert res.executions >= 8_000 and not res.violations


@pytest.mark.parametrize("name, regions", [("rdv/drv32_padded.rdv", None), ("boot/rdos.bin", [1]),
                                            ("rdv/drv16.rdv", None), ("pe/stubs_rdos.exe", None)])
def test_fixture_tables(name, regions):
    img = open_image(str(FIXTURES / name))
    table = build_table(scan(img, jobs=1))
    mem = image_memory(table, img.data, table.model.chunk, regions)
    sites = [i for i, s in enumerate(table.sites) if regions is None or s.region in regions]
    sim = Simulator(table, load_registry(ROOT / "docs" / "registry.example.toml"), mem, SimConfig(seed=5), sites)
    res = sim.run(6_000)
    _exercised(res, 6_000)


def _unsafe_case(builder: str, shape: str, model: FetchModel) -> int:
    """The first alignment where the checker rejects ``builder``'s plan for ``shape``."""
    for al in range(64):
        site = make_site(shape, "far", 0x10000 + al)
        built = BUILDERS[builder](site, model)
        if built is not None and not check(built.site, built.plan, model, RDOS_POLICY).safe:
            return al
    raise AssertionError(f"{builder} is safe for {shape} at every alignment under {model}")


@pytest.mark.parametrize("builder, shape, model", [
    ("rdos", "A", "8,arbitrary"),  # offset and selector split by a chunk boundary: old offset, new selector
    ("rdos", "B", "8,monotone"),
    ("thread", "C", "8,arbitrary"),
    ("thread", "L7P", "16,arbitrary"),
    ("rdos", "I", "1,arbitrary"),
])
def test_rejected_plans_are_caught(builder, shape, model):
    m = FetchModel.parse(model)
    al = _unsafe_case(builder, shape, m)
    # the site at that alignment (its region's first site sits at +16), a neighbour right after it
    bits = make_site(shape, "far").bitness
    specs = [SiteSpec(shape, "far", (al - 16) % 64), SiteSpec("A" if bits == 32 else "B", "far", 0)]
    im = build_image(specs, m, builder=builder, forms=("far",))
    site = next(s for s in im.table.sites if s.shape == shape)
    assert site.address % 64 == al
    found = None
    for seed in range(6):
        res = simulate(im, 40_000, SimConfig(cores=4, seed=seed))
        if res.violations:
            found = res.violations[0]
            break
    assert found is not None, f"no violation for {builder} {shape} at alignment {al} under {model}"
    assert found.kind in ("wrong call", "stray effect", "skipped effect", "crash", "left mid-instruction")
    # it happened at a site whose plan the checker rejects
    bad = im.table.sites[found.site]
    built = BUILDERS[builder](make_site(bad.shape, "far", bad.address, bits), m)
    assert not check(built.site, built.plan, m, RDOS_POLICY).safe


def test_the_same_builders_pass_where_the_checker_proves_them():
    """The kernel's own order (CD over byte 0, offset, selector, 90 over byte 0) where every
    site's fields share a chunk: safe, and its stale mixes trap off the first trap point (after
    the final nop), where the handler must resume them."""
    m = M8A

    def safe(shape, address):
        built = BUILDERS["rdos"](make_site(shape, "far", address), m)
        return check(built.site, built.plan, m, RDOS_POLICY).safe

    al = next(a for a in range(64) if safe("A", 0x10000 + a) and safe("C", 0x10000 + a + 9))
    im = build_image([SiteSpec("A", "far", (al - 16) % 64), SiteSpec("C", "far", 0)], m, builder="rdos",
                     forms=("far",))
    res = simulate(im, 20_000, SimConfig(cores=4, seed=1))
    assert not res.violations and res.patches > 100
    assert res.int_traps > 100 and res.inner_traps > 0


# -- the protocol has to be complete: take a step out and the simulator notices --------------


def _mutant(monkeypatch, retire: bool = True, resume_at_start: bool = False):
    def fault_steps(self, address, trap=lazy_mod.Trap.FAULT, region=None):
        P = address - lazy_mod._BACKUP[trap]
        i = self.find(P, region)
        if i is None:
            return lazy_mod._DEFAULT_OUTSIDE
        st = self.state
        sp = self.site_patch(i)
        R = sp.code_address if resume_at_start else P
        if st[i] == lazy_mod.UNTOUCHED and self.cas(i, 0, 1):
            for off, data in sp.steps:
                yield (lazy_mod.STORE, sp.address + off, data) if data else lazy_mod._SYNC_OP
            if retire:
                yield lazy_mod._SYNC_OP
            st[i] = lazy_mod.DONE
            return lazy_mod.Outcome(R, i, "patched")
        if st[i] == lazy_mod.PATCHING:
            while st[i] == lazy_mod.PATCHING:
                yield lazy_mod._SPIN_OP
            return lazy_mod.Outcome(R, i, "waited")
        return lazy_mod.Outcome(None, i, "default")

    monkeypatch.setattr(lazy_mod.LazyPatcher, "fault_steps", fault_steps)


def test_without_the_retire_sync_a_stale_trap_crashes(monkeypatch):
    im = build_image([SiteSpec("A", "far", 6), SiteSpec("G", "far", 3), SiteSpec("H", "far", 2)], M8A, forms=("far",))
    assert not simulate(im, 5_000, SimConfig(seed=2)).violations  # the real protocol
    _mutant(monkeypatch, retire=False)
    res = simulate(im, 50_000, SimConfig(seed=2))
    assert res.violations and res.violations[0].kind == "crash"


def test_resuming_at_the_site_start_repeats_an_effect(monkeypatch):
    im = build_image([SiteSpec("G", "far", 3), SiteSpec("H", "far", 2)], M8A, forms=("far",))
    _mutant(monkeypatch, resume_at_start=True)
    res = simulate(im, 50_000, SimConfig(seed=2))
    assert res.violations and res.violations[0].kind == "stray effect"  # push ebp twice


def test_real_faults_go_to_the_default_handler_and_never_loop():
    im = build_image([SiteSpec("A", "far", 6), SiteSpec("C", "far", 0), SiteSpec("G", "far", 1)], M8A,
                     forms=("far",))
    text = "version = 1\n[undefined]\nselector = 0x0408\noffset = 0x10\n"
    for s in im.table.sites:
        text += f"[gate.{s.gate_kind}.{s.gate}]\nform = 'far'\nselector = 0x0FF8\noffset = 0x1234\n"
    reg = parse_registry(text, "<absent>")
    from dataclasses import replace

    im2 = replace(im, registry=reg)
    res = simulate(im2, 1, SimConfig(seed=4, absent=frozenset({0x0FF8})), max_steps=60_000)
    # every patched call faults (#NP): each such fault reaches the default handler, at most
    # after one retry when it hit while the plan still ran; no site run ever completes
    assert not res.violations, res.violations[0].describe()
    assert res.real_faults > 300 and res.patches > 50 and res.executions == 0


def test_deterministic():
    im = image("8,arbitrary", 20, ("far", "callgate", "near", "pushcs"))
    a = simulate(im, 3_000, SimConfig(seed=11))
    b = simulate(im, 3_000, SimConfig(seed=11))
    assert a.summary() == b.summary()


@pytest.mark.slow
def test_a_million_site_executions():
    total = 0
    for model, n, forms, seed, count in (
        ("8,arbitrary", 32, ("far", "callgate", "near", "pushcs"), 21, 600_000),
        ("8,monotone", 24, ("far", "callgate", "near", "pushcs"), 22, 200_000),
        ("16,arbitrary", 24, ("far", "callgate", "near", "pushcs"), 23, 200_000),
    ):
        im = image(model, n, forms, seed)
        res = simulate(im, count, SimConfig(cores=6, seed=seed))
        print(f"{model}: {res.summary()}")  # shown with pytest -s
        assert not res.violations, res.violations[0].describe()
        total += res.executions
    assert total >= 1_000_000
