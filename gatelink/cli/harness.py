"""``gatelink harness``: gatelink's tables on real x86 cores (docs/runtime-c.md, "The Linux harness")."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from .common import app


@app.command("harness")
def harness_cmd(
    calls: Annotated[int, typer.Option("--calls", help="Site calls to make in all (rounded up to whole rounds: every thread calls every site once per round).")] = 100_000,
    threads: Annotated[int, typer.Option("--threads", help="Worker threads (0: one per core).")] = 0,
    mode: Annotated[str, typer.Option("--mode", help="lazy (patched on first fault), upfront (whole table applied before each round) or mixed (a random half up front).")] = "lazy",
    model: Annotated[str, typer.Option("--model", "-m", help="Fetch model the table's plans are proven under, CHUNK,ORDER.")] = "8,arbitrary",
    negative_control: Annotated[bool, typer.Option("--negative-control", help="Give some sites a plan the checker rejects and report what the silicon does with it (exit 0 whatever it shows).")] = False,
    negative_plan: Annotated[str, typer.Option("--negative-plan", help="The rejected plan: wrong-order (selector stored before the offset) or thread (the forum thread's sequence where a chunk boundary splits it).")] = "wrong-order",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the call orders, flags and register values.")] = 1,
    timeout: Annotated[float, typer.Option("--timeout", help="Watchdog: seconds before a run counts as hung (0: from --calls).")] = 0.0,
    no_membarrier: Annotated[bool, typer.Option("--no-membarrier", help="Sync steps by the signal handshake even where membarrier SYNC_CORE exists.")] = False,
    retire_membarrier: Annotated[bool, typer.Option("--retire-membarrier", help="Unsound on purpose (a demonstration, exit 0 whatever it shows): the retire sync by membarrier alone, which a thread can acknowledge before it has read the site's state.")] = False,
    keep: Annotated[Path | None, typer.Option("--keep", help="Build and keep the images, tables, manifest and binary in this folder.")] = None,
) -> None:
    """Build images with stubs of every shape at every alignment mod 64 (16-bit shapes in an LDT
    code segment), table them with gatelink, compile the C runtime's harness with gcc -m32 and run
    it: threads call the sites while they are patched; every call is checked. Exit 0 no violation,
    1 violations, crash or hang, 2 usage or no gcc -m32, 3 the kernel refuses (32-bit processes,
    modify_ldt)."""
    from ..runtime.harness import HarnessConfig, load_average, run_harness

    cfg = HarnessConfig(calls=calls, threads=threads, mode=mode, model=model,
                        negative=negative_plan if negative_control else None, seed=seed, timeout=timeout,
                        work=keep, membarrier=not no_membarrier, retire_membarrier=retire_membarrier)
    res = run_harness(cfg)
    sys.stdout.write(res.report(cfg, load_average()) + "\n")
    sys.stdout.flush()
    if negative_control or retire_membarrier:
        raise typer.Exit(0)
    if res.total_violations or res.ended != "completed":
        raise typer.Exit(1)
