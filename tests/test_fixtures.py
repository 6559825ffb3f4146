"""The scanner against the fixtures' truth (fixtures/README.md).

Every ``fixtures/*/*.truth.json`` lists every planted stub of its fixture (from toolchain
symbols, never from gatelink) and every planted look-alike. The scan must report exactly the
planted sites, with the same file offset, address, region, shape, gate, selector and bitness,
and never a decoy. The fixtures must cover every shape of the catalog at every alignment, and
they must be what their build scripts make (``fixtures/build_all.py --check``, when the
toolchains are installed).
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FIXTURES
from gatelink import RawOptions, open_image, scan
from gatelink.catalog import SHAPES, SHAPES_BY_ID, stub_bytes

TRUTHS = sorted(FIXTURES.glob("*/*.truth.json"))
FIELDS = ("file_offset", "address", "region", "shape", "gate", "selector", "bitness")
DECOY_KINDS = {"operand", "immediate", "data-section", "data-in-code", "straddle", "wrong-bitness",
               "bad-selector", "unknown-form"}
FORMATS = {"pe32", "pe32+", "rdv16", "rdv32", "bootimg", "raw16", "raw32"}
TOOLS = ("nasm", "i686-w64-mingw32-ld", "i686-w64-mingw32-gcc", "i686-w64-mingw32-nm")


def _id(p: Path) -> str:
    return p.name.removesuffix(".truth.json")


@functools.cache
def truth(path: Path) -> dict:
    return json.loads(path.read_text())


def open_args(args: list[str]) -> tuple[str | None, RawOptions | None]:
    """``scan_args`` as gatelink/cli.py maps them to ``open_image(format=, raw=)``."""
    fmt = None
    raw = "--raw" in args
    bits = base = None
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("--format", "-f"):
            fmt = args[i + 1]
            i += 1
        elif a == "--bitness":
            bits = int(args[i + 1])
            i += 1
        elif a == "--base":
            base = int(args[i + 1], 0)
            i += 1
        elif a != "--raw":
            raise AssertionError(f"scan_args holds {a!r}, which this test does not know")
        i += 1
    if raw or fmt == "raw":
        assert bits is not None, "raw fixtures need --bitness"
        return None, RawOptions(bits, base or 0)
    return fmt, None


@functools.cache
def scanned(path: Path):
    t = truth(path)
    fmt, raw = open_args(t["scan_args"])
    img = open_image(path.parent / t["fixture"], format=fmt, raw=raw)
    return img, scan(img)


def _key(d) -> tuple:
    if isinstance(d, dict):
        return tuple(d[f] for f in FIELDS)
    return tuple(getattr(d, f) for f in FIELDS)


def test_fixtures_exist():
    names = {truth(p)["fixture"] for p in TRUTHS}
    assert "stubs_rdos.exe" in names  # the README's example
    assert {truth(p)["format"] for p in TRUTHS} >= {"pe32", "rdv16", "rdv32", "bootimg", "raw16", "raw32"}
    for p in TRUTHS:
        assert (p.parent / truth(p)["fixture"]).is_file(), p


@pytest.mark.parametrize("path", TRUTHS, ids=_id)
def test_truth_file_is_well_formed(path):
    t = truth(path)
    assert t["fixture"] + ".truth.json" == path.name
    assert t["format"] in FORMATS
    data = (path.parent / t["fixture"]).read_bytes()
    offsets = [s["file_offset"] for s in t["sites"]]
    assert len(set(offsets)) == len(offsets)
    for s in t["sites"]:
        shape = SHAPES_BY_ID[s["shape"]]
        got = data[s["file_offset"] : s["file_offset"] + shape.length]
        if shape.has_selector:
            assert s["selector"] in shape.selectors, s
            assert got == stub_bytes(shape, s["gate"], s["selector"]), s
        else:
            assert s["selector"] is None, s
            assert any(got == stub_bytes(shape, s["gate"], marker=m) for m in shape.markers), s
        assert s["bitness"] in (16, 32) and (shape.bitness in (None, s["bitness"])), s
    for d in t["decoys"]:
        assert d["kind"] in DECOY_KINDS, d
        assert d["file_offset"] not in offsets, d


@pytest.mark.parametrize("path", TRUTHS, ids=_id)
def test_format(path):
    img, _ = scanned(path)
    assert img.format == truth(path)["format"]


def _explain_missing(res, s: dict) -> str:
    o = s["file_offset"]
    near = [n for n in res.near_misses if o - 2 <= n.file_offset < o + 10]
    other = [x for x in res.sites if o < x.file_offset < o + 10 or x.file_offset == o]
    why = "; ".join(f"near miss at {n.file_offset - o:+d}: {n.reason} ({n.detail})" for n in near)
    why += "".join(f"; reported as {x.shape} at {x.file_offset - o:+d}" for x in other)
    return f"{s['shape']} at file offset {o} (address {s['address']:#x}): {why or 'nothing reported'}"


@pytest.mark.parametrize("path", TRUTHS, ids=_id)
def test_sites_match_truth(path):
    t = truth(path)
    _, res = scanned(path)
    want = {_key(s): s for s in t["sites"]}
    got = {_key(s): s for s in res.sites}
    missing = [want[k] for k in sorted(set(want) - set(got))]
    extra = [got[k] for k in sorted(set(got) - set(want))]
    lines = [f"MISSING {_explain_missing(res, s)}" for s in missing]
    lines += [f"EXTRA {s.shape} at file offset {s.file_offset} (address {s.address:#x}, gate {s.gate}, "
              f"selector {s.selector}): {s.confidence}, {s.evidence}" for s in extra]
    assert not lines, (f"{t['fixture']}: {len(missing)} planted sites missed, {len(extra)} sites not planted\n"
                       + "\n".join(lines))


@pytest.mark.parametrize("path", TRUTHS, ids=_id)
def test_no_decoy_is_a_site(path):
    t = truth(path)
    _, res = scanned(path)
    sites = {s.file_offset: s for s in res.sites}
    bad = [f"{d['kind']} decoy at {d['file_offset']} reported as {sites[d['file_offset']].shape} ({d['note']})"
           for d in t["decoys"] if d["file_offset"] in sites]
    assert not bad, "\n".join(bad)


def test_every_shape_at_every_alignment():
    """Each fixture that holds a shape holds it at all 64 address alignments, and every shape of
    the catalog is held by some fixture."""
    seen: dict[str, set[str]] = {}
    for p in TRUTHS:
        t = truth(p)
        per: dict[str, set[int]] = {}
        for s in t["sites"]:
            per.setdefault(s["shape"], set()).add(s["address"] % 64)
        for shape, al in per.items():
            assert al == set(range(64)), f"{t['fixture']}: {shape} misses alignments {sorted(set(range(64)) - al)}"
            seen.setdefault(shape, set()).add(t["fixture"])
    assert set(seen) == {s.id for s in SHAPES}, f"shapes in no fixture: {sorted({s.id for s in SHAPES} - set(seen))}"


def test_every_decoy_kind_is_planted():
    kinds = {d["kind"] for p in TRUTHS for d in truth(p)["decoys"]}
    assert kinds == DECOY_KINDS


def test_gates_vary():
    gates = [s["gate"] for p in TRUTHS for s in truth(p)["sites"]]
    assert 882 in gates and min(gates) < 16 and max(gates) > 0xFFFFFF
    assert len(set(gates)) > len(gates) // 4


@pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS), reason="nasm / mingw-w64 toolchain not installed")
def test_fixtures_rebuild_byte_identical():
    pytest.importorskip("capstone")
    p = subprocess.run([sys.executable, str(FIXTURES / "build_all.py"), "--check"], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
