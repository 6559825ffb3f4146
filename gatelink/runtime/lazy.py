"""Patching on first fault: the fault handler's half of the runtime (``docs/runtime.md``,
"Lazy patching").

Every site has a state word: ``UNTOUCHED`` (original bytes), ``PATCHING`` (one core owns it and
runs its plan), ``DONE`` (final bytes, and no core can still hold a view of an older state),
``FOREIGN`` (its bytes were neither original nor final, or the table has no plan for it:
never patched, faults go to the default handler). A fault inside a site is the patcher's when the *first* read of the site's
state after the fault finds it ``UNTOUCHED`` (and the fault is the original stub's, at its
trap point) or ``PATCHING`` (any trap a view of the plan's states can raise); then the core
resumes at the trap point ``P`` once the site is ``DONE``. Otherwise it is not ours: the
default handler runs at once, so a real fault never loops.

That rule is sound only because a site becomes ``DONE`` after a *retire sync* (unless the
plan already ends with one): a core that trapped on an older state reads the site's state
before it can acknowledge that sync (the fault handler runs with interrupts disabled until
then), so it reads ``PATCHING``, never ``DONE``.

The protocol is written once, as generators that yield the memory operations they need
(:data:`STORE`, :data:`SYNC`, :data:`SPIN`): :meth:`LazyPatcher.on_fault` runs one to the
end against a :class:`~.memory.Memory`; the simulator (:mod:`.sim`) interleaves them with
other cores' instruction fetches one operation at a time.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Generator
from enum import IntEnum
from typing import NamedTuple

from ..table.model import PatchTable
from .instance import Binder, SitePatch
from .memory import Memory, Placement
from .registry import Registry

# Site states (one byte per site; the C runtime uses the same values in a u32 or u8 word).
UNTOUCHED = 0
PATCHING = 1
DONE = 2
FOREIGN = 3
STATE_NAMES = ("untouched", "patching", "done", "foreign")

# Operations the protocol generators yield.
STORE = 0  # (STORE, memory address, data): one atomic store of 1, 2, 4 or 8 bytes
SYNC = 1  # (SYNC,): serialise every other core
SPIN = 2  # (SPIN,): wait a little (pause) and look again
_SYNC_OP = (SYNC,)
_SPIN_OP = (SPIN,)

Op = tuple[int, ...] | tuple[int, int, bytes]


class Trap(IntEnum):
    """How the CPU reported the fault, which says where the trapping instruction starts.

    ``FAULT`` (#GP, #UD, #NP...): ``address`` is the faulting instruction's first byte,
    prefixes included. ``INT3``: ``address`` is the return address; the ``CC`` byte is one
    before it. ``INT`` (``INT n`` on one of the policy's vectors): the return address; the
    ``CD`` byte is two before it.
    """

    FAULT = 0
    INT3 = 1
    INT = 2


_BACKUP = {Trap.FAULT: 0, Trap.INT3: 1, Trap.INT: 2}


class Outcome(NamedTuple):
    """What the fault handler does next.

    ``resume``: the code address to resume at (write it into the fault frame's EIP and
    return), or None: the fault is not the patcher's and the default handler must run.
    ``site``: the index of the site the fault lies in (None outside every site).
    ``action``: ``patched`` (this call ran the plan), ``waited`` (another core did),
    ``default``.
    """

    resume: int | None
    site: int | None
    action: str


_DEFAULT_OUTSIDE = Outcome(None, None, "default")


class LazyPatcher:
    """The fault handler's runtime over one table, one memory and one registry.

    ``placement`` says where the table's regions are (default: linked addresses, memory
    flat). Site states start from what ``memory`` holds (``initial="memory"``: original bytes
    are ``UNTOUCHED``, the registry's final bytes ``DONE``, anything else ``FOREIGN``) or all
    ``UNTOUCHED`` (``initial="untouched"``, no reads). Every site's target is resolved and
    checked against the proven domains up front, so a bad registry fails here, not in a fault
    handler. ``default_handler(address, trap)``, when given, is called for every fault that is
    not the patcher's.
    """

    def __init__(self, table: PatchTable, memory: Memory, registry: Registry, placement: Placement | None = None,
                 default_handler: Callable[[int, Trap], object] | None = None, initial: str = "memory") -> None:
        if initial not in ("memory", "untouched"):
            raise ValueError("initial must be 'memory' or 'untouched'")
        self.table = table
        self.memory = memory
        self.placement = placement or Placement.linked(table)
        self.binder = Binder(table, registry, self.placement)
        self.default_handler = default_handler
        self.policy = table.policy
        n = len(table.sites)
        self.state = bytearray(n)
        self._patches: list[SitePatch | None] = [None] * n
        self._lock = threading.Lock()
        # Per region: code addresses of its sites (sorted: the table sorts by region, address).
        nr = len(table.regions)
        self._rlo = [self.placement.code[r] for r in range(nr)]
        self._rhi = [self.placement.code[r] + table.regions[r].size for r in range(nr)]
        self._starts: list[list[int]] = [[] for _ in range(nr)]
        self._ends: list[list[int]] = [[] for _ in range(nr)]
        self._index: list[list[int]] = [[] for _ in range(nr)]
        for i, s in enumerate(table.sites):
            a = self.placement.code[s.region] + (s.address - table.regions[s.region].address)
            self._starts[s.region].append(a)
            self._ends[s.region].append(a + s.length)
            self._index[s.region].append(i)
        bind = self.binder.bind
        final = self.binder.final
        state = self.state
        for i, s in enumerate(table.sites):
            if bind(s) is None:
                state[i] = FOREIGN  # the table has no plan for it: never patched
            elif initial == "memory":
                addr, fin = final(i)  # type: ignore[misc]
                cur = memory.read(addr, s.length)
                state[i] = UNTOUCHED if cur == s.original else DONE if cur == fin else FOREIGN
        self.pause = _pause

    # -- lookups ------------------------------------------------------------------------------

    def find(self, address: int, region: int | None = None) -> int | None:
        """The index of the site whose bytes contain code address ``address`` (binary search);
        None outside every site. Where regions overlap in code addresses (a boot image's
        drivers each have their own segment), give ``region``: otherwise the first region
        holding a site there wins."""
        regions = (region,) if region is not None else range(len(self._starts))
        for r in regions:
            if not self._rlo[r] <= address < self._rhi[r]:
                continue
            starts = self._starts[r]
            k = bisect.bisect_right(starts, address) - 1
            if k >= 0 and address < self._ends[r][k]:
                return self._index[r][k]
        return None

    def site_patch(self, i: int) -> SitePatch:
        """Site ``i`` made concrete (cached; computing it twice in a race is harmless)."""
        p = self._patches[i]
        if p is None:
            p = self.binder.patch(i)
            assert p is not None, "a site without a plan is FOREIGN and never patched"
            self._patches[i] = p
        return p

    def cas(self, i: int, old: int, new: int) -> bool:
        """Compare-and-set of site ``i``'s state word (``lock cmpxchg`` in the C runtime)."""
        with self._lock:
            if self.state[i] != old:
                return False
            self.state[i] = new
            return True

    # -- the protocol -------------------------------------------------------------------------

    def fault_steps(self, address: int, trap: Trap = Trap.FAULT,
                    region: int | None = None) -> Generator[Op, None, Outcome]:
        """The fault handler, one memory operation at a time (see the module docstring)."""
        if trap is Trap.INT3 and not self.policy.int3:
            return _DEFAULT_OUTSIDE
        if trap is Trap.INT and not self.policy.int_vectors:
            return _DEFAULT_OUTSIDE
        P = address - _BACKUP[trap]
        i = self.find(P, region)
        if i is None:
            return _DEFAULT_OUTSIDE
        state = self.state
        s = state[i]  # the first read: it decides whose fault this is
        if s == UNTOUCHED:
            sp = self.site_patch(i)
            if trap is not Trap.FAULT or P != sp.code_address + sp.resume:
                return Outcome(None, i, "default")  # not the stub's trap: a real fault
            if self.cas(i, UNTOUCHED, PATCHING):
                if self.memory.read(sp.address, sp.length) != sp.original:
                    state[i] = FOREIGN  # someone else changed the code: never patch it
                    return Outcome(None, i, "default")
                base = sp.address
                for off, data in sp.steps:
                    yield (STORE, base + off, data) if data else _SYNC_OP
                if not sp.steps or sp.steps[-1][1]:
                    yield _SYNC_OP  # the retire sync: no core can hold an older view after it
                state[i] = DONE  # a release store in the C runtime
                return Outcome(P, i, "patched")
            s = PATCHING  # lost the claim: the winner owns the site now
        if s == PATCHING:
            while state[i] == PATCHING:
                yield _SPIN_OP
            if state[i] == DONE:
                return Outcome(P, i, "waited")
        return Outcome(None, i, "default")

    def on_fault(self, address: int, trap: Trap = Trap.FAULT, region: int | None = None) -> Outcome:
        """Handle a fault at ``address`` (as the CPU reported it, see :class:`Trap`): patch the
        site or wait for the core that does, and say where to resume; or hand the fault to
        the default handler."""
        out = self.run(self.fault_steps(address, trap, region))
        if out.resume is None and self.default_handler is not None:
            self.default_handler(address, trap)
        return out

    def run(self, gen: Generator[Op, None, Outcome]) -> Outcome:
        """Run a protocol generator to the end against :attr:`memory`."""
        mem = self.memory
        try:
            op = next(gen)
            while True:
                k = op[0]
                if k == STORE:
                    mem.store(op[1], op[2])  # type: ignore[arg-type, misc]
                elif k == SYNC:
                    mem.sync()
                else:
                    self.pause()
                op = next(gen)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    def rearm_steps(self, i: int) -> Generator[Op, None, bool]:
        """Put site ``i`` back to its original bytes and state ``UNTOUCHED`` (for the simulator
        and test harnesses that repeat first faults). The caller guarantees that no core
        executes inside the site meanwhile (all others parked outside it). False if the site
        was not ``DONE`` or does not hold its final bytes."""
        if not self.cas(i, DONE, PATCHING):
            return False
        sp = self.site_patch(i)
        if self.memory.read(sp.address, sp.length) != sp.final:
            self.state[i] = DONE
            return False
        for a, piece in _pieces(sp.address, sp.original):
            yield (STORE, a, piece)
        yield _SYNC_OP
        self.state[i] = UNTOUCHED
        return True

    def rearm(self, i: int) -> bool:
        g = self.rearm_steps(i)
        mem = self.memory
        try:
            op = next(g)
            while True:
                if op[0] == STORE:
                    mem.store(op[1], op[2])  # type: ignore[arg-type, misc]
                else:
                    mem.sync()
                op = next(g)
        except StopIteration as stop:
            return bool(stop.value)

    def states(self) -> dict[str, int]:
        """How many sites are in each state."""
        out = {n: 0 for n in STATE_NAMES}
        for s in self.state:
            out[STATE_NAMES[s]] += 1
        return out


def _pieces(addr: int, data: bytes) -> list[tuple[int, bytes]]:
    """``data`` at ``addr`` as naturally aligned 8/4/2/1-byte stores (none crosses a line)."""
    out = []
    pos = 0
    while pos < len(data):
        for n in (8, 4, 2, 1):
            if pos + n <= len(data) and (addr + pos) % n == 0:
                out.append((addr + pos, data[pos : pos + n]))
                pos += n
                break
    return out


def _pause() -> None:
    time.sleep(0)  # let the patching thread run (the C runtime: the pause instruction)


__all__ = ["DONE", "FOREIGN", "PATCHING", "SPIN", "STATE_NAMES", "STORE", "SYNC", "UNTOUCHED", "LazyPatcher",
           "Outcome", "Trap"]
