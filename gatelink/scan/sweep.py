"""Instruction-boundary proof: a control-flow-aware sweep of one code region.

The sweep decodes forward from known boundaries and follows control flow the way it can be
proven from the bytes alone:

* fall-through after ordinary instructions, direct calls and conditional branches;
* after an unconditional transfer (``ret``, ``jmp``, ``ud2``...) it resumes only where a
  boundary is known: a direct branch or call target collected on the way, a jump-table entry,
  a format anchor (entry point, export), the end of a site already proven;
* a forward ``jmp T`` over a block (a loop entered at its condition) triggers a short look
  ahead from ``T`` for backward branches into the skipped block.

Positions proven this way from a *strong* start (a boundary the format guarantees, or a target
collected from strongly proven code) make a site ``certain``. When no proven boundary leads to
a candidate, the sweep may start from heuristic boundaries, which make a site ``likely``:

* a padding anchor: an unconditional transfer, then a run of compiler padding (``int3``,
  ``nop`` forms): the end of the run is a function start (or an aligned block), in compiled code;
* a speculative linear decode from the end of an unconditional transfer, accepted only if it
  meets no instruction that decoded data produces (``decode.Flow`` / ``data_like``) and, where
  a proven boundary follows, lands exactly on it.

Data in code (strings, jump tables, constants) is never reached by proven control flow, and
heuristic walks stop at the data-like instructions text and tables decode into.
See docs/scanning.md for the argument and its limits.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable
from dataclasses import dataclass

from ..decode import SYNC_AT, CodeDecoder, Flow
from ..image import Anchor

CHAIN_LIMIT = 8192  # beyond this distance the sweep re-anchors near the candidate
SPEC_LIMIT = CHAIN_LIMIT  # longest speculative decode to a candidate
GAP_CHECK = 512  # speculative decodes must land on a proven boundary this close after the candidate
LOOKAHEAD = 64  # instructions decoded ahead of a forward jmp to find backward branches
PAD_WINDOWS = (256, 2048, CHAIN_LIMIT)
SYNC_DISTANCE = 32  # self-synchronising decodes start this far (and up to 14 more) before a candidate
TABLE_REACH = 1 << 16  # jump-table entries point this close to the table, at most
SYNC_WALK = CHAIN_LIMIT  # a strong walk this close to a candidate decides instead (its proof is certain)
PAD_SLACK = 64  # padding is searched this far past a candidate, so a run is seen whole
MAX_TABLE = 1024
BUCKET = 12  # targets are bucketed by offset >> BUCKET

# Padding compilers and assemblers put between functions (gas i386 idioms, MSVC/OW int3/nop).
_PAD_IDIOMS = (
    rb"(?:\xcc|\x90|\x66\x90|\x89\xf6|\x8d\x36|\x8d\x76\x00|\x8d\x74\x26\x00|\x8d\xb6\x00\x00\x00\x00"
    rb"|\x8d\xb4\x26\x00\x00\x00\x00|\x8d\xbc\x27\x00\x00\x00\x00|\x2e\x8d\xb4\x26\x00\x00\x00\x00"
    rb"|\x0f\x1f\x00|\x0f\x1f\x40\x00|\x0f\x1f\x44\x00\x00|\x66\x0f\x1f\x44\x00\x00"
    rb"|\x0f\x1f\x80\x00\x00\x00\x00|\x0f\x1f\x84\x00\x00\x00\x00\x00|\x66\x0f\x1f\x84\x00\x00\x00\x00\x00"
    rb"|\x66\x2e\x0f\x1f\x84\x00\x00\x00\x00\x00)"
)
_PAD_ONE = re.compile(_PAD_IDIOMS)
# A C string (optionally after alignment zeros; at least five characters, three of them lower
# case letters or spaces): what follows a transfer in a code segment that keeps its strings
# there. Speculation never starts at one.
_TEXT = re.compile(rb"\x00{0,15}([\t\n\r\x20-\x7e]{5,})\x00")
_TEXT_LETTERS = re.compile(rb"[a-z ]")
# An unconditional transfer's last bytes (ret, retf, iret, ret n, jmp short/near, jmp reg,
# jmp [disp32], jmp [disp32 + reg*4]), then a padding run (group 1).
_PAD_RUN = re.compile(
    rb"(?:[\xc3\xcb\xcf]|[\xc2\xca]..|\xeb.|\xe9....|\xff[\xe0-\xe7]|\xff\x25....|\xff\x24.....)(" + _PAD_IDIOMS + rb"+)",
    re.DOTALL,
)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the sweep knows about the bytes ``[lo, hi]`` of a candidate.

    Exactly one of: ``boundary`` (the first instruction start in ``[lo, hi]``), ``covering``
    (``(start, length)`` of an instruction that starts before ``lo`` and ends after ``hi``) or
    neither (unreached; ``reason`` says why).
    """

    boundary: int | None
    covering: tuple[int, int] | None
    strong: bool
    evidence: str
    reason: str = ""


class Sweep:
    """Sweeps one code region forward, candidate by candidate (callers go in address order)."""

    def __init__(
        self,
        dec: CodeDecoder,
        anchors: tuple[Anchor, ...],
        read_table: Callable[[int, int], bytes] | None = None,
        self_sync: bool = False,
    ) -> None:
        self.dec = dec
        self.self_sync = self_sync and dec.bitness == 32
        self.data: bytes = dec._data  # noqa: SLF001 - same buffer, read-only
        self.read_table = read_table
        self.start = dec.start
        self.end = dec.end
        self.strong_targets: dict[int, dict[int, str]] = {}
        self.weak_targets: dict[int, dict[int, str]] = {}
        for a in anchors:
            off = self.start + a.offset
            self._add_target(off, a.strong, f"{a.kind.value} {a.name}".strip())
        self.pos: int | None = None  # next instruction start of the current walk
        self.stuck_at = self.start
        self.stuck_why = "start of region"
        self.terminated = False  # stuck after an unconditional transfer (speculation allowed)
        self.strong = False
        self.speculative = False
        self.evidence = ""
        self.seg_start = 0
        # Decoded instruction starts of the current walk segment, for looking back.
        self.last_insn: tuple[int, int] | None = None  # (start, length) last decoded in this segment
        self.data_ranges: list[tuple[int, int]] = []  # jump tables found inline
        self.decoded = 0
        self.pad_runs: list[tuple[int, int]] = []  # (start, end) of padding runs after a transfer
        self.pad_lo = self.pad_hi = self.start  # padding runs are known in [pad_lo, pad_hi)

    # -- targets ----------------------------------------------------------------------------

    def _add_target(self, off: int, strong: bool, why: str) -> None:
        if not (self.start <= off < self.end):
            return
        table = self.strong_targets if strong else self.weak_targets
        bucket = table.setdefault(off >> BUCKET, {})
        bucket.setdefault(off, why)

    def _first_target(self, table: dict[int, dict[int, str]], lo: int, hi: int) -> tuple[int, str] | None:
        """Smallest target in ``[lo, hi]``."""
        for b in range(lo >> BUCKET, (hi >> BUCKET) + 1):
            bucket = table.get(b)
            if not bucket:
                continue
            best = None
            for t in bucket:
                if lo <= t <= hi and (best is None or t < best):
                    best = t
            if best is not None:
                return best, bucket[best]
        return None

    def _last_target(self, table: dict[int, dict[int, str]], lo: int, hi: int) -> tuple[int, str] | None:
        """Largest target in ``[lo, hi]``."""
        for b in range(hi >> BUCKET, (lo >> BUCKET) - 1, -1):
            bucket = table.get(b)
            if not bucket:
                continue
            best = None
            for t in bucket:
                if lo <= t <= hi and (best is None or t > best):
                    best = t
            if best is not None:
                return best, bucket[best]
        return None

    # -- walking ----------------------------------------------------------------------------

    def addr(self, off: int) -> str:
        return f"{self.dec.address(off):#x}"

    def _begin(self, off: int, strong: bool, evidence: str, speculative: bool = False) -> None:
        self.pos = off
        self.strong = strong
        self.evidence = evidence
        self.speculative = speculative
        self.seg_start = off
        self.last_insn = None

    def _stop(self, at: int, why: str, terminated: bool) -> None:
        if at == self.pos and at == self.seg_start and self.last_insn is None:
            at += 1  # a walk that dies where it began must never be begun there again
        self.pos = None
        self.stuck_at = at
        self.stuck_why = why
        self.terminated = terminated

    def _in_data(self, off: int) -> tuple[int, int] | None:
        for r in self.data_ranges:
            if r[0] <= off < r[1]:
                return r
        return None

    def prove(self, lo: int, hi: int) -> Verdict:
        """Find the instruction boundary status of ``[lo, hi]`` (``lo`` earliest stub start,
        ``hi`` the stub's opcode)."""
        tbl = self._in_data(lo)
        if tbl is not None:
            return Verdict(None, None, False, "", f"inside a jump table at {self.addr(tbl[0])}")
        # A branch target inside the span is a boundary: control goes there.
        t = self._first_target(self.strong_targets, lo, hi)
        walk_decides = self.pos is not None and self.strong and self.pos <= lo
        if t is None and not walk_decides:
            t = self._first_target(self.weak_targets, lo, hi)
            strong = False
        else:
            strong = True
        if t is not None:
            self._begin(t[0], strong, f"target of {t[1]}")
            return self._verdict(t[0], lo, hi)
        if self.self_sync:
            if not walk_decides:
                # A strong target before the candidate revives a walk whose proof is certain.
                floor = self.pos if self.pos is not None else self.stuck_at
                t = self._last_target(self.strong_targets, max(floor, lo - SYNC_WALK), lo)
                if t is not None:
                    self._begin(t[0], True, f"target of {t[1]}")
                    walk_decides = True
            if not (walk_decides and lo - self.pos <= SYNC_WALK):
                v = self.converge(lo, hi)
                if v is not None:
                    return v
        if self.pos is not None and self.pos < lo - CHAIN_LIMIT:
            self._stop(lo - CHAIN_LIMIT, f"no boundary proven within {CHAIN_LIMIT} bytes", terminated=False)
        while True:
            if self.pos is None:
                if not self._resume(lo, hi):
                    return Verdict(None, None, False, "", self.stuck_why)
                continue
            if self.pos >= lo:
                break
            pos, last, count = self.dec.run(self.pos, lo, not self.strong)
            if count:
                self.decoded += count
                self.last_insn = (last, pos - last)
                self.pos = pos
            if pos < lo:
                self._step()  # the instruction the fast path leaves to the full rules
        if self.pos <= hi:
            return self._verdict(self.pos, lo, hi)
        # The walk is already past the span: find the instruction that covers lo.
        # Walks stop at the first start at or after lo, so it is the last instruction decoded.
        if self.last_insn is not None:
            s, n = self.last_insn
            if s <= lo:
                if s + n > hi:
                    return Verdict(None, (s, n), self.strong, self._evidence())
                if s + n > lo:
                    return Verdict(s + n, None, self.strong, self._evidence())
        return Verdict(None, None, False, "", "not reached")

    def converge(self, lo: int, hi: int) -> Verdict | None:
        """Prove ``[lo, hi]`` by self-synchronisation, or None (the walk must decide).

        Straight-line code has an instruction start in any 15 consecutive bytes. Decode from
        each of the 15 offsets ``SYNC_DISTANCE`` bytes before the candidate: a start whose
        stream meets an invalid or data-like instruction is not a boundary; if every other
        stream says the same about the span (x86 decoding resynchronises within a few
        instructions), so does the true one. Only where the bytes before the candidate look like
        plain code: no string, nothing like a jump table (invalid and data-like instructions
        end a stream; a ``jmp`` or ``ret`` does not: in compiled code the next block follows).
        """
        a = lo - SYNC_DISTANCE - 14
        if a < self.start:
            return None
        data = self.data
        if _TEXT.search(data, a - 16, lo) is not None:
            return None
        if self._table_like(a - 8, lo):
            return None
        outcome, decoded = self.dec.sync_vote(a, 15, lo, hi)
        self.decoded += decoded
        if outcome is None:
            return None
        how = f"self-synchronising decode from {self.addr(a)}..{self.addr(a + 14)}"
        # The walk goes on from here, so the candidates after this one keep a near start.
        kind, s, n = outcome
        self._begin(s, False, how)
        if kind == SYNC_AT:
            return Verdict(s, None, False, how)
        self.pos = s + n
        self.last_insn = (s, n)
        return Verdict(None, (s, n), False, how)

    def _table_like(self, lo: int, hi: int) -> bool:
        """Two consecutive dwords in ``[lo, hi)`` (at any alignment: assemblers do not align
        tables) that point into the region near themselves: a jump table (its entries are
        code addresses of the same function). Or a table the walk found there."""
        lo = max(lo, self.start)
        for r in self.data_ranges:
            if r[0] < hi and lo < r[1]:
                return True
        data = self.data
        dec = self.dec
        # An entry's high half is within one of the table's own address's high half: find
        # those byte pairs first (in C), then look at the few dwords around them.
        top = dec.address(lo) >> 16
        hits: set[int] = set()
        for h in (top - 1, top, top + 1):
            pair = (h & 0xFFFF).to_bytes(2, "little")
            q = data.find(pair, lo + 2, hi)
            while q != -1:
                t = dec.offset_of(int.from_bytes(data[q - 2 : q + 2], "little"))
                if t is not None and abs(t - q) <= TABLE_REACH:
                    hits.add(q - 2)
                q = data.find(pair, q + 1, hi)
        return any(q + 4 in hits for q in hits)

    def _verdict(self, b: int, lo: int, hi: int) -> Verdict:
        v = Verdict(b, None, self.strong, self._evidence())
        if self.speculative:
            bad = self._gap_check(b, hi)
            if bad:
                return Verdict(None, None, False, "", bad)
        return v

    def _evidence(self) -> str:
        how = "speculative linear decode" if self.speculative else "decoded"
        return f"{how} from {self.addr(self.seg_start)} ({self.evidence})"

    def _step(self) -> bool:
        """Decode one instruction of the current walk. Returns False if the walk stopped."""
        pos = self.pos
        assert pos is not None
        n, flow, tgt, data_like = self.dec.step(pos)
        self.decoded += 1
        if n == 0:
            self._stop(pos, f"invalid instruction at {self.addr(pos)}", terminated=False)
            return False
        if data_like and not self.strong:
            self._stop(pos, f"data-like bytes decode as '{self.dec.text(pos)}' at {self.addr(pos)}", terminated=False)
            return False
        self.last_insn = (pos, n)
        end = pos + n
        if tgt is not None and tgt > pos:
            self._add_target(tgt, self.strong and not self.speculative, f"{self._kind(flow)} at {self.addr(pos)}")
        if flow is Flow.JUMP or flow is Flow.STOP:
            what = f"'{self.dec.text(pos)}' at {self.addr(pos)}"
            if flow is Flow.JUMP and tgt is not None and tgt > end:
                self._look_ahead(tgt, end)
            elif flow is Flow.STOP:
                self._jump_table(pos, end)
            self._stop(end, f"unconditional transfer {what}", terminated=True)
            return False
        self.pos = end
        return True

    @staticmethod
    def _kind(flow: Flow) -> str:
        return {Flow.CALL: "call", Flow.COND: "branch", Flow.JUMP: "jmp"}.get(flow, "branch")

    def _look_ahead(self, target: int, gap_start: int) -> None:
        """Decode a little from a forward jmp's target to find backward branches into the gap
        it skips (a loop entered at its condition)."""
        pos = target
        strong = self.strong and not self.speculative
        for _ in range(LOOKAHEAD):
            n, flow, tgt, data_like = self.dec.step(pos)
            self.decoded += 1
            if n == 0 or data_like:
                return
            if tgt is not None and gap_start <= tgt < target:
                self._add_target(tgt, strong, f"branch at {self.addr(pos)}")
            if flow is Flow.JUMP or flow is Flow.STOP:
                return
            pos += n

    def _jump_table(self, pos: int, end: int) -> None:
        jt = self.dec.jump_table(pos)
        if jt is None or self.read_table is None:
            return
        addr, size, bound = jt
        raw = self.read_table(addr, size * min(bound or MAX_TABLE, MAX_TABLE))
        table_off = self.dec.offset_of(addr)
        strong = self.strong and not self.speculative
        why = f"jump table at {addr:#x}"
        first = None
        count = 0
        for i in range(0, len(raw) - size + 1, size):
            if table_off is not None and first is not None and table_off + i >= first:
                break  # an inline table ends where the code it points to begins
            entry = int.from_bytes(raw[i : i + size], "little")
            off = self.dec.offset_of(entry)
            if off is None or (table_off is not None and table_off <= off < table_off + i + size):
                break
            self._add_target(off, strong, why)
            first = off if first is None else min(first, off)
            count += 1
        if table_off is not None and count:
            self.data_ranges.append((table_off, table_off + count * size))

    def _resume(self, lo: int, hi: int) -> bool:
        """Pick where to continue after the walk stopped (see the module docstring)."""
        floor = self.stuck_at
        if floor > lo:
            return False
        for table, strong in ((self.strong_targets, True), (self.weak_targets, False)):
            t = self._last_target(table, floor, lo)
            if t is not None:
                self._begin(t[0], strong, f"target of {t[1]}")
                return True
        pad = self._padding_anchor(floor, lo)
        if pad is not None:
            self._begin(pad[0], False, pad[1])
            return True
        if self.terminated and lo - floor <= SPEC_LIMIT:
            start = floor
            tbl = self._in_data(start)
            if tbl is not None:
                start = tbl[1]
            m = _TEXT.match(self.data, start, lo)
            if m is not None and len(_TEXT_LETTERS.findall(m.group(1))) >= 3:
                # A string kept in the code segment: what follows it may be more data.
                self._stop(start, f"a string at {self.addr(start)} after {self.stuck_why}", terminated=False)
                return False
            self._begin(start, False, f"after {self.stuck_why}", speculative=True)
            self.terminated = False  # speculate once per stop
            return True
        return False

    def _padding_anchor(self, floor: int, lo: int) -> tuple[int, str] | None:
        """The nearest boundary in ``[floor, lo]`` that ends a run of padding after an
        unconditional transfer (where compilers start functions and aligned blocks). The search widens from the
        candidate backwards (most functions are short)."""
        runs = self.pad_runs
        for window in PAD_WINDOWS:
            a = max(floor, lo - window, self.start)
            self._scan_padding(a, min(self.end, lo + PAD_SLACK))
            i = bisect.bisect_right(runs, (lo, 1 << 62))
            while i > 0:
                i -= 1
                r, e = runs[i]
                if r < a:
                    break
                p = self._aligned_idiom_end(r, min(e, lo))
                if p > r:
                    return p, f"padding {self.addr(r)}..{self.addr(p)} after an unconditional transfer"
            if a == floor or a == self.start:
                break
        return None

    def _scan_padding(self, lo: int, hi: int) -> None:
        """Make ``pad_runs`` cover ``[lo, hi)``: the padding runs that follow a transfer.

        The covered span only grows while candidates advance (they come in address order), so
        each byte is searched about once; one regex whose first byte is a transfer opcode keeps
        the search in C. A run is recorded by its first padding byte."""
        runs = self.pad_runs
        if lo >= self.pad_hi or hi <= self.pad_lo:  # disjoint: start afresh
            runs.clear()
            self.pad_lo = self.pad_hi = lo
        if lo < self.pad_lo:
            below = [(m.start(1), m.end(1)) for m in _PAD_RUN.finditer(self.data, lo, self.pad_lo + PAD_SLACK)]
            keep = [x for x in below if x[0] < self.pad_lo]
            runs[:0] = keep
            self.pad_lo = lo
        if hi > self.pad_hi:
            for m in _PAD_RUN.finditer(self.data, max(self.pad_lo, self.pad_hi - PAD_SLACK), hi):
                r = m.start(1)
                while runs and runs[-1][0] >= r:
                    runs.pop()
                runs.append((r, m.end(1)))
            self.pad_hi = hi

    def _aligned_idiom_end(self, r: int, hi: int) -> int:
        """The last end of a whole padding idiom in the run from ``r``, at most ``hi``, at a
        16-byte aligned address (or ``r`` if none). Requiring the alignment compilers pad to
        keeps ``ret``-and-``int3``-like bytes inside other instructions from posing as padding."""
        best = r
        p = r
        while True:
            m = _PAD_ONE.match(self.data, p, hi)
            if m is None:
                return best
            p = m.end()
            if not self.dec.address(p) & 15:
                best = p

    def _gap_check(self, b: int, hi: int) -> str:
        """A speculative boundary must agree with the next proven boundary after it."""
        nxt = self._first_target(self.strong_targets, hi + 1, hi + GAP_CHECK)
        if nxt is None:
            return ""
        pos = b
        while pos < nxt[0]:
            n, flow, tgt, data_like = self.dec.step(pos)
            self.decoded += 1
            if n == 0 or (data_like and pos > hi):
                return f"speculative decode meets data-like bytes at {self.addr(pos)}"
            if flow is Flow.JUMP or flow is Flow.STOP:
                return ""  # the stream ends before the proven code: nothing to compare
            pos += n
        if pos != nxt[0]:
            return f"speculative decode runs over the proven boundary {self.addr(nxt[0])}"
        return ""

    def accept(self, start: int, length: int) -> None:
        """A site at ``start`` was proven: continue the walk after it (UD2 forms carry inline
        operands the decoder cannot step over; every form returns to its end)."""
        end = start + length
        if self.pos is not None and start <= self.pos < end:
            self.last_insn = (start, length)
            self.pos = end
        if self.strong and not self.speculative:
            self._add_target(end, True, f"end of site at {self.addr(start)}")


class CallIndex:
    """Direct near calls (``E8``) within ``CALL_REACH`` of some spots, by target: evidence for
    code that the address-ordered sweep never reached from before (callers far away or after).

    Built only when some candidate is left unresolved; the ``E8`` bytes are not trusted until
    :func:`prove_by_calls` proves the call itself starts an instruction.
    """

    def __init__(self, dec: CodeDecoder, spots: list[int]) -> None:
        data = dec._data  # noqa: SLF001 - same buffer, read-only
        start, end = dec.start, dec.end
        size = 4 if dec.bitness == 32 else 2
        mask = 0xFFFFFFFF if size == 4 else 0xFFFF
        by_target: dict[int, list[int]] = {}
        # Calls from within CALL_REACH of the spots: merged windows, each searched once.
        windows: list[list[int]] = []
        for x in sorted(spots):
            a, b = max(start, x - CALL_REACH), min(end - size, x + CALL_REACH)
            if windows and a <= windows[-1][1]:
                windows[-1][1] = max(windows[-1][1], b)
            else:
                windows.append([a, b])
        for a, b in windows:
            q = data.find(b"\xe8", a, b)
            while q != -1:
                rel = int.from_bytes(data[q + 1 : q + 1 + size], "little", signed=True)
                t = dec.offset_of((dec.address(q) + 1 + size + rel) & mask)
                if t is not None:
                    by_target.setdefault(t, []).append(q)
                q = data.find(b"\xe8", q + 1, b)
        self.targets = sorted(by_target)
        self.sources = by_target

    def before(self, lo: int, floor: int) -> list[int]:
        """Call targets in ``[floor, lo]``, nearest first."""
        i = bisect.bisect_right(self.targets, lo)
        out = []
        while i > 0 and self.targets[i - 1] >= floor:
            i -= 1
            out.append(self.targets[i])
        return out


CALL_TRIES = 4  # call targets tried per unresolved candidate
CALL_REACH = 1 << 20  # callers are looked for this far (1 MiB) around an unresolved candidate


def prove_by_calls(
    dec: CodeDecoder, anchors: tuple[Anchor, ...], read_table: Callable[[int, int], bytes] | None,
    calls: CallIndex, lo: int, hi: int,
) -> tuple[Verdict, int] | None:
    """Prove ``[lo, hi]`` from the target of a direct call whose own start is proven, trying
    the nearest targets first. Returns (verdict, instructions decoded) or None."""
    decoded = 0
    for t in calls.before(lo, max(dec.start, lo - CHAIN_LIMIT))[:CALL_TRIES]:
        for src in calls.sources[t]:
            probe = Sweep(dec, anchors, read_table)
            v = probe.prove(src, src)
            decoded += probe.decoded
            if v.boundary != src:
                continue
            sweep = Sweep(dec, anchors, read_table)
            sweep._add_target(t, v.strong, f"call at {dec.address(src):#x} ({v.evidence})")
            got = sweep.prove(lo, hi)
            decoded += sweep.decoded
            if got.boundary is not None or got.covering is not None:
                return got, decoded
            break  # this target leads nowhere; try the next one
    return None
