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
  ``nop`` forms), ending at a 16-byte aligned address (a function start, in compiled code);
* a speculative linear decode from the end of an unconditional transfer, accepted only if it
  meets no instruction that decoded data produces (``decode.Flow`` / ``data_like``) and, where
  a proven boundary follows, lands exactly on it.

Data in code (strings, jump tables, constants) is never reached by proven control flow, and
heuristic walks stop at the data-like instructions text and tables decode into.
See docs/scanning.md for the argument and its limits.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from ..decode import CodeDecoder, Flow
from ..image import Anchor

CHAIN_LIMIT = 8192  # beyond this distance the sweep re-anchors near the candidate
SPEC_LIMIT = 2048  # longest speculative decode to a candidate
GAP_CHECK = 512  # speculative decodes must land on a proven boundary this close after the candidate
LOOKAHEAD = 64  # instructions decoded ahead of a forward jmp to find backward branches
PAD_WINDOWS = (256, 2048, CHAIN_LIMIT)
MAX_TABLE = 1024
BUCKET = 12  # targets are bucketed by offset >> BUCKET

# Padding compilers and assemblers put between functions (gas i386 idioms, MSVC/OW int3/nop).
_PAD = re.compile(
    rb"(?:\xcc|\x90|\x66\x90|\x89\xf6|\x8d\x36|\x8d\x76\x00|\x8d\x74\x26\x00|\x8d\xb6\x00\x00\x00\x00"
    rb"|\x8d\xb4\x26\x00\x00\x00\x00|\x8d\xbc\x27\x00\x00\x00\x00|\x2e\x8d\xb4\x26\x00\x00\x00\x00"
    rb"|\x0f\x1f\x00|\x0f\x1f\x40\x00|\x0f\x1f\x44\x00\x00|\x66\x0f\x1f\x44\x00\x00"
    rb"|\x0f\x1f\x80\x00\x00\x00\x00|\x0f\x1f\x84\x00\x00\x00\x00\x00|\x66\x0f\x1f\x84\x00\x00\x00\x00\x00"
    rb"|\x66\x2e\x0f\x1f\x84\x00\x00\x00\x00\x00)+"
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
    ) -> None:
        self.dec = dec
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
        self.seg_starts: list[int] = []
        self.seg_lens: list[int] = []
        self.data_ranges: list[tuple[int, int]] = []  # jump tables found inline
        self.decoded = 0

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
        self.seg_starts = []
        self.seg_lens = []

    def _stop(self, at: int, why: str, terminated: bool) -> None:
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
        if self.pos is not None and self.pos < lo - CHAIN_LIMIT:
            self._stop(lo - CHAIN_LIMIT, f"no boundary proven within {CHAIN_LIMIT} bytes", terminated=False)
        while True:
            if self.pos is None:
                if not self._resume(lo, hi):
                    return Verdict(None, None, False, "", self.stuck_why)
                continue
            if self.pos >= lo:
                break
            self._step()
        if self.pos <= hi:
            return self._verdict(self.pos, lo, hi)
        # The walk is already past the span: find the instruction that covers lo.
        starts = self.seg_starts
        for i in range(len(starts) - 1, -1, -1):
            s = starts[i]
            if s <= lo:
                n = self.seg_lens[i]
                if s + n > hi:
                    return Verdict(None, (s, n), self.strong, self._evidence())
                if s + n > lo:
                    return Verdict(s + n, None, self.strong, self._evidence())
                break
        return Verdict(None, None, False, "", "not reached")

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
        self.seg_starts.append(pos)
        self.seg_lens.append(n)
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
        addr, size = jt
        raw = self.read_table(addr, size * MAX_TABLE)
        table_off = self.dec.offset_of(addr)
        strong = self.strong and not self.speculative
        first = None
        count = 0
        for i in range(0, len(raw) - size + 1, size):
            if table_off is not None and first is not None and table_off + i >= first:
                break  # an inline table ends where the code it points to begins
            entry = int.from_bytes(raw[i : i + size], "little")
            off = self.dec.offset_of(entry)
            if off is None or (table_off is not None and table_off <= off < table_off + i + size):
                break
            self._add_target(off, strong, f"jump table at {addr:#x}")
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
            self._begin(start, False, f"after {self.stuck_why}", speculative=True)
            self.terminated = False  # speculate once per stop
            return True
        return False

    def _padding_anchor(self, floor: int, lo: int) -> tuple[int, str] | None:
        """The nearest boundary before ``lo`` that ends a run of padding after an unconditional
        transfer, at a 16-byte aligned address."""
        data = self.data
        for window in PAD_WINDOWS:
            a = max(floor, lo - window, self.start)
            best = None
            for m in _PAD.finditer(data, a, lo + 1):
                r, p = m.start(), m.end()
                if p > lo:
                    p = self._align_down(lo)
                    if p <= r:
                        continue
                if self.dec.address(p) & 15:
                    p = self._align_down(p)
                    if p <= r:
                        continue
                if self._transfer_before(r):
                    best = (p, r)
            if best is not None:
                p, r = best
                return p, f"padding {self.addr(r)}..{self.addr(p)} after an unconditional transfer"
            if a == floor or a == self.start:
                break
        return None

    def _align_down(self, off: int) -> int:
        return off - (self.dec.address(off) & 15)

    def _transfer_before(self, r: int) -> bool:
        """Do the bytes right before ``r`` end an unconditional transfer?"""
        d = self.data
        s = self.start
        if r - 1 >= s and d[r - 1] in (0xC3, 0xCB, 0xCF):
            return True
        if r - 3 >= s and d[r - 3] in (0xC2, 0xCA):
            return True
        if r - 2 >= s and d[r - 2] == 0xEB:
            return True
        if r - 5 >= s and d[r - 5] == 0xE9:
            return True
        if r - 2 >= s and d[r - 2] == 0xFF and 0xE0 <= d[r - 1] <= 0xE7:
            return True
        if r - 6 >= s and d[r - 6] == 0xFF and d[r - 5] == 0x25:
            return True
        if r - 7 >= s and d[r - 7] == 0xFF and d[r - 6] == 0x24:
            return True
        return False

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
            self.seg_starts.append(start)
            self.seg_lens.append(length)
            self.pos = end
        if self.strong and not self.speculative:
            self._add_target(end, True, f"end of site at {self.addr(start)}")
