"""The SMP stress harness on this machine's cores (docs/runtime-c.md, "The Linux harness"): the
C runtime runs gatelink's tables in a 32-bit process while threads call the sites; every call is
checked. Skipped only where gcc -m32 cannot build (CI installs gcc-multilib)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import run_cli

from gatelink.plan.model import FetchModel
from gatelink.runtime.harness import (
    SHAPES16,
    SHAPES32,
    HarnessConfig,
    Prepared,
    execute,
    load_average,
    prepare,
)
from gatelink.runtime.native import can_build_m32


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    w = tmp_path_factory.mktemp("harness")
    why = can_build_m32(w)
    if why is not None:
        pytest.skip(f"gcc -m32 cannot build here ({why}); CI installs gcc-multilib")
    return w


@pytest.fixture(scope="module")
def built(work: Path) -> Prepared:
    d = work / "pos"
    d.mkdir()
    return prepare(d, FetchModel.parse("8,arbitrary"))


def test_images_hold_every_shape_at_every_alignment(built: Prepared) -> None:
    im32, im16 = built.images
    for im, shapes in ((im32, SHAPES32), (im16, SHAPES16)):
        seen = {(s.shape, s.address % 64) for s in im.table.sites}
        assert seen == {(sh, a) for sh in shapes for a in range(64)}
        # every site has a plan in some form, proven for the selector the process calls
        assert all(any(p is not None for p in s.plans) for s in im.table.sites)
        assert im.table.domains_of("far")["sel"].values == frozenset({0x23})
    assert im16.table.regions[0].bitness == 16


@pytest.mark.parametrize("mode,calls,membarrier", [("lazy", 100_000, True), ("mixed", 50_000, True),
                                                   ("upfront", 50_000, True), ("lazy", 20_000, False)])
def test_stress_no_violation(built: Prepared, mode: str, calls: int, membarrier: bool) -> None:
    """Zero violations over every shape and alignment; without membarrier, every sync is the
    signal handshake (what a kernel without SYNC_CORE gets)."""
    cfg = HarnessConfig(calls=calls, mode=mode, seed=7, timeout=300, membarrier=membarrier)
    r = execute(built, cfg)
    print(r.report(cfg, load_average()))
    assert r.ended == "completed", r.stderr
    assert r.total_violations == 0, r.report(cfg)
    assert r.get("calls") >= calls
    assert r.get("sites") == 64 * (len(SHAPES32) + len(SHAPES16))
    if not membarrier:
        assert r.values["sync_mode"] == "signals"
    rounds = r.get("rounds")
    if mode == "lazy":
        assert r.get("patches") == rounds * r.get("sites")  # every site patched once per round
    elif mode == "upfront":
        assert r.get("patches") == 0 and r.get("upfront") == rounds * r.get("sites")
    else:
        assert r.get("patches") + r.get("upfront") == rounds * r.get("sites")
        assert r.get("patches") > 0 and r.get("upfront") > 0


def test_negative_control_is_seen(work: Path) -> None:
    """A plan the checker rejects (the selector stored before the offset) on real cores: the
    harness must be able to see what it does. Each round runs the sites in lockstep, so a
    thread fetches a site between the two stores now and then; when it does, it calls 0x23:gate
    and crashes. Whether it happens in a short run depends on how the machine schedules the two
    threads, so this test only requires the run to complete and the plans to be in place; the
    result is printed (docs/runtime-c.md records long runs)."""
    (work / "neg").mkdir()
    prep = prepare(work / "neg", FetchModel.parse("8,arbitrary"), "wrong-order")
    assert prep.negative_sites >= 64
    cfg = HarnessConfig(calls=100_000, mode="lazy", seed=3, timeout=300, negative="wrong-order")
    r = execute(prep, cfg)
    print(r.report(cfg, load_average()))
    assert r.ended == "completed"
    # the only violations a wrong-order plan can cause are calls to 0x23:gate (crash) or a
    # wrong target; never a flags, register or stack violation
    assert all(r.violations.get(k, 0) == 0 for k in ("flags", "registers", "stack", "double_call"))


def test_cli(tmp_path: Path) -> None:
    if can_build_m32(tmp_path) is not None:
        pytest.skip("gcc -m32 unavailable")
    code, out, err = run_cli("harness", "--calls", "2000", "--threads", "2", "--mode", "mixed", "--keep",
                             str(tmp_path / "k"))
    assert code == 0, out + err
    assert "0 violations; process completed" in out and "load average" in out
    assert (tmp_path / "k" / "code32.gltab").exists() and (tmp_path / "k" / "manifest.txt").exists()
    assert run_cli("harness", "--mode", "sideways")[0] == 2
    assert run_cli("harness", "--calls", "0")[0] == 2
    assert run_cli("harness", "--model", "3,x")[0] == 2


def test_harness_tables_are_gatelinks_tables(built: Prepared) -> None:
    """The tables read back with gatelink's reader, and the C harness refuses a damaged one."""
    from gatelink.table import read_table

    work = built.manifest.parent
    t = read_table((work / "code32.gltab").read_bytes())
    assert len(t.sites) == 64 * len(SHAPES32)
    bad = bytearray((work / "code32.gltab").read_bytes())
    bad[300] ^= 0x40
    (work / "bad.gltab").write_bytes(bad)
    manifest = built.manifest.read_text().replace(str(work / "code32.gltab"), str(work / "bad.gltab"))
    (work / "bad-manifest.txt").write_text(manifest)
    r = subprocess.run([str(built.exe), str(work / "bad-manifest.txt"), "--calls", "10"], check=False, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 3 and "table refused" in r.stderr
