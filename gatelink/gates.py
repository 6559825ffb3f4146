"""Gate databases: gate numbers to names, per kind (OS, user, server).

The bundled list (``data/rdos-gates.csv``) is public fact from the RDOS and Open Watcom sources:
793 user gates (rdos-user ``kernel/rdu.h``, Dec 2025), 681 OS gates (OW ``rdk.h``) and 26 uACPI
server gates. Gate numbers are not stable across RDOS versions, so every lookup result carries
the database it came from, and other lists can be loaded:

* ``os.def`` / ``user.def`` from the kernel sources: ``name_nr = N`` lines, plus
  ``osgate_entries = N`` / ``usergate_entries = N``;
* Open Watcom style headers: ``#define osgate_<name> N`` and ``#define usergate_<name> 0x...``;
* CSV files in the bundled format (``name,number,kind,selector,source``).

A loaded file replaces the bundled list for the kinds it defines; other kinds keep the bundled
names. Selector 2 names OS gates, 1 and 3 user gates, 4 server gates.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import os
import re
from dataclasses import dataclass, field
from importlib import resources

from .catalog import GateKind
from .errors import InputError
from .fsutil import read_input

MAX_GATE_FILE = 16 << 20

_KIND_WORDS = {
    "osgate": GateKind.OS, "os": GateKind.OS,
    "usergate": GateKind.USER, "user": GateKind.USER,
    "servgate": GateKind.SERVER, "server": GateKind.SERVER,
}


@dataclass(frozen=True)
class Gate:
    name: str
    number: int
    kind: GateKind
    source: str


@dataclass(frozen=True)
class Source:
    """Where a set of gate names came from, as the report names it."""

    path: str  # "bundled" for the packaged list
    version: str  # e.g. "sha256:1a2b3c4d5e6f"
    kinds: tuple[GateKind, ...]
    count: int
    detail: str = ""

    def describe(self) -> str:
        kinds = "/".join(k.value for k in self.kinds)
        return f"{self.path} ({self.count} {kinds} gates, {self.version}{', ' + self.detail if self.detail else ''})"


@dataclass
class GateDB:
    """Names per (kind, number); look them up with :meth:`name`."""

    gates: dict[tuple[GateKind, int], Gate] = field(default_factory=dict)
    sources: list[Source] = field(default_factory=list)
    kind_source: dict[GateKind, Source] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def lookup(self, kind: GateKind | None, number: int) -> Gate | None:
        if kind is None:
            return None
        return self.gates.get((kind, number))

    def name(self, kind: GateKind | None, number: int) -> str | None:
        g = self.lookup(kind, number)
        return g.name if g else None

    def __len__(self) -> int:
        return len(self.gates)

    def describe(self) -> dict[str, object]:
        """Machine-readable summary for reports: which list, which version, per kind."""
        return {
            "sources": [
                {"path": s.path, "version": s.version, "kinds": [k.value for k in s.kinds], "count": s.count,
                 "detail": s.detail}
                for s in self.sources
            ],
            "by_kind": {k.value: self.kind_source[k].path for k in GateKind if k in self.kind_source},
            "warnings": list(self.warnings),
        }


def _digest(text: bytes) -> str:
    return "sha256:" + hashlib.sha256(text).hexdigest()[:12]


def bundled() -> GateDB:
    """The packaged RDOS gate list (a fresh database each call: callers may overlay it)."""
    gates, warnings, digest = _bundled_parsed()
    db = GateDB()
    db.warnings.extend(warnings)
    _install(db, list(gates), "bundled", digest, "rdos-user rdu.h Dec 2025, OW rdk.h, rdos-uACPI rdacpi.h")
    return db


@functools.cache
def _bundled_parsed() -> tuple[tuple[Gate, ...], tuple[str, ...], str]:
    """The packaged list parsed once per process (it never changes while we run)."""
    raw = resources.files("gatelink").joinpath("data/rdos-gates.csv").read_bytes()
    gates, warnings = _parse_csv("bundled rdos-gates.csv", raw.decode("utf-8"))
    return tuple(gates), tuple(warnings), _digest(raw)


def identity(paths: list[str] | tuple[str, ...] = ()) -> tuple[str, ...]:
    """``path:version`` of each source :func:`load` would use, as a table records them; for the
    bundled list alone without parsing it (``gatelink table --check`` answers from this)."""
    if not paths:
        raw = resources.files("gatelink").joinpath("data/rdos-gates.csv").read_bytes()
        return (f"bundled:{_digest(raw)}",)
    return tuple(f"{s.path}:{s.version}" for s in load(paths).sources)


def load(paths: list[str] | tuple[str, ...] = (), use_bundled: bool = True) -> GateDB:
    """The bundled list (unless ``use_bundled`` is False) overlaid with each file in ``paths``."""
    db = bundled() if use_bundled else GateDB()
    for p in paths:
        gates, digest, warnings = _load_file(p)
        db.warnings.extend(f"{p}: {w}" for w in warnings)
        kinds = {g.kind for g in gates}
        # A file replaces the names of the kinds it defines: mixing versions would mislabel gates.
        for key in [k for k in db.gates if k[0] in kinds]:
            del db.gates[key]
        _install(db, gates, p, digest, "")
    return db


def _install(db: GateDB, gates: list[Gate], path: str, digest: str, detail: str) -> None:
    kinds = tuple(k for k in GateKind if any(g.kind is k for g in gates))
    src = Source(path, digest, kinds, len(gates), detail)
    for g in gates:
        key = (g.kind, g.number)
        prev = db.gates.get(key)
        if prev is not None and prev.source == g.source and prev.name != g.name:
            db.warnings.append(f"{path}: {g.kind.value} gate {g.number} is both {prev.name} and {g.name}; using {prev.name}")
            continue
        db.gates[key] = g
    db.sources.append(src)
    for k in kinds:
        db.kind_source[k] = src


def _load_file(path: str) -> tuple[list[Gate], str, list[str]]:
    raw = read_input(path, "gate list", MAX_GATE_FILE)
    text = raw.decode("latin-1")
    base = os.path.basename(path).lower()
    if base.endswith(".csv"):
        gates, warnings = _parse_csv(path, text)
    elif base.endswith(".def"):
        gates, warnings = _parse_def(path, text, base)
    elif base.endswith((".h", ".hpp", ".inc")) or "#define" in text:
        gates, warnings = _parse_header(path, text)
    else:
        gates, warnings = _parse_def(path, text, base)
    if not gates:
        raise InputError(path, "no gate definitions found (expected name_nr = N lines, #define osgate_/usergate_ lines, or the CSV format)")
    return gates, _digest(raw), warnings


def _int(text: str) -> int | None:
    """Numbers as the kernel sources and headers write them: 12, 0x0C, 0Ch."""
    t = text.strip().rstrip("uUlL")
    try:
        if t.lower().startswith("0x"):
            return int(t, 16)
        if t.lower().endswith("h"):
            return int(t[:-1], 16)
        return int(t, 10)
    except ValueError:
        return None


def _parse_csv(path: str, text: str) -> tuple[list[Gate], list[str]]:
    gates = []
    warnings: list[str] = []
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or not {"name", "number", "kind"} <= set(reader.fieldnames):
        raise InputError(path, "CSV gate list needs the columns name,number,kind (and optionally selector,source)")
    for i, row in enumerate(reader, start=2):
        num = _int(row.get("number") or "")
        kind_word = (row.get("kind") or "").split("(")[0].strip().lower()
        kind = _KIND_WORDS.get(kind_word)
        if num is None or kind is None or not row.get("name"):
            warnings.append(f"line {i}: unreadable row skipped")
            continue
        gates.append(Gate(row["name"].strip(), num, kind, (row.get("source") or path).strip()))
    return gates, warnings


_DEF_LINE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)_nr\s*(?:=|EQU)\s*([0-9A-Fa-fxXhH]+)\s*(?:;.*)?$", re.IGNORECASE)
_ENTRIES = re.compile(r"^\s*(osgate|usergate)_entries\s*(?:=|EQU)", re.IGNORECASE | re.MULTILINE)


def _parse_def(path: str, text: str, base: str) -> tuple[list[Gate], list[str]]:
    m = _ENTRIES.search(text)
    if m:
        kind = GateKind.OS if m.group(1).lower() == "osgate" else GateKind.USER
    elif base.startswith("os"):
        kind = GateKind.OS
    elif base.startswith("user"):
        kind = GateKind.USER
    else:
        raise InputError(
            path,
            "cannot tell whether this .def lists OS or user gates: name it os.def or user.def, "
            "or include an osgate_entries / usergate_entries line",
        )
    gates = []
    warnings = []
    for i, line in enumerate(text.splitlines(), start=1):
        mm = _DEF_LINE.match(line)
        if not mm or mm.group(1).lower() in ("osgate", "usergate"):
            continue
        num = _int(mm.group(2))
        if num is None:
            warnings.append(f"line {i}: unreadable number {mm.group(2)!r}")
            continue
        gates.append(Gate(mm.group(1), num, kind, path))
    return gates, warnings


_DEFINE = re.compile(r"^\s*#\s*define\s+(osgate|usergate|servgate)_([A-Za-z0-9_]+)\s+\(?\s*([0-9A-Fa-fxX]+)[uUlL]*\s*\)?\s*(?://.*|/\*.*)?$", re.IGNORECASE)


def _parse_header(path: str, text: str) -> tuple[list[Gate], list[str]]:
    gates = []
    warnings = []
    for i, line in enumerate(text.splitlines(), start=1):
        m = _DEFINE.match(line)
        if not m:
            continue
        if m.group(2).lower() == "entries":  # table size, not a gate
            continue
        num = _int(m.group(3))
        if num is None:
            warnings.append(f"line {i}: unreadable number {m.group(3)!r}")
            continue
        gates.append(Gate(m.group(2), num, _KIND_WORDS[m.group(1).lower()], path))
    return gates, warnings
