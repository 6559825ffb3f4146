"""The model checker: does a plan keep every core safe while it runs? (docs/safety.md)

It explores every way a core can run through the site while the plan executes, under a fetch
model ``(chunk, order)``, and returns ``safe`` or a witness execution.

A core's situation is ``(P, j, epoch, seen)``: it is about to fetch at site offset ``P``, has
performed effects ``E1..Ej`` of the final code, cannot see states before the last sync of
``epoch``, and has seen each chunk at some state (coherence: never an older one again). For the
instruction at ``P`` the checker enumerates every *view*: one state per chunk the instruction
touches, within the epoch, not older than seen, and (``monotone``) non-decreasing with address.
Two choices with the same chunk contents differ only in how much they constrain later fetches,
and the earlier state constrains less, so only the earliest state of each distinct content is
tried: this is exact, not an approximation. Views are built chunk by chunk only as far as the
instruction's bytes reach.

Template plans carry unknown bytes (offset, selector, rel32, gate number, following code).
Bytes that decide an instruction's form are enumerated over their domain; bytes in immediates
stay symbolic, and a far call is checked for every selector value in the domain (trap, correct
call, or wrong call). Comparisons of offsets and targets are exact for independent bytes; where
one unknown byte would be read twice, both reads are treated as independent (sound: it can only
find more violations).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import product

from ..decode import NEED_MORE, Decoded, Kind, decode_view
from .model import (
    Atom,
    FetchModel,
    Order,
    PatchSite,
    Plan,
    Policy,
    atoms_text,
    is_var,
    var_field,
    var_index,
)

# Outcome kinds of one decoded view
TRAP = "trap"
MATCH = "match"
NOEFFECT = "none"

Effect = tuple[object, ...]


class PlanError(ValueError):
    """The plan is malformed (wrong store sizes, crosses a line, does not end at the final)."""


@dataclass
class Fetch:
    """One instruction a core fetched in a witness execution."""

    offset: int  # site offset
    address: int
    atoms: tuple[Atom, ...]
    states: tuple[int, ...]  # state index per chunk, low address first
    epoch: int
    text: str
    outcome: str

    def to_json(self) -> dict[str, object]:
        return {"address": self.address, "bytes": atoms_text(self.atoms), "states": list(self.states),
                "epoch": self.epoch, "instruction": self.text, "outcome": self.outcome}


@dataclass
class Witness:
    """An execution that breaks the property, and why."""

    fetches: list[Fetch]
    reason: str  # "wrong call", "stray effect", "skipped effect", "bad resume", "invalid instruction", ...
    detail: str

    @property
    def last(self) -> Fetch | None:
        return self.fetches[-1] if self.fetches else None

    def to_json(self) -> dict[str, object]:
        last = self.last
        return {
            "reason": self.reason,
            "detail": self.detail,
            "position": last.address if last else None,
            "bytes": atoms_text(last.atoms) if last else "",
            "states": list(last.states) if last else [],
            "instruction": last.text if last else "",
            "execution": [f.to_json() for f in self.fetches],
        }

    def describe(self) -> str:
        lines = [f"{self.reason}: {self.detail}"]
        for f in self.fetches:
            lines.append(f"  {f.address:#x}: {atoms_text(f.atoms):<32} states {list(f.states)} epoch {f.epoch}: "
                         f"{f.text} -> {f.outcome}")
        return "\n".join(lines)


@dataclass
class CheckResult:
    safe: bool
    witness: Witness | None = None
    explored: int = 0  # instruction fetches (views) explored
    situations: int = 0


class _Violation(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


@dataclass
class _Decoding:
    """A view's instruction with symbolic operands, once its form no longer depends on unknowns."""

    d: Decoded
    atoms: tuple[Atom, ...]  # the instruction's bytes (unknowns that only sit in immediates kept)
    pins: dict[Atom, int] = field(default_factory=dict)


class Checker:
    """Checks plans for one site under one model and policy; reusable across plans (caches)."""

    def __init__(self, site: PatchSite, model: FetchModel, policy: Policy) -> None:
        self.site = site
        self.model = model
        self.policy = policy
        self.A = site.address
        self.L = site.length
        self.bits = site.bitness
        self.chunk = model.chunk
        self.monotone = model.order is Order.MONOTONE
        self.first_chunk = self.A // self.chunk
        self.nchunks = (self.A + self.L - 1) // self.chunk - self.first_chunk + 1
        self.ctx = site.context
        self._decode_cache: dict[tuple[tuple[int, ...], int], Decoded | str | None] = {}
        self._far_cache: dict[tuple[object, ...], tuple[set[str], str]] = {}
        self._all_cache: dict[tuple[tuple[Atom, ...], int], list[_Decoding] | str] = {}
        self._out_cache: dict[tuple[object, ...], tuple[set[str], str]] = {}
        self.expected = self._effects_from(0)
        if self.expected is None:
            raise PlanError(f"the final code {atoms_text(site.final)} does not decode cleanly as non-trapping code")
        self._resume = [self._effects_from(r) for r in range(self.L)]

    # -- the final code ---------------------------------------------------------------------

    def _effects_from(self, r: int) -> list[Effect] | None:
        """Effects of the final code run from site offset ``r`` to its end, or None if it does
        not run cleanly there (unknown bytes deciding a form, a trap, not landing on the end)."""
        atoms = self.site.final + self.ctx
        out: list[Effect] = []
        pos = r
        while pos < self.L:
            dc = self._decode_fixed(atoms[pos:], pos)
            if dc is None:
                return None
            eff = self._plain_effect(dc, pos)
            if eff is None or eff == (TRAP,):
                return None
            if eff != (NOEFFECT,):
                out.append(eff)
            pos += dc.d.length
        return out if pos == self.L else None

    def _decode_fixed(self, atoms: tuple[Atom, ...], pos: int) -> _Decoding | None:
        """Decode without enumerating: None if invalid or if an unknown byte decides the form."""
        buf = tuple(0 if is_var(a) else a for a in atoms)
        d = self._decode_bytes(buf, pos)
        if not isinstance(d, Decoded):
            return None
        imm = {i for s, n in d.imm for i in range(s, s + n)}
        if any(is_var(atoms[i]) and i not in imm for i in range(d.length)):
            return None
        return _Decoding(d, atoms[: d.length])

    # -- decoding views -----------------------------------------------------------------------

    def _decode_bytes(self, buf: tuple[int, ...], pos: int) -> Decoded | str | None:
        key = (buf, pos)
        r = self._decode_cache.get(key)
        if r is None and key not in self._decode_cache:
            r = decode_view(bytes(buf), self.bits, self.A + pos)
            self._decode_cache[key] = r
        return r

    def _decode_all(self, atoms: tuple[Atom, ...], pos: int) -> list[_Decoding] | str:
        """Every decoding of the instruction at the start of ``atoms`` (site offset ``pos``),
        one per value of the unknown bytes that decide its form; ``NEED_MORE`` if the bytes end
        first. Raises _Violation for invalid bytes. Cached: views repeat across plans."""
        key = (atoms, pos)
        r = self._all_cache.get(key)
        if r is None:
            try:
                r = list(self._decode(atoms, pos))
            except _NeedMore:
                r = NEED_MORE
            except _Violation as v:
                r = ("invalid", v.reason, v.detail)  # type: ignore[assignment]
            self._all_cache[key] = r
        if isinstance(r, tuple):
            raise _Violation(r[1], r[2])
        return r

    def _decode(self, atoms: tuple[Atom, ...], pos: int, pins: dict[Atom, int] | None = None) -> Iterator[_Decoding]:
        """Decode the instruction at the start of ``atoms`` (site offset ``pos``): one result
        per value of the unknown bytes that decide its form; NEED_MORE / invalid raise."""
        pins = pins or {}
        buf = tuple(pins.get(a, 0) if a >= 256 else a for a in atoms)
        d = self._decode_bytes(buf, pos)
        if d is None:
            raise _Violation("invalid instruction", f"bytes {atoms_text(atoms[:8])} at {self.A + pos:#x} are not an instruction")
        if d == NEED_MORE:
            raise _NeedMore()
        assert isinstance(d, Decoded)
        imm = set()
        for s, n in d.imm:
            imm.update(range(s, s + n))
        for i in range(d.length):
            a = atoms[i]
            if a >= 256 and a not in pins and i not in imm:
                for v in self._byte_values(a):
                    yield from self._decode(atoms, pos, {**pins, a: v})
                return
        yield _Decoding(d, atoms[: d.length], pins)

    def _byte_values(self, a: Atom) -> tuple[int, ...]:
        f = var_field(a)
        dom = self.site.domains.get(f)
        if dom is None:
            return tuple(range(256))
        return dom.byte_values(var_index(a) if f != "ctx" else 0)

    # -- effects ------------------------------------------------------------------------------

    def _field(self, dc: _Decoding, span: tuple[int, int]) -> tuple[Atom, ...]:
        s, n = span
        return tuple(dc.pins.get(a, a) for a in dc.atoms[s : s + n])

    def _plain_effect(self, dc: _Decoding, pos: int) -> Effect | None:
        """The effect of a decoded instruction of the final code (no unknown selector)."""
        d = dc.d
        if d.kind is Kind.NOP:
            return (NOEFFECT,)
        if d.kind is Kind.CALLF:
            off, sel = self._field(dc, d.imm[0]), self._field(dc, d.imm[1])
            if any(is_var(a) for a in sel):
                if self.site.form == "callgate":
                    return ("callgate", sel)
                return ("callf", sel, off, d.opsize)
            v = sel[0] | sel[1] << 8
            if self.policy.invalid(v):
                return (TRAP,)
            if self.policy.is_call_gate(v):
                return ("callgate", sel)
            return ("callf", sel, off, d.opsize)
        if d.kind is Kind.CALL and d.imm:
            # A relative near call. The decoder also gives Kind.CALL to SYSENTER, SYSCALL, VMCALL,
            # VMMCALL and VMRUN (call-like flow, no operand): other instructions (decision 4).
            return self._near_call(dc, pos)
        if d.kind is Kind.PUSH or d.kind is Kind.POP:
            return ("push" if d.kind is Kind.PUSH else "pop", d.reg, d.opsize)
        if d.kind is Kind.FLAGS:
            return ("flag", d.reg)
        if d.kind in (Kind.UD2, Kind.INT3):
            return (TRAP,)
        if d.kind is Kind.INT:
            vec = self._field(dc, d.imm[0])[0]
            if not is_var(vec) and vec in self.policy.int_vectors:
                return (TRAP,)
        return ("insn", tuple(dc.pins.get(a, a) for a in dc.atoms))

    def _near_call(self, dc: _Decoding, pos: int) -> Effect:
        d = dc.d
        rel = self._field(dc, d.imm[0])
        end = self.A + pos + d.length
        if any(is_var(a) for a in rel):
            return ("call", end, rel, d.opsize)
        # A 16-bit operand size clears the upper half of EIP, in 32-bit code too (SDM, CALL).
        mask = 0xFFFFFFFF if d.opsize == 32 else 0xFFFF
        value = int.from_bytes(bytes(rel), "little", signed=False)
        return ("call", (end + value) & mask, d.opsize)

    def outcomes(self, dc: _Decoding, pos: int, j: int) -> tuple[set[str], str]:
        """What executing this view's instruction can lead to: a subset of {TRAP, MATCH,
        NOEFFECT, and violation reasons}, plus a note for witnesses."""
        d = dc.d
        expected = self.expected[j] if j < len(self.expected) else None
        if d.kind is Kind.CALLF or d.kind is Kind.JMPF:
            return self._far_outcomes(dc, expected)
        if d.kind is Kind.INT:
            vec = self._field(dc, d.imm[0])[0]
            values = self._byte_values(vec) if is_var(vec) else (vec,)
            res = set()
            for v in values:
                res.add(TRAP if v in self.policy.int_vectors else "stray effect")
            return res, f"int {values[0]:#x}" if len(values) == 1 else "int with an unknown vector"
        if d.kind is Kind.UD2:
            return ({TRAP} if self.policy.ud2 else {"unattributed fault"}), "ud2"
        if d.kind is Kind.INT3:
            return ({TRAP} if self.policy.int3 else {"unattributed fault"}), "int3"
        eff = self._plain_effect(dc, pos)
        assert eff is not None
        if eff == (NOEFFECT,):
            return {NOEFFECT}, "no effect"
        if eff == expected:
            return {MATCH}, "expected effect"
        if eff[0] == "call" and expected is not None and expected[0] == "call":
            return {"wrong call"}, "near call to another target"
        if expected is None:
            return {"stray effect"}, "an effect after the final code's last one"
        return {"stray effect"}, f"an effect the final code does not have here (expected {_eff_text(expected)})"

    def _far_outcomes(self, dc: _Decoding, expected: Effect | None) -> tuple[set[str], str]:
        """Outcomes of a far call/jump for every value of the unknown bytes of its selector.

        Stops at the first violating value (one is enough to reject the plan); otherwise every
        value is tried, so "trap or correct call" is proven for the whole domain."""
        d = dc.d
        off = self._field(dc, d.imm[0])
        sel = self._field(dc, d.imm[1])
        key = (d.kind, d.opsize, sel, off, expected)
        hit = self._far_cache.get(key)
        if hit is not None:
            return hit
        is_jmp = d.kind is Kind.JMPF
        exp_sel: tuple[Atom, ...] = ()
        exp_off: tuple[Atom, ...] = ()
        exp_kind = expected[0] if expected else None
        if exp_kind == "callf":
            assert expected is not None
            exp_sel, exp_off = expected[1], expected[2]  # type: ignore[assignment]
            if expected[3] != d.opsize:
                exp_kind = "other"
        elif exp_kind == "callgate":
            assert expected is not None
            exp_sel = expected[1]  # type: ignore[assignment]
        unknown = sorted({a for a in sel + exp_sel if is_var(a)})
        res: set[str] = set()
        result: tuple[set[str], str] | None = None
        invalid = self.policy.invalid
        for assign in self._assignments(unknown):
            v = _value(sel, assign)
            if invalid(v):
                res.add(TRAP)
                continue
            if is_jmp:
                result = ({"stray effect"}, f"far jump to {v:#x}")
                break
            gate = self.policy.is_call_gate(v)
            if exp_kind == "callgate":
                if gate and v == _value(exp_sel, assign):
                    res.add(MATCH)
                    continue
                result = ({"wrong call"}, f"call to selector {v:#x} where the final code calls gate "
                                          f"{_sel_text(exp_sel, assign)}")
                break
            if exp_kind == "callf" and not gate:
                same_sel = v == _value(exp_sel, assign)
                can_match, can_differ = _compare(off, exp_off, assign)
                if same_sel and can_match and not can_differ:
                    res.add(MATCH)
                    continue
                result = ({"wrong call"}, f"call to {v:#x}:{_atoms_val_text(off, assign)} where the final code "
                                          f"calls {_sel_text(exp_sel, assign)}:{_atoms_val_text(exp_off, assign)}")
                break
            what = _eff_text(expected) if expected else "nothing"
            result = ({"wrong call" if exp_kind in ("callf", "callgate", "call") else "stray effect"},
                      f"far call to {v:#x} where the final code has {what}")
            break
        if result is None:
            result = (res, "trap" if res == {TRAP} else "")
        self._far_cache[key] = result
        return result

    def _assignments(self, unknown: list[Atom]) -> Iterator[dict[Atom, int]]:
        """Every joint value of the unknown bytes that decide a selector's validity: selector
        fields by value (their domain need not be a product of bytes), other bytes one by one."""
        sel_vars = [a for a in unknown if var_field(a) == "sel"]
        other = [a for a in unknown if var_field(a) != "sel"]
        sel_values: list[int | None] = [None]
        if sel_vars:
            dom = self.site.domains["sel"]
            sel_values = sorted(dom.values) if dom.values is not None else list(range(1 << 16))  # type: ignore[assignment]
        other_values = [self._byte_values(a) for a in other]
        for sv in sel_values:
            base = {}
            if sv is not None:
                for a in sel_vars:
                    base[a] = (sv >> (8 * var_index(a))) & 0xFF
            for combo in product(*other_values):
                assign = dict(base)
                assign.update(zip(other, combo))
                yield assign

    # -- exploration --------------------------------------------------------------------------

    def check(self, plan: Plan) -> CheckResult:
        problems = plan.problems(self.site)
        if problems:
            raise PlanError("; ".join(problems))
        return _Run(self, plan.states(self.site), plan.sync_points()).run()

    def check_states(self, states: list[tuple[Atom, ...]], sync_points: tuple[int, ...]) -> CheckResult:
        """Check a sequence of site states (S0 = the original) with syncs after the given state
        indices; the last state need not be the final (synthesis checks plan prefixes: a
        violation in a prefix is a violation of every plan that starts with it)."""
        return _Run(self, states, sync_points).run()


def _value(atoms: tuple[Atom, ...], assign: dict[Atom, int]) -> int:
    v = 0
    for i, a in enumerate(atoms):
        v |= (assign[a] if is_var(a) else a) << (8 * i)
    return v


def _compare(view: tuple[Atom, ...], exp: tuple[Atom, ...], assign: dict[Atom, int]) -> tuple[bool, bool]:
    """(can be equal, can differ) for two byte strings whose unknown bytes are independent and
    take at least two values each, given some bytes already fixed."""
    can_differ = False
    for a, b in zip(view, exp):
        a = assign.get(a, a)
        b = assign.get(b, b)
        if a == b:
            continue
        if is_var(a) or is_var(b):
            can_differ = True
            continue
        return False, True
    return True, can_differ


def _sel_text(atoms: tuple[Atom, ...], assign: dict[Atom, int]) -> str:
    if all(not is_var(a) or a in assign for a in atoms):
        return f"{_value(atoms, assign):#x}"
    return atoms_text(atoms)


def _atoms_val_text(atoms: tuple[Atom, ...], assign: dict[Atom, int]) -> str:
    return "".join(f"{assign[a]:02x}" if a in assign else (atoms_text((a,)) if is_var(a) else f"{a:02x}")
                   for a in reversed(atoms))


def _eff_text(e: Effect | None) -> str:
    if e is None:
        return "nothing"
    k = e[0]
    if k == "callf":
        return f"call far {atoms_text(e[1])}:{atoms_text(e[2])} (o{e[3]})"  # type: ignore[arg-type]
    if k == "callgate":
        return f"call gate {atoms_text(e[1])}"  # type: ignore[arg-type]
    if k == "call":
        return f"call near {e[1] if len(e) == 3 else atoms_text(e[2])}"  # type: ignore[arg-type]
    if k in ("push", "pop"):
        return f"{k} {e[1]}"
    if k == "flag":
        return str(e[1])
    return str(k)


class _NeedMore(Exception):
    pass


class _Run:
    """One exploration of one plan."""

    def __init__(self, ck: Checker, states: list[tuple[Atom, ...]], sync_points: tuple[int, ...]) -> None:
        self.ck = ck
        self.states = states
        n = len(self.states) - 1
        bounds = [0, *(p for p in sync_points if 0 < p < n), n] if n else [0, 0]
        # A sync after the last write ends the plan: it splits nothing.
        self.epochs = [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)] or [(0, 0)]
        c = ck.chunk
        A = ck.A
        # Site offsets per chunk and each chunk's content per state.
        self.chunk_of = [(A + i) // c - ck.first_chunk for i in range(ck.L)]
        self.cid: list[list[int]] = []  # content id of chunk k in state s
        self.piece: list[list[tuple[Atom, ...]]] = []  # the site bytes of chunk k per content id
        self.kstart: list[int] = []
        for k in range(ck.nchunks):
            lo = max(0, k * c + ck.first_chunk * c - A)
            hi = min(ck.L, (k + 1) * c + ck.first_chunk * c - A)
            self.kstart.append(lo)
            seen: dict[tuple[Atom, ...], int] = {}
            row = []
            for st in self.states:
                row.append(seen.setdefault(st[lo:hi], len(seen)))
            self.cid.append(row)
            self.piece.append(list(seen))
        self.visited: set[tuple[object, ...]] = set()
        self.explored = 0
        self.path: list[Fetch] = []

    def run(self) -> CheckResult:
        ck = self.ck
        try:
            self._explore(0, 0, 0, (0,) * ck.nchunks)
        except _Violation as v:
            return CheckResult(False, Witness(list(self.path), v.reason, v.detail), self.explored, len(self.visited))
        return CheckResult(True, None, self.explored, len(self.visited))

    def _explore(self, P: int, j: int, e: int, seen: tuple[int, ...]) -> None:
        ck = self.ck
        if P == ck.L:
            if j != len(ck.expected):
                raise _Violation("skipped effect", f"left the site after {j} of {len(ck.expected)} effects")
            return
        k0 = self.chunk_of[P]
        key = (P, j, e, seen[k0:])
        if key in self.visited:
            return
        self.visited.add(key)
        # The bytes of the first chunk before P are not part of the instruction.
        skip = P - self.kstart[k0]
        for e2 in range(e, len(self.epochs)):
            lo_e, hi_e = self.epochs[e2]
            self._views(P, j, e2, lo_e, hi_e, seen, k0, [], 0, (), skip)

    def _views(self, P: int, j: int, e2: int, lo_e: int, hi_e: int, seen: tuple[int, ...], k: int,
               chosen: list[int], min_state: int, prefix: tuple[Atom, ...], skip: int = 0) -> None:
        """Extend a view chunk by chunk until the instruction at ``P`` decodes."""
        ck = self.ck
        lo = max(seen[k], lo_e, min_state if ck.monotone else 0)
        tried: set[int] = set()
        row = self.cid[k]
        last = k == ck.nchunks - 1
        for s in range(lo, hi_e + 1):
            c = row[s]
            if c in tried:
                continue
            tried.add(c)
            chosen.append(s)
            atoms = prefix + (self.piece[k][c][skip:] if skip else self.piece[k][c])
            if last:
                atoms = atoms + ck.ctx
            if self._try(P, j, e2, seen, chosen, atoms, last):
                self._views(P, j, e2, lo_e, hi_e, seen, k + 1, chosen, s, atoms)
            chosen.pop()

    def _try(self, P: int, j: int, e2: int, seen: tuple[int, ...], chosen: list[int],
             atoms: tuple[Atom, ...], complete: bool) -> bool:
        """Decode with the chunks chosen so far. Returns True if more bytes are needed."""
        ck = self.ck
        k0 = self.chunk_of[P]
        try:
            decs = ck._decode_all(atoms, P)
        except _Violation as v:
            self._fail(P, atoms, chosen, e2, v.reason, v.detail)
        if decs == NEED_MORE:
            if complete:
                self._fail(P, atoms, chosen, e2, "invalid instruction", "the instruction runs past the known bytes")
            return True
        for dc in decs:
            self.explored += 1
            n = dc.d.length
            used = self.chunk_of[P + n - 1] - k0 + 1 if P + n <= ck.L else len(chosen)
            states = tuple(chosen[:used])
            okey = (id(dc), j)
            oc = ck._out_cache.get(okey)
            if oc is None:
                oc = ck.outcomes(dc, P, j)
                ck._out_cache[okey] = oc
            res, note = oc
            fetch = Fetch(P, ck.A + P, dc.atoms, states, e2, dc.d.text, "")
            bad = sorted(r for r in res if r not in (TRAP, MATCH, NOEFFECT))
            if bad:
                fetch.outcome = bad[0]
                self.path.append(fetch)
                raise _Violation(bad[0], note)
            new_seen = list(seen)
            for i, s in enumerate(states):
                if s > new_seen[k0 + i]:
                    new_seen[k0 + i] = s
            ns = tuple(new_seen)
            if TRAP in res:
                fetch.outcome = "trap"
                self.path.append(fetch)
                self._check_resume(dc, P, j)
                self.path.pop()
            for r in (MATCH, NOEFFECT):
                if r in res:
                    fetch.outcome = "effect" if r == MATCH else "no effect"
                    self.path.append(fetch)
                    nxt = P + n
                    if nxt > ck.L:
                        raise _Violation("left mid-instruction", f"the instruction ends {nxt - ck.L} bytes past the site")
                    self._explore(nxt, j + (r == MATCH), e2, ns)
                    self.path.pop()
        return False

    def _check_resume(self, dc: _Decoding, P: int, j: int) -> None:
        ck = self.ck
        d = dc.d
        r = P
        if d.kind is Kind.INT3:
            r = P + d.length - 1
        elif d.kind is Kind.INT:
            r = P + d.length - 2
        rest = ck._resume[r] if 0 <= r < ck.L else None
        if rest is None:
            raise _Violation("bad resume", f"the handler resumes at {ck.A + r:#x}, where the final code does not run cleanly")
        if rest != ck.expected[j:]:
            raise _Violation("bad resume", f"resuming at {ck.A + r:#x} performs {len(rest)} effects; {len(ck.expected) - j} remain")

    def _fail(self, P: int, atoms: tuple[Atom, ...], chosen: list[int], e2: int, reason: str, detail: str) -> None:
        self.path.append(Fetch(P, self.ck.A + P, atoms[:15], tuple(chosen), e2, "(none)", reason))
        raise _Violation(reason, detail)


def check(site: PatchSite, plan: Plan, model: FetchModel, policy: Policy) -> CheckResult:
    """Check ``plan`` for ``site`` under ``model`` and ``policy``."""
    return Checker(site, model, policy).check(plan)
