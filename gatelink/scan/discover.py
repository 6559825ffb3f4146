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

from ..decode import CodeDecoder, Flow
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


@dataclass(frozen=True, slots=True)
class Seed:
    offset: int
    level: int
    why: str


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
        self.cover = bytearray(n)  # 1 where a proven instruction covers the byte (its start included)
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
            if self.cover[rel] and not self.ilen[rel]:
                continue  # inside a proven instruction: a target that contradicts proven code
            if self.data[rel]:
                continue
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
        if self.ilen[rel] or self.cover[rel] or self.data[rel]:
            return  # already proven (or contradicted by proven code / known data)
        if self.reloc_map[rel]:
            return
        m = _CSTRING.match(self.dec._data, off, min(self.end, off + 256))  # noqa: SLF001
        if m is not None:
            return  # a string kept in code
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
            self.cover[r : r + n] = b"\x01" * n
        for t0, t1, why in tables:
            self.data[t0 - s0 : t1 - s0] = b"\x01" * (t1 - t0)
            self.tables.append((t0, t1, why))
        for t, why in targets:
            self._pending.append((t, level, why))

    def _descend(self, off: int, level: int, trial: bool) -> tuple[list[tuple[int, int]], list[tuple[int, str]],
                                                                    list[tuple[int, int, str]]]:
        """Decode the code reachable from ``off`` by fall-through, in this region, up to proven
        code. Direct targets and jump-table entries come back as ``targets`` (the caller
        descends from them later, at the same level). A ``trial`` raises :class:`Rejected` on
        anything that cannot be code; a proven descent just stops there."""
        dec = self.dec
        s0 = self.start
        ilen, cover, data, rmap = self.ilen, self.cover, self.data, self.reloc_map
        insns: list[tuple[int, int]] = []
        targets: list[tuple[int, str]] = []
        tables: list[tuple[int, int, str]] = []
        probes = self._probes
        mine: dict[int, int] = {}
        work = [off]
        budget = TRIAL_LIMIT
        while work:
            pos = work.pop()
            while True:
                r = pos - s0
                if pos >= self.end:
                    if trial:
                        raise Rejected("runs off the region")
                    break
                if ilen[r] and self.level[r] >= level:
                    break  # merged into proven code
                if pos in mine:
                    break
                if (cover[r] and not ilen[r]) or data[r] or rmap[r]:
                    if trial:
                        raise Rejected(f"decodes into {'data' if data[r] else 'a relocated field' if rmap[r] else 'proven code'}")
                    break
                n, flow, tgt, data_like = dec.step(pos)
                self.decoded += 1
                if n == 0 or (data_like and (trial or level < STRONG)):
                    if trial:
                        raise Rejected("invalid or data-like instruction")
                    break
                # Relocated bytes inside the instruction must be exactly an operand field.
                if rmap[r + 1 : r + n].count(1) and not self._relocs_fit(pos, n):
                    if trial:
                        raise Rejected("an instruction splits a relocated field")
                    break
                mine[pos] = n
                insns.append((pos, n))
                budget -= 1
                if budget <= 0 and trial:
                    raise Rejected("too long to confirm")
                if self.immediates:
                    self._immediate(pos, n)
                if tgt is not None:
                    if flow is Flow.CALL:
                        targets.append((tgt, f"call at {dec.address(pos):#x}"))
                    elif flow is Flow.COND or flow is Flow.JUMP:
                        work.append(tgt)  # same function: part of this descent (and its trial)
                if flow is Flow.JUMP:
                    break
                if flow is Flow.STOP:
                    tab = self._jump_table(pos, mine)
                    if tab is not None:
                        t0, t1, entries, why, bounded = tab
                        if t0 is not None:
                            tables.append((t0, t1, why))
                            for q in range(t0, t1):
                                if q in mine:
                                    if trial:
                                        raise Rejected("a jump table overlaps its own code")
                        if bounded:
                            work.extend(entries)
                        else:
                            # The table's extent is a guess: each entry must confirm itself.
                            probes.extend((e, why) for e in entries)
                    break
                pos += n
        if trial:
            # The trial's own instructions must not overlap one another either.
            last_end = -1
            for p, n in sorted(insns):
                if p < last_end:
                    raise Rejected("overlapping instructions")
                last_end = p + n
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

    def _immediate(self, pos: int, n: int) -> None:
        """An immediate of the instruction at ``pos`` that equals a position in the region: a
        candidate code pointer (no relocations in this image to say it is an address)."""
        data = self.dec._data  # noqa: SLF001
        b = data[pos]
        p = pos
        if b == 0x66 and self.dec.bitness == 16:
            p += 1
            b = data[p]
        if b not in _IMM_OPS:
            return
        v = self.dec.immediate(pos)
        if v is None:
            return
        t = self.dec.offset_of(v)
        if t is None or t == pos:
            return
        self._imm_candidates.setdefault(t, f"immediate {v:#x} at {self.dec.address(pos):#x}")

    def _jump_table(self, pos: int, starts: dict[int, int]) -> tuple[int | None, int, list[int], str, bool] | None:
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
        if not (s0 <= lo < self.end) or not self.cover[lo - s0]:
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
