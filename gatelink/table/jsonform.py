"""The JSON mirror of a patch table (``gatelink table --format json``): everything the binary
holds, readable by people and tests, and readable back into the identical binary table.

:func:`table_json` writes it (keys sorted, deterministic); :func:`read_json` reads it, checks it
with the binary reader's validation (it encodes the table and reads that back) and requires
every redundant field (encoded atoms, per-site syncs, indices, CRC) to agree, so a JSON table
and its binary are interchangeable.
"""

from __future__ import annotations

import json
import struct

from ..plan.model import (
    Domain,
    FetchModel,
    Policy,
    SelectorRule,
    atoms_text,
    is_var,
    var,
    var_field,
    var_index,
)
from .binary import (
    FIELD_BYTES,
    TableError,
    _progressions,
    encode_atom,
    read_table,
    write_table,
)
from .model import (
    FLAG_EAGER,
    FLAG_LAZY,
    FLAG_NEEDS_SYNC,
    FLAG_PADDED,
    BuildInfo,
    Identity,
    PatchTable,
    PlanStep,
    PlanTemplate,
    TableRegion,
    TableSite,
)

JSON_FORMAT = "gatelink-patch-table"
FLAG_NAMES = ((FLAG_EAGER, "eager"), (FLAG_LAZY, "lazy"), (FLAG_NEEDS_SYNC, "needs-sync"), (FLAG_PADDED, "padded"))


def _domain_json(d: Domain) -> dict[str, object]:
    out: dict[str, object] = {"size": d.size, "text": d.text}
    out["ranges"] = None if d.values is None else [list(r) for r in _progressions(d.values)]
    return out


def _policy_json(p: Policy) -> dict[str, object]:
    return {
        "name": p.name,
        "invalid_selectors": [list(r) for r in p.invalid_ranges],
        "invalid_rules": [r.to_json() for r in p.invalid_rules],
        "call_gates": [list(r) for r in p.call_gates],
        "int_vectors": list(p.int_vectors),
        "ud2": p.ud2,
        "int3": p.int3,
    }


def table_dict(table: PatchTable, binary: bytes | None = None) -> dict[str, object]:
    """The JSON mirror as a dict (``binary``: the table's encoding, if already made)."""
    b = binary if binary is not None else write_table(table)
    syncs = [p.syncs for p in table.plans]
    return {
        "format": JSON_FORMAT,
        "version": table.version,
        "total_size": len(b),
        "crc32": int.from_bytes(b[12:16], "little"),
        "image_format": table.image_format,
        "identity": {"file_size": table.identity.file_size, "code_sha256": table.identity.code_sha256.hex()},
        "model": {"chunk": table.model.chunk, "order": table.model.order.value},
        "forms": list(table.forms),
        "policy": _policy_json(table.policy),
        "domains": {f: {k: _domain_json(d) for k, d in sorted(table.domains_of(f).items())} for f in table.forms},
        "build": table.build.to_json(),
        "regions": [
            {"index": i, "name": r.name, "address": r.address, "file_offset": r.file_offset, "size": r.size,
             "bitness": r.bitness}
            for i, r in enumerate(table.regions)
        ],
        "sites": [
            {"index": i, "region": s.region, "address": s.address, "file_offset": s.file_offset,
             "length": s.length, "shape": s.shape, "gate": s.gate, "gate_kind": s.gate_kind,
             "selector": s.selector, "confidence": s.confidence,
             "flags": [n for bit, n in FLAG_NAMES if s.flags & bit], "original": s.original.hex(),
             "plans": list(s.plans), "syncs": [None if p is None else syncs[p] for p in s.plans]}
            for i, s in enumerate(table.sites)
        ],
        "plans": [
            {"index": i, "shape": p.shape, "form": p.form, "bitness": p.bitness, "length": p.length,
             "resume": p.resume, "rel_end": p.rel_end, "syncs": p.syncs, "writes": p.writes,
             "final": atoms_text(p.final), "final_encoded": [encode_atom(a) for a in p.final],
             "steps": [{"op": "sync"} if st.is_sync else
                       {"op": "write", "offset": st.offset, "width": st.width, "data": atoms_text(st.data),
                        "data_encoded": [encode_atom(a) for a in st.data]} for st in p.steps]}
            for i, p in enumerate(table.plans)
        ],
    }


def table_json(table: PatchTable, binary: bytes | None = None) -> str:
    """The JSON mirror as text: keys sorted, one-space indent, a final newline."""
    return json.dumps(table_dict(table, binary), sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def parse_atoms(text: str) -> tuple[int, ...]:
    """``"3E 67 9A off0 sel1"`` back into atoms (ValueError on anything else)."""
    out = []
    for tok in text.split():
        if len(tok) == 2 and all(c in "0123456789ABCDEFabcdef" for c in tok):
            out.append(int(tok, 16))
            continue
        f = tok.rstrip("0123456789")
        idx = tok[len(f):]
        if f not in FIELD_BYTES or not idx or int(idx) >= FIELD_BYTES[f]:
            raise ValueError(f"not an atom: {tok!r}")
        out.append(var(f, int(idx)))
    return tuple(out)


_ = (is_var, var_field, var_index)  # atoms_text's inverse uses var()


def _from_dict(d: dict, path: str) -> PatchTable:  # type: ignore[type-arg]
    if d.get("format") != JSON_FORMAT:
        raise TableError(path, f"not a gatelink JSON table (format is not {JSON_FORMAT!r})")
    if d.get("version") != 1:
        raise TableError(path, f"JSON table version {d.get('version')!r}, this gatelink reads 1")
    forms = tuple(d["forms"])
    pol = d["policy"]
    policy = Policy(
        tuple((int(a), int(b)) for a, b in pol["invalid_selectors"]),
        tuple(SelectorRule(**{k: int(v) for k, v in r.items()}) for r in pol["invalid_rules"]),
        tuple((int(a), int(b)) for a, b in pol["call_gates"]),
        tuple(int(v) for v in pol["int_vectors"]), bool(pol["ud2"]), bool(pol["int3"]), str(pol["name"]),
    )

    def dom(x: dict) -> Domain:  # type: ignore[type-arg]
        if x["ranges"] is None:
            return Domain(int(x["size"]), None, str(x["text"]))
        vals: list[int] = []
        for lo, hi, step in x["ranges"]:
            if int(step) < 1 or (int(hi) - int(lo)) // int(step) > 1 << 17:
                raise ValueError("bad range")
            vals.extend(range(int(lo), int(hi) + 1, int(step)))
        return Domain(int(x["size"]), frozenset(vals), str(x["text"]))

    fd = {f: {k: dom(v) for k, v in sorted(d["domains"][f].items())} for f in forms}
    plans = []
    for p in d["plans"]:
        steps = tuple(PlanStep(0, ()) if st["op"] == "sync" else PlanStep(int(st["offset"]), parse_atoms(st["data"]))
                      for st in p["steps"])
        plans.append(PlanTemplate(str(p["shape"]), str(p["form"]), int(p["bitness"]), parse_atoms(p["final"]),
                                  steps, int(p["resume"]), None if p["rel_end"] is None else int(p["rel_end"])))
    flag_bits = dict((n, b) for b, n in FLAG_NAMES)
    sites = []
    for s in d["sites"]:
        flags = 0
        for n in s["flags"]:
            flags |= flag_bits[n]
        sites.append(TableSite(int(s["region"]), int(s["address"]), int(s["file_offset"]), str(s["shape"]),
                               int(s["gate"]), s["gate_kind"], None if s["selector"] is None else int(s["selector"]),
                               str(s["confidence"]), flags, bytes.fromhex(s["original"]),
                               tuple(None if p is None else int(p) for p in s["plans"])))
    b = d["build"]
    return PatchTable(
        image_format=str(d["image_format"]),
        identity=Identity(int(d["identity"]["file_size"]), bytes.fromhex(d["identity"]["code_sha256"])),
        model=FetchModel.parse(f"{d['model']['chunk']},{d['model']['order']}"),
        policy=policy, domains=dict(fd[forms[0]]) if forms else {}, forms=forms,
        regions=[TableRegion(str(r["name"]), int(r["address"]), int(r["file_offset"]), int(r["size"]),
                             int(r["bitness"])) for r in d["regions"]],
        sites=sites, plans=plans, version=1, form_domains=fd,
        build=BuildInfo(str(b["gatelink"]), str(b["eager"]), tuple(str(g) for g in b["gates"]),
                        str(b["layout_sha256"]), str(b.get("stamp", ""))),
    )


def read_json(text: str | bytes, path: str = "<table.json>") -> PatchTable:
    """A table from its JSON mirror. Raises :class:`TableError` when the JSON is malformed,
    describes an invalid table, or any redundant field disagrees with the rest."""
    try:
        d = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise TableError(path, f"not JSON: {type(e).__name__}") from None
    if not isinstance(d, dict):
        raise TableError(path, "not a JSON object")
    try:
        table = _from_dict(d, path)
        binary = write_table(table)
    except TableError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError, RecursionError,
            struct.error) as e:
        raise TableError(path, f"malformed JSON table ({type(e).__name__}: {e})") from None
    table = read_table(binary, path)  # every check of the binary reader
    canon = {"sort_keys": True, "ensure_ascii": False}
    if json.dumps(table_dict(table, binary), **canon) != json.dumps(d, **canon):  # type: ignore[arg-type]
        raise TableError(path, "JSON table is inconsistent: a redundant field (encoded atoms, syncs, indices, "
                               "CRC, sizes) disagrees with the rest")
    return table


__all__ = ["JSON_FORMAT", "parse_atoms", "read_json", "table_dict", "table_json"]
