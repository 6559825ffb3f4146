"""Pad and align (issue 9): every fixture, three models, the refusals, the JSON contract,
idempotence, and the output checked by lief, pefile and objdump."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import FIXTURES, asm, boot_image, boot_object, device16, rdv16, run_cli

import gatelink
from gatelink.catalog import SHAPES_BY_ID, stub_bytes
from gatelink.formats import RawOptions
from gatelink.pad import KEPT, MOVED, REFUSALS, REFUSED, RESHAPED, pad
from gatelink.pad.images import CODE_FILL, reopen
from gatelink.pad.layout import Requirements, Reshape, same_effects, syncs_at
from gatelink.plan.model import RDOS_POLICY, FetchModel, Order
from gatelink.scan import ScanResult, Site
from gatelink.scan import scan as run_scan

FIXTURE_FILES = [
    ("watcom/app.exe", None),
    ("watcom/asmdrv16.rdv", None),
    ("watcom/cdrv32.rdv", None),
    ("watcom/watcom.bin", None),
    ("pe/stubs_asm.exe", None),
    ("pe/stubs_rdos.exe", None),
    ("rdv/drv16.rdv", None),
    ("rdv/drv32_short.rdv", None),
    ("rdv/drv32_padded.rdv", None),
    ("boot/rdos.bin", None),
    ("raw/kernel16.bin", RawOptions(16, 0x120)),
    ("raw/kernel32.bin", RawOptions(32, 0x110000)),
]
M8, M16, M64 = (FetchModel(c, Order.ARBITRARY) for c in (8, 16, 64))

# The default run pads every fixture under (8,arbitrary), the strictest of the three, and two
# fixtures under the others; the remaining combinations are slow.
FAST = {(f, M8) for f, _ in FIXTURE_FILES} | {("raw/kernel32.bin", M16), ("rdv/drv16.rdv", M64)}
CASES = [
    pytest.param(f, raw, m, id=f"{f}-{m.chunk}",
                 marks=() if (f, m) in FAST else (pytest.mark.slow,))
    for m in (M8, M16, M64) for f, raw in FIXTURE_FILES
]


def _open(path: Path | str, raw: RawOptions | None = None) -> gatelink.Image:
    return gatelink.open_image(path, raw=raw)


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def padded() -> dict[tuple[str, FetchModel], tuple[gatelink.Image, ScanResult, object]]:
    """Pad results, computed once per (fixture, model) a test asks for."""
    return {}


def _pad(cache: dict, name: str, raw: RawOptions | None, model: FetchModel):  # type: ignore[no-untyped-def]
    key = (name, model)
    if key not in cache:
        img = _open(FIXTURES / name, raw)
        before = run_scan(img, jobs=1)
        cache[key] = (img, before, pad(img, model, scan_result=before))
    return cache[key]


@pytest.mark.parametrize("name,raw,model", CASES)
def test_fixture_bars(padded, name, raw, model):  # type: ignore[no-untyped-def]
    img, before, result = _pad(padded, name, raw, model)
    req = result.requirements
    out = reopen(img, result.data)
    after = run_scan(out, jobs=1)
    # The scan of the output lists the same gates as the input's (the shape changes only where
    # reshaped), plus any stub it finds that the input's scan missed: pad handled those too.
    gates = Counter((a.site.gate, a.site.selector, a.site.gate_kind) for a in result.actions)
    assert Counter((s.gate, s.selector, s.gate_kind) for s in after.sites) == gates
    assert not Counter((s.gate, s.selector, s.gate_kind) for s in before.sites) - gates
    assert not result.warnings, result.warnings
    found = {(s.region, s.address): s for s in after.sites}
    refused = set()
    for a in result.actions:
        s = a.site
        got = found[(a.new_region, a.new_address)]
        assert (got.gate, got.selector) == (s.gate, s.selector)
        if a.action == REFUSED:
            assert a.reason.split(":")[0] and a.reason_code in REFUSALS, a.reason
            refused.add((a.new_region, a.new_address))
            assert got.address == s.address and result.data[got.file_offset : got.file_offset + s.length] == \
                img.data[s.file_offset : s.file_offset + s.length]
            continue
        assert a.syncs_after == 0
        if a.reason_code == "rescan-lost":  # a kept site the output's scan lost, moved too
            assert a.action == MOVED and a.syncs_before == 0
        if a.action == MOVED:
            assert got.shape == s.shape and (s.region, s.address) not in found
            at = _out_offset(img, out, s)
            old = result.data[at : at + s.length]
            jl = 5 if s.bitness == 32 else 3
            assert old[0] == 0xE9 and set(old[jl:]) <= {CODE_FILL}
        elif a.action == RESHAPED:
            assert 0 < got.address - s.address <= 2 and got.shape in ("L7", "L7P", "L8", "L8P")
        else:
            assert a.action == KEPT and got.file_offset == _out_offset(img, out, s)
    # Every site of the output needs no sync under the model, unless it was refused.
    for s in after.sites:
        if (s.region, s.address) not in refused:
            assert syncs_at(s.shape, s.bitness, s.address, req) == 0, s
    # The table built from the output agrees (every far plan without a sync).
    from gatelink.table.build import build_table

    table = build_table(after, model)
    assert len(table.sites) == len(after.sites)
    for ts in table.sites:
        plan = table.plan_for(ts, "far")
        if plan is not None and (table.regions[ts.region].name, ts.address) not in refused:
            assert plan.syncs == 0, ts
    # Padding twice changes nothing.
    again = pad(out, model)
    assert again.data == result.data and not again.by_action(MOVED) and not again.by_action(RESHAPED)
    # The input image is untouched, and the output grew by what was added.
    assert _sha(FIXTURES / name) == hashlib.sha256(img.data).hexdigest()
    assert result.bytes_added == len(result.data) - len(img.data) >= 0
    # No warning from reading the output beyond those the input already had.
    assert set(out.warnings) <= set(img.warnings), out.warnings
    _format_checks(img, out, result)


def _out_offset(img, out, s) -> int:  # type: ignore[no-untyped-def]
    """Where a site's old bytes sit in the output (boot-image objects after a grown one move)."""
    rin = next(r for r in img.regions if r.name == s.region)
    rout = next(r for r in out.regions if r.name == s.region)
    return rout.file_offset + (s.file_offset - rin.file_offset)


def _format_checks(img, out, result) -> None:  # type: ignore[no-untyped-def]
    moved = result.by_action(MOVED)
    if img.format.startswith("rdv"):
        code_in, code_out = img.code_regions[0], out.code_regions[0]
        slot = sum(a.size for a in result.areas)
        assert code_out.size == code_in.size + slot
        assert out.facts["code_size_field"] == img.facts["code_size_field"] + slot
        assert out.facts.get("code_size_quirk") == img.facts.get("code_size_quirk")
        for kind in ("data", "trailer"):
            rin = [r for r in img.regions if r.name == kind]
            rout = [r for r in out.regions if r.name == kind]
            assert [bytes(img.region_bytes(r)) for r in rin] == [bytes(out.region_bytes(r)) for r in rout]
        assert out.facts["data_size"] == img.facts["data_size"] and out.facts["entry_point"] == img.facts["entry_point"]
        if img.format == "rdv16":
            assert code_out.size <= 0xFFFF
    elif img.format == "bootimg":
        assert all(o["crc_ok"] for o in out.facts["objects"] if o["type"] in (18, 19))
        for a, b in zip(img.facts["objects"], out.facts["objects"]):
            assert a["type"] == b["type"]
            if a["type"] not in (18, 19):
                assert a["crc"] == b["crc"] and a["length"] == b["length"]
    elif img.format.startswith("raw"):
        assert len(result.data) == len(img.data) + sum(a.size for a in result.areas)
        if img.format == "raw16":
            assert img.facts["base"] + len(result.data) <= 0x10000
    elif img.format == "pe32" and moved:
        _pe_checks(result.data, len(img.regions))


def _pe_checks(data: bytes, sections_before: int) -> None:
    import lief
    import pefile

    pe = pefile.PE(data=data)
    assert not pe.get_warnings()
    assert pe.FILE_HEADER.NumberOfSections == sections_before + 1 == len(pe.sections)
    sec = pe.sections[-1]
    assert sec.Name.rstrip(b"\0") == b".glpad"
    assert sec.Characteristics & 0x20000020 == 0x20000020
    oh = pe.OPTIONAL_HEADER
    assert oh.SizeOfImage == (sec.VirtualAddress + sec.Misc_VirtualSize + oh.SectionAlignment - 1) \
        // oh.SectionAlignment * oh.SectionAlignment
    if oh.CheckSum:
        assert oh.CheckSum == pe.generate_checksum()
    binary = lief.PE.parse(list(data))
    assert binary is not None
    names = [s.name for s in binary.sections]
    assert names[-1] == ".glpad"
    lsec = binary.get_section(".glpad")
    assert lsec.has_characteristic(lief.PE.Section.CHARACTERISTICS.MEM_EXECUTE)
    assert binary.optional_header.sizeof_image == oh.SizeOfImage


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump not installed")
def test_pe_objdump(padded, tmp_path):  # type: ignore[no-untyped-def]
    _, _, result = _pad(padded, "pe/stubs_rdos.exe", None, M8)
    p = tmp_path / "out.exe"
    p.write_bytes(result.data)
    r = subprocess.run(["objdump", "-h", str(p)], capture_output=True, text=True, check=True)
    line = next(ln for ln in r.stdout.splitlines() if ".glpad" in ln)
    flags = r.stdout.split(line, 1)[1].splitlines()[1]
    assert "CODE" in flags and "LOAD" in flags
    size, vma = int(line.split()[2], 16), int(line.split()[3], 16)
    area = result.areas[0]
    assert vma == area.address and size == area.size


# ---------------------------------------------------------------------------------------------
# JSON contract and the command line


def test_cli_json_contract_and_map(tmp_path):
    src = FIXTURES / "raw/kernel32.bin"
    before = _sha(src)
    out, mp = tmp_path / "k.bin", tmp_path / "k.map"
    code, text, err = run_cli("pad", str(src), "--raw", "--bitness", "32", "--base", "0x110000",
                              "--model", "8,arbitrary", "-o", str(out), "--format", "json", "--map", str(mp))
    assert code == 0, err
    assert _sha(src) == before
    doc = json.loads(text)
    assert set(doc) == {"model", "sites", "summary", "bytes_added"}
    assert doc["model"] == {"chunk": 8, "order": "arbitrary"}
    keys = {"file_offset", "address", "gate", "selector", "action", "reason", "new_address", "syncs_before",
            "syncs_after"}
    assert all(set(s) == keys for s in doc["sites"])
    assert {s["action"] for s in doc["sites"]} <= {"kept", "reshaped", "moved", "refused"}
    assert doc["bytes_added"] == out.stat().st_size - src.stat().st_size > 0
    summ = doc["summary"]
    assert summ["sites"] == len(doc["sites"]) == sum(summ[k] for k in ("kept", "reshaped", "moved", "refused"))
    # The map lists exactly the moved and reshaped stubs, old -> new.
    lines = [ln.split() for ln in mp.read_text().splitlines() if not ln.startswith("#")]
    changed = [s for s in doc["sites"] if s["action"] in ("moved", "reshaped")]
    assert [(int(a, 16), int(b, 16), act) for a, b, _, act, _, _ in lines] == \
        [(s["address"], s["new_address"], s["action"]) for s in changed]
    # Deterministic: a second run gives the same bytes, report and map.
    out2, mp2 = tmp_path / "k2.bin", tmp_path / "k2.map"
    code2, text2, _ = run_cli("pad", str(src), "--raw", "--bitness", "32", "--base", "0x110000",
                              "--model", "8,arbitrary", "-o", str(out2), "--format", "json", "--map", str(mp2))
    assert code2 == 0 and text2 == text and out2.read_bytes() == out.read_bytes() and mp2.read_text() == mp.read_text()
    # Padding the output again: every site kept, the bytes unchanged.
    out3 = tmp_path / "k3.bin"
    code3, text3, _ = run_cli("pad", str(out), "--raw", "--bitness", "32", "--base", "0x110000",
                              "--model", "8,arbitrary", "-o", str(out3), "--format", "json")
    assert code3 == 0 and out3.read_bytes() == out.read_bytes()
    assert {s["action"] for s in json.loads(text3)["sites"]} == {"kept"}
    assert not [f for f in tmp_path.iterdir() if f.name.endswith(".tmp")]


def test_cli_text_and_dry_run(tmp_path):
    src = FIXTURES / "rdv/drv32_padded.rdv"
    code, text, err = run_cli("pad", str(src), "-m", "16,arbitrary", "--dry-run")
    assert code == 0, err
    assert "dry run" in text and "moved" in text and "sites needing a sync" in text
    assert list(tmp_path.iterdir()) == []
    # --strict: exit 1 when a site is refused (drv16's U5 stubs have no final form in 16-bit
    # code); the binary and the report are written all the same.
    out, rep = tmp_path / "d.rdv", tmp_path / "d.txt"
    code, text, err = run_cli("pad", str(FIXTURES / "rdv/drv16.rdv"), "-m", "64,arbitrary", "-o", str(out),
                              "--strict", "--report", str(rep))
    assert code == 1 and text == "" and out.exists() and "no-final-form" in rep.read_text()


def test_cli_usage_errors(tmp_path):
    src = tmp_path / "in.rdv"
    shutil.copy(FIXTURES / "rdv/drv32_padded.rdv", src)
    before = _sha(src)
    assert run_cli("pad", str(src), "-m", "8,arbitrary")[0] == 2  # no -o, no --dry-run
    code, _, err = run_cli("pad", str(src), "-m", "8,arbitrary", "-o", str(src))
    assert code == 2 and "input" in err
    assert run_cli("pad", str(src), "-m", "9,arbitrary", "-o", str(tmp_path / "x"))[0] == 2
    assert run_cli("pad", str(src), "-m", "8,arbitrary", "--format", "csv", "--dry-run")[0] == 2
    assert run_cli("pad", str(src), "-m", "8,arbitrary", "--form", "sideways", "--dry-run")[0] == 2
    assert _sha(src) == before
    bad = tmp_path / "bad.rdv"
    bad.write_bytes(b"R2\x00")
    code, _, err = run_cli("pad", str(bad), "-m", "8,arbitrary", "-o", str(tmp_path / "o"))
    assert code == 3 and "bad.rdv" in err and not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------
# Refusals


def _stub(shape: str, gate: int) -> bytes:
    return stub_bytes(SHAPES_BY_ID[shape], gate)


def _raw32(tmp_path: Path, code: bytes, base: int = 0x110000) -> gatelink.Image:
    p = tmp_path / "k32.bin"
    p.write_bytes(code)
    return gatelink.open_image(p, raw=RawOptions(32, base))


def _action(result, address: int):  # type: ignore[no-untyped-def]
    return next(a for a in result.actions if a.site.address == address)


def test_branch_target_inside_is_refused(tmp_path):
    # 0: xor eax,eax; test eax,eax; jz L2; nop; nop
    # 8: stub A (address residue 0: its plan needs a sync under (8,arbitrary)); ret
    # 18: L2: jmp short stub+2; then a second stub that nothing jumps into.
    code = bytes.fromhex("31c0 85c0 740c 9090") + _stub("A", 0x11) + b"\xc3" + bytes.fromhex("ebf6") + b"\xc3"
    code += bytes.fromhex("909090") + _stub("A", 0x22) + b"\xc3"
    img = _raw32(tmp_path, code)
    result = pad(img, M8)
    bad, good = _action(result, 0x110008), _action(result, 0x110018)
    assert bad.action == REFUSED and bad.reason_code == "branch-target" and "0x11000a" in bad.reason
    assert bad.syncs_before == bad.syncs_after and bad.syncs_after > 0
    assert result.data[8:17] == code[8:17]  # left alone
    assert good.action == MOVED and good.syncs_after == 0


def test_jump_table_entry_inside_is_refused(tmp_path):
    base = 0x110000
    # cmp eax,1; ja done; jmp [eax*4 + table]; table: case0, stub+1; case0: stub A; done: ret
    head = asm(f"cmp eax, 1\nja 0x{base + 0x40:x}\njmp dword ptr [eax*4 + 0x{base + 0x20:x}]", 32, base)
    code = bytearray(head + b"\xcc" * (0x20 - len(head)))
    code += struct.pack("<II", base + 0x28, base + 0x29)
    code += b"\x90" * (0x28 - len(code))
    code += _stub("A", 0x33) + b"\xc3"  # at 0x28: residue 0, needs a sync
    code += b"\xcc" * (0x40 - len(code)) + b"\xc3"
    img = _raw32(tmp_path, bytes(code), base)
    result = pad(img, M8)
    a = _action(result, base + 0x28)
    assert a.action == REFUSED and a.reason_code == "branch-target" and "jump table" in a.reason


def test_relocation_inside_or_pointing_inside_is_refused():
    img = _open(FIXTURES / "pe/stubs_rdos.exe")
    res = run_scan(img, jobs=1)
    plain = pad(img, M8, scan_result=res)
    moved = [a.site for a in plain.by_action(MOVED)]
    a, b = moved[0], moved[1]
    # A relocated dword inside stub a; a relocated pointer (in .data) to the middle of stub b.
    data_region = next(r for r in img.regions if r.name == ".data")
    data = bytearray(img.data)
    struct.pack_into("<I", data, data_region.file_offset, b.address + 2)
    relocs = sorted({*img.relocations, a.address + 3, data_region.address})
    img2 = replace(img, data=bytes(data), relocations=relocs)
    # The scanner itself no longer takes relocated bytes for a stub; pad checks a scan it is
    # given anyway (one made before the relocations were known, here).
    result = pad(img2, M8, scan_result=res, verify=False)
    ra, rb = _action(result, a.address), _action(result, b.address)
    assert ra.action == REFUSED and ra.reason_code == "relocated"
    assert rb.action == REFUSED and rb.reason_code == "branch-target" and "relocated pointer" in rb.reason


def test_too_short_site_is_refused(tmp_path):
    # A U5 stub (5 bytes) where its plan needs a sync; scanned, then told it were 4 bytes long:
    # no shape is shorter than the jmp, the guard is for shapes added later.
    code = bytes.fromhex("31c0 9090") + _stub("U5", 0x21) + b"\xc3"
    img = _raw32(tmp_path, code)
    res = run_scan(img, jobs=1)
    (site,) = res.sites
    assert syncs_at("U5", 32, site.address, Requirements(M8, RDOS_POLICY)) > 0
    res.sites = [replace(site, length=4)]
    result = pad(img, M8, scan_result=res)
    (a,) = result.actions
    assert a.action == REFUSED and a.reason_code == "too-short" and result.data == img.data


def test_16bit_segment_overflow_is_refused(tmp_path):
    # mov ax,1; stub B at offset 3 (needs a sync); ret; zeros up to 0xFFF0: no slot fits.
    code = bytes.fromhex("b80100") + _stub("B", 0x44) + b"\xc3"
    code += bytes(0xFFF0 - len(code))
    p = tmp_path / "k16.bin"
    p.write_bytes(code)
    img = gatelink.open_image(p, raw=RawOptions(16, 0))
    result = pad(img, M8)
    (a,) = result.actions
    assert a.action == REFUSED and a.reason_code == "segment-overflow" and "64 KiB" in a.reason
    assert result.data == img.data
    # The same stub with room to spare is moved, and the jmp back wraps inside the segment.
    small = gatelink.open_image(_write(tmp_path / "s16.bin", code[:0x100]), raw=RawOptions(16, 0))
    (b,) = pad(small, M8).actions
    assert b.action == MOVED


def test_rdv16_code_near_64k(tmp_path):
    code = bytes.fromhex("b80100") + _stub("B", 0x44) + b"\xc3"
    code += bytes(0xFFF8 - len(code))
    img = gatelink.open_image(_write(tmp_path / "d.rdv", rdv16(code, data_size=8)))
    (a,) = pad(img, M8).actions
    assert a.action == REFUSED and a.reason_code == "segment-overflow"


def test_stub_ending_its_region_is_refused(tmp_path):
    img = _raw32(tmp_path, bytes.fromhex("31c0") + _stub("A", 0x55))
    (a,) = pad(img, M8).actions
    assert a.action == REFUSED and a.reason_code == "region-end"


@pytest.mark.slow
def test_no_sync_free_layout_under_a_strict_model(tmp_path):
    # Under (1,arbitrary) every far call needs a sync wherever it sits. (One small image: the
    # plans of this model are not in the shipped library and take a while to synthesise.)
    img = _raw32(tmp_path, bytes.fromhex("31c0") + _stub("A", 0x55) + b"\xc3")
    result = pad(img, FetchModel(1, Order.ARBITRARY))
    assert {a.action for a in result.actions} == {REFUSED}
    assert {a.reason_code for a in result.actions} == {"no-sync-free-address"}
    assert result.data == img.data and result.bytes_added == 0


def test_boot_image_device16_crc_and_lengths(tmp_path):
    code = bytes.fromhex("b80100") + _stub("D", 0x99) + b"\xc3" + bytes.fromhex("9090")
    img_bytes = boot_image(boot_object(0, b"kernel"), boot_object(18, device16("x.rdv", code)))
    img = gatelink.open_image(_write(tmp_path / "b.bin", img_bytes))
    result = pad(img, M8)
    (a,) = result.actions
    assert a.action == MOVED
    out = reopen(img, result.data)
    assert not out.warnings
    dev = out.facts["objects"][1]
    assert dev["crc_ok"] == "rdos" and dev["code_size"] == len(code) + result.areas[0].size
    assert dev["length"] == img.facts["objects"][1]["length"] + result.bytes_added


# ---------------------------------------------------------------------------------------------
# Reshaping


def test_reshape_keeps_effects_and_is_proven():
    r = Reshape("L7P", "L7", 2)
    assert r.apply(_stub("L7P", 0x1234)) == b"\x90\x90" + _stub("L7", 0x1234)
    for form in ("far", "callgate", "near", "pushcs"):
        assert same_effects(r, form, 32)
    # A layout that drops an effect (G's pop ebp) is told apart.
    assert not same_effects(Reshape("G", "F", 1), "far", 32)


def test_reshaped_site_in_fixture(padded):  # type: ignore[no-untyped-def]
    img, _, result = _pad(padded, "raw/kernel32.bin", RawOptions(32, 0x110000), M8)
    shaped = result.by_action(RESHAPED)
    assert shaped and all(a.site.shape == "L7P" and a.new_shape in ("L7", "L7P") for a in shaped)
    for a in shaped:
        s = a.site
        new = result.data[s.file_offset : s.file_offset + s.length]
        k = a.new_address - s.address
        assert new == b"\x90" * k + img.data[s.file_offset : s.file_offset + s.length - 2] + b"\x90" * (2 - k)


def _write(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


def test_signed_pe_is_left_alone():
    src = (FIXTURES / "pe/stubs_rdos.exe").read_bytes()
    (e_lfanew,) = struct.unpack_from("<I", src, 0x3C)
    data = bytearray(src) + bytes(8)
    struct.pack_into("<II", data, e_lfanew + 24 + 96 + 4 * 8, len(src), 8)  # a certificate table
    img = gatelink.formats.pe.read("signed.exe", bytes(data))
    result = pad(img, M8)
    assert result.data == bytes(data) and result.bytes_added == 0
    assert {a.reason_code for a in result.actions if a.action != KEPT} == {"unmodifiable"}


def test_nothing_to_do_gives_the_input_bytes(tmp_path):
    from conftest import pe32

    code = asm("push ebp\nmov ebp, esp\npop ebp\nret")
    img = gatelink.open_image(_write(tmp_path / "plain.exe", pe32(code)))
    result = pad(img, M8)
    assert result.actions == [] and result.data == img.data and not result.areas
    out = tmp_path / "out.exe"
    code, text, _ = run_cli("pad", str(tmp_path / "plain.exe"), "-m", "8,arbitrary", "-o", str(out))
    assert code == 0 and out.read_bytes() == img.data and "0 sites" in text


def test_certain_only_refuses_likely_sites():
    img = _open(FIXTURES / "watcom/asmdrv32.rdv")
    res = run_scan(img, jobs=1)
    result = pad(img, M8, scan_result=res, certain_only=True)
    for a in result.actions:
        if a.action == REFUSED:
            assert a.reason_code == "not-certain" and a.site.confidence == "likely"
        elif a.action == MOVED:
            assert a.site.confidence == "certain"
    assert result.by_action(REFUSED) and result.by_action(MOVED)


def test_short_branch_found_by_the_decodes_before_a_stub(tmp_path):
    # The image starts with a jmp over code that nothing branches to; in it, a short jump lands
    # inside the stub that follows. No descent from a proven boundary decodes it: only the
    # decodes that land on the stub's first byte see it.
    head = b"\xe9" + (0).to_bytes(4, "little")  # patched below: jmp to the final ret
    body = bytes.fromhex("31c0 85c0 74ff 9090 90")
    at = len(head) + len(body)
    at += -at % 8  # the stub at residue 0: its plan needs a sync
    code = bytearray(head + body + b"\x90" * (at - len(head) - len(body)))
    code[len(head) + 5] = (at + 3) - (len(head) + 6)  # jz short stub+3
    code += _stub("A", 0x66) + b"\xc3\xc3"
    code[1:5] = (len(code) - 1 - 5).to_bytes(4, "little")
    img = _raw32(tmp_path, bytes(code))
    # The scanner itself will not take a stub that a heuristic decode branches into, so the
    # site is given by hand (as a scan made with other evidence would give it).
    res = run_scan(img, jobs=1)
    assert res.sites == []
    site = Site(at, 0x110000 + at, "image", 32, "A", 9, 0x66, 2, "os", None, "certain", "given")
    from gatelink.pad.refs import references_into

    refs = references_into(img, [site])
    assert [r.target - site.address for r in refs[site.file_offset]] == [3]
    res.sites = [site]
    (a,) = pad(img, M8, scan_result=res).actions
    assert a.action == REFUSED and a.reason_code == "branch-target"
