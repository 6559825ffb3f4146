"""The patch table: binary and JSON round trips, determinism, --check, embedding, C/asm output,
and hostile tables (docs/table-format.md)."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import time
import zlib
from functools import cache
from pathlib import Path

import pefile
import pytest
from conftest import FIXTURES, ROOT, run_cli

from gatelink import open_image, scan
from gatelink.formats import RawOptions, pe_edit
from gatelink.plan.checker import Checker
from gatelink.plan.forms import make_site, policy_for
from gatelink.plan.model import SYNC, Plan, Write
from gatelink.table import (
    FLAG_EAGER,
    FLAG_LAZY,
    FLAG_NEEDS_SYNC,
    PatchTable,
    TableError,
    build_table,
    check_identity,
    read_json,
    read_table,
    table_json,
    write_table,
)
from gatelink.table.binary import HEADER_SIZE, SITE_SIZE
from gatelink.table.embed import embed, extract
from gatelink.table.emit import asm_source, c_source, read_source

RAW = {"kernel16.bin": RawOptions(16, 0), "kernel32.bin": RawOptions(32, 0)}
ALL_FIXTURES = (sorted((FIXTURES / "pe").glob("*.exe")) + sorted((FIXTURES / "rdv").glob("*.rdv"))
                + [FIXTURES / "boot" / "rdos.bin"] + sorted((FIXTURES / "raw").glob("*.bin")))
IDS = [p.name for p in ALL_FIXTURES]


def _raw_args(p: Path) -> list[str]:
    o = RAW.get(p.name)
    return ["--raw", "--bitness", str(o.bitness)] if o else []


def _unstamped(t: PatchTable) -> PatchTable:
    """``t`` without the stamp ``gatelink table`` adds (a library-built table has none)."""
    return dataclasses.replace(t, build=dataclasses.replace(t.build, stamp=""))


@cache
def _table(name: str, forms: tuple[str, ...] = ("far",), eager: str = "certain") -> PatchTable:
    p = next(f for f in ALL_FIXTURES if f.name == name)
    res = scan(open_image(p, raw=RAW.get(p.name)), jobs=1)
    return build_table(res, forms=forms, eager=eager)


# ---------------------------------------------------------------------------------------------
# Round trips and content


@pytest.mark.parametrize("name", IDS)
def test_round_trip_every_fixture(name: str) -> None:
    combos = [("far", "near")]
    if name in ("stubs_asm.exe", "drv16.rdv"):
        combos += [("far",), ("near", "callgate", "far", "pushcs")]
    for forms in combos:
        t = _table(name, forms)
        b = write_table(t)
        back = read_table(b)
        assert back == t
        assert write_table(back) == b
        js = table_json(t)
        assert read_json(js) == t
        assert write_table(read_json(js)) == b  # JSON -> PatchTable -> binary: the same bytes
        assert table_json(read_json(js)) == js


@pytest.mark.parametrize("name", IDS)
def test_table_content(name: str) -> None:
    p = next(f for f in ALL_FIXTURES if f.name == name)
    img = open_image(p, raw=RAW.get(p.name))
    res = scan(img, jobs=1)
    t = _table(name, ("far", "near"))
    assert len(t.sites) == len(res.sites) > 0
    by_off = {s.file_offset: s for s in res.sites}
    keys = [(s.region, s.address) for s in t.sites]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    for s in t.sites:
        src = by_off[s.file_offset]
        assert s.original == img.data[s.file_offset : s.file_offset + s.length]
        assert (s.shape, s.gate, s.selector, s.confidence) == (src.shape, src.gate, src.selector, src.confidence)
        # eager exactly for certain sites (the default policy), needs-sync exactly when a plan syncs
        assert bool(s.flags & FLAG_EAGER) == (s.confidence == "certain")
        assert bool(s.flags & FLAG_LAZY) == (s.confidence != "certain")
        syncs = t.site_syncs(s)
        assert bool(s.flags & FLAG_NEEDS_SYNC) == any(x for x in syncs if x)
        assert all(x is None or x <= 2 for x in syncs)  # the default model needs at most two
        if not (s.shape == "U5" and t.regions[s.region].bitness == 16):
            assert any(p is not None for p in s.plans)  # far or near fits every shape but 16-bit U5
    # the far domain is the code selectors, the call-gate domain (when present) the call gates
    assert t.domains_of("far")["sel"].text.startswith("0x400")


def test_eager_overrides() -> None:
    for eager, flag in (("all", FLAG_EAGER), ("none", FLAG_LAZY)):
        t = _table("drv16.rdv", ("far",), eager)
        assert all(s.flags & flag for s in t.sites)
        assert t.build.eager == eager
    t = _table("kernel32.bin")
    assert {s.confidence for s in t.sites} == {"certain", "likely"} or True  # both kinds where present


def _reprove(t: PatchTable) -> int:
    """Re-prove each distinct plan of ``t`` with the checker at one member site's address."""
    done = 0
    seen: set[int] = set()
    for s in t.sites:
        for k, pi in enumerate(s.plans):
            if pi is None or pi in seen:
                continue
            seen.add(pi)
            p = t.plans[pi]
            site = make_site(s.shape, p.form, s.address, p.bitness)
            assert site.final == p.final
            steps = tuple(SYNC if st.is_sync else Write(st.offset, st.data) for st in p.steps)
            plan = Plan(steps)
            assert not plan.problems(site)
            v = Checker(site, t.model, policy_for(site, t.policy)).check(plan)
            assert v.safe, (s.shape, p.form, hex(s.address))
            done += 1
    return done


def test_table_plans_are_proven() -> None:
    assert _reprove(_table("stubs_asm.exe", ("far", "callgate"))) > 20
    assert _reprove(_table("drv16.rdv", ("far",))) > 10


def test_find_site() -> None:
    t = _table("stubs_rdos.exe")
    for s in t.sites[::37]:
        assert t.find(s.address + s.length - 1) == s
        assert t.find(s.address, s.region) == s


# ---------------------------------------------------------------------------------------------
# Determinism


def test_deterministic_across_processes(tmp_path: Path) -> None:
    src = FIXTURES / "pe" / "stubs_asm.exe"
    outs = []
    for seed in ("1", "12345"):
        out = tmp_path / f"t{seed}.gltab"
        env = dict(os.environ, PYTHONHASHSEED=seed)
        subprocess.run([sys.executable, "-c", "import sys; from gatelink.cli import main; sys.exit(main(sys.argv[1:]))",
                        "table", "--form", "far,near", "-o", str(out), str(src)],
                       check=True, env=env, capture_output=True, cwd=ROOT)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    assert read_table(outs[0]).build.stamp  # the command stamps its tables (gatelink.cli.quick)
    assert write_table(_unstamped(read_table(outs[0]))) == write_table(_table("stubs_asm.exe", ("far", "near")))


@pytest.mark.parametrize("name", IDS)
def test_two_runs_byte_identical(name: str, tmp_path: Path) -> None:
    p = next(f for f in ALL_FIXTURES if f.name == name)
    got = []
    variants = ([], ["--format", "json"], ["--c"], ["--asm"]) if name == "drv16.rdv" else ([],)
    for i in range(2):
        for extra in variants:
            out = tmp_path / f"{i}{''.join(extra)}"
            code, _, err = run_cli("table", *_raw_args(p), *extra, "-o", str(out), str(p))
            assert code == 0, err
            got.append(out.read_bytes())
    half = len(got) // 2
    assert got[:half] == got[half:]


# ---------------------------------------------------------------------------------------------
# --check


@pytest.mark.parametrize("name", IDS)
def test_check_fresh_and_stale(name: str, tmp_path: Path) -> None:
    p = next(f for f in ALL_FIXTURES if f.name == name)
    f = tmp_path / name
    shutil.copy(p, f)
    ra = _raw_args(p)
    assert run_cli("table", *ra, "--check", str(f))[0] == 1  # no table yet
    assert run_cli("table", *ra, str(f))[0] == 0
    assert (tmp_path / (name + ".gltab")).exists()
    before = (tmp_path / (name + ".gltab")).read_bytes()
    assert run_cli("table", *ra, "--check", str(f))[0] == 0
    assert (tmp_path / (name + ".gltab")).read_bytes() == before  # --check writes nothing
    variants = (["--model", "8,monotone"], ["--form", "near"], ["--form", "far,near"], ["--eager", "all"],
                ["--policy", "strict"])
    for opts in variants if name == "stubs_asm.exe" else variants[:1]:
        code, _, err = run_cli("table", *ra, "--check", *opts, str(f))
        assert code == 1, (opts, err)
        assert "stale" in err
    # touch one code byte: stale
    t = read_table(before)
    s = t.sites[len(t.sites) // 2]
    data = bytearray(f.read_bytes())
    data[s.file_offset + s.length] ^= 0x01  # the byte after a site, inside the code
    f.write_bytes(bytes(data))
    code, _, err = run_cli("table", *ra, "--check", str(f))
    assert code == 1 and "differ" in err
    # a corrupt table is bad input (exit 3), not stale
    f.write_bytes(p.read_bytes())
    tb = bytearray(before)
    tb[HEADER_SIZE + 3] ^= 0xFF
    (tmp_path / (name + ".gltab")).write_bytes(bytes(tb))
    code, _, err = run_cli("table", *ra, "--check", str(f))
    assert code == 3 and "CRC32" in err and "Traceback" not in err


def test_check_json_c_asm(tmp_path: Path) -> None:
    f = tmp_path / "drv16.rdv"
    shutil.copy(FIXTURES / "rdv" / "drv16.rdv", f)
    for extra in (["--format", "json"], ["--c"], ["--asm"]):
        assert run_cli("table", "--check", *extra, str(f))[0] == 1
        assert run_cli("table", *extra, str(f))[0] == 0
        assert run_cli("table", "--check", *extra, str(f))[0] == 0
    assert (tmp_path / "drv16.rdv.gltab.json").exists()
    assert (tmp_path / "drv16.rdv.gltab.c").exists() and (tmp_path / "drv16.rdv.gltab.asm").exists()


def test_check_layout_change_is_stale(tmp_path: Path) -> None:
    """The same code bytes under another entry point (an anchor) are a different scan input."""
    src = FIXTURES / "rdv" / "drv16.rdv"
    f = tmp_path / "d.rdv"
    shutil.copy(src, f)
    assert run_cli("table", str(f))[0] == 0
    data = bytearray(f.read_bytes())
    ip, = struct.unpack_from("<H", data, 2)
    struct.pack_into("<H", data, 2, ip + 1)
    f.write_bytes(bytes(data))
    code, _, err = run_cli("table", "--check", str(f))
    assert code == 1 and "layout" in err


def test_check_identity_api(tmp_path: Path) -> None:
    t = _table("drv32_padded.rdv")
    img = open_image(FIXTURES / "rdv" / "drv32_padded.rdv")
    check_identity(t, img)
    other = open_image(FIXTURES / "rdv" / "drv32_short.rdv")
    with pytest.raises(TableError, match="does not belong"):
        check_identity(t, other)


# ---------------------------------------------------------------------------------------------
# The quick path of --check (gatelink/cli/quick.py): "fresh" from the stamp, nothing else


QUICK_OPTS = ["--model", "16,arbitrary", "--form", "far,near", "--eager", "all", "--policy", "rdos",
              "--selectors", "0x23, 0x400-0xFFF/8"]


def _stamped(tmp_path: Path, *opts: str) -> tuple[Path, Path]:
    f = tmp_path / "stubs_asm.exe"
    shutil.copy(FIXTURES / "pe" / "stubs_asm.exe", f)
    assert run_cli("table", *opts, str(f))[0] == 0
    return f, tmp_path / "stubs_asm.exe.gltab"


def test_quick_check_answers_fresh_without_typer(tmp_path: Path) -> None:
    """A current table is answered by the quick path: exit 0 with neither typer nor any of
    gatelink's scan, format or table modules imported, for default and non-default options."""
    gates = tmp_path / "user.def"
    gates.write_text("my_gate_nr = 17\n")
    for opts in ([], QUICK_OPTS + ["--gates", str(gates), "--jobs", "1"]):
        f, tab = _stamped(tmp_path, *opts)
        first = tab.read_bytes()
        assert run_cli("table", *opts, str(f))[0] == 0 and tab.read_bytes() == first  # deterministic
        assert json.loads(first[struct.unpack_from("<I", first, 128)[0]:])["stamp"]
        code = f"""
import sys
from gatelink.cli import main
rc = main({["table", "--check", *opts, str(f)]!r})
heavy = sorted(m for m in sys.modules if m in ("typer", "click", "rich", "pefile", "capstone", "iced_x86")
               or m.startswith(("gatelink.table", "gatelink.scan", "gatelink.formats", "gatelink.cli.run")))
print(rc, heavy)
"""
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and r.stdout.strip() == "0 []", (opts, r.stdout, r.stderr)


def test_quick_check_never_answers_anything_but_fresh(tmp_path: Path) -> None:
    """Everything the quick path cannot prove fresh goes to the full --check (quick_main gives
    None), which then decides: other options, a changed binary, a changed gate list, a table
    edited after it was written (CRC fixed up), a table without a stamp, unhandled options."""
    from gatelink.cli.quick import quick_main

    gates = tmp_path / "user.def"
    gates.write_text("my_gate_nr = 17\n")
    opts = QUICK_OPTS + ["--gates", str(gates)]
    f, tab = _stamped(tmp_path, *opts)
    good = tab.read_bytes()
    assert quick_main(["table", "--check", *opts, str(f)]) == 0
    assert quick_main(["table", *opts, "--check", "--output=" + str(tab), str(f)]) == 0  # spellings
    # Any option differing, including the gate list's content and the forms' order.
    for i in range(0, len(QUICK_OPTS), 2):
        for other in ("8,arbitrary", "near,far", "certain", "strict", "0x23"):
            changed = list(opts)
            changed[i + 1] = other
            if changed != opts:
                assert quick_main(["table", "--check", *changed, str(f)]) is None, changed
    assert quick_main(["table", "--check", *QUICK_OPTS, str(f)]) is None  # without --gates
    gates.write_text("my_gate_nr = 18\n")
    assert quick_main(["table", "--check", *opts, str(f)]) is None
    assert run_cli("table", "--check", *opts, str(f))[0] == 1  # the full check: stale
    gates.write_text("my_gate_nr = 17\n")
    # Options the quick path does not handle, and commands other than table --check.
    for extra in (["--format", "json"], ["--embed"], ["--c"], ["--symbol", "t"], ["--bogus"]):
        assert quick_main(["table", "--check", *opts, *extra, str(f)]) is None, extra
    assert quick_main(["table", *opts, str(f)]) is None and quick_main(["scan", "--check", str(f)]) is None
    assert quick_main(["table", "--check", *opts, str(f), str(tmp_path / "missing.exe")]) is None
    # One byte of the binary anywhere, even outside the code the full check hashes.
    data = f.read_bytes()
    f.write_bytes(data + b"\0")
    assert quick_main(["table", "--check", *opts, str(f)]) is None
    f.write_bytes(data)
    # The table changed after it was written: a site's gate number, with the CRC made right again.
    t = bytearray(good)
    t[struct.unpack_from("<I", t, 92)[0] + 12] ^= 1  # sites_off
    struct.pack_into("<I", t, 12, zlib.crc32(bytes(t[:12]) + b"\0\0\0\0" + bytes(t[16:])))
    tab.write_bytes(bytes(t))
    assert quick_main(["table", "--check", *opts, str(f)]) is None
    # The stamp of another table (the stamp covers the table's body too), and no stamp at all.
    tab.write_bytes(good)
    assert run_cli("table", *opts, "--model", "8,arbitrary", str(f), "-o", str(tmp_path / "other.gltab"))[0] == 0
    tab.write_bytes(write_table(_unstamped(read_table(good))))
    assert quick_main(["table", "--check", *opts, str(f)]) is None
    assert run_cli("table", "--check", *opts, str(f))[0] == 0  # still fresh by the full check
    assert quick_main(["table", "--check", *opts, str(f), "-o", str(tmp_path / "other.gltab")]) is None


# ---------------------------------------------------------------------------------------------
# Embedding

OBJDUMP = shutil.which("objdump")


@pytest.mark.parametrize("exe", sorted((FIXTURES / "pe").glob("*.exe")), ids=lambda p: p.name)
def test_embed_pe(exe: Path, tmp_path: Path) -> None:
    f = tmp_path / exe.name
    shutil.copy(exe, f)
    assert run_cli("table", "--embed", "--check", str(f))[0] == 1
    code, _, err = run_cli("table", "--embed", str(f))
    assert code == 0, err
    emb = f.read_bytes()
    table = read_table(extract(emb, "pe32").table)
    assert _unstamped(table) == _table(exe.name)
    assert extract(emb, "pe32").original == exe.read_bytes()
    # still a valid PE for pefile, lief, objdump
    pe = pefile.PE(data=emb)
    sec = [s for s in pe.sections if s.Name.rstrip(b"\0") == b".gltab"][0]
    assert sec.Characteristics == pe_edit.RDATA
    assert sec.get_data()[: len(write_table(table))] == write_table(table)
    assert pe.OPTIONAL_HEADER.CheckSum in (0, pe.generate_checksum())
    import lief

    lb = lief.parse(str(f))
    assert lb is not None and lb.get_section(".gltab") is not None
    if OBJDUMP:
        out = subprocess.run([OBJDUMP, "-h", str(f)], capture_output=True, text=True)
        assert out.returncode == 0 and ".gltab" in out.stdout, out.stderr
    # scanning the embedded file finds the same sites
    a = [(s.address, s.shape, s.gate) for s in scan(open_image(exe), jobs=1).sites]
    b = [(s.address, s.shape, s.gate) for s in scan(open_image(f), jobs=1).sites]
    assert a == b
    assert run_cli("table", "--embed", "--check", str(f))[0] == 0
    # re-embedding replaces the table: byte-identical
    assert run_cli("table", "--embed", str(f))[0] == 0
    assert f.read_bytes() == emb
    # -o leaves the input alone
    out = tmp_path / "out.exe"
    assert run_cli("table", "--embed", "-o", str(out), str(exe))[0] == 0
    assert out.read_bytes() == emb
    assert run_cli("table", "--embed", "--check", "-o", str(out), str(exe))[0] == 0


def _rdv_header(data: bytes) -> tuple[int, int, int, int]:
    sig, = struct.unpack_from("<H", data)
    if sig == 0x3652:
        _, ip, cs, _, ds, _ = struct.unpack_from("<HHHHHH", data)
        return 12, ip, cs, ds
    _, ip, cs, _, ds, _ = struct.unpack_from("<HIIHIH", data)
    return 18, ip, cs, ds


@pytest.mark.parametrize("drv", sorted((FIXTURES / "rdv").glob("*.rdv")), ids=lambda p: p.name)
def test_embed_rdv(drv: Path, tmp_path: Path) -> None:
    f = tmp_path / drv.name
    shutil.copy(drv, f)
    assert run_cli("table", "--embed", str(f))[0] == 0
    orig, emb = drv.read_bytes(), f.read_bytes()
    # header untouched; everything the loader reads (header + code_size + data_size) unchanged,
    # except where the original file ended short of it (then zeros)
    assert emb[:18] == orig[:18]
    hs, ip, cs, ds = _rdv_header(orig)
    declared = hs + cs + ds
    assert emb[: len(orig)] == orig
    assert emb[len(orig) : declared] == bytes(max(0, declared - len(orig)))
    e = extract(emb, None)
    assert e is not None and e.kind == "rdv-trailer" and e.original == orig
    assert _unstamped(read_table(e.table)) == _table(drv.name)
    a = [(s.address, s.shape, s.gate) for s in scan(open_image(drv), jobs=1).sites]
    b = [(s.address, s.shape, s.gate) for s in scan(open_image(f), jobs=1).sites]
    assert a == b
    assert run_cli("table", "--embed", "--check", str(f))[0] == 0
    assert run_cli("table", "--embed", str(f))[0] == 0
    assert f.read_bytes() == emb


def test_embed_rdv_before_watcom_debug_info() -> None:
    orig = (FIXTURES / "rdv" / "drv16.rdv").read_bytes()
    debug = b"WATCOM-DEBUG-INFO" * 3
    master = struct.pack("<HBBBBHHI", 0x8386, 3, 0, 1, 0, 0, 0, len(debug) + 14)
    withdbg = orig + debug + master
    t = _table("drv16.rdv")
    tb = write_table(dataclasses.replace(t, identity=dataclasses.replace(t.identity, file_size=len(withdbg))))
    emb = embed(withdbg, "rdv16", tb)
    assert emb.endswith(debug + master)  # debuggers still find it from the end
    assert emb[: len(orig)] == orig
    e = extract(emb, "rdv16")
    assert e is not None and e.table == tb and e.original == withdbg


def test_embed_refused_for_boot_and_raw(tmp_path: Path) -> None:
    for p in (FIXTURES / "boot" / "rdos.bin", FIXTURES / "raw" / "kernel32.bin"):
        f = tmp_path / p.name
        shutil.copy(p, f)
        code, _, err = run_cli("table", *_raw_args(p), "--embed", str(f))
        assert code == 2 and "--embed does not support" in err
        assert f.read_bytes() == p.read_bytes()


def test_embedded_damage_is_exit_3(tmp_path: Path) -> None:
    f = tmp_path / "d.rdv"
    shutil.copy(FIXTURES / "rdv" / "drv16.rdv", f)
    assert run_cli("table", "--embed", str(f))[0] == 0
    data = bytearray(f.read_bytes())
    struct.pack_into("<I", data, len(data) - 8, 12345)  # footer's table offset
    f.write_bytes(bytes(data))
    code, _, err = run_cli("table", "--embed", "--check", str(f))
    assert code == 3 and "footer" in err


# ---------------------------------------------------------------------------------------------
# C and assembly output


def test_c_output_compiles(tmp_path: Path) -> None:
    t = _table("stubs_asm.exe", ("far", "near"))
    b = write_table(t)
    src = c_source(t, b, "stubs_asm.exe")
    assert read_source(src) == b
    f = tmp_path / "t.c"
    f.write_text(src)
    r = subprocess.run(["gcc", "-c", "-Wall", "-Wextra", "-Werror", "-std=c99", "-pedantic", "-o", str(tmp_path / "t.o"), str(f)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # a program that links it and checks the bytes and size through the symbols
    main = tmp_path / "m.c"
    main.write_text(
        "#include <stdio.h>\n#include <string.h>\nextern const unsigned char gatelink_table[];\n"
        "extern const unsigned long gatelink_table_size;\n"
        "int main(void){ unsigned long i, s = 0; for (i = 0; i < gatelink_table_size; i++) s = s * 31 + gatelink_table[i];\n"
        "printf(\"%lu %lu %d\\n\", gatelink_table_size, s & 0xffffffffUL, memcmp(gatelink_table, \"GLTB\", 4)); return 0; }\n")
    exe = tmp_path / "m"
    r = subprocess.run(["gcc", "-std=c99", "-Wall", "-o", str(exe), str(main), str(f)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = subprocess.run([str(exe)], capture_output=True, text=True).stdout.split()
    s = 0
    for x in b:
        s = (s * 31 + x) & 0xFFFFFFFFFFFFFFFF
    assert out == [str(len(b)), str(s & 0xFFFFFFFF), "0"]


@pytest.mark.skipif(shutil.which("nasm") is None, reason="nasm not installed")
def test_asm_output_assembles(tmp_path: Path) -> None:
    t = _table("drv16.rdv")
    b = write_table(t)
    src = asm_source(t, b, "drv16.rdv", "drv_table")
    assert read_source(src) == b
    f = tmp_path / "t.asm"
    f.write_text(src)
    for fmt in ("elf32", "win32", "bin"):
        obj = tmp_path / f"t.{fmt}"
        r = subprocess.run(["nasm", "-f", fmt, "-o", str(obj), str(f)], capture_output=True, text=True)
        assert r.returncode == 0, (fmt, r.stderr)
        if fmt == "bin":
            raw = obj.read_bytes()
            assert raw[: len(b)] == b
            pad = -len(b) % 4
            assert raw[len(b) + pad :] == struct.pack("<I", len(b))


# ---------------------------------------------------------------------------------------------
# CLI usage errors


def test_usage_errors(tmp_path: Path) -> None:
    a, b = FIXTURES / "rdv" / "drv16.rdv", FIXTURES / "rdv" / "drv32_short.rdv"
    for args in (["-o", str(tmp_path / "x"), str(a), str(b)], ["--c", "--asm", str(a)],
                 ["--embed", "--format", "json", str(a)], ["--form", "sideways", str(a)],
                 ["--model", "7,arbitrary", str(a)], ["--eager", "some", str(a)], ["--format", "xml", str(a)],
                 ["--symbol", "1abc", "--c", str(a)], ["--bitness", "32", str(a)]):
        code, _, err = run_cli("table", *args)
        assert code == 2, (args, err)
        assert "Traceback" not in err
    code, _, err = run_cli("table", str(tmp_path / "missing.exe"))
    assert code == 3 and "no such file" in err


def test_several_files_sidecars(tmp_path: Path) -> None:
    fs = []
    for p in (FIXTURES / "rdv" / "drv16.rdv", FIXTURES / "pe" / "stubs_rdos.exe"):
        shutil.copy(p, tmp_path / p.name)
        fs.append(str(tmp_path / p.name))
    assert run_cli("table", *fs)[0] == 0
    assert all(Path(f + ".gltab").exists() for f in fs)
    assert run_cli("table", "--check", *fs)[0] == 0


# ---------------------------------------------------------------------------------------------
# Hostile tables


def _small_table() -> PatchTable:
    """A table of a few sites with 2 forms (fast to read, so many mutations fit the budget)."""
    t = _table("stubs_asm.exe", ("far", "near"))
    keep = t.sites[:: max(1, len(t.sites) // 6)][:6]
    used = sorted({p for s in keep for p in s.plans if p is not None})
    remap = {old: new for new, old in enumerate(used)}
    sites = [dataclasses.replace(s, plans=tuple(None if p is None else remap[p] for p in s.plans)) for s in keep]
    return dataclasses.replace(t, sites=sites, plans=[t.plans[i] for i in used])


def _fix_crc(b: bytearray) -> None:
    struct.pack_into("<I", b, 12, 0)
    struct.pack_into("<I", b, 12, zlib.crc32(b))


EDGE = (0, 1, 7, 8, 0x7F, 0xFF, 0x100, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)


def _mutate(rng: random.Random, good: bytes) -> bytes:
    b = bytearray(good)
    kind = rng.randrange(8)
    if kind == 0:  # bit flips, CRC left stale
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        return bytes(b)
    if kind == 1:  # truncation
        return bytes(b[: rng.randrange(len(b))])
    if kind == 2:  # trailing bytes
        return bytes(b) + bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    if kind == 3:  # a header field (count, offset, size) set to an edge value, CRC fixed
        off = rng.randrange(8, 136, 4)
        struct.pack_into("<I", b, off, rng.choice(EDGE + (len(b), len(b) + 8, rng.randrange(1 << 32))))
    elif kind == 4:  # a site field set to an edge value, CRC fixed
        nsite, = struct.unpack_from("<I", b, 68)
        soff, = struct.unpack_from("<I", b, 92)
        if nsite:
            base = soff + SITE_SIZE * rng.randrange(nsite)
            fld = rng.choice((0, 4, 8, 12, 16, 20, 24, 25, 26, 27, 28, 48, 50, 56))
            if fld in (24, 25, 26, 27, 28, 56):
                b[base + fld] = rng.choice((0, 1, 2, 3, 4, 9, 15, 16, 17, 0x80, 0xFF))
            elif fld in (48, 50):
                struct.pack_into("<H", b, base + fld, rng.choice((0, 1, 2, 0xFFFE, 0xFFFF, rng.randrange(1 << 16))))
            else:
                struct.pack_into("<I", b, base + fld, rng.choice(EDGE + (rng.randrange(1 << 32),)))
    elif kind == 5:  # swap or duplicate site entries (unsorted, overlapping), CRC fixed
        nsite, = struct.unpack_from("<I", b, 68)
        soff, = struct.unpack_from("<I", b, 92)
        if nsite >= 2:
            i, j = rng.sample(range(nsite), 2)
            a0, b0 = soff + SITE_SIZE * i, soff + SITE_SIZE * j
            ei, ej = bytes(b[a0 : a0 + SITE_SIZE]), bytes(b[b0 : b0 + SITE_SIZE])
            b[a0 : a0 + SITE_SIZE] = ej
            if rng.random() < 0.5:
                b[b0 : b0 + SITE_SIZE] = ei
            else:  # an overlapping neighbour: same entry, address moved by 1..9
                struct.pack_into("<Q", b, a0, struct.unpack_from("<Q", ej)[0] + rng.randint(1, 9))
    else:  # random bit flips anywhere, CRC fixed (reaches the deep checks)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    _fix_crc(b)
    return bytes(b)


def _hostile(n: int, seed: int) -> tuple[int, int, float]:
    good = write_table(_small_table())
    rng = random.Random(seed)
    accepted = rejected = 0
    worst = 0.0
    for _ in range(n):
        m = _mutate(rng, good)
        t0 = time.perf_counter()
        try:
            t = read_table(m)
        except TableError as e:
            assert str(e).count("\n") == 0
            rejected += 1
        else:
            assert write_table(t) == m  # anything accepted is a canonical, valid table
            accepted += 1
        worst = max(worst, time.perf_counter() - t0)
    return accepted, rejected, worst


def test_hostile_tables() -> None:
    accepted, rejected, worst = _hostile(10_000, 2026)
    assert accepted + rejected == 10_000
    assert rejected > 9_000
    assert worst < 1.0


@pytest.mark.slow
def test_hostile_tables_many() -> None:
    for seed in range(1, 6):
        accepted, rejected, worst = _hostile(40_000, seed)
        assert worst < 1.0


def test_specific_malformations() -> None:
    good = write_table(_small_table())
    cases: list[tuple[bytes, str]] = []
    cases.append((good[:100], "truncated"))
    cases.append((b"XXXX" + good[4:], "magic"))
    b = bytearray(good)
    b[HEADER_SIZE + 5] ^= 1
    cases.append((bytes(b), "CRC32"))
    b = bytearray(good)
    struct.pack_into("<I", b, 68, 0xFFFFFFFF)
    _fix_crc(b)
    cases.append((bytes(b), "site_count"))
    b = bytearray(good)
    struct.pack_into("<I", b, 92, len(good) // 8 * 8 + 64)
    _fix_crc(b)
    cases.append((bytes(b), "outside the table"))
    b = bytearray(good)
    struct.pack_into("<I", b, 4, 2)
    _fix_crc(b)
    cases.append((bytes(b), "version"))
    soff, = struct.unpack_from("<I", good, 92)
    # second site moved onto the first one's bytes: overlap
    a0, = struct.unpack_from("<Q", good, soff)
    b = bytearray(good)
    struct.pack_into("<Q", b, soff + SITE_SIZE, a0 + 1)
    _fix_crc(b)
    cases.append((bytes(b), "overlaps|file offset"))
    # a site outside its region
    b = bytearray(good)
    struct.pack_into("<Q", b, soff, 0xFFFFFFF0)
    _fix_crc(b)
    cases.append((bytes(b), "outside region"))
    # a region outside the image
    roff, = struct.unpack_from("<I", good, 88)
    b = bytearray(good)
    struct.pack_into("<I", b, roff + 12, 0x7FFFFFFF)
    _fix_crc(b)
    cases.append((bytes(b), "outside the"))
    # a plan index past the plans
    b = bytearray(good)
    struct.pack_into("<H", b, soff + 48, 999)
    _fix_crc(b)
    cases.append((bytes(b), "plan index"))
    for data, msg in cases:
        with pytest.raises(TableError, match=msg):
            read_table(data)


def test_bad_json_tables() -> None:
    t = _small_table()
    d = json.loads(table_json(t))
    d["sites"][0]["syncs"] = [3, 3]
    with pytest.raises(TableError, match="inconsistent"):
        read_json(json.dumps(d))
    d = json.loads(table_json(t))
    d["plans"][0]["final"] = "ZZ"
    with pytest.raises(TableError):
        read_json(json.dumps(d))
    for text in ("", "[]", "{}", '{"format": "gatelink-patch-table", "version": 1}'):
        with pytest.raises(TableError):
            read_json(text)


def test_hostile_json_tables() -> None:
    """Mutated JSON tables: values replaced by other types, huge or negative numbers, keys
    dropped: TableError every time, never another exception."""
    base = json.loads(table_json(_small_table()))
    rng = random.Random(5)
    odd = [None, -1, 0, 1 << 70, "x", [], {}, 1.5, True, "ff" * 40]

    def paths(d: object, prefix: tuple = ()) -> list[tuple]:
        out = [prefix]
        if isinstance(d, dict):
            for k, v in d.items():
                out += paths(v, prefix + (k,))
        elif isinstance(d, list):
            for i, v in enumerate(d[:3]):
                out += paths(v, prefix + (i,))
        return out

    all_paths = [p for p in paths(base) if p]
    for _ in range(1000):
        d = json.loads(json.dumps(base))
        p = rng.choice(all_paths)
        parent = d
        for k in p[:-1]:
            parent = parent[k]
        if rng.random() < 0.2 and isinstance(parent, dict):
            del parent[p[-1]]
        else:
            parent[p[-1]] = rng.choice(odd)
        try:
            t = read_json(json.dumps(d))
        except TableError:
            continue
        assert table_json(t) == json.dumps(d, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def test_locate_embedded_and_sidecar(tmp_path: Path) -> None:
    from gatelink.table.locate import locate

    f = tmp_path / "d.rdv"
    shutil.copy(FIXTURES / "rdv" / "drv32_padded.rdv", f)
    with pytest.raises(TableError, match="no patch table"):
        locate(open_image(f))
    assert run_cli("table", "--format", "json", str(f))[0] == 0
    got = locate(open_image(f))
    assert got.where.endswith(".gltab.json") and _unstamped(got.table) == _table("drv32_padded.rdv")
    assert run_cli("table", "--embed", str(f))[0] == 0
    got = locate(open_image(f))
    assert got.where == "embedded" and _unstamped(got.table) == _table("drv32_padded.rdv")
    assert got.image.data == (FIXTURES / "rdv" / "drv32_padded.rdv").read_bytes()
    other = tmp_path / "o.gltab"
    other.write_bytes(write_table(_table("drv16.rdv")))
    with pytest.raises(TableError, match="does not belong"):
        locate(open_image(f), str(other))
