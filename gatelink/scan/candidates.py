"""Fast candidate search: byte patterns that could be gate stubs, before any decoding.

Every selector-carrying shape has the far-call opcode ``9A`` followed by four bytes and then
the selector word at ``9A + 5`` (current shapes: a 32-bit gate; legacy ones: a 16-bit gate and
a zero word). One regex finds every ``9A`` followed by a selector 0..7 (it consumes only the
``9A``, so overlapping hits are all found); the shapes are then matched by the bytes around
it. UD2 forms are ``0F 0B`` and a marker byte. Both regexes start with a literal byte, so the
regex engine skips through the buffer at memchr speed.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from ..catalog import FAMILIES, UD2_SHAPES, Family, Shape

_FAR = re.compile(rb"\x9a(?=[\x00-\xff]{4}[\x00-\x07]\x00)")
_UD2 = re.compile(rb"\x0f\x0b(?=[\xca\xcb\xd6\xd7])")
_UD2_BY_MARKER = {m: s for s in UD2_SHAPES for m in s.markers}
_BEFORE_9A = frozenset(f.prefix[-2] for f in FAMILIES if len(f.prefix) > 1)
assert all(len(f.prefix) > 1 or f.middle == b"\0\0" for f in FAMILIES)

# Bytes past a region's end that are read to notice stubs straddling it.
TAIL = 16


class Match(NamedTuple):
    """One way to read the bytes around a hit as a stub: a family (any selector) or a UD2 shape."""

    start: int  # file offset of the site's first byte
    family: Family | None
    shape: Shape | None  # the member the selector picks (None: selector out of range)
    selector: int | None
    gate: int
    length: int
    marker: int | None = None


class Hit(NamedTuple):
    """A ``9A`` (or UD2) position with every stub reading of the bytes around it.

    ``matches`` is sorted by start, longest reading first. ``lo`` is the earliest start.
    """

    pos: int  # file offset of the 9A / 0F
    matches: tuple[Match, ...]
    selector: int | None

    @property
    def lo(self) -> int:
        return self.matches[0].start if self.matches else self.pos


def find(data: bytes, start: int, end: int, limit: int | None = None) -> list[Hit]:
    """All hits whose trigger byte lies in ``[start, end)``.

    Stub bytes may run up to ``TAIL`` bytes past ``end`` (into ``limit``, default the buffer's
    end): those matches are still returned, the caller reports them as straddling.
    """
    stop = min(len(data), end + TAIL) if limit is None else min(limit, end + TAIL)
    hits: list[Hit] = []
    for m in _FAR.finditer(data, start, stop):
        q = m.start()
        if q >= end:
            break
        sel = data[q + 5]
        # Every family but the bare legacy 9A forms has 66 or 67 before the 9A, and those
        # have a zero high word of the offset: most hits in real code are neither.
        if data[q - 1] not in _BEFORE_9A and (data[q + 3] or data[q + 4]):
            hits.append(Hit(q, (), sel))
            continue
        matches = []
        for fam in FAMILIES:
            op = len(fam.prefix) - 1
            s = q - op
            if s < start:  # the stub would begin outside this region
                continue
            if data[s : q + 1] != fam.prefix:
                continue
            g0 = q + 1
            mid = g0 + fam.gate_size
            if data[mid : mid + len(fam.middle)] != fam.middle:
                continue
            sel_at = mid + len(fam.middle)
            if sel_at != q + 5:
                continue
            suf = sel_at + 2
            if fam.suffix and data[suf : suf + len(fam.suffix)] != fam.suffix:
                continue
            length = suf + len(fam.suffix) - s
            if s + length > stop:
                continue
            matches.append(
                Match(s, fam, fam.member_for(sel), sel, int.from_bytes(data[g0:mid], "little"), length)
            )
        matches.sort(key=lambda x: (x.start, -x.length))
        hits.append(Hit(q, tuple(matches), sel))
    for m in _UD2.finditer(data, start, stop):
        q = m.start()
        if q >= end:
            break
        marker = data[q + 2]
        shape = _UD2_BY_MARKER[marker]
        if q + shape.length > stop:
            continue
        g0 = q + shape.gate_at
        gate = int.from_bytes(data[g0 : g0 + shape.gate_size], "little")
        hits.append(Hit(q, (Match(q, None, shape, None, gate, shape.length, marker),), None))
    hits.sort(key=lambda h: (h.lo, h.pos))
    return hits

