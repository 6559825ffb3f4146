"""The one x86 decoding module: everything in gatelink that decodes instructions goes through here.

Backed by iced-x86, which measured about 5x faster than capstone's Python binding on real i386
code (0.17 us against 0.94 us per instruction, see benchmarks/scan_throughput.py) and decodes
16-bit code exactly. Two interfaces:

* :class:`CodeDecoder` walks a code region for the scanner: length, control flow and direct
  branch target per instruction, plus a "looks like data" flag.
* :func:`decode_view` decodes one instruction from a short byte string for the plan checker:
  its kind, operands, operand size and which bytes are immediates (so symbolic operand bytes
  can be told apart from bytes that decide the instruction's form).
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass
from enum import IntEnum

import iced_x86 as _ix
from iced_x86 import Code as _C
from iced_x86 import DecoderError as _DE
from iced_x86 import FlowControl as _FC
from iced_x86 import Mnemonic as _M
from iced_x86 import OpKind as _OK


class Flow(IntEnum):
    """Control flow of one instruction, as the scanner's boundary proof needs it."""

    NEXT = 0  # falls through
    CALL = 1  # direct near call: falls through (the callee returns)
    COND = 2  # direct conditional branch (jcc, loop, jcxz): target and fall through
    JUMP = 3  # direct near jump: target only
    STOP = 4  # no fall-through and no known target: ret, indirect jump, far jump, hlt, ud2...
    INVALID = 5  # not an instruction in this bitness (or runs past the buffer)


# Instructions that hand-written and compiled 16/32-bit code almost never contain, but that
# decoding text and tables produces all the time ('b' is BOUND, 'c' ARPL, "'" DAA, '/' DAS,
# '7' AAA, '?' AAS, 'l'..'o' INS/OUTS). Drivers do use string I/O, but with a REP prefix, so
# only bare INS/OUTS count. The scanner stops trusting a speculative decode when it meets one.
_DATA_LIKE_MNEMONICS = {
    _M.ARPL, _M.BOUND, _M.DAA, _M.DAS, _M.AAA, _M.AAS, _M.INTO, _M.SALC, _M.INT1,
}
_STRING_IO_MNEMONICS = {_M.INSB, _M.INSW, _M.INSD, _M.OUTSB, _M.OUTSW, _M.OUTSD}
_FAR_CODES = {_C.CALL_PTR1616, _C.CALL_PTR1632, _C.JMP_PTR1616, _C.JMP_PTR1632}
# The same by instruction code, for the hot loops (one set lookup per instruction): codes that
# need a second look there (data-like mnemonics, string I/O, ``00 /r``, UD2).
# Every instruction code by name, built once (import time is paid by every command).
_CODE_NAMES = {getattr(_C, n): n for n in dir(_C) if n.isupper()}
_ALL_CODES = list(_CODE_NAMES)
_MNEMONIC_OF = {c: _ix.OpCodeInfo(c).mnemonic for c in _ALL_CODES}
_DATA_LIKE_CODES = frozenset(c for c, m in _MNEMONIC_OF.items() if m in _DATA_LIKE_MNEMONICS)
_STRING_IO_CODES = frozenset(c for c, m in _MNEMONIC_OF.items() if m in _STRING_IO_MNEMONICS)
_LOOK_TWICE = _DATA_LIKE_CODES | _STRING_IO_CODES | {_C.ADD_RM8_R8, _C.UD2}
_SPECIAL = _LOOK_TWICE | {_C.INVALID}  # what CodeDecoder.walk leaves to step()


def _walk_kinds() -> bytes:
    """What CodeDecoder.walk does with each instruction code (one table lookup instead of two
    property reads per instruction): 0 falls through, 1 needs step(), 2 conditional branch,
    3 direct near call, 4 direct near jump, 5 no fall-through."""
    kinds = bytearray(max(_ALL_CODES) + 1)
    for c in _ALL_CODES:
        if c in _SPECIAL:
            kinds[c] = 1
            continue
        fc = _ix.Instruction.create(c).flow_control
        name = _CODE_NAMES.get(c, "")
        if fc == _FC.NEXT or fc == _FC.INDIRECT_CALL:
            k = 0
        elif fc == _FC.CONDITIONAL_BRANCH:
            k = 2
        elif fc == _FC.CALL:
            k = 3 if name.startswith("CALL_REL") else 0  # far calls, SYSENTER, VMCALL... return
        elif fc == _FC.UNCONDITIONAL_BRANCH:
            k = 4 if name.startswith("JMP_REL") else 5
        elif fc == _FC.INTERRUPT and c == _C.INT_IMM8:
            k = 0  # INT n returns (system calls); INT3 and INTO are traps
        else:
            k = 5
        kinds[c] = k
    return bytes(kinds)


_WALK_KIND = _walk_kinds()


def _data_like(code: int, n: int, ins: _ix.Instruction, data: bytes, pos: int) -> bool:
    """Is the instruction just decoded at ``pos`` one that code almost never holds but decoded
    data does? (``_DATA_LIKE_MNEMONICS``; string I/O without REP; ``00 00``, the decoding of
    zeros.) The hot loops call it only for codes in ``_LOOK_TWICE``."""
    return code in _DATA_LIKE_CODES or (code in _STRING_IO_CODES and not ins.has_rep_prefix) \
        or (n == 2 and data[pos] == 0 and data[pos + 1] == 0)
# Why CodeDecoder.walk stopped.
WALK_MERGE, WALK_CONFLICT, WALK_BAD, WALK_RELOC, WALK_JUMP, WALK_STOP = 1, 2, 3, 4, 5, 6
_ONES = [b"\x01" * i for i in range(16)]
# Outcomes of CodeDecoder.sync_vote.
SYNC_AT, SYNC_IN, SYNC_DEAD = 1, 2, 3
_DEAD = (SYNC_DEAD, 0, 0)


class CodeDecoder:
    """Decodes instructions of one code region inside a larger buffer (the whole file).

    Positions are offsets into ``data``; the region is ``[start, end)`` and its first byte sits
    at address ``address``. No bytes are copied. An instruction that would run past ``end`` is
    reported invalid: the bytes after a region are not its code.
    """

    __slots__ = ("_data", "_start", "_end", "_bitness", "_delta", "_dec", "_insn", "_ud2_forms")

    def __init__(
        self, data: bytes, bitness: int, address: int = 0, start: int = 0, end: int | None = None,
        ud2_forms: dict[int, int] | None = None,
    ) -> None:
        """``ud2_forms`` maps the byte after a ``UD2`` to the length of a gate form that
        carries inline operands and returns after them (the legacy UD2 stubs): such a UD2 is
        stepped over as one instruction of that length."""
        if bitness not in (16, 32, 64):
            raise ValueError(f"bitness must be 16, 32 or 64, not {bitness}")
        self._data = data
        self._start = start
        self._end = len(data) if end is None else end
        self._bitness = bitness
        self._delta = address - start  # address = offset + delta
        self._dec = _ix.Decoder(bitness, data, ip=address)
        self._insn = _ix.Instruction()
        self._ud2_forms = ud2_forms or {}

    def _ud2_form(self, offset: int) -> int:
        """Length of the UD2 gate form at ``offset`` (0 if none fits in the region)."""
        n = self._ud2_forms.get(self._data[offset + 2], 0) if offset + 2 < self._end else 0
        return n if offset + n <= self._end else 0

    @property
    def start(self) -> int:
        return self._start

    @property
    def end(self) -> int:
        return self._end

    @property
    def bitness(self) -> int:
        return self._bitness

    def address(self, offset: int) -> int:
        return offset + self._delta

    def offset_of(self, address: int) -> int | None:
        o = address - self._delta
        return o if self._start <= o < self._end else None

    def step(self, offset: int) -> tuple[int, Flow, int | None, bool]:
        """Decode the instruction at ``offset``: (length, flow, target offset, data_like).

        ``length`` is 0 for an invalid instruction. ``target`` is the offset of a direct branch
        or call target inside the region, or None. ``data_like`` marks instructions that code
        almost never contains but decoded data does (see ``_DATA_LIKE_MNEMONICS``) and
        ``add [eax], al`` (``00 00``), the decoding of zeros.
        """
        d = self._dec
        d.position = offset
        d.ip = offset + self._delta
        ins = self._insn
        d.decode_out(ins)
        n = ins.len
        if ins.is_invalid or offset + n > self._end:
            return 0, Flow.INVALID, None, True
        fc = ins.flow_control
        data = self._data
        code = ins.code
        if code == _C.UD2 and (k := self._ud2_form(offset)):
            return k, Flow.NEXT, None, False
        data_like = code in _LOOK_TWICE and _data_like(code, n, ins, data, offset)
        if fc == _FC.NEXT:
            return n, Flow.NEXT, None, data_like
        if fc == _FC.CALL:
            if ins.op0_kind not in _NEAR_BRANCH_KINDS:
                return n, Flow.NEXT, None, data_like  # far call, SYSENTER, VMCALL...: returns
            return n, Flow.CALL, self.offset_of(ins.near_branch_target), data_like
        if fc == _FC.CONDITIONAL_BRANCH:
            return n, Flow.COND, self.offset_of(ins.near_branch_target), data_like
        if fc == _FC.UNCONDITIONAL_BRANCH:
            if ins.code in _FAR_CODES:
                return n, Flow.STOP, None, data_like
            return n, Flow.JUMP, self.offset_of(ins.near_branch_target), data_like
        if fc == _FC.INDIRECT_CALL:
            return n, Flow.NEXT, None, data_like
        if fc == _FC.INTERRUPT and ins.code == _C.INT_IMM8:
            # INT n returns to the next instruction (system calls); INT3 and INTO are traps
            return n, Flow.NEXT, None, data_like
        return n, Flow.STOP, None, data_like

    def run(self, offset: int, limit: int, stop_on_data: bool) -> tuple[int, int, int]:
        """Decode plain fall-through instructions from ``offset`` while they start before
        ``limit``: the scanner's hot loop, kept free of per-instruction allocation.

        Stops before the first instruction that is not plain fall-through (a branch, call,
        return, interrupt...), is invalid or runs past the region, or, with ``stop_on_data``,
        is data-like (see :meth:`step`); :meth:`step` then decides about that one. Returns
        ``(pos, last, count)``: where it stopped, the start of the last instruction it consumed
        (-1 if none) and how many it consumed.
        """
        d = self._dec
        ins = self._insn
        d.position = offset
        d.ip = offset + self._delta
        end = self._end
        data = self._data
        next_ = _FC.NEXT
        look_twice = _LOOK_TWICE
        pos = offset
        last = -1
        count = 0
        while pos < limit:
            d.decode_out(ins)
            n = ins.len
            if ins.flow_control != next_ or pos + n > end:
                break
            if stop_on_data and (code := ins.code) in look_twice and _data_like(code, n, ins, data, pos):
                break
            last = pos
            pos += n
            count += 1
        return pos, last, count

    def walk(self, pos: int, ilen: bytearray, stop: bytearray, tag: int, relocs: bytearray | None,
             reloc_starts: bytearray | None, imm_first: frozenset[int] | None,
             imm_out: list[int], calls: list[tuple[int, int]],
             branches: list[int], external: list[tuple[int, int]]) -> tuple[int, int, int, int | None]:
        """Code discovery's hot loop: decode and mark instructions from ``pos`` while control
        falls through, until something needs a decision. Maps are indexed from the region
        start. ``stop[r]`` is nonzero where decoding must not simply go on: a byte a proven
        instruction or known data covers, a relocated field, or past the region (the map
        carries a sentinel there); ``ilen[r]`` marks proven starts. Each instruction decoded
        gets ``ilen[r] = length | tag``, and the run it decoded (one contiguous run of
        instructions, from ``pos`` to where it stops) is set in ``stop`` when it returns; a walk
        only moves forward, so its own marks are never in its way. Direct call targets go to
        ``calls`` as (target, source) and conditional branch targets to ``branches``; branch,
        call and jump targets outside the region go to ``external`` as (target address,
        source); instructions whose first byte is in ``imm_first`` go to ``imm_out``.

        Returns ``(pos, status, length, target)``, the instruction at ``pos``:

        * ``WALK_MERGE``: ``ilen`` already marks a start there (not decoded);
        * ``WALK_CONFLICT``: inside proven code, known data or a relocated field (not decoded);
        * ``WALK_BAD``: invalid, past the region (the instruction before it may run past the
          end: the caller drops it), or the rules of :meth:`step` are needed (data-like codes,
          UD2 forms); not marked;
        * ``WALK_RELOC``: its bytes overlap relocated fields (``relocs``, first bytes in
          ``reloc_starts``) other than exactly its 32-bit operand fields (not marked);
        * ``WALK_JUMP`` (direct jump; ``target``) or ``WALK_STOP`` (no fall-through): marked.
        """
        if relocs is not None:
            assert reloc_starts is not None
            return self._walk_relocated(pos, ilen, stop, tag, relocs, reloc_starts, calls, branches, external)
        return self._walk_plain(pos, ilen, stop, tag, imm_first, imm_out, calls, branches, external)

    # The two loops below are one loop written twice (with and without relocations), because
    # per-instruction tests cost what the decoding costs. An instruction that runs past the
    # region's end is caught one step later, at the sentinel in ``stop`` past the end: the
    # caller sees WALK_BAD at a position >= end and drops that instruction.

    def _walk_relocated(self, pos: int, ilen: bytearray, stop: bytearray, tag: int, relocs: bytearray,
                        reloc_starts: bytearray, calls: list[tuple[int, int]],
                        branches: list[int], external: list[tuple[int, int]]) -> tuple[int, int, int, int | None]:
        d = self._dec
        ins = self._insn
        d.position = pos
        d.ip = pos + self._delta
        s0 = self._start
        end = self._end
        delta = self._delta
        kinds = _WALK_KIND
        r0 = pos - s0  # the run marked in stop at every return: [r0, where it ends)
        while True:
            r = pos - s0
            if stop[r]:
                stop[r0:r] = b"\x01" * (r - r0)
                if pos >= end:
                    return pos, WALK_BAD, 0, None
                return pos, (WALK_MERGE if ilen[r] else WALK_CONFLICT), 0, None
            d.decode_out(ins)
            n = ins.len
            k = kinds[ins.code]
            if k == 1:
                d.position = pos
                stop[r0:r] = b"\x01" * (r - r0)
                return pos, WALK_BAD, n, None
            if n > 1 and (relocs[r + 1] or relocs[r + n - 1] or (n > 6 and relocs.find(1, r + 2, r + n - 1) != -1)):
                # Relocated bytes inside an instruction must be exactly its 32-bit operand
                # fields (a misaligned decode almost never keeps them so).
                co = d.get_constant_offsets(ins)
                want = 0
                if co.displacement_size == 4 and reloc_starts[r + co.displacement_offset]:
                    want += 4
                if co.immediate_size == 4 and reloc_starts[r + co.immediate_offset]:
                    want += 4
                if not want or relocs.count(1, r, r + n) != want:
                    d.position = pos
                    stop[r0:r] = b"\x01" * (r - r0)
                    return pos, WALK_RELOC, n, None
            ilen[r] = n | tag
            if k:
                if k == 2:
                    t = ins.near_branch_target - delta
                    if s0 <= t < end:
                        branches.append(t)
                    else:
                        external.append((t + delta, pos))
                elif k == 3:
                    t = ins.near_branch_target - delta
                    if s0 <= t < end:
                        calls.append((t, pos))
                    else:
                        external.append((t + delta, pos))
                else:
                    stop[r0 : r + n] = b"\x01" * (r + n - r0)
                    if k == 4:
                        t = ins.near_branch_target - delta
                        if s0 <= t < end:
                            return pos, WALK_JUMP, n, t
                        external.append((t + delta, pos))
                        return pos, WALK_JUMP, n, None
                    return pos, WALK_STOP, n, None
            pos += n

    def _walk_plain(self, pos: int, ilen: bytearray, stop: bytearray, tag: int, imm_first: frozenset[int] | None,
                    imm_out: list[int], calls: list[tuple[int, int]],
                    branches: list[int], external: list[tuple[int, int]]) -> tuple[int, int, int, int | None]:
        d = self._dec
        ins = self._insn
        d.position = pos
        d.ip = pos + self._delta
        s0 = self._start
        end = self._end
        delta = self._delta
        data = self._data
        kinds = _WALK_KIND
        imm = imm_first or frozenset()
        r0 = pos - s0
        while True:
            r = pos - s0
            if stop[r]:
                stop[r0:r] = b"\x01" * (r - r0)
                if pos >= end:
                    return pos, WALK_BAD, 0, None
                return pos, (WALK_MERGE if ilen[r] else WALK_CONFLICT), 0, None
            d.decode_out(ins)
            n = ins.len
            k = kinds[ins.code]
            if k == 1:
                d.position = pos
                stop[r0:r] = b"\x01" * (r - r0)
                return pos, WALK_BAD, n, None
            ilen[r] = n | tag
            if data[pos] in imm:
                imm_out.append(pos)
            if k:
                if k == 2:
                    t = ins.near_branch_target - delta
                    if s0 <= t < end:
                        branches.append(t)
                    else:
                        external.append((t + delta, pos))
                elif k == 3:
                    t = ins.near_branch_target - delta
                    if s0 <= t < end:
                        calls.append((t, pos))
                    else:
                        external.append((t + delta, pos))
                else:
                    stop[r0 : r + n] = b"\x01" * (r + n - r0)
                    if k == 4:
                        t = ins.near_branch_target - delta
                        if s0 <= t < end:
                            return pos, WALK_JUMP, n, t
                        external.append((t + delta, pos))
                        return pos, WALK_JUMP, n, None
                    return pos, WALK_STOP, n, None
            pos += n

    def sync_vote(self, first: int, count: int, lo: int, hi: int) -> tuple[tuple[int, int, int] | None, int]:
        """Decode from each of ``count`` starts ``first, first + 1, ...`` to the span
        ``[lo, hi]`` and return what every stream that survives says there, with the number
        of instructions decoded; None if they disagree or none survives.

        Outcomes: ``(SYNC_AT, b, 0)`` an instruction starts at ``b`` in the span;
        ``(SYNC_IN, s, n)`` the instruction at ``s`` of length ``n`` covers it. A stream dies
        at an invalid or data-like instruction; it goes on linearly after a ``jmp`` or ``ret``
        (in compiled code the next block or padding follows). Streams merge where they meet a
        position an earlier one decoded, and then share its outcome: that makes many starts
        cheap, as x86 decoding resynchronises within a few instructions.
        """
        d = self._dec
        ins = self._insn
        delta = self._delta
        end = self._end
        data = self._data
        look_twice = _LOOK_TWICE
        ud2 = _C.UD2
        seen: dict[int, tuple[int, int, int]] = {}
        vote = None
        for start in range(first, first + count):
            d.position = start
            d.ip = start + delta
            path = []
            pos = start
            prev = start
            while True:
                o = seen.get(pos)
                if o is not None:
                    break
                if pos >= lo:
                    o = (SYNC_AT, pos, 0) if pos <= hi else (SYNC_IN, prev, pos - prev)
                    break
                d.decode_out(ins)
                n = ins.len
                code = ins.code
                if not code or pos + n > end:  # Code.INVALID is 0
                    o = _DEAD
                    break
                if code in look_twice:
                    if code == ud2 and (k := self._ud2_form(pos)):
                        n = k
                        d.position = pos + k
                        d.ip = pos + k + delta
                    elif _data_like(code, n, ins, data, pos):
                        o = _DEAD
                        break
                path.append(pos)
                prev = pos
                pos += n
            for p in path:
                seen[p] = o
            if o is _DEAD:
                continue
            if vote is None:
                vote = o
            elif o != vote:
                return None, len(seen)
        return vote, len(seen)

    def jump_table(self, offset: int, starts: Container[int] | None = None) -> tuple[int, int, int | None] | None:
        """For an indirect jump through a table at ``offset``: (table address, entry size, entry
        count or None); else None. The forms compilers emit (docs/scanning.md, "Jump tables"):

        * ``jmp [table + reg*4]`` (``FF 24 85 disp32``, with or without a CS override);
        * ``jmp [reg + table]`` after ``shl reg, 2``: Open Watcom's pre-scaled index
          (``C1 E0 02`` / ``2E FF A0 disp32``);
        * 16-bit ``jmp [cs:bx + table]`` (``2E FF A7 disp16``; also SI/DI), 2-byte entries.

        The count comes from the bounds check before the jump when there is one
        (:meth:`_table_bound`); ``starts``, when given, are the proven instruction starts the
        check may begin at (a misaligned decode can read a compare out of other bytes)."""
        d = self._dec
        d.position = offset
        d.ip = offset + self._delta
        ins = self._insn
        d.decode_out(ins)
        if ins.is_invalid or ins.flow_control != _FC.INDIRECT_BRANCH or ins.op0_kind != _OK.MEMORY:
            return None
        if self._bitness == 16:
            if ins.memory_base in (_REG.BX, _REG.SI, _REG.DI) and ins.memory_index == _REG.NONE \
                    and ins.memory_displacement:
                return ins.memory_displacement & 0xFFFF, 2, self._table_bound(offset, starts)
            return None
        base, index = ins.memory_base, ins.memory_index
        if base == _REG.NONE and index != _REG.NONE and ins.memory_index_scale == 4:
            return ins.memory_displacement & 0xFFFFFFFF, 4, self._table_bound(offset, starts)
        if index == _REG.NONE and base in _SHL2 and ins.memory_displ_size == 4 and offset >= self._start + 3 \
                and self._data[offset - 3 : offset] == _SHL2[base]:
            return ins.memory_displacement & 0xFFFFFFFF, 4, self._table_bound(offset - 3, starts)
        return None

    def _table_bound(self, offset: int, starts: Container[int] | None = None) -> int | None:
        """Entries allowed by the bounds check that leads straight to the table jump at
        ``offset`` (a few instructions, decoding exactly onto it), or None:

        * ``cmp x, N`` then ``ja``/``jae`` to the default case and on to the jump (optimised
          code): N+1 / N entries;
        * ``cmp x, N`` / ``jbe L`` / ``jmp default`` / ``L: mov reg, x`` ... (unoptimised code:
          the in-range path jumps over the jump to the default case): N+1 (``jb``: N);
        * ``and reg, 2^k-1`` with no compare (hand-written assembly): 2^k.

        The nearest check wins: the compare of this jump, not an older one (or one read out
        of the middle of other instructions) that also happens to decode onto it.
        """
        d = self._dec
        ins = self._insn
        for s in range(offset - 1, max(self._start, offset - _BOUND_WINDOW) - 1, -1):
            if starts is not None and s not in starts:
                continue
            d.position = s
            d.ip = s + self._delta
            d.decode_out(ins)
            if ins.is_invalid or ins.op_count != 2 or ins.op1_kind not in _IMM_KINDS:
                continue
            mn = ins.mnemonic
            if mn == _M.AND and ins.op0_kind == _OK.REGISTER:
                mask = ins.immediate(1) & 0xFFFFFFFF
                if mask < _MAX_MASK and mask & (mask + 1) == 0 and self._straight(s + ins.len, offset):
                    return mask + 1
                continue
            if mn != _M.CMP or ins.op0_kind not in (_OK.REGISTER, _OK.MEMORY):
                continue
            limit = ins.immediate(1) & 0xFFFFFFFF
            pos = s + ins.len
            count = None
            while pos < offset:
                d.position = pos
                d.ip = pos + self._delta
                d.decode_out(ins)
                if ins.is_invalid:
                    break
                code = ins.code
                if code in _JA_CODES or code in _JAE_CODES:
                    count = limit + 1 if code in _JA_CODES else limit
                elif code in _JBE_CODES or code in _JB_CODES:
                    # the in-range path is the branch: it must skip forward, toward the jump
                    t = self.offset_of(ins.near_branch_target)
                    if t is None or not pos < t <= offset:
                        break
                    count = limit + 1 if code in _JBE_CODES else limit
                    pos = t
                    continue
                elif ins.flow_control != _FC.NEXT:
                    break
                pos += ins.len
            if pos == offset and count is not None:
                return count
        return None

    def _straight(self, pos: int, offset: int) -> bool:
        """Plain fall-through instructions decode from ``pos`` exactly onto ``offset``."""
        d = self._dec
        ins = self._insn
        d.position = pos
        d.ip = pos + self._delta
        while pos < offset:
            d.decode_out(ins)
            if ins.is_invalid or ins.flow_control != _FC.NEXT:
                return False
            pos += ins.len
        return pos == offset

    def trap_call(self, offset: int) -> tuple[int, int, int | None]:
        """The instruction at ``offset`` as a stub's trapping instruction: (length, kind,
        selector) where kind is 1 for a far call with an immediate pointer (``selector`` its
        selector), 2 for ``UD2``, 0 for anything else (length 0: invalid or past the region)."""
        d = self._dec
        d.position = offset
        d.ip = offset + self._delta
        ins = self._insn
        d.decode_out(ins)
        n = ins.len
        if ins.is_invalid or offset + n > self._end:
            return 0, 0, None
        code = ins.code
        if code == _C.CALL_PTR1632 or code == _C.CALL_PTR1616:
            return n, 1, ins.far_branch_selector
        return n, (2 if code == _C.UD2 else 0), None

    def operand_spans(self, offset: int) -> tuple[tuple[int, int], ...]:
        """(offset within the instruction, size) of its immediate and displacement fields."""
        d = self._dec
        d.position = offset
        d.ip = offset + self._delta
        ins = self._insn
        d.decode_out(ins)
        co = d.get_constant_offsets(ins)
        out = []
        if co.immediate_size:
            out.append((co.immediate_offset, co.immediate_size))
        if co.immediate_size2:
            out.append((co.immediate_offset2, co.immediate_size2))
        if co.displacement_size:
            out.append((co.displacement_offset, co.displacement_size))
        return tuple(out)

    def immediate(self, offset: int) -> int | None:
        """The (last) immediate operand of the instruction at ``offset`` when it is as wide as
        an address in this code (32 bits, or 16 in 16-bit code), else None."""
        d = self._dec
        d.position = offset
        d.ip = offset + self._delta
        ins = self._insn
        d.decode_out(ins)
        if ins.is_invalid:
            return None
        for i in range(ins.op_count - 1, -1, -1):
            k = ins.op_kind(i)
            if k == _OK.IMMEDIATE32:
                return ins.immediate(i) & 0xFFFFFFFF
            if k == _OK.IMMEDIATE16 and self._bitness == 16:
                return ins.immediate(i) & 0xFFFF
        return None

    def text(self, offset: int) -> str:
        """The instruction at ``offset`` in NASM syntax, for evidence and witnesses."""
        d = self._dec
        d.position = offset
        d.ip = offset + self._delta
        ins = d.decode()
        if ins.is_invalid:
            return "(invalid)"
        return _FORMATTER.format(ins)


_REG = _ix.Register
_NEAR_BRANCH_KINDS = {_OK.NEAR_BRANCH16, _OK.NEAR_BRANCH32}
_BOUND_WINDOW = 40  # bytes before a table jump searched for its bounds check
_MAX_MASK = 1 << 12  # an ``and`` mask bounding a table is small
_IMM_KINDS = {_OK.IMMEDIATE8, _OK.IMMEDIATE16, _OK.IMMEDIATE32, _OK.IMMEDIATE8TO16, _OK.IMMEDIATE8TO32}
_JA_CODES = {_C.JA_REL8_16, _C.JA_REL8_32, _C.JA_REL16, _C.JA_REL32_32}
_JAE_CODES = {_C.JAE_REL8_16, _C.JAE_REL8_32, _C.JAE_REL16, _C.JAE_REL32_32}
_JBE_CODES = {_C.JBE_REL8_16, _C.JBE_REL8_32, _C.JBE_REL16, _C.JBE_REL32_32}
_JB_CODES = {_C.JB_REL8_16, _C.JB_REL8_32, _C.JB_REL16, _C.JB_REL32_32}
# ``shl reg, 2`` (C1 /4 ib) by base register: Open Watcom's pre-scaled jump-table index.
_SHL2 = {r: bytes((0xC1, 0xE0 + i, 2)) for i, r in enumerate(
    (_REG.EAX, _REG.ECX, _REG.EDX, _REG.EBX, _REG.ESP, _REG.EBP, _REG.ESI, _REG.EDI)) if r not in (_REG.ESP,)}

_FORMATTER = _ix.Formatter(_ix.FormatterSyntax.NASM)
_FORMATTER.hex_prefix = "0x"
_FORMATTER.hex_suffix = ""
_FORMATTER.uppercase_hex = False
_FORMATTER.space_after_operand_separator = True


def linear_sweep(data: bytes, bitness: int) -> int:
    """Decode ``data`` front to back, one instruction after another; return how many decoded.

    Only the reference figure for benchmarks (what a full disassembly costs); invalid bytes are
    skipped one at a time as a linear-sweep disassembler does.
    """
    dec = _ix.Decoder(bitness, data)
    ins = _ix.Instruction()
    n = 0
    size = len(data)
    while dec.position < size:
        dec.decode_out(ins)
        n += 1
    return n


# --- single-instruction decoding for the plan checker -------------------------------------------


class Kind(IntEnum):
    CALLF = 1  # far call with immediate pointer
    JMPF = 2  # far jump with immediate pointer
    CALL = 3  # near call, relative
    JMP = 4  # near jump, relative
    JCC = 5  # conditional branch
    NOP = 6  # no architectural effect (nop forms, pause)
    INT3 = 7
    INT = 8  # INT imm8
    UD2 = 9
    PUSH = 10
    POP = 11
    FLAGS = 12  # cmc, stc, clc
    OTHER = 13  # anything else: an effect no site's final code has unless it is that very insn


_NOP_CODES = {_C.NOPD, _C.NOPW, _C.PAUSE, _C.NOP_RM16, _C.NOP_RM32}
_FLAG_CODES = {_C.CMC: "cmc", _C.STC: "stc", _C.CLC: "clc"}


@dataclass(frozen=True, slots=True)
class Decoded:
    """One decoded instruction of a view.

    ``opsize`` is the operand size in bits where it matters (calls, pushes). ``imm`` lists the
    (start, length) byte spans, relative to the instruction start, that hold immediates or
    displacements: bytes there never change the instruction's form or length.
    """

    length: int
    kind: Kind
    code: int
    opsize: int = 0
    selector: int | None = None
    offset: int | None = None
    target: int | None = None  # absolute near target (calls, jumps)
    vector: int | None = None  # INT n
    reg: str = ""  # push/pop operand, e.g. "cs", "ebp"
    imm: tuple[tuple[int, int], ...] = ()
    text: str = ""


NEED_MORE = "need-more"  # decode_view: the bytes given end inside the instruction


def decode_view(buf: bytes, bitness: int, ip: int, text: bool = True) -> Decoded | str | None:
    """Decode the instruction at the start of ``buf`` located at address ``ip``.

    Returns a :class:`Decoded`, ``NEED_MORE`` when ``buf`` ends before the instruction does, or
    None when the bytes are not a valid instruction in this bitness. ``text=False`` leaves
    ``Decoded.text`` empty (formatting costs more than decoding).
    """
    dec = _ix.Decoder(bitness, buf, ip=ip)
    ins = dec.decode()
    if ins.is_invalid:
        if dec.last_error == _DE.NO_MORE_BYTES:
            return NEED_MORE
        return None
    co = dec.get_constant_offsets(ins)
    spans = []
    if co.immediate_size:
        spans.append((co.immediate_offset, co.immediate_size))
    if co.immediate_size2:
        spans.append((co.immediate_offset2, co.immediate_size2))
    if co.displacement_size:
        spans.append((co.displacement_offset, co.displacement_size))
    code = ins.code
    n = ins.len
    txt = _FORMATTER.format(ins) if text else ""
    imm = tuple(spans)
    if code in (_C.CALL_PTR1616, _C.CALL_PTR1632, _C.JMP_PTR1616, _C.JMP_PTR1632):
        is32 = code in (_C.CALL_PTR1632, _C.JMP_PTR1632)
        return Decoded(
            n, Kind.CALLF if code in (_C.CALL_PTR1616, _C.CALL_PTR1632) else Kind.JMPF, code,
            32 if is32 else 16, ins.far_branch_selector,
            ins.far_branch32 if is32 else ins.far_branch16, imm=imm, text=txt,
        )
    fc = ins.flow_control
    if fc == _FC.CALL:
        return Decoded(n, Kind.CALL, code, _opsize(ins, bitness), target=ins.near_branch_target, imm=imm, text=txt)
    if fc == _FC.UNCONDITIONAL_BRANCH:
        return Decoded(n, Kind.JMP, code, _opsize(ins, bitness), target=ins.near_branch_target, imm=imm, text=txt)
    if fc == _FC.CONDITIONAL_BRANCH:
        return Decoded(n, Kind.JCC, code, target=ins.near_branch_target, imm=imm, text=txt)
    if code in _NOP_CODES:
        return Decoded(n, Kind.NOP, code, imm=imm, text=txt)
    if code == _C.INT3:
        return Decoded(n, Kind.INT3, code, text=txt)
    if code == _C.INT_IMM8:
        return Decoded(n, Kind.INT, code, vector=ins.immediate8, imm=imm, text=txt)
    if code == _C.UD2:
        return Decoded(n, Kind.UD2, code, text=txt)
    if code in _FLAG_CODES:
        return Decoded(n, Kind.FLAGS, code, reg=_FLAG_CODES[code], text=txt)
    mn = ins.mnemonic
    if mn in (_M.PUSH, _M.POP) and ins.op_count == 1 and ins.op0_kind == _OK.REGISTER:
        reg = _REG_NAMES.get(ins.op0_register, str(ins.op0_register))
        return Decoded(
            n, Kind.PUSH if mn == _M.PUSH else Kind.POP, code, _stack_opsize(code, reg), reg=reg, text=txt,
        )
    return Decoded(n, Kind.OTHER, code, imm=imm, text=txt)


def _opsize(ins: _ix.Instruction, bitness: int) -> int:
    # CALL_REL16 / JMP_REL16 push or use 16-bit IP; the REL32 forms 32-bit EIP.
    name = _CODE_NAMES.get(ins.code, "")
    return 16 if name.endswith("16") else 32


def _stack_opsize(code: int, reg: str) -> int:
    name = _CODE_NAMES.get(code, "")
    if name.startswith(("PUSHW", "POPW")) or name.endswith(("R16", "RM16")):
        return 16
    return 32


_REG_NAMES = {getattr(_ix.Register, n): n.lower() for n in dir(_ix.Register) if n.isupper()}


def format_bytes(buf: bytes, bitness: int, ip: int) -> list[tuple[int, bytes, str]]:
    """Linear decode of a short byte string for display: (address, bytes, text) per instruction."""
    out = []
    pos = 0
    while pos < len(buf):
        d = decode_view(buf[pos:], bitness, ip + pos)
        if isinstance(d, Decoded):
            out.append((ip + pos, buf[pos : pos + d.length], d.text))
            pos += d.length
        else:
            why = "(runs past the end)" if d == NEED_MORE else "(invalid)"
            out.append((ip + pos, buf[pos:], why))
            break
    return out
