"""The C reference runtime (gatelink/runtime/c, docs/runtime-c.md): a freestanding core, the
same patched images and the same lazy outcomes, stores and syncs as the Python runtime on every
fixture table, and hostile tables read under AddressSanitizer and UBSan."""

from __future__ import annotations

import functools
import os
import random
import struct
import subprocess
from pathlib import Path

import pytest
from conftest import FIXTURES, run_cli

from gatelink import open_image, scan
from gatelink.formats import RawOptions
from gatelink.runtime import (
    ImageMemory,
    LazyPatcher,
    Placement,
    Trap,
    apply_image,
    parse_registry,
)
from gatelink.runtime.native import C_DIR, BuildError, compile_c, compiler, targets_text
from gatelink.table import TableError, build_table, read_table, write_table

RAW = {"kernel16.bin": RawOptions(16, 0x120), "kernel32.bin": RawOptions(32, 0x110000)}
ALL_FIXTURES = (sorted((FIXTURES / "pe").glob("*.exe")) + sorted((FIXTURES / "rdv").glob("*.rdv"))
                + [FIXTURES / "boot" / "rdos.bin"] + sorted((FIXTURES / "raw").glob("*.bin"))
                + sorted((FIXTURES / "watcom").glob("*.rdv")) + sorted((FIXTURES / "watcom").glob("*.exe")))
IDS = [p.name for p in ALL_FIXTURES]
ASAN_ENV = {**os.environ, "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0", "UBSAN_OPTIONS": "print_stacktrace=1"}

# Every kind resolves somewhere; fallbacks give the near form where a shape cannot take a far call.
REGISTRY = parse_registry("""
version = 1
[undefined]
selector = 0x0408
offset = 0x00000010
[default.os]
form = "far"
selector = 0x0408
offset = 0x00020000
stride = 16
max = 881
[default.user]
form = "near"
target = 0x00401000
stride = 8
max = 100000
[default.server]
form = "far"
selector = 0x0ff8
offset = 0x7fff0000
stride = 1
max = 65535
[fallback.os]
form = "near"
target = 0x00050000
stride = 0
[fallback.user]
form = "near"
target = 0x00060000
stride = 0
[fallback.server]
form = "near"
target = 0x00070000
stride = 0
[gate.os.12]
form = "far"
selector = 0x0418
offset = 0x00001000
""", "<test registry>")


def _have_gcc() -> bool:
    try:
        compiler()
        return True
    except BuildError:
        return False


pytestmark = pytest.mark.skipif(not _have_gcc(), reason="no C compiler")


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hosted test driver, built with AddressSanitizer and UBSan (aborting on any report)."""
    out = tmp_path_factory.mktemp("cdrv") / "gltab_test"
    return compile_c(out, ["gltab.c", "gltab_test.c"],
                     ["-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"])


@functools.cache
def _fixture(name: str, forms: tuple[str, ...] = ("far", "near")):
    p = next(f for f in ALL_FIXTURES if f.name == name)
    img = open_image(p, raw=RAW.get(name))
    return img, build_table(scan(img, jobs=1), forms=forms)


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, env=ASAN_ENV, timeout=600)
    assert "Sanitizer" not in r.stderr and "runtime error" not in r.stderr, r.stderr[-3000:]
    return r


def _files(tmp: Path, table, data: bytes) -> tuple[Path, Path, Path]:
    t, i, g = tmp / "t.gltab", tmp / "image", tmp / "targets.txt"
    t.write_bytes(write_table(table))
    i.write_bytes(data)
    g.write_text(targets_text(table, REGISTRY))
    return t, i, g


# ---------------------------------------------------------------------------------------------
# The core builds freestanding


@pytest.mark.parametrize("bits", ["-m64", "-m32"])
def test_core_is_freestanding_c99(bits: str, tmp_path: Path) -> None:
    obj = tmp_path / "gltab.o"
    try:
        compile_c(obj, ["gltab.c"], ["-ffreestanding", "-fno-pic", "-nostdlib", "-pedantic", bits], object_only=True)
    except BuildError as e:
        if bits == "-m32":
            pytest.skip(f"gcc -m32 unavailable: {e}")
        raise
    undefined = subprocess.run(["nm", "-u", str(obj)], capture_output=True, text=True, check=True).stdout.split()
    assert undefined == [], f"the core needs symbols from outside: {undefined}"
    src = (C_DIR / "gltab.c").read_text()
    assert "#include <std" not in src.replace("#include <stdint.h>", "").replace("#include <stddef.h>", "")


# ---------------------------------------------------------------------------------------------
# Differential: up front


@pytest.mark.parametrize("name", IDS)
def test_apply_same_image_as_python(name: str, driver: Path, tmp_path: Path) -> None:
    img, table = _fixture(name)
    t, i, g = _files(tmp_path, table, img.data)
    for which, lazy in (("all", True), ("eager", False)):
        out = tmp_path / f"out-{which}"
        r = _run([str(driver), "apply", str(t), str(i), str(g), str(out), which])
        assert r.returncode == 0, r.stdout + r.stderr
        py, res = apply_image(table, img.data, REGISTRY, lazy=lazy)
        assert out.read_bytes() == py, f"{name} {which}: the C and Python patched images differ"
        fields = r.stdout.split()
        assert int(fields[fields.index("patched") + 1]) == len(res.patched)
        assert int(fields[fields.index("unplanned") + 1]) == len(res.unplanned)
    # a patched image is not the table's any more (identity): refused, nothing written
    again = tmp_path / "again"
    i.write_bytes((tmp_path / "out-all").read_bytes())
    r = _run([str(driver), "apply", str(t), str(i), str(g), str(again), "all"])
    if (tmp_path / "out-all").read_bytes() != img.data:
        assert r.returncode != 0 and not again.exists()


# ---------------------------------------------------------------------------------------------
# Differential: lazy


class _TraceMemory(ImageMemory):
    def __init__(self, data: bytes) -> None:
        super().__init__(bytearray(data))
        self.log: list[str] = []

    def store(self, address: int, data: bytes) -> None:
        super().store(address, data)
        self.log.append(f"S {address} {data.hex()}")

    def sync(self) -> None:
        self.log.append("Y")


def _script(table, seed: int) -> list[tuple]:
    """Faults at trap points, at other bytes, INT3 / INT n traps, repeats, re-arms, misses."""
    rng = random.Random(seed)
    pl = Placement.file(table)
    ops: list[tuple] = []
    order = list(range(len(table.sites)))
    rng.shuffle(order)
    done: list[int] = []
    for i in order:
        s = table.sites[i]
        code = pl.code_address(table, s)
        plan = next((table.plans[p] for p in s.plans if p is not None), None)
        resume = plan.resume if plan is not None else 0
        P = code + resume
        roll = rng.random()
        if roll < 0.1:
            ops.append(("F", code + rng.randrange(s.length), int(Trap.FAULT), -1))  # often not the stub's trap
        elif roll < 0.15:
            ops.append(("F", P + 1, int(Trap.INT3), -1))
        elif roll < 0.2:
            ops.append(("F", P + 2, int(Trap.INT), -1))
        ops.append(("F", P, int(Trap.FAULT), -1))
        done.append(i)
        if rng.random() < 0.2:
            ops.append(("F", P, int(Trap.FAULT), -1))  # DONE: a real fault now
        if done and rng.random() < 0.1:
            j = rng.choice(done)
            ops.append(("R", j))
            sj = table.sites[j]
            pj = next((table.plans[p] for p in sj.plans if p is not None), None)
            ops.append(("F", pl.code_address(table, sj) + (pj.resume if pj else 0), int(Trap.FAULT), -1))
    if table.regions:
        r = table.regions[0]
        ops.append(("F", r.address + r.size + 100, int(Trap.FAULT), -1))
        ops.append(("F", r.address, int(Trap.FAULT), 0))
    return ops


@pytest.mark.parametrize("name", IDS)
def test_lazy_same_outcomes_stores_and_syncs(name: str, driver: Path, tmp_path: Path) -> None:
    img, table = _fixture(name)
    t, i, g = _files(tmp_path, table, img.data)
    ops = _script(table, seed=len(name))
    (tmp_path / "script").write_text("".join(" ".join(map(str, op)) + "\n" for op in ops))
    out = tmp_path / "lazy-out"
    r = _run([str(driver), "lazy", str(t), str(i), str(g), str(tmp_path / "script"), str(out)])
    assert r.returncode == 0, r.stderr
    c_lines = r.stdout.splitlines()
    assert c_lines[0].startswith("foreign ")
    # Python: the same script
    mem = _TraceMemory(img.data)
    lp = LazyPatcher(table, mem, REGISTRY, Placement.file(table))
    assert int(c_lines[0].split()[1]) == lp.states()["foreign"]
    py_lines: list[str] = []
    for op in ops:
        mem.log = []
        if op[0] == "F":
            o = lp.on_fault(op[1], Trap(op[2]), None if op[3] < 0 else op[3])
            py_lines += mem.log
            if o.resume is None:
                py_lines.append(f"O default {-1 if o.site is None else o.site}")
            else:
                py_lines.append(f"O {o.action} {o.site} {o.resume}")
        else:
            ok = lp.rearm(op[1])
            py_lines += mem.log
            py_lines.append(f"R {int(ok)}")
    # C stores are (site, offset): turn them into memory addresses (file offsets) as Python logs
    conv = []
    for ln in c_lines[1:]:
        f = ln.split()
        if f[0] == "S":
            s = table.sites[int(f[1])]
            conv.append(f"S {s.file_offset + int(f[2])} {f[3]}")
        elif f[0] == "Y":
            conv.append("Y")
        else:
            conv.append(ln)
    assert conv == py_lines
    assert out.read_bytes() == bytes(mem.data)
    assert sum(1 for ln in py_lines if ln.startswith("O patched")) > 0 or not any(
        any(p is not None for p in s.plans) for s in table.sites)


# ---------------------------------------------------------------------------------------------
# Hostile tables, under the sanitizers


def _bundle(tables: list[bytes]) -> bytes:
    return struct.pack("<I", len(tables)) + b"".join(struct.pack("<I", len(t)) + t for t in tables)


# Python rejects these, the C loader need not: it ignores build info (docs/table-format.md: "a
# loader may ignore it") and takes strings as bytes; "canonical form" covers string pools that
# are valid but not deduplicated as gatelink writes them. Every check of "What a loader must
# validate" is made by both.
C_MAY_ACCEPT = ("build info", "not in canonical form", "cannot be re-encoded", "is not UTF-8", "duplicate name")


def test_hostile_tables_under_sanitizers(driver: Path, tmp_path: Path) -> None:
    from test_table import _mutate, _small_table  # the table tests' mutation generator

    goods = [write_table(_small_table()), write_table(_fixture("drv16.rdv")[1]),
             write_table(_fixture("kernel32.bin")[1])]
    rng = random.Random(10)
    # 10,000 mutations of the table tests' small table, 500 of two fixture tables with more plans
    tables = [_mutate(rng, goods[0]) for _ in range(10_000)]
    tables += [_mutate(rng, goods[1 + k % 2]) for k in range(1_000)] + goods
    (tmp_path / "bundle").write_bytes(_bundle(tables))
    r = _run([str(driver), "fuzz", str(tmp_path / "bundle")])
    assert r.returncode == 0, r.stderr[-2000:]
    codes = [int(x) for x in r.stdout.split()]
    assert len(codes) == len(tables)
    assert 99 not in codes, "an accepted table whose sites the binary search does not find"
    assert codes[-len(goods):] == [0] * len(goods)
    refused = 0
    for data, rc in zip(tables, codes):
        try:
            read_table(data)
            py_ok, why = True, ""
        except TableError as e:
            py_ok, why = False, str(e)
        if py_ok:
            assert rc == 0, f"the C loader refuses a table gatelink accepts: {rc}"
        elif rc == 0:
            assert any(k in why for k in C_MAY_ACCEPT), f"the C loader accepts a table gatelink refuses: {why}"
        refused += rc != 0
    assert refused > 9_500


def test_specific_refusals(driver: Path, tmp_path: Path) -> None:
    good = bytearray(write_table(_fixture("drv32_padded.rdv")[1]))

    def code(b: bytes) -> int:
        (tmp_path / "t").write_bytes(b)
        return int(_run([str(driver), "check", str(tmp_path / "t")]).stdout.split()[0])

    assert code(bytes(good)) == 0
    assert code(bytes(good[:100])) != 0
    assert code(bytes(good) + b"\0") != 0
    bad = bytearray(good)
    bad[200] ^= 1
    assert code(bytes(bad)) == -3  # CRC


# ---------------------------------------------------------------------------------------------
# A table compiled in: gatelink table --c, linked with the core


def test_c_output_links_with_the_core(tmp_path: Path) -> None:
    src = FIXTURES / "rdv" / "drv32_padded.rdv"
    out = tmp_path / "drv.gltab.c"
    assert run_cli("table", str(src), "--c", "-o", str(out))[0] == 0
    main = tmp_path / "main.c"
    main.write_text(
        '#include <stdio.h>\n#include "gltab.h"\n'
        "extern const unsigned char gatelink_table[];\nextern const unsigned long gatelink_table_size;\n"
        "int main(void) {\n  gl_table t;\n  int rc = gl_table_open(&t, gatelink_table, gatelink_table_size);\n"
        '  printf("%d %u\\n", rc, t.site_count);\n  return rc != 0;\n}\n')
    exe = compile_c(tmp_path / "linked", ["gltab.c", main, out])
    r = subprocess.run([str(exe)], capture_output=True, text=True, check=True)
    table = read_table(_table_bytes(src, tmp_path))
    assert r.stdout.split() == ["0", str(len(table.sites))]


def _table_bytes(src: Path, tmp: Path) -> bytes:
    t = tmp / "drv.gltab"
    assert run_cli("table", str(src), "-o", str(t))[0] == 0
    return t.read_bytes()


def test_a_step_needing_a_field_its_form_lacks_is_refused(driver: Path, tmp_path: Path) -> None:
    """A step that names a field the plan's final template does not hold (``off`` in a near
    plan) has no value to fill: gatelink's reader refuses the table, and the C runtime, which a
    kernel may give any table, refuses such a site at bind time (it stays a stub: FOREIGN)
    instead of filling garbage."""
    import dataclasses

    from gatelink.plan.model import var
    from gatelink.table.model import PlanStep

    img, t = _fixture("stubs_asm.exe")
    near = t.forms.index("near")
    for pi, p in enumerate(t.plans):
        if p.form != "near" or p.writes < 2:
            continue
        users = [s for s in t.sites if s.plans[near] == pi and REGISTRY.resolve(s.gate_kind, s.gate).form == "near"]
        w = [k for k, s in enumerate(p.steps) if not s.is_sync]
        covered = {p.steps[k].offset + j for k in w[1:] for j in range(p.steps[k].width)}
        first = p.steps[w[0]]
        j = next((j for j in range(first.width) if first.offset + j in covered), None)
        if not users or j is None:
            continue
        data = list(first.data)
        data[j] = var("off", 0)
        steps = list(p.steps)
        steps[w[0]] = PlanStep(first.offset, tuple(data))
        t2 = dataclasses.replace(t, plans=t.plans[:pi] + [dataclasses.replace(p, steps=tuple(steps))] + t.plans[pi + 1:])
        with pytest.raises(TableError, match="writes field off"):
            read_table(write_table(t2))
        tf, i, g = _files(tmp_path, t2, img.data)
        (tmp_path / "script").write_text("")
        r = _run([str(driver), "lazy", str(tf), str(i), str(g), str(tmp_path / "script"), str(tmp_path / "o")])
        assert int(r.stdout.split()[1]) >= len(users)
        return
    pytest.skip("no near plan with two overlapping writes in this fixture")


@pytest.mark.parametrize("name", ["stubs_asm.exe", "drv16.rdv"])
def test_apply_is_all_or_nothing(name: str, driver: Path, tmp_path: Path) -> None:
    """A site that does not hold its original bytes refuses the whole apply and what was written
    before it is put back; applying a patched image again is refused as already patched."""
    img, table = _fixture(name)
    t, i, g = _files(tmp_path, table, img.data)
    planned = [k for k, s in enumerate(table.sites) if any(p is not None for p in s.plans)]
    k = planned[len(planned) * 2 // 3]  # sites before it are written first, then put back
    r = _run([str(driver), "apply", str(t), str(i), str(g), str(tmp_path / "o"), "all", str(k)])
    first, second = r.stdout.splitlines()
    assert first.split()[0] == "-18" and f"bad_site {k} unchanged 1" in first  # GL_E_MISMATCH
    assert second.split()[0] == "-19" and second.endswith("unchanged 1")  # GL_E_PATCHED
