"""The Watcom-style fixtures (fixtures/watcom) against their own truth, without gatelink's scanner.

The truth files say where every stub sits, how a disassembler reaches it, where the jump tables
and address references are; these tests check that the bytes say the same (headers, stub bytes,
alignments, table entries and dispatch jumps, relocations, prologues, the patterns the issue
lists), so the fixtures stay a faithful oracle for the scanner (tests/test_fixtures.py holds the
scanner to them).
"""

from __future__ import annotations

import functools
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pefile
import pytest
from conftest import FIXTURES

from gatelink.catalog import SHAPES_BY_ID, stub_bytes

WATCOM = FIXTURES / "watcom"
TRUTHS = sorted(WATCOM.glob("*.truth.json"))
NAMES = {"cdrv32.rdv", "cdrv32_names.rdv", "asmdrv32.rdv", "asmdrv16.rdv", "app.exe", "watcom.bin"}
REACH = {"entry", "jump-table", "immediate", "relocation", "unreferenced"}
DECOY_KINDS = {"operand", "immediate", "data-section", "data-in-code", "straddle", "wrong-bitness",
               "bad-selector", "unknown-form"}
STARTUP = bytes.fromhex("CCEBFD90909090") + bytes(9)
WATCOM_FILL = {bytes.fromhex(h) for h in (
    "90", "8BC0", "8D4000", "8D442000", "8D40008BC9", "8D8000000000", "8D800000000090", "8D80000000008BD2",
    "8D80000000008D5200", "8D80000000008D542200", "8D80000000008D52008BDB", "8D80000000008D9200000000",
    "8D80000000008D920000000090", "8D80000000008D92000000008BC0", "8D80000000008D92000000008D4000")}
TOOLS = ("nasm", "i686-w64-mingw32-ld", "i686-w64-mingw32-nm")


def _id(p: Path) -> str:
    return p.name.removesuffix(".truth.json")


@functools.cache
def truth(path: Path) -> dict:
    return json.loads(path.read_text())


@functools.cache
def blob(path: Path) -> bytes:
    return (path.parent / truth(path)["fixture"]).read_bytes()


def by_name(name: str) -> tuple[dict, bytes]:
    p = WATCOM / f"{name}.truth.json"
    return truth(p), blob(p)


def code_views(t: dict) -> dict[str, tuple[int, int, int, int]]:
    """region -> (file offset, address, size, bitness) of each code region the truth names."""
    if t["format"] == "bootimg":
        return {d["region"]: (d["code"]["file_offset"], 0, d["code"]["size"], d["bitness"]) for d in t["devices"]}
    c = t["code"]
    region = ".text" if t["format"] == "pe32" else "code"
    return {region: (c["file_offset"], c["address"], c["size"], c["bitness"])}


def pe_relocs(data: bytes) -> list[int]:
    """HIGHLOW base relocations (absolute addresses), read by pefile: a reader independent of
    the generator's own (fixtures/watcom/wgen.py, reloc_sites)."""
    pe = pefile.PE(data=data, fast_load=True)
    pe.parse_data_directories(directories=[pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_BASERELOC"]])
    blocks = getattr(pe, "DIRECTORY_ENTRY_BASERELOC", [])
    assert blocks, "no base relocation directory"
    out = []
    for block in blocks:
        for r in block.entries:
            assert r.type in (0, 3), f"relocation type {r.type}"
            if r.type == 3:
                out.append(pe.OPTIONAL_HEADER.ImageBase + r.rva)
    return out


def test_fixture_set():
    assert {truth(p)["fixture"] for p in TRUTHS} == NAMES
    for p in TRUTHS:
        t = truth(p)
        assert t["fixture"] + ".truth.json" == p.name
        assert t["expect_all_sites"] is True
        assert (p.parent / t["fixture"]).stat().st_size < 300 * 1024


@pytest.mark.parametrize("path", TRUTHS, ids=_id)
def test_sites_are_their_bytes(path):
    t, data = truth(path), blob(path)
    views = code_views(t)
    funcs = {(f.get("region", next(iter(views))), f["name"]): f for f in t["functions"]}
    offsets = set()
    for s in t["sites"]:
        shape = SHAPES_BY_ID[s["shape"]]
        o = s["file_offset"]
        assert o not in offsets
        offsets.add(o)
        assert s["selector"] in shape.selectors, s
        assert data[o : o + shape.length] == stub_bytes(shape, s["gate"], s["selector"]), s
        foff, addr, size, bits = views[s["region"]]
        assert s["bitness"] == bits == shape.bitness, s
        assert foff <= o and o + shape.length <= foff + size and s["address"] == addr + o - foff, s
        assert s["reached_by"] in REACH, s
        f = funcs[(s["region"], s["function"])]
        assert f["address"] <= s["address"] < f["address"] + f["size"], s
    for d in t["decoys"]:
        assert d["kind"] in DECOY_KINDS and d["file_offset"] not in offsets, d


@pytest.mark.parametrize("path", TRUTHS, ids=_id)
def test_every_shape_at_every_alignment(path):
    t = truth(path)
    per: dict[tuple[str, str], list[int]] = {}
    for s in t["sites"]:
        per.setdefault((s["region"], s["shape"]), []).append(s["address"] % 64)
    shapes = {shape for _, shape in per}
    want = {"F", "G", "H"} if t["format"] == "pe32" else {"A", "C", "I"} if t["format"] == "rdv32" else \
        {"B", "D", "E"} if t["format"] == "rdv16" else {"A", "C", "I", "B", "D", "E"}
    assert shapes == want
    for key, al in per.items():
        assert sorted(al) == list(range(64)), key


@pytest.mark.parametrize("path", TRUTHS, ids=_id)
def test_every_kind_of_reach(path):
    t = truth(path)
    got = {s["reached_by"] for s in t["sites"]}
    third = "relocation" if t["format"] == "pe32" else "immediate"
    assert got == {"entry", "jump-table", third, "unreferenced"}
    assert t["reached_by"] == {k: sum(1 for s in t["sites"] if s["reached_by"] == k) for k in sorted(got)}
    # functions: the entry point is reached by "entry"; nothing else is called a relocation in a driver
    entry = [f for f in t["functions"] if f["address"] == t.get("entry")]
    if t["format"] != "bootimg":
        assert entry and entry[0]["reached_by"] == "entry"
    assert {f["reached_by"] for f in t["functions"]} <= {"entry", "jump-table", third, "unreferenced"}


@pytest.mark.parametrize("path", TRUTHS, ids=_id)
def test_decoys(path):
    t, data = truth(path), blob(path)
    kinds = {d["kind"] for d in t["decoys"]}
    need = set(DECOY_KINDS) - ({"data-section"} if t["format"] == "bootimg" else set())
    assert kinds >= need, sorted(need - kinds)
    heads = (b"\x3e\x67\x9a", b"\x67\x66\x9a", b"\x55\x67\x9a", b"\x67\x9a", b"\x66\x9a", b"\x9a", b"\x0f\x0b")
    for d in t["decoys"]:
        assert data[d["file_offset"] : d["file_offset"] + 3].startswith(heads), d
    if t["format"] != "rdv16":
        # watcom-output.md fact 5: decoded one byte late, C2 x x reads as ret imm16 and leaves
        # the legacy 7-byte form 9A g g 00 00 sel 00
        fact5 = [d for d in t["decoys"] if "ret imm16" in d["note"]]
        assert fact5
        for d in fact5:
            o = d["file_offset"]
            assert data[o] == 0x9A and data[o + 3 : o + 5] == b"\0\0" and data[o + 5] <= 7 and data[o + 6] == 0, d
            assert data[o - 3] == 0xC2 or data[o - 4] == 0xC2 or data[o - 5] == 0xC2, d


def _rdv_header(data: bytes) -> dict:
    sig = struct.unpack_from("<H", data)[0]
    if sig == 0x3252:
        _, eip, cs, csel, ds, dsel = struct.unpack_from("<HIIHIH", data)
        return {"bits": 32, "entry": eip, "code_size": cs, "code_sel": csel, "data_size": ds, "data_sel": dsel, "size": 18}
    assert sig == 0x3652
    _, ip, cs, csel, ds, dsel = struct.unpack_from("<HHHHHH", data)
    return {"bits": 16, "entry": ip, "code_size": cs, "code_sel": csel, "data_size": ds, "data_sel": dsel, "size": 12}


@pytest.mark.parametrize("name", ["cdrv32.rdv", "cdrv32_names.rdv", "asmdrv32.rdv", "asmdrv16.rdv"])
def test_driver_headers(name):
    t, data = by_name(name)
    h = _rdv_header(data)
    c = t["code"]
    assert h["bits"] == c["bitness"] and c["file_offset"] == h["size"] and c["address"] == 0
    assert h["entry"] == t["entry"]
    assert 0x400 <= h["code_sel"] <= 0xFFF and h["code_sel"] & 7 == 0 and h["data_sel"] & 7 == 0
    if h["bits"] == 32:
        # the real linker writes code_size 16 more than the code
        assert h["code_size"] == c["size"] + 16 == t["code_size_field"]
        end = h["size"] + c["size"]
        if t["code_size_quirk"] == "padded":
            assert data[end : end + 16] == bytes(16)
            assert len(data) >= h["size"] + h["code_size"] + h["data_size"]
        else:
            assert data[end : end + 16] != bytes(16)
            assert len(data) - (t.get("trailer", {}).get("size", 0)) == h["size"] + h["code_size"] + h["data_size"] - 16
    else:
        assert h["code_size"] == c["size"] and len(data) >= h["size"] + h["code_size"] + h["data_size"]


def _code(t: dict, data: bytes) -> bytes:
    c = t["code"]
    return data[c["file_offset"] : c["file_offset"] + c["size"]]


def test_code_segment_starts():
    t, data = by_name("cdrv32.rdv")
    assert _code(t, data).startswith(STARTUP)
    first = min(f["address"] for f in t["functions"])
    assert first == 0x10  # the first C function right after the startup bytes
    t, data = by_name("app.exe")
    assert _code(t, data).startswith(STARTUP)
    for name, n in (("asmdrv32.rdv", 38), ("asmdrv16.rdv", 51), ("cdrv32_names.rdv", None)):
        t, data = by_name(name)
        code = _code(t, data)
        first = min(f["address"] for f in t["functions"] + [{"address": j["address"]} for j in t["jump_tables"]])
        names = code[:first]
        assert names.endswith(b"\0") and all(32 < b < 127 for b in names.replace(b"\0", b"")), name
        if n is not None:
            assert first == n, name


@pytest.mark.parametrize("name", ["cdrv32.rdv", "cdrv32_names.rdv", "asmdrv32.rdv", "asmdrv16.rdv"])
def test_driver_entry_near_the_end(name):
    t, _ = by_name(name)
    funcs = sorted(t["functions"], key=lambda f: f["address"])
    entry = t["entry"]
    assert entry > 0.6 * t["code"]["size"]
    if name != "cdrv32.rdv":
        assert funcs[-1]["address"] == entry  # init, the last procedure
    else:
        assert funcs[-1]["address"] > entry  # runtime modules follow _cstart_


@pytest.mark.parametrize("path", TRUTHS, ids=_id)
def test_jump_tables(path):
    t, data = truth(path), blob(path)
    views = code_views(t)
    funcs = {(f.get("region", next(iter(views))), f["name"]): f for f in t["functions"]}
    pe = t["format"] == "pe32"
    for j in t["jump_tables"]:
        region = j.get("region", next(iter(views)))
        foff, addr, _, bits = views[region]
        es = j["entry_size"]
        o = j["file_offset"]
        assert o == foff + j["address"] - addr
        entries = [int.from_bytes(data[o + i : o + i + es], "little") for i in range(0, es * j["entries"], es)]
        f = funcs[(region, j["function"])]
        end = j["address"] + es * j["entries"]
        if j["placement"] in ("module-start", "function-start"):
            assert end == f["address"], j  # the table ends exactly at the function's first byte
        else:
            assert f["address"] < j["address"] and end <= f["address"] + f["size"], j
        starts = {g["address"] for (r, _), g in funcs.items() if r == region}
        for e in entries:
            # a case of the same function, or (the default of a runtime table) another function's start
            assert (f["address"] <= e < f["address"] + f["size"] and not j["address"] <= e < end) or e in starts, (j, e)
        # the dispatch jump sits after the table and reads it (less the bias)
        jo = foff + j["dispatch"] - addr
        form = bytes.fromhex(j["form"].replace(" disp32", "").replace(" disp16", ""))
        assert data[jo : jo + len(form)] == form
        dsz = 2 if j["form"].endswith("disp16") else 4
        disp = int.from_bytes(data[jo + len(form) : jo + len(form) + dsz], "little")
        assert disp == (j["address"] - j["bias"]) & ((1 << 8 * dsz) - 1)
        assert j["dispatch"] >= end and j["distance"] == j["dispatch"] - end
        if not pe and bits == 32:
            assert form.startswith(b"\x2e")  # drivers: code and data segments differ, CS override
    forms = {j["form"] for j in t["jump_tables"]}
    want = {"cdrv32.rdv": {"2E FF A0 disp32", "2E FF 24 85 disp32"}, "cdrv32_names.rdv": {"2E FF A0 disp32", "2E FF 24 85 disp32"},
            "asmdrv32.rdv": {"2E FF 24 85 disp32"}, "asmdrv16.rdv": {"2E FF A7 disp16"},
            "app.exe": {"FF A0 disp32", "FF 24 85 disp32"}}.get(t["fixture"])
    if want:
        assert forms == want
    if t["fixture"] == "app.exe":
        placements = {j["placement"] for j in t["jump_tables"]}
        assert {"module-start", "function-start", "in-function"} <= placements
        assert any(j["bias"] == 4 for j in t["jump_tables"])
    if t["fixture"] == "asmdrv16.rdv":
        assert all(j["entries"] == 4 and j["entry_size"] == 2 for j in t["jump_tables"])
        for j in t["jump_tables"]:
            jo = views["code"][0] + j["dispatch"]
            assert data[jo - 5 : jo] == bytes.fromhex("83E303D1E3")  # and bx, 3 / shl bx, 1, no cmp


def test_pe_headers_and_relocations():
    t, data = by_name("app.exe")
    e = struct.unpack_from("<I", data, 0x3C)[0]
    assert data[e : e + 4] == b"PE\0\0"
    opt = e + 24
    assert struct.unpack_from("<H", data, opt)[0] == 0x10B
    assert struct.unpack_from("<H", data, opt + 68)[0] == 0xAD05
    assert struct.unpack_from("<HH", data, opt + 40) == (8, 8)
    assert ".reloc" in {s["name"] for s in t["sections"]}
    relocs = set(pe_relocs(data))
    assert len(relocs) == t["patterns"]["base relocations (HIGHLOW)"]
    for j in t["jump_tables"]:
        for i in range(j["entries"]):
            assert j["address"] + 4 * i in relocs, j  # every entry is a relocated address
        assert j["dispatch"] + (3 if j["form"].startswith("FF 24") else 2) in relocs, j  # and the table base
    for r in t["references"]:
        assert any(r["address"] < x < r["address"] + 11 for x in relocs), r
    # functions reached only through a relocated pointer: their start is a relocated value
    secs = t["sections"]

    def dword(va: int) -> int:
        s = next(s for s in secs if s["address"] <= va < s["address"] + s["size"])
        return struct.unpack_from("<I", data, s["file_offset"] + va - s["address"])[0]
    values = {dword(x) for x in relocs}
    reloc_funcs = [f for f in t["functions"] if f["reached_by"] == "relocation"]
    assert reloc_funcs and all(f["address"] in values for f in reloc_funcs)
    text = next(s for s in secs if s["name"] == ".text")
    # a C string in code pointed to by a relocated mov
    strings = [r for r in t["references"] if r["what"] == "string"]
    assert strings
    for r in strings:
        o = text["file_offset"] + r["target_address"] - text["address"]
        assert text["address"] <= r["target_address"] < text["address"] + text["size"]
        assert data[o : data.index(b"\0", o)].isascii()


def test_pe_patterns():
    t, data = by_name("app.exe")
    code = _code(t, data)
    assert code.count(bytes.fromhex("5289C255679A")) >= 3  # push edx / mov edx, eax / shape G (or H)
    assert code.count(bytes.fromhex("66A98BF9")) >= 1  # the overlapping memchr tail
    assert b"\xff\xe0" in code  # a jmp eax that is no jump table
    funcs = sorted(t["functions"], key=lambda f: f["address"])
    base = t["code"]["address"]
    app = [f for f in funcs if f["kind"] == "app"]
    chk = sum(1 for f in app if code[f["address"] - base] == 0x68 and code[f["address"] - base + 5] == 0xE8)
    assert chk >= 0.8 * len(app)
    assert all(code[f["address"] - base] in (0x68, 0x55) for f in app)
    # runtime functions: register pushes; the gap to the previous runtime function of the same
    # module is a Watcom fill sequence (or nothing)
    rt = [f for f in funcs if f["kind"] == "runtime"]
    assert {code[f["address"] - base] for f in rt} & {0x53, 0x51, 0x52}
    for a, b in zip(funcs, funcs[1:]):
        if a["kind"] == b["kind"] == "runtime" and a["module"] == b["module"]:
            gap = code[a["address"] + a["size"] - base : b["address"] - base]
            tables = [j for j in t["jump_tables"] if j["function"] == b["name"] and j["placement"] != "in-function"]
            if tables:
                gap = gap[: len(gap) - 4 * tables[0]["entries"]]
            assert gap == b"" or gap in WATCOM_FILL, (a["name"], b["name"], gap.hex())
    # application functions of one module abut
    for a, b in zip(funcs, funcs[1:]):
        if a["kind"] == b["kind"] == "app" and a["module"] == b["module"]:
            gap = b["address"] - (a["address"] + a["size"])
            tables = [j for j in t["jump_tables"] if j["function"] == b["name"] and j["placement"] != "in-function"]
            assert gap == sum(4 * j["entries"] for j in tables), (a["name"], b["name"])


def test_driver_references():
    for name, forms in (("cdrv32.rdv", {"B8", "B9", "BA", "BE", "BF", "68", "C7 05"}), ("cdrv32_names.rdv", {"BE", "BF", "BA"}),
                        ("asmdrv32.rdv", {"BE", "BF"}), ("asmdrv16.rdv", {"66 BE", "66 BF"})):
        t, data = by_name(name)
        code = _code(t, data)
        got = set()
        for r in t["references"]:
            form = r["form"].split(" imm32")[0].split(" disp32")[0]
            got.add(form)
            a = r["address"]
            op = bytes.fromhex(form.replace(" ", ""))
            assert code[a : a + len(op)] == op
            imm_at = a + len(op) + (4 if form == "C7 05" else 0)
            assert int.from_bytes(code[imm_at : imm_at + 4], "little") == r["target_address"], r
        assert got == forms, name
        handlers = {r["target"] for r in t["references"] if r["what"] in ("handler", "thunk")}
        # nothing calls a handler: no E8 rel32 anywhere targets one
        starts = {f["name"]: f["address"] for f in t["functions"]}
        step = 3 if t["code"]["bitness"] == 16 else 5
        for i in range(len(code) - step):
            if code[i] == 0xE8:
                rel = int.from_bytes(code[i + 1 : i + step], "little", signed=True)
                tgt = (i + step + rel) & (0xFFFF if step == 3 else 0xFFFFFFFF)
                assert tgt not in {starts[h] for h in handlers}, (name, hex(i))


def test_thunks_and_prologues():
    t, data = by_name("cdrv32_names.rdv")
    code = _code(t, data)
    thunks = [f for f in t["functions"] if f["kind"] == "thunk"]
    assert thunks
    for f in thunks:
        assert f["size"] == 6 and code[f["address"]] == 0xE8 and code[f["address"] + 5] == 0xCB
    t, data = by_name("asmdrv32.rdv")
    code = _code(t, data)
    for f in t["functions"]:
        a = f["address"]
        assert code[a] == 0x1E or (code[a] == 0xB8 and code[a + 5 : a + 7] == b"\x8e\xd8"), f
    t, data = by_name("asmdrv16.rdv")
    code = _code(t, data)
    loads = sum(1 for f in t["functions"] if bytes.fromhex("B8") in code[f["address"] : f["address"] + 2]
                and b"\x8e\xd8" in code[f["address"] : f["address"] + 6])
    assert loads >= 0.6 * len(t["functions"])
    stubs_after_mov_ax = sum(1 for s in t["sites"] if code[s["address"] - 3] == 0xB8)
    assert stubs_after_mov_ax >= 0.25 * len(t["sites"])


def test_sites_decode_as_far_calls():
    capstone = pytest.importorskip("capstone")
    for p in TRUTHS:
        t, data = truth(p), blob(p)
        for s in t["sites"]:
            shape = SHAPES_BY_ID[s["shape"]]
            md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32 if s["bitness"] == 32 else capstone.CS_MODE_16)
            md.detail = True
            o = s["file_offset"] + shape.call_at
            ins = next(md.disasm(data[o : o + 16], 0, 1))
            assert ins.mnemonic == "lcall" and ins.size == shape.call_length, s
            sel, off = ins.operands[0].imm, ins.operands[1].imm
            assert sel == s["selector"] and off & 0xFFFFFFFF == s["gate"], s


@pytest.mark.skipif(any(shutil.which(x) is None for x in TOOLS), reason="nasm / mingw-w64 toolchain not installed")
def test_rebuild_byte_identical(tmp_path):
    pytest.importorskip("capstone")
    p = subprocess.run([sys.executable, str(WATCOM / "build.py"), "--out", str(tmp_path)], capture_output=True,
                       text=True, timeout=300, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    for path in TRUTHS:
        name = truth(path)["fixture"]
        for f in (name, f"{name}.truth.json"):
            assert (tmp_path / f).read_bytes() == (WATCOM / f).read_bytes(), f
