"""Benchmark: the full verify matrix (issue bar: 60 s or less on a 2-core machine).

Every shape (A..I and the legacy forms) x alignments 0..63 x the five standard fetch models x
every builder (rdos, thread, int3-sync, single-store, synthesis), each plan proven by the
checker. Prints the wall time, the number of instruction fetches (views) the checker explored,
and how many plans, classes and checks that took.

    python benchmarks/verify_matrix.py [--jobs N] [--max-seconds 60]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gatelink.plan.matrix import run_matrix  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes (default: CPUs)")
    ap.add_argument("--max-seconds", type=float, default=60.0, help="fail (exit 1) above this wall time")
    args = ap.parse_args()
    t0 = time.perf_counter()
    res = run_matrix(jobs=args.jobs)
    dt = time.perf_counter() - t0
    safe = sum(1 for c in res.cells if c.safe)
    applicable = sum(1 for c in res.cells if c.applicable)
    print(f"verify matrix: {len(res.cells)} plans ({applicable} applicable, {safe} safe), "
          f"{res.classes} alignment classes, {res.checks} checks")
    print(f"time: {dt:.1f} s with {args.jobs} worker(s) on {os.cpu_count()} CPUs")
    print(f"executions explored: {res.explored} instruction fetches")
    if dt > args.max_seconds:
        print(f"FAIL: over {args.max_seconds:.0f} s")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
