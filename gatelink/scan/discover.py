"""Code discovery for a whole code region: every instruction start that evidence proves, before
any candidate is judged.

The address-ordered sweep (:mod:`.sweep`) proves a candidate from the nearest boundary before
it. That fails on what real compilers emit: a driver's switch table sits at the start of its
code segment, far from the jump that uses it; handlers are reached only by their address,
loaded by the init routine at the *end* of the segment; applications keep function pointers in
data. Evidence that points backwards needs the whole region, so small regions (up to
``FULL_LIMIT``; every RDOS binary) are analysed whole here first, by recursive descent:

* **seeds**: the format's strong anchors (entry point, exports, a PE code section's start);
* **flow**: fall-through, direct calls and branches, and jump tables (``jmp [T + reg*4]``,
  Open Watcom's pre-scaled ``shl reg,2`` / ``jmp cs:[reg + T]``, 16-bit ``jmp cs:[bx + T]``)
  whose entries are bounded by the compiler's check or, in a relocated image, by the
  relocations that cover them;
* **code pointers**: PE base relocations whose value points into the region (the linker says
  it is an address), and, where an image has no relocations, immediates of proven
  instructions (``mov r32, imm32``, ``push imm32``, ``mov [m], imm32``, 16-bit ``66 BE imm32``)
  equal to a position in the region. A pointer is only a hypothesis: it is *confirmed* by a
  trial descent from it that meets no invalid or data-like instruction, decodes no byte that is
  known data, starts no instruction inside another proven one or inside a relocated field, and
  leaves every relocated field it covers exactly as an instruction's operand. A C string at
  the target refutes it too (one code pointer in twelve names a string kept in code).

Every proven start carries an evidence level: ``STRONG`` (a chain of proven boundaries from a
strong anchor, where relocated pointers count as proven: the linker placed the address and the
decoding confirmed it) or ``POINTER`` (reached only through an unrelocated immediate, which
may equal a code offset by coincidence, or from a weak anchor). Sites at ``STRONG`` starts are
``certain``; the rest are ``likely``. Whatever this pass does not reach is left to the
sweep's heuristics (padding, speculation, self-synchronisation), as before.
"""

from __future__ import annotations

import bisect
import re
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..decode import STRAIGHT_BUSY, STRAIGHT_SEEN, CodeDecoder, Flow
from ..image import Anchor

FULL_LIMIT = 8 << 20  # regions up to this size are discovered whole (every RDOS binary is far smaller)
STRONG = 3
POINTER = 2
TRIAL_LIMIT = 1 << 16  # instructions a trial descent may decode before it is cut short
MAX_TABLE = 1024
TABLE_REACH = 1 << 16

# A C string: at least four printable characters and a NUL. A code pointer that names one is a
# pointer to data kept in code (messages, device names).
_CSTRING = re.compile(rb"[\t\n\r\x20-\x7e]{4,}\x00")

# Instruction forms whose 32-bit (or 16-bit) immediate may be a code address, by first bytes:
# mov r32, imm32 (B8+r), push imm32 (68), mov r/m32, imm32 (C7); in 16-bit code with an
# operand-size prefix (66 B8+r imm32, 66 68, 66 C7) or plain 16-bit mov r16, imm16 / push imm16.
_IMM_OPS = frozenset([0x68, 0xC7, *range(0xB8, 0xC0)])


_ONES = [b"\x01" * i for i in range(32)]


@dataclass(frozen=True, slots=True)
class Seed:
    offset: int
    level: int
    why: str


class _Starts:
    """Instruction starts a bounds check may begin at: this descent's and proven ones."""

    __slots__ = ("a", "b", "s0")

    def __init__(self, a: bytearray, b: bytearray, s0: int) -> None:
        self.a, self.b, self.s0 = a, b, s0

    def __contains__(self, p: object) -> bool:
        assert isinstance(p, int)
        r = p - self.s0
        return 0 <= r < len(self.a) and bool(self.a[r] or self.b[r])


class Rejected(Exception):
    """A trial descent met something that cannot be code (the reason is the message)."""


class CodeMap:
    """The proven instruction starts of one code region.

    ``ilen[i]`` is the length of the instruction starting at region offset ``i`` (0: none
    proven there); ``level[i]`` its evidence level; ``seed_of[i]`` the index in ``seeds`` of the
    seed whose descent proved it; ``data[i]`` is 1 for bytes known to be data (jump tables,
    strings a pointer named). Offsets here are file offsets, like the rest of the scanner.
    """

    def __init__(self, dec: CodeDecoder, anchors: Sequence[Anchor], relocs: Sequence[int],
                 read_table: Callable[[int, int], bytes], immediates: bool) -> None:
        self.dec = dec
        self.start = dec.start
        self.end = dec.end
        n = self.end - self.start
        self.ilen = bytearray(n)
        self.level = bytearray(n)
        self.busy = bytearray(n)  # 1 where a proven instruction covers the byte, or data, or a relocated field
        self.known = bytearray(n)  # 1 where a proven instruction covers the byte, or known data
        self.scratch = bytearray(n)  # the current descent's instruction lengths (cleared after it)
        self.data = bytearray(n)
        self.seed_of = array("i", bytes(4 * n))
        self.seeds: list[Seed] = []
        self.read_table = read_table
        self.immediates = immediates
        self.decoded = 0
        # Relocated fields (file offsets of their first byte) inside this region, and a byte map.
        self.relocs = [r for r in relocs if self.start <= r < self.end]
        self.reloc_map = bytearray(n)
        for r in self.relocs:
            a = r - self.start
            self.reloc_map[a : a + 4] = b"\x01\x01\x01\x01"[: n - a]
        self.busy[:] = self.reloc_map
        # First bytes of instructions whose immediate may be a code address (no relocations).
        self._imm_first = (_IMM_OPS | {0x66}) if immediates else None
        self.tables: list[tuple[int, int, str]] = []  # (start, end, why): jump tables found
        self._imm_candidates: dict[int, str] = {}
        self._pending: list[tuple[int, int, str]] = []  # (offset, level, why) worklist
        self._probes: list[tuple[int, str]] = []  # entries of unbounded tables: each needs a trial
        self._seed_strong(anchors)

    # -- the analysis ------------------------------------------------------------------------

    def _seed_strong(self, anchors: Sequence[Anchor]) -> None:
        for a in anchors:
            off = self.start + a.offset
            if self.start <= off < self.end and a.strong:
                self._pending.append((off, STRONG, f"{a.kind.value} {a.name}".strip()))

    def run(self, weak: Sequence[Anchor], pointers: Sequence[tuple[int, str]]) -> CodeMap:
        """Discover: strong seeds and their flow, then relocated pointers (``pointers``: target
        file offset and why), then weak anchors and immediates, each confirmed by a trial."""
        self._drain()
        for off, why in pointers:
            self._try_pointer(off, STRONG, why)
            self._drain()
        for a in weak:
            off = self.start + a.offset
            if self.start <= off < self.end:
                self._try_pointer(off, POINTER, f"{a.kind.value} {a.name} (weak)".strip())
                self._drain()
        # Immediates found in newly proven code may point to more code: repeat to a fixpoint.
        while self._imm_candidates:
            batch = sorted(self._imm_candidates.items())
            self._imm_candidates = {}
            for off, why in batch:
                self._try_pointer(off, POINTER, why)
                self._drain()
        return self

    def _drain(self) -> None:
        """Commit descents from pending proven starts (no trial: they are proven already)."""
        while self._pending:
            off, level, why = self._pending.pop()
            rel = off - self.start
            if self.ilen[rel] and self.level[rel] >= level:
                continue
            if self.busy[rel] and not self.ilen[rel]:
                continue  # inside a proven instruction, data or a relocated field: contradicts what is proven
            self.seeds.append(Seed(off, level, why))
            mark = len(self._probes)
            try:
                # Only a strong chain is trusted without a trial: a call found in code reached by
                # a coincidental immediate may itself be garbage.
                insns, targets, tables = self._descend(off, level, trial=level < STRONG)
            except Rejected:
                self.seeds.pop()
                del self._probes[mark:]
                continue
            self._commit(insns, targets, tables, level, len(self.seeds) - 1)
            self._run_probes(level)

    def _run_probes(self, level: int) -> None:
        while self._probes:
            off, why = self._probes.pop()
            self._try_pointer(off, level, why)

    def _try_pointer(self, off: int, level: int, why: str) -> None:
        rel = off - self.start
        if self.ilen[rel] or self.busy[rel]:
            return  # already proven (or contradicted by proven code, known data, a relocated field)
        m = _CSTRING.match(self.dec._data, off, min(self.end, off + 256))  # noqa: SLF001
        if m is not None:
            return  # a string kept in code
        if level < STRONG and gap_verdict(self, off, off, _never).covering is not None:
            # An unrelocated immediate may equal a code offset by coincidence: the code around
            # it, decoded from where proven code ends, must not put an instruction across it.
            return
        mark = len(self._probes)
        try:
            insns, targets, tables = self._descend(off, level, trial=True)
        except Rejected:
            del self._probes[mark:]
            return
        self.seeds.append(Seed(off, level, why))
        self._commit(insns, targets, tables, level, len(self.seeds) - 1)
        self._run_probes(level)

    def _commit(self, insns: list[tuple[int, int]], targets: list[tuple[int, str]],
                tables: list[tuple[int, int, str]], level: int, seed: int) -> None:
        s0 = self.start
        for p, n in insns:
            r = p - s0
            if self.ilen[r] and self.level[r] >= level:
                continue
            self.ilen[r] = n
            self.level[r] = level
            self.seed_of[r] = seed
            self.busy[r : r + n] = _ONES[n]
            self.known[r : r + n] = _ONES[n]
        for t0, t1, why in tables:
            self.data[t0 - s0 : t1 - s0] = b"\x01" * (t1 - t0)
            self.busy[t0 - s0 : t1 - s0] = b"\x01" * (t1 - t0)
            self.known[t0 - s0 : t1 - s0] = b"\x01" * (t1 - t0)
            self.tables.append((t0, t1, why))
        for t, why in targets:
            self._pending.append((t, level, why))

    def _descend(self, off: int, level: int, trial: bool) -> tuple[list[tuple[int, int]], list[tuple[int, str]],
                                                                    list[tuple[int, int, str]]]:
        """Decode the code reachable from ``off`` by fall-through and branches (the function it
        starts, in this region), up to proven code. Call targets come back as ``targets`` (the
        caller descends from them later, at the same level); bounded jump tables are followed
        here, unbounded ones leave their entries to be confirmed one by one. A ``trial`` raises
        :class:`Rejected` on anything that cannot be code; a proven descent just stops there."""
        dec = self.dec
        s0 = self.start
        ilen, busy, scratch = self.ilen, self.busy, self.scratch
        out: list[int] = []
        imm_out: list[int] = []
        targets: list[tuple[int, str]] = []
        tables: list[tuple[int, int, str]] = []
        rmap = self.reloc_map if self.relocs else None
        imm_first = self._imm_first
        work = [off]
        try:
            while work:
                pos = work.pop()
                while True:
                    pos, why = dec.straight(pos, busy, scratch, out, imm_first, imm_out, rmap)
                    self.decoded += 1
                    r = pos - s0
                    if why == STRAIGHT_SEEN:
                        break
                    if why == STRAIGHT_BUSY:
                        if ilen[r] and self.level[r] >= level:
                            break  # merged into proven code
                        if not ilen[r]:
                            if trial:
                                raise Rejected("decodes into " + ("data" if self.data[r] else "a relocated field"
                                                                  if self.reloc_map[r] else "proven code"))
                            break
                        # a start proven at a lower level: this chain upgrades it (decode on)
                    if pos >= self.end:
                        if trial:
                            raise Rejected("runs off the region")
                        break
                    n, flow, tgt, data_like = dec.step(pos)
                    if n == 0 or (data_like and (trial or level < STRONG)):
                        if trial:
                            raise Rejected("invalid or data-like instruction")
                        break
                    if rmap is not None and rmap.find(1, r + 1, r + n) != -1 and not self._relocs_fit(pos, n):
                        # Relocated bytes inside an instruction must be exactly an operand field.
                        if trial:
                            raise Rejected("an instruction splits a relocated field")
                        break
                    scratch[r] = n
                    out.append(pos)
                    if imm_first is not None and dec._data[pos] in imm_first:  # noqa: SLF001
                        imm_out.append(pos)
                    if trial and len(out) > TRIAL_LIMIT:
                        raise Rejected("too long to confirm")
                    if tgt is not None:
                        if flow is Flow.CALL:
                            targets.append((tgt, f"call at {dec.address(pos):#x}"))
                        elif flow is Flow.COND or flow is Flow.JUMP:
                            work.append(tgt)  # same function: part of this descent (and its trial)
                    if flow is Flow.JUMP:
                        break
                    if flow is Flow.STOP:
                        tab = self._jump_table(pos, _Starts(scratch, ilen, s0))
                        if tab is not None:
                            t0, t1, entries, why_t, bounded = tab
                            if t0 is not None:
                                if trial and any(scratch[q - s0] for q in range(t0, t1)):
                                    raise Rejected("a jump table overlaps its own code")
                                tables.append((t0, t1, why_t))
                            if bounded:
                                work.extend(entries)
                            else:
                                # The table's extent is a guess: each entry must confirm itself.
                                self._probes.extend((e, why_t) for e in entries)
                        break
                    pos += n
            insns = [(p, scratch[p - s0]) for p in out]
            if trial:
                # The trial's own instructions must not overlap one another either.
                last_end = -1
                for p, n in sorted(insns):
                    if p < last_end:
                        raise Rejected("overlapping instructions")
                    last_end = p + n
        finally:
            for p in out:
                scratch[p - s0] = 0
        if imm_first is not None:
            for p in imm_out:
                self._immediate(p)
        return insns, targets, tables

    def _relocs_fit(self, pos: int, n: int) -> bool:
        """Every relocated field overlapping the instruction at ``pos`` is one of its 32-bit
        immediate or displacement fields."""
        spans = self.dec.operand_spans(pos)
        fields = {pos + o for o, size in spans if size == 4}
        i = bisect.bisect_left(self.relocs, pos - 3)
        while i < len(self.relocs) and self.relocs[i] < pos + n:
            if self.relocs[i] not in fields:
                return False
            i += 1
        return True

    def _immediate(self, pos: int) -> None:
        """An immediate of the instruction at ``pos`` that equals a position in the region: a
        candidate code pointer (no relocations in this image to say it is an address)."""
        data = self.dec._data  # noqa: SLF001
        b = data[pos]
        if b == 0x66:
            b = data[pos + 1]
        if b not in _IMM_OPS:
            return
        v = self.dec.immediate(pos)
        if v is None:
            return
        n = self.dec.step(pos)[0]
        nxt = data[pos + n : pos + n + 2]
        if nxt[:1] == b"\x8e" or nxt == b"\x66\x8e":
            return  # moved on into a segment register: a selector (drivers load DS this way), not an address
        t = self.dec.offset_of(v)
        if t is None or t == pos:
            return
        self._imm_candidates.setdefault(t, f"immediate {v:#x} at {self.dec.address(pos):#x}")

    def _jump_table(self, pos: int, starts: _Starts) -> tuple[int | None, int, list[int], str, bool] | None:
        """The table of the indirect jump at ``pos``: (table start or None when it lies in
        another region, end, entry offsets, why, bounded). A table is bounded by the compiler's
        check, or by the relocations of a relocated image (every entry is relocated)."""
        jt = self.dec.jump_table(pos, starts)
        if jt is None:
            return None
        addr, size, bound = jt
        t0 = self.dec.offset_of(addr)
        count = bound if bound is not None else MAX_TABLE
        raw = self.read_table(addr, size * min(count, MAX_TABLE))
        relocated = bool(self.relocs) and size == 4
        entries: list[int] = []
        for i in range(0, len(raw) - size + 1, size):
            if relocated and t0 is not None and not self.reloc_map[t0 + i - self.start]:
                break  # a relocated image relocates every entry of a table in it
            e = self.dec.offset_of(int.from_bytes(raw[i : i + size], "little"))
            if e is None or (t0 is not None and t0 <= e < t0 + i + size):
                break
            if bound is None and not relocated:
                if t0 is not None and entries and t0 + i >= min(entries):
                    break  # an unbounded inline table ends where the code it points to begins
                if t0 is not None and abs(e - t0) > TABLE_REACH:
                    break
            entries.append(e)
        if not entries:
            return None
        why = f"jump table at {addr:#x}"
        return t0, (t0 + len(entries) * size) if t0 is not None else 0, entries, why, bound is not None or relocated

    # -- questions the classifier asks -------------------------------------------------------

    def start_in(self, lo: int, hi: int) -> int | None:
        """The first proven instruction start in ``[lo, hi]``."""
        r = self.ilen
        for p in range(lo, hi + 1):
            if self.start <= p < self.end and r[p - self.start]:
                return p
        return None

    def covering(self, lo: int) -> tuple[int, int] | None:
        """(start, length) of a proven instruction that starts before ``lo`` and covers it."""
        s0 = self.start
        if not (s0 <= lo < self.end) or not self.busy[lo - s0]:
            return None
        p = lo - 1
        while p >= s0 and p > lo - 16:
            n = self.ilen[p - s0]
            if n:
                return (p, n) if p + n > lo else None
            p -= 1
        return None

    def evidence(self, p: int) -> str:
        seed = self.seeds[self.seed_of[p - self.start]]
        return f"decoded from {self.dec.address(seed.offset):#x} ({seed.why})"

    def level_at(self, p: int) -> int:
        return self.level[p - self.start]

    def in_table(self, p: int) -> tuple[int, int, str] | None:
        if not self.data[p - self.start]:
            return None
        for t in self.tables:
            if t[0] <= p < t[1]:
                return t
        return None

    def relocated(self, lo: int, hi: int) -> bool:
        """Any byte of ``[lo, hi)`` inside a relocated field."""
        a, b = max(lo, self.start) - self.start, min(hi, self.end) - self.start
        return a < b and 1 in self.reloc_map[a:b]


def relocated_pointers(image_data: bytes, relocs: Sequence[int], regions: Sequence[tuple[int, int, int]],
                       dec: CodeDecoder) -> list[tuple[int, str]]:
    """Relocated dwords whose value is a position in ``dec``'s region: (target file offset,
    why), sorted by target. ``relocs`` are addresses; ``regions`` (address, size, file offset)
    of the image, to find where each relocated field lies in the file."""
    spans = sorted(regions)
    addrs = [r[0] for r in spans]
    out: dict[int, str] = {}
    for a in relocs:
        i = bisect.bisect_right(addrs, a) - 1
        if i < 0:
            continue
        ra, size, fo = spans[i]
        if a + 4 > ra + size:
            continue
        f = fo + (a - ra)
        v = int.from_bytes(image_data[f : f + 4], "little")
        t = dec.offset_of(v)
        if t is not None:
            out.setdefault(t, f"relocated pointer at {a:#x}")
    return sorted(out.items())


def describe_gap(cmap: CodeMap, lo: int) -> str:
    """Why discovery did not reach ``lo``: the proven code around the gap that holds it."""
    s0 = cmap.start
    r = lo - s0
    before = cmap.known.rfind(b"\x01", 0, r)
    after = cmap.known.find(b"\x01", r)
    addr = cmap.dec.address
    if before < 0:
        left = f"no proven code before it (region start {addr(s0):#x})"
    else:
        p = before
        while p > 0 and not cmap.ilen[p]:
            p -= 1
        left = f"proven code ends at {addr(s0 + before + 1):#x} after '{cmap.dec.text(s0 + p)}'"
    right = "no proven code after it" if after < 0 else f"proven code resumes at {addr(s0 + after):#x}"
    return f"unreached gap: {left}; {right}; no call, branch, jump table or confirmed code pointer leads into it"


# -- gaps: code nothing proven leads to ---------------------------------------------------------

GAP_LIMIT = 1 << 14  # a gap decode starts at most this far before a candidate
_ZEROS = re.compile(rb"\x00+")
_INT3S = re.compile(rb"\xcc+")


@dataclass(frozen=True, slots=True)
class GapVerdict:
    """What a linear decode through an unreached gap says about a candidate: an instruction
    starts at ``boundary``, or ``covering`` = (start, length) covers it; or ``reason`` why the
    decode proves nothing."""

    boundary: int | None
    covering: tuple[int, int] | None
    evidence: str
    reason: str = ""


def gap_verdict(cmap: CodeMap, lo: int, hi: int, is_stub_at: Callable[[int], bool]) -> GapVerdict:
    """Decode linearly through the unreached gap holding ``[lo, hi]``, the way functions follow
    one another in compiled code: from where proven code (or known data) ends, skipping what
    is certainly not code (zero fill, ``int3`` fill, C strings, runs of code addresses), on
    through returns and jumps (the next function follows), until the candidate.

    Heuristic evidence (``likely``), and only accepted when the stream meets no invalid or
    data-like instruction, no far call to a never-valid selector that is not a stub
    (``is_stub_at`` says which are), no relocated field off an operand, and, past the
    candidate, runs on cleanly to a transfer or lands exactly on the proven code that ends the
    gap."""
    dec = cmap.dec
    s0 = cmap.start
    r = lo - s0
    g0 = cmap.known.rfind(b"\x01", max(0, r - GAP_LIMIT), r) + 1
    if g0 == 0 and cmap.known.rfind(b"\x01", 0, r) != -1:
        return GapVerdict(None, None, "", f"no proven code within {GAP_LIMIT} bytes before it")
    g1 = cmap.known.find(b"\x01", r)
    gap_end = cmap.end if g1 == -1 else s0 + g1
    pos = s0 + g0
    what = "region start" if g0 == 0 else f"proven code or data ending at {dec.address(pos):#x}"
    skipped = 0
    prev = None  # (start, length) of the last instruction of the stream
    outcome: tuple[int | None, tuple[int, int] | None] | None = None
    after_transfer = True  # data may follow only where the last instruction does not fall through
    seg_first = pos  # the first instruction after a transfer or skipped data
    starts: set[int] = set()  # instruction starts of the stream
    targets: list[tuple[int, int]] = []  # (direct branch target, source) of the stream
    while True:
        if after_transfer:
            after_transfer = False
            q = _skip_data(cmap, pos, gap_end)
            if q != pos:
                skipped += q - pos
                pos = q
                prev = None
            seg_first = pos
        if outcome is None and pos > hi:
            if prev is None:
                return GapVerdict(None, None, "", f"the candidate lies in data before {dec.address(pos):#x} "
                                                  f"(zeros, fill, strings or addresses)")
        if pos >= gap_end:
            break
        if outcome is None and pos >= lo:
            outcome = (pos, None) if pos <= hi else (None, prev)
        n, flow, tgt, data_like = dec.step(pos)
        if outcome is None and n and pos < lo < pos + n and pos + n > hi:
            outcome = (None, (pos, n))
        why = ""
        if n == 0:
            why = f"invalid instruction at {dec.address(pos):#x}"
        elif data_like:
            why = f"data-like '{dec.text(pos)}' at {dec.address(pos):#x}"
        elif cmap.relocs and cmap.reloc_map.find(1, pos - s0 + 1, pos - s0 + n) != -1 and not cmap._relocs_fit(pos, n):
            why = f"'{dec.text(pos)}' at {dec.address(pos):#x} splits a relocated field"
        if why and outcome is None and n != 1 and _skip_data(cmap, pos, gap_end) > pos:
            # Data in the gap (a table of constants, zero fill): start again after it, but only
            # where what the decode met is certainly data, never at an arbitrary next byte.
            after_transfer = True
            prev = None
            continue
        if why:
            if outcome is None:
                return GapVerdict(None, None, "", f"linear decode through the gap from {what}: {why}")
            return GapVerdict(None, None, "", f"linear decode through the gap from {what} reaches the candidate, "
                                              f"then meets {why}")
        prev = (pos, n)
        starts.add(pos)
        if tgt is not None:
            targets.append((tgt, pos))
        if pos + n > gap_end:
            return GapVerdict(None, None, "", f"linear decode through the gap runs over the proven code at "
                                              f"{dec.address(gap_end):#x}")
        pos += n
        if flow is Flow.JUMP or flow is Flow.STOP:
            if outcome is not None:
                break  # past the candidate, the stream ends cleanly at a transfer
            after_transfer = True
    if outcome is None:
        return GapVerdict(None, None, "", "the gap decode never reached the candidate")
    lo_s = min(starts) if starts else pos
    for t, src in targets:
        # Code branches to instruction starts: a target inside one of the stream's own
        # instructions, or inside proven code or known data, says the stream is not code.
        if lo_s <= t < pos and t not in starts:
            return GapVerdict(None, None, "", f"the gap decode's branch at {dec.address(src):#x} targets "
                                              f"{dec.address(t):#x}, inside one of its own instructions")
        rt = t - s0
        if (t < lo_s or t >= pos) and 0 <= rt < len(cmap.ilen) and cmap.known[rt] and not cmap.ilen[rt]:
            return GapVerdict(None, None, "", f"the gap decode's branch at {dec.address(src):#x} targets "
                                              f"{dec.address(t):#x}, inside proven code or data")
    if outcome[0] is not None and outcome[0] == seg_first:
        # Right after a transfer or data, the bytes tell a stub from a stub template kept in
        # data no better than a coin: only proven evidence may start a stream with one.
        return GapVerdict(None, None, "", f"the candidate is the first thing after "
                                          f"{'data' if skipped else 'an unconditional transfer'} "
                                          f"at {dec.address(seg_first):#x}: code or a template kept in code, "
                                          f"the bytes cannot tell")
    if pos > gap_end:
        return GapVerdict(None, None, "", f"linear decode runs over the proven code at {dec.address(gap_end):#x}")
    ev = f"linear decode through an unreached gap from {what}"
    if skipped:
        ev += f", skipping {skipped} bytes of fill, strings or addresses"
    b, cov = outcome
    return GapVerdict(b, cov, ev)


def _never(pos: int) -> bool:
    return False


def _skip_data(cmap: CodeMap, pos: int, end: int) -> int:
    """Past what cannot be code at ``pos``: zero and int3 fill, C strings, and runs of two or
    more entries that are addresses in the region (tables kept in code)."""
    data = cmap.dec._data  # noqa: SLF001
    while pos < end:
        m = _ZEROS.match(data, pos, end) or _INT3S.match(data, pos, end)
        if m is None:
            m = _CSTRING.match(data, pos, end)
        if m is not None:
            pos = m.end()
            continue
        q = _address_run(cmap, pos, end)
        if q > pos:
            pos = q
            continue
        break
    return pos


def _address_run(cmap: CodeMap, pos: int, end: int) -> int:
    """The end of a run of two or more entries (dwords, or words in 16-bit code) at ``pos``
    that are each an address in the region, or ``pos``."""
    size = 4 if cmap.dec.bitness == 32 else 2
    need = 2 if size == 4 else 3  # 16-bit code is full of small words: ask for more
    data = cmap.dec._data  # noqa: SLF001
    q = pos
    while q + size <= end and cmap.dec.offset_of(int.from_bytes(data[q : q + size], "little")) is not None:
        q += size
    return q if q - pos >= need * size else pos
