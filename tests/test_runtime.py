"""The reference runtime: apply / unpatch on the fixtures (byte for byte, all or nothing), the
final bytes of every form, and the lazy patcher's fault semantics (docs/runtime.md)."""

from __future__ import annotations

import functools
import threading
import time
from pathlib import Path

import pytest
from conftest import FIXTURES, ROOT, run_cli

from gatelink import open_image, scan
from gatelink.decode import Decoded, Kind, decode_view
from gatelink.formats import RawOptions
from gatelink.runtime import (
    DONE,
    FOREIGN,
    PATCHING,
    UNTOUCHED,
    ImageMemory,
    ImageMismatch,
    LazyPatcher,
    Placement,
    Trap,
    apply_image,
    load_registry,
    parse_registry,
    unpatch_image,
)
from gatelink.runtime.lazy import SPIN, STORE, SYNC
from gatelink.table import build_table, write_table

REGISTRY = ROOT / "docs" / "registry.example.toml"
FIXTURE_FILES = {
    "stubs_asm.exe": ("pe/stubs_asm.exe", None),
    "stubs_rdos.exe": ("pe/stubs_rdos.exe", None),
    "drv16.rdv": ("rdv/drv16.rdv", None),
    "drv32_padded.rdv": ("rdv/drv32_padded.rdv", None),
    "drv32_short.rdv": ("rdv/drv32_short.rdv", None),
    "rdos.bin": ("boot/rdos.bin", None),
    "kernel16.bin": ("raw/kernel16.bin", RawOptions(16, 0x120)),
    "kernel32.bin": ("raw/kernel32.bin", RawOptions(32, 0x110000)),
}


@functools.cache
def fixture(name: str, eager: str = "certain"):
    rel, raw = FIXTURE_FILES[name]
    img = open_image(str(FIXTURES / rel), raw=raw)
    return img, build_table(scan(img, jobs=1), eager=eager)


@functools.cache
def registry():
    return load_registry(REGISTRY)


def _changed(a: bytes, b: bytes) -> set[int]:
    return {i for i, (x, y) in enumerate(zip(a, b)) if x != y}


# -- apply / unpatch ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FIXTURE_FILES))
def test_apply_unpatch_round_trip(name):
    img, table = fixture(name)
    data = bytes(img.data)
    reg = registry()
    for lazy in (False, True):
        patched, res = apply_image(table, data, reg, lazy=lazy)
        assert len(patched) == len(data)
        # exactly the selected, planned sites changed, and only inside them
        spans = set()
        for i in res.patched:
            s = table.sites[i]
            spans |= set(range(s.file_offset, s.file_offset + s.length))
        assert _changed(data, patched) <= spans and res.patched
        want = [i for i, s in enumerate(table.sites) if lazy or s.eager]
        assert sorted(res.patched + res.unplanned) == want
        assert res.lazy_left == len(table.sites) - len(want)
        back, ures = unpatch_image(table, patched)
        assert back == data and sorted(ures.restored) == sorted(res.patched)
        back, _ = unpatch_image(table, patched, reg)  # exact finals with the registry
        assert back == data


@pytest.mark.parametrize("name", ["stubs_asm.exe", "drv16.rdv", "rdos.bin", "kernel32.bin"])
def test_patched_sites_are_real_calls(name):
    img, table = fixture(name)
    reg = registry()
    patched, res = apply_image(table, bytes(img.data), reg)
    # each patched site decodes as the far call the registry gives, at its trap point
    for i in res.patched:
        s = table.sites[i]
        tgt = reg.resolve(s.gate_kind, s.gate)
        tpl = table.plans[s.plans[0]]
        bits = table.regions[s.region].bitness
        at = s.file_offset + tpl.resume
        d = decode_view(patched[at : at + 15], bits, s.address + tpl.resume, text=False)
        assert isinstance(d, Decoded) and d.kind is Kind.CALLF, (hex(s.address), s.shape)
        assert (d.selector, d.offset, d.opsize) == (tgt.selector, tgt.offset, 32)
        assert s.address + tpl.resume + d.length <= s.address + s.length
    # a rescan finds no stub where a site was patched, and every unplanned one still there
    again = scan(_reopen(img, patched, FIXTURE_FILES[name][1]), jobs=1)
    left = {(x.region, x.address) for x in again.sites}
    names = [r.name for r in table.regions]
    for i in res.patched:
        s = table.sites[i]
        assert (names[s.region], s.address) not in left
    for i in res.unplanned:
        s = table.sites[i]
        assert (names[s.region], s.address) in left


def _reopen(img, data: bytes, raw):
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=Path(img.path).suffix, delete=False) as f:
        f.write(data)
    try:
        return open_image(f.name, raw=raw)
    finally:
        Path(f.name).unlink()


def test_apply_refuses_a_mismatching_image():
    img, table = fixture("drv32_padded.rdv")
    data = bytearray(img.data)
    reg = registry()
    s = next(s for s in table.sites if s.eager)
    bad = bytearray(data)
    bad[s.file_offset + 4] ^= 0xFF  # a gate byte of one site
    with pytest.raises(ImageMismatch, match="1 of .* sites do not hold the bytes the table records"):
        apply_image(table, bytes(bad), reg)
    bad = bytearray(data)
    r = table.regions[0]
    sites = {o for t in table.sites for o in range(t.file_offset, t.file_offset + t.length)}
    off = next(o for o in range(r.file_offset, r.file_offset + r.size) if o not in sites)
    bad[off] ^= 1  # a code byte outside every site: the identity catches it
    with pytest.raises(ImageMismatch, match="code differs"):
        apply_image(table, bytes(bad), reg)
    with pytest.raises(ImageMismatch, match="too short|bytes; the table describes"):
        apply_image(table, bytes(data[:-100]), reg)
    with pytest.raises(ImageMismatch, match="bytes; the table describes"):
        apply_image(table, bytes(data) + b"\0", reg)


def test_unpatch_refuses_foreign_bytes():
    img, table = fixture("drv32_padded.rdv")
    reg = registry()
    patched, res = apply_image(table, bytes(img.data), reg)
    s = table.sites[res.patched[0]]
    bad = bytearray(patched)
    bad[s.file_offset + 7 : s.file_offset + 9] = b"\x02\x04"  # a torn selector 0x0402: not a final form
    with pytest.raises(ImageMismatch, match="neither the original"):
        unpatch_image(table, bytes(bad))
    # another far target: a final form of the table, but not the registry's
    other = parse_registry("version = 1\n[undefined]\nselector = 0x0410\noffset = 0x99\n", "o.toml")
    patched2, _ = apply_image(table, bytes(img.data), other)
    assert unpatch_image(table, patched2)[0] == bytes(img.data)
    with pytest.raises(ImageMismatch, match="the registry's final bytes"):
        unpatch_image(table, patched2, reg)
    # a half-done site (its selector still the stub's) is refused too
    half = bytearray(patched)
    half[s.file_offset + 7 : s.file_offset + 9] = s.original[7:9]
    with pytest.raises(ImageMismatch):
        unpatch_image(table, bytes(half))


def test_cli_apply_unpatch(tmp_path):
    img, table = fixture("drv32_padded.rdv")
    src = tmp_path / "drv.rdv"
    src.write_bytes(img.data)
    tab = tmp_path / "drv.gltab"
    tab.write_bytes(write_table(table))
    out = tmp_path / "patched.rdv"
    code, o, e = run_cli("apply", str(src), "--table", str(tab), "--registry", str(REGISTRY), "-o", str(out))
    assert code == 0, e
    assert "patched" in o and out.read_bytes() != img.data
    back = tmp_path / "back.rdv"
    code, o, e = run_cli("unpatch", str(out), "--table", str(tab), "-o", str(back))
    assert code == 0, e
    assert back.read_bytes() == img.data
    # apply on the patched image: exit 3, nothing written
    again = tmp_path / "again.rdv"
    code, _, e = run_cli("apply", str(out), "--table", str(tab), "--registry", str(REGISTRY), "-o", str(again))
    assert code == 3 and not again.exists() and "already patched" in e and e.count("\n") == 1
    # a site byte changed: exit 3, nothing written
    bad = bytearray(img.data)
    bad[table.sites[0].file_offset + 3] ^= 0x55
    src2 = tmp_path / "bad.rdv"
    src2.write_bytes(bad)
    code, _, e = run_cli("apply", str(src2), "--table", str(tab), "--registry", str(REGISTRY), "-o", str(again))
    assert code == 3 and not again.exists() and "do not hold the bytes" in e
    # usage: the input as output without --in-place, no output at all, both
    code, _, e = run_cli("apply", str(src), "--table", str(tab), "--registry", str(REGISTRY), "-o", str(src))
    assert code == 2 and "--in-place" in e and src.read_bytes() == img.data
    code, _, e = run_cli("apply", str(src), "--table", str(tab), "--registry", str(REGISTRY))
    assert code == 2
    code, _, e = run_cli("apply", str(src), "--table", str(tab), "--registry", str(REGISTRY), "--in-place", "-o",
                         str(again))
    assert code == 2
    code, _, e = run_cli("apply", str(src), "--registry", str(REGISTRY), "-o", str(again))
    assert code == 2 and "no patch table embedded" in e
    # --in-place rewrites the input, --all patches the lazy sites as well
    code, _, e = run_cli("apply", str(src), "--table", str(tab), "--registry", str(REGISTRY), "--in-place", "--all")
    assert code == 0, e
    assert src.read_bytes() == apply_image(table, img.data, registry(), lazy=True)[0]
    code, _, e = run_cli("unpatch", str(src), "--table", str(tab), "--registry", str(REGISTRY), "--in-place")
    assert code == 0 and src.read_bytes() == img.data
    # not a table
    code, _, e = run_cli("apply", str(src), "--table", str(src), "--registry", str(REGISTRY), "-o", str(again))
    assert code == 3 and "not a gatelink patch table" in e
    assert not [f for f in tmp_path.iterdir() if f.name.endswith(".tmp")]


def test_cli_embedded_table(tmp_path):
    from gatelink.table.embed import embed

    img, table = fixture("stubs_rdos.exe")
    src = tmp_path / "app.exe"
    src.write_bytes(embed(img.data, img.format, write_table(table)))
    out, back = tmp_path / "p.exe", tmp_path / "b.exe"
    code, _, e = run_cli("apply", str(src), "--registry", str(REGISTRY), "-o", str(out), "--all")
    assert code == 0, e
    code, _, e = run_cli("unpatch", str(out), "-o", str(back))
    assert code == 0, e
    assert back.read_bytes() == src.read_bytes()


# -- the final bytes of every form -------------------------------------------------------------


@pytest.fixture(scope="module")
def forms_image():
    from gatelink.runtime.sim import SiteSpec, build_image

    specs = [SiteSpec("A", "far", 6), SiteSpec("C", "callgate", 0), SiteSpec("F", "near", 3),
             SiteSpec("G", "pushcs", 6), SiteSpec("U5", "near", 0), SiteSpec("A", "far", 0),
             SiteSpec("B", "far", 6), SiteSpec("D", "near", 0), SiteSpec("E", "pushcs", 6), SiteSpec("D", "callgate", 2)]
    return build_image(specs, undefined=(5,))


def test_every_form_fills_what_the_registry_says(forms_image):
    im = forms_image
    lazy = LazyPatcher(im.table, ImageMemory(bytearray(im.memory.data)), im.registry,
                       Placement.linked(im.table, [r.address - 0x10000 for r in im.table.regions]))
    seen = set()
    for i, s in enumerate(im.table.sites):
        sp = lazy.site_patch(i)
        t = sp.target
        seen.add(t.form)
        bits = im.table.regions[s.region].bitness
        pos, calls = 0, []
        while pos < len(sp.final):
            d = decode_view(sp.final[pos:], bits, sp.code_address + pos, text=False)
            assert isinstance(d, Decoded)
            calls.append(d)
            pos += d.length
        assert pos == len(sp.final)
        if t.form in ("far", "undefined"):
            c = next(d for d in calls if d.kind is Kind.CALLF)
            assert (c.selector, c.offset, c.opsize) == (t.selector, t.offset, 32)
        elif t.form == "callgate":
            c = next(d for d in calls if d.kind is Kind.CALLF)
            assert c.selector == t.selector and c.offset == s.gate  # the CPU ignores the offset
        else:
            c = next(d for d in calls if d.kind is Kind.CALL)
            assert c.target == t.target and c.opsize == 32
            if t.form == "pushcs":  # push cs right before the call (the callee returns far)
                k = calls.index(c)
                assert calls[k - 1].kind is Kind.PUSH and calls[k - 1].reg == "cs"
    assert seen == {"far", "callgate", "near", "pushcs", "undefined"}


# -- lazy patching -----------------------------------------------------------------------------


class CountingMemory(ImageMemory):
    """Records every store and sync; optionally slows stores down to widen races."""

    def __init__(self, data: bytes, delay: float = 0.0) -> None:
        super().__init__(bytearray(data))
        self.log: list[tuple[int, bytes] | str] = []
        self.delay = delay

    def store(self, address: int, data: bytes) -> None:
        if self.delay:
            time.sleep(self.delay)
        super().store(address, data)
        self.log.append((address, bytes(data)))

    def sync(self) -> None:
        self.log.append("sync")


def _lazy(name="drv32_padded.rdv", delay=0.0, **kw):
    img, table = fixture(name)
    mem = CountingMemory(bytes(img.data), delay)
    return table, mem, LazyPatcher(table, mem, registry(), Placement.file(table), **kw)


def test_first_fault_patches_and_resumes_at_the_trap():
    table, mem, lazy = _lazy()
    i = next(i for i, s in enumerate(table.sites) if s.shape == "A")
    s = table.sites[i]
    sp = lazy.site_patch(i)
    trap = s.address + sp.resume
    out = lazy.on_fault(trap)
    assert (out.resume, out.site, out.action) == (trap, i, "patched")
    assert lazy.state[i] == DONE and mem.read(s.file_offset, s.length) == sp.final
    # the stores are the plan's, in order, then the retire sync (unless the plan ends with one)
    want = [(s.file_offset + o, d) if d else "sync" for o, d in sp.steps]
    if sp.steps[-1][1] != b"":
        want.append("sync")
    assert mem.log == want
    # a finished site: a fault there is a real fault
    assert lazy.on_fault(trap).action == "default" and lazy.state[i] == DONE


def test_faults_that_are_not_the_patchers():
    calls = []
    table, mem, lazy = _lazy(default_handler=lambda a, t: calls.append((a, t)))
    outside = table.regions[0].address + table.regions[0].size + 0x100
    assert lazy.on_fault(outside) .resume is None and calls == [(outside, Trap.FAULT)]
    i = next(i for i, s in enumerate(table.sites) if s.shape == "A")
    s = table.sites[i]
    # not the stub's trap point, or not a fault: the default handler, the site stays untouched
    for addr, trap in ((s.address + 3, Trap.FAULT), (s.address + 1, Trap.INT3), (s.address + 2, Trap.INT)):
        out = lazy.on_fault(addr, trap)
        assert out.resume is None and out.site == i and lazy.state[i] == UNTOUCHED
    assert mem.log == [] and len(calls) == 4
    # between two sites
    gap = next(a for a in range(table.sites[0].address, table.sites[-1].address) if lazy.find(a) is None)
    assert lazy.on_fault(gap).site is None


def test_a_trap_during_the_plan_waits_and_resumes_there():
    table, _, lazy = _lazy()
    i = next(i for i, s in enumerate(table.sites) if s.shape == "A")
    s = table.sites[i]
    sp = lazy.site_patch(i)
    owner = lazy.fault_steps(s.address + sp.resume)
    op = next(owner)  # the owner claimed the site and holds its first operation
    assert lazy.state[i] == PATCHING and op[0] in (STORE, SYNC)
    # another core hit an INT3 a plan could have put at the trap point: back up to the CC byte
    other = lazy.fault_steps(s.address + sp.resume + 1, Trap.INT3)
    assert next(other) == (SPIN,)
    # and a third one faulted on a torn view somewhere inside the site
    third = lazy.fault_steps(s.address + 3, Trap.FAULT)
    assert next(third) == (SPIN,)
    for _ in owner:  # finish the owner's plan (the ops are not performed: only the states matter here)
        pass
    assert lazy.state[i] == DONE
    with pytest.raises(StopIteration) as e:
        next(other)
    assert (e.value.value.resume, e.value.value.action) == (s.address + sp.resume, "waited")
    with pytest.raises(StopIteration) as e:
        next(third)
    assert e.value.value.resume == s.address + 3


def test_two_threads_on_one_site_one_runs_the_plan():
    table, mem, lazy = _lazy(delay=0.01)
    i = next(i for i, s in enumerate(table.sites) if s.shape == "A")
    sp = lazy.site_patch(i)
    trap = table.sites[i].address + sp.resume
    outs = []
    barrier = threading.Barrier(4)

    def core():
        barrier.wait()
        outs.append(lazy.on_fault(trap))

    threads = [threading.Thread(target=core) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(o.action for o in outs) == ["patched", "waited", "waited", "waited"]
    assert {o.resume for o in outs} == {trap}
    assert sum(1 for e in mem.log if e != "sync") == sum(1 for _, d in sp.steps if d)


def test_many_threads_many_sites_each_patched_once():
    table, mem, lazy = _lazy()
    planned = [i for i, s in enumerate(table.sites) if lazy.state[i] == UNTOUCHED]
    traps = [table.sites[i].address + lazy.site_patch(i).resume for i in planned]
    results: list[list] = [[] for _ in range(4)]

    def core(k):
        for a in (traps if k % 2 else reversed(traps)):
            results[k].append(lazy.on_fault(a))

    threads = [threading.Thread(target=core, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = [o for r in results for o in r]
    patched = sorted(o.site for o in flat if o.action == "patched")
    assert patched == sorted(planned)  # exactly one plan run per site
    assert all(lazy.state[i] == DONE for i in planned)
    img, _ = fixture("drv32_padded.rdv")
    assert bytes(mem.data) == apply_image(table, bytes(img.data), registry(), lazy=True)[0]


def test_foreign_bytes_and_unplanned_sites_are_never_patched():
    img, table = fixture("drv16.rdv")
    data = bytearray(img.data)
    i = next(i for i, s in enumerate(table.sites) if any(p is not None for p in s.plans))
    s = table.sites[i]
    data[s.file_offset] = 0xCC  # a debugger's breakpoint
    mem = CountingMemory(bytes(data))
    lazy = LazyPatcher(table, mem, registry(), Placement.file(table))
    assert lazy.state[i] == FOREIGN
    assert lazy.on_fault(s.address + table.plans[s.plans[0]].resume).action == "default"
    u = next(i for i, s in enumerate(table.sites) if all(p is None for p in s.plans))  # U5: no 16-bit form fits
    assert lazy.state[u] == FOREIGN and lazy.on_fault(table.sites[u].address).action == "default"
    # bytes changed after the patcher started: the claim finds them and gives the site up
    j = next(j for j, t in enumerate(table.sites) if lazy.state[j] == UNTOUCHED)
    t = table.sites[j]
    mem.data[t.file_offset + 4] ^= 1
    assert lazy.on_fault(t.address + lazy.site_patch(j).resume).action == "default"
    assert lazy.state[j] == FOREIGN and mem.log == []


def test_rearm_restores_and_faults_again():
    table, mem, lazy = _lazy()
    i = next(i for i, s in enumerate(table.sites) if s.shape == "C")
    s = table.sites[i]
    trap = s.address + lazy.site_patch(i).resume
    assert lazy.on_fault(trap).action == "patched"
    assert lazy.rearm(i) and lazy.state[i] == UNTOUCHED and mem.read(s.file_offset, s.length) == s.original
    assert mem.log[-1] == "sync"
    assert not lazy.rearm(i)  # only a DONE site is re-armed
    assert lazy.on_fault(trap).action == "patched"


def test_initial_states_follow_memory():
    img, table = fixture("drv32_padded.rdv")
    patched, res = apply_image(table, bytes(img.data), registry())
    lazy = LazyPatcher(table, ImageMemory(patched), registry(), Placement.file(table))
    for i, s in enumerate(table.sites):
        assert lazy.state[i] == (DONE if i in res.patched else UNTOUCHED)
    untouched = LazyPatcher(table, ImageMemory(patched), registry(), Placement.file(table), initial="untouched")
    assert set(untouched.state) == {UNTOUCHED}


def test_regions_that_share_addresses():
    img, table = fixture("rdos.bin")
    assert table.regions[0].address == table.regions[1].address  # two drivers, both at 0
    lazy = LazyPatcher(table, CountingMemory(bytes(img.data)), registry(), Placement.file(table))
    i = next(i for i, s in enumerate(table.sites) if s.region == 1 and lazy.state[i] == UNTOUCHED)
    s = table.sites[i]
    assert lazy.find(s.address, 1) == i
    out = lazy.on_fault(s.address + lazy.site_patch(i).resume, region=1)
    assert (out.site, out.action) == (i, "patched")


def test_near_forms_are_relative_to_where_the_code_runs(forms_image):
    im = forms_image
    i = next(i for i, s in enumerate(im.table.sites) if s.shape == "F")
    a = LazyPatcher(im.table, ImageMemory(bytearray(im.memory.data)), im.registry,
                    Placement.linked(im.table, [r.address - 0x10000 for r in im.table.regions])).site_patch(i)
    moved = Placement(tuple(r.address - 0x10000 for r in im.table.regions),
                      tuple(r.address + 0x1000 for r in im.table.regions))
    b = LazyPatcher(im.table, ImageMemory(bytearray(im.memory.data)), im.registry, moved).site_patch(i)
    at = a.final.index(0xE8) + 1
    rel_a = int.from_bytes(a.final[at : at + 4], "little")
    rel_b = int.from_bytes(b.final[at : at + 4], "little")
    assert (rel_a - rel_b) & 0xFFFFFFFF == 0x1000 and b.code_address == a.code_address + 0x1000
