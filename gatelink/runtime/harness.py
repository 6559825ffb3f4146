"""The SMP stress harness: gatelink's own tables executed by the C runtime on real x86 cores, in
a 32-bit Linux process that plays RDOS (``docs/runtime-c.md``, "The Linux harness").

:func:`build_images` writes two raw images holding stubs of every shape that can take a call at
every alignment mod 64 (32-bit code, and 16-bit code for the 16-bit shapes), scans them with
gatelink and tables them with gatelink's builder and writer, with the selector domain the
process uses (``0x23``, Linux's 32-bit user code selector). :func:`run_harness` compiles
``gl_harness.c`` with ``gcc -m32`` and runs it: worker threads call the sites in random orders
while they are patched lazily by whichever thread faults first, round after round of re-armed
sites, and every call is checked (target, return address, flags, registers, stack). The result
is a :class:`HarnessResult`; nothing about the plans is written in C.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..catalog import shape as shape_by_id
from ..catalog import stub_bytes
from ..errors import GatelinkError, UsageError
from ..plan.model import (
    LINE,
    RDOS_POLICY,
    Domain,
    FetchModel,
    Plan,
    Policy,
    Write,
    is_var,
    var_field,
    var_index,
)
from ..table.model import FLAG_NEEDS_SYNC, PatchTable, PlanStep, PlanTemplate
from .native import BuildError, compile_c, probe_m32

BASE32 = 0x20000000  # where the 32-bit image is tabled and mapped (flat: code address = linear)
MAP16 = 0x21000000  # where the 16-bit image is mapped: the base of its LDT code segment
USER_CS = 0x23  # Linux's 32-bit user code selector: every far target is 0x23:thunk
# The shapes the harness runs: every shape that can take a call in that code (the 16-bit UD2
# stubs have room for neither a far call nor a near call into the flat code).
SHAPES32 = ("A", "C", "F", "G", "H", "I", "L7", "L7P", "U5", "U7")
SHAPES16 = ("B", "D", "E", "L8", "L8P")
MODES = ("lazy", "upfront", "mixed")
NEGATIVE_PLANS = ("wrong-order", "thread")
VIOLATION_KINDS = ("wrong_target", "wrong_return", "flags", "registers", "stack", "missed_call", "double_call",
                   "crash", "hang")
EXIT_REFUSED = 3  # the kernel refused a 32-bit process, modify_ldt or a fixed mapping


class HarnessRefused(GatelinkError):
    """The machine cannot run the harness: the kernel refuses 32-bit processes, modify_ldt or
    the mappings (exit 3)."""

    exit_code = EXIT_REFUSED


def sel_domain() -> dict[str, Domain]:
    """The operand domains the harness's tables are proven for: far calls to 0x23 only."""
    return {"sel": Domain(2, frozenset({USER_CS}), f"{USER_CS:#x} (Linux i386 user code)")}


@dataclass
class Planted:
    bits: int
    shape: str
    address: int  # code address (32-bit: linear; 16-bit: offset in the segment)
    gate: int


@dataclass
class HarnessImage:
    bits: int
    data: bytes
    base: int  # the address the table's region has (32-bit: BASE32; 16-bit: 0)
    planted: list[Planted]
    table: PatchTable
    negative: int = 0  # sites given a plan the checker rejects (negative control)


def _layout(bits: int, shapes: tuple[str, ...], first_gate: int) -> tuple[bytes, list[Planted]]:
    """Directory of near calls to every block (so the scanner proves each entry), then the
    blocks: stub, return (32-bit: ret; 16-bit: o32 retf, as a far caller enters it), INT3 fill.
    An odd stride puts 64 consecutive stubs of a shape at the 64 alignments mod 64."""
    blocks: list[tuple[str, int]] = []
    call_len = 5 if bits == 32 else 3
    ret = b"\xc3" if bits == 32 else b"\x66\xcb"
    n = len(shapes) * 64
    start = (call_len * n + 1 + LINE - 1) // LINE * LINE + LINE
    cursor = start
    for sh in shapes:
        ln = shape_by_id(sh).length + len(ret)
        stride = ln + 1 if ln % 2 == 0 else ln
        stride += 2  # INT3 bytes between blocks: running off a block traps
        for _ in range(64):
            blocks.append((sh, cursor))
            cursor += stride
    size = (cursor + LINE - 1) // LINE * LINE + LINE
    buf = bytearray(b"\xcc" * size)
    planted = []
    base = BASE32 if bits == 32 else 0
    for k, (sh, off) in enumerate(blocks):
        shp = shape_by_id(sh)
        gate = first_gate + k
        stub = stub_bytes(shp, gate)
        buf[off : off + len(stub)] = stub
        buf[off + len(stub) : off + len(stub) + len(ret)] = ret
        planted.append(Planted(bits, sh, base + off, gate))
        at = k * call_len
        rel = off - (at + call_len)
        buf[at] = 0xE8
        buf[at + 1 : at + call_len] = rel.to_bytes(call_len - 1, "little", signed=True)
    buf[n * call_len] = 0xC3
    return bytes(buf), planted


def build_images(work: Path, model: FetchModel, negative: str | None = None,
                 policy: Policy = RDOS_POLICY) -> list[HarnessImage]:
    """Write, scan and table the harness's images into ``work``; returns them. With
    ``negative``, the far plan of some 32-bit sites is replaced by one the checker rejects
    (:func:`_negative_plan`), written into the table by gatelink's writer."""
    from .. import open_image, scan
    from ..formats import RawOptions
    from ..table.binary import write_table

    out = []
    for bits, shapes, gate0 in ((32, SHAPES32, 1), (16, SHAPES16, 2001)):
        data, planted = _layout(bits, shapes, gate0)
        base = BASE32 if bits == 32 else 0
        path = work / f"code{bits}.bin"
        path.write_bytes(data)
        res = scan(open_image(path, raw=RawOptions(bits, base)), jobs=1)
        found = {(s.address, s.shape) for s in res.sites}
        want = {(p.address, p.shape) for p in planted}
        if found != want:
            missing = sorted(want - found)[:3]
            extra = sorted(found - want)[:3]
            raise GatelinkError(f"the scanner did not find exactly the planted stubs in {path}: missing {missing}, "
                                f"extra {extra}")
        table = _table(res, model, policy)
        replaced = 0
        if negative is not None and bits == 32:
            table, replaced = _with_negative_plans(table, negative, model, policy)
        (work / f"code{bits}.gltab").write_bytes(write_table(table))
        out.append(HarnessImage(bits, data, base, planted, table, replaced))
    return out


def _table(res: object, model: FetchModel, policy: Policy) -> PatchTable:
    """The table of a harness image: forms far (proven for the selector 0x23) and near (for the
    5-byte UD2 stubs, which cannot take a far call). ``build_table`` applies one set of domains
    to every form, and the near form proven for a non-default domain is synthesised (minutes)
    although it has no selector at all; so the two forms are built separately, each with its own
    domains, and put side by side, as a table built with per-form domains would hold them."""
    from ..table.build import build_table

    far = build_table(res, model, ("far",), "all", policy, sel_domain())  # type: ignore[arg-type]
    near = build_table(res, model, ("near",), "all", policy)  # type: ignore[arg-type]
    n = len(far.plans)
    sites = []
    for a, b in zip(far.sites, near.sites):
        assert (a.region, a.address) == (b.region, b.address)
        sites.append(dataclasses.replace(a, plans=(a.plans[0], None if b.plans[0] is None else n + b.plans[0]),
                                         flags=a.flags | (b.flags & FLAG_NEEDS_SYNC)))
    fd = {"far": far.form_domains["far"], "near": near.form_domains["near"]}
    return dataclasses.replace(far, forms=("far", "near"), sites=sites, plans=far.plans + near.plans,
                               form_domains=fd)


def _negative_plan(shape: str, address: int, bits: int, kind: str, model: FetchModel,
                   policy: Policy) -> tuple[tuple, tuple[PlanStep, ...]] | None:
    """A far plan for one site that the checker rejects, or None where there is none of
    ``kind``: ``wrong-order`` stores the enabling selector first, then the offset (a fetch in
    between calls 0x23:gate); ``thread`` is gatelink's ``thread`` builder (the forum thread's
    sequence), kept only where the checker rejects it (a chunk boundary splits the operands)."""
    from ..plan.builders import BUILDERS
    from ..plan.checker import Checker
    from ..plan.forms import make_site

    site = make_site(shape, "far", address, bits, domains=sel_domain())
    if kind == "thread":
        built = BUILDERS["thread"](site, model)
        if built is None:
            return None
        site, plan = built.site, built.plan
    else:
        shp = shape_by_id(shape)
        if shp.sel_at is None:
            return None
        final = site.final
        sel_at = next(i for i, a in enumerate(final) if is_var(a) and var_field(a) == "sel" and var_index(a) == 0)
        off_at = next(i for i, a in enumerate(final) if is_var(a) and var_field(a) == "off" and var_index(a) == 0)
        state = list(site.original)
        steps: list = []
        for lo, n in ((sel_at, 2), (off_at, 4)):
            steps += _stores(site.address, lo, final[lo : lo + n], site.length, state)
            state[lo : lo + n] = final[lo : lo + n]
        rest = [i for i in range(site.length) if state[i] != final[i]]
        for i in rest:  # prefix bytes that differ (none for the shapes the harness runs)
            steps.append(Write(i, (final[i],)))
        plan = Plan(tuple(steps), "negative control: selector before offset")
    res = Checker(site, model, policy).check(plan)
    if res.safe:
        return None
    return tuple(site.final), tuple(PlanStep(st.offset, tuple(st.data)) if isinstance(st, Write) else PlanStep(0, ())
                                    for st in plan.steps)


def _stores(address: int, lo: int, data: tuple, length: int, state: list) -> list[Write]:
    """The fewest stores (inside the site, none crossing a line) that write ``data`` at ``lo``."""
    out: list[Write] = []
    pos = 0
    while pos < len(data):
        for size in (8, 4, 2, 1):
            a = address + lo + pos
            if pos + size <= len(data) and a // LINE == (a + size - 1) // LINE:
                out.append(Write(lo + pos, tuple(data[pos : pos + size])))
                pos += size
                break
    return out


def _with_negative_plans(table: PatchTable, kind: str, model: FetchModel,
                         policy: Policy) -> tuple[PatchTable, int]:
    plans = list(table.plans)
    index: dict[PlanTemplate, int] = {p: i for i, p in enumerate(plans)}
    sites = []
    far = table.forms.index("far")
    replaced = 0
    for s in table.sites:
        bits = table.regions[s.region].bitness
        got = _negative_plan(s.shape, s.address, bits, kind, model, policy) if s.plans[far] is not None else None
        if got is None:
            sites.append(s)
            continue
        final, steps = got
        tpl = PlanTemplate(s.shape, "far", bits, final, steps, shape_by_id(s.shape).call_at, None)
        i = index.get(tpl)
        if i is None:
            i = index[tpl] = len(plans)
            plans.append(tpl)
        new = list(s.plans)
        new[far] = i
        needs = any(p is not None and plans[p].syncs for p in new)
        flags = (s.flags & ~FLAG_NEEDS_SYNC) | (FLAG_NEEDS_SYNC if needs else 0)
        sites.append(dataclasses.replace(s, plans=tuple(new), flags=flags))
        replaced += 1
    if not replaced:
        raise UsageError(f"no site has a {kind} plan the checker rejects under {model.chunk},{model.order.value}")
    # keep only plans some site uses, in first-use order (the writer's plan library)
    used: dict[int, int] = {}
    for s in sites:
        for p in s.plans:
            if p is not None and p not in used:
                used[p] = len(used)
    sites = [dataclasses.replace(s, plans=tuple(None if p is None else used[p] for p in s.plans)) for s in sites]
    new_plans = [plans[old] for old, _ in sorted(used.items(), key=lambda kv: kv[1])]
    return dataclasses.replace(table, sites=sites, plans=new_plans), replaced


def _return_offset(tpl: PlanTemplate, gate: int) -> int:
    """Where the site's final call returns to, as an offset in the site: decoded from the plan's
    final bytes with sample operands (the layout does not depend on their values)."""
    from ..decode import Decoded, Kind, decode_view

    vals = {"off": 0x11223344, "sel": USER_CS, "rel": 0x100, "gate": gate}
    code = bytes(a if not is_var(a) else (vals[var_field(a)] >> (8 * var_index(a))) & 0xFF for a in tpl.final)
    pos = 0
    while pos < len(code):
        d = decode_view(code[pos:], tpl.bitness, pos, text=False)
        if not isinstance(d, Decoded):
            break
        if d.kind in (Kind.CALLF, Kind.CALL):
            return pos + d.length
        pos += d.length
    raise GatelinkError(f"the final bytes of a {tpl.shape} {tpl.form} plan hold no call")


def write_manifest(work: Path, images: list[HarnessImage]) -> Path:
    lines = []
    for im in images:
        w = 0 if im.bits == 32 else 1
        mapped = BASE32 if im.bits == 32 else MAP16
        lines.append(f"image {w} {work / f'code{im.bits}.bin'} {work / f'code{im.bits}.gltab'} {mapped:x}")
    for im in images:
        t = im.table
        for i, s in enumerate(t.sites):
            pi = next((p for p in s.plans if p is not None), None)
            if pi is None:
                continue
            tpl = t.plans[pi]  # far when the site has one, else its near (fallback) plan
            pushes = 4 if shape_by_id(s.shape).call_at else 0  # push ebp before the call (G, H)
            far = int(tpl.form == "far")
            lines.append(f"site {im.bits} {i} {s.address:x} {s.gate} {_return_offset(tpl, s.gate)} {pushes} {far} "
                         f"{s.shape}")
    path = work / "manifest.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def build_harness(work: Path) -> Path:
    """Compile the harness with gcc -m32 (BuildError, exit 2, when it cannot)."""
    got = probe_m32(work)
    if got is not None:
        if got[0] == "run":
            raise HarnessRefused(got[1])
        raise BuildError(f"gcc -m32 cannot build a 32-bit program here: {got[1]}")
    return compile_c(work / "gl_harness", ["gltab.c", "gl_harness.c"], ["-pthread", "-fno-pie", "-no-pie"],
                     m32=True)


@dataclass
class HarnessResult:
    """What one run did: the harness's counters (``calls``, ``patches``, ``waits``, ``races``,
    ``rounds``...), violations by kind, the first details, and how the process ended."""

    values: dict[str, str] = field(default_factory=dict)
    violations: dict[str, int] = field(default_factory=dict)
    details: list[str] = field(default_factory=list)
    returncode: int = 0
    seconds: float = 0.0
    ended: str = "completed"  # completed, hang (watchdog), crashed (the process died)
    negative_sites: int = 0
    stderr: str = ""

    @property
    def total_violations(self) -> int:
        return sum(self.violations.values())

    def get(self, key: str, default: int = 0) -> int:
        try:
            return int(self.values.get(key, default))
        except ValueError:
            return default

    def report(self, cfg: HarnessConfig, load: str = "") -> str:
        v = self.values
        title = f"gatelink harness: mode {cfg.mode}, {v.get('threads', cfg.threads)} threads, model {cfg.model}, seed {cfg.seed}"
        if cfg.negative:
            title += f", NEGATIVE CONTROL ({cfg.negative} plans on {self.negative_sites} sites)"
        if cfg.retire_membarrier:
            title += ", UNSOUND retire sync by membarrier alone (a demonstration)"
        ended = f"process {self.ended}" + (f" (exit {self.returncode})" if self.ended != "completed" else "")
        lines = [
            title,
            (f"  sites         {v.get('sites', '?')} (every shape that takes a call, at every alignment mod 64; "
             "16-bit shapes in an LDT code segment)"),
            (f"  calls         {v.get('calls', '?')} in {v.get('rounds', '?')} rounds of re-armed sites "
             f"({v.get('lockstep_rounds', '?')} in lockstep), {v.get('seconds', '?')} s"),
            f"  patches       {v.get('patches', '?')} lazy first-fault patches, {v.get('upfront', '?')} up front",
            (f"  races         {v.get('races', '?')} patches joined by another thread's fault; "
             f"{v.get('waits', '?')} waits in all"),
            (f"  traps handled {v.get('traps_gp', '?')} SIGSEGV (#GP), {v.get('traps_ud', '?')} SIGILL (#UD), "
             f"{v.get('traps_int3', '?')} SIGTRAP (INT3)"),
            (f"  syncs         {v.get('sync_steps', '?')} sync steps ({v.get('sync_mode', '?')}), "
             f"{v.get('retire_syncs', '?')} retire syncs ({v.get('handshakes', '?')} signal handshakes)"),
            "  violations    " + ", ".join(f"{k} {self.violations.get(k, 0)}" for k in VIOLATION_KINDS),
            f"  total         {self.total_violations} violations; {ended}",
        ]
        if load:
            lines.append(f"  load average  {load}")
        lines += [f"  detail: {d}" for d in self.details[:10]]
        if self.ended == "crashed" and self.stderr.strip():
            lines.append(f"  stderr: {self.stderr.strip().splitlines()[-1]}")
        return "\n".join(lines)


@dataclass
class HarnessConfig:
    calls: int = 100_000
    threads: int = 0  # 0: every core
    mode: str = "lazy"
    model: str = "8,arbitrary"
    negative: str | None = None
    seed: int = 1
    timeout: float = 0.0  # 0: from the number of calls
    work: Path | None = None
    membarrier: bool = True
    retire_membarrier: bool = False  # unsound on purpose: shows why the retire sync is a handshake

    def resolved_threads(self) -> int:
        return self.threads or os.cpu_count() or 1

    def resolved_timeout(self) -> float:
        return self.timeout or max(120.0, self.calls / 2_000)


def parse_output(text: str) -> HarnessResult:
    r = HarnessResult()
    for ln in text.splitlines():
        if ln.startswith("detail "):
            r.details.append(ln[7:])
            continue
        parts = ln.split()
        if len(parts) == 3 and parts[0] == "violation":
            r.violations[parts[1]] = int(parts[2])
        elif len(parts) >= 2:
            r.values[parts[0]] = parts[1]
    return r


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def run_harness(cfg: HarnessConfig) -> HarnessResult:
    """Build the images, tables and harness, run it, and return what it saw (a watchdog kills a
    run that outlives ``cfg.timeout``: a hang)."""
    if cfg.mode not in MODES:
        raise UsageError(f"--mode must be one of {', '.join(MODES)}, not {cfg.mode!r}")
    if cfg.negative is not None and cfg.negative not in NEGATIVE_PLANS:
        raise UsageError(f"--negative-plan must be one of {', '.join(NEGATIVE_PLANS)}")
    if cfg.calls < 1:
        raise UsageError("--calls must be at least 1")
    threads = cfg.resolved_threads()
    if not 1 <= threads <= 64:
        raise UsageError("--threads must be 1..64")
    try:
        model = FetchModel.parse(cfg.model)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if cfg.work is not None:
        cfg.work.mkdir(parents=True, exist_ok=True)
        return _run_in(cfg, cfg.work, model, threads)
    with tempfile.TemporaryDirectory(prefix="gatelink-harness-") as d:
        return _run_in(cfg, Path(d), model, threads)


@dataclass
class Prepared:
    """A built harness: the binary, its manifest, and the images it runs."""

    exe: Path
    manifest: Path
    images: list[HarnessImage]

    @property
    def negative_sites(self) -> int:
        return sum(im.negative for im in self.images)


def prepare(work: Path, model: FetchModel, negative: str | None = None) -> Prepared:
    """Compile the harness, build the images and tables, write the manifest, in ``work``."""
    work.mkdir(parents=True, exist_ok=True)
    exe = build_harness(work)
    images = build_images(work, model, negative)
    return Prepared(exe, write_manifest(work, images), images)


def execute(prep: Prepared, cfg: HarnessConfig) -> HarnessResult:
    """Run a prepared harness once with ``cfg``'s calls, threads, mode and seed."""
    threads = cfg.resolved_threads()
    cmd = [str(prep.exe), str(prep.manifest), "--calls", str(cfg.calls), "--threads", str(threads), "--mode",
           cfg.mode, "--seed", str(cfg.seed), "--progress", str(prep.manifest.parent / "progress.txt")]
    if not cfg.membarrier:
        cmd.append("--no-membarrier")
    if cfg.retire_membarrier:
        cmd.append("--retire-membarrier")
    t0 = time.monotonic()
    neg = prep.negative_sites
    try:
        p = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=cfg.resolved_timeout())
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        r = parse_output(out)
        r.ended, r.returncode = "hang", -9
        r.violations["hang"] = 1
        r.seconds = time.monotonic() - t0
        r.negative_sites = neg
        return r
    r = parse_output(p.stdout)
    r.returncode, r.seconds, r.stderr, r.negative_sites = p.returncode, time.monotonic() - t0, p.stderr, neg
    if p.returncode == EXIT_REFUSED:
        raise HarnessRefused(f"the kernel refused the harness: {p.stderr.strip() or 'exit 3'}")
    if p.returncode not in (0, 1) or "violations" not in r.values:
        r.ended = "crashed"
        r.violations["crash"] = r.violations.get("crash", 0) + 1
    return r


def _run_in(cfg: HarnessConfig, work: Path, model: FetchModel, threads: int) -> HarnessResult:
    return execute(prepare(work, model, cfg.negative), cfg)


def run_bench(work: Path, model: FetchModel, reps: int = 5) -> dict[str, float]:
    """The harness's figures (benchmarks/silicon.py): per call and per patch costs."""
    prep = prepare(work, model)
    p = subprocess.run([str(prep.exe), str(prep.manifest), "--bench", "--calls", str(reps)], check=False, capture_output=True,
                       text=True, timeout=900)
    if p.returncode == EXIT_REFUSED:
        raise HarnessRefused(f"the kernel refused the harness: {p.stderr.strip()}")
    if p.returncode != 0:
        raise GatelinkError(f"the harness benchmark failed (exit {p.returncode}): {p.stderr.strip()[-300:]}")
    out: dict[str, float] = {}
    for ln in p.stdout.splitlines():
        m = re.match(r"(\w+) ([-0-9.]+)$", ln)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


__all__ = [
    "MODES",
    "NEGATIVE_PLANS",
    "SHAPES16",
    "SHAPES32",
    "HarnessConfig",
    "HarnessRefused",
    "HarnessResult",
    "Prepared",
    "build_harness",
    "build_images",
    "execute",
    "load_average",
    "parse_output",
    "prepare",
    "run_bench",
    "run_harness",
    "sel_domain",
    "write_manifest",
]
