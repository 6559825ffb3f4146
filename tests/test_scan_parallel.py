"""Large code regions are proven in chunks, in worker processes: the result must not depend on
how many workers there are, and chunks must lose nothing on the fixtures."""

import importlib
import json

import pytest

from conftest import FIXTURES
from gatelink import open_image, scan

scan_mod = importlib.import_module("gatelink.scan")  # the package; gatelink.scan is the function


def _key(res):
    return ([s.to_json() for s in res.sites], [n.to_json() for n in res.near_misses])


@pytest.mark.parametrize("name", ["pe/stubs_asm.exe", "pe/stubs_rdos.exe"])
def test_chunked_scan_is_the_same_with_any_number_of_workers(name, monkeypatch):
    path = FIXTURES / name
    truth = json.loads((FIXTURES / f"{name}.truth.json").read_text())
    img = open_image(path)
    monkeypatch.setattr(scan_mod, "CHUNK_BYTES", 8192)  # several chunks in a small fixture
    one = scan(img, jobs=1)
    two = scan(img, jobs=2)
    assert _key(one) == _key(two)
    assert {s.file_offset for s in one.sites} == {s["file_offset"] for s in truth["sites"]}


def test_default_jobs_match_one_job():
    img = open_image(FIXTURES / "pe/stubs_asm.exe")
    assert _key(scan(img)) == _key(scan(img, jobs=1))
