"""A second, deliberately simple checker that must agree with gatelink's.

``brute_check`` below is written from ``shared/docs/safety-model.md`` and the decisions of
``docs/safety.md``, not from ``gatelink/plan/checker.py``. It shares none of its code: it
decodes with capstone (not ``gatelink.decode``, which uses iced-x86), judges effects itself and
enumerates views directly, without the main checker's shortcuts:

* The states ``S0..Sn`` are replayed from the plan's writes; syncs cut them into epochs (a state
  at which a sync runs belongs to both neighbouring epochs, decision 1).
* A core's run through the site is explored instruction by instruction. For the instruction at
  site offset ``P`` the core picks an epoch (never going back) and then, for every chunk the
  instruction touches, *every* state of that epoch the model allows: not older than the state at
  which this core saw the chunk before (coherence, decision 2), and under ``monotone`` not older
  than the state of the chunk before it in the same view. The view grows one chunk at a time until
  capstone decodes an instruction from its bytes (decision 3). No state is skipped because an
  earlier one has the same bytes (the main checker's decision 9 is *not* used here; agreement on
  sites where chunks repeat their contents is evidence that it is exact). The only economy is
  memoisation: a core in a situation already explored (offset, effects done, epoch, state seen
  per chunk) has the same futures.
* Each decoded instruction is judged against the effects ``E1..Em`` of the final code, exactly as
  the property says: a nop (or inert prefix) is nothing; a trap form (far call/jump to a selector
  the policy calls invalid, UD2, INT3, INT n for the handler's vectors) ends the run and is safe
  only when the final code run from its resume point performs exactly the remaining effects
  (case 2); any other instruction is an effect and must be the next expected one; leaving the site
  needs all effects done, at exactly ``A+L`` (case 1).

The random cases are concrete instances (concrete operands and context), which is what
agreement testing needs. Both verdicts must occur often, so the test cannot pass vacuously.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from dataclasses import dataclass

import capstone
import pytest

from gatelink.catalog import SHAPES, shape as shape_by_id
from gatelink.plan import (FORMS, RDOS_POLICY, STRICT_POLICY, SYNC, Checker, FetchModel, FormError, Order,
                           PatchSite, Plan, PlanError, Policy, SelectorRule, Write, make_site, policy_for)
from gatelink.plan.builders import BUILDERS
from gatelink.plan.forms import DEFAULT_CONTEXT, RDOS_CALL_GATES, RDOS_SELECTORS
from gatelink.plan.model import LINE, substitute
from gatelink.plan.synth import synthesize

# ---------------------------------------------------------------------------------------------
# Decoding with capstone

_CS: dict[int, capstone.Cs] = {}
for _bits, _mode in ((16, capstone.CS_MODE_16), (32, capstone.CS_MODE_32)):
    _md = capstone.Cs(capstone.CS_ARCH_X86, _mode)
    _md.detail = True
    _CS[_bits] = _md

_PREFIXES = frozenset((0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0x66, 0x67))


@dataclass(frozen=True)
class Insn:
    """One instruction as this file understands it.

    ``op``: callf, jmpf (immediate pointer), call (near relative), push, pop, flag, nop, int3,
    int, ud2, locked (a LOCK prefix: #UD for every instruction a site can hold), other.
    ``arg``: (selector, offset, operand size) for callf/jmpf, (target, operand size) for call,
    (register, size) for push/pop, the flag instruction, the INT vector, or the bytes (other).
    """

    size: int
    op: str
    arg: object
    text: str


_DECODED: dict[tuple[bytes, int, int], Insn | None] = {}


def _cs_one(buf: bytes, bits: int, addr: int):
    return next(_CS[bits].disasm(buf, addr, 1), None)


def decode(buf: bytes, bits: int, addr: int) -> Insn | None:
    """The instruction at the start of ``buf`` (at address ``addr``), or None if there is none
    in these bytes (invalid, or more bytes needed)."""
    key = (buf, bits, addr)
    if key in _DECODED:
        return _DECODED[key]
    ins = _cs_one(buf, bits, addr)
    dropped = 0
    if ins is None:
        # capstone rejects some valid prefix mixes (67 F3 90, F2 67 0F 0B, F3 66 90: pause, ud2,
        # nop with an address-size prefix). REP/REPNE change nothing for the instructions that
        # matter here (nop/pause, ud2, int, far and near calls: the CPU ignores them), so try
        # again without them.
        p = 0
        while p < len(buf) and buf[p] in _PREFIXES:
            p += 1
        lean = bytes(x for x in buf[:p] if x not in (0xF2, 0xF3)) + buf[p:]
        dropped = len(buf) - len(lean)
        if dropped:
            ins = _cs_one(lean, bits, addr)
    out = None
    if ins is not None and ins.size + dropped <= 15:
        n = ins.size + dropped
        b = buf[:n]
        # x86 encodings are prefix-free: the instruction must be decided by its own bytes.
        again = _cs_one(bytes(ins.bytes), bits, addr)
        assert again is not None and again.size == ins.size and again.mnemonic == ins.mnemonic, b.hex()
        out = _classify(ins, b, bits, addr)
    _DECODED[key] = out
    return out


def _classify(ins, b: bytes, bits: int, addr: int) -> Insn:
    n = len(b)
    p = 0
    while p < n and b[p] in _PREFIXES:
        p += 1
    pfx = b[:p]
    opc = b[p]
    wide = (bits == 32) != (0x66 in pfx)  # the operand size is 32 bits
    mn = ins.mnemonic.split()[-1]  # without "notrack", "bnd", "rep"... (prefixes shown by name)
    text = f"{ins.mnemonic} {ins.op_str}".strip()

    def mk(op: str, arg: object) -> Insn:
        return Insn(n, op, arg, text)

    if 0xF0 in pfx:
        return mk("locked", b)
    if opc in (0x9A, 0xEA):
        offsize = 4 if wide else 2
        assert n == p + 1 + offsize + 2, (b.hex(), mn)
        off = int.from_bytes(b[p + 1 : p + 1 + offsize], "little")
        sel = int.from_bytes(b[p + 1 + offsize :], "little")
        assert mn == ("lcall" if opc == 0x9A else "ljmp"), mn
        ops = ins.operands
        assert (ops[0].imm, ops[1].imm) == (sel, off), (b.hex(), ins.op_str)
        return mk("callf" if opc == 0x9A else "jmpf", (sel, off, 32 if wide else 16))
    if opc == 0xE8:
        size = n - p - 1
        assert mn == "call" and size in (2, 4), (b.hex(), mn)
        # The target is computed here: capstone does not wrap rel16 targets to 16 bits. A
        # 16-bit operand size clears the upper half of EIP.
        rel = int.from_bytes(b[p + 1 :], "little", signed=True)
        return mk("call", ((addr + n + rel) & (0xFFFFFFFF if size == 4 else 0xFFFF), 8 * size))
    if opc == 0x90:
        assert mn in ("nop", "pause"), mn
        return mk("nop", None)
    if opc == 0x0F and b[p + 1] == 0x1F:
        if (b[p + 2] >> 3) & 7 == 0:  # 0F 1F /0, the multi-byte nop
            return mk("nop", None)
        return mk("other", b)
    if opc == 0x0F and b[p + 1] == 0x0B:
        assert mn == "ud2"
        return mk("ud2", None)
    if opc == 0xCC:
        assert mn == "int3"
        return mk("int3", None)
    if opc == 0xCD:
        assert mn == "int"
        return mk("int", b[p + 1])
    if mn in ("push", "pop") and len(ins.operands) == 1 and ins.operands[0].type == capstone.x86.X86_OP_REG:
        return mk(mn, (ins.reg_name(ins.operands[0].reg), 32 if wide else 16))
    if mn in ("cmc", "stc", "clc"):
        return mk("flag", mn)
    return mk("other", b)


# ---------------------------------------------------------------------------------------------
# The policy, read from its declared fields


def selector_invalid(policy: Policy, sel: int) -> bool:
    if sel <= 7 or any(lo <= sel <= hi for lo, hi in policy.invalid_ranges):
        return True
    for r in policy.invalid_rules:
        ti, rpl, index = (sel >> 2) & 1, sel & 3, sel >> 3
        if ((r.ti is None or ti == r.ti) and (r.rpl is None or rpl == r.rpl)
                and (r.min_index is None or index >= r.min_index) and (r.max_index is None or index <= r.max_index)):
            return True
    return False


def judge(ins: Insn, policy: Policy) -> tuple:
    """("trap", resume offset inside the instruction) | ("none",) | ("effect", effect) |
    ("bad", why)."""
    op, arg = ins.op, ins.arg
    if op in ("callf", "jmpf"):
        sel, off, size = arg  # type: ignore[misc]
        if selector_invalid(policy, sel):
            return ("trap", 0)  # the fault address: the first byte, prefixes included
        if op == "jmpf":
            return ("effect", ("far jump", sel, off, size))
        if any(lo <= sel <= hi for lo, hi in policy.call_gates):
            return ("effect", ("call gate", sel))  # the CPU ignores the offset
        return ("effect", ("far call", sel, off, size))
    if op == "ud2":
        return ("trap", 0) if policy.ud2 else ("bad", "ud2 the handler does not own")
    if op == "int3":
        return ("trap", ins.size - 1) if policy.int3 else ("bad", "int3 the handler does not own")
    if op == "int" and arg in policy.int_vectors:
        return ("trap", ins.size - 2)  # the handler backs up over CD nn
    if op == "nop":
        return ("none",)
    if op == "locked":
        return ("bad", "LOCK prefix: invalid opcode")
    if op == "call":
        return ("effect", ("near call",) + arg)  # type: ignore[operator]
    if op in ("push", "pop", "flag"):
        return ("effect", (op, arg))
    return ("effect", ("instruction", ins.text, arg))


# ---------------------------------------------------------------------------------------------
# The brute-force checker


class TooBig(Exception):
    """The enumeration went past its budget (the case is left out, and counted)."""


class _Unsafe(Exception):
    pass


@dataclass
class BruteResult:
    safe: bool
    reason: str  # why not (empty when safe)
    views: int  # instruction fetches enumerated
    situations: int


def final_effects(final: bytes, ctx: bytes, start: int, A: int, bits: int, policy: Policy) -> list | None:
    """Effects of the final code run from site offset ``start`` to its end; None if it does not
    run cleanly there (invalid bytes, a trap, or not landing exactly on the end)."""
    code = final + ctx
    L = len(final)
    pos = start
    out = []
    while pos < L:
        ins = decode(code[pos : pos + 16], bits, A + pos)
        if ins is None:
            return None
        j = judge(ins, policy)
        if j[0] in ("trap", "bad"):
            return None
        if j[0] == "effect":
            out.append(j[1])
        pos += ins.size
    return out if pos == L else None


def brute_check(site: PatchSite, plan: Plan, model: FetchModel, policy: Policy, budget: int = 10**9) -> BruteResult:
    """Is ``plan`` safe for the concrete ``site`` under ``model`` and ``policy``?"""
    A, L, bits = site.address, site.length, site.bitness
    final, ctx = bytes(site.final), bytes(site.context)
    states = [bytes(site.original)]
    sync_at = []
    for step in plan.steps:
        if isinstance(step, Write):
            s = bytearray(states[-1])
            s[step.offset : step.offset + len(step.data)] = bytes(step.data)
            states.append(bytes(s))
        else:
            sync_at.append(len(states) - 1)
    assert states[-1] == final, "the plan does not end at the final code"
    cuts = sorted({0, len(states) - 1, *sync_at})
    epochs = list(zip(cuts, cuts[1:])) or [(0, 0)]

    E = final_effects(final, ctx, 0, A, bits, policy)
    assert E is not None, "the final code does not run cleanly"
    resume_effects = [final_effects(final, ctx, r, A, bits, policy) for r in range(L)]

    c = model.chunk
    monotone = model.order is Order.MONOTONE
    q_first = A // c  # the chunks holding site bytes are q_first..q_last
    q_last = (A + L - 1) // c
    end = A + L + len(ctx)  # no byte is known past the context

    def byte(s: int, addr: int) -> int:
        return states[s][addr - A] if addr < A + L else ctx[addr - A - L]

    views = 0
    visited = set()

    def explore(P: int, j: int, e: int, seen: tuple[int, ...]) -> None:
        """A core about to fetch at site offset P, after effects E1..Ej, in epoch e, having read
        chunk q_first+k at state seen[k] at the latest (0 if never)."""
        if P == L:
            if j != len(E):
                raise _Unsafe(f"left the site after {j} of {len(E)} effects")
            return
        key = (P, j, e, seen)
        if key in visited:
            return
        visited.add(key)
        for e2 in range(e, len(epochs)):
            lo, hi = epochs[e2]
            grow(P, j, e2, lo, hi, seen, (A + P) // c, b"", [], lo)

    def grow(P, j, e2, lo, hi, seen, q, buf, chosen, floor):
        """Add chunk q to the view (every allowed state of it), then decode or grow further."""
        first = max(q * c, A + P)
        last = min((q + 1) * c, end)
        if first >= last:
            # Every known byte is in the view: invalid, or it would need bytes past the context.
            raise _Unsafe(f"no instruction at {A + P:#x}: {buf[:15].hex()} (invalid, not UD2)")
        if q > q_last:  # bytes after the site: they never change
            view(P, j, e2, lo, hi, seen, q, buf + bytes(byte(0, a) for a in range(first, last)), chosen, floor)
            return
        k = q - q_first
        start = max(lo, seen[k], floor if monotone else lo)
        for s in range(start, hi + 1):
            piece = bytes(byte(s, a) for a in range(first, last))
            view(P, j, e2, lo, hi, seen, q, buf + piece, chosen + [(k, s)], s)

    def view(P, j, e2, lo, hi, seen, q, buf, chosen, floor):
        nonlocal views
        ins = decode(buf, bits, A + P)
        if ins is None:
            grow(P, j, e2, lo, hi, seen, q + 1, buf, chosen, floor)
            return
        # Decoded as soon as its last byte arrived: the last chunk added is the last one it touches.
        assert (A + P + ins.size - 1) // c == q
        views += 1
        if views > budget:
            raise TooBig()
        new_seen = list(seen)
        for k, s in chosen:
            new_seen[k] = s
        verdict = judge(ins, policy)
        if verdict[0] == "trap":
            R = P + verdict[1]
            if not 0 <= R < L or resume_effects[R] != E[j:]:
                raise _Unsafe(f"{ins.text} at {A + P:#x}: resuming at {A + R:#x} is not the rest of the final code")
            return
        if verdict[0] == "bad":
            raise _Unsafe(f"{ins.text} at {A + P:#x}: {verdict[1]}")
        j2 = j
        if verdict[0] == "effect":
            if j >= len(E) or verdict[1] != E[j]:
                raise _Unsafe(f"{ins.text} at {A + P:#x}: {verdict[1]} where the final code has "
                              f"{E[j] if j < len(E) else 'nothing'}")
            j2 = j + 1
        if P + ins.size > L:
            raise _Unsafe(f"{ins.text} at {A + P:#x} ends past the site")
        explore(P + ins.size, j2, e2, tuple(new_seen))

    try:
        explore(0, 0, 0, (0,) * (q_last - q_first + 1))
    except _Unsafe as u:
        return BruteResult(False, str(u), views, len(visited))
    return BruteResult(True, "", views, len(visited))


# ---------------------------------------------------------------------------------------------
# Random cases: sites, plans (builders, synthesis, mutations, random), models, policies

NASTY = (0x00, 0x01, 0x02, 0x03, 0x04, 0x08, 0x0B, 0x0E, 0x0F, 0x1F, 0x3E, 0x55, 0x5D, 0x66, 0x67, 0x90,
         0x9A, 0xCC, 0xCD, 0xE8, 0xEA, 0xF5)
TRAP_BYTES = ((0xCC,), (0xCD,), (0x0F, 0x0B))


def _site_kinds() -> list[tuple[str, str, int]]:
    out = []
    for s in SHAPES:
        for form in FORMS:
            for bits in (16, 32):
                try:
                    make_site(s.id, form, bitness=bits)
                except FormError:
                    continue
                out.append((s.id, form, bits))
    return out


SITE_KINDS = _site_kinds()
CUSTOM_POLICY = Policy(invalid_rules=(SelectorRule(rpl=1),), int_vectors=(0x67, 0x9A), ud2=False, name="custom")
NO_TRAP_POLICY = Policy(int_vectors=(), ud2=True, int3=False, name="no-int")


def _bytes(rng: random.Random, n: int, nasty: float = 0.3) -> bytes:
    return bytes(rng.choice(NASTY) if rng.random() < nasty else rng.randrange(256) for _ in range(n))


def _values(rng: random.Random, site: PatchSite) -> dict[str, int]:
    sel_dom = RDOS_CALL_GATES if site.form == "callgate" else RDOS_SELECTORS
    ctx = DEFAULT_CONTEXT[site.bitness] if rng.random() < 0.6 else _bytes(rng, 16)
    return {
        "gate": int.from_bytes(_bytes(rng, 4), "little"),
        "off": int.from_bytes(_bytes(rng, 4), "little"),
        "rel": int.from_bytes(_bytes(rng, 4), "little"),
        "sel": rng.choice(sorted(sel_dom.values or ())),
        "ctx": int.from_bytes(ctx, "little"),
    }


def _concrete(site: PatchSite, plan: Plan, vals: dict[str, int]) -> tuple[PatchSite, Plan]:
    steps = tuple(Write(s.offset, substitute(s.data, vals)) if isinstance(s, Write) else s for s in plan.steps)
    return site.instance(vals), Plan(steps, plan.builder)


def _store_at(site: PatchSite, lo: int, hi: int, rng: random.Random | None = None) -> tuple[int, int] | None:
    """(offset, size) of a 1/2/4/8-byte store covering [lo, hi) inside the site, not crossing a line."""
    options = []
    for size in (1, 2, 4, 8):
        for start in range(hi - size, lo + 1):
            a = site.address + start
            if start >= 0 and start + size <= site.length and a // LINE == (a + size - 1) // LINE:
                options.append((start, size))
    if not options:
        return None
    return rng.choice(options) if rng else min(options, key=lambda o: o[1])


def _replay(site: PatchSite, steps: list) -> bytearray:
    cur = bytearray(site.original)
    for s in steps:
        if isinstance(s, Write):
            cur[s.offset : s.offset + len(s.data)] = bytes(s.data)
    return cur


def _finish(site: PatchSite, steps: list, rng: random.Random) -> list:
    """Append stores until the plan ends at the final code."""
    final = bytes(site.final)
    cur = _replay(site, steps)
    while bytes(cur) != final:
        diff = [i for i in range(site.length) if cur[i] != final[i]]
        lo = diff[0]
        hi = max(i for i in diff if i < lo + 8) + 1
        while _store_at(site, lo, hi) is None:
            hi -= 1
        off, size = _store_at(site, lo, hi, rng)
        data = bytearray(cur[off : off + size])
        data[lo - off : hi - off] = final[lo:hi]
        steps.append(Write(off, tuple(data)))
        cur[off : off + size] = data
    return steps


def _random_write(site: PatchSite, rng: random.Random) -> Write:
    for _ in range(100):
        size = rng.choice((1, 1, 2, 4, 8))
        off = rng.randrange(0, site.length - size + 1) if size <= site.length else 0
        a = site.address + off
        if off + size <= site.length and a // LINE == (a + size - 1) // LINE:
            break
    data = []
    for i in range(off, off + size):
        r = rng.random()
        data.append(site.final[i] if r < 0.5 else site.original[i] if r < 0.6 else
                    rng.choice(NASTY) if r < 0.9 else rng.randrange(256))
    return Write(off, tuple(data))


def _mutate(site: PatchSite, steps: list, rng: random.Random) -> list:
    steps = list(steps)
    what = rng.choice(("drop", "drop", "swap", "swap", "nosync", "addsync", "addsync", "split", "merge",
                       "corrupt", "trap", "dup", "write"))
    writes = [i for i, s in enumerate(steps) if isinstance(s, Write)]
    if what == "drop" and steps:
        del steps[rng.randrange(len(steps))]
    elif what == "swap" and len(steps) >= 2:
        i = rng.randrange(len(steps) - 1)
        k = i + 1 if rng.random() < 0.7 else rng.randrange(len(steps))
        steps[i], steps[k] = steps[k], steps[i]
    elif what == "nosync":
        steps = [s for s in steps if isinstance(s, Write)]
    elif what == "addsync":
        steps.insert(rng.randrange(len(steps) + 1), SYNC)
    elif what == "split" and writes:
        i = rng.choice(writes)
        w = steps[i]
        if len(w.data) > 1:
            h = len(w.data) // 2
            parts = [Write(w.offset, w.data[:h]), Write(w.offset + h, w.data[h:])]
            if rng.random() < 0.5:
                parts.reverse()
            steps[i : i + 1] = parts
    elif what == "merge" and len(writes) >= 2:
        i = rng.choice(writes[:-1])
        if isinstance(steps[i + 1], Write):
            a, b = steps[i], steps[i + 1]
            lo = min(a.offset, b.offset)
            hi = max(a.offset + len(a.data), b.offset + len(b.data))
            blk = _store_at(site, lo, hi)
            if blk is not None:
                cur = _replay(site, steps[: i + 2])
                off, size = blk
                steps[i : i + 2] = [Write(off, tuple(cur[off : off + size]))]
    elif what == "corrupt" and writes:
        i = rng.choice(writes)
        w = steps[i]
        data = list(w.data)
        data[rng.randrange(len(data))] = rng.choice(NASTY) if rng.random() < 0.7 else rng.randrange(256)
        steps[i] = Write(w.offset, tuple(data))
    elif what == "trap":
        t = shape_by_id(site.shape).call_at
        tb = rng.choice(TRAP_BYTES)
        if t + len(tb) <= site.length and _store_at(site, t, t + len(tb)) == (t, len(tb)):
            steps.insert(rng.randrange(len(steps) + 1), Write(t, tb))
    elif what == "dup" and writes:
        i = rng.choice(writes)
        steps.insert(rng.randrange(i, len(steps) + 1), steps[i])
    else:
        steps.insert(rng.randrange(len(steps) + 1), _random_write(site, rng))
    return steps


def _synthesized(site: PatchSite, model: FetchModel, policy: Policy) -> Plan | None:
    """Synthesis for the concrete site (cheaper than for the template; both are plan sources)."""
    return synthesize(site, model, policy_for(site, policy)).plan


CHUNK_WEIGHTS = {1: 2, 2: 2, 4: 3, 8: 4, 16: 3, 32: 2, 64: 2}


def _model(rng: random.Random) -> FetchModel:
    chunk = rng.choices(list(CHUNK_WEIGHTS), weights=list(CHUNK_WEIGHTS.values()))[0]
    return FetchModel(chunk, rng.choice((Order.ARBITRARY, Order.MONOTONE)))


@dataclass
class Case:
    site: PatchSite
    plan: Plan
    model: FetchModel
    policy: Policy
    source: str

    def describe(self) -> str:
        steps = " ".join(f"w{s.offset}:{bytes(s.data).hex()}" if isinstance(s, Write) else "sync"
                         for s in self.plan.steps)
        return (f"shape {self.site.shape} form {self.site.form} bits {self.site.bitness} at {self.site.address:#x} "
                f"{bytes(self.site.original).hex()} -> {bytes(self.site.final).hex()} ctx {bytes(self.site.context).hex()} "
                f"model {self.model} policy {self.policy.name} [{self.source}] {steps}")


SOURCES = ("rdos", "thread", "int3-sync", "single-store", "synthesis", "random")


def random_case(rng: random.Random) -> Case:
    source = rng.choice(SOURCES)
    while True:
        sid, form, bits = rng.choice(SITE_KINDS)
        base = 0x1000 + 0x40 * rng.randrange(64)
        site_t = make_site(sid, form, base + rng.randrange(64), bits)
        model = _model(rng)
        policy = rng.choices((RDOS_POLICY, STRICT_POLICY, CUSTOM_POLICY, NO_TRAP_POLICY), weights=(6, 2, 1, 1))[0]
        build_model = model if rng.random() < 0.7 else _model(rng)
        if source in ("random", "synthesis"):
            site, plan = _concrete(site_t, Plan(()), _values(rng, site_t))
            if source == "synthesis":
                if build_model.chunk == 1 and (form not in ("far", "callgate") or rng.random() < 0.8):
                    continue  # synthesis under (1, ...) is the slow one: fewer of those
                synth = _synthesized(site, build_model, policy)
                if synth is None:
                    continue
                plan = synth
        else:
            built = BUILDERS[source](site_t, build_model)
            if built is None:
                continue
            site, plan = _concrete(built.site, built.plan, _values(rng, built.site))
        steps = list(plan.steps)
        if source == "random":
            steps = [_random_write(site, rng) if rng.random() < 0.8 else SYNC for _ in range(rng.randint(1, 4))]
        mutations = 0 if source == "random" else rng.choice((0, 0, 1, 1, 2, 3))
        for _ in range(mutations):
            steps = _mutate(site, steps, rng)
        steps = _finish(site, steps, rng)
        if len(steps) > 10:
            continue
        plan = Plan(tuple(steps), source)
        if plan.problems(site):
            continue
        label = source + (f"+{mutations}m" if mutations else "")
        return Case(site, plan, model, policy_for(site, policy), label)


# ---------------------------------------------------------------------------------------------
# Tests


def _insn(hexbytes: str, bits: int, addr: int = 0x1000) -> Insn:
    ins = decode(bytes.fromhex(hexbytes.replace(" ", "")) + bytes(8), bits, addr)
    assert ins is not None, hexbytes
    return ins


@pytest.mark.parametrize("bits", [16, 32])
def test_capstone_and_gatelink_decode_agree_on_the_instructions_that_matter(bits):
    from gatelink.decode import Decoded, Kind, decode_view

    kinds = {"callf": Kind.CALLF, "jmpf": Kind.JMPF, "call": Kind.CALL, "nop": Kind.NOP, "int3": Kind.INT3,
             "int": Kind.INT, "ud2": Kind.UD2, "push": Kind.PUSH, "pop": Kind.POP, "flag": Kind.FLAGS}
    other = 16 if bits == 32 else 32  # the operand size a 66 prefix selects
    expect = {
        "9A 40 23 01 00 08 04": ("callf", (0x408, 0x12340, 32)) if bits == 32 else None,
        "9A 40 23 08 04": ("callf", (0x408, 0x2340, 16)) if bits == 16 else None,
        "66 9A 40 23 01 00 08 04": ("callf", (0x408, 0x12340, 32)) if bits == 16 else None,
        "66 9A 40 23 08 04": ("callf", (0x408, 0x2340, 16)) if bits == 32 else None,
        "3E 67 9A 40 23 01 00 02 00": ("callf", (0x2, 0x12340, 32)) if bits == 32 else None,
        "67 66 9A 40 23 01 00 02 00": ("callf", (0x2, 0x12340, 32)) if bits == 16 else None,
        "EA 40 23 01 00 08 04": ("jmpf", (0x408, 0x12340, 32)) if bits == 32 else None,
        "0E": ("push", ("cs", bits)),
        "66 0E": ("push", ("cs", other)),
        "55": ("push", ("ebp" if bits == 32 else "bp", bits)),
        "5D": ("pop", ("ebp" if bits == 32 else "bp", bits)),
        "F5": ("flag", "cmc"),
        "F9": ("flag", "stc"),
        "90": ("nop", None),
        "66 90": ("nop", None),
        "F3 90": ("nop", None),
        "3E 90": ("nop", None),
        "67 F3 90": ("nop", None),  # capstone needs the REP retry for this one
        "0F 1F 00": ("nop", None),
        "0F 1F 40 00": ("nop", None),
        "CC": ("int3", None),
        "3E CC": ("int3", None),
        "CD 67": ("int", 0x67),
        "3E CD 9A": ("int", 0x9A),
        "0F 0B": ("ud2", None),
        "F2 67 0F 0B": ("ud2", None),
    }
    for hx, want in expect.items():
        if want is None:
            continue
        ins = _insn(hx, bits)
        assert (ins.op, ins.arg) == want, hx
        assert ins.size == len(bytes.fromhex(hx.replace(" ", ""))), hx
        d = decode_view(bytes.fromhex(hx.replace(" ", "")) + bytes(8), bits, 0x1000)
        assert isinstance(d, Decoded) and d.kind is kinds[ins.op] and d.length == ins.size, hx
        if ins.op in ("callf", "jmpf"):
            assert (d.selector, d.offset, d.opsize) == ins.arg, hx
        if ins.op in ("push", "pop"):
            assert (d.reg, d.opsize) == ins.arg, hx
        if ins.op == "flag":
            assert d.reg == ins.arg, hx
        if ins.op == "int":
            assert d.vector == ins.arg, hx
    # Near calls: the target wraps at the operand size.
    ins = _insn("E8 FD FF FF FF", 32, 0x1000)
    assert ins.arg == (0x1002, 32)
    ins = _insn("E8 F0 FF", 16, 0x1000)
    assert ins.arg == (0x0FF3, 16)
    ins = _insn("E8 00 E0", 16, 0x1000)
    assert ins.arg == (0xF003, 16)
    d = decode_view(bytes.fromhex("E800E0") + bytes(8), 16, 0x1000)
    assert d.kind is Kind.CALL and d.target == 0xF003
    # Where the two decoders may differ, both make a violation: 0F 1F /1 is not the nop form
    # (decision 4), LOCK makes these invalid, SYSENTER is an other instruction.
    assert _insn("0F 1F 08", bits).op == "other"
    locked = decode(bytes.fromhex("F00F1F00") + bytes(8), bits, 0x1000)  # capstone takes it in 32-bit code
    assert locked is None or locked.op == "locked"
    assert decode(bytes.fromhex("F090") + bytes(8), bits, 0x1000) is None
    assert _insn("0F 34", bits).op == "other"
    # Every prefix mix (up to two prefixes) on these opcodes: the same length and validity.
    prefixes = (0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0x66, 0x67)
    opcodes = ("90", "CC", "CD67", "0F0B", "0E", "55", "5D", "F5", "9A0102030405060708", "EA0102030405060708",
               "E80102030405", "0F1F00", "0F1F4000")
    for p1 in (None, *prefixes):
        for p2 in (None, *prefixes):
            pre = bytes(x for x in (p1, p2) if x is not None)
            for op in opcodes:
                buf = pre + bytes.fromhex(op) + bytes(8)
                mine = decode(buf, bits, 0x1000)
                theirs = decode_view(buf, bits, 0x1000)
                a = None if mine is None or mine.op == "locked" else mine.size
                b = theirs.length if isinstance(theirs, Decoded) else None
                assert a == b, buf.hex()


ARB1 = FetchModel(1, Order.ARBITRARY)
MONO1 = FetchModel(1, Order.MONOTONE)
ARB2 = FetchModel(2, Order.ARBITRARY)
ARB8 = FetchModel(8, Order.ARBITRARY)
MONO8 = FetchModel(8, Order.MONOTONE)
ARB64 = FetchModel(64, Order.ARBITRARY)
CTX = bytes.fromhex("730433c0eb05b801000000c390909090")
A_ORIG = "3e679a2301000002 00"
A_FINAL = "3e679a4023010008 04"


def _site(orig: str, final: str, address: int = 0x1000, bits: int = 32) -> PatchSite:
    return PatchSite("A", bits, address, tuple(bytes.fromhex(orig.replace(" ", ""))),
                     tuple(bytes.fromhex(final.replace(" ", ""))), tuple(CTX), {})


def _plan(*steps: str) -> Plan:
    """Steps as "3:40230100" (a write at offset 3) or "sync"."""
    out = []
    for s in steps:
        if s == "sync":
            out.append(SYNC)
        else:
            off, data = s.split(":")
            out.append(Write(int(off), tuple(bytes.fromhex(data))))
    return Plan(tuple(out))


KNOWN = [
    # (name, site, plan, model, safe, a word of the brute-force reason)
    ("lone cmc over the prefix", _site(A_ORIG, A_FINAL, 0x1004), _plan("0:f5", "3:40230100", "7:0804", "0:3e"),
     ARB64, False, "cmc"),
    ("a lone cmc out of a cmc pair (bytes fetched one by one)", _site("cc9090", "f5f590"), _plan("0:f5f5"),
     ARB1, False, "1 of 2 effects"),
    ("the cmc pair in one chunk", _site("cc9090", "f5f590"), _plan("0:f5f5"), ARB64, True, ""),
    ("a correct single aligned store", _site(A_ORIG, A_FINAL, 0x1005), _plan("1:679a402301000804"), ARB8, True, ""),
    ("the same store torn by a chunk boundary", _site(A_ORIG, A_FINAL, 0x1000), _plan("1:679a402301000804"),
     ARB8, False, "far call"),
    ("selector before offset", _site(A_ORIG, A_FINAL, 0x1004), _plan("7:0804", "3:40230100"), ARB64, False,
     "far call"),
    ("offset before selector", _site(A_ORIG, A_FINAL, 0x1004), _plan("3:40230100", "7:0804"), ARB64, True, ""),
    ("monotone allows it", _site(A_ORIG, A_FINAL), _plan("0:cc", "sync", "8:04", "0:3e679a4023010008"), MONO8,
     True, ""),
    ("arbitrary forbids it", _site(A_ORIG, A_FINAL), _plan("0:cc", "sync", "8:04", "0:3e679a4023010008"), ARB8,
     False, "far call"),
    ("rdos order, no syncs, bytes one by one", _site(A_ORIG, "90679a402301000804"),
     _plan("0:cd", "3:40230100", "7:0804", "0:90"), ARB1, False, "far call"),
    ("rdos order with syncs", _site(A_ORIG, "90679a402301000804"),
     _plan("0:cd", "sync", "3:40230100", "7:0804", "sync", "0:90"), ARB1, True, ""),
    ("int3-sync", _site(A_ORIG, A_FINAL), _plan("0:cc", "sync", "3:40230100", "7:0804", "sync", "0:3e", "sync"),
     ARB1, True, ""),
    ("int3-sync without its middle sync", _site(A_ORIG, A_FINAL),
     _plan("0:cc", "sync", "3:40230100", "7:0804", "0:3e", "sync"), ARB1, False, "far call"),
    ("INT 67h resumes at its CD byte", _site(A_ORIG, A_FINAL),
     _plan("1:cd", "sync", "3:40230100", "7:0804", "sync", "1:67"), ARB1, True, ""),
    ("a handler without INT 67h", _site(A_ORIG, A_FINAL),
     _plan("1:cd", "sync", "3:40230100", "7:0804", "sync", "1:67"), ARB1, False, "int 0x"),
    ("shape G: breakpoint on the call", _site("55679a2301000003005d", "55679a4023010008045d"),
     _plan("1:cc", "sync", "3:40230100", "7:0804", "sync", "1:67"), ARB1, True, ""),
    ("shape G: breakpoint on the push", _site("55679a2301000003005d", "55679a4023010008045d"),
     _plan("0:cc", "sync", "3:40230100", "7:0804", "sync", "0:55"), ARB1, False, "far call"),
    ("an undefined opcode is no trap", _site(A_ORIG, A_FINAL),
     _plan("0:0f04", "sync", "3:40230100", "7:0804", "sync", "0:3e67"), ARB64, False, "0x1000"),
    ("a far jump to a valid selector", _site(A_ORIG, A_FINAL), _plan("2:ea", "3:40230100", "7:0804", "2:9a"),
     ARB64, False, "far jump"),
    # Decision 2: a later fetch may read a chunk it never read at an older state (stale prefetch):
    # the second cmc is fetched from before the plan, so the first one is left alone.
    ("a stale prefetch", _site("cc90", "f5f5"), _plan("1:f5", "0:f5"), ARB1, False, "1 of 2 effects"),
    ("stale prefetch, monotone too (one chunk per view)", _site("cc90", "f5f5"), _plan("1:f5", "0:f5"), MONO1,
     False, "1 of 2 effects"),
    # Coherence: once a core saw the chunk at the final state, it never sees it older again.
    ("coherence keeps the pair", _site("cc90", "f5f5"), _plan("1:f5", "0:f5"), ARB2, True, ""),
    # Decision 10: a sync after the last write changes nothing.
    ("a trailing sync changes nothing", _site(A_ORIG, A_FINAL, 0x1000), _plan("1:679a402301000804", "sync"),
     ARB8, False, "far call"),
    # SYSENTER (0F 34) in a view: an other instruction, a stray effect.
    ("sysenter", _site("cc909090", "90909090"), _plan("0:0f34", "2:9090", "0:9090"), ARB64, False, "sysenter"),
    # 0F 34 inside the final code's offset (the final code run from offset 1 reads SYSENTER).
    ("sysenter inside an operand", _site("9a230100000200", "9a0f3400000804"),
     _plan("1:0f340000", "5:0804"), ARB64, True, ""),
]


@pytest.mark.parametrize("name,site,plan,model,safe,why", KNOWN, ids=[k[0] for k in KNOWN])
def test_known_cases(name, site, plan, model, safe, why):
    policy = Policy(int_vectors=(0x66,), name="no-67") if "without INT 67h" in name else RDOS_POLICY
    r = brute_check(site, plan, model, policy)
    assert r.safe is safe, r.reason
    assert why in r.reason
    assert Checker(site, model, policy).check(plan).safe is safe


def _agreement(seed: int, n: int) -> None:
    rng = random.Random(seed)
    budget = 200_000  # views per case; a case past it is left out (and counted)
    verdicts: Counter[str] = Counter()
    by_source: Counter[tuple[str, bool]] = Counter()
    by_chunk: Counter[tuple[int, bool]] = Counter()
    views = 0
    skipped = 0
    disagreements = []
    t0 = time.perf_counter()
    done = 0
    while done < n:
        case = random_case(rng)
        try:
            checker = Checker(case.site, case.model, case.policy)
        except PlanError as e:  # the final code is not clean code under this policy: both say so
            assert final_effects(bytes(case.site.final), bytes(case.site.context), 0, case.site.address,
                                 case.site.bitness, case.policy) is None, (e, case.describe())
            continue
        main = checker.check(case.plan)
        try:
            brute = brute_check(case.site, case.plan, case.model, case.policy, budget)
        except TooBig:
            skipped += 1
            continue
        done += 1
        views += brute.views
        verdicts["safe" if brute.safe else "unsafe"] += 1
        by_source[(case.source.split("+")[0], brute.safe)] += 1
        by_chunk[(case.model.chunk, brute.safe)] += 1
        if brute.safe != main.safe:
            why = main.witness.describe() if main.witness else ""
            disagreements.append(f"{case.describe()}\n  brute force: {brute.safe} {brute.reason}\n"
                                 f"  checker: {main.safe} {why}")
    seconds = time.perf_counter() - t0
    print(f"\nbrute force vs checker: {n} cases (seed {seed}), {verdicts['safe']} safe, {verdicts['unsafe']} unsafe, "
          f"{skipped} left out over {budget} views, {views} views enumerated, {seconds:.1f} s")
    print("  by source (safe/unsafe): " + ", ".join(f"{s} {by_source[(s, True)]}/{by_source[(s, False)]}"
                                                    for s in SOURCES))
    print("  by chunk (safe/unsafe): " + ", ".join(f"{c} {by_chunk[(c, True)]}/{by_chunk[(c, False)]}"
                                                   for c in CHUNK_WEIGHTS))
    assert not disagreements, f"{len(disagreements)} disagreements; first:\n" + "\n".join(disagreements[:3])
    # Not vacuous: both verdicts are plentiful, from every source and for every chunk size.
    assert verdicts["safe"] >= n // 4 and verdicts["unsafe"] >= n // 4, verdicts
    for s in SOURCES:
        assert by_source[(s, True)] >= n // 200 and by_source[(s, False)] >= n // 200, (s, by_source)
    for c in CHUNK_WEIGHTS:
        assert by_chunk[(c, True)] >= n // 200 and by_chunk[(c, False)] >= n // 200, (c, by_chunk)
    assert skipped <= n // 100


def test_bruteforce_agrees_with_the_checker_on_random_cases():
    """A few thousand (site, plan, model, policy) cases; GATELINK_BRUTE_SEED and
    GATELINK_BRUTE_CASES change the seed and the count."""
    _agreement(int(os.environ.get("GATELINK_BRUTE_SEED", "20250604")),
               int(os.environ.get("GATELINK_BRUTE_CASES", "5000")))


@pytest.mark.slow
def test_bruteforce_agrees_on_many_more_cases():
    _agreement(7, 50_000)


def test_templates_proven_safe_are_safe_on_instances():
    """A template plan the checker proves for every operand value (decision 8) is safe on each
    concrete instance the brute force tries, whatever the context bytes."""
    rng = random.Random(31337)
    proven = unproven = 0
    while proven < 150:
        sid, form, bits = rng.choice(SITE_KINDS)
        site_t = make_site(sid, form, 0x1000 + rng.randrange(64), bits)
        model = _model(rng)
        source = rng.choice(("rdos", "thread", "int3-sync", "single-store", "synthesis"))
        if source == "synthesis":
            if form != "far" or model.chunk < 4:
                continue
            plan = synthesize(site_t, model, policy_for(site_t, RDOS_POLICY)).plan
            if plan is None:
                continue
        else:
            built = BUILDERS[source](site_t, model)
            if built is None:
                continue
            site_t, plan = built.site, built.plan
        policy = policy_for(site_t, RDOS_POLICY)
        if not Checker(site_t, model, policy).check(plan).safe:
            unproven += 1
            continue
        proven += 1
        for _ in range(3):
            site, inst = _concrete(site_t, plan, _values(rng, site_t))
            r = brute_check(site, inst, model, policy)
            assert r.safe, f"{Case(site, inst, model, policy, source).describe()}: {r.reason}"
    assert unproven >= 10
