"""Synthesis: a safe plan with the fewest syncs, then the fewest writes, exhaustive within a bound.

The bound (docs/safety.md, "Synthesis"):

* The changed bytes of the site are grouped into *units*: a run of changed bytes of one field
  (offset, selector, rel32, ...) inside one fetch chunk and one possible store. Each unit is
  written once, with its final bytes. The first byte of the trapping instruction (the *trap byte*) may additionally be
  set once to ``CC`` (INT3) or ``CD`` (INT n, the next byte being the vector) and later set to
  its final value.
* A write stores one or more units and/or the trap byte in one 1/2/4/8-byte store inside the
  site that does not cross a 64-byte line (bytes in between keep their value).
* At most ``MAX_SYNCS`` syncs and ``MAX_WRITES`` writes; a sync only after a write, never last.

Within the bound the search is exhaustive, cheapest first (iterative deepening on syncs, then
writes). Two prunings keep it exact:

* *merge*: two consecutive writes of one epoch whose bytes fit one store are never both taken.
  The merged plan's states are a subsequence of the original's, so every execution of the merged
  plan is one of the original's: it is at least as safe and one write cheaper.
* *mix*: with no sync left, the epoch's first state and the final state are both visible until
  the end, so a core may combine their chunks; if that combination alone is unsafe
  (``mix(X, F)``), no continuation is safe.
Every prefix is checked too: a violation in a prefix is a violation of each plan extending it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..catalog import shape as shape_by_id
from .checker import Checker
from .model import LINE, STORE_SIZES, SYNC, Atom, FetchModel, PatchSite, Plan, Policy, Step, Write, is_var, var_field

MAX_SYNCS = 3
MAX_WRITES = 6
TRAP_BYTES = (0xCC, 0xCD)


@dataclass(frozen=True)
class Unit:
    positions: tuple[int, ...]


@dataclass
class SynthResult:
    plan: Plan | None
    syncs: int | None  # minimal within the bound (None: no plan within it)
    writes: int | None
    nodes: int  # plan prefixes examined
    explored: int  # views explored by the checker over all prefixes
    proof: str  # how minimality was established


def units(site: PatchSite, model: FetchModel) -> tuple[int, list[Unit]]:
    """The trap byte's offset and the units of ``site`` under ``model``."""
    t = shape_by_id(site.shape).call_at
    c = model.chunk
    out: list[Unit] = []
    cur: list[int] = []

    def kind(i: int) -> str:
        a = site.final[i]
        return var_field(a) if is_var(a) else "fixed"

    for i in range(site.length):
        changed = site.original[i] != site.final[i] and i != t
        if cur and (not changed or (site.address + i) % c == 0 or kind(i) != kind(cur[-1])):
            out.append(Unit(tuple(cur)))
            cur = []
        if changed:
            cur.append(i)
    if cur:
        out.append(Unit(tuple(cur)))
    # A unit no single store can hold (a line boundary, or the site's end, in the way) is split
    # into the longest pieces that fit one store each.
    fitted: list[Unit] = []
    for u in out:
        piece: list[int] = []
        for p in u.positions:
            if piece and store_for(site, [*piece, p]) is None:
                fitted.append(Unit(tuple(piece)))
                piece = []
            piece.append(p)
        fitted.append(Unit(tuple(piece)))
    return t, fitted


def store_for(site: PatchSite, positions: list[int] | tuple[int, ...]) -> tuple[int, int] | None:
    """(offset, size) of one store covering ``positions``: inside the site, not crossing a
    line, aligned when possible; None if none exists."""
    lo, hi = min(positions), max(positions) + 1
    for size in STORE_SIZES:
        if size < hi - lo:
            continue
        starts = [s for s in range(hi - size, lo + 1) if 0 <= s and s + size <= site.length
                  and (site.address + s) // LINE == (site.address + s + size - 1) // LINE]
        if starts:
            starts.sort(key=lambda s: ((site.address + s) % size != 0, s))
            return starts[0], size
    return None


class Synthesizer:
    def __init__(self, site: PatchSite, model: FetchModel, policy: Policy,
                 max_syncs: int = MAX_SYNCS, max_writes: int = MAX_WRITES,
                 prune_merge: bool = True, prune_mix: bool = True) -> None:
        self.site = site
        self.model = model
        self.checker = Checker(site, model, policy)
        self.t, self.units = units(site, model)
        self.max_syncs = max_syncs
        self.max_writes = max_writes
        # The prunings can be switched off to test that they lose no optimal plan.
        self.prune_merge = prune_merge
        self.prune_mix = prune_mix
        self.O = site.original
        self.F = site.final
        self._check_cache: dict[tuple[object, ...], bool] = {}
        self._mix_cache: dict[tuple[Atom, ...], bool] = {}
        self.nodes = 0
        self.explored = 0
        self._store_cache: dict[frozenset[int], tuple[int, int] | None] = {}
        # Prefixes already searched in vain: key -> (syncs left, writes left or None when the
        # search never ran out of writes). Iterative deepening revisits prefixes with larger
        # budgets; a failure that never hit the write limit fails for every write budget.
        self._failed: dict[tuple[object, ...], tuple[int, int | None]] = {}
        self._limited = False
        # Trap byte values: original, a trap, final.
        self.trap_values = [v for v in TRAP_BYTES if v != self.O[self.t] and v != self.F[self.t]]

    # -- states -----------------------------------------------------------------------------

    def _state(self, done: frozenset[int], trap: int) -> tuple[Atom, ...]:
        s = list(self.O)
        for u in done:
            for i in self.units[u].positions:
                s[i] = self.F[i]
        s[self.t] = trap
        return tuple(s)

    def _safe(self, states: list[tuple[Atom, ...]], syncs: tuple[int, ...]) -> bool:
        key = (tuple(states), syncs)
        r = self._check_cache.get(key)
        if r is None:
            res = self.checker.check_states(states, syncs)
            self.explored += res.explored
            r = res.safe
            self._check_cache[key] = r
        return r

    def _store(self, positions: list[int] | tuple[int, ...]) -> tuple[int, int] | None:
        key = frozenset(positions)
        if key not in self._store_cache:
            self._store_cache[key] = store_for(self.site, positions)
        return self._store_cache[key]

    def _mix_ok(self, x: tuple[Atom, ...]) -> bool:
        r = self._mix_cache.get(x)
        if r is None:
            r = x == self.F or self._safe([x, self.F], ())
            self._mix_cache[x] = r
        return r

    # -- search -----------------------------------------------------------------------------

    def run(self) -> SynthResult:
        for s in range(self.max_syncs + 1):
            for w in range(1, self.max_writes + 1):
                found = self._dfs(frozenset(), self.O[self.t], False, [self.O], (), [self.O], s, w, None)
                if found is not None:
                    plan = Plan(tuple(found), "synthesis", f"fewest syncs ({s}), then fewest writes ({w}), "
                                                           f"within {self.max_syncs} syncs / {self.max_writes} writes")
                    proof = (f"no plan with fewer than {s} syncs, nor with {s} syncs and fewer than {w} writes, "
                             f"exists in the bound ({self.nodes} prefixes examined)")
                    return SynthResult(plan, s, w, self.nodes, self.explored, proof)
        return SynthResult(None, None, None, self.nodes, self.explored,
                           f"no safe plan within {self.max_syncs} syncs and {self.max_writes} writes")

    def _dfs(self, done: frozenset[int], trap: int, trap_used: bool, states: list[tuple[Atom, ...]],
             syncs: tuple[int, ...], epoch: list[tuple[Atom, ...]], syncs_left: int, writes_left: int,
             last: tuple[int, ...] | None) -> list[Step] | None:
        cur = states[-1]
        if cur == self.F:
            return []
        if writes_left == 0:
            self._limited = True
            return None
        key = (tuple(states), syncs, last)
        prev = self._failed.get(key)
        if prev is not None and prev[0] >= syncs_left and (prev[1] is None or prev[1] >= writes_left):
            return None
        outer = self._limited
        self._limited = False
        found = self._search(done, trap, trap_used, states, syncs, epoch, syncs_left, writes_left, last)
        if found is None:
            self._failed[key] = (syncs_left, writes_left if self._limited else None)
        self._limited = outer or self._limited
        return found

    def _search(self, done: frozenset[int], trap: int, trap_used: bool, states: list[tuple[Atom, ...]],
                syncs: tuple[int, ...], epoch: list[tuple[Atom, ...]], syncs_left: int, writes_left: int,
                last: tuple[int, ...] | None) -> list[Step] | None:
        cur = states[-1]
        self.nodes += 1
        if self.prune_mix and syncs_left == 0 and not self._mix_ok(epoch[0]):
            return None
        pending = [u for u in range(len(self.units)) if u not in done]
        # Every pending unit and an unfinished trap byte each need a store; stores hold at most 8
        # bytes, so this many writes at least.
        if writes_left < (1 if pending or trap != self.F[self.t] else 0):
            return None
        for pos, new_done, new_trap, used in self._moves(done, trap, trap_used, pending):
            if self.prune_merge and last is not None and self._store(tuple(pos) + last) is not None:
                continue  # the merge pruning: one store would do both
            nxt = self._state(new_done, new_trap)
            if nxt in epoch:
                continue
            new_states = states + [nxt]
            if not self._safe(new_states, syncs):
                continue
            blk = self._store(pos)
            assert blk is not None
            off, size = blk
            step = Write(off, nxt[off : off + size])
            rest = self._dfs(new_done, new_trap, used, new_states, syncs, epoch + [nxt], syncs_left,
                             writes_left - 1, tuple(pos))
            if rest is not None:
                return [step, *rest]
        if syncs_left > 0 and last is not None:
            k = len(states) - 1
            rest = self._dfs(done, trap, trap_used, states, syncs + (k,), [cur], syncs_left - 1, writes_left, None)
            if rest is not None:
                return [SYNC, *rest]
        return None

    def _moves(self, done: frozenset[int], trap: int, trap_used: bool, pending: list[int]):
        """Candidate writes: a set of pending units, optionally with a trap-byte change, that
        fits one store. Yields (positions, done after, trap after, trap used after)."""
        t = self.t
        trap_opts: list[tuple[int | None, bool]] = [(None, trap_used)]
        if trap != self.F[t]:
            trap_opts.append((self.F[t], trap_used))
        if not trap_used and trap == self.O[t]:
            trap_opts += [(v, True) for v in self.trap_values]
        n = len(pending)
        for mask in range(1 << n):
            chosen = [pending[i] for i in range(n) if mask >> i & 1]
            base = [p for u in chosen for p in self.units[u].positions]
            for tv, used in trap_opts:
                pos = base + ([t] if tv is not None else [])
                if not pos:
                    continue
                if self._store(pos) is None:
                    continue
                yield pos, done | frozenset(chosen), trap if tv is None else tv, used


def synthesize(site: PatchSite, model: FetchModel, policy: Policy,
               max_syncs: int = MAX_SYNCS, max_writes: int = MAX_WRITES) -> SynthResult:
    return Synthesizer(site, model, policy, max_syncs, max_writes).run()
