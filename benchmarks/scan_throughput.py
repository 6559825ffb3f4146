"""Benchmark: scan throughput on a large PE32 of real compiled i386 code (issue bar below).

Bar: a PE32 of at least 64 MiB of real compiled i386 code with at least 4,000 planted stubs and
decoys, scanned end to end (open, scan, JSON written) at 150 MB/s or better on a 2-core machine,
with results exact; the throughput of a full linear-sweep disassembly of the same code is printed
as the reference, and peak memory must stay at most twice the file size.

Steps:

1. Build or reuse the corpus (``benchmarks/corpus.py``: gcc -O2 code, stubs and decoys planted,
   truth read back from the toolchain and checked with capstone; cached under benchmarks/out/).
2. Memory: ``gatelink scan --format json -o FILE`` (``gatelink.cli.main``) in a child process.
   Its peak RSS comes from the kernel (``os.wait4`` on that child: the ``rusage`` that
   ``getrusage(RUSAGE_CHILDREN)`` reports, but for that one child rather than the largest of every
   child so far); the process tree is also sampled for its summed PSS, which counts worker
   processes too. This runs first, while this process is small (see ``run_child``).
3. End to end, in this process, best of ``--repeat``: ``gatelink.cli.main`` with the same
   arguments (so exactly what the CLI does: gate list, ``open_image``, ``scan``, JSON rendering,
   atomic write), timed as a whole; per-phase times come from timing wrappers around the functions
   it calls. MB/s is 10^6 bytes *of the file* per second (code-only MB/s is printed too). The
   child's JSON must be byte-identical to this run's.
4. Exactness: the sites in the JSON just written against the truth (every planted site found
   with its shape, gate, selector, address; nothing else reported as a site).
5. Reference: ``gatelink.decode.linear_sweep`` over the bytes of every code section (MB/s of code
   and instructions/s).

Exit 1 if a bar fails (exactness, --min-mbps, --max-mem-ratio); 0 otherwise.

    python benchmarks/scan_throughput.py [--size-mib 64] [--stubs 4000] [--repeat 3] [--min-mbps 150]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

MiB = 1 << 20
MB = 1_000_000


def scan_argv(path: str, out: str, extra: list[str]) -> list[str]:
    """The command line measured: ``gatelink scan --format json [EXTRA] -o OUT PATH``."""
    return ["scan", "--format", "json", *extra, "-o", out, path]


def timed_cli(path: str, out: str, extra: list[str]) -> dict[str, float]:
    """One end-to-end run of the CLI, in this process (``gatelink.cli.main``), timed as a whole.

    Phase times come from timing wrappers put, for the run, around the functions the CLI calls
    (gate list, ``open_image``, ``scan``, ``scan_json``, ``write_output``); a phase the CLI no
    longer reaches through them shows as missing, the total stays right.
    """
    import importlib

    from gatelink import cli

    # The CLI imports what a command needs lazily: load the modules whose functions are timed.
    for name in ("gatelink.gates", "gatelink.formats", "gatelink.scan", "gatelink.report", "gatelink.cli.scan"):
        importlib.import_module(name)
    phases: dict[str, float] = {}
    decoded = [0]
    patches = []

    def wrap(mod: object, name: str, key: str) -> None:
        orig = getattr(mod, name, None)
        if orig is None:
            return

        def timed(*a: object, **k: object) -> object:
            t = time.perf_counter()
            try:
                r = orig(*a, **k)
            finally:
                phases[key] = phases.get(key, 0.0) + time.perf_counter() - t
            if key == "scan":
                decoded[0] += getattr(r, "decoded_instructions", 0)
            return r

        setattr(mod, name, timed)
        patches.append((mod, name, orig))

    wrap(sys.modules["gatelink.gates"], "load", "gates")
    wrap(sys.modules["gatelink.formats"], "open_image", "open")
    wrap(sys.modules["gatelink.scan"], "scan", "scan")
    wrap(sys.modules["gatelink.report"], "scan_json", "json")
    wrap(sys.modules["gatelink.cli.scan"], "write_output", "write")
    try:
        t0 = time.perf_counter()
        rc = cli.main(scan_argv(path, out, extra))
        total = time.perf_counter() - t0
    finally:
        for mod, name, orig in reversed(patches):
            setattr(mod, name, orig)
    if rc != 0:
        raise RuntimeError(f"gatelink scan exited {rc}")
    return {"total": total, **phases, "decoded": decoded[0]}


def child_main(path: str, out: str, extra: list[str]) -> int:
    """``--child``: the real CLI, in a fresh process; prints its wall time and own peak RSS."""
    import resource

    from gatelink.cli import main as cli_main

    t0 = time.perf_counter()
    rc = cli_main(scan_argv(path, out, extra))
    dt = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    hwm = None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
    except OSError:
        pass
    print(json.dumps({"rc": rc, "seconds": dt, "self_maxrss": rss, "vmhwm": hwm}))
    return rc


def _tree(root: int) -> list[int]:
    """``root`` and its descendants (from /proc)."""
    pids = [root]
    i = 0
    while i < len(pids):
        try:
            for tid in os.listdir(f"/proc/{pids[i]}/task"):
                with open(f"/proc/{pids[i]}/task/{tid}/children") as f:
                    pids.extend(int(x) for x in f.read().split())
        except OSError:
            pass
        i += 1
    return pids


def _pss_rss(pid: int) -> tuple[int, int]:
    pss = rss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return pss, rss


def run_child(path: str, out: str, extra: list[str]) -> tuple[dict, int, dict]:
    """Run ``--child``; return (its report, its peak RSS in bytes from the kernel, samples).

    The kernel figure (``os.wait4``) is the peak of the largest single process of the job (the
    child or one of its workers). Linux carries the spawning process's memory high-water mark
    into the child's ``ru_maxrss`` (subprocess spawns with vfork, and exec keeps the old mm's
    peak), so this must run while this process is still small: before it reads the corpus. The
    child also reports its own ``VmHWM`` as a cross-check. While it runs, the process tree is
    sampled every 10 ms: the peak of the summed PSS (shared pages split between the processes
    that map them) is the memory of the whole job when the scanner uses worker processes.
    """
    import tempfile
    import threading

    with tempfile.TemporaryFile() as err:
        p = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", path, out, "--", *extra],
                             stdout=subprocess.PIPE, stderr=err)
        samples = {"peak_pss": 0, "peak_rss_sum": 0, "max_processes": 0, "samples": 0}
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                pids = _tree(p.pid)
                vals = [_pss_rss(q) for q in pids]
                samples["peak_pss"] = max(samples["peak_pss"], sum(v[0] for v in vals))
                samples["peak_rss_sum"] = max(samples["peak_rss_sum"], sum(v[1] for v in vals))
                samples["max_processes"] = max(samples["max_processes"], len(pids))
                samples["samples"] += 1
                done.wait(0.01)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        stdout = p.stdout.read().decode()  # type: ignore[union-attr]
        done.set()  # the child has closed its output; until reaped below its pid stays its own
        th.join()
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"child failed ({p.returncode}): {err.read().decode(errors='replace').strip()[-2000:]}")
    return json.loads(stdout.strip().splitlines()[-1]), ru.ru_maxrss * 1024, samples


def compare(truth: dict, doc: dict) -> dict:
    """Sites reported against the planted truth."""
    inp = doc["inputs"][0]
    got = {s["file_offset"]: s for s in inp["sites"]}
    want = {s["file_offset"]: s for s in truth["sites"]}
    decoys = {d["file_offset"]: d for d in truth["decoys"]}
    near: dict[int, list[dict]] = {}
    for n in inp["near_misses"]:
        near.setdefault(n["file_offset"], []).append(n)
    missed, extra, wrong = [], [], []
    fields = ("address", "region", "shape", "gate", "selector", "bitness", "length", "marker")
    for off, w in sorted(want.items()):
        g = got.get(off)
        if g is None:
            missed.append((w, near.get(off, [])))
            continue
        diff = {f: (w.get(f), g.get(f)) for f in fields if w.get(f) != g.get(f)}
        if diff:
            wrong.append((w, g, diff))
    for off, g in sorted(got.items()):
        if off not in want:
            extra.append((g, decoys.get(off)))
    # decoys: what the scanner made of them (informative)
    decoy_seen: dict[str, int] = {}
    for off, d in decoys.items():
        if off in got:
            continue
        reasons = sorted({n["reason"] for n in near.get(off, [])})
        key = f"{d['kind']} -> {'/'.join(reasons) if reasons else 'not reported'}"
        decoy_seen[key] = decoy_seen.get(key, 0) + 1
    conf: dict[str, int] = {}
    for g in got.values():
        conf[g["confidence"]] = conf.get(g["confidence"], 0) + 1
    return {"found": len(got), "planted": len(want), "missed": missed, "extra": extra, "wrong": wrong,
            "decoys": decoy_seen, "confidence": conf, "near_misses": len(inp["near_misses"])}


def _site(s: dict) -> str:
    sel = "" if s.get("selector") is None else f" sel {s['selector']}"
    return f"{s['shape']} gate {s['gate']}{sel} at {s['address']:#x}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=float, default=64, help="code in the corpus, MiB (default 64)")
    ap.add_argument("--stubs", type=int, default=4000, help="planted stubs (default 4000)")
    ap.add_argument("--decoys", type=int, default=None, help="planted decoys (default: as many as stubs)")
    ap.add_argument("--seed", type=int, default=1, help="corpus seed (default 1)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compilers in parallel for the corpus")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the corpus even if cached")
    ap.add_argument("--repeat", type=int, default=3, help="end-to-end runs; the best counts (default 3)")
    ap.add_argument("--sweep-repeat", type=int, default=1, help="linear-sweep reference runs (default 1)")
    ap.add_argument("--min-mbps", type=float, default=150.0, help="throughput bar, MB (10^6 bytes) of file per s")
    ap.add_argument("--max-mem-ratio", type=float, default=2.0, help="peak RSS bar, as a multiple of the file size")
    ap.add_argument("--no-memory", action="store_true", help="skip the child-process memory run")
    ap.add_argument("--no-sweep", action="store_true", help="skip the linear-sweep reference")
    ap.add_argument("--results", type=Path, help="also write the figures as JSON here")
    ap.add_argument("--cli-args", default="", help="extra `gatelink scan` arguments, e.g. \"--jobs 1\" (one string)")
    if sys.argv[1:2] == ["--child"]:  # internal: --child FILE OUT -- [CLI ARGS]
        return child_main(sys.argv[2], sys.argv[3], sys.argv[5:])
    args = ap.parse_args()
    extra = shlex.split(args.cli_args)

    import corpus as corpus_mod

    import gatelink
    import gatelink.cli  # noqa: F401 - imported before timing, as the CLI has it loaded when it scans
    import gatelink.report  # noqa: F401
    from gatelink.decode import linear_sweep

    t0 = time.perf_counter()
    decoys = args.stubs if args.decoys is None else args.decoys
    key = corpus_mod.corpus_key(args.size_mib, args.stubs, decoys, args.seed)
    if args.rebuild or not (corpus_mod.OUT_ROOT / key / "corpus.exe.truth.json").exists():
        # Build in a child process: this one must stay small until the memory run (run_child).
        cmd = [sys.executable, str(HERE / "corpus.py"), "--size-mib", str(args.size_mib), "--stubs", str(args.stubs),
               "--decoys", str(decoys), "--seed", str(args.seed), "--jobs", str(args.jobs)]
        subprocess.run(cmd + (["--force"] if args.rebuild else []), check=True)
    c = corpus_mod.build(args.size_mib, args.stubs, args.decoys, args.seed, args.jobs)
    if not c.reused:
        print("  note: the corpus was built in this process: the memory figure below includes that peak")
    corpus_mod.summarize(c, time.perf_counter() - t0)
    truth = c.truth
    path = os.path.relpath(c.exe)
    fsize = os.path.getsize(path)
    code = truth["code_bytes"]
    out_json = c.exe.parent / "scan.json"
    out_child = c.exe.parent / "scan.child.json"

    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}, "
          f"gatelink {gatelink.__version__}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if load[0] > 0.5:
        print("  note: the machine is busy (load average above 0.5): timings below are pessimistic")
    meets = code >= 64 * MiB and len(truth["sites"]) >= 4000
    if not meets:
        print(f"  note: this corpus ({code / MiB:.1f} MiB of code, {len(truth['sites'])} sites) is smaller than the bar's "
              "64 MiB / 4,000 stubs: the figures are indicative only")

    # -- memory, in a child (first, while this process is small: see run_child) ----------------------
    cmdline = "gatelink " + " ".join(shlex.quote(a) for a in scan_argv(path, "FILE", extra))
    mem = None
    if not args.no_memory:
        import resource

        rep, rss, smp = run_child(path, str(out_child), extra)
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        peak = max(rss, smp["peak_pss"])
        mem = {"peak": peak, "peak_rss": rss, "child_vmhwm": rep.get("vmhwm"), "rusage_children": children,
               "tree_peak_pss": smp["peak_pss"], "tree_peak_rss_sum": smp["peak_rss_sum"],
               "tree_max_processes": smp["max_processes"], "samples": smp["samples"], "child_seconds": rep["seconds"]}
        hwm = rep.get("vmhwm")
        print(f"memory: `{cmdline}` in a child process: peak {peak / MiB:.1f} MiB = {peak / fsize:.2f}x the file "
              f"({fsize / MiB:.1f} MiB); bar {args.max_mem_ratio:g}x = {args.max_mem_ratio * fsize / MiB:.1f} MiB")
        print(f"  kernel peak RSS of the job's largest process {rss / MiB:.1f} MiB (os.wait4 on the child: its "
              f"ru_maxrss, the figure getrusage(RUSAGE_CHILDREN) gives); the child's own VmHWM "
              f"{'?' if hwm is None else f'{hwm / MiB:.1f} MiB'}; getrusage(RUSAGE_CHILDREN) now {children / MiB:.1f} MiB "
              "(the largest of every child of this process so far)")
        print(f"  process tree sampled every 10 ms ({smp['samples']} samples, up to {smp['max_processes']} "
              f"process{'es' if smp['max_processes'] != 1 else ''}): peak summed PSS {smp['peak_pss'] / MiB:.1f} MiB, "
              f"summed RSS {smp['peak_rss_sum'] / MiB:.1f} MiB; the peak above is the larger of PSS and kernel RSS")
        print(f"  child wall time {rep['seconds']:.2f} s ({fsize / MB / rep['seconds']:.1f} MB/s; interpreter start "
              "not included, imports included)")

    # -- end to end, in process ----------------------------------------------------------------------
    print(f"end to end: `{cmdline}` through gatelink.cli.main in this process, best of {args.repeat}")
    runs = []
    for i in range(args.repeat):
        r = timed_cli(path, str(out_json), extra)
        runs.append(r)
        ph = ", ".join(f"{k} {r[k]:.3f} s" for k in ("gates", "open", "scan", "json", "write") if k in r)
        print(f"run {i + 1}/{args.repeat}: {r['total']:.3f} s ({fsize / MB / r['total']:.1f} MB/s): {ph}; "
              f"{r['decoded']} instructions decoded by the scanner")
    best = min(runs, key=lambda r: r["total"])
    mbps = fsize / MB / best["total"]
    code_mbps = code / MB / best["total"]
    print(f"file: {fsize} bytes ({fsize / MB:.1f} MB, {fsize / MiB:.1f} MiB); code: {code} bytes ({code / MiB:.1f} MiB)")
    print(f"end to end (open + scan + JSON written), best of {args.repeat}: {best['total']:.2f} s = "
          f"{mbps:.1f} MB/s of file ({code_mbps:.1f} MB/s of code; MB = 10^6 bytes)")

    if mem is not None:
        same = out_child.read_bytes() == out_json.read_bytes()
        mem["cli_json_identical"] = same
        print(f"the child run's JSON is {'byte-identical to' if same else 'DIFFERENT from'} the in-process run's")

    # -- exactness ------------------------------------------------------------------------------------
    doc = json.loads(out_json.read_text())
    cmp = compare(truth, doc)
    exact = not (cmp["missed"] or cmp["extra"] or cmp["wrong"])
    print(f"sites: {cmp['found']} found, {cmp['planted']} planted; missed {len(cmp['missed'])}, "
          f"extra {len(cmp['extra'])}, wrong fields {len(cmp['wrong'])}; confidence: "
          + ", ".join(f"{k} {v}" for k, v in sorted(cmp["confidence"].items())))
    if cmp["missed"]:
        why: dict[str, int] = {}
        for w, nm in cmp["missed"]:
            k = f"{w['shape']} -> {'/'.join(sorted({n['reason'] for n in nm})) or 'nothing reported'}"
            why[k] = why.get(k, 0) + 1
        print("  missed by shape -> what gatelink reported: " + ", ".join(f"{k} {v}" for k, v in sorted(why.items())))
    for w, nm in cmp["missed"][:20]:
        said = "; ".join(f"near miss {n['reason']}: {n['detail']}" for n in nm) or "nothing at that offset"
        print(f"  missed: offset {w['file_offset']:#x} {_site(w)} ({w['label']}): gatelink reported {said}")
    for g, d in cmp["extra"][:20]:
        what = f"decoy {d['kind']} ({d['note']}, {d['label']})" if d else "nothing planted there"
        print(f"  extra: offset {g['file_offset']:#x} {_site(g)} [{g['confidence']}, {g['evidence']}]: truth: {what}")
    for w, g, diff in cmp["wrong"][:20]:
        print(f"  wrong: offset {w['file_offset']:#x} ({w['label']}): "
              + ", ".join(f"{f} planted {a!r} reported {b!r}" for f, (a, b) in diff.items()))
    print(f"decoys ({len(truth['decoys'])}; kind -> near-miss reason): "
          + ", ".join(f"{k} {v}" for k, v in sorted(cmp["decoys"].items())))
    print(f"near misses reported: {cmp['near_misses']}")

    # -- linear-sweep reference ----------------------------------------------------------------------
    sweep = None
    if not args.no_sweep:
        data = Path(path).read_bytes()
        bufs = [data[s["file_offset"] : s["file_offset"] + s["size"]] for s in truth["code_sections"]]
        del data
        times = []
        n = 0
        for _ in range(max(1, args.sweep_repeat)):
            t = time.perf_counter()
            n = sum(linear_sweep(b, 32) for b in bufs)
            times.append(time.perf_counter() - t)
        st = min(times)
        sweep = {"seconds": st, "instructions": n, "mbps": code / MB / st, "ips": n / st}
        print(f"reference: linear-sweep disassembly (gatelink.decode.linear_sweep, iced-x86) of the {code / MiB:.1f} MiB "
              f"of code: {st:.2f} s = {sweep['mbps']:.1f} MB/s of code, {n} instructions = {sweep['ips'] / 1e6:.2f} M instructions/s")
        print(f"  end to end vs sweep: {st / best['total']:.1f}x the speed of a full disassembly of the code")

    # -- bars ------------------------------------------------------------------------------------------
    ok = True
    print("bars:")
    print(f"  {'PASS' if exact else 'FAIL'}: exact results ({cmp['found']} found / {cmp['planted']} planted, "
          f"{len(cmp['missed'])} missed, {len(cmp['extra'])} extra, {len(cmp['wrong'])} wrong)")
    ok &= exact
    fast = mbps >= args.min_mbps
    print(f"  {'PASS' if fast else 'FAIL'}: throughput {mbps:.1f} MB/s of file, bar {args.min_mbps:g} MB/s")
    ok &= fast
    if mem is not None:
        small = mem["peak"] <= args.max_mem_ratio * fsize
        print(f"  {'PASS' if small else 'FAIL'}: peak memory {mem['peak'] / MiB:.1f} MiB, bar "
              f"{args.max_mem_ratio:g}x file = {args.max_mem_ratio * fsize / MiB:.1f} MiB")
        ok &= small
        if not mem["cli_json_identical"]:
            print("  FAIL: the child run's JSON differs from the in-process run's (the output is not deterministic)")
            ok = False
    print(f"  {'PASS' if meets else 'NOTE'}: corpus {code / MiB:.1f} MiB of code (bar 64), {len(truth['sites'])} stubs "
          f"(bar 4000), {len(truth['decoys'])} decoys")
    if args.results:
        args.results.write_text(json.dumps({
            "file_bytes": fsize, "code_bytes": code, "best_seconds": best["total"], "mbps_file": mbps,
            "mbps_code": code_mbps, "runs": runs, "sites_found": cmp["found"], "sites_planted": cmp["planted"],
            "missed": len(cmp["missed"]), "extra": len(cmp["extra"]), "wrong": len(cmp["wrong"]),
            "sweep": sweep, "memory": mem, "load_average": load, "corpus_build_seconds": c.build_seconds,
        }, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
