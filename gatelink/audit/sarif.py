"""The audit as SARIF 2.1.0, for code-scanning tools (``docs/audit.md``, "SARIF").

Built with ``sarif-om`` (the SARIF object model) and serialised by walking its attrs fields.
One run for all inputs; each input is an artifact (with its SHA-256). One rule per verdict and
per near-miss reason, all always listed so rule indices never move. Each site and near miss is
one result located in the binary: ``region.byteOffset``/``byteLength`` (file offset and length)
and ``address.absoluteAddress`` (load address), with the code region as the address's parent
in ``run.addresses``. Patchable sites are results of kind ``pass`` (level ``none``): code
scanning shows them as passed checks, and the SARIF file stays a complete record of the sites.
``partialFingerprints`` identify a finding by region, gate and occurrence, not by address, so
it keeps its identity when a rebuild moves code.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import PurePath
from urllib.parse import quote

import attr
import sarif_om as om  # type: ignore[import-untyped]

from .. import __version__
from ..scan import REASONS
from . import AuditReport
from .model import (
    NEEDS_PAD,
    NEEDS_SYNC,
    NO_PLAN,
    PATCHABLE,
    UNKNOWN_GATE,
    VERDICT_HELP,
    VERDICTS,
    reason_help,
)

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"

# Default level of each rule: what a code-scanning tool shows it as.
VERDICT_LEVEL = {UNKNOWN_GATE: "warning", NO_PLAN: "error", NEEDS_SYNC: "warning", NEEDS_PAD: "note",
                 PATCHABLE: "none"}
# Near misses that may hide a real stub or a toolchain mistake warn; the rest are notes.
WARNING_REASONS = frozenset({"no-boundary-evidence", "wrong-bitness", "selector-out-of-range", "unknown-form",
                             "ambiguous-start", "not-a-stub"})

VERDICT_NAMES = {UNKNOWN_GATE: "UnknownGate", NO_PLAN: "NoPlan", NEEDS_SYNC: "NeedsSync", NEEDS_PAD: "NeedsPad",
                 PATCHABLE: "Patchable"}


def rule_id(kind: str, name: str) -> str:
    """``gatelink/site/needs-sync``, ``gatelink/near-miss/wrong-bitness``."""
    return f"gatelink/{kind}/{name}"


def _camel(name: str) -> str:
    return "".join(p[:1].upper() + p[1:] for p in name.replace("64-bit", "Bit64").split("-"))


def _rules(reasons: Iterable[str]) -> list[om.ReportingDescriptor]:
    out = []
    for v in VERDICTS:
        text = VERDICT_HELP[v]
        out.append(om.ReportingDescriptor(
            id=rule_id("site", v), name=VERDICT_NAMES[v],
            short_description=om.MultiformatMessageString(text=f"Gate site verdict: {v}"),
            full_description=om.MultiformatMessageString(text=text[:1].upper() + text[1:] + "."),
            help=om.MultiformatMessageString(text=f"A gate stub whose audit verdict is {v}: {text}. See "
                                                  "docs/audit.md in gatelink."),
            default_configuration=om.ReportingConfiguration(level=VERDICT_LEVEL[v]),
            properties=_bag(tags=["gatelink", "gate-site"]),
        ))
    for r in reasons:
        text = reason_help(r)
        out.append(om.ReportingDescriptor(
            id=rule_id("near-miss", r), name=f"NearMiss{_camel(r)}",
            short_description=om.MultiformatMessageString(text=f"Stub-like bytes that are not a site: {r}"),
            full_description=om.MultiformatMessageString(text=text[:1].upper() + text[1:] + "."),
            help=om.MultiformatMessageString(text=f"Bytes that look like a gate stub but are not one ({r}): {text}. "
                                                  "See docs/scanning.md in gatelink."),
            default_configuration=om.ReportingConfiguration(level="warning" if r in WARNING_REASONS else "note"),
            properties=_bag(tags=["gatelink", "near-miss"]),
        ))
    return out


def _bag(**values: object) -> om.PropertyBag:
    """A property bag with arbitrary properties (sarif-om's PropertyBag declares only tags)."""
    bag = om.PropertyBag(tags=values.pop("tags", None))
    for k, v in values.items():
        setattr(bag, k, v)
    return bag


def artifact_uri(path: str) -> str:
    """The path as the caller gave it, as a URI reference (absolute paths as file: URIs)."""
    p = PurePath(path)
    text = quote(p.as_posix(), safe="/:")
    return "file://" + text if p.is_absolute() else text


def _near_length(shape: str | None) -> int | None:
    """The length of the shape near-miss bytes resemble (the shortest of a family)."""
    from ..catalog import SHAPES_BY_ID

    lengths = [SHAPES_BY_ID[p].length for p in (shape or "").split("/") if p in SHAPES_BY_ID]
    return min(lengths) if lengths else None


def _fingerprint(*parts: object) -> str:
    return hashlib.sha256("\0".join(str(p) for p in parts).encode()).hexdigest()[:32]


def sarif_log(report: AuditReport) -> om.SarifLog:
    """The report as a sarif-om object tree."""
    reasons = list(dict.fromkeys([*REASONS, *sorted({n.reason for a in report.audits for n in a.near_misses})]))
    rules = _rules(reasons)
    index = {r.id: i for i, r in enumerate(rules)}
    artifacts: list[om.Artifact] = []
    addresses: list[om.Address] = []
    results: list[om.Result] = []
    for ai, x in enumerate(report.audits):
        img = x.image
        uri = artifact_uri(img.path)
        artifacts.append(om.Artifact(
            location=om.ArtifactLocation(uri=uri), length=len(img.data), roles=["analysisTarget"],
            mime_type="application/octet-stream", hashes={"sha-256": hashlib.sha256(img.data).hexdigest()},
            properties=_bag(format=img.format, summary=x.summary()),
        ))
        region_addr: dict[str, int] = {}
        for r in img.regions:
            region_addr[r.name] = len(addresses)
            addresses.append(om.Address(absolute_address=r.address, length=r.size, name=r.name,
                                        kind="section" if img.format.startswith("pe") else "segment",
                                        fully_qualified_name=f"{img.path}!{r.name}"))

        def location(file_offset: int, length: int | None, address: int | None, region: str,
                     uri: str = uri, ai: int = ai, region_addr: dict[str, int] = region_addr) -> om.Location:
            addr = None
            if address is not None:
                parent = region_addr.get(region, -1)
                addr = om.Address(absolute_address=address, kind="instruction", length=length, parent_index=parent,
                                  offset_from_parent=(address - addresses[parent].absolute_address) if parent >= 0 else None)
            return om.Location(physical_location=om.PhysicalLocation(
                artifact_location=om.ArtifactLocation(uri=uri, index=ai),
                region=om.Region(byte_offset=file_offset, byte_length=length if length else 1),
                address=addr,
            ))

        seen: dict[tuple[object, ...], int] = {}
        for a in x.sites:
            s = a.site
            rid = rule_id("site", a.verdict)
            key = ("site", s.region, s.gate_kind, s.gate, s.shape)
            seen[key] = seen.get(key, 0) + 1
            name = s.gate_name or "unknown"
            what = a.plan if a.plan else "no plan"
            msg = (f"{a.verdict}: {s.gate_kind or '?'} gate {s.gate} ({name}), shape {s.shape} at {s.address:#x} "
                   f"(file offset {s.file_offset:#x}), align {a.align64}; plan {what}"
                   + (f"; {a.detail}" if a.detail else ""))
            results.append(om.Result(
                rule_id=rid, rule_index=index[rid], message=om.Message(text=msg),
                level=VERDICT_LEVEL[a.verdict], kind="pass" if a.verdict == PATCHABLE else "fail",
                locations=[location(s.file_offset, s.length, s.address, s.region)],
                partial_fingerprints={"gatelinkSite/v1": _fingerprint(*key, seen[key])},
                properties=_bag(
                    gate=s.gate, gate_kind=s.gate_kind, gate_name=s.gate_name, shape=s.shape, confidence=s.confidence,
                    align64=a.align64, changed=list(a.changed), chunk_crossings=list(a.chunk_crossings),
                    line_crossings=list(a.line_crossings), plan=a.plan, syncs=a.syncs, writes=a.writes,
                    eager=a.eager, plan_status=a.plan_status, pad_shift=a.pad_shift,
                ),
            ))
        for n in x.near_misses:
            rid = rule_id("near-miss", n.reason)
            nkey = ("near-miss", n.region, n.reason, n.shape)
            seen[nkey] = seen.get(nkey, 0) + 1
            results.append(om.Result(
                rule_id=rid, rule_index=index[rid],
                message=om.Message(text=f"{n.reason}: {n.shape or 'stub-like'} bytes at file offset {n.file_offset:#x}"
                                        + (f" (address {n.address:#x})" if n.address is not None else "")
                                        + f": {n.detail}"),
                level="warning" if n.reason in WARNING_REASONS else "note", kind="fail",
                locations=[location(n.file_offset, _near_length(n.shape), n.address, n.region)],
                partial_fingerprints={"gatelinkNearMiss/v1": _fingerprint(*nkey, seen[nkey])},
                properties=_bag(reason=n.reason, shape=n.shape),
            ))
    notes = [om.Notification(message=om.Message(text=f"{x.image.path}: {w}"), level="warning",
                             locations=[om.Location(physical_location=om.PhysicalLocation(
                                 artifact_location=om.ArtifactLocation(uri=artifact_uri(x.image.path), index=i)))])
             for i, x in enumerate(report.audits) for w in x.warnings]
    notes += [om.Notification(message=om.Message(text=f"{f.path}: {f.problem}"), level="error",
                              locations=[om.Location(physical_location=om.PhysicalLocation(
                                  artifact_location=om.ArtifactLocation(uri=artifact_uri(f.path))))])
              for f in report.failures]
    run = om.Run(
        tool=om.Tool(driver=om.ToolComponent(name="gatelink", version=__version__, semantic_version=__version__,
                                             rules=rules)),
        artifacts=artifacts, addresses=addresses, results=results,
        invocations=[om.Invocation(execution_successful=not report.failures,
                                   tool_execution_notifications=notes or None)],
        column_kind="unicodeCodePoints",
        properties=_bag(settings=report.settings(), gate_database=report.gates.describe(), totals=report.totals()),
    )
    return om.SarifLog(version=SARIF_VERSION, schema_uri=SARIF_SCHEMA, runs=[run])


# Properties written even when they equal the object model's default (explicit is clearer for
# readers that do not apply the rule's default configuration).
_ALWAYS = frozenset({"level", "kind"})


def to_plain(obj: object) -> object:
    """A sarif-om object tree as JSON-ready dicts and lists: schema property names, defaults and
    Nones left out (as sarif-om's own serialiser does), extra attributes of a property bag kept."""
    if attr.has(type(obj)):
        out: dict[str, object] = {}
        names = set()
        for f in attr.fields(type(obj)):  # type: ignore[arg-type]
            names.add(f.name)
            v = getattr(obj, f.name)
            if v is None:
                continue
            default = f.default.factory() if isinstance(f.default, attr.Factory) else f.default  # type: ignore[arg-type]
            if f.name not in _ALWAYS and default is not attr.NOTHING and v == default and type(v) is type(default):
                continue
            out[f.metadata.get("schema_property_name", f.name)] = to_plain(v)
        for k, v in vars(obj).items():
            if k not in names:
                out[k] = to_plain(v)
        return out
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def render_sarif(report: AuditReport) -> str:
    return json.dumps(to_plain(sarif_log(report)), indent=1, ensure_ascii=False) + "\n"
