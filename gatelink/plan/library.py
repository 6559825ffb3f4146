"""The plan-class library: the cheapest proven plan of every alignment class of every shape,
final form and standard fetch model, computed once and shipped as package data
(``gatelink/data/plan-library.json.gz``), so that emitting a patch table never waits for
synthesis (up to seconds per class for some legacy shapes and the near-call forms).

:func:`gatelink.plan.select.choose` looks a class up here before synthesising; anything not in
the library (other policies, domains or models) falls back to synthesis. The library holds the
same ``(states, sync points, proof, builder, note)`` that :func:`.select._class_plan` returns,
for the default policy (``RDOS_POLICY``) and default domains only. ``tests/test_plan_library.py``
re-proves every stored plan with the checker and compares a sample with fresh synthesis.

Regenerate after any change to the checker, synthesis, builders, forms or shapes::

    python -m gatelink.plan.library --regenerate [--jobs N] [--resume]
"""

from __future__ import annotations

import functools
import gzip
import json
from collections.abc import Iterator
from importlib import resources

from .model import RDOS_POLICY, STANDARD_MODELS, FetchModel, Order, PatchSite, Policy

LIBRARY_FILE = "data/plan-library.json.gz"
LIBRARY_VERSION = 1
LIBRARY_FORMS = ("far", "callgate", "near", "pushcs")
# Every standard model; (16, arbitrary) and (64, arbitrary) are among them.
LIBRARY_MODELS = tuple(STANDARD_MODELS)
ADDRESS_BASE = 0x1000

# (shape, form, bitness, chunk, order, chunk boundaries inside, line boundaries inside)
LibKey = tuple[str, str, int, int, str, tuple[int, ...], tuple[int, ...]]
ClassPlan = tuple[tuple[tuple[int, ...], ...] | None, tuple[int, ...], str, str, str]


def key_of(site: PatchSite, model: FetchModel) -> LibKey:
    from .matrix import class_key

    k = class_key(site, model, RDOS_POLICY)
    return (site.shape, site.form, site.bitness, model.chunk, model.order.value, k[6], k[7])  # type: ignore[return-value]


@functools.lru_cache(maxsize=1)
def _load() -> dict[LibKey, ClassPlan]:
    try:
        raw = resources.files("gatelink").joinpath(LIBRARY_FILE).read_bytes()
    except (FileNotFoundError, OSError):
        return {}
    doc = json.loads(gzip.decompress(raw))
    if doc.get("version") != LIBRARY_VERSION:
        return {}
    out: dict[LibKey, ClassPlan] = {}
    for e in doc["classes"]:
        shape, form, bits, chunk, order, cb, lb, states, syncs, proof, builder, note = e
        key = (shape, form, bits, chunk, order, tuple(cb), tuple(lb))
        st = None if states is None else tuple(tuple(s) for s in states)
        out[key] = (st, tuple(syncs), proof, builder, note)
    return out


def lookup(site: PatchSite, model: FetchModel, policy: Policy, default_domains: bool) -> ClassPlan | None:
    """The stored class plan for ``site`` (a template from ``make_site`` with default domains)
    under ``model`` and ``policy``, or None when the library does not cover it."""
    if not default_domains or policy != RDOS_POLICY:
        return None
    lib = _load()
    if not lib:
        return None
    return lib.get(key_of(site, model))


def classes() -> Iterator[tuple[LibKey, PatchSite, FetchModel]]:
    """One representative site per library class, in a fixed order."""
    from ..catalog import SHAPES
    from .forms import FormError, make_site

    for model in LIBRARY_MODELS:
        for form in LIBRARY_FORMS:
            for s in SHAPES:
                for bits in ((16, 32) if s.bitness is None else (s.bitness,)):
                    seen: set[LibKey] = set()
                    for a in range(64):
                        try:
                            site = make_site(s.id, form, ADDRESS_BASE + a, bits)
                        except FormError:
                            break
                        k = key_of(site, model)
                        if k not in seen:
                            seen.add(k)
                            yield k, site, model


def _solve(job: tuple[LibKey, PatchSite, FetchModel]) -> list[object]:
    from .select import _class_plan

    key, site, model = job
    states, syncs, proof, builder, note = _class_plan(site, model, RDOS_POLICY)
    return [*key[:5], list(key[5]), list(key[6]), None if states is None else [list(s) for s in states],
            list(syncs), proof, builder, note]


def regenerate(jobs: int = 1, progress: bool = False, models: tuple[FetchModel, ...] | None = None,
               out: object = None, resume: bool = False) -> bytes:
    """Synthesise every class (of ``models``, default all library models) and return the
    library file's bytes (deterministic: sorted by key). With ``out`` (a path), the file is
    also rewritten as classes complete, so an interrupted run leaves a usable partial library
    (the library is a cache: a class it lacks is synthesised on demand)."""
    import sys
    import time
    from concurrent.futures import ProcessPoolExecutor

    from ..fsutil import atomic_write

    wanted = set(models) if models is not None else None
    work = [w for w in classes() if wanted is None or w[2] in wanted]
    # The default model first (what tables use unless told otherwise), the byte-wise model,
    # whose near-call classes take longest, last.
    work.sort(key=lambda w: (0 if (w[2].chunk, w[2].order) == (8, Order.ARBITRARY) else 1, w[2].chunk == 1))
    done: list[list[object]] = []
    if resume and out is not None:
        # Keep the classes an earlier (interrupted) run of this same code already solved.
        try:
            old = json.loads(gzip.decompress(open(out, "rb").read()))  # type: ignore[call-overload]
        except (OSError, ValueError, EOFError):
            old = {}
        if old.get("version") == LIBRARY_VERSION:
            have = {json.dumps(e[:7]): e for e in old.get("classes", [])}
            keys = {json.dumps([*k[:5], list(k[5]), list(k[6])]) for k, _, _ in work}
            done = [e for kk, e in have.items() if kk in keys]
            solved = {json.dumps(e[:7]) for e in done}
            work = [w for w in work if json.dumps([*w[0][:5], list(w[0][5]), list(w[0][6])]) not in solved]
    t0 = time.perf_counter()

    def dump() -> bytes:
        doc = {"version": LIBRARY_VERSION, "policy": RDOS_POLICY.name,
               "models": [str(m) for m in LIBRARY_MODELS], "forms": list(LIBRARY_FORMS),
               "classes": sorted(done, key=lambda e: json.dumps(e[:7]))}
        return gzip.compress(json.dumps(doc, separators=(",", ":"), sort_keys=True).encode(), 9, mtime=0)

    def note(e: list[object]) -> None:
        done.append(e)
        if progress:
            sys.stderr.write(f"{len(done)} done, {len(work)} to solve, {time.perf_counter() - t0:.0f}s {e[:5]}\n")
        if out is not None and len(done) % 100 == 0:
            atomic_write(out, dump())  # type: ignore[arg-type]

    if jobs > 1:
        with ProcessPoolExecutor(jobs) as ex:
            for e in ex.map(_solve, work, chunksize=1):
                note(e)
    else:
        for w in work:
            note(_solve(w))
    data = dump()
    if out is not None:
        atomic_write(out, data)  # type: ignore[arg-type]
    return data


def main(argv: list[str] | None = None) -> int:
    import argparse
    import os
    from pathlib import Path

    ap = argparse.ArgumentParser(description="Regenerate the plan-class library (package data).")
    ap.add_argument("--regenerate", action="store_true", required=True)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--model", action="append", default=[], help="only these models (CHUNK,ORDER); default all")
    ap.add_argument("--resume", action="store_true", help="keep the classes already in --out (same code only)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / LIBRARY_FILE)
    a = ap.parse_args(argv)
    models = tuple(FetchModel.parse(m) for m in a.model) if a.model else None
    data = regenerate(a.jobs, progress=True, models=models, out=a.out, resume=a.resume)
    print(f"wrote {a.out}: {len(data)} bytes")
    return 0


__all__ = ["LIBRARY_FORMS", "LIBRARY_MODELS", "classes", "key_of", "lookup", "regenerate"]

if __name__ == "__main__":
    raise SystemExit(main())
