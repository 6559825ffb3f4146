"""Rendering a pad result: the JSON contract, a text report for people, the address map.

All deterministic: the same result gives byte-identical output.
"""

from __future__ import annotations

import json

from .core import KEPT, MOVED, REFUSED, RESHAPED, PadResult

MAP_HEADER = (
    "# gatelink pad address map: one line per stub whose address changed\n"
    "# old_address new_address length action old_region new_region\n"
)


def pad_json(result: PadResult) -> str:
    return json.dumps(result.to_json(), indent=2) + "\n"


def pad_map(result: PadResult) -> str:
    """The address map (docs/pad.md, "The map file"): for every moved or reshaped stub, its old
    and new address, so debuggers and symbol files can follow it."""
    lines = [MAP_HEADER]
    for a, old in result.address_map():
        lines.append(f"{old:#010x} {a.new_address:#010x} {a.site.length} {a.action} {a.site.region} {a.new_region}\n")
    return "".join(lines)


def pad_text(result: PadResult, output: str | None, all_sites: bool = False) -> str:
    s = result.summary()
    img = result.image
    target = f" -> {output}" if output else " (dry run: nothing written)"
    forms = ", ".join(result.requirements.forms)
    out = [
        f"{img.path} ({img.format}){target}",
        f"model {result.model}, forms {forms}, policy {result.requirements.policy.name}",
        f"{s['sites']} sites: {s[KEPT]} kept, {s[RESHAPED]} reshaped, {s[MOVED]} moved, {s[REFUSED]} refused",
        f"sites needing a sync: {s['needing_sync_before']} before, {s['needing_sync_after']} after",
    ]
    for area in result.areas:
        out.append(f"slots in {area.region} at {area.address:#x}: {area.size} bytes, {area.slots} stubs")
    out.append(f"file {s['input_size']} -> {s['output_size']} bytes ({result.bytes_added:+d})")
    refused = s["refused_by_reason"]
    if refused:
        assert isinstance(refused, dict)
        out.append("refused: " + ", ".join(f"{k} {v}" for k, v in refused.items()))
    for w in result.warnings:
        out.append(f"warning: {w}")
    rows = [a for a in result.actions if all_sites or a.action != KEPT]
    if rows:
        out.append("")
        out.append(f"{'address':>10}  {'shape':5} {'gate':>6}  {'action':8}  {'new address':>11}  {'syncs':>6}  reason")
        for a in rows:
            site = a.site
            syncs = "-" if a.syncs_before is None and a.syncs_after is None else \
                f"{_n(a.syncs_before)}->{_n(a.syncs_after)}"
            name = f" {site.gate_name}" if site.gate_name else ""
            new = f"{a.new_address:#x}" if a.action in (MOVED, RESHAPED) else ""
            out.append(f"{site.address:#10x}  {site.shape:5} {site.gate:>6}  {a.action:8}  {new:>11}  {syncs:>6}  "
                       f"{a.reason}{name and ' [' + name.strip() + ']'}")
    return "\n".join(out) + "\n"


def _n(v: int | None) -> str:
    return "-" if v is None else str(v)


__all__ = ["MAP_HEADER", "pad_json", "pad_map", "pad_text"]
