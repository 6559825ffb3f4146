#!/usr/bin/env python3
"""A held-out corpus of Watcom-style binaries with planted truth (issue 7).

Generates, from a seed, larger binaries of the families in ``fixtures/watcom`` (the generator is
shared: ``fixtures/watcom/wgen.py`` and ``families.py``), with every size and mix parameter drawn
from the seed, so a scanner tuned on the fixtures can be measured on binaries it has not seen:

* ``cdrv32.rdv``: a 32-bit C driver (variant ``startup`` or ``names`` by seed) whose big switch
  has a few hundred cases, most of them calling OS gates;
* ``asmdrv32.rdv``, ``asmdrv16.rdv``: assembly drivers;
* ``app.exe``: a PE application with base relocations, with functions and statements without
  stubs so there is about one stub per 600 bytes of code, as in real applications.

Each file gets a ``.truth.json`` in the fixtures' format (fixtures/README.md, section Watcom),
checked the same way as the fixtures (capstone decode, decoy kinds, stub-like byte audit,
staged reach walk). ``corpus.json`` lists the parameters drawn and the figures.

    python benchmarks/watcom_corpus.py [--seed 1] [--scale 1] [--out benchmarks/out/watcom]
                                       [--families cdrv,asm32,asm16,pe] [--jobs N]

Needs nasm, binutils-mingw-w64-i686 and capstone (the fixtures' toolchain); never imports gatelink.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WATCOM = ROOT / "fixtures" / "watcom"
sys.path.insert(0, str(WATCOM))
sys.path.insert(1, str(ROOT / "fixtures"))

from families import Params  # noqa: E402
from fixturelib import BuildError, missing_tools, work_dir  # noqa: E402

FAMILIES = ("cdrv", "asm32", "asm16", "pe")


def _builders():
    spec = importlib.util.spec_from_file_location("watcom_build", WATCOM / "build.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def draw(family: str, seed: int, scale: float) -> tuple[dict, Params]:
    """The parameters of one binary, from the seed (different seeds: different binaries)."""
    rng = random.Random(f"watcom-corpus:{seed}:{family}")
    u = rng.uniform
    p = Params(two_site_share=u(0.05, 0.35), plain_case_share=u(0.1, 0.4), chk_share=u(0.75, 0.99),
               small_switch=rng.choice([24, 32, 40, 48, 64]), big_extra=rng.randrange(20, 121),
               handler_share=u(1 / 24, 1 / 10), dead_share=u(1 / 60, 1 / 20))
    info: dict = {"gen_seed": rng.randrange(1, 1 << 30)}
    if family == "cdrv":
        p.rounds = max(1, round(3 * scale * u(0.8, 1.25)))
        p.bulk = u(0.0, 1.5)
        info["variant"] = rng.choice(["startup", "names"])
        info["padded"] = rng.random() < 0.5
    elif family == "asm32":
        p.rounds = max(1, round(2 * scale * u(0.7, 1.3)))
        p.bulk = u(0.0, 1.5)
    elif family == "asm16":
        p.rounds = max(1, min(4, round(2 * scale * u(0.7, 1.3))))  # 16-bit code stays below 64 KiB
        p.bulk = u(0.0, 1.0)
    else:
        p.rounds = max(1, round(5 * scale * u(0.7, 1.3)))
        p.modules = rng.randrange(1, 5)
        p.plain_funcs = u(2.0, 3.0)
        p.plain_len = rng.randrange(10, 19)
        p.pe_dead = u(1.0, 2.5)
        p.plain_switch = u(0.03, 0.12)
        p.bulk = u(1.0, 3.0)
        p.chk_share = u(0.85, 0.99)
        p.overlap = rng.random() < 0.7
        p.biased = rng.random() < 0.5
        p.push_edx = u(0.0, 0.2)
    info["params"] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in vars(p).items()}
    return info, p


def build_one(family: str, seed: int, scale: float, out: str) -> dict:
    b = _builders()
    info, p = draw(family, seed, scale)
    t0 = time.monotonic()
    dest = Path(out)
    with work_dir(f"watcom-corpus-{family}") as work:
        if family == "cdrv":
            name = "cdrv32.rdv"
            b.build_cdriver(work, dest, name, info["gen_seed"], info["variant"], info["padded"], p)
        elif family == "asm32":
            name = "asmdrv32.rdv"
            b.build_asm(work, dest, name, info["gen_seed"], 32, p)
        elif family == "asm16":
            name = "asmdrv16.rdv"
            b.build_asm(work, dest, name, info["gen_seed"], 16, p)
        else:
            name = "app.exe"
            b.build_pe(work, dest, name, info["gen_seed"], p)
    t = json.loads((dest / f"{name}.truth.json").read_text())
    code = t["code"]["size"]
    info.update({"family": family, "file": name, "seconds": round(time.monotonic() - t0, 1),
                 "file_bytes": (dest / name).stat().st_size, "code_bytes": code, "sites": len(t["sites"]),
                 "decoys": len(t["decoys"]), "functions": len(t["functions"]), "jump_tables": len(t["jump_tables"]),
                 "reached_by": t["reached_by"], "code_bytes_per_stub": round(code / max(1, len(t["sites"])), 1)})
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=1, help="corpus seed (default 1)")
    ap.add_argument("--scale", type=float, default=1.0, help="size factor (default 1: about 0.5 MiB of code in all)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "watcom"),
                    help="output folder; files go to OUT/seed<SEED>/ (default benchmarks/out/watcom)")
    ap.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated subset of {','.join(FAMILIES)}")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="binaries built in parallel (default: CPUs)")
    a = ap.parse_args(argv)
    fams = [f for f in a.families.split(",") if f]
    bad = [f for f in fams if f not in FAMILIES]
    if bad or not fams:
        print(f"watcom_corpus: unknown families {bad} (known: {', '.join(FAMILIES)})", file=sys.stderr)
        return 2
    if a.scale <= 0:
        print("watcom_corpus: --scale must be positive", file=sys.stderr)
        return 2
    missing = [t for t in missing_tools() if t != "i686-w64-mingw32-gcc"]
    if missing:
        print(f"watcom_corpus: missing {', '.join(missing)} (Debian: nasm binutils-mingw-w64-i686)", file=sys.stderr)
        return 2
    out = Path(a.out).resolve() / f"seed{a.seed}"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    try:
        with ProcessPoolExecutor(max_workers=max(1, min(a.jobs, len(fams)))) as ex:
            results = list(ex.map(build_one, fams, [a.seed] * len(fams), [a.scale] * len(fams), [str(out)] * len(fams)))
    except (BuildError, ValueError) as e:
        print(f"watcom_corpus: seed {a.seed}: {e}", file=sys.stderr)
        return 1
    summary = {"seed": a.seed, "scale": a.scale, "binaries": results}
    (out / "corpus.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    print(f"watcom corpus seed {a.seed}, scale {a.scale:g}: {out}")
    print(f"{'file':<14}{'bytes':>10}{'code':>10}{'sites':>7}{'B/stub':>8}{'decoys':>8}{'funcs':>7}{'tables':>7}"
          f"{'build s':>9}  reached_by")
    for r in results:
        reach = ", ".join(f"{k} {v}" for k, v in r["reached_by"].items())
        print(f"{r['file']:<14}{r['file_bytes']:>10}{r['code_bytes']:>10}{r['sites']:>7}{r['code_bytes_per_stub']:>8}"
              f"{r['decoys']:>8}{r['functions']:>7}{r['jump_tables']:>7}{r['seconds']:>9}  {reach}")
    total = sum(r["code_bytes"] for r in results)
    print(f"total code {total} bytes ({total / 2**20:.2f} MiB), {sum(r['sites'] for r in results)} sites, "
          f"{time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
