"""gatelink audit: verdicts, alignment and crossings, summaries, --fail-on, every format
deterministic."""

import csv
import io
import json

import pytest
from conftest import FIXTURES, run_cli

import gatelink
from gatelink.audit import AuditReport, audit, parse_fail_on, render
from gatelink.catalog import SHAPES_BY_ID, stub_bytes
from gatelink.errors import UsageError
from gatelink.plan import FetchModel, Order
from gatelink.plan.model import RDOS_POLICY
from gatelink.plan.select import DEFAULT_MODEL, choose

BASE = 0x110000  # 64-byte aligned, so a site's alignment is its offset mod 64
NOP, RET = b"\x90", b"\xc3"


def image(stubs, bits=32, name="k.bin", tmp=None):
    """A raw image of straight-line code: nops, then each (offset, bytes) stub, then ret.
    A far call returns, so the linear path from the image start proves every stub."""
    data = bytearray()
    for off, stub in stubs:
        assert off >= len(data)
        data += NOP * (off - len(data)) + stub
    data += RET
    p = tmp / name
    p.write_bytes(bytes(data))
    return p


def sync_free(shape, model=DEFAULT_MODEL, bits=32):
    return [a for a in range(64) if choose(shape, BASE + a, "far", model, RDOS_POLICY, bits).plan.syncs == 0]


def needing(shape, model=DEFAULT_MODEL, bits=32):
    return [a for a in range(64) if choose(shape, BASE + a, "far", model, RDOS_POLICY, bits).plan.syncs > 0]


def audit_json(*args):
    code, out, err = run_cli("audit", *args, "--format", "json")
    assert code in (0, 1), err
    return json.loads(out)


def test_verdicts_alignment_and_crossings(tmp_path):
    A = SHAPES_BY_ID["A"]
    free, busy = sync_free("A")[0], needing("A")[0]
    assert free != busy
    p = image([(64 + free, stub_bytes(A, 17)),        # create_data_sel32, no sync needed
               (192 + busy, stub_bytes(A, 17)),       # needs a sync here
               (320 + free, stub_bytes(A, 0x7777))],  # a gate nobody knows
              tmp=tmp_path)
    doc = audit_json(str(p), "--raw", "--bitness", "32", "--base", hex(BASE))
    sites = doc["inputs"][0]["sites"]
    assert [s["verdict"] for s in sites] == ["patchable", "needs-pad", "unknown-gate"]
    assert [s["plan_status"] for s in sites] == ["patchable", "needs-pad", "patchable"]
    for s in sites:
        assert s["align64"] == s["address"] % 64
        assert s["changed"] == [3, 8]  # offset and selector of a far call keeping 3E 67 9A
        want_chunk = [i for i in range(4, 9) if (s["address"] + i) % 8 == 0]
        assert s["chunk_crossings"] == want_chunk
        assert s["line_crossings"] == [i for i in range(4, 9) if (s["address"] + i) % 64 == 0]
        chosen = choose("A", s["address"], "far", DEFAULT_MODEL, RDOS_POLICY, 32)
        assert s["syncs"] == chosen.plan.syncs and s["writes"] == chosen.plan.writes
        assert s["eager"] is (s["confidence"] == "certain")
    assert sites[0]["syncs"] == 0 and sites[1]["syncs"] > 0
    assert sites[1]["pad_action"] in ("moved", "reshaped") and sites[1]["pad_shift"] is not None
    assert (sites[1]["address"] + sites[1]["pad_shift"]) % 64 in sync_free("A")
    assert sites[2]["gate_name"] is None and "not in the gate database" in sites[2]["detail"]
    summ = doc["inputs"][0]["summary"]
    assert summ["by_verdict"] == {"unknown-gate": 1, "no-plan": 0, "needs-sync": 0, "needs-pad": 1, "patchable": 1}
    assert summ["gates"] == [
        {"kind": "os", "gate": 17, "name": "create_data_sel32", "sites": 2,
         "by_verdict": {"needs-pad": 1, "patchable": 1}},
        {"kind": "os", "gate": 0x7777, "name": None, "sites": 1, "by_verdict": {"unknown-gate": 1}},
    ]
    assert doc["settings"] == {"model": {"chunk": 8, "order": "arbitrary"}, "policy": "rdos", "form": "far",
                               "eager": "certain"}


def test_line_crossing_is_reported(tmp_path):
    # Shape A at alignment 60: its changing bytes 3..8 sit at 63..68, across a 64-byte line.
    p = image([(60, stub_bytes(SHAPES_BY_ID["A"], 17))], tmp=tmp_path)
    s = audit_json(str(p), "--raw", "--bitness", "32", "--base", hex(BASE))["inputs"][0]["sites"][0]
    assert s["align64"] == 60 and s["line_crossings"] == [4] and s["chunk_crossings"] == [4]
    code, out, _ = run_cli("audit", str(p), "--raw", "--bitness", "32", "--base", hex(BASE))
    assert code == 0 and "line+4" in out


def test_needs_sync_when_no_alignment_helps(tmp_path):
    # Under (4,arbitrary) a 4-byte chunk boundary always splits shape A's 6 changing bytes: every
    # alignment needs syncs, pad refuses, padding cannot help.
    assert not sync_free("A", FetchModel(4, Order.ARBITRARY))
    p = image([(64 + a, stub_bytes(SHAPES_BY_ID["A"], 17)) for a in (0, 41)], tmp=tmp_path)
    doc = audit_json(str(p), "--raw", "--bitness", "32", "--base", hex(BASE), "--model", "4,arbitrary")
    sites = doc["inputs"][0]["sites"]
    assert {s["verdict"] for s in sites} == {"needs-sync"}
    assert all(s["pad_action"] == "refused" and s["pad_shift"] is None for s in sites)
    assert all("gatelink pad: refused" in s["detail"] for s in sites)
    # The alignment rule (no pad) agrees.
    img = gatelink.open_image(p, raw=gatelink.RawOptions(32, BASE))
    a = audit(gatelink.scan(img), FetchModel(4, Order.ARBITRARY), pad=False)
    assert {x.verdict for x in a.sites} == {"needs-sync"}


def test_no_plan_when_the_form_does_not_fit(tmp_path):
    # U5 (UD2 + OS gate, 5 bytes) cannot hold a far call: no plan for the far form.
    u5 = stub_bytes(SHAPES_BY_ID["U5"], 17)
    p = image([(8, u5)], tmp=tmp_path)
    s = audit_json(str(p), "--raw", "--bitness", "32", "--base", hex(BASE))["inputs"][0]["sites"][0]
    assert s["shape"] == "U5" and s["verdict"] == "no-plan" and s["plan"] == "" and s["syncs"] is None
    assert "forms that fit" in s["detail"] and "near" in s["detail"]
    s = audit_json(str(p), "--raw", "--bitness", "32", "--base", hex(BASE), "--form", "near")["inputs"][0]["sites"][0]
    assert s["verdict"] != "no-plan" and s["plan"]


def test_fail_on_exit_codes(tmp_path):
    A = SHAPES_BY_ID["A"]
    p = image([(64 + needing("A")[0], stub_bytes(A, 17)), (192 + sync_free("A")[0], stub_bytes(A, 0x7777))],
              tmp=tmp_path)
    args = (str(p), "--raw", "--bitness", "32", "--base", hex(BASE))
    assert run_cli("audit", *args)[0] == 0
    code, _, err = run_cli("audit", *args, "--fail-on", "needs-sync,no-plan")
    assert code == 0, err
    code, _, err = run_cli("audit", *args, "--fail-on", "needs-pad")
    assert code == 1 and "1 needs-pad" in err and "--fail-on" in err
    code, _, err = run_cli("audit", *args, "--fail-on", "unknown-gate", "--fail-on", "needs-sync")
    assert code == 1 and "unknown-gate" in err
    # A near-miss reason, and any near miss.
    drv = str(FIXTURES / "rdv" / "drv32_short.rdv")
    assert run_cli("audit", drv, "--fail-on", "wrong-bitness")[0] == 1
    assert run_cli("audit", drv, "--fail-on", "near-miss")[0] == 1
    # Unknown names are usage errors; an unreadable input (exit 3) wins over --fail-on.
    code, _, err = run_cli("audit", *args, "--fail-on", "needs_sync")
    assert code == 2 and "unknown --fail-on" in err
    code, _, err = run_cli("audit", drv, str(tmp_path / "missing.rdv"), "--fail-on", "near-miss")
    assert code == 3 and "missing.rdv" in err


def test_fail_on_matches_the_plan_status_of_unknown_gates(tmp_path):
    p = image([(64 + needing("A")[0], stub_bytes(SHAPES_BY_ID["A"], 0x7777))], tmp=tmp_path)
    args = (str(p), "--raw", "--bitness", "32", "--base", hex(BASE))
    s = audit_json(*args)["inputs"][0]["sites"][0]
    assert s["verdict"] == "unknown-gate" and s["plan_status"] == "needs-pad"
    assert run_cli("audit", *args, "--fail-on", "needs-pad")[0] == 1


def test_usage_errors():
    drv = str(FIXTURES / "rdv" / "drv32_short.rdv")
    for args in (("--model", "7,arbitrary"), ("--model", "8"), ("--form", "sideways"), ("--eager", "some"),
                 ("--format", "xml"), ("--policy", "lax"), ("--jobs", "0")):
        code, out, err = run_cli("audit", drv, *args)
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, (args, err)
    with pytest.raises(UsageError):
        parse_fail_on(["patchable,bogus"])
    assert parse_fail_on(["needs-sync, unknown-gate", "needs-sync"]) == ["needs-sync", "unknown-gate"]


def test_fixture_audit_agrees_with_the_scan_and_the_table():
    from gatelink.table import build_table

    p = FIXTURES / "pe" / "stubs_rdos.exe"
    res = gatelink.scan(gatelink.open_image(p))
    a = audit(res)
    assert [x.site for x in a.sites] == res.sites
    summ = a.summary()
    assert sum(summ["by_verdict"].values()) == len(res.sites) == summ["sites"]
    assert summ["near_misses"] == len(res.near_misses)
    assert sum(g["sites"] for g in summ["gates"]) == len(res.sites)
    # The table's eager flags and needs-sync flags are the audit's.
    table = build_table(res)
    by_off = {t.file_offset: t for t in table.sites}
    for x in a.sites:
        t = by_off[x.site.file_offset]
        assert t.eager == x.eager
        if x.syncs is not None:
            plan = table.plan_for(t, "far")
            assert plan is not None and plan.syncs == x.syncs


ALL_FORMATS = ("text", "json", "csv", "sarif", "html")


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_every_format_is_byte_identical_across_runs(tmp_path, fmt):
    files = [str(FIXTURES / "rdv" / "drv32_short.rdv"), str(FIXTURES / "boot" / "rdos.bin")]
    outs = []
    for i in range(2):
        o = tmp_path / f"out{i}.{fmt}"
        code, _, err = run_cli("audit", *files, "--format", fmt, "-o", str(o), "--jobs", str(i + 1))
        assert code == 0, err
        outs.append(o.read_bytes())
    assert outs[0] == outs[1]
    assert outs[0].endswith(b"\n")
    assert str(tmp_path).encode() not in outs[0]  # no absolute paths beyond those given


def test_text_and_csv_content(tmp_path):
    drv = str(FIXTURES / "rdv" / "drv32_short.rdv")
    code, out, _ = run_cli("audit", drv)
    assert code == 0
    header = next(line for line in out.splitlines() if line.strip().startswith("address"))
    for col in ("address", "region", "shape", "gate", "kind", "name", "conf", "align", "crosses", "plan", "syncs",
                "load", "verdict"):
        assert col in header
    assert "near misses (" in out and "gates called (" in out and "summary:" in out
    assert "\x1b[" not in out  # no colour codes when not on a terminal
    code, out, _ = run_cli("audit", drv, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    sites = [r for r in rows if r["record"] == "site"]
    near = [r for r in rows if r["record"] == "near_miss"]
    doc = audit_json(drv)
    assert len(sites) == len(doc["inputs"][0]["sites"]) and len(near) == len(doc["inputs"][0]["near_misses"])
    assert {r["verdict"] for r in sites} <= {"patchable", "needs-pad", "needs-sync", "no-plan", "unknown-gate"}
    assert all(r["reason"] for r in near)


def test_several_inputs_have_totals_and_errors(tmp_path):
    files = [str(FIXTURES / "rdv" / "drv32_short.rdv"), str(FIXTURES / "rdv" / "drv32_padded.rdv")]
    bad = tmp_path / "bad.rdv"
    bad.write_bytes(b"R2" + b"\xff" * 3)
    code, out, err = run_cli("audit", *files, str(bad), "--format", "json")
    assert code == 3 and "bad.rdv" in err
    doc = json.loads(out)
    assert [i["path"] for i in doc["inputs"]] == files
    assert doc["totals"]["sites"] == sum(i["summary"]["sites"] for i in doc["inputs"])
    assert doc["errors"][0]["path"] == str(bad)
    code, out, _ = run_cli("audit", *files)
    assert "all 2 inputs:" in out


def test_library_report_renders_every_format():
    res = gatelink.scan(gatelink.open_image(FIXTURES / "rdv" / "drv32_padded.rdv"))
    rep = AuditReport([audit(res)], res.gates, DEFAULT_MODEL, RDOS_POLICY)
    for fmt in ALL_FORMATS:
        assert render(rep, fmt)
    with pytest.raises(UsageError):
        render(rep, "pdf")


def test_pad_refusing_the_image_falls_back_to_alignments(tmp_path, monkeypatch):
    import gatelink.audit.model as model
    from gatelink.errors import InputError

    def refuse(scan, *a):
        raise InputError(scan.image.path, "no room for slots")

    monkeypatch.setattr(model, "pad_actions", refuse)
    p = image([(64 + needing("A")[0], stub_bytes(SHAPES_BY_ID["A"], 17))], tmp=tmp_path)
    doc = audit_json(str(p), "--raw", "--bitness", "32", "--base", hex(BASE))
    inp = doc["inputs"][0]
    assert inp["sites"][0]["verdict"] == "needs-pad" and inp["sites"][0]["pad_action"] == ""
    assert any("judged by alignment alone" in w for w in inp["warnings"])
