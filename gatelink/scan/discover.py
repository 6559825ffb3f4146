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
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..decode import WALK_CONFLICT, WALK_JUMP, WALK_MERGE, WALK_RELOC, WALK_STOP, CodeDecoder, Flow
from ..image import Anchor, Relocations

FULL_LIMIT = 8 << 20  # regions up to this size are discovered whole (every RDOS binary is far smaller)
STRONG = 3
POINTER = 2
TRIAL_LIMIT = 1 << 18  # bytes a trial descent may decode before it is cut short
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
_SENTINEL = 16  # map bytes past the region: a walk stops there without a bounds check
_RELOC_STOP = b"\x02\x02\x02\x02"


@dataclass(frozen=True, slots=True)
class Seed:
    offset: int
    level: int
    why: str


class _Starts:
    """Instruction starts a bounds check may begin at: the ones decoded so far."""

    __slots__ = ("ilen", "s0")

    def __init__(self, ilen: bytearray, s0: int) -> None:
        self.ilen, self.s0 = ilen, s0

    def __contains__(self, p: object) -> bool:
        assert isinstance(p, int)
        r = p - self.s0
        return 0 <= r < len(self.ilen) and bool(self.ilen[r])


def _why(dec: CodeDecoder, why: object) -> str:
    """The evidence text of a pending start, formatted only when it becomes a seed."""
    if isinstance(why, tuple) and why and why[0] == "call":
        return f"call at {dec.address(why[1]):#x}"
    return str(why)


class Rejected(Exception):
    """A trial descent met something that cannot be code (the reason is the message)."""


class CodeMap:
    """The proven instruction starts of one code region.

    Maps are indexed by region offset: ``ilen[i]`` holds the length of the instruction proven to
    start at ``i`` and its evidence level (``length | level << 4``; 0: none); ``stop[i]`` is 1
    where a proven instruction or known data covers the byte, 2 in a relocated field no proven
    instruction covers (0 elsewhere); ``data[i]`` is 1 for jump tables.
    The methods take and return file offsets, like the rest of the scanner. Which seed proved a
    start is kept per descent and looked up only for the sites reported.
    """

    def __init__(self, dec: CodeDecoder, anchors: Sequence[Anchor], relocs: Sequence[int],
                 read_table: Callable[[int, int], bytes], immediates: bool) -> None:
        self.dec = dec
        self.start = dec.start
        self.end = dec.end
        n = self.end - self.start
        # ilen[r]: at a proven instruction start, its length | level << 4 (0 elsewhere);
        self.ilen = bytearray(n + _SENTINEL)
        # stop: proven code, known data, relocated fields, and a sentinel past the end: where a
        # walk must not simply go on.
        self.stop = bytearray(n) + b"\x01" * _SENTINEL
        self.data = bytearray(n)  # known data (jump tables)
        self.seeds: list[Seed] = []
        # Runs of fall-through instructions ("blocks") are disjoint: the seed that proved an
        # instruction is the seed of the nearest block start at or before it.
        self.bstart = bytearray(n)
        self.block_seed: dict[int, int] = {}
        self.read_table = read_table
        self.immediates = immediates
        self.decoded = 0
        # Relocated fields (file offsets of their first byte) inside this region, and a byte map.
        self.relocs = [r for r in relocs if self.start <= r < self.end]
        self.reloc_map = bytearray(n + _SENTINEL)
        self.reloc_starts = bytearray(n + _SENTINEL)
        for r in self.relocs:
            self.reloc_starts[r - self.start] = 1
            a = r - self.start
            self.reloc_map[a : a + 4] = b"\x01\x01\x01\x01"[: n - a]
            self.stop[a : a + 4] = _RELOC_STOP[: n - a]
        # What a failed trial restores: relocated fields are 2 in stop, proven code and data 1,
        # so proven code or data is exactly where stop is 1 (gaps are found with find/rfind).
        self._stop0 = bytes(self.stop)
        # First bytes of instructions whose immediate may be a code address (no relocations).
        self._imm_first = (_IMM_OPS | {0x66}) if immediates else None
        self.tables: list[tuple[int, int, str]] = []  # (start, end, why): jump tables found
        self.gaps: dict[tuple[int, int], _GapStream] = {}  # linear decodes of unreached gaps
        self._imm_candidates: dict[int, str] = {}
        # Direct branch and call targets in other regions: (address, source offset, level), for
        # the scanner to hand to the map of the region holding them.
        self.external: list[tuple[int, int, int]] = []
        self._pending: list[tuple[int, int, object]] = []  # (offset, level, why) worklist
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
        # Immediates found in newly proven code may point to more code: repeat to a fixpoint.
        self._immediates_to_fixpoint()
        # Weak anchors last (a driver's code segment may open with names rather than code), and
        # only where the bytes look like a routine's first instruction.
        for a in weak:
            off = self.start + a.offset
            if self.start <= off < self.end and _entry_like(self.dec, off):
                self._try_pointer(off, POINTER, f"{a.kind.value} {a.name} (weak)".strip())
                self._drain()
        self._immediates_to_fixpoint()
        return self

    def seed(self, off: int, level: int, why: str) -> None:
        """A start proven elsewhere (a branch from another code region): descend from it, then
        follow what it leads to as :meth:`run` does."""
        if self.start <= off < self.end:
            self._pending.append((off, level, why))
            self._drain()
            self._immediates_to_fixpoint()

    def _immediates_to_fixpoint(self) -> None:
        while self._imm_candidates:
            batch = sorted(self._imm_candidates.items())
            self._imm_candidates = {}
            for off, why in batch:
                self._try_pointer(off, POINTER, why)
                self._drain()

    def level_of(self, r: int) -> int:
        return self.ilen[r] >> 4

    def _drain(self) -> None:
        """Descend from pending starts (targets of proven code: a trial only below STRONG)."""
        while self._pending:
            off, level, why = self._pending.pop()
            rel = off - self.start
            v = self.ilen[rel]
            if v and v >> 4 >= level:
                continue
            if not v and self.stop[rel]:
                continue  # inside a proven instruction or known data: contradicts what is proven
            # Only a strong chain is trusted without a trial: a call found in code reached by
            # a coincidental immediate may itself be garbage.
            self._attempt(off, level, why, trial=level < STRONG)

    def _run_probes(self, level: int) -> None:
        while self._probes:
            off, why = self._probes.pop()
            self._try_pointer(off, level, why)

    def _try_pointer(self, off: int, level: int, why: str) -> None:
        rel = off - self.start
        if self.ilen[rel] or self.stop[rel]:
            return  # already proven (or contradicted by proven code, known data, a relocated field)
        m = _CSTRING.match(self.dec._data, off, min(self.end, off + 256))  # noqa: SLF001
        if m is not None:
            return  # a string kept in code
        if level < STRONG and not _entry_like(self.dec, off):
            # An unrelocated immediate may equal a code offset by coincidence: unless it names
            # what looks like a routine's first instruction, the code around it, decoded from
            # right where proven code ends, must not put an instruction across it.
            g = gap_verdict(self, off, off)
            if g.covering is not None and g.anchored:
                return
        self._attempt(off, level, why, trial=True)

    def _attempt(self, off: int, level: int, why: object, trial: bool) -> None:
        """One descent from ``off``; a failed trial leaves no trace."""
        mark = len(self._probes)
        spans: list[tuple[int, int]] = []
        try:
            targets, tables = self._descend(off, level, trial, spans)
        except Rejected:
            s0 = self.start
            for a, e in spans:  # undo: the runs this trial marked
                self.ilen[a - s0 : e - s0] = bytes(e - a)
                self.stop[a - s0 : e - s0] = self._stop0[a - s0 : e - s0]
            del self._probes[mark:]
            return
        seed = len(self.seeds)
        self.seeds.append(Seed(off, level, why if isinstance(why, str) else _why(self.dec, why)))
        s0 = self.start
        for a, _ in spans:
            self.bstart[a - s0] = 1
            self.block_seed[a] = seed
        for t0, t1, twhy in tables:
            self.data[t0 - s0 : t1 - s0] = b"\x01" * (t1 - t0)
            self.stop[t0 - s0 : t1 - s0] = b"\x01" * (t1 - t0)
            self.tables.append((t0, t1, twhy))
        for t, src in targets:
            self._pending.append((t, level, ("call", src)))
        self._run_probes(level)

    def _descend(self, off: int, level: int, trial: bool,
                 spans: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], list[tuple[int, int, str]]]:
        """Decode and mark the code reachable from ``off`` by fall-through and branches (the
        function it starts), up to proven code; the contiguous runs it marks go to ``spans``
        (so a failed trial can be undone, and so each run knows its seed). Returns the direct
        call targets (descended later, at the same level, as (target, source)) and the jump
        tables read. Bounded jump tables are followed here, unbounded ones leave their entries
        to be confirmed one by one. A ``trial`` raises :class:`Rejected` on anything that
        cannot be code; a proven descent just stops there."""
        dec = self.dec
        s0 = self.start
        ilen, stop = self.ilen, self.stop
        tag = level << 4
        imm_out: list[int] = []
        calls: list[tuple[int, int]] = []
        external: list[tuple[int, int]] = []
        tables: list[tuple[int, int, str]] = []
        rmap = self.reloc_map if self.relocs else None
        rstarts = self.reloc_starts if self.relocs else None
        imm_first = self._imm_first
        work = [off]
        walk = dec.walk
        marked = 0
        while work:
            pos = work.pop()
            while True:
                at = pos
                pos, st, n, tgt = walk(pos, ilen, stop, tag, rmap, rstarts, imm_first, imm_out, calls, work, external)
                self.decoded += 1
                r = pos - s0
                if st == WALK_JUMP or st == WALK_STOP:
                    spans.append((at, pos + n))
                    marked += pos + n - at
                    if st == WALK_JUMP:
                        if tgt is not None:
                            work.append(tgt)  # same function: part of this descent (and its trial)
                        break
                    tab = self._jump_table(pos, _Starts(ilen, s0))
                    if tab is not None:
                        t0, t1, entries, why_t, bounded = tab
                        if t0 is not None:
                            if trial and any(ilen[q - s0] for q in range(max(t0, s0), min(t1, self.end))):
                                raise Rejected("a jump table overlaps its own code")
                            tables.append((t0, t1, why_t))
                        if bounded:
                            work.extend(entries)
                        else:
                            # The table's extent is a guess: each entry must confirm itself.
                            self._probes.extend((e, why_t) for e in entries)
                    break
                if pos > at:
                    spans.append((at, pos))
                    marked += pos - at
                if st == WALK_MERGE:
                    v = ilen[r]
                    if v >> 4 >= level or trial:
                        break  # merged into proven code (a trial never rewrites what it meets)
                    # A start proven at a lower level: this strong chain upgrades it.
                    ilen[r] = (v & 15) | tag
                    n = v & 15
                    nn, flow, t2, _ = dec.step(pos)
                    if flow is Flow.JUMP or flow is Flow.STOP:
                        if t2 is not None and flow is Flow.JUMP:
                            work.append(t2)
                        break
                    if t2 is not None:
                        (calls.append((t2, pos)) if flow is Flow.CALL else work.append(t2))
                    pos += n
                    continue
                if st == WALK_CONFLICT:
                    if trial:
                        raise Rejected("decodes into " + ("data" if self.data[r] else "a relocated field"
                                                          if self.reloc_map[r] else "proven code"))
                    break
                if st == WALK_RELOC:
                    if trial:
                        raise Rejected("an instruction splits a relocated field")
                    break
                # WALK_BAD: the instruction needs the full rules of step().
                if pos >= self.end:
                    if trial:
                        raise Rejected("runs off the region")
                    if pos > self.end:
                        self._drop_last(at, pos, spans)  # it ran past the end: not code of this region
                    break
                n, flow, t2, data_like = dec.step(pos)
                if n == 0 or (data_like and (trial or level < STRONG)):
                    if trial:
                        raise Rejected("invalid or data-like instruction")
                    break
                ilen[r] = n | tag
                stop[r : r + n] = _ONES[n]
                spans.append((pos, pos + n))
                marked += n
                if imm_first is not None and dec._data[pos] in imm_first:  # noqa: SLF001
                    imm_out.append(pos)
                if t2 is not None:
                    if flow is Flow.CALL:
                        calls.append((t2, pos))
                    elif flow is Flow.COND or flow is Flow.JUMP:
                        work.append(t2)
                if flow is Flow.JUMP:
                    break
                if flow is Flow.STOP:
                    tab = self._jump_table(pos, _Starts(ilen, s0))
                    if tab is not None:
                        t0, t1, entries, why_t, bounded = tab
                        if t0 is not None:
                            tables.append((t0, t1, why_t))
                        (work.extend(entries) if bounded else self._probes.extend((e, why_t) for e in entries))
                    break
                pos += n
            if trial and marked > TRIAL_LIMIT:
                raise Rejected("too long to confirm")
        if imm_first is not None:
            for p in imm_out:
                self._immediate(p)
        if external:
            self.external.extend((a, src, level) for a, src in external)
        return calls, tables

    def _drop_last(self, at: int, pos: int, spans: list[tuple[int, int]]) -> None:
        """Unmark the last instruction of the run ``[at, pos)``, which runs past the region."""
        s0 = self.start
        x = pos - 1
        while x > at and not self.ilen[x - s0]:
            x -= 1
        self.ilen[x - s0] = 0
        self.stop[x - s0 : pos - s0] = self._stop0[x - s0 : pos - s0]
        if spans and spans[-1] == (at, pos):
            spans[-1] = (at, x)

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
        s0, e = self.start, self.end
        for p in range(max(lo, s0), min(hi + 1, e)):
            if self.ilen[p - s0]:
                return p
        return None

    def covering(self, lo: int) -> tuple[int, int] | None:
        """(start, length) of a proven instruction that starts before ``lo`` and covers it."""
        s0 = self.start
        if not (s0 <= lo < self.end) or not self.stop[lo - s0]:
            return None
        p = lo - 1
        while p >= s0 and p > lo - 16:
            n = self.ilen[p - s0] & 15
            if n:
                return (p, n) if p + n > lo else None
            p -= 1
        return None

    def evidence(self, p: int) -> str:
        b = self.bstart.rfind(1, 0, p - self.start + 1) + self.start
        seed = self.seeds[self.block_seed[b]]
        return f"decoded from {self.dec.address(seed.offset):#x} ({seed.why})"

    def known_before(self, r: int, floor: int = 0) -> int:
        """The last region offset before ``r`` (and at or after ``floor``) that proven code or
        known data covers, or -1 (relocated fields in code nothing proved do not count)."""
        return self.stop.rfind(1, floor, r)

    def known_after(self, r: int) -> int:
        """The first region offset at or after ``r`` that proven code or known data covers, or -1."""
        return self.stop.find(1, r, self.end - self.start)

    def level_at(self, p: int) -> int:
        return self.ilen[p - self.start] >> 4

    def in_table(self, p: int) -> tuple[int, int, str] | None:
        if not self.data[p - self.start]:
            return None
        for t in self.tables:
            if t[0] <= p < t[1]:
                return t
        return None


def relocated_pointers(image_data: bytes, relocs: Relocations, regions: Sequence[tuple[int, int, int]],
                       dec: CodeDecoder) -> list[tuple[int, str]]:
    """Relocated dwords whose value is a position in ``dec``'s region: (target file offset,
    why), sorted by target, the first relocation naming each target kept. ``regions``
    (address, size, file offset) of the image say where each relocated field lies in the file."""
    lo = dec.address(dec.start)
    hi = dec.address(dec.end)
    delta = dec.start - lo
    unpack = struct.Struct("<I").unpack_from
    out: dict[int, int] = {}
    for ra, size, fo in sorted(regions):
        if size < 4:
            continue
        fields = relocs.between(ra, ra + size - 3)
        shift = fo - ra
        for a in fields:
            v = unpack(image_data, a + shift)[0]
            if lo <= v < hi and v not in out:
                out[v] = a
    return sorted((v + delta, f"relocated pointer at {a:#x}") for v, a in out.items())


def describe_gap(cmap: CodeMap, lo: int) -> str:
    """Why discovery did not reach ``lo``: the proven code around the gap that holds it."""
    s0 = cmap.start
    r = lo - s0
    before = cmap.known_before(r)
    after = cmap.known_after(r)
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
    anchored: bool = False  # the decode's run began right where proven code or data ends


@dataclass
class _Segment:
    """A run of the gap stream: from a resync point (the gap start, after a transfer, after
    skipped data) to its end: a transfer (``clean``), the gap's end, or a failure (``why``)."""

    first: int
    starts: list[int]
    lengths: list[int]
    end: int = 0
    clean: bool = False
    why: str = ""
    skipped_before: int = 0
    bad_target: str | None = None  # computed on first use


class _GapStream:
    """The linear decode of one gap ``[g0, gap_end)``, shared by every candidate in it and
    decoded only as far as the questions asked of it need (a run at a time)."""

    def __init__(self, cmap: CodeMap, g0: int, gap_end: int) -> None:
        self.cmap = cmap
        self.g0, self.gap_end = g0, gap_end
        self.segments: list[_Segment] = []
        self.dead = ""  # why the stream stopped for good (before gap_end)
        self.dead_at = gap_end
        self.pos = g0
        self.skipped = 0
        self.done = False
        self.starts: set[int] = set()
        self.targets: dict[int, list[tuple[int, int]]] = {}  # segment index -> (target, source)

    def decoded_to(self, limit: int) -> None:
        """Decode whole runs until the stream has passed ``limit`` (or ended)."""
        while not self.done and self.pos <= limit:
            self._run()

    def _run(self) -> None:
        """Decode the next run: skip data, then instructions up to a transfer, a failure or the
        gap's end."""
        cmap = self.cmap
        dec = cmap.dec
        s0 = cmap.start
        gap_end = self.gap_end
        pos = _skip_data(cmap, self.pos, gap_end)
        self.skipped += pos - self.pos
        if pos >= gap_end:
            self.pos = pos
            self.done = True
            return
        seg = _Segment(pos, [], [], skipped_before=self.skipped)
        k = len(self.segments)
        self.segments.append(seg)
        targets: list[tuple[int, int]] = []
        while True:
            if pos >= gap_end:
                seg.end = pos
                seg.clean = pos == gap_end
                break
            n, flow, tgt, data_like = dec.step(pos)
            why = ""
            if n == 0:
                why = f"invalid instruction at {dec.address(pos):#x}"
            elif data_like:
                why = f"data-like '{dec.text(pos)}' at {dec.address(pos):#x}"
            elif cmap.relocs and cmap.reloc_map.find(1, pos - s0 + 1, pos - s0 + n) != -1 \
                    and not cmap._relocs_fit(pos, n):  # noqa: SLF001
                why = f"'{dec.text(pos)}' at {dec.address(pos):#x} splits a relocated field"
            elif pos + n > gap_end:
                why = f"'{dec.text(pos)}' at {dec.address(pos):#x} runs over the proven code at {dec.address(gap_end):#x}"
            if why:
                seg.end = pos
                seg.why = why
                break
            seg.starts.append(pos)
            seg.lengths.append(n)
            self.starts.add(pos)
            if tgt is not None:
                targets.append((tgt, pos))
            pos += n
            if flow is Flow.JUMP or flow is Flow.STOP:
                seg.end = pos
                seg.clean = True
                break
        self.targets[k] = targets
        self.pos = pos
        if pos >= gap_end:
            self.done = True
        elif seg.why and _skip_data(cmap, pos, gap_end) == pos:
            # Data in the gap (a table of constants, zero fill) lets the decode start again
            # after it, but only where what it met is certainly data, never at an arbitrary byte.
            self.dead, self.dead_at = seg.why, pos
            self.done = True

    def _bad_target(self, k: int) -> str:
        """Why run ``k`` is not code by its branches, or ''. A target inside one of the stream's
        own instructions, or inside proven code or known data, says the run is not code."""
        seg = self.segments[k]
        if seg.bad_target is None:
            cmap = self.cmap
            dec, s0 = cmap.dec, cmap.start
            seg.bad_target = ""
            for t, src in self.targets.get(k, ()):
                if self.g0 <= t < self.gap_end:
                    self.decoded_to(t)
                    if t < self.dead_at and t not in self.starts:
                        seg.bad_target = (f"its branch at {dec.address(src):#x} targets {dec.address(t):#x}, "
                                          f"not an instruction start of the decode")
                        break
                    continue
                rt = t - s0
                if 0 <= rt < cmap.end - s0 and cmap.stop[rt] == 1 and not cmap.ilen[rt]:
                    seg.bad_target = (f"its branch at {dec.address(src):#x} targets {dec.address(t):#x}, "
                                      f"inside proven code or data")
                    break
        return seg.bad_target

    def verdict(self, cmap: CodeMap, lo: int, hi: int) -> GapVerdict:
        dec = cmap.dec
        what = "the region start" if self.g0 == cmap.start else f"proven code or data ending at {dec.address(self.g0):#x}"
        self.decoded_to(lo)
        seg = None
        k = bisect.bisect_right([sg.first for sg in self.segments], lo) - 1
        if k >= 0 and lo < max(self.segments[k].end, self.segments[k].first + 1):
            seg = self.segments[k]
        if seg is None:
            if lo >= self.dead_at:
                return GapVerdict(None, None, "", f"linear decode through the gap from {what}: {self.dead}")
            return GapVerdict(None, None, "", "the candidate lies in data (zeros, fill, strings or addresses) "
                                              f"in the gap after {what}")
        i = bisect.bisect_left(seg.starts, lo)
        if i < len(seg.starts) and seg.starts[i] <= hi:
            p, n = seg.starts[i], seg.lengths[i]  # the first instruction starting in the span
            outcome_b: int | None = p
        else:
            i -= 1  # the instruction covering lo, if any
            if i < 0 or seg.starts[i] + seg.lengths[i] <= lo:
                return GapVerdict(None, None, "", f"linear decode through the gap from {what}: "
                                                  f"{seg.why or 'ends before it'}")
            p, n = seg.starts[i], seg.lengths[i]
            outcome_b = None
        if seg.why:
            return GapVerdict(None, None, "", f"linear decode through the gap from {what} reaches the candidate, "
                                              f"then meets {seg.why}")
        bad = self._bad_target(k)
        if bad:
            return GapVerdict(None, None, "", f"the gap decode from {what} is not code: {bad}")
        if outcome_b is not None and outcome_b == seg.first:
            # Right after a transfer or data, the bytes tell a stub from a stub template kept in
            # data no better than a coin: only proven evidence may start a stream with one.
            return GapVerdict(None, None, "", f"the candidate is the first thing after "
                                              f"{'data' if seg.skipped_before else 'an unconditional transfer'} "
                                              f"at {dec.address(seg.first):#x}: code or a template kept in code, "
                                              f"the bytes cannot tell")
        ev = f"linear decode through an unreached gap from {what}"
        if seg.skipped_before:
            ev += f", skipping {seg.skipped_before} bytes of fill, strings or addresses"
        anchored = seg.first == self.g0 and not seg.skipped_before and self.g0 > cmap.start \
            and cmap.stop[self.g0 - 1 - cmap.start] == 1
        return GapVerdict(outcome_b, None if outcome_b is not None else (p, n), ev, anchored=anchored)


def gap_verdict(cmap: CodeMap, lo: int, hi: int) -> GapVerdict:
    """Decode linearly through the unreached gap holding ``[lo, hi]``, the way functions follow
    one another in compiled code: from where proven code (or known data) ends, skipping what is
    certainly not code (zero fill, ``int3`` fill, C strings, runs of code addresses), on through
    returns and jumps (the next function follows), starting again after data the decode meets.

    Heuristic evidence (``likely``), accepted only when the candidate's run of the decode meets
    no invalid or data-like instruction and no relocated field off an operand, branches only to
    instruction starts, ends cleanly (at a transfer or exactly where proven code resumes), and
    does not begin with the candidate. One decode per gap serves every candidate in it."""
    s0 = cmap.start
    r = lo - s0
    g0 = cmap.known_before(r, max(0, r - GAP_LIMIT)) + 1
    if g0 == 0 and r > GAP_LIMIT and cmap.known_before(r) != -1:
        return GapVerdict(None, None, "", f"no proven code within {GAP_LIMIT} bytes before it")
    g1 = cmap.known_after(r)
    gap_end = cmap.end if g1 == -1 else s0 + g1
    key = (s0 + g0, gap_end)
    stream = cmap.gaps.get(key)
    if stream is None:
        stream = cmap.gaps[key] = _GapStream(cmap, s0 + g0, gap_end)
    return stream.verdict(cmap, lo, hi)


# First bytes of routines in compiled and hand-written RDOS code (watcom-output.md, sections 5,
# 7, 8): frame set-up, the stack-check call, DS loads, register saves, thunks.
_ENTRY = re.compile(
    rb"\x55(?:\x89\xe5|\x8b\xec)|\x68....\xe8|\xc8|\x1e|\x06|\x60|\xb8....?\x8e[\xd8\xc0]|\x66?\xb8..\x8e[\xd8\xc0]"
    rb"|[\x51\x52\x53\x56\x57]|\xe8....\xcb",
    re.DOTALL,
)


def _entry_like(dec: CodeDecoder, off: int) -> bool:
    return _ENTRY.match(dec._data, off, min(dec.end, off + 8)) is not None  # noqa: SLF001


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
