"""Start-up cost in a build: a no-op make over 100 binaries, and what a gatelink call costs next
to Python's own start-up.

Bar (issue 11): a ``gatelink table --check`` that finds its table current is dominated by
Python's start-up: the CLI imports only what the command needs. Printed: the share of a
``--check`` call that is a bare ``python -c pass``; PASS when it is at least half.

    python benchmarks/startup.py [--binaries 100] [--repeat 3] [--python PY] [--keep]

Builds ``--binaries`` binaries (variants of the bundled .rdv and PE fixtures, each with a unique
trailer) with the Makefile of docs/make.md: padded binaries and their tables are made in this
process through the CLI entry point (the build cost is not the point), then ``make -q tables``
must agree that nothing is left to do. Then it times, best of ``--repeat``:

1. ``make tables`` with nothing to do (no Python at all);
2. ``make check-tables``: one ``gatelink table --check`` process for every binary;
3. one ``gatelink table --check BIN`` process per binary, in sequence (what a Makefile calling
   gatelink per binary pays);
4. as many bare ``python -c pass``, ``python -c "import gatelink.cli"`` and ``gatelink
   --version`` runs, for the breakdown: interpreter, CLI entry module, the check's own work
   (a current table is answered by the quick path of ``gatelink.cli.quick`` from its stamp,
   before typer loads; ``--version`` shows what the full command line costs).

``--python PY`` times the calls with another interpreter (another venv, say one with other
versions of the dependencies), with this checkout on its ``PYTHONPATH``; gatelink is run the way
its console script runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
SOURCES = [("rdv", FIXTURES / "rdv" / "drv32_padded.rdv"), ("rdv", FIXTURES / "rdv" / "drv16.rdv"),
           ("exe", FIXTURES / "pe" / "stubs_rdos.exe")]


def makefile() -> str:
    blocks = re.findall(r"```make\n(.*?)```", (ROOT / "docs" / "make.md").read_text(), re.DOTALL)
    assert len(blocks) == 1
    return blocks[0]


def run_each(cmds: list[list[str]], cwd: Path) -> float:
    """Wall seconds to run the commands one after another."""
    t = time.perf_counter()
    for c in cmds:
        r = subprocess.run(c, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            sys.exit(f"{' '.join(c)} failed ({r.returncode}): {r.stderr.strip()[-400:]}")
    return time.perf_counter() - t


def best(repeat: int, f) -> float:  # type: ignore[no-untyped-def]
    return min(f() for _ in range(repeat))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binaries", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--python", help="interpreter to time the calls with (default: this one)")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    make = shutil.which("make")
    if make is None:
        sys.exit("GNU make is needed")
    py = args.python or sys.executable
    from gatelink.cli import main as gatelink

    tmp = Path(tempfile.mkdtemp(prefix="gatelink-startup-"))
    try:
        # gatelink as its console script runs it: the interpreter, then gatelink.cli.main.
        gl = str(tmp / "gatelink")
        Path(gl).write_text(f"#!{py}\nimport sys\nfrom gatelink.cli import main\nsys.exit(main())\n")
        os.chmod(gl, 0o755)
        os.environ["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
        typer_version = subprocess.run([py, "-c", "import importlib.metadata as m; print(m.version('typer'))"],
                                       capture_output=True, text=True).stdout.strip()
        (tmp / "Makefile").write_text(makefile())
        binaries = []
        for i in range(args.binaries):
            ext, src = SOURCES[i % len(SOURCES)]
            (tmp / f"b{i:03d}.linked.{ext}").write_bytes(src.read_bytes() + b"variant %03d\0" % i)
            binaries.append(f"b{i:03d}.{ext}")
        mvars = [f"GATELINK={gl}", f"BINARIES={' '.join(binaries)}"]
        t = time.perf_counter()
        subprocess.run([make, "-q", "tables", *mvars], cwd=tmp, capture_output=True)  # writes gatelink.opts
        opts = (tmp / "gatelink.opts").read_text().split()
        cwd = os.getcwd()
        os.chdir(tmp)
        quiet = contextlib.redirect_stderr(io.StringIO())  # per-file warnings of the build
        try:
            quiet.__enter__()
            for b in binaries:
                stem, ext = b.rsplit(".", 1)
                for argv in (["pad", f"{stem}.linked.{ext}", *opts, "-o", b, "--report", f"{b}.pad.txt"],
                             ["table", b, *opts]):
                    code = gatelink(argv)
                    if code != 0:
                        sys.exit(f"gatelink {' '.join(argv)}: exit {code}")
        finally:
            quiet.__exit__(None, None, None)
            os.chdir(cwd)
        build = time.perf_counter() - t
        q = subprocess.run([make, "-q", "tables", *mvars], cwd=tmp)
        if q.returncode != 0:
            sys.exit("make -q tables: the tree is not up to date after the build")
        n = len(binaries)
        print(f"interpreter: {py} (typer {typer_version})")
        print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, GNU make "
              f"{subprocess.run([make, '--version'], capture_output=True, text=True).stdout.split()[2]}, load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(f"tree: {n} binaries padded and tabled in {build:.1f} s (in one process)")

        noop = best(args.repeat, lambda: run_each([[make, "tables", *mvars]], tmp))
        check_all = best(args.repeat, lambda: run_each([[make, "check-tables", *mvars]], tmp))
        per_check = best(args.repeat, lambda: run_each([[gl, "table", "--check", *opts, b] for b in binaries], tmp)) / n
        bare = best(args.repeat, lambda: run_each([[py, "-c", "pass"]] * n, tmp)) / n
        imp = best(args.repeat, lambda: run_each([[py, "-c", "import gatelink.cli"]] * n, tmp)) / n
        version = best(args.repeat, lambda: run_each([[gl, "--version"]] * n, tmp)) / n
        print(f"no-op make tables over {n} binaries: {noop * 1000:.0f} ms (no gatelink process)")
        print(f"make check-tables ({n} binaries, one gatelink process): {check_all * 1000:.0f} ms")
        print(f"gatelink table --check, one process per binary: {per_check * 1000:.1f} ms per binary, "
              f"{per_check * n:.2f} s for {n}")
        print(f"  python -c pass:              {bare * 1000:6.1f} ms")
        print(f"  python -c 'import gatelink.cli': {imp * 1000:6.1f} ms (+{(imp - bare) * 1000:.1f} CLI imports)")
        print(f"  gatelink --version:          {version * 1000:6.1f} ms (the full command line: typer, rich)")
        print(f"  gatelink table --check:      {per_check * 1000:6.1f} ms (+{(per_check - imp) * 1000:.1f} over "
              "importing gatelink.cli: the quick path reads the binary and table and hashes them)")
        share = bare / per_check
        print(f"Python's own start-up is {share:.0%} of a --check call")
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        ok = share >= 0.5
        print(f"{'PASS' if ok else 'FAIL'} a current --check is dominated by Python's start-up (share {share:.0%}, "
              "bar 50%)")
        return 0 if ok else 1
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
