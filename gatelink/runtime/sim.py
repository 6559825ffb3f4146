"""An SMP simulator for the lazy runtime: cores execute through gate sites, fetching instruction
bytes under a fetch model, while :class:`~.lazy.LazyPatcher` patches the sites on first fault;
every executed instruction is checked against what the site's final code does.

The checker (:mod:`gatelink.plan.checker`) proves a plan's states safe for one site in
isolation. This is an independent, operational check of what it leaves out: the runtime's
protocol (state claims, waits, the retire sync, two cores faulting on one site, faults at
intermediate trap points during a plan, re-arming), neighbouring sites whose bytes share fetch
chunks, and the concrete bytes the registry fills in (``docs/runtime.md``, "The simulator").

Model (the safety model of ``docs/safety.md``, made operational):

* **Memory** holds, per naturally aligned chunk of ``model.chunk`` bytes, every version the
  chunk had, with the time of the store that made it. Stores are atomic (1, 2, 4, 8 bytes).
* **A core** fetches an instruction chunk by chunk, one chunk per step, until it decodes. Each
  chunk is read at some time ``t`` between a lower bound and now: never older than the last
  version of that chunk the core read (coherence), nor than the core's last serialisation (a
  sync, or the ``iret`` that ends a fault handler), nor (``monotone``) than the previous chunk
  of the same instruction. Which version is read is chosen at random, newest, or oldest.
* **A sync** serialises every other core: a core at an instruction boundary takes it at once;
  a core in the middle of fetching an instruction finishes that instruction first. A core
  inside the fault handler counts as serialised (it will ``iret``, which serialises, before it
  fetches again). The syncing core waits until every core has taken it.
* **A trap** (a far call or jump to a selector the policy says is never valid, ``UD2``, an
  invalid opcode, ``INT3``, ``INT n`` on a handler vector) enters the fault handler, which is
  :meth:`LazyPatcher.fault_steps` run one memory operation per step; its first read of the
  site state happens in the same step as the trap (the handler runs with interrupts disabled
  until then). The handler's outcome is a resume point (the core goes on there, having
  serialised) or the default handler, which for a trap raised inside a site is a violation: the
  program would crash.
* **The oracle**: the site's final code, decoded from its concrete bytes, has effects
  ``E1..Em`` (far call: selector, offset, operand size; call gate: selector; near call: target,
  operand size; push/pop: register, size; flag changes; anything else is itself). Each site run
  must perform exactly ``E1..Em`` in order and leave at the site's end; each executed
  instruction is compared with the next expected effect as it executes.
* **A controller** re-arms finished sites (closes the site to new entries, waits until no core
  is inside, :meth:`LazyPatcher.rearm_steps`, opens it), so first faults happen again and again.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections import deque
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field

from ..catalog import shape as shape_by_id
from ..catalog import stub_bytes
from ..decode import NEED_MORE, Decoded, Kind, decode_view
from ..plan.builders import BUILDERS
from ..plan.forms import FormError, make_site
from ..plan.model import (
    LINE,
    RDOS_CALL_GATES,
    RDOS_POLICY,
    RDOS_SELECTORS,
    FetchModel,
    Order,
    Policy,
    Write,
    is_var,
    var_field,
    var_index,
)
from ..plan.select import DEFAULT_MODEL, choose
from ..table.model import (
    FLAG_LAZY,
    FLAG_NEEDS_SYNC,
    Identity,
    PatchTable,
    PlanStep,
    PlanTemplate,
    TableRegion,
    TableSite,
)
from .lazy import DONE, FOREIGN, SPIN, STORE, SYNC, LazyPatcher, Outcome, Trap
from .memory import STORE_SIZES, Placement
from .registry import Registry, parse_registry

# ---------------------------------------------------------------------------------------------
# Memory with a version history per chunk


class SimMemory:
    """Code bytes ``[base, base + len(data))`` with every version of every chunk.

    :attr:`now` is the simulation time; a store made now gives each chunk it touches a new
    version stamped ``now``. Implements :class:`~.memory.Memory` (``sync`` is handled by the
    simulator, which yields to other cores until every one has taken it).
    """

    def __init__(self, base: int, data: bytes, chunk: int) -> None:
        if base % LINE:
            raise ValueError("the simulated memory starts on a 64-byte line")
        self.base = base
        self.data = bytearray(data)
        self.chunk = chunk
        self.now = 0
        self.k0 = base // chunk
        n = (len(data) + chunk - 1) // chunk
        self.times: list[list[int]] = [[0] for _ in range(n)]
        self.contents: list[list[bytes]] = [[bytes(self.data[i * chunk : (i + 1) * chunk])] for i in range(n)]
        self.stores = 0
        self._dirty: set[int] = set()

    def read(self, address: int, size: int) -> bytes:
        o = address - self.base
        return bytes(self.data[o : o + size])

    def store(self, address: int, data: bytes) -> None:
        n = len(data)
        if n not in STORE_SIZES:
            raise ValueError(f"a store writes 1, 2, 4 or 8 bytes, not {n}")
        if address // LINE != (address + n - 1) // LINE:
            raise ValueError(f"the store at {address:#x} crosses a 64-byte line")
        o = address - self.base
        self.data[o : o + n] = data
        c = self.chunk
        self.stores += 1
        for k in range(o // c, (o + n - 1) // c + 1):
            content = bytes(self.data[k * c : (k + 1) * c])
            ts = self.times[k]
            if ts[-1] == self.now:
                self.contents[k][-1] = content
            else:
                ts.append(self.now)
                self.contents[k].append(content)
                if len(ts) > 4:
                    self._dirty.add(k)

    def sync(self) -> None:  # pragma: no cover - the simulator handles SYNC itself
        raise RuntimeError("the simulator serialises cores itself")

    def prune(self, floor: int) -> None:
        """Forget versions no core can read any more (older than every core's lower bound)."""
        for k in self._dirty:
            ts = self.times[k]
            j = bisect.bisect_right(ts, floor) - 1
            if j > 0:
                del ts[:j]
                del self.contents[k][:j]
        self._dirty = {k for k in self._dirty if len(self.times[k]) > 4}


# ---------------------------------------------------------------------------------------------
# What an instruction does (the oracle's notion of effects, docs/safety.md decision 4)

_NEED = 0  # the bytes end inside the instruction
_NONE = 1  # no effect (nop forms)
_EFFECT = 2
_FAULT = 3  # a fault reported at the instruction (#GP on an invalid selector, #UD)
_INT3 = 4  # a trap reported after the instruction (CC)
_INT = 5  # INT n on a handler vector (CD n)
_ABSENT = 6  # a far call to a selector that is valid but not present: the effect, then #NP

_Info = tuple  # (kind, length, effect)


class Cpu:
    """Decodes one instruction view and says what executing it does, cached by bytes."""

    def __init__(self, policy: Policy, call_gates: frozenset[int], absent: frozenset[int] = frozenset()) -> None:
        self.policy = policy
        self.call_gates = call_gates
        self.absent = absent
        self._cache: dict[tuple[bytes, int, int], _Info] = {}

    def info(self, buf: bytes, eip: int, bits: int) -> _Info:
        key = (buf, eip, bits)
        r = self._cache.get(key)
        if r is None:
            r = self._cache[key] = self._info(buf, eip, bits)
        return r

    def _info(self, buf: bytes, eip: int, bits: int) -> _Info:
        d = decode_view(buf, bits, eip, text=False)
        if d == NEED_MORE:
            return (_NEED, 0, None)
        if d is None:
            return (_FAULT, 0, ("invalid",))
        assert isinstance(d, Decoded)
        n = d.length
        k = d.kind
        pol = self.policy
        if k is Kind.NOP:
            return (_NONE, n, None)
        if k is Kind.CALLF or k is Kind.JMPF:
            sel = d.selector
            assert sel is not None
            if pol.invalid(sel):
                return (_FAULT, n, ("trap",))
            if k is Kind.JMPF:
                return (_EFFECT, n, ("jmpf", sel, d.offset))
            eff = ("callgate", sel) if sel in self.call_gates else ("callf", sel, d.offset, d.opsize)
            return (_ABSENT if sel in self.absent else _EFFECT, n, eff)
        if k is Kind.CALL and d.imm:
            return (_EFFECT, n, ("call", d.target, d.opsize))
        if k is Kind.UD2:
            return (_FAULT, n, ("ud2",))
        if k is Kind.INT3:
            return (_INT3, n, ("int3",))
        if k is Kind.INT:
            if d.vector in pol.int_vectors:
                return (_INT, n, ("int",))
            return (_EFFECT, n, ("int", d.vector))
        if k is Kind.PUSH or k is Kind.POP:
            return (_EFFECT, n, ("push" if k is Kind.PUSH else "pop", d.reg, d.opsize))
        if k is Kind.FLAGS:
            return (_EFFECT, n, ("flag", d.reg))
        return (_EFFECT, n, ("insn", buf[:n].hex()))

    def effects(self, code: bytes, eip: int, bits: int) -> list[tuple[object, ...]]:
        """The effects of straight-line ``code`` at ``eip`` (the final code of a site); raises
        ValueError if it traps, does not decode, or does not end exactly at its end."""
        out = []
        pos = 0
        while pos < len(code):
            kind, n, eff = self.info(code[pos : pos + 15], eip + pos, bits)
            if kind in (_NEED, _FAULT, _INT3, _INT) or pos + n > len(code):
                raise ValueError(f"the final code {code.hex(' ')} does not run cleanly at offset {pos}")
            if kind != _NONE:
                out.append(eff)
            pos += n
        return out


def effect_text(e: object) -> str:
    if not isinstance(e, tuple):
        return str(e)
    k = e[0]
    if k == "callf":
        return f"call far {e[1]:#06x}:{e[2]:#010x} (o{e[3]})"
    if k == "callgate":
        return f"call gate {e[1]:#06x}"
    if k == "call":
        return f"call near {e[1]:#x} (o{e[2]})"
    if k in ("push", "pop"):
        return f"{k} {e[1]}"
    if k == "flag":
        return str(e[1])
    return " ".join(str(x) if not isinstance(x, int) else hex(x) for x in e)


# ---------------------------------------------------------------------------------------------
# Cores, schedules, the run


@dataclass
class Violation:
    """A site run that broke the property, with the core's last instructions."""

    kind: str  # "wrong call", "stray effect", "skipped effect", "left mid-instruction", "crash", "hang", ...
    detail: str
    core: int
    site: int
    address: int
    time: int
    trace: list[str] = field(default_factory=list)

    def describe(self) -> str:
        lines = [f"{self.kind} at {self.address:#x} (site {self.site}, core {self.core}, time {self.time}): {self.detail}"]
        lines += [f"  {t}" for t in self.trace]
        return "\n".join(lines)


@dataclass
class SimResult:
    """Counts of one simulation and the violations it found."""

    executions: int = 0  # site runs completed (each checked against the final code)
    racing: int = 0  # ... of which started while the site was not DONE
    instructions: int = 0
    faults: int = 0  # traps delivered to the handler
    patches: int = 0  # plans run (first faults that claimed a site)
    waits: int = 0  # faults that waited for another core's plan
    syncs: int = 0
    rearms: int = 0
    real_faults: int = 0  # injected real faults the handler passed to the default handler
    steps: int = 0
    int_traps: int = 0  # faults through INT3 / INT n (trap bytes a plan wrote)
    inner_traps: int = 0  # traps at a point other than the stub's first trap point
    violations: list[Violation] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.executions} site executions ({self.racing} racing a patch), {self.instructions} instructions, "
                f"{self.faults} faults ({self.int_traps} INT3/INT n, {self.inner_traps} off the first trap point), "
                f"{self.patches} plans run, {self.waits} waits, {self.syncs} syncs, {self.rearms} re-arms, "
                f"{self.real_faults} real faults to the default handler, {self.steps} steps; "
                f"{len(self.violations)} violations")


_RUN, _HANDLER, _ENTER = 0, 1, 2


class _Core:
    __slots__ = (
        "bits",
        "buf",
        "chunks",
        "end",
        "expect",
        "faults_here",
        "fetching",
        "floor",
        "gen",
        "id",
        "j",
        "mode",
        "mono",
        "need_ack",
        "op",
        "pc",
        "raced",
        "seen",
        "site",
        "sync_wait",
        "trace",
        "trap_pc",
        "wait_since",
    )

    def __init__(self, cid: int) -> None:
        self.id = cid
        self.mode = _ENTER
        self.pc = 0
        self.site = -1
        self.end = 0
        self.j = 0
        self.expect: list[tuple[object, ...]] = []
        self.bits = 32
        self.buf = b""
        self.mono = 0
        self.fetching = False
        self.floor = 0
        self.seen: dict[int, int] = {}
        self.need_ack = False
        self.gen: Generator[tuple[object, ...], None, Outcome] | None = None
        self.op: tuple[object, ...] | None = None
        self.sync_wait: list[_Core] | None = None
        # (time, pc, bytes, ((chunk, time), ...), effect) of the last instructions
        self.trace: deque[tuple[int, int, bytes, tuple[tuple[int, int], ...], tuple[object, ...] | None]] = \
            deque(maxlen=10)
        self.trap_pc = -1
        self.faults_here = 0
        self.raced = False
        self.chunks: list[tuple[int, int]] = []
        self.wait_since = 0


SCHEDULES = ("random", "bursty", "starve", "mixed")
VERSIONS = ("newest", "oldest", "uniform", "mixed")


@dataclass
class SimConfig:
    """How to run: ``cores`` executing sites, the ``schedule`` (random: any core each step;
    bursty: one core for a random run of steps; starve: one core at a time is left out for a
    long while, so its fetches span whole plans; mixed: switches between them), how a fetch
    picks a chunk version (``versions``), whether a controller re-arms finished sites, and
    ``absent``: selectors whose far calls fault as not present (real faults)."""

    cores: int = 4
    schedule: str = "mixed"
    versions: str = "mixed"
    rearm: bool = True
    seed: int = 1
    absent: frozenset[int] = frozenset()
    hang_steps: int = 200_000  # a core waiting longer than this is a violation ("hang")

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}")
        if self.versions not in VERSIONS:
            raise ValueError(f"versions must be one of {', '.join(VERSIONS)}")
        if self.cores < 1:
            raise ValueError("at least one core")


class Simulator:
    """Cores racing lazy patches over ``table``'s sites in simulated memory (see the module
    docstring). ``memory`` holds the code (regions at their table addresses); sites start in
    whatever state it holds them (normally original)."""

    def __init__(self, table: PatchTable, registry: Registry, memory: SimMemory, config: SimConfig | None = None,
                 sites: Sequence[int] | None = None) -> None:
        self.table = table
        self.config = config or SimConfig()
        self.mem = memory
        self.model = table.model
        self.rng = random.Random(self.config.seed)
        gates = set(RDOS_CALL_GATES.values or ())
        cg = table.domains_of("callgate").get("sel") if "callgate" in table.forms else None
        if cg is not None and cg.values is not None:
            gates |= set(cg.values)
        self.cpu = Cpu(table.policy, frozenset(gates), self.config.absent)
        self.patcher = LazyPatcher(table, memory, registry, Placement.linked(table))
        self.sites = [i for i in (sites if sites is not None else range(len(table.sites)))
                      if self.patcher.state[i] != FOREIGN]
        if not self.sites:
            raise ValueError("no site to run")
        self.bits = [table.regions[s.region].bitness for s in table.sites]
        self.regions = [s.region for s in table.sites]
        self.expect: dict[int, list[tuple[object, ...]]] = {}
        for i in self.sites:
            sp = self.patcher.site_patch(i)
            self.expect[i] = self.cpu.effects(sp.final, sp.code_address, self.bits[i])
            _check_target(self.expect[i], sp.target, sp.form, i)
        self.cores = [_Core(c) for c in range(self.config.cores)]
        self.closed: set[int] = set()
        self.result = SimResult()
        # controller (re-arming): site -> None while waiting for it to empty, then its requester
        self._ctl = _Core(-1)
        self._rearming: dict[int, _Core | None] = {}
        self._random = self.rng.random
        self._ctl_share = 1.0 / (len(self.cores) + 1)
        self._mixed = self.config.schedule == "mixed"
        self._mode = "random" if self._mixed else self.config.schedule
        self._mode_left = 0
        self._burst_core = 0
        self._burst_left = 0
        self._starved = -1
        self._starve_left = 0

    # -- scheduling ---------------------------------------------------------------------------

    def _pick(self) -> _Core:
        rnd = self._random
        n = len(self.cores)
        if self.config.rearm and rnd() < self._ctl_share:
            return self._ctl
        if self._mixed:
            self._mode_left -= 1
            if self._mode_left <= 0:
                self._mode = ("random", "bursty", "starve")[int(rnd() * 3)]
                self._mode_left = 200 + int(rnd() * 2800)
        m = self._mode
        if m == "bursty":
            if self._burst_left <= 0:
                self._burst_core = int(rnd() * n)
                self._burst_left = int(self.rng.expovariate(1 / 12)) + 1
            self._burst_left -= 1
            return self.cores[self._burst_core]
        if m == "starve" and n > 1:
            if self._starve_left <= 0:
                self._starved = int(rnd() * n)
                self._starve_left = 20 + int(rnd() * 380)
            self._starve_left -= 1
            c = int(rnd() * (n - 1))
            return self.cores[c + 1 if c >= self._starved else c]
        return self.cores[int(rnd() * n)]

    # -- the run ------------------------------------------------------------------------------

    def run(self, executions: int, max_steps: int | None = None, stop_on_violation: bool = True) -> SimResult:
        """Run until ``executions`` site runs completed (or ``max_steps``, or the first
        violation with ``stop_on_violation``)."""
        res = self.result
        mem = self.mem
        limit = max_steps if max_steps is not None else executions * 400 + 100_000
        target = res.executions + executions
        steps = 0
        prune_at = 4096
        while res.executions < target and steps < limit:
            steps += 1
            mem.now += 1
            core = self._pick()
            if core is self._ctl:
                self._controller()
            elif core.mode == _RUN:
                self._run_step(core)
            elif core.mode == _HANDLER:
                self._handler_step(core)
            else:
                self._enter(core)
            if res.violations and stop_on_violation:
                break
            if steps >= prune_at:
                prune_at += 4096
                mem.prune(min(c.floor for c in self.cores))
        res.steps += steps
        return res

    def _enter(self, core: _Core) -> None:
        if core.need_ack:
            core.need_ack = False
            core.floor = self.mem.now
            return
        # Mostly sites that still have a patch ahead of them: those are the races.
        st = self.patcher.state
        pool = [i for i in self.sites if i not in self.closed and st[i] != DONE]
        if not pool or self._random() < 0.25:
            pool = [i for i in self.sites if i not in self.closed] if self.closed else self.sites
        if not pool:
            return
        i = pool[int(self._random() * len(pool))]
        sp = self.patcher.site_patch(i)
        core.site = i
        core.pc = sp.code_address
        core.end = sp.code_address + sp.length
        core.expect = self.expect[i]
        core.j = 0
        core.bits = self.bits[i]
        core.fetching = False
        core.faults_here = 0
        core.raced = self.patcher.state[i] != DONE
        core.mode = _RUN
        core.trace.clear()

    def _version(self, lo: int, ts: list[int]) -> int:
        """Index of the chunk version a fetch reads, given the oldest time it may read."""
        j0 = bisect.bisect_right(ts, lo) - 1
        last = len(ts) - 1
        if j0 >= last:
            return last
        v = self.config.versions
        r = self.rng.random()
        if v == "mixed":
            v = "newest" if r < 0.4 else "oldest" if r < 0.7 else "uniform"
            r = self.rng.random()
        if v == "newest":
            return last
        if v == "oldest":
            return j0
        return j0 + int(r * (last - j0 + 1))

    def _run_step(self, core: _Core) -> None:
        mem = self.mem
        res = self.result
        if not core.fetching:
            if core.need_ack:  # take a pending sync at this instruction boundary
                core.need_ack = False
                core.floor = mem.now
                return
            if core.pc == core.end:
                if core.j != len(core.expect):
                    self._violate(core, "skipped effect",
                                  f"left the site after {core.j} of {len(core.expect)} effects")
                    return
                res.executions += 1
                if core.raced:
                    res.racing += 1
                core.mode = _ENTER
                return
            core.fetching = True
            core.buf = b""
            core.mono = 0
            core.chunks = []
        # fetch one chunk
        c = mem.chunk
        addr = core.pc + len(core.buf)
        k = addr // c - mem.k0
        ts = mem.times[k]
        lo = core.floor
        s = core.seen.get(k, 0)
        lo = max(lo, s)
        if self.model.order is Order.MONOTONE and core.mono > lo:
            lo = core.mono
        v = self._version(lo, ts)
        t = max(lo, ts[v])
        core.seen[k] = t
        core.mono = t
        content = mem.contents[k][v]
        core.buf += content[addr - (k + mem.k0) * c :]
        core.chunks.append((k + mem.k0, t))
        kind, n, eff = self.cpu.info(core.buf[:15], core.pc, core.bits)
        if kind == _NEED:
            if len(core.buf) >= 15:  # pragma: no cover - decode_view never needs more than 15
                self._violate(core, "invalid instruction", "no instruction in 15 bytes")
            return
        # the instruction is complete: execute it
        core.fetching = False
        res.instructions += 1
        pc = core.pc
        core.trace.append((mem.now, pc, core.buf[: max(n, 1)], tuple(core.chunks), eff))
        if core.need_ack:
            core.need_ack = False
            core.floor = mem.now
        if kind == _NONE or kind == _EFFECT or kind == _ABSENT:
            if pc + n > core.end:
                self._violate(core, "left mid-instruction", f"the instruction ends {pc + n - core.end} bytes past the site")
                return
            if kind == _NONE:
                core.pc = pc + n
                return
            exp = core.expect[core.j] if core.j < len(core.expect) else None
            if eff != exp:
                why = "wrong call" if exp is not None and eff[0] in ("callf", "callgate", "call") and \
                    exp[0] in ("callf", "callgate", "call") else "stray effect"
                self._violate(core, why, f"{effect_text(eff)} where the final code has "
                                         f"{effect_text(exp) if exp else 'nothing more'}")
                return
            if kind == _ABSENT:  # the call is right but faults (#NP): a real fault
                self._trap(core, pc, Trap.FAULT, real=True)
                return
            core.j += 1
            core.pc = pc + n
            return
        if kind == _FAULT:
            self._trap(core, pc, Trap.FAULT)
        elif kind == _INT3:
            self._trap(core, pc + n, Trap.INT3)
        else:
            self._trap(core, pc + n, Trap.INT)

    def _trap(self, core: _Core, address: int, trap: Trap, real: bool = False) -> None:
        res = self.result
        res.faults += 1
        if trap is not Trap.FAULT:
            res.int_traps += 1
        sp = self.patcher.site_patch(core.site)
        if address - (trap is Trap.INT3) - 2 * (trap is Trap.INT) != sp.code_address + sp.resume:
            res.inner_traps += 1
        core.trap_pc = -2 if real else -1
        if core.faults_here > 8:
            self._violate(core, "fault loop", f"the site faulted {core.faults_here} times in one run")
            return
        core.faults_here += 1
        core.mode = _HANDLER
        # The handler knows the faulting code segment, hence the region (a boot image's
        # drivers share addresses).
        core.gen = self.patcher.fault_steps(address, trap, self.regions[core.site])
        core.op = None
        self._advance(core)  # the first read of the site state, in the trap's own step

    def _advance(self, core: _Core) -> None:
        assert core.gen is not None
        try:
            op = next(core.gen)
            if op[0] == SPIN and (core.op is None or core.op[0] != SPIN):
                core.wait_since = self.mem.now
            core.op = op
        except StopIteration as stop:
            core.gen = None
            core.op = None
            self._handled(core, stop.value)

    def _handler_step(self, core: _Core) -> None:
        op = core.op
        assert op is not None
        k = op[0]
        if k == STORE:
            self.mem.store(op[1], op[2])  # type: ignore[arg-type]
            self._advance(core)
        elif k == SYNC:
            if self._sync(core):
                self._advance(core)
        else:
            assert k == SPIN
            self._advance(core)
            if core.op is not None and core.op[0] == SPIN and \
                    self.mem.now - core.wait_since > self.config.hang_steps:
                self._violate(core, "hang", f"waited {self.config.hang_steps} steps for another core's plan")

    def _sync(self, core: _Core) -> bool:
        """Request (first call) and then wait for a sync; True once every core took it."""
        if core.sync_wait is None:
            now = self.mem.now
            wait = []
            for o in self.cores:
                if o is core:
                    continue
                if o.mode == _RUN and o.fetching:
                    o.need_ack = True
                    wait.append(o)
                else:
                    o.floor = now  # at a boundary, or in the handler (which ends with iret)
            core.sync_wait = wait
            self.result.syncs += 1
        if any(o.need_ack for o in core.sync_wait):
            return False
        core.sync_wait = None
        return True

    def _handled(self, core: _Core, out: Outcome) -> None:
        res = self.result
        real = core.trap_pc == -2
        if out.resume is None:
            if real:
                res.real_faults += 1
                core.mode = _ENTER  # the program's own handler takes it from here
                return
            self._violate(core, "crash", f"the fault went to the default handler (site state "
                                         f"{self.patcher.state[out.site] if out.site is not None else 'none'})")
            return
        if out.site != core.site:
            self._violate(core, "bad resume", f"the handler resumes in site {out.site}, the core was in {core.site}")
            return
        if out.action == "patched":
            res.patches += 1
        elif out.action == "waited":
            res.waits += 1
        core.pc = out.resume
        core.floor = self.mem.now  # iret serialises
        core.mode = _RUN
        core.raced = True

    def _controller(self) -> None:
        """Re-arm finished sites, up to three at a time: close one to new entries, wait until
        no core is inside it, then run :meth:`LazyPatcher.rearm_steps` one operation per step."""
        p = self.patcher
        rng = self.rng
        if len(self._rearming) < 3 and rng.random() < 0.5:
            done = [i for i in self.sites if p.state[i] == DONE and i not in self.closed]
            if done:
                i = done[rng.randrange(len(done))]
                self.closed.add(i)
                self._rearming[i] = None
                return
        if not self._rearming:
            return
        i = list(self._rearming)[rng.randrange(len(self._rearming))]
        req = self._rearming[i]
        if req is None:  # waiting for the site to empty
            if any(c.mode != _ENTER and c.site == i for c in self.cores):
                return
            req = self._rearming[i] = _Core(-1)
            req.mode = _HANDLER
            req.gen = p.rearm_steps(i)  # type: ignore[assignment]
            req.op = None
        elif req.op is not None:
            op = req.op
            if op[0] == STORE:
                self.mem.store(op[1], op[2])  # type: ignore[arg-type]
            elif not self._sync(req):
                return
        try:
            req.op = next(req.gen)  # type: ignore[arg-type]
        except StopIteration as stop:
            if stop.value:
                self.result.rearms += 1
            del self._rearming[i]
            self.closed.discard(i)

    def _violate(self, core: _Core, kind: str, detail: str) -> None:
        c = self.mem.chunk
        trace = [f"t={t} {pc:#x}: {b.hex(' ')} chunks {[(hex(k * c), tt) for k, tt in ch]} -> "
                 f"{effect_text(e) if e else 'nop'}" for t, pc, b, ch, e in core.trace]
        p = self.patcher.site_patch(core.site) if core.site >= 0 else None
        if p is not None:
            trace.append(f"site {core.site} at {p.code_address:#x}: original {p.original.hex(' ')}, final "
                         f"{p.final.hex(' ')}, plan " + ", ".join(f"{o}:{d.hex()}" if d else "sync" for o, d in p.steps))
        self.result.violations.append(Violation(kind, detail, core.id, core.site, core.pc, self.mem.now, trace))
        core.mode = _ENTER
        core.fetching = False
        core.gen = None


def _check_target(effects: list[tuple[object, ...]], target: object, form: str, i: int) -> None:
    """The final code must call where the registry says (the fill is part of what is checked)."""
    from .registry import Target

    assert isinstance(target, Target)
    calls = [e for e in effects if e[0] in ("callf", "callgate", "call")]
    if len(calls) != 1:
        raise ValueError(f"site {i}: the final code has {len(calls)} calls")
    c = calls[0]
    if form in ("far", "undefined"):
        ok = c[0] == "callf" and c[1] == target.selector and c[2] == target.offset
    elif form == "callgate":
        ok = c[0] == "callgate" and c[1] == target.selector
    else:
        ok = c[0] == "call" and c[1] == target.target
    if not ok:
        raise ValueError(f"site {i}: the final code calls {effect_text(c)}, the registry says {target.describe()}")


# ---------------------------------------------------------------------------------------------
# Building a simulated image: sites, plans, registry


@dataclass(frozen=True)
class SiteSpec:
    """One site of a simulated image: ``shape`` at ``address`` (in the region of its bitness)
    patched to ``form``; ``gap`` filler bytes before it (0: right after the previous site)."""

    shape: str
    form: str
    gap: int = 0
    bits: int | None = None


FILLER = bytes.fromhex("7304 33c0 eb05 b801000000 c3 90")  # what the C headers put after a stub


def plan_template(shape: str, address: int, form: str, model: FetchModel, policy: Policy,
                  bitness: int | None = None, builder: str | None = None) -> PlanTemplate | None:
    """The table's plan template for one site: the cheapest proven plan (``builder`` None) or a
    named builder's plan, proven or not (for showing the simulator's power). None where the
    form does not fit or no plan exists."""
    sf = "far" if form == "undefined" else form
    try:
        site = make_site(shape, sf, address, bitness)
    except FormError:
        return None
    if builder is None:
        chosen = choose(shape, address, sf, model, policy, bitness)
        if chosen.plan is None:
            return None
        plan, final = chosen.plan, chosen.site.final
    else:
        built = BUILDERS[builder](site, model)
        if built is None:
            return None
        plan, final = built.plan, built.site.final
    steps = tuple(PlanStep(st.offset, tuple(st.data)) if isinstance(st, Write) else PlanStep(0, ())
                  for st in plan.steps)
    rel = [i for i, a in enumerate(final) if is_var(a) and var_field(a) == "rel"]
    rel_end = max(rel, key=lambda i: var_index(final[i])) + 1 if rel else None
    return PlanTemplate(shape, sf, site.bitness, tuple(final), steps, shape_by_id(shape).call_at, rel_end)


@dataclass
class SimImage:
    """A simulated image: its table, registry, memory and the site specs it came from."""

    table: PatchTable
    registry: Registry
    memory: SimMemory
    specs: list[SiteSpec]


REGION32 = 0x10000
REGION16 = 0x20000


def build_image(specs: Sequence[SiteSpec], model: FetchModel = DEFAULT_MODEL, policy: Policy = RDOS_POLICY,
                builder: str | None = None, seed: int = 1, forms: Sequence[str] = ("far", "callgate", "near", "pushcs"),
                undefined: Sequence[int] = (), all_forms: bool = False) -> SimImage:
    """Lay ``specs`` out in a 32-bit region at ``REGION32`` and a 16-bit one at ``REGION16``
    (each site right after the previous one of its region, after ``gap`` filler bytes), give
    every site its own gate, make the table (plans from :func:`plan_template`) and a registry
    that sends each gate to its spec's form with random operands in the proven domains; sites
    whose index is in ``undefined`` get no registry entry (the undefined form), where they can
    take a far call. Plans are made
    for the spec's form and ``far`` only (synthesis is what costs), or for every form of
    ``forms`` with ``all_forms``."""
    rng = random.Random(seed)
    forms = tuple(forms)
    layout: dict[int, list[tuple[int, SiteSpec, int]]] = {32: [], 16: []}
    pos = {32: 16, 16: 16}
    for n, sp in enumerate(specs):
        shp = shape_by_id(sp.shape)
        bits = sp.bits or shp.bitness or 32
        pos[bits] += sp.gap
        layout[bits].append((n, sp, pos[bits]))
        pos[bits] += shp.length
    regions: list[TableRegion] = []
    blobs: list[bytearray] = []
    bases = {32: REGION32, 16: REGION16}
    for bits in (32, 16):
        size = (pos[bits] + 64 + 63) // 64 * 64
        blob = bytearray((FILLER * (size // len(FILLER) + 1))[:size])
        regions.append(TableRegion(f"code{bits}", bases[bits], bases[bits] - REGION32, size, bits))
        blobs.append(blob)
    sites: list[tuple[int, TableSite]] = []
    plans: list[PlanTemplate] = []
    plan_index: dict[PlanTemplate, int] = {}
    lines = ["version = 1", "[undefined]", "selector = 0x0408", "offset = 0x00000010"]
    fsel = sorted(RDOS_SELECTORS.values or ())
    gsel = sorted(RDOS_CALL_GATES.values or ())
    kinds_used: dict[str, int] = {}
    for ri, bits in enumerate((32, 16)):
        for n, sp, off in layout[bits]:
            shp = shape_by_id(sp.shape)
            addr = bases[bits] + off
            kind = (shp.kind_of(shp.selectors[0] if shp.selectors else None) or shp.kind)
            kv = kind.value if kind is not None else "os"
            gate = kinds_used.get(kv, 100) + 1
            kinds_used[kv] = gate
            if shp.gate_size == 2:
                gate &= 0xFFFF
            orig = stub_bytes(shp, gate)
            blobs[ri][off : off + len(orig)] = orig
            idxs: list[int | None] = []
            needs_sync = False
            for f in forms:
                if not all_forms and f not in (sp.form, "far"):
                    idxs.append(None)
                    continue
                tpl = plan_template(sp.shape, addr, f, model, policy, bits, builder if f == "far" else None)
                if tpl is None:
                    idxs.append(None)
                    continue
                i = plan_index.get(tpl)
                if i is None:
                    i = plan_index[tpl] = len(plans)
                    plans.append(tpl)
                idxs.append(i)
                needs_sync |= tpl.syncs > 0
            flags = FLAG_LAZY | (FLAG_NEEDS_SYNC if needs_sync else 0)
            sites.append((n, TableSite(ri, addr, off + regions[ri].file_offset, sp.shape, gate, kv,
                                       shp.selectors[0] if shp.selectors else None, "certain", flags, orig,
                                       tuple(idxs))))
            if n in undefined and "far" in forms and idxs[forms.index("far")] is not None:
                continue  # no entry: the undefined handler (a far call), where the site can take one
            form = sp.form
            lines.append(f"[gate.{kv}.{gate}]")
            lines.append(f'form = "{form}"')
            if form == "far":
                lines += [f"selector = {rng.choice(fsel):#06x}", f"offset = {rng.getrandbits(32):#010x}"]
            elif form == "callgate":
                lines.append(f"selector = {rng.choice(gsel):#06x}")
            elif form in ("near", "pushcs"):
                lines.append(f"target = {rng.getrandbits(32 if bits == 32 else 16) | 0:#010x}")
    sites.sort(key=lambda t: (t[1].region, t[1].address))
    from ..table.check import form_domains

    data = bytes(blobs[0] + blobs[1])
    import hashlib

    table = PatchTable("sim", Identity(len(data), hashlib.sha256(data).digest()), model, policy,
                       dict(form_domains(forms, None)[forms[0]]), forms, regions, [s for _, s in sites], plans,
                       form_domains=form_domains(forms, None))
    # one memory spanning both regions (the gap between them is filler nobody runs)
    span = REGION16 + len(blobs[1]) - REGION32
    mem_bytes = bytearray((FILLER * (span // len(FILLER) + 1))[:span])
    mem_bytes[0 : len(blobs[0])] = blobs[0]
    mem_bytes[REGION16 - REGION32 :] = blobs[1]
    registry = parse_registry("\n".join(lines) + "\n", "<sim registry>")
    return SimImage(table, registry, SimMemory(REGION32, bytes(mem_bytes), model.chunk), list(specs))


def standard_specs(model: FetchModel, seed: int = 1, n: int = 24, forms: Sequence[str] = ("far", "callgate", "near", "pushcs"),
                   shapes: Sequence[str] | None = None) -> list[SiteSpec]:
    """A random mix of ``n`` sites: every current and legacy shape that fits, every form that
    fits it, gaps of 0..9 bytes so neighbours share chunks and alignments vary."""
    rng = random.Random(seed)
    pool = list(shapes) if shapes is not None else ["A", "B", "C", "D", "E", "F", "G", "H", "I", "L7", "L8", "L7P",
                                                      "L8P", "U5", "U7"]
    out: list[SiteSpec] = []
    while len(out) < n:
        sh = rng.choice(pool)
        fits = [f for f in forms if _fits(sh, f)]
        if not fits:
            continue
        out.append(SiteSpec(sh, rng.choice(fits), rng.choice((0, 0, 0, 1, 2, 3, 5, 9))))
    return out


def _fits(shape: str, form: str) -> bool:
    try:
        make_site(shape, form)
        return True
    except FormError:
        return False


def image_memory(table: PatchTable, data: bytes, chunk: int, regions: Sequence[int] | None = None) -> SimMemory:
    """A simulated memory holding ``regions`` (default: all) of an image file's bytes at their
    table (link) addresses, for running the simulator on a real table. The regions must not
    overlap in addresses (give ``regions`` for a boot image, whose drivers all start at 0)."""
    idx = list(regions) if regions is not None else list(range(len(table.regions)))
    rs = sorted((table.regions[i] for i in idx), key=lambda r: r.address)
    for a, b in itertools.pairwise(rs):
        if a.address + a.size > b.address:
            raise ValueError(f"regions {a.name} and {b.name} overlap in addresses: choose one")
    base = rs[0].address // LINE * LINE
    end = rs[-1].address + rs[-1].size
    buf = bytearray(end - base + LINE)
    for r in rs:
        buf[r.address - base : r.address - base + r.size] = data[r.file_offset : r.file_offset + r.size]
    return SimMemory(base, bytes(buf), chunk)


def simulate(image: SimImage, executions: int, config: SimConfig | None = None,
             stop_on_violation: bool = True, max_steps: int | None = None) -> SimResult:
    """Run ``executions`` site executions over ``image`` (a fresh memory copy each call)."""
    mem = SimMemory(image.memory.base, bytes(image.memory.data), image.memory.chunk)
    sim = Simulator(image.table, image.registry, mem, config)
    return sim.run(executions, max_steps, stop_on_violation)


__all__ = [
    "SCHEDULES",
    "VERSIONS",
    "Cpu",
    "SimConfig",
    "SimImage",
    "SimMemory",
    "SimResult",
    "Simulator",
    "SiteSpec",
    "Violation",
    "build_image",
    "image_memory",
    "plan_template",
    "simulate",
    "standard_specs",
]
