"""The verify matrix: every plan it calls safe is re-proven, synthesis covers every current
shape at every alignment under every model, the docs table is current, and synthesis's
prunings lose nothing."""

from concurrent.futures import ProcessPoolExecutor

import pytest

from gatelink.catalog import CURRENT_SHAPES
from gatelink.plan import RDOS_POLICY, STANDARD_MODELS, Checker, make_site, policy_for
from gatelink.plan.matrix import default_form, run_matrix
from gatelink.plan.report import matrix_markdown
from gatelink.plan.synth import Synthesizer

from conftest import ROOT


@pytest.fixture(scope="module")
def matrix():
    return run_matrix(jobs=2)


def _recheck(batch):
    out = []
    for site, plan, model in batch:
        res = Checker(site, model, policy_for(site, RDOS_POLICY)).check(plan)
        out.append((site.shape, site.address, str(model), plan.builder, res.safe))
    return out


def test_every_plan_called_safe_is_safe(matrix):
    safe = [(c.site, c.plan, c.model) for c in matrix.cells if c.safe]
    assert len(safe) > 10000
    batches = [safe[i : i + 500] for i in range(0, len(safe), 500)]
    with ProcessPoolExecutor(2) as pool:
        results = [r for b in pool.map(_recheck, batches) for r in b]
    bad = [r for r in results if not r[4]]
    assert bad == []
    assert len(results) == len(safe)


def test_synthesis_covers_every_current_shape_alignment_and_model(matrix):
    cells = [c for c in matrix.cells if c.builder == "synthesis" and c.shape in {s.id for s in CURRENT_SHAPES}]
    assert len(cells) == len(CURRENT_SHAPES) * 64 * len(STANDARD_MODELS)
    assert all(c.safe for c in cells), [(c.shape, c.alignment, str(c.model)) for c in cells if not c.safe][:5]
    # Where one store of the changed bytes stays in one chunk, synthesis needs no sync; the
    # models that tear the offset or selector need them.
    by_model = {}
    for c in cells:
        by_model.setdefault(str(c.model), set()).add(c.syncs)
    assert by_model["(1,arbitrary)"] == {2}
    assert by_model["(64,arbitrary)"] >= {0, 1}


def test_docs_matrix_is_current(matrix):
    doc = (ROOT / "docs" / "safety.md").read_text()
    table = matrix_markdown(matrix)
    assert table in doc, "docs/safety.md is stale: run python docs/generate.py"


@pytest.mark.parametrize("shape,align,model", [
    ("A", 0, 0), ("A", 0, 1), ("A", 0, 2), ("A", 60, 3), ("G", 0, 1), ("F", 5, 2), ("B", 63, 4), ("I", 56, 2),
])
def test_prunings_lose_no_optimal_plan(shape, align, model):
    m = STANDARD_MODELS[model]
    form, bits = default_form(shape)
    site = make_site(shape, form, 0x1000 + align, bits)
    pol = policy_for(site, RDOS_POLICY)
    fast = Synthesizer(site, m, pol, max_syncs=2, max_writes=4).run()
    slow = Synthesizer(site, m, pol, max_syncs=2, max_writes=4, prune_merge=False, prune_mix=False).run()
    assert (fast.syncs, fast.writes) == (slow.syncs, slow.writes)
    assert slow.nodes >= fast.nodes
