"""The command line: exit codes, the JSON contract, determinism, atomic output."""

import json
import os

from conftest import asm, rdv16, run_cli
from gatelink.catalog import SHAPES_BY_ID, stub_bytes

CODE = asm("push ebp\n.byte " + ",".join(f"0x{b:02x}" for b in stub_bytes(SHAPES_BY_ID["A"], 17)) + "\npop ebp\nret")


def raw(tmp_path, data=CODE, name="k.bin"):
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def test_json_contract(tmp_path):
    code, out, err = run_cli("scan", raw(tmp_path), "--raw", "--bitness", "32", "--base", "0x110000", "--format", "json")
    assert code == 0, err
    doc = json.loads(out)
    inp = doc["inputs"][0]
    assert {"path", "format", "sites", "near_misses"} <= set(inp)
    assert inp["format"] == "raw32"
    site = inp["sites"][0]
    for key in ("file_offset", "address", "region", "bitness", "shape", "length", "gate", "selector",
                "gate_name", "confidence"):
        assert key in site
    assert site["address"] == 0x110001 and isinstance(site["address"], int)
    assert site["gate_name"] == "create_data_sel32" and site["shape"] == "A"
    assert doc["gate_database"]["sources"][0]["path"] == "bundled"


def test_unknown_gate_name_is_null(tmp_path):
    data = stub_bytes(SHAPES_BY_ID["A"], 0x7777) + b"\xc3"
    code, out, _ = run_cli("scan", raw(tmp_path, data), "--raw", "--bitness", "32", "-f", "json")
    s = json.loads(out)["inputs"][0]["sites"][0]
    assert s["gate_name"] is None and s["gate"] == 0x7777
    assert json.loads(out)["inputs"][0]["summary"]["unknown_gates"] == [{"kind": "os", "gate": 0x7777}]


def test_deterministic_and_atomic_output(tmp_path):
    p = raw(tmp_path)
    outs = []
    for i in range(2):
        o = tmp_path / f"out{i}.json"
        assert run_cli("scan", p, "--raw", "--bitness", "32", "-f", "json", "-o", str(o))[0] == 0
        outs.append(o.read_bytes())
    assert outs[0] == outs[1]
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_csv_and_text(tmp_path):
    p = raw(tmp_path)
    code, out, _ = run_cli("scan", p, "--raw", "--bitness", "32", "-f", "csv", "--all")
    assert code == 0 and out.splitlines()[0].startswith("record,path,file_offset")
    assert out.splitlines()[1].startswith("site,")
    code, out, _ = run_cli("scan", p, "--raw", "--bitness", "32")
    assert code == 0 and "create_data_sel32" in out and "1 sites" in out


def test_format_option_takes_input_and_output_formats(tmp_path):
    p = tmp_path / "d.rdv"
    p.write_bytes(rdv16(stub_bytes(SHAPES_BY_ID["B"], 3) + b"\xc3"))
    code, out, err = run_cli("scan", str(p), "--format", "rdv", "--format", "json")
    assert code == 0, err and json.loads(out)["inputs"][0]["format"] == "rdv16"
    code, _, err = run_cli("scan", str(p), "--format", "pe")
    assert code == 3 and "not a pe file" in err


def test_exit_codes_and_one_line_errors(tmp_path):
    cases = [
        (("scan",), 2), (("scan", "--format", "xml", "x"), 2), (("bogus",), 2),
        (("scan", raw(tmp_path), "--bitness", "32"), 2), (("scan", raw(tmp_path), "--raw"), 2),
        (("scan", raw(tmp_path), "--raw", "--bitness", "12"), 2),
        (("scan", str(tmp_path / "missing.exe")), 3), (("scan", str(tmp_path)), 3),
        (("scan", raw(tmp_path)), 3),  # no magic, no --raw
    ]
    for args, want in cases:
        code, out, err = run_cli(*args)
        assert code == want, (args, code, err)
        lines = [l for l in err.splitlines() if l.strip()]
        assert len(lines) == 1 and lines[0].startswith("gatelink:"), (args, err)
        assert "Traceback" not in err


def test_good_and_bad_inputs_together(tmp_path):
    good = raw(tmp_path)
    code, out, err = run_cli("scan", good, str(tmp_path / "nope"), "--raw", "--bitness", "32", "-f", "json")
    assert code == 3
    doc = json.loads(out)
    assert len(doc["inputs"]) == 1 and doc["errors"][0]["error"] == "no such file"


def test_gates_option(tmp_path):
    d = tmp_path / "os.def"
    d.write_text("osgate_entries = 20\nmy_gate_nr = 17\n")
    code, out, _ = run_cli("scan", raw(tmp_path), "--raw", "--bitness", "32", "--gates", str(d), "-f", "json")
    doc = json.loads(out)
    assert doc["inputs"][0]["sites"][0]["gate_name"] == "my_gate"
    assert doc["gate_database"]["by_kind"]["os"] == str(d)


def test_plans_and_verify_plan_roundtrip(tmp_path):
    out = tmp_path / "plans.json"
    code, _, err = run_cli("plans", "-s", "A", "-a", "0", "-m", "8,arbitrary", "-b", "rdos", "-b", "synthesis",
                           "-f", "json", "-o", str(out))
    assert code == 0, err
    plans = json.loads(out.read_text())["plans"]
    assert [p["builder"] for p in plans] == ["rdos", "synthesis"]
    assert [p["safe"] for p in plans] == [False, True]
    for p in plans:
        assert {"shape", "bitness", "address", "original", "final", "context", "steps", "model", "policy",
                "builder", "safe", "syncs", "writes"} <= set(p)
    code, text, _ = run_cli("verify", "--plan", str(out))
    assert code == 1 and "UNSAFE" in text and "SAFE" in text
    (tmp_path / "safe.json").write_text(json.dumps(plans[1]))
    assert run_cli("verify", "--plan", str(tmp_path / "safe.json"))[0] == 0
    (tmp_path / "bad.json").write_text('{"plans": [{"bitness": 32}]}')
    code, _, err = run_cli("verify", "--plan", str(tmp_path / "bad.json"))
    assert code == 3 and len(err.strip().splitlines()) == 1


def test_verify_subset_text(tmp_path):
    code, out, err = run_cli("verify", "-s", "F", "-m", "64,arbitrary", "-b", "single-store", "-j", "1")
    assert code == 0, err
    assert "safe s0 w1" in out
