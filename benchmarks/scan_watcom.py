#!/usr/bin/env python3
"""Scanning Watcom-style binaries: exactness and cost per site (issue 7).

Real Open Watcom output is dense (a stub every 600 bytes of application code, every 50 bytes
of driver code). This benchmark scans the Watcom-style fixtures (``fixtures/watcom``) and a
held-out corpus generated from seeds the scanner was never tuned on
(``benchmarks/watcom_corpus.py``), in process, and prints per binary and in total:

* exactness against the planted truth: sites found, missed, extra (a false site fails);
* confidence against how each site is really reached (``reached_by`` in the truth): a site in
  code only a heuristic reaches must not be ``certain``;
* time per site (open + scan, best of ``--repeat`` runs, gate database loaded once) and MB/s
  of code.

    python benchmarks/scan_watcom.py [--seeds 101,102,103] [--scale 1] [--repeat 3]
                                     [--max-us 100] [--src DIR] [--no-fixtures] [--json FILE]

``--src DIR`` imports gatelink from another source tree (e.g. a ``git worktree`` of an older
commit) to print the "before" figure with the same inputs. Exit status: 1 when a result is not
exact or the total exceeds ``--max-us`` microseconds per site, else 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out" / "watcom"
# Sites reached only by heuristics in a correct disassembly: never `certain`.
HEURISTIC_REACH = {"unreferenced"}


def corpus_files(seeds: list[int], scale: float, jobs: int) -> list[Path]:
    files: list[Path] = []
    for seed in seeds:
        folder = OUT / f"seed{seed}"
        have = sorted(folder.glob("*.truth.json")) if folder.is_dir() else []
        if len(have) < 4:
            print(f"building held-out corpus seed {seed} (benchmarks/watcom_corpus.py) ...", flush=True)
            subprocess.run([sys.executable, str(ROOT / "benchmarks" / "watcom_corpus.py"), "--seed", str(seed),
                            "--scale", str(scale), "--jobs", str(jobs)], check=True, stdout=subprocess.DEVNULL)
            have = sorted(folder.glob("*.truth.json"))
        files += [Path(str(t)[: -len(".truth.json")]) for t in have]
    return files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="101,102,103", help="held-out corpus seeds (default 101,102,103)")
    ap.add_argument("--scale", type=float, default=1.0, help="corpus size factor (default 1)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per binary; the fastest counts (default 3)")
    ap.add_argument("--max-us", type=float, default=100.0, help="bar: microseconds per site in total (default 100)")
    ap.add_argument("--src", type=Path, default=None, help="import gatelink from this source tree instead")
    ap.add_argument("--no-fixtures", action="store_true", help="skip fixtures/watcom (held-out corpus only)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel builds for the corpus")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    if args.src is not None:
        sys.path.insert(0, str(args.src.resolve()))
    import gatelink
    from gatelink.gates import bundled

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    files = corpus_files(seeds, args.scale, args.jobs)
    if not args.no_fixtures:
        files = sorted((ROOT / "fixtures" / "watcom").glob("*.rdv")) + sorted((ROOT / "fixtures" / "watcom").glob("*.exe")) \
            + sorted((ROOT / "fixtures" / "watcom").glob("*.bin")) + files
    db = bundled()
    print(f"gatelink {gatelink.__version__} from {Path(gatelink.__file__).parent}")
    print(f"machine: {os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    head = f"{'binary':<44} {'code':>8} {'sites':>6} {'B/site':>7} {'found':>6} {'miss':>5} {'extra':>5} " \
           f"{'ms':>8} {'us/site':>8} {'MB/s':>6}  confidence by reach"
    print(head)
    print("-" * len(head))
    tot = Counter()
    rows = []
    exact = True
    honest = True
    for path in files:
        truth = json.loads(Path(str(path) + ".truth.json").read_text())
        want = {s["file_offset"]: s for s in truth["sites"]}
        best = None
        res = None
        for _ in range(max(1, args.repeat)):
            t0 = time.perf_counter()
            img = gatelink.open_image(path)
            res = gatelink.scan(img, db, jobs=1)
            dt = time.perf_counter() - t0
            best = dt if best is None else min(best, dt)
        assert res is not None and best is not None
        code = sum(r.size for r in res.image.code_regions)
        got = {s.file_offset: s for s in res.sites}
        miss = sum(1 for o in want if o not in got)
        extra = sum(1 for o in got if o not in want)
        exact &= miss == 0 and extra == 0
        by = Counter((want[o].get("reached_by", "?"), got[o].confidence) for o in want if o in got)
        bad_conf = sum(n for (reach, conf), n in by.items() if reach in HEURISTIC_REACH and conf == "certain")
        honest &= bad_conf == 0
        conf = ", ".join(f"{reach}:{conf} {n}" for (reach, conf), n in sorted(by.items()))
        name = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
        sites = len(want)
        print(f"{name:<44} {code:>8} {sites:>6} {code / max(1, sites):>7.0f} {len(got) - extra:>6} {miss:>5} {extra:>5} "
              f"{best * 1e3:>8.1f} {best * 1e6 / max(1, sites):>8.1f} {code / best / 1e6:>6.2f}  {conf}")
        rows.append({"binary": name, "code_bytes": code, "sites": sites, "found": len(got) - extra, "missed": miss,
                     "extra": extra, "seconds": best, "us_per_site": best * 1e6 / max(1, sites),
                     "certain_in_heuristic_code": bad_conf})
        tot["code"] += code
        tot["sites"] += sites
        tot["found"] += len(got) - extra
        tot["miss"] += miss
        tot["extra"] += extra
        tot["us"] += best * 1e6
    us_site = tot["us"] / max(1, tot["sites"])
    print("-" * len(head))
    print(f"{'total':<44} {tot['code']:>8} {tot['sites']:>6} {tot['code'] / max(1, tot['sites']):>7.0f} "
          f"{tot['found']:>6} {tot['miss']:>5} {tot['extra']:>5} {tot['us'] / 1e3:>8.1f} {us_site:>8.1f} "
          f"{tot['code'] / (tot['us'] / 1e6) / 1e6:>6.2f}")
    print(f"\nexact: {'yes' if exact else 'NO'}; no certain site in code only heuristics reach: {'yes' if honest else 'NO'}; "
          f"{us_site:.1f} us per site (bar {args.max_us:g})")
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": rows, "us_per_site": us_site, "exact": exact, "honest": honest},
                                        indent=1) + "\n")
    return 0 if exact and honest and us_site <= args.max_us else 1


if __name__ == "__main__":
    sys.exit(main())
