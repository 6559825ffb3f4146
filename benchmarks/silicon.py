"""Benchmark: the C runtime on this machine's silicon (issue 10, section 6), one table of ratios
from one run.

* up-front apply: ``gl_apply`` of every site of a 10^6-site table (a raw 32-bit image of stubs
  of eight shapes, scanned and tabled by gatelink), ns per site, best of ``--reps``; the table's
  validation (``gl_table_open``: CRC, every check) per site beside it. Bar: 20 ns per site.
* lazy first-fault patch, plans with no sync step, in a 32-bit process (``gl_harness --bench``):
  µs per patch next to a bare signal round trip (``ud2``, SIGILL, step over) on the same
  machine: the stub's own #GP (a far call to selector 2) stepped over by a handler that does
  nothing else (a ``ud2`` round trip is printed too: under KVM on AMD it costs a VM exit). Bar: 1.5x. Measured with one thread (the retire sync has no other core to wait for,
  as in a kernel on one core) and with a second thread present (the retire sync is then a
  signal handshake that waits for that thread to be scheduled).
* steady state: a patched call (a patched site of shape A: ``3E 67 9A off sel``, ``ret``) next
  to a hand-written direct far call (the same bytes written by hand), an indirect call through
  a pointer table (what dynamic linking does) and an unpatched stub that faults on every call
  and is emulated by the fault handler (push cs:eip, enter the target). Bar: patched within 5%
  of the hand-written far call.

Figures are printed, not asserted; the load average is printed beside them (the machine is
shared: wall-clock figures mean most on an idle one).

    python benchmarks/silicon.py [--sites 1000000] [--reps 5] [--model 8,arbitrary] [--keep DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

OUT = HERE / "out" / "silicon"
BIG_SHAPES = ("A", "C", "F", "G", "I", "L7", "L7P", "U7")
REGISTRY = """version = 1
[undefined]
selector = 0x0408
offset = 0x00000010
[default.os]
form = "far"
selector = 0x0408
offset = 0x00020000
stride = 16
[default.user]
form = "far"
selector = 0x0410
offset = 0x00030000
stride = 16
[default.server]
form = "far"
selector = 0x0418
offset = 0x00040000
stride = 16
"""


def load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def big_table(n: int, model: str, out: Path) -> tuple[Path, Path, Path]:
    """A raw 32-bit image of ``n`` stubs (a directory of near calls proves each one), scanned and
    tabled by gatelink (eager all); cached in ``out`` by its parameters."""
    from gatelink import open_image, scan
    from gatelink.catalog import shape, stub_bytes
    from gatelink.formats import RawOptions
    from gatelink.plan.model import FetchModel
    from gatelink.runtime import parse_registry
    from gatelink.runtime.native import targets_text
    from gatelink.table.binary import read_table, write_table
    from gatelink.table.build import build_table

    out.mkdir(parents=True, exist_ok=True)
    tag = f"{n}-{model.replace(',', '_')}"
    img, tab, tg = out / f"big-{tag}.bin", out / f"big-{tag}.gltab", out / f"big-{tag}.targets"
    reg = parse_registry(REGISTRY, "<silicon registry>")
    if img.exists() and tab.exists() and tg.exists():
        return img, tab, tg
    t0 = time.perf_counter()
    call = 5
    start = (n * call + 1 + 63) // 64 * 64 + 64
    buf = bytearray(b"\xcc" * (start + n * 14 + 128))
    pos = start
    for k in range(n):
        st = stub_bytes(shape(BIG_SHAPES[k % len(BIG_SHAPES)]), 1 + k % 4096)
        buf[pos : pos + len(st)] = st
        buf[pos + len(st)] = 0xC3
        at = k * call
        buf[at] = 0xE8
        buf[at + 1 : at + 5] = (pos - (at + 5)).to_bytes(4, "little", signed=True)
        pos += len(st) + 2 + (1 - (len(st) + 2) % 2)
    buf[n * call] = 0xC3
    img.write_bytes(buf)
    res = scan(open_image(img, raw=RawOptions(32, 0x20000000)), jobs=2)
    if len(res.sites) != n:
        raise SystemExit(f"the scanner found {len(res.sites)} sites, {n} were planted")
    table = build_table(res, FetchModel.parse(model), eager="all")
    tab.write_bytes(write_table(table))
    tg.write_text(targets_text(read_table(tab.read_bytes()), reg))
    print(f"(built the {n}-site image and table in {time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return img, tab, tg


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sites", type=int, default=1_000_000, help="sites of the up-front table (default 10^6)")
    ap.add_argument("--reps", type=int, default=5, help="repetitions; the best counts")
    ap.add_argument("--model", default="8,arbitrary")
    ap.add_argument("--keep", type=Path, default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()

    from gatelink.plan.model import FetchModel
    from gatelink.runtime.harness import run_bench
    from gatelink.runtime.native import compile_c

    load0 = load()
    work = args.keep or Path(tempfile.mkdtemp(prefix="gatelink-silicon-"))
    work.mkdir(parents=True, exist_ok=True)
    img, tab, tg = big_table(args.sites, args.model, OUT)
    figs = {}
    for bits, m32 in (("i386", True), ("x86-64", False)):
        drv = compile_c(work / f"gltab_bench_{bits}", ["gltab.c", "gltab_test.c"], ["-fno-pie", "-no-pie"], m32=m32)
        r = subprocess.run([str(drv), "bench-apply", str(tab), str(img), str(tg), str(args.reps)],
                           capture_output=True, text=True, check=True)
        f = r.stdout.split()
        figs[bits] = float(f[f.index("apply_ns_per_site") + 1]), float(f[f.index("open_ns_per_site") + 1])
    apply_ns, open_ns = figs["i386"]
    apply64 = figs["x86-64"][0]
    load1 = load()
    h = run_bench(work / "harness", FetchModel.parse(args.model), args.reps)
    load2 = load()

    def row(what: str, value: str, ref: str, ratio: str, bar: str) -> str:
        return f"{what:<44} {value:>14} {ref:>22} {ratio:>8}  {bar}"

    syncs = "membarrier SYNC_CORE" if h.get("sync_membarrier") else "signal handshake"
    lines = [
        (f"silicon figures: {args.sites} sites up front, best of {args.reps}; model {args.model}; "
         f"sync steps by {syncs}, retire syncs by signal handshake"),
        f"load average: {load0} (start), {load1} (after apply), {load2} (after the harness)",
        "",
        row("figure", "measured", "reference", "ratio", "bar"),
        row("up-front apply, ns per site", f"{apply_ns:.1f} ns", "(bar 20 ns)", f"{apply_ns / 20:.2f}",
            "PASS" if apply_ns <= 20 else "MISS"),
        row("  the same, x86-64 build", f"{apply64:.1f} ns", "(bar 20 ns)", f"{apply64 / 20:.2f}",
            "PASS" if apply64 <= 20 else "MISS"),
        row("  table validation (gl_table_open), ns/site", f"{open_ns:.1f} ns", "", "", "(not in the bar)"),
    ]
    sig = h["signal_round_trip_gp_us"]
    lines.append(row("bare signal round trip: #GP, SIGSEGV", f"{sig:.2f} us", "", "", "(the reference)"))
    ud = h["signal_round_trip_ud_us"]
    lines.append(row("  the same for ud2 (#UD, SIGILL)", f"{ud:.2f} us", f"#GP trip {sig:.2f} us", f"{ud / sig:.2f}",
                     ""))
    for label, key in (("lazy patch, no-sync plan, 1 thread", "lazy_patch_nosync_us"),
                       ("lazy patch, no-sync plan, 2 threads", "lazy_patch_2threads_nosync_us")):
        v = h[key]
        lines.append(row(label, f"{v:.2f} us", f"#GP trip {sig:.2f} us", f"{v / sig:.2f}",
                         "PASS" if v <= 1.5 * sig else "MISS"))
    for label, key in (("lazy patch, plan with syncs, 1 thread", "lazy_patch_sync_us"),
                       ("lazy patch, plan with syncs, 2 threads", "lazy_patch_2threads_sync_us")):
        v = h[key]
        lines.append(row(label, f"{v:.2f} us", f"#GP trip {sig:.2f} us", f"{v / sig:.2f}", "(no bar)"))
    far = h["direct_far_call_ns"]
    pc = h["patched_call_ns"]
    lines.append(row("patched call (shape A, far form)", f"{pc:.2f} ns", f"direct far {far:.2f} ns",
                     f"{pc / far:.3f}", "PASS" if pc <= 1.05 * far else "MISS"))
    ind = h["indirect_call_ns"]
    lines.append(row("indirect call through a pointer table", f"{ind:.2f} ns", f"direct far {far:.2f} ns",
                     f"{ind / far:.3f}", ""))
    un = h["unpatched_stub_call_us"] * 1000
    lines.append(row("unpatched stub, emulated on every fault", f"{un:.0f} ns", f"direct far {far:.2f} ns",
                     f"{un / far:.0f}", ""))
    lines.append("")
    lines.append(f"lazy sites per round: {int(h.get('lazy_sites_nosync', 0))} with no-sync plans, "
                 f"{int(h.get('lazy_sites_sync', 0))} with syncs (32-bit sites of the harness image)")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
