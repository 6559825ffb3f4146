"""What refers to a byte *inside* a stub: the reason a stub cannot be moved or reshaped.

Moving a stub leaves a ``jmp`` and filler at its old place; control that arrived at any byte but
the first would now run the filler. Reshaping changes the interior bytes too. So a site is only
rewritten when nothing the program holds points into ``[site + 1, site + length)``:

* **direct branches and calls**. ``rel32`` forms (``E8``, ``E9``, ``0F 8x``) are found by their
  bytes anywhere in a 32-bit region (a branch from far away is as bad as one from nearby); a hit
  counts unless the self-synchronising decodes of the bytes before it agree that it lies inside
  another instruction (an operand that happens to hold ``E8``). Short forms (``EB``, ``7x``,
  ``E0..E3``) and every branch of 16-bit code (whose ``rel16`` reaches the whole segment, so a
  byte search would hit a stub by chance) need instruction boundaries: they count where a
  descent from proven boundaries (the end of a site, which returns there, and format anchors,
  following direct branches and calls) decodes them, or where the decodes that land exactly on
  a stub's first byte agree on them (see ``_window_starts``); decodes stop at invalid or
  data-like instructions, C strings and bounded jump tables;
* **jump tables**: every ``jmp [table + reg*4]`` / Open Watcom ``jmp cs:[reg + table]`` / 16-bit
  ``jmp cs:[bx + table]`` whose bytes occur in the region, entries read up to the bounds check
  (or while they point into the region);
* **relocations** (PE): a relocated field inside the stub (the loader would rewrite moved
  bytes), or a relocated value pointing inside it;
* **format anchors** (entry point, exports) inside the stub.

Immediates of images without relocations (a driver's ``mov esi, handler``) are not taken as
pointers: in drivers most in-range immediates are not addresses at all (rdos-facts; docs/pad.md
"Limits"), and compilers never point into a gate stub.

The scanner (issue 7) builds a map of proven instruction starts for each region; once it exposes
that map, the short-branch evidence here should come from it.
"""

from __future__ import annotations

import bisect
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..decode import SYNC_IN, CodeDecoder, Flow
from ..image import Image, Region
from ..scan import UD2_FORMS, Site

BRANCH = "branch"
JUMP_TABLE = "jump-table"
RELOCATION = "relocation"
POINTER = "pointer"
ANCHOR = "anchor"

# The decodes before a stub start this far before it (and up to 15 more): far enough that they
# have merged before the last 130 bytes, from which a short branch could reach the stub.
WINDOW = 176
STREAMS = 16
SHORT_REACH = 130
SYNC_DISTANCE = 32
MAX_TABLE = 1024

_REL32 = re.compile(rb"[\xe8\xe9]|\x0f[\x80-\x8f]")
# A C string kept in code (five or more printable characters, then a NUL): decodes stop there.
_TEXT = re.compile(rb"[\t\n\r\x20-\x7e]{5,}\x00")
_TEXT_LETTERS = re.compile(rb"[a-z ]")
_TABLE_JMP = re.compile(rb"\xff[\x20-\x27\x60-\x67\xa0-\xa7]")


@dataclass(frozen=True, order=True)
class Reference:
    """Something that refers to ``target``, an address inside a stub: an instruction or field
    at ``source`` (None for format anchors)."""

    target: int
    kind: str
    source: int | None
    detail: str


class _Interiors:
    """The stubs of one region by file offset: which one's interior holds a given offset."""

    def __init__(self, sites: Iterable[Site]) -> None:
        spans = sorted((s.file_offset, s.length) for s in sites)
        self.starts = [a for a, _ in spans]
        self.ends = [a + n for a, n in spans]

    def inside(self, off: int) -> int | None:
        """The file offset of the stub whose interior ``(start, end)`` holds ``off``."""
        i = bisect.bisect_right(self.starts, off) - 1
        if i >= 0 and self.starts[i] < off < self.ends[i]:
            return self.starts[i]
        return None

    def overlaps(self, lo: int, hi: int) -> int | None:
        """The file offset of a stub that shares a byte with ``[lo, hi)``."""
        i = bisect.bisect_right(self.starts, hi - 1) - 1
        if i >= 0 and self.ends[i] > lo:
            return self.starts[i]
        return None


class _Spans:
    """Sorted, disjoint byte spans (file offsets)."""

    def __init__(self, spans: list[tuple[int, int]]) -> None:
        self.starts = [a for a, _ in spans]
        self.ends = [b for _, b in spans]

    def hits(self, lo: int, hi: int) -> bool:
        """Does ``[lo, hi)`` share a byte with a span?"""
        i = bisect.bisect_right(self.starts, hi - 1) - 1
        return i >= 0 and self.ends[i] > lo



def _text_spans(data: bytes, lo: int, hi: int) -> list[tuple[int, int]]:
    """C strings in ``[lo, hi)`` (three or more lower-case letters or spaces among the
    printable run, so that code bytes that happen to be printable are not taken for text)."""
    out = []
    for m in _TEXT.finditer(data, lo, hi):
        if len(_TEXT_LETTERS.findall(m.group(0))) >= 3:
            out.append((m.start(), m.end()))
    return out


def references_into(image: Image, sites: Sequence[Site], boundaries: Sequence[Site] = ()) -> dict[int, list[Reference]]:
    """For each of ``sites`` that something refers inside, the references (keyed by the site's
    file offset, each list sorted). ``boundaries``: every site of the scan (their starts and
    ends are proven instruction boundaries, where decoding may start); default ``sites``."""
    bounds = list(boundaries) or list(sites)
    out: dict[int, set[Reference]] = {}
    by_region: dict[str, list[Site]] = {}
    for s in sites:
        by_region.setdefault(s.region, []).append(s)
    regions = {r.name: r for r in image.code_regions}
    for name, group in sorted(by_region.items()):
        region = regions.get(name)
        if region is None or region.bitness not in (16, 32):
            continue
        inner = _Interiors(group)
        region_bounds = [s for s in bounds if s.region == name]
        for site_off, ref in _region_refs(image, region, inner, group, region_bounds):
            out.setdefault(site_off, set()).add(ref)
    for site_off, ref in _relocation_refs(image, sites):
        out.setdefault(site_off, set()).add(ref)
    return {k: sorted(v) for k, v in sorted(out.items())}


def _region_refs(image: Image, region: Region, inner: _Interiors, group: list[Site],
                 bounds: list[Site]) -> Iterable[tuple[int, Reference]]:
    data = image.data
    bits = region.bitness
    assert bits is not None
    lo, hi = region.file_offset, region.end_offset
    dec = CodeDecoder(data, bits, region.address, lo, hi, UD2_FORMS)
    known = _Interiors(bounds)

    def ref(kind: str, src_off: int | None, tgt_off: int, detail: str) -> tuple[int, Reference] | None:
        site = inner.inside(tgt_off)
        if site is None:
            return None
        src = None if src_off is None else region.address_of(src_off)
        return site, Reference(region.address_of(tgt_off), kind, src, detail)

    # Anchors (entry point, exports) inside a stub.
    for a in region.anchors:
        r = ref(ANCHOR, None, lo + a.offset, f"{a.kind.value} {a.name}".strip())
        if r:
            yield r
    # rel32 branches anywhere in 32-bit code: found by their bytes; a hit counts unless the
    # self-synchronising decode of the bytes before it says it lies inside another instruction
    # (an E8 in a displacement: ``C7 45 E8 76 00 00 00`` holds a "call +0x76").
    if bits == 32:
        for m in _REL32.finditer(data, lo, hi):
            p = m.start()
            n = 5 if data[p] != 0x0F else 6
            if p + n > hi or known.overlaps(p, p + n) is not None:
                continue
            (rel,) = struct.unpack_from("<i", data, p + n - 4)
            t = (region.address_of(p) + n + rel) & 0xFFFFFFFF
            off = lo + (t - region.address)
            if lo <= off < hi and inner.inside(off) is not None and not _inside_other(dec, p):
                r = ref(BRANCH, p, off, f"{dec.text(p)} at {region.address_of(p):#x}")
                if r:
                    yield r
    # Jump tables whose dispatch bytes occur in the region: their entries, and their bytes as
    # data that decodes must not run through.
    tables = _tables(image, region, dec)
    for q, taddr, size, entries, _ in tables:
        for i, off in enumerate(entries):
            r = ref(JUMP_TABLE, q, off, f"entry {i} of the jump table at {taddr:#x} "
                                         f"(jump at {region.address_of(q):#x})")
            if r:
                yield r
    data_spans = _text_spans(data, lo, hi)
    for _, taddr, size, entries, bounded in tables:
        toff = dec.offset_of(taddr)
        # Only a table with a bounds check is taken as data: a dispatch-like byte run in data
        # must not blind the decodes to real code.
        if bounded and toff is not None and entries:
            data_spans.append((toff, toff + size * len(entries)))
    text = _Spans(_merge(data_spans))
    # Short branches (and all 16-bit ones) at decoded instruction starts.
    stubs = {x.file_offset: x.file_offset + x.length for x in bounds}
    near = None if bits == 16 else _Spans(_merge([(x.file_offset - SHORT_REACH - 16, x.file_offset + x.length + SHORT_REACH)
                                                   for x in group]))
    branches, seen = _descent_branches(dec, bounds, region, text, near)
    branches.update(_window_starts(dec, group, known, stubs, text, seen))
    for p, (_, flow, tgt) in sorted(branches.items()):
        if tgt is not None and flow in (Flow.JUMP, Flow.COND, Flow.CALL):
            r = ref(BRANCH, p, tgt, f"{dec.text(p)} at {region.address_of(p):#x}")
            if r:
                yield r


def _inside_other(dec: CodeDecoder, p: int) -> bool:
    """Do the decodes from the 15 starts 32..46 bytes before ``p`` agree that ``p`` lies
    strictly inside an instruction? (No agreement, or too little room: False, so the hit
    counts.)"""
    first = p - SYNC_DISTANCE - 14
    if first < dec.start:
        return False
    vote, _ = dec.sync_vote(first, 15, p, p)
    return vote is not None and vote[0] == SYNC_IN and vote[1] < p


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


_Branches = dict[int, tuple[int, Flow, int | None]]  # start -> (length, flow, target offset)


def _descent_branches(dec: CodeDecoder, bounds: list[Site], region: Region, text: _Spans,
                      near: _Spans | None) -> tuple[_Branches, bytearray]:
    """Starts of branch instructions that a descent from proven boundaries decodes: from every
    site end (a stub returns there) and format anchor, fall-through and direct branch and call
    targets, across stubs (each is one proven step), stopping at an unconditional transfer
    (what follows one may be data), an invalid or data-like instruction, or a C string.
    ``near``: decode only there (in 32-bit code only short branches need decoding, and they
    reach 130 bytes). Also returns the positions it decoded (1 in a bytearray over the region)."""
    lo, hi = dec.start, dec.end
    stubs = {s.file_offset: s.file_offset + s.length for s in bounds}
    inner = _Interiors(bounds)
    seen = bytearray(hi - lo)

    def wanted(p: int) -> bool:
        return near is None or near.hits(p, p + 1)

    seeds = {*stubs.values(), *(lo + a.offset for a in region.anchors)}
    work = sorted((p for p in seeds if wanted(p)), reverse=True)
    out: _Branches = {}
    while work:
        pos = work.pop()
        while lo <= pos < hi and not seen[pos - lo] and wanted(pos):
            seen[pos - lo] = 1
            end = stubs.get(pos)
            if end is not None:
                pos = end
                continue
            if inner.inside(pos) is not None:
                break
            n, flow, tgt, data_like = dec.step(pos)
            if n == 0 or data_like or text.hits(pos, pos + n):
                break
            if flow is not Flow.NEXT:
                out[pos] = (n, flow, tgt)
                if tgt is not None and not seen[tgt - lo] and wanted(tgt):
                    work.append(tgt)
                if flow is Flow.JUMP or flow is Flow.STOP:
                    break
            pos += n
    return out, seen


def _window_starts(dec: CodeDecoder, group: list[Site], known: _Interiors, stubs: dict[int, int],
                   text: _Spans, proven: bytearray) -> _Branches:
    """Branch starts in the bytes before each stub, where the decodes agree: decodes from
    ``STREAMS`` consecutive starts ``WINDOW`` bytes before it (straight-line code has an
    instruction start among any 15 consecutive bytes, so the true one is among them). A stream
    counts only if it lands exactly on the stub's first byte (a proven boundary) and meets no
    invalid or data-like instruction or C string (other stubs on the way are stepped over
    whole); of those, only the instructions every one of them decodes are kept: a stream that
    is still misaligned lands on the stub too, now and then, by a byte that happens to end an
    instruction there. Streams merge where they meet (memoised). Besides, the decode from the
    last proven instruction start before the stub (``proven``: what the descent decoded), on
    through jumps, counts whole when it lands on the stub: it starts at a true boundary."""
    out: _Branches = {}
    lo = dec.start
    for s in group:
        target = s.file_offset
        first = max(dec.start, target - WINDOW)
        k = proven.rfind(1, max(0, target - lo - 4 * WINDOW), target - lo)
        if k >= 0:
            trusted = _stream(dec, lo + k, target, known, stubs, text)
            if trusted is not None:
                out.update((p, b) for p, b in trusted.items() if target - p <= SHORT_REACH + 15)
        fate: dict[int, bool] = {}  # position -> does the stream from here land on target?
        nxt: dict[int, int] = {}  # position -> the next position of its stream
        branches: _Branches = {}
        landing: list[int] = []
        for start in range(first, min(first + STREAMS, target)):
            path: list[int] = []
            pos = start
            ok = False
            while True:
                if pos in fate:
                    ok = fate[pos]
                    break
                if pos >= target:
                    ok = pos == target
                    break
                end = stubs.get(pos)
                if end is not None:
                    nxt[pos] = end
                    path.append(pos)
                    pos = end
                    continue
                if known.inside(pos) is not None:
                    break  # inside another stub: not an instruction start
                n, flow, tgt, data_like = dec.step(pos)
                if n == 0 or data_like or text.hits(pos, pos + n):
                    break
                if flow is not Flow.NEXT:
                    branches[pos] = (n, flow, tgt)
                path.append(pos)
                nxt[pos] = pos + n
                pos += n
            for p in path:
                fate[p] = ok
            if ok:
                landing.append(start)
        common: set[int] | None = None
        for start in landing:
            seen_path = set()
            p = start
            while p < target:
                seen_path.add(p)
                p = nxt[p]
            common = seen_path if common is None else common & seen_path
        for p in sorted(common or ()):
            if p in branches and target - p <= SHORT_REACH + 15:
                out[p] = branches[p]
    return out


def _stream(dec: CodeDecoder, pos: int, target: int, known: _Interiors, stubs: dict[int, int],
            text: _Spans) -> _Branches | None:
    """The branches of a linear decode from ``pos`` (through jumps) if it lands exactly on
    ``target`` without meeting an invalid or data-like instruction or a C string; else None."""
    out: _Branches = {}
    while pos < target:
        end = stubs.get(pos)
        if end is not None:
            pos = end
            continue
        if known.inside(pos) is not None:
            return None
        n, flow, tgt, data_like = dec.step(pos)
        if n == 0 or data_like or text.hits(pos, pos + n):
            return None
        if flow is not Flow.NEXT:
            out[pos] = (n, flow, tgt)
        pos += n
    return out if pos == target else None


def _tables(image: Image, region: Region, dec: CodeDecoder) -> list[tuple[int, int, int, list[int], bool]]:
    """Every jump table whose dispatch bytes occur in the region: (jump offset, table address,
    entry size, the entries' region offsets, bounded), entries read up to the bounds check
    (bounded), or while they point into the region."""
    data = image.data
    lo, hi = region.file_offset, region.end_offset
    seen: set[tuple[int, int]] = set()
    out = []
    for m in _TABLE_JMP.finditer(data, lo, hi):
        p = m.start()
        for q in (p - 1, p) if p > lo and data[p - 1] == 0x2E else (p,):
            jt = dec.jump_table(q)
            if jt is None:
                continue
            taddr, size, count = jt
            if (taddr, size) in seen:
                continue
            seen.add((taddr, size))
            raw = image.read_at(taddr, size * min(count or MAX_TABLE, MAX_TABLE), region)
            entries = []
            for i in range(0, len(raw) - size + 1, size):
                off = dec.offset_of(int.from_bytes(raw[i : i + size], "little"))
                if off is None:
                    break  # tables end where entries leave the region
                entries.append(off)
            out.append((q, taddr, size, entries, count is not None))
    return out


def _relocation_refs(image: Image, sites: Sequence[Site]) -> Iterable[tuple[int, Reference]]:
    """PE base relocations: a relocated field inside a stub, or a relocated value pointing into
    one. (PE addresses are unique across sections, so sites are looked up by address.)"""
    relocs = getattr(image, "relocations", ())
    if not relocs or not sites:
        return
    spans = sorted((s.address, s.address + s.length, s.file_offset) for s in sites)
    starts = [a for a, _, _ in spans]

    def holding(addr: int, lo_open: bool) -> int | None:
        i = bisect.bisect_right(starts, addr) - 1
        if i >= 0:
            a, e, off = spans[i]
            if (a < addr if lo_open else a <= addr) and addr < e:
                return off
        return None

    for a in relocs:
        for k in range(4):
            site = holding(a + k, lo_open=False)
            if site is not None:
                yield site, Reference(a + k, RELOCATION, a, f"the loader relocates the dword at {a:#x}")
                break
        raw = image.read_at(a, 4, image.regions[0]) if image.regions else b""
        if len(raw) == 4:
            v = int.from_bytes(raw, "little")
            site = holding(v, lo_open=True)
            if site is not None:
                yield site, Reference(v, POINTER, a, f"the relocated pointer at {a:#x}")


__all__ = ["ANCHOR", "BRANCH", "JUMP_TABLE", "POINTER", "RELOCATION", "Reference", "references_into"]
