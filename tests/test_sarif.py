"""gatelink audit --format sarif: valid SARIF 2.1.0 (the OASIS schema, errata 01, shipped as test
data), binary locations, one rule per verdict and near-miss reason."""

import json
from pathlib import Path

import jsonschema
import pytest
from conftest import FIXTURES, run_cli

from gatelink.audit import VERDICTS
from gatelink.catalog import SHAPES_BY_ID, stub_bytes
from gatelink.scan import REASONS

SCHEMA = json.loads((Path(__file__).parent / "data" / "sarif-schema-2.1.0.json").read_text())


def validate(doc: dict) -> None:
    checker = jsonschema.FormatChecker()
    # The uri-reference format is only checked when a URI validator is installed; make sure it is,
    # or a malformed artifact URI would pass unnoticed.
    assert not checker.conforms("a b", "uri-reference"), "install rfc3986-validator to check URIs"
    jsonschema.Draft4Validator.check_schema(SCHEMA)
    errors = sorted(jsonschema.Draft4Validator(SCHEMA, format_checker=checker).iter_errors(doc), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:10])


def sarif(*args):
    code, out, err = run_cli("audit", *args, "--format", "sarif")
    return code, json.loads(out), err


def test_fixtures_validate_with_binary_locations():
    files = [str(FIXTURES / "pe" / "stubs_rdos.exe"), str(FIXTURES / "rdv" / "drv32_short.rdv"),
             str(FIXTURES / "boot" / "rdos.bin")]
    code, doc, err = sarif(*files)
    assert code == 0, err
    validate(doc)
    code, audit_out, _ = run_cli("audit", *files, "--format", "json")
    audit_doc = json.loads(audit_out)
    assert doc["version"] == "2.1.0" and len(doc["runs"]) == 1
    run = doc["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == [f"gatelink/site/{v}" for v in VERDICTS] + \
        [f"gatelink/near-miss/{r}" for r in REASONS]
    assert len({r["id"] for r in rules}) == len(rules)
    assert [a["location"]["uri"] for a in run["artifacts"]] == ["file://" + f for f in files]  # absolute paths
    results = run["results"]
    n_sites = sum(len(i["sites"]) for i in audit_doc["inputs"])
    n_near = sum(len(i["near_misses"]) for i in audit_doc["inputs"])
    assert len(results) == n_sites + n_near
    expected = [(ai, s) for ai, i in enumerate(audit_doc["inputs"]) for s in i["sites"]]
    site_results = [r for r in results if r["ruleId"].startswith("gatelink/site/")]
    assert len(site_results) == n_sites
    for res, (ai, site) in zip(site_results, expected):
        assert rules[res["ruleIndex"]]["id"] == res["ruleId"] == f"gatelink/site/{site['verdict']}"
        loc = res["locations"][0]["physicalLocation"]
        assert loc["artifactLocation"]["index"] == ai
        assert loc["region"] == {"byteOffset": site["file_offset"], "byteLength": site["length"]}
        addr = loc["address"]
        assert addr["absoluteAddress"] == site["address"] and addr["kind"] == "instruction"
        parent = run["addresses"][addr["parentIndex"]]
        assert parent["name"] == site["region"]
        assert parent["absoluteAddress"] + addr["offsetFromParent"] == site["address"]
        assert res["kind"] == ("pass" if site["verdict"] == "patchable" else "fail")
        assert res["properties"]["plan"] == site["plan"] and res["properties"]["syncs"] == site["syncs"]
    near = [r for r in results if r["ruleId"].startswith("gatelink/near-miss/")]
    assert len(near) == n_near and all("byteOffset" in r["locations"][0]["physicalLocation"]["region"] for r in near)
    fps = [next(iter(r["partialFingerprints"].values())) for r in results]
    assert len(set(fps)) == len(fps)
    assert run["properties"]["totals"]["sites"] == n_sites


def test_fingerprints_survive_moved_code(tmp_path):
    """An alert keeps its identity when a rebuild shifts the code."""
    A = SHAPES_BY_ID["A"]
    fps = []
    for shift in (0, 7):
        p = tmp_path / "k.bin"
        p.write_bytes(b"\x90" * (16 + shift) + stub_bytes(A, 17) + b"\x90" * 9 + stub_bytes(A, 0x7777) + b"\xc3")
        code, doc, err = sarif(str(p), "--raw", "--bitness", "32")
        assert code == 0, err
        validate(doc)
        fps.append([r["partialFingerprints"] for r in doc["runs"][0]["results"]])
    assert fps[0] == fps[1]


def test_awkward_paths_and_failures_validate(tmp_path):
    d = tmp_path / "dir with space"
    d.mkdir()
    good = d / "drv #1.rdv"
    good.write_bytes((FIXTURES / "rdv" / "drv32_padded.rdv").read_bytes())
    bad = d / "bad%.rdv"
    bad.write_bytes(b"R2\x00")
    code, doc, err = sarif(str(good), str(bad))
    assert code == 3 and "bad%.rdv" in err
    validate(doc)
    run = doc["runs"][0]
    uri = run["artifacts"][0]["location"]["uri"]
    assert uri.startswith("file:///") and "dir%20with%20space/drv%20%231.rdv" in uri
    inv = run["invocations"][0]
    assert inv["executionSuccessful"] is False
    note = next(n for n in inv["toolExecutionNotifications"] if n["level"] == "error")
    assert "bad%.rdv" in note["message"]["text"]


def test_levels_follow_the_rules():
    code, doc, _ = sarif(str(FIXTURES / "rdv" / "drv16.rdv"))
    validate(doc)
    run = doc["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    for r in run["results"]:
        assert r["level"] == rules[r["ruleIndex"]]["defaultConfiguration"]["level"]
    levels = {r["ruleId"]: r["level"] for r in run["results"]}
    assert levels.get("gatelink/site/no-plan") == "error"  # U5/U7 in 16-bit code fit no far call
    assert levels.get("gatelink/site/patchable") == "none"


@pytest.mark.parametrize("model", ["8,arbitrary", "64,arbitrary"])
def test_deterministic(model):
    f = str(FIXTURES / "rdv" / "drv32_short.rdv")
    a = run_cli("audit", f, "--format", "sarif", "--model", model)[1]
    b = run_cli("audit", f, "--format", "sarif", "--model", model)[1]
    assert a == b
