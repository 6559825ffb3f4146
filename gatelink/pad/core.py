"""Pad and align: rewrite a binary so that every gate site's lazy patch needs no sync.

For each site of the scan (docs/pad.md):

1. **kept**: its cheapest proven plan needs no sync under the model: untouched.
2. **reshaped**: the stub's own nop padding lets its far call move forward in place so the
   bytes that change share a chunk (legacy ``L7P``/``L8P``; :mod:`.layout`).
3. **moved**: the stub becomes ``jmp slot`` plus ``int3`` filler; the slot, placed where the
   stub's plan needs no sync, holds the stub's own bytes (it still faults the first time, now
   at the slot) and a ``jmp`` back to the byte after the old site.
4. **refused**, with the reason: something refers inside the stub (a branch, a jump-table
   entry, a relocation, an anchor), the site is too short for the ``jmp``, the slot would
   overflow the segment, no address gives a sync-free plan under the model, ...

The output is scanned again: every moved or reshaped stub must be found where it was put (a
site the scanner does not confirm is refused and the layout redone without it), and the
result lists whatever else the scan of the output disagrees on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from ..catalog import shape as shape_by_id
from ..gates import GateDB
from ..image import Image, Region
from ..plan.model import RDOS_POLICY, Domain, FetchModel, Policy
from ..scan import CERTAIN, ScanResult, Site, scan
from . import images
from .layout import (
    Requirements,
    forms_for,
    next_sync_free,
    reshapes,
    same_effects,
    syncs_at,
)
from .refs import Reference, references_into

KEPT = "kept"
RESHAPED = "reshaped"
MOVED = "moved"
REFUSED = "refused"
ACTIONS = (KEPT, RESHAPED, MOVED, REFUSED)

# Reason codes (the part of ``reason`` before the colon; docs/pad.md lists them).
NO_SYNC_NEEDED = "no-sync-needed"
SYNCS_NEEDED = "syncs-needed"
RESCAN_LOST = "rescan-lost"
BRANCH_TARGET = "branch-target"
RELOCATED = "relocated"
TOO_SHORT = "too-short"
SEGMENT_OVERFLOW = "segment-overflow"
REGION_END = "region-end"
NO_SYNC_FREE_ADDRESS = "no-sync-free-address"
NO_FINAL_FORM = "no-final-form"
NO_SLOT_AREA = "no-slot-area"
NOT_CERTAIN = "not-certain"
UNMODIFIABLE = "unmodifiable"
RESCAN_FAILED = "rescan-failed"
REFUSALS = (BRANCH_TARGET, RELOCATED, TOO_SHORT, SEGMENT_OVERFLOW, REGION_END, NO_SYNC_FREE_ADDRESS,
            NO_FINAL_FORM, NO_SLOT_AREA, NOT_CERTAIN, UNMODIFIABLE, RESCAN_FAILED)

MAX_ROUNDS = 4  # layouts redone after the scan of the output refuses to confirm a moved stub


@dataclass(frozen=True)
class SiteAction:
    """What pad did with one site. ``new_address`` / ``new_region`` / ``new_shape``: where the
    stub is in the output and what the scanner reads there (for kept and refused sites, where it
    was). ``syncs_before`` / ``syncs_after``: syncs of the cheapest proven plan(s) at the old and
    the new place (None: no plan)."""

    site: Site
    action: str
    reason: str
    new_address: int
    new_region: str
    new_shape: str
    syncs_before: int | None
    syncs_after: int | None

    @property
    def reason_code(self) -> str:
        return self.reason.split(":", 1)[0]

    def to_json(self) -> dict[str, object]:
        s = self.site
        return {
            "file_offset": s.file_offset, "address": s.address, "gate": s.gate, "selector": s.selector,
            "action": self.action, "reason": self.reason, "new_address": self.new_address,
            "syncs_before": self.syncs_before, "syncs_after": self.syncs_after,
        }


@dataclass(frozen=True)
class AreaUse:
    """One slot area that received slots: where, and how many bytes."""

    region: str
    address: int
    size: int
    slots: int


@dataclass
class PadResult:
    """The padded image and what happened to every site (in file-offset order of the input)."""

    image: Image
    data: bytes
    requirements: Requirements
    actions: list[SiteAction]
    areas: list[AreaUse] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rescan: ScanResult | None = None

    @property
    def model(self) -> FetchModel:
        return self.requirements.model

    @property
    def bytes_added(self) -> int:
        return len(self.data) - len(self.image.data)

    @property
    def changed(self) -> bool:
        return self.data != self.image.data

    def by_action(self, action: str) -> list[SiteAction]:
        return [a for a in self.actions if a.action == action]

    def summary(self) -> dict[str, object]:
        counts = Counter(a.action for a in self.actions)
        refused = Counter(a.reason_code for a in self.actions if a.action == REFUSED)
        moved = counts.get(MOVED, 0)
        slot_bytes = sum(a.size for a in self.areas)
        return {
            "format": self.image.format,
            "sites": len(self.actions),
            **{k: counts.get(k, 0) for k in ACTIONS},
            "refused_by_reason": dict(sorted(refused.items())),
            "needing_sync_before": sum(1 for a in self.actions if a.syncs_before != 0),
            "needing_sync_after": sum(1 for a in self.actions if a.syncs_after != 0),
            "input_size": len(self.image.data),
            "output_size": len(self.data),
            "slot_bytes": slot_bytes,
            "slot_bytes_per_moved_site": round(slot_bytes / moved, 2) if moved else None,
            "slot_areas": [{"region": a.region, "address": a.address, "size": a.size, "slots": a.slots}
                           for a in self.areas],
            "forms": list(self.requirements.forms),
            "policy": self.requirements.policy.name,
            "warnings": list(self.warnings),
        }

    def to_json(self) -> dict[str, object]:
        """The JSON contract (docs/pad.md): model, sites, summary, bytes_added."""
        return {
            "model": self.model.to_json(),
            "sites": [a.to_json() for a in self.actions],
            "summary": self.summary(),
            "bytes_added": self.bytes_added,
        }

    def address_map(self) -> list[tuple[SiteAction, int]]:
        """(action, old address) for every stub whose address changed (moved or reshaped)."""
        return [(a, a.site.address) for a in self.actions if a.action in (MOVED, RESHAPED)]


def jmp_length(bitness: int) -> int:
    """``E9 rel32``, or ``E9 rel16`` in 16-bit code."""
    return 5 if bitness == 32 else 3


def encode_jmp(at: int, target: int, bitness: int) -> bytes:
    n = jmp_length(bitness)
    if bitness == 32:
        return b"\xe9" + ((target - (at + n)) & 0xFFFFFFFF).to_bytes(4, "little")
    # 16-bit: IP wraps at 64 KiB (the segment holds both ends).
    return b"\xe9" + ((target - (at + n)) & 0xFFFF).to_bytes(2, "little")


def pad(
    image: Image,
    model: FetchModel,
    *,
    forms: Sequence[str] = ("far",),
    policy: Policy = RDOS_POLICY,
    domains: dict[str, Domain] | None = None,
    scan_result: ScanResult | None = None,
    gates: GateDB | None = None,
    jobs: int | None = 1,
    verify: bool = True,
    certain_only: bool = False,
) -> PadResult:
    """Pad ``image`` so that every site's plan(s) for ``forms`` need no sync under ``model``.

    ``scan_result``: the scan of ``image`` (default: scanned here with ``gates`` and ``jobs``).
    ``verify``: scan the output; a moved or reshaped stub it does not find where it was put is
    refused (reason ``rescan-failed``), and a stub it finds that the scan of the input missed
    (its bytes unchanged) is added to the sites; the layout is then redone, at most
    ``MAX_ROUNDS`` times. ``certain_only``: rewrite only ``certain`` sites (a ``likely`` one
    rests on heuristic evidence, and rewriting bytes that are not a stub would corrupt the
    program); the others are refused with reason ``not-certain``. The input image is not
    modified; :attr:`PadResult.data` is the new file.
    """
    req = Requirements(model, policy, tuple(forms), tuple(sorted(domains.items())) if domains else ())
    res = scan_result if scan_result is not None else scan(image, gates, jobs=jobs)
    sites = sorted(res.sites, key=lambda x: x.file_offset)
    areas = images.slot_areas(image)
    learnt = _Learnt()
    result = _attempt(image, sites, learnt, areas, req, certain_only)
    for round_ in range(MAX_ROUNDS + 1):
        if not verify or not result.changed:
            return result
        failed, new, lost = _verify(result, sites, gates, jobs)
        lost -= learnt.lost
        if not failed and not new and not lost:
            return result
        if round_ == MAX_ROUNDS:
            result.warnings.append(f"the layout did not settle in {MAX_ROUNDS} rounds of scanning the output")
            return result
        learnt.refused.update(failed)
        learnt.found.update(x.file_offset for x in new)
        learnt.lost |= lost
        sites = sorted(sites + new, key=lambda x: x.file_offset)
        result = _attempt(image, sites, learnt, areas, req, certain_only)
    return result  # pragma: no cover - the loop returns


@dataclass
class _Learnt:
    """What scans of earlier outputs taught: moved stubs not found in their slots (refused),
    stubs the input's scan missed (found), and kept sites whose boundary the output's scan no
    longer proves (lost: moved too, so the slot area's evidence covers them)."""

    refused: dict[int, str] = field(default_factory=dict)
    found: set[int] = field(default_factory=set)
    lost: set[int] = field(default_factory=set)


def _attempt(image: Image, sites: list[Site], learnt: _Learnt, areas: dict[str, images.SlotArea | images.NoArea],
             req: Requirements, certain_only: bool) -> PadResult:
    """One layout of every site, with what earlier rounds learnt."""
    regions = {r.name: r for r in image.code_regions}
    frozen = images.unmodifiable(image)
    fixed: dict[int, SiteAction] = {}  # decided without layout: kept and most refusals
    candidates: list[Site] = []
    for s in sites:
        before = syncs_at(s.shape, s.bitness, s.address, req)
        if before == 0 and s.file_offset not in learnt.lost:
            fixed[s.file_offset] = SiteAction(s, KEPT, f"{NO_SYNC_NEEDED}: {_plan_text(s, s.address, req)}",
                                              s.address, s.region, s.shape, 0, 0)
        else:
            candidates.append(s)
    refs = references_into(image, candidates, sites)
    movable: list[Site] = []
    for s in candidates:
        before = syncs_at(s.shape, s.bitness, s.address, req)
        why = (f"{UNMODIFIABLE}: {frozen}" if frozen else "") or learnt.refused.get(s.file_offset) \
            or _refusal(s, refs, regions, req, certain_only)
        if why:
            fixed[s.file_offset] = _not_moved(s, why, before)
            continue
        movable.append(s)
    actions, patches, payloads, uses = _layout(image, movable, areas, req, learnt.lost)
    data, warnings = images.write(image, patches, payloads, areas)
    actions.update(fixed)
    out = []
    for s in sites:
        a = actions[s.file_offset]
        if s.file_offset in learnt.found:
            a = replace(a, reason=a.reason + "; found by the scan of the padded output (the input's scan missed it)")
        out.append(a)
    return PadResult(image, data, req, out, uses, warnings)


def _not_moved(s: Site, why: str, before: int | None) -> SiteAction:
    """A site left where it is: refused, or, for a site that needs no sync but that the scan of
    an output lost (see _Learnt) and that cannot move, kept (the scan's warning stays)."""
    if before == 0:
        return SiteAction(s, KEPT, f"{NO_SYNC_NEEDED}: kept, but {why}", s.address, s.region, s.shape, 0, 0)
    return SiteAction(s, REFUSED, why, s.address, s.region, s.shape, before, before)


def _plan_text(s: Site, address: int, req: Requirements, shape: str | None = None) -> str:
    sh = shape or s.shape
    syncs = syncs_at(sh, s.bitness, address, req)
    what = "no proven plan" if syncs is None else f"{syncs} sync{'s' if syncs != 1 else ''}"
    return f"shape {sh} at {address:#x} under {req.model}: {what}"


def _refusal(s: Site, refs: dict[int, list[Reference]], regions: dict[str, Region], req: Requirements,
             certain_only: bool) -> str:
    if not forms_for(s.shape, s.bitness, req):
        return (f"{NO_FINAL_FORM}: no final form fits a {s.length}-byte {s.shape} stub in {s.bitness}-bit code "
                "(a far call with a 32-bit frame or a near call needs more bytes), so no plan patches it anywhere")
    got = refs.get(s.file_offset)
    if got:
        r = got[0]
        more = f" (and {len(got) - 1} more)" if len(got) > 1 else ""
        code = RELOCATED if r.kind == "relocation" else BRANCH_TARGET
        where = f"{r.target:#x} (+{r.target - s.address})"
        return f"{code}: {r.detail} refers to {where} inside the stub{more}"
    region = regions.get(s.region)
    if region is not None and s.file_offset + s.length >= region.end_offset:
        return f"{REGION_END}: the stub ends its code region, so there is no instruction to jump back to"
    if certain_only and s.confidence != CERTAIN:
        return f"{NOT_CERTAIN}: the site rests on heuristic evidence ({s.evidence}) and only certain sites are rewritten"
    return ""


def _layout(image: Image, movable: list[Site], areas: dict[str, images.SlotArea | images.NoArea],
            req: Requirements, lost: set[int]) -> tuple[dict[int, SiteAction], dict[int, bytes], dict[str, bytes], list[AreaUse]]:
    """Reshape or place a slot for every movable site (in file order); the patches to the
    original bytes, each area's slot bytes, and the actions."""
    data = image.data
    actions: dict[int, SiteAction] = {}
    patches: dict[int, bytes] = {}
    wanted: list[tuple[Site, images.SlotArea]] = []
    for s in movable:
        before = syncs_at(s.shape, s.bitness, s.address, req)

        def refuse(why: str, s: Site = s, before: int | None = before) -> None:
            actions[s.file_offset] = _not_moved(s, why, before)

        stub = bytes(data[s.file_offset : s.file_offset + s.length])
        after = bytes(data[s.file_offset + s.length : s.file_offset + s.length + 8])
        # A lost site needs the slot directory's evidence, not a new layout in place.
        done = None if s.file_offset in lost else _reshape(s, stub, after, before, req)
        if done is not None:
            patches[s.file_offset], actions[s.file_offset] = done
            continue
        if next_sync_free(s.shape, s.bitness, 0, req) is None:
            refuse(f"{NO_SYNC_FREE_ADDRESS}: under {req.model} no address gives shape {s.shape} "
                   "a plan without a sync")
            continue
        jl = jmp_length(s.bitness)
        if s.length < jl:
            refuse(f"{TOO_SHORT}: the {s.length}-byte stub cannot hold the {jl}-byte jmp to a slot")
            continue
        area = areas.get(s.region)
        if not isinstance(area, images.SlotArea):
            reason = area.reason if area is not None else f"the {image.format} format has no place for slots"
            refuse(f"{NO_SLOT_AREA}: {reason}")
            continue
        wanted.append((s, area))
    # Slots, area by area, in file order, after the area's directory (see _directory).
    cursors: dict[str, int] = {}
    payloads: dict[str, bytearray] = {}
    placed: dict[str, list[tuple[Site, int]]] = {}
    area_of: dict[str, images.SlotArea] = {}
    for area in {a.key: a for _, a in wanted}.values():
        n = sum(1 for _, a in wanted if a.key == area.key)
        cursors[area.key] = area.address + _directory_size(n, area.bitness)
        payloads[area.key] = bytearray()
        placed[area.key] = []
        area_of[area.key] = area
    for s, area in wanted:
        before = syncs_at(s.shape, s.bitness, s.address, req)
        jl = jmp_length(s.bitness)
        cur = cursors[area.key]
        # At least one nop before every slot's stub: a stub right after a jump or fill is what a
        # template kept in data looks like, so the scanner's heuristics would not take it.
        x = next_sync_free(s.shape, s.bitness, cur + 1, req)
        assert x is not None
        end = x + s.length + jl
        if end > area.limit:
            actions[s.file_offset] = _not_moved(s, f"{SEGMENT_OVERFLOW}: a slot at {x:#x} would end at {end:#x}, "
                                                   f"past {area.limit:#x} ({area.limit_why})", before)
            continue
        buf = payloads[area.key]
        buf += bytes([images.SLOT_FILL]) * (x - cur)
        buf += data[s.file_offset : s.file_offset + s.length]
        buf += encode_jmp(x + s.length, s.address + s.length, s.bitness)
        cursors[area.key] = end
        placed[area.key].append((s, x))
        if before == 0 and s.file_offset in lost:
            why = (f"{RESCAN_LOST}: the scan of the padded output no longer proves this site's boundary (the code "
                   f"before it now jumps to a slot), so it moved to a slot at {x:#x} too, where the slot "
                   "directory proves it")
        else:
            why = f"{SYNCS_NEEDED}: {_plan_text(s, s.address, req)}; moved to a slot at {x:#x} where it needs none"
        actions[s.file_offset] = SiteAction(s, MOVED, why, x, area.region, s.shape, before,
                                            syncs_at(s.shape, s.bitness, x, req))
    out: dict[str, bytes] = {}
    uses = []
    for key, body in sorted(payloads.items()):
        area = area_of[key]
        slots = placed[key]
        if not slots:
            continue
        head = _directory(area, slots, cursors[key] - len(body))
        lead = next((s for s, _ in slots if s.confidence == CERTAIN), slots[0][0])
        for s, x in slots:
            jl = jmp_length(s.bitness)
            to = area.address if s is lead else x
            patches[s.file_offset] = encode_jmp(s.address, to, s.bitness) + bytes([images.CODE_FILL]) * (s.length - jl)
        out[key] = head + bytes(body)
        uses.append(AreaUse(area.region, area.address, len(out[key]), len(slots)))
    return actions, patches, out, uses


def _directory_size(n: int, bitness: int) -> int:
    """Bytes of the directory of ``n`` slots: a ``jz``/``jnz`` pair and a call for each other
    slot."""
    jcc, call = (6, 5) if bitness == 32 else (4, 3)
    return 2 * jcc + call * max(0, n - 1) if n else 0


def _directory(area: images.SlotArea, slots: list[tuple[Site, int]], end: int) -> bytes:
    """The slot directory at the start of a slot area, ``end - area.address`` bytes.

    The scanner reaches code only from boundaries it can prove, and a slot is reached only by
    the ``jmp`` at the old site (from another section, in a PE). So one moved site (the first
    ``certain`` one) jumps to the directory instead of its slot: ``jz slot; jnz slot`` (one of
    the two is always taken, and neither changes a flag), then a direct ``call`` to every other
    slot, never executed; ``nop`` fill up to the first slot. Decoding from the directory proves
    every slot's first byte, with the evidence of the site that jumps there (a PE section's
    start is a boundary of its own). Offsets in 16-bit code are 16-bit.
    """
    bits = area.bitness
    lead_x = next(x for s, x in slots if s.confidence == CERTAIN) if any(
        s.confidence == CERTAIN for s, _ in slots) else slots[0][1]
    out = bytearray()

    def rel(at: int, n: int, target: int) -> bytes:
        if bits == 32:
            return ((target - (at + n)) & 0xFFFFFFFF).to_bytes(4, "little")
        return ((target - (at + n)) & 0xFFFF).to_bytes(2, "little")

    for op in (0x84, 0x85):  # jz, jnz (near)
        n = 6 if bits == 32 else 4
        out += bytes((0x0F, op)) + rel(area.address + len(out), n, lead_x)
    for _, x in slots:
        if x == lead_x:
            continue
        n = 5 if bits == 32 else 3
        out += b"\xe8" + rel(area.address + len(out), n, x)
    size = end - area.address
    assert len(out) <= size
    out += bytes([images.SLOT_FILL]) * (size - len(out))
    return bytes(out)


def _reshape(s: Site, stub: bytes, after: bytes, before: int | None,
             req: Requirements) -> tuple[bytes, SiteAction] | None:
    """The first in-place layout (smallest shift) whose plan needs no sync and whose effects
    are the stub's own, or None."""
    src = shape_by_id(s.shape)
    for r in reshapes(s.shape):
        if not all(same_effects(r, f, s.bitness) for f in forms_for(s.shape, s.bitness, req)):
            continue
        # Where the bytes after the site continue the nops, the scanner reads the longer shape.
        n = len(src.suffix)
        seen = r.source if after[: r.shift] == src.suffix[: r.shift] and len(after) >= r.shift else r.core
        addr = s.address + r.shift
        forms_new = forms_for(seen, s.bitness, req)
        if forms_new != forms_for(s.shape, s.bitness, req) and not all(
                same_effects(r, f, s.bitness) for f in forms_new):
            continue
        if syncs_at(seen, s.bitness, addr, req) != 0:
            continue
        new = r.apply(stub)
        assert len(new) == len(stub) and n >= r.shift
        return new, SiteAction(
            s, RESHAPED, f"{SYNCS_NEEDED}: {_plan_text(s, s.address, req)}; the far call moved {r.shift} "
                         f"byte{'s' if r.shift > 1 else ''} into the stub's own nop padding ({seen} at {addr:#x}) "
                         "where it needs none", addr, s.region, seen, before, 0)
    return None


def _verify(result: PadResult, sites: list[Site], gates: GateDB | None,
            jobs: int | None) -> tuple[dict[int, str], list[Site], set[int]]:
    """Scan the output. Returns the moved or reshaped sites it does not find where they were put
    (file offset -> refusal reason) and the stubs it finds that the input's scan missed, in
    input coordinates (only where their bytes are unchanged). Other disagreements become
    warnings."""
    image = result.image
    out_img = images.reopen(image, result.data)
    res = scan(out_img, gates, jobs=jobs)
    result.rescan = res
    found = {(s.region, s.address): s for s in res.sites}
    expected: set[tuple[str, int]] = set()
    failed: dict[int, str] = {}
    lost: set[int] = set()
    for a in result.actions:
        s = a.site
        key = (a.new_region, a.new_address)
        expected.add(key)
        got = found.get(key)
        if got is not None and got.gate == s.gate and got.selector == s.selector and got.shape == a.new_shape:
            continue
        what = f"shape {got.shape} gate {got.gate}" if got is not None else "no site"
        if a.action in (MOVED, RESHAPED):
            failed[s.file_offset] = (f"{RESCAN_FAILED}: the scan of the output finds {what} at {a.new_address:#x} "
                                     f"in {a.new_region}, not the {a.action} stub")
        elif a.action == KEPT and got is None and a.reason_code == NO_SYNC_NEEDED and ": kept, but" not in a.reason:
            lost.add(s.file_offset)
        else:
            result.warnings.append(f"the scan of the output finds {what} at {a.new_address:#x} in {a.new_region}, "
                                   f"where the {a.action} site (shape {s.shape}, gate {s.gate}) is")
    regions_in = {r.name: r for r in image.code_regions}
    spans = sorted((s.file_offset, s.file_offset + s.length) for s in sites)
    new: list[Site] = []
    for key, s in sorted(found.items()):
        if key in expected:
            continue
        rin = regions_in.get(s.region)
        off = None if rin is None else rin.file_offset + (s.address - rin.address)
        if rin is None or off is None or not (rin.file_offset <= off and off + s.length <= rin.end_offset) \
                or image.data[off : off + s.length] != result.data[s.file_offset : s.file_offset + s.length] \
                or _overlaps(spans, off, off + s.length):
            result.warnings.append(f"the scan of the output finds a new site at {s.address:#x} in {s.region} "
                                   f"(shape {s.shape}, gate {s.gate})")
            continue
        new.append(replace(s, file_offset=off))
    return failed, new, lost


def _overlaps(spans: list[tuple[int, int]], lo: int, hi: int) -> bool:
    import bisect

    i = bisect.bisect_right(spans, (hi, 0)) - 1
    return i >= 0 and spans[i][1] > lo


__all__ = [
    "ACTIONS", "KEPT", "MOVED", "REFUSALS", "REFUSED", "RESHAPED", "AreaUse", "PadResult", "SiteAction",
    "encode_jmp", "jmp_length", "pad",
]
