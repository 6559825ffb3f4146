"""The scanner: every gate stub in an image's code, with instruction-boundary evidence.

``scan(image)`` runs three steps per code region:

1. candidates (:mod:`.candidates`): byte patterns of every shape, found by regex;
2. proof (:mod:`.sweep`): is the candidate's first byte an instruction start, decoded in the
   region's bitness, reached from a known boundary?
3. classification: a proven start whose bytes match a shape of the region's bitness with an
   allowed selector is a :class:`Site`; everything else that looked like a stub is kept as a
   :class:`NearMiss` with a machine-readable reason.

Stub patterns in data regions are never sites (near misses with reason ``non-code-region``).
"""

from __future__ import annotations

import os
import pickle
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..catalog import MAX_STUB_SELECTOR, UD2_SHAPES, Shape
from ..decode import CodeDecoder, Decoded, Kind, decode_view
from ..gates import GateDB
from ..gates import bundled as bundled_gates
from ..image import Image, Region, RegionKind
from . import candidates as _cand
from .discover import FULL_LIMIT, STRONG, CodeMap, describe_gap, gap_verdict, relocated_pointers
from .sweep import CallIndex, Sweep, Verdict, prove_by_calls

# The legacy UD2 gate forms: the marker byte after UD2 -> the form's length.
UD2_FORMS = {m: s.length for s in UD2_SHAPES for m in s.markers}

CERTAIN = "certain"
LIKELY = "likely"

# Near-miss reasons (machine-readable; docs/scanning.md explains each).
INSIDE_INSTRUCTION = "inside-instruction"
NO_BOUNDARY_EVIDENCE = "no-boundary-evidence"
NON_CODE_REGION = "non-code-region"
SELECTOR_OUT_OF_RANGE = "selector-out-of-range"
WRONG_BITNESS = "wrong-bitness"
UNKNOWN_FORM = "unknown-form"
STRADDLES_REGION_END = "straddles-region-end"
CODE_64BIT = "64-bit-code"
RELOCATED_BYTES = "relocated-bytes"
INSIDE_JUMP_TABLE = "inside-jump-table"
AMBIGUOUS_START = "ambiguous-start"
NOT_A_STUB = "not-a-stub"
REASONS = (
    INSIDE_INSTRUCTION, NO_BOUNDARY_EVIDENCE, NON_CODE_REGION, SELECTOR_OUT_OF_RANGE,
    WRONG_BITNESS, UNKNOWN_FORM, STRADDLES_REGION_END, CODE_64BIT, RELOCATED_BYTES, INSIDE_JUMP_TABLE,
    AMBIGUOUS_START, NOT_A_STUB,
)


@dataclass(frozen=True)
class Site:
    """A gate stub at a proven instruction boundary."""

    file_offset: int
    address: int
    region: str
    bitness: int
    shape: str
    length: int
    gate: int
    selector: int | None
    gate_kind: str | None
    gate_name: str | None
    confidence: str  # "certain" or "likely"
    evidence: str
    marker: int | None = None  # UD2 forms: the byte after UD2

    def to_json(self) -> dict[str, object]:
        d: dict[str, object] = {
            "file_offset": self.file_offset, "address": self.address, "region": self.region,
            "bitness": self.bitness, "shape": self.shape, "length": self.length, "gate": self.gate,
            "selector": self.selector, "gate_kind": self.gate_kind, "gate_name": self.gate_name,
            "confidence": self.confidence, "evidence": self.evidence,
        }
        if self.marker is not None:
            d["marker"] = self.marker
        return d


@dataclass(frozen=True)
class NearMiss:
    """Bytes that look like a stub but are not one, and why."""

    file_offset: int
    reason: str
    region: str
    address: int | None
    shape: str | None  # the shape (or family) the bytes resemble
    detail: str

    def to_json(self) -> dict[str, object]:
        return {
            "file_offset": self.file_offset, "reason": self.reason, "region": self.region,
            "address": self.address, "shape": self.shape, "detail": self.detail,
        }


@dataclass
class ScanResult:
    image: Image
    sites: list[Site] = field(default_factory=list)
    near_misses: list[NearMiss] = field(default_factory=list)
    gates: GateDB | None = None
    warnings: list[str] = field(default_factory=list)
    decoded_instructions: int = 0

    def summary(self) -> dict[str, object]:
        by_shape = Counter(s.shape for s in self.sites)
        by_kind = Counter(s.gate_kind or "unknown" for s in self.sites)
        by_conf = Counter(s.confidence for s in self.sites)
        unknown = sorted({(s.gate_kind or "?", s.gate) for s in self.sites if s.gate_name is None})
        return {
            "sites": len(self.sites),
            "by_shape": dict(sorted(by_shape.items())),
            "by_gate_kind": dict(sorted(by_kind.items())),
            "by_confidence": dict(sorted(by_conf.items())),
            "distinct_gates": len({(s.gate_kind, s.gate) for s in self.sites}),
            "unknown_gates": [{"kind": k, "gate": g} for k, g in unknown],
            "near_misses": len(self.near_misses),
            "near_misses_by_reason": dict(sorted(Counter(n.reason for n in self.near_misses).items())),
        }


def scan(
    image: Image, gates: GateDB | None = None, progress: Callable[[int], None] | None = None,
    jobs: int | None = None,
) -> ScanResult:
    """Find every gate stub in ``image``'s code regions.

    ``gates`` names the gates (default: the bundled RDOS list). ``progress`` is called with the
    number of region bytes done, for progress bars. ``jobs``: processes for large code regions
    (default: one per CPU; 1 scans in this process only; more fork children that share the
    image). Code is cut into fixed ``CHUNK_BYTES`` chunks whatever ``jobs`` is, so the result
    does not depend on it.
    """
    db = gates if gates is not None else bundled_gates()
    result = ScanResult(image=image, gates=db)
    result.warnings.extend(image.warnings)
    if jobs is None:
        jobs = os.cpu_count() or 1
    maps = _code_maps(image)
    for region in image.regions:
        if region.size == 0:
            continue
        if region.kind is RegionKind.CODE and region.bitness in (16, 32):
            _scan_code(image, region, db, result, jobs, cmap=maps.get(region.name))
        else:
            _scan_other(image, region, result)
        if progress is not None:
            progress(region.size)
    result.sites.sort(key=lambda s: s.file_offset)
    result.near_misses.sort(key=lambda n: (n.file_offset, n.reason))
    return result


def verify_sites(image: Image, locations: Iterable[int], gates: GateDB | None = None) -> ScanResult:
    """Verify stub locations a linker emitted instead of searching for stubs.

    ``locations`` are file offsets of the first byte of each stub. Each one is checked exactly
    as the scanner checks a candidate it found itself: its bytes must form a known shape of the
    region's bitness with an allowed selector, and its first byte must be a proven instruction
    boundary. A location that passes is a :class:`Site` of the result; every other one is a
    :class:`NearMiss` at that offset with the reason (``not-a-stub`` when no stub shape starts
    there, ``non-code-region`` outside code). Stubs at offsets not given are not looked for.
    """
    db = gates if gates is not None else bundled_gates()
    result = ScanResult(image=image, gates=db)
    result.warnings.extend(image.warnings)
    wanted = sorted(set(locations))
    by_region: dict[str, set[int]] = {}
    for off in wanted:
        region = next((r for r in image.regions if r.contains_offset(off)), None)
        if region is None or region.kind is not RegionKind.CODE or region.bitness not in (16, 32):
            where = "outside every region" if region is None else \
                ("in a data region" if region.kind is not RegionKind.CODE else "in 64-bit code")
            result.near_misses.append(NearMiss(off, NON_CODE_REGION, region.name if region else "",
                                               region.address_of(off) if region else None, None,
                                               f"the location is {where}"))
            continue
        by_region.setdefault(region.name, set()).add(off)
    maps = _code_maps(image)
    for region in image.regions:
        only = by_region.get(region.name)
        if only:
            _scan_code(image, region, db, result, 1, frozenset(only), maps.get(region.name))
    sites = {s.file_offset for s in result.sites}
    result.near_misses = [n for n in result.near_misses if n.file_offset in set(wanted) and n.file_offset not in sites]
    explained = sites | {n.file_offset for n in result.near_misses}
    for off in wanted:
        if off not in explained:
            region = next(r for r in image.regions if r.contains_offset(off))
            result.near_misses.append(NearMiss(off, NOT_A_STUB, region.name, region.address_of(off), None,
                                               f"no stub shape starts here (bytes {bytes(image.data[off : off + 10]).hex(' ')})"))
    result.sites = [s for s in result.sites if s.file_offset in set(wanted)]
    result.sites.sort(key=lambda s: s.file_offset)
    result.near_misses.sort(key=lambda n: (n.file_offset, n.reason))
    return result


def _scan_other(image: Image, region: Region, result: ScanResult) -> None:
    """Data regions and 64-bit code: stub patterns here are near misses."""
    reason = CODE_64BIT if region.kind is RegionKind.CODE else NON_CODE_REGION
    for hit in _cand.find(image.data, region.file_offset, region.end_offset):
        if not hit.matches:
            continue
        m = hit.matches[0]
        result.near_misses.append(
            NearMiss(m.start, reason, region.name, region.address_of(m.start), _shape_name(m),
                     "stub bytes in a data region" if reason == NON_CODE_REGION else "64-bit code holds no RDOS stubs")
        )


def _shape_name(m: _cand.Match) -> str:
    if m.shape is not None:
        return m.shape.id
    assert m.family is not None
    return "/".join(s.id for s in m.family.members)


_ChunkResult = tuple[list[Site], list[NearMiss], int]  # sites, near misses, instructions decoded

# Large code regions are cut into chunks of this many bytes (by where candidates start); each
# chunk is proven on its own, in a worker process when there are several CPUs.
CHUNK_BYTES = 16 << 20


def _scan_code(image: Image, region: Region, db: GateDB, result: ScanResult, jobs: int,
               only: frozenset[int] | None = None, cmap: CodeMap | None = None) -> None:
    hits = _cand.find(image.data, region.file_offset, region.end_offset)
    if only is not None:
        # verify_sites: the candidates with a reading that starts at a given location, and only
        # those readings (the proof still decides whether the start is a boundary).
        hits = [h._replace(matches=tuple(m for m in h.matches if m.start in only))
                for h in hits if any(m.start in only for m in h.matches)]
    chunks: list[list[_cand.Hit]] = []
    for hit in hits:
        k = (hit.lo - region.file_offset) // CHUNK_BYTES
        while len(chunks) <= k:
            chunks.append([])
        chunks[k].append(hit)
    chunks = [c for c in chunks if c]
    workers = min(jobs, len(chunks)) if hasattr(os, "fork") else 1
    # Contiguous shares of about equal candidate counts; this process does the first.
    shares: list[list[list[_cand.Hit]]] = [[] for _ in range(max(1, workers))]
    total = sum(len(c) for c in chunks)
    done = 0
    for c in chunks:
        shares[min(len(shares) - 1, done * len(shares) // max(1, total))].append(c)
        done += len(c)
    others = [s for s in shares[1:] if s]
    forked = [_fork_share(image, region, db, share, cmap) for share in others]
    outs = [_scan_chunk(image, region, db, c, cmap) for c in shares[0]]
    for (pid, fd), share in zip(forked, others):
        outs.extend(_join_share(pid, fd) or [_scan_chunk(image, region, db, c, cmap) for c in share])
    if cmap is not None:
        result.decoded_instructions += cmap.decoded
    for sites, near_misses, decoded in outs:
        result.sites.extend(sites)
        result.near_misses.extend(near_misses)
        result.decoded_instructions += decoded


def _fork_share(image: Image, region: Region, db: GateDB, share: list[list[_cand.Hit]],
                cmap: CodeMap | None) -> tuple[int, int]:
    """Scan ``share`` in a forked child (the image is shared copy-on-write); its results come
    back pickled through a pipe. Returns (pid, read end)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            os.close(r)
            payload = pickle.dumps([_scan_chunk(image, region, db, c, cmap) for c in share], pickle.HIGHEST_PROTOCOL)
            with os.fdopen(w, "wb") as f:
                f.write(payload)
        except BaseException:  # the parent redoes the share itself
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def _join_share(pid: int, fd: int) -> list[_ChunkResult] | None:
    """The results of a forked share, or None if the child failed (the caller redoes it)."""
    with os.fdopen(fd, "rb") as f:
        payload = f.read()
    _, status = os.waitpid(pid, 0)
    if status != 0 or not payload:
        return None
    out: list[_ChunkResult] = pickle.loads(payload)
    return out


def _scan_chunk(image: Image, region: Region, db: GateDB, hits: list[_cand.Hit],
                cmap: CodeMap | None = None) -> _ChunkResult:
    """Prove and classify one chunk's candidates (in address order): (sites, near misses,
    instructions decoded). ``cmap``: the region's code discovery (small regions), which
    decides where it knows; the sweep decides elsewhere."""
    data = image.data
    assert region.bitness is not None
    result = ScanResult(image=image)
    dec = cmap.dec if cmap is not None else \
        CodeDecoder(data, region.bitness, region.address, region.file_offset, region.end_offset, UD2_FORMS)

    def read_table(addr: int, n: int) -> bytes:
        return image.read_at(addr, n, region)

    # Self-synchronisation assumes code without data between functions: compiled PE code.
    # Drivers and kernels keep strings and tables in their code segments.
    sweep = Sweep(dec, region.anchors, read_table, self_sync=image.format == "pe32")
    end = region.end_offset
    unresolved: list[tuple[_cand.Hit, list[_cand.Match], int, Verdict]] = []
    for hit in hits:
        inside = [m for m in hit.matches if m.start + m.length <= end]
        if hit.matches and not inside:
            m = hit.matches[0]
            result.near_misses.append(
                NearMiss(m.start, STRADDLES_REGION_END, region.name, region.address_of(m.start), _shape_name(m),
                         f"{m.length}-byte stub runs {m.start + m.length - end} bytes past the region end")
            )
            continue
        lo = inside[0].start if inside else hit.pos
        if cmap is not None:
            verdict = _from_map(cmap, lo, hit.pos) or _from_gap(cmap, lo, hit.pos)
        else:
            verdict = sweep.prove(lo, hit.pos)
        if inside and verdict.boundary is None and verdict.covering is None and cmap is None:
            unresolved.append((hit, inside, lo, verdict))
            continue
        _classify(image, region, dec, sweep, hit, inside, verdict, db, result, cmap)
    result.decoded_instructions += sweep.decoded
    # Second chance for stub-shaped bytes nothing reached: a direct call from anywhere in the
    # region (callers far away, or after the candidate) whose own boundary is proven.
    if unresolved:
        calls = CallIndex(dec, [u[2] for u in unresolved])
        for hit, inside, lo, verdict in unresolved:
            again = prove_by_calls(dec, region.anchors, read_table, calls, lo, hit.pos)
            if again is not None:
                result.decoded_instructions += again[1]
                verdict = again[0]
            _classify(image, region, dec, None, hit, inside, verdict, db, result, cmap)
    return result.sites, result.near_misses, result.decoded_instructions


def _code_maps(image: Image) -> dict[str, CodeMap]:
    """Code discovery for every code region up to ``FULL_LIMIT``, with direct branches and
    calls from one region into another followed (a PE may jump between code sections, as
    ``gatelink pad`` does into its slots): each target is descended in its region at the level
    of the code that branches there, until no region finds a new one."""
    maps: dict[str, CodeMap] = {}
    regions = [r for r in image.code_regions if r.bitness in (16, 32) and 0 < r.size <= FULL_LIMIT]
    for region in regions:
        dec = CodeDecoder(image.data, region.bitness or 32, region.address, region.file_offset, region.end_offset,
                          UD2_FORMS)

        def read_table(addr: int, n: int, region: Region = region) -> bytes:
            return image.read_at(addr, n, region)

        maps[region.name] = _code_map(image, region, dec, read_table)
    if len(maps) > 1:
        by_addr = sorted((r.address, r.address + r.size, r) for r in regions)
        moved = True
        while moved:
            moved = False
            for region in regions:
                cmap = maps[region.name]
                pending, cmap.external = cmap.external, []
                for address, src, level in pending:
                    dest = next((r for lo, hi, r in by_addr if lo <= address < hi and r is not region), None)
                    if dest is None or dest.bitness != region.bitness:
                        continue  # a branch outside every region, or into code of another bitness
                    maps[dest.name].seed(dest.file_offset + (address - dest.address), level,
                                         f"branch at {region.address_of(src):#x} in {region.name}")
                    moved = True
    return maps


def _code_map(image: Image, region: Region, dec: CodeDecoder, read_table: Callable[[int, int], bytes]) -> CodeMap:
    """Whole-region code discovery (:mod:`.discover`): relocated pointers where the image has
    base relocations, immediates where it has none."""
    relocs = image.relocations
    fields = []
    if relocs:
        fields = [region.file_offset + a - region.address
                  for a in relocs.between(region.address - 3, region.address + region.size)]
        spans = [(r.address, r.size, r.file_offset) for r in image.regions]
        pointers = relocated_pointers(image.data, relocs, spans, dec)
    else:
        pointers = []
    cmap = CodeMap(dec, region.anchors, fields, read_table, immediates=not relocs)
    return cmap.run([a for a in region.anchors if not a.strong], pointers)


def _from_gap(cmap: CodeMap, lo: int, hi: int) -> Verdict:
    """Heuristic evidence for a candidate discovery did not reach (:func:`.discover.gap_verdict`)."""
    g = gap_verdict(cmap, lo, hi)
    if g.boundary is None and g.covering is None:
        return Verdict(None, None, False, "", f"{describe_gap(cmap, lo)}; {g.reason}")
    return Verdict(g.boundary, g.covering, False, g.evidence)


def _from_map(cmap: CodeMap, lo: int, hi: int) -> Verdict | None:
    """What discovery proved about ``[lo, hi]``, or None (left to the sweep)."""
    b = cmap.start_in(lo, hi)
    if b is not None:
        return Verdict(b, None, cmap.level_at(b) >= STRONG, cmap.evidence(b))
    cov = cmap.covering(lo)
    if cov is not None:
        s, n = cov
        if s + n > hi:
            return Verdict(None, cov, cmap.level_at(s) >= STRONG, cmap.evidence(s))
    t = cmap.in_table(lo)
    if t is not None:
        return Verdict(None, None, False, "", f"inside a jump table at {cmap.dec.address(t[0]):#x} ({t[2]})")
    return None


def _classify(
    image: Image, region: Region, dec: CodeDecoder, sweep: Sweep | None, hit: _cand.Hit,
    matches: list[_cand.Match], v: Verdict, db: GateDB, result: ScanResult, cmap: CodeMap | None = None,
) -> None:
    bits = region.bitness
    assert bits is not None

    def near(off: int, reason: str, shape: str | None, detail: str) -> None:
        result.near_misses.append(NearMiss(off, reason, region.name, region.address_of(off), shape, detail))

    if v.boundary is None:
        if not matches:
            return  # a 9A with a small selector byte inside something else: not stub-like
        m = matches[0]
        if v.covering is not None:
            s, n = v.covering
            near(m.start, INSIDE_INSTRUCTION, _shape_name(m),
                 f"inside '{dec.text(s)}' at {region.address_of(s):#x} ({v.evidence})")
        else:
            reason = INSIDE_JUMP_TABLE if v.reason.startswith("inside a jump table") else NO_BOUNDARY_EVIDENCE
            near(m.start, reason, _shape_name(m), v.reason)
        return
    b = v.boundary
    m = next((x for x in matches if x.start == b), None)
    if m is None:
        # A boundary that is not where any shape starts: a far call to a never-valid selector
        # that matches no shape, or no stub at all.
        d = decode_view(bytes(image.data[b : b + 16]), bits, region.address_of(b))
        if isinstance(d, Decoded) and d.kind in (Kind.CALLF, Kind.JMPF) and d.selector is not None \
                and d.selector <= MAX_STUB_SELECTOR and b + d.length > hit.pos:
            near(b, UNKNOWN_FORM, _shape_name(matches[0]) if matches else None,
                 f"'{d.text}' at a proven boundary matches no shape")
        return
    if not v.strong:
        # A longer stub reading that starts before b and contains this one: only a proven chain
        # may say an instruction ends inside it. A decode one byte late turns `55 67 9A ...`
        # into `ret imm16` and a legacy 7-byte form (a wrong site is worse than a missing one).
        outer = next((x for x in matches if x.start < b and x.start + x.length >= b + m.length), None)
        if outer is not None:
            near(b, AMBIGUOUS_START, _shape_name(m),
                 f"the {_shape_name(outer)} reading at {region.address_of(outer.start):#x} contains it; "
                 f"heuristic evidence ({v.evidence}) cannot tell which start is real")
            return
    shape = m.shape
    if shape is None:
        near(b, SELECTOR_OUT_OF_RANGE, _shape_name(m),
             f"selector {m.selector} is not one this form uses")
        return
    if shape.bitness is not None and shape.bitness != bits:
        d = decode_view(bytes(image.data[b : b + 16]), bits, region.address_of(b))
        what = f"'{d.text}'" if isinstance(d, Decoded) else "not an instruction"
        near(b, WRONG_BITNESS, shape.id, f"{shape.bitness}-bit form in {bits}-bit code decodes as {what}")
        return
    if _relocated(image, region, b, m.length):
        # The linker relocates addresses: an operand or data, never a gate number or selector.
        near(b, RELOCATED_BYTES, shape.id, "a base relocation covers bytes of the stub")
        return
    if not _decodes_as_stub(dec, b, shape, m):
        near(b, UNKNOWN_FORM, shape.id, "bytes match the shape but do not decode as its call")
        return
    if not v.strong:
        # A gate returns to the next instruction: on heuristic evidence, a stub followed by
        # what code never falls into (int3, zeros, no instruction) is a template in data.
        why = _not_code_after(dec, image.data, b + m.length)
        if why:
            near(b, NO_BOUNDARY_EVIDENCE, shape.id, f"{why} follows the stub bytes ({v.evidence})")
            return
    kind = shape.kind_of(m.selector, m.marker)
    result.sites.append(
        Site(
            file_offset=b, address=region.address_of(b), region=region.name, bitness=bits,
            shape=shape.id, length=m.length, gate=m.gate, selector=m.selector,
            gate_kind=kind.value if kind else None, gate_name=db.name(kind, m.gate),
            confidence=CERTAIN if v.strong else LIKELY, evidence=v.evidence, marker=m.marker,
        )
    )
    if sweep is not None:
        sweep.accept(b, m.length)


def _relocated(image: Image, region: Region, b: int, n: int) -> bool:
    """Any of the ``n`` bytes at file offset ``b`` inside a relocated 32-bit field."""
    return image.relocations.overlaps(region.address_of(b), n)


def _not_code_after(dec: CodeDecoder, data: bytes, at: int) -> str:
    """Why the bytes at ``at`` cannot be where a returning call goes on, or ''."""
    if at >= dec.end:
        return ""  # the region ends: nothing to judge
    n, _, _, _ = dec.step(at)
    if n == 0:
        return "no instruction"
    if data[at] == 0xCC:
        return "int3"
    if data[at] == 0 and n == 2 and data[at + 1] == 0:
        return "zeros"
    return ""


def _decodes_as_stub(dec: CodeDecoder, b: int, shape: Shape, m: _cand.Match) -> bool:
    """The shape's trapping instruction decodes as expected in this bitness (belt and braces:
    the shape table and the decoder must agree)."""
    n, kind, sel = dec.trap_call(b + shape.call_at)
    if not shape.has_selector:
        return kind == 2
    return kind == 1 and sel == m.selector and n == shape.call_length
