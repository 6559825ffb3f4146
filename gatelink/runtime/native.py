"""The C reference runtime's sources (``gatelink/runtime/c``) and how to build them: used by
``gatelink harness``, the differential tests and ``benchmarks/silicon.py`` (``docs/runtime-c.md``).

The C runtime takes its gate targets from an OS hook; :func:`targets_text` writes what a Python
:class:`~.registry.Registry` resolves for every gate of a table in the form the hosted test driver
(``gltab_test.c``) reads, so both runtimes patch with the same targets.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from ..errors import GatelinkError
from ..table.model import PatchTable
from .registry import Registry, Target

C_DIR = Path(__file__).resolve().parent / "c"
CORE_SOURCES = ("gltab.c",)
HEADERS = ("gltab.h", "gl_arch.h")
# The flags every build uses; the core must also build with -ffreestanding.
WARN = ("-O2", "-Wall", "-Wextra", "-Werror", "-std=c99")
FORM_CODES = {"far": 0, "undefined": 0, "callgate": 1, "near": 2, "pushcs": 3}
KIND_CODES = {None: 0, "os": 1, "user": 2, "server": 3}


class BuildError(GatelinkError):
    """The C compiler is missing or cannot build for the requested target (exit 2: the
    environment cannot run the command as asked)."""

    exit_code = 2


def c_source(name: str) -> Path:
    """Path of one of the shipped C sources."""
    p = C_DIR / name
    if not p.is_file():
        raise BuildError(f"C source {name} is missing from the installed package ({C_DIR})")
    return p


def compiler() -> str:
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not cc:
        raise BuildError("no C compiler found (install gcc; for the harness also gcc-multilib)")
    return cc


def compile_c(out: Path, sources: Sequence[str | Path], flags: Sequence[str] = (), link: Sequence[str] = (),
              m32: bool = False, object_only: bool = False) -> Path:
    """Compile ``sources`` (names in :data:`C_DIR` or paths) with :data:`WARN` + ``flags`` into
    ``out``; raises :class:`BuildError` with the compiler's first lines on failure."""
    cc = compiler()
    srcs = [str(s if isinstance(s, Path) else c_source(s)) for s in sources]
    cmd = [cc, *WARN, *(["-m32"] if m32 else []), *flags, "-I", str(C_DIR)]
    cmd += ["-c", *srcs, "-o", str(out)] if object_only else [*srcs, "-o", str(out), *link]
    try:
        r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BuildError(f"cannot run the C compiler {cc}: {e}") from None
    if r.returncode != 0:
        lines = (r.stderr or r.stdout).strip().splitlines()
        hint = ""
        if m32 and any("crt" in ln or "incompatible" in ln or "bits/" in ln or "gnu/stubs-32" in ln for ln in lines):
            hint = " (gcc -m32 cannot build: install gcc-multilib)"
        raise BuildError(f"C build failed{hint}: {' '.join(cmd[:3])} ...: " + " | ".join(lines[:6]))
    return out


def probe_m32(work: Path) -> tuple[str, str] | None:
    """None when ``gcc -m32`` builds a program here and the kernel runs it; else ("build", why)
    or ("run", why)."""
    work.mkdir(parents=True, exist_ok=True)
    src = work / "probe32.c"
    src.write_text("int main(void) { return sizeof(void *) == 4 ? 0 : 1; }\n")
    try:
        exe = compile_c(work / "probe32", [src], m32=True)
    except BuildError as e:
        return "build", str(e)
    try:
        r = subprocess.run([str(exe)], check=False, capture_output=True, timeout=30)
    except OSError as e:
        return "run", f"the kernel cannot run a 32-bit program: {e}"
    if r.returncode != 0:
        return "run", "the kernel cannot run a 32-bit program (IA32 emulation disabled?)"
    return None


def can_build_m32(work: Path) -> str | None:
    """None when ``gcc -m32`` builds and runs a program here, else why not."""
    got = probe_m32(work)
    return None if got is None else got[1]


def _target_line(kind: int, gate: int, fb: int, t: Target | None) -> str:
    if t is None:
        return f"{kind} {gate} {fb} 255 0 0 0"
    form = FORM_CODES[t.form]
    return f"{kind} {gate} {fb} {form} {t.selector or 0} {t.offset or 0} {t.target or 0}"


def targets_text(table: PatchTable, registry: Registry) -> str:
    """For every (gate kind, gate) of ``table``'s sites: the registry's target (fallback 0) and
    the kind's fallback (fallback 1), one line each, sorted, for ``gltab_test``'s resolver."""
    keys = sorted({(KIND_CODES[s.gate_kind], s.gate, s.gate_kind) for s in table.sites})
    lines = []
    for kc, gate, kind in keys:
        for fb, resolve in ((0, registry.resolve), (1, registry.resolve_fallback)):
            try:
                t = resolve(kind, gate)
            except GatelinkError:  # a stride past the field's range: no target (Python refuses it)
                t = None
            lines.append(_target_line(kc, gate, fb, t))
    return "\n".join(lines) + "\n"


__all__ = [
    "CORE_SOURCES",
    "C_DIR",
    "HEADERS",
    "WARN",
    "BuildError",
    "c_source",
    "can_build_m32",
    "compile_c",
    "compiler",
    "targets_text",
]
