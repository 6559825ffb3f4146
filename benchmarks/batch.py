"""Batch mode: many files over a process pool, and the content-hash cache.

Bars (issue 11): 200 fixture files scanned with 2 processes at least 1.7x faster than with 1;
a second run with ``--cache`` at least 10x faster than the first.

    python benchmarks/batch.py [--files 200] [--repeat 3] [--command scan|audit] [--keep]

Each run is the real command line in a child process (``gatelink scan FILES... --format json
-o OUT``), timed wall-clock from spawn to exit, so Python's start-up, the pool, rendering and
writing are all in. The files are variants of the bundled PE, .rdv and boot-image fixtures, each
with a unique trailer (overlay, debug info, bytes after the end marker) so every one has its own
content hash and costs a full scan. Prints the load average before and after: other work on the
two cores distorts every wall-clock figure (the CPU seconds the runs used are printed too).

The second ``--cache`` run has nothing changed, so it replays the first run's output (the run
memo); a third run after changing one input shows the per-file cache alone (199 files loaded,
1 scanned, everything rendered again), for information.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
SOURCES = ["pe/stubs_asm.exe", "pe/stubs_rdos.exe", "rdv/drv16.rdv", "rdv/drv32_padded.rdv",
           "rdv/drv32_short.rdv", "boot/rdos.bin"]


def variants(folder: Path, n: int) -> list[str]:
    out = []
    for i in range(n):
        src = FIXTURES / SOURCES[i % len(SOURCES)]
        p = folder / f"{i:03d}_{src.name}"
        p.write_bytes(src.read_bytes() + b"gatelink-variant-%03d\0" % i)
        out.append(str(p))
    return out


def gatelink_exe() -> str:
    exe = Path(sys.executable).with_name("gatelink")
    return str(exe) if exe.exists() else shutil.which("gatelink") or "gatelink"


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child and its workers)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode not in (0, 1):
        sys.exit(f"{' '.join(cmd[:3])} ... failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each configuration; the fastest counts")
    ap.add_argument("--command", choices=("scan", "audit"), default="scan")
    ap.add_argument("--min-speedup", type=float, default=1.7)
    ap.add_argument("--min-cache-speedup", type=float, default=10.0)
    ap.add_argument("--keep", action="store_true", help="keep the generated files (printed)")
    args = ap.parse_args()
    gl = gatelink_exe()
    tmp = Path(tempfile.mkdtemp(prefix="gatelink-batch-"))
    try:
        (tmp / "in").mkdir()
        files = variants(tmp / "in", args.files)
        size = sum(os.path.getsize(f) for f in files)
        print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(f"inputs: {len(files)} files, {size / 1e6:.1f} MB (variants of {', '.join(SOURCES)})")
        out = tmp / "out.json"
        base = [gl, args.command, *files, "--format", "json", "-o", str(out)]
        timed(base + ["-j", "1"])  # warm the page cache and the bytecode cache
        runs: dict[str, list[tuple[float, float]]] = {"1": [], "2": []}
        outputs = {}
        for _ in range(args.repeat):
            for j in ("1", "2"):
                runs[j].append(timed(base + ["-j", j]))
                outputs[j] = out.read_bytes()
        one = min(runs["1"])
        two = min(runs["2"])
        same = outputs["1"] == outputs["2"]
        print(f"{args.command} -j 1: best {one[0]:.2f} s wall ({one[1]:.2f} s CPU); runs "
              + ", ".join(f"{w:.2f}" for w, _ in runs["1"]))
        print(f"{args.command} -j 2: best {two[0]:.2f} s wall ({two[1]:.2f} s CPU); runs "
              + ", ".join(f"{w:.2f}" for w, _ in runs["2"]))
        speedup = one[0] / two[0]
        print(f"speedup with 2 processes: {speedup:.2f}x; outputs identical: {same}")

        cold_runs, warm_runs = [], []
        for i in range(args.repeat):
            cache = tmp / f"cache{i}"
            cold_runs.append(timed(base + ["--cache", str(cache)]))
            cold_out = out.read_bytes()
            warm_runs.append(timed(base + ["--cache", str(cache)]))
            same = same and out.read_bytes() == cold_out == outputs["1"]
        cold, warm = min(cold_runs), min(warm_runs)
        # One input changed: the run is not replayed; 1 file is scanned, the rest come from the
        # per-file cache, and the whole output is rendered again.
        Path(files[0]).write_bytes(Path(files[0]).read_bytes() + b"changed\0")
        partial = timed(base + ["--cache", str(tmp / "cache0")])
        entries = sum(1 for _ in (tmp / "cache0").glob("*/*.pickle"))
        cache_bytes = sum(p.stat().st_size for p in (tmp / "cache0").glob("*/*.pickle"))
        print(f"--cache first run: best {cold[0]:.2f} s wall; second run: best {warm[0]:.2f} s wall "
              f"({warm[1]:.2f} s CPU); {entries} entries, {cache_bytes / 1e6:.1f} MB")
        cache_speedup = cold[0] / warm[0]
        print(f"cache speedup: {cache_speedup:.1f}x; outputs identical with and without the cache: {same}")
        print(f"one input changed, --cache: {partial[0]:.2f} s wall ({partial[1]:.2f} s CPU): 1 file scanned, "
              f"{len(files) - 1} from the per-file cache, the output rendered again ({cold[0] / partial[0]:.1f}x "
              "faster than the first run)")
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        ok = True
        for name, value, bar in (("2 processes vs 1", speedup, args.min_speedup),
                                 ("cached rerun vs first run", cache_speedup, args.min_cache_speedup)):
            good = value >= bar
            ok &= good
            print(f"{'PASS' if good else 'FAIL'} {name}: {value:.2f}x (bar {bar}x)")
        if not same:
            print("FAIL outputs differ between runs")
            ok = False
        results = {"files": len(files), "one": one[0], "two": two[0], "speedup": speedup, "cold": cold[0],
                   "warm": warm[0], "cache_speedup": cache_speedup, "identical": same, "load": os.getloadavg()}
        print("json: " + json.dumps(results))
        return 0 if ok else 1
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
