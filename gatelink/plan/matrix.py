"""The verify matrix: every shape x 64 alignments x fetch models x builders, each plan proven.

Whether a plan is safe depends on the site's bytes, the plan's steps relative to the site, and
where chunk and 64-byte line boundaries fall *inside* the site: bytes before the site are never
fetched as its instructions and the bytes after it never change. Sites of one shape whose
interior boundaries coincide form one *class*; each distinct (class, plan) is checked once and
synthesis runs once per class. Classes are spread over worker processes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from ..catalog import SHAPES
from .builders import BUILDERS, Built
from .checker import Checker, CheckResult
from .forms import FormError, make_site, policy_for
from .model import LINE, STANDARD_MODELS, SYNC, Atom, FetchModel, PatchSite, Plan, Policy, Step, Write
from .synth import MAX_SYNCS, MAX_WRITES, synthesize, store_for

BASE_ADDRESS = 0x1000
BUILDER_NAMES = (*BUILDERS, "synthesis")


def default_form(shape_id: str) -> tuple[str, int | None]:
    """The matrix's final form for a shape: the far call if it fits, else the near call.
    UD2 forms are planned as 32-bit code."""
    bits = 32 if shape_id in ("U5", "U7") else None
    for form in ("far", "near"):
        try:
            make_site(shape_id, form, bitness=bits)
            return form, bits
        except FormError:
            continue
    raise FormError(f"no final form fits shape {shape_id}")


def class_key(site: PatchSite, model: FetchModel, policy: Policy) -> tuple[object, ...]:
    inner = range(1, site.length)
    return (
        site.shape, site.form, site.bitness, model.chunk, model.order.value, policy,
        tuple(b for b in inner if (site.address + b) % model.chunk == 0),
        tuple(b for b in inner if (site.address + b) % LINE == 0),
    )


@dataclass
class Cell:
    shape: str
    alignment: int
    model: FetchModel
    builder: str
    applicable: bool
    safe: bool | None = None
    syncs: int | None = None
    writes: int | None = None
    reason: str = ""
    plan: Plan | None = None
    site: PatchSite | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "shape": self.shape, "alignment": self.alignment, "model": self.model.to_json(),
            "builder": self.builder, "applicable": self.applicable, "safe": self.safe,
            "syncs": self.syncs, "writes": self.writes, "reason": self.reason,
        }


@dataclass
class MatrixResult:
    cells: list[Cell]
    explored: int
    checks: int
    classes: int
    seconds: float = 0.0


def plan_from_states(site: PatchSite, states: Sequence[tuple[Atom, ...]], syncs: Iterable[int], builder: str, note: str) -> Plan:
    """Writes realising a state sequence at ``site``'s address (each transition one store)."""
    sync_set = set(syncs)
    steps: list[Step] = []
    for k in range(1, len(states)):
        if k - 1 in sync_set and k - 1 > 0:
            steps.append(SYNC)
        a, b = states[k - 1], states[k]
        pos = [i for i in range(len(a)) if a[i] != b[i]]
        blk = store_for(site, pos)
        if blk is None:
            raise ValueError("state change does not fit one store at this address")
        off, size = blk
        steps.append(Write(off, b[off : off + size]))
    return Plan(tuple(steps), builder, note)


def _work(job: tuple[tuple[object, ...], list[tuple[int, PatchSite]], FetchModel, Policy, tuple[str, ...]]) -> tuple[list[Cell], int, int]:
    """One class: synthesis once, each distinct builder plan checked once."""
    _, members, model, policy, builders = job
    cells: list[Cell] = []
    explored = 0
    checks = 0
    rep = members[0][1]
    synth_states = None
    synth_res = None
    if "synthesis" in builders:
        synth_res = synthesize(rep, model, policy_for(rep, policy))
        explored += synth_res.explored
        checks += synth_res.nodes
        if synth_res.plan is not None:
            st = synth_res.plan.states(rep)
            synth_states = (st, synth_res.plan.sync_points())
    cache: dict[tuple[object, ...], CheckResult] = {}
    checkers: dict[tuple[object, ...], Checker] = {}
    for align, site in members:
        for name in builders:
            if name == "synthesis":
                assert synth_res is not None
                if synth_states is None:
                    cells.append(Cell(site.shape, align, model, name, True, False, reason=synth_res.proof, site=site))
                    continue
                plan = plan_from_states(site, synth_states[0], synth_states[1], "synthesis", synth_res.plan.note if synth_res.plan else "")
                cells.append(Cell(site.shape, align, model, name, True, True, plan.syncs, plan.writes,
                                  synth_res.proof, plan, site))
                continue
            built: Built | None = BUILDERS[name](site, model)
            if built is None:
                cells.append(Cell(site.shape, align, model, name, False))
                continue
            pol = policy_for(built.site, policy)
            key = (built.site.original, built.site.final, tuple(built.plan.steps))
            res = cache.get(key)
            if res is None:
                ck_key = (built.site.final,)
                ck = checkers.get(ck_key)
                if ck is None:
                    ck = checkers[ck_key] = Checker(built.site, model, pol)
                res = ck.check(built.plan)
                cache[key] = res
                explored += res.explored
                checks += 1
            reason = "" if res.safe or res.witness is None else f"{res.witness.reason}: {res.witness.detail}"
            cells.append(Cell(site.shape, align, model, name, True, res.safe, built.plan.syncs, built.plan.writes,
                              reason, built.plan, built.site))
    return cells, explored, checks


def run_matrix(
    shapes: Sequence[str] | None = None,
    alignments: Sequence[int] = range(64),
    models: Sequence[FetchModel] = STANDARD_MODELS,
    builders: Sequence[str] = BUILDER_NAMES,
    policy: Policy | None = None,
    jobs: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> MatrixResult:
    """Build and prove every plan of the matrix."""
    import time

    from .model import RDOS_POLICY

    t0 = time.perf_counter()
    pol = policy or RDOS_POLICY
    shape_ids = list(shapes) if shapes is not None else [s.id for s in SHAPES]
    classes: dict[tuple[object, ...], list[tuple[int, PatchSite]]] = {}
    model_of: dict[tuple[object, ...], FetchModel] = {}
    for sid in shape_ids:
        form, bits = default_form(sid)
        for m in models:
            for a in alignments:
                site = make_site(sid, form, BASE_ADDRESS + a, bits)
                k = class_key(site, m, pol)
                classes.setdefault(k, []).append((a, site))
                model_of[k] = m
    jobs_list = [(k, v, model_of[k], pol, tuple(builders)) for k, v in classes.items()]
    # Bigger classes and small chunks (the expensive ones) first, for a balanced pool.
    jobs_list.sort(key=lambda j: (j[2].chunk, -len(j[1])))
    n = jobs if jobs is not None else (os.cpu_count() or 1)
    cells: list[Cell] = []
    explored = checks = 0
    done = 0
    if n <= 1 or len(jobs_list) < 4:
        results = map(_work, jobs_list)
    else:
        pool = ProcessPoolExecutor(max_workers=n)
        results = pool.map(_work, jobs_list, chunksize=4)
    for c, e, k in results:
        cells.extend(c)
        explored += e
        checks += k
        done += 1
        if progress:
            progress(done, len(jobs_list))
    if n > 1 and len(jobs_list) >= 4:
        pool.shutdown()
    order = {s: i for i, s in enumerate(shape_ids)}
    morder = {m: i for i, m in enumerate(models)}
    border = {b: i for i, b in enumerate(builders)}
    cells.sort(key=lambda c: (order[c.shape], morder[c.model], c.alignment, border[c.builder]))
    return MatrixResult(cells, explored, checks, len(jobs_list), time.perf_counter() - t0)


BOUND_TEXT = f"{MAX_SYNCS} syncs, {MAX_WRITES} writes"
