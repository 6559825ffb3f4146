"""The gate registry: where each gate resolves at run time (``docs/runtime.md``, "The registry").

A TOML file (read with the standard library's ``tomllib``) says, per gate kind (``os``,
``user``, ``server``) and gate number, which final form a site takes and its operands:

* ``far``: a far call ``selector:offset``;
* ``callgate``: a far call through a call gate ``selector`` (the CPU ignores the offset);
* ``near``: ``90 E8 rel32``, a near call to the absolute ``target`` (the SYSENTER form);
* ``pushcs``: ``push cs`` + a near call to ``target`` (the callee returns with a far return);
* ``undefined``: a far call to the kind's undefined-gate handler (``stc; retf32``).

Per-gate entries (by number, or by name through a gate database) take precedence over the
kind's default; a gate that neither covers resolves to ``undefined``, as the RDOS kernel does.
A kind's *fallback* (same keys as a default) serves the sites whose shape cannot take the form
their gate resolves to (a 5-byte UD2 stub holds no far call, only a near call to a thunk).
This module only reads and resolves; :mod:`.instance` checks the values against what a table's
plans were proven for.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field

from ..catalog import GateKind
from ..errors import InputError
from ..fsutil import read_input
from ..gates import GateDB

REGISTRY_VERSION = 1
MAX_REGISTRY_FILE = 4 << 20
KINDS = tuple(k.value for k in GateKind)  # "os", "user", "server"
FORMS = ("far", "callgate", "near", "pushcs", "undefined")
# The operand each form needs (besides "form"); the entry field a default's stride steps.
_NEEDS = {"far": ("selector", "offset"), "callgate": ("selector",), "near": ("target",), "pushcs": ("target",),
          "undefined": ()}
_STRIDE_FIELD = {"far": "offset", "callgate": "selector", "near": "target", "pushcs": "target"}
_LIMITS = {"selector": 0xFFFF, "offset": 0xFFFFFFFF, "target": 0xFFFFFFFF}
_NUMBER_KEY = re.compile(r"^(?:0[xX][0-9A-Fa-f]+|[0-9]+)$")
_NAME_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Target:
    """Where one gate resolves: a final form and its operands.

    ``selector``/``offset`` for ``far`` and ``undefined`` (the handler's far address),
    ``selector`` for ``callgate``, ``target`` (an absolute near address in the site's code
    segment) for ``near`` and ``pushcs``. ``source`` names the registry entry it came from
    (``gate.os.12``, ``default.user``, ``undefined``), for messages.
    """

    form: str
    selector: int | None = None
    offset: int | None = None
    target: int | None = None
    source: str = ""

    def describe(self) -> str:
        if self.form in ("far", "undefined"):
            return f"{self.form} {self.selector:#06x}:{self.offset:#010x}"
        if self.form == "callgate":
            return f"callgate {self.selector:#06x}"
        return f"{self.form} {self.target:#010x}"


@dataclass(frozen=True)
class _Entry:
    form: str
    values: dict[str, int]
    stride: int = 0
    max: int | None = None
    source: str = ""


@dataclass
class Registry:
    """A parsed gate registry. :meth:`resolve` gives the :class:`Target` of a gate."""

    path: str
    undefined: Target
    undefined_by_kind: dict[str, Target] = field(default_factory=dict)
    defaults: dict[str, _Entry] = field(default_factory=dict)
    fallbacks: dict[str, _Entry] = field(default_factory=dict)
    gates: dict[tuple[str, int], _Entry] = field(default_factory=dict)
    description: str = ""

    def undefined_for(self, kind: str | None) -> Target:
        """The undefined-gate handler for gates of ``kind`` (a far target)."""
        return self.undefined_by_kind.get(kind or "", self.undefined)

    def resolve(self, kind: str | None, number: int) -> Target:
        """Where gate ``number`` of ``kind`` resolves: its own entry, else the kind's default
        (for numbers up to its ``max``), else the undefined handler. A site whose kind is
        unknown (None) resolves to the undefined handler. Raises :class:`InputError` when a
        default's stride takes a value past its field's range."""
        if kind is not None:
            e = self.gates.get((kind, number))
            if e is None:
                d = self.defaults.get(kind)
                if d is not None and (d.max is None or number <= d.max):
                    e = d
            if e is not None:
                return self._target(e, kind, number)
        return self.undefined_for(kind)

    def resolve_fallback(self, kind: str | None, number: int) -> Target | None:
        """The kind's fallback target for gate ``number`` (for sites whose shape cannot take
        the form :meth:`resolve` gives), or None when the registry has none for it."""
        e = self.fallbacks.get(kind or "")
        if e is None or (e.max is not None and number > e.max):
            return None
        return self._target(e, kind or "", number)

    def _target(self, e: _Entry, kind: str, number: int) -> Target:
        if e.form == "undefined":
            u = self.undefined_for(kind)
            return Target("undefined", u.selector, u.offset, None, e.source)
        vals = dict(e.values)
        if e.stride:
            f = _STRIDE_FIELD[e.form]
            vals[f] = vals[f] + e.stride * number
            if vals[f] > _LIMITS[f]:
                raise InputError(self.path, f"{e.source}: {kind} gate {number}: {f} {vals[f]:#x} = base + stride * gate "
                                            f"is past {_LIMITS[f]:#x}")
        return Target(e.form, vals.get("selector"), vals.get("offset"), vals.get("target"), e.source)


def load_registry(path: str | os.PathLike[str], gates: GateDB | None = None) -> Registry:
    """Read and validate a registry file. ``gates`` resolves entries given by name (default:
    the bundled gate list). Raises :class:`InputError` naming the file for every problem."""
    p = os.fspath(path)
    raw = read_input(p, "registry", MAX_REGISTRY_FILE)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(p, f"not UTF-8 text (byte {e.start}); a registry is a TOML file") from None
    return parse_registry(text, p, gates)


def parse_registry(text: str, path: str = "<registry>", gates: GateDB | None = None) -> Registry:
    """Parse registry TOML ``text`` (``path`` only names it in errors)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InputError(path, f"not valid TOML: {_one_line(str(e))}") from None
    except RecursionError:
        raise InputError(path, "not valid TOML: nested too deeply") from None
    return _Parser(path, gates).parse(doc)


def _one_line(s: str) -> str:
    return " ".join(s.split())


class _Parser:
    def __init__(self, path: str, gates: GateDB | None) -> None:
        self.path = path
        self._gates = gates
        self._names: dict[str, dict[str, list[int]]] | None = None

    def fail(self, where: str, problem: str) -> InputError:
        return InputError(self.path, f"{where}: {problem}" if where else problem)

    def parse(self, doc: dict[str, object]) -> Registry:
        self._keys("", doc, {"version", "description", "undefined", "default", "fallback", "gate"})
        if "version" not in doc:
            raise self.fail("", f"no 'version' key: write version = {REGISTRY_VERSION} at the top")
        version = doc["version"]
        if type(version) is not int or version != REGISTRY_VERSION:
            raise self.fail("version", f"{version!r} is not a registry version this gatelink reads "
                                       f"(it reads {REGISTRY_VERSION})")
        desc = doc.get("description", "")
        if not isinstance(desc, str):
            raise self.fail("description", "must be a string")
        if "undefined" not in doc:
            raise self.fail("", "no [undefined] table: every registry names the undefined-gate handler "
                                "(selector and offset of its stc; retf32)")
        und = self._table("undefined", doc["undefined"])
        self._keys("undefined", und, {"selector", "offset", *KINDS})
        undefined = self._far_target("undefined", und)
        by_kind = {}
        for k in KINDS:
            if k in und:
                sub = self._table(f"undefined.{k}", und[k])
                self._keys(f"undefined.{k}", sub, {"selector", "offset"})
                by_kind[k] = self._far_target(f"undefined.{k}", sub)
        reg = Registry(self.path, undefined, by_kind, description=desc)
        for top, into in (("default", reg.defaults), ("fallback", reg.fallbacks)):
            if top in doc:
                tab = self._table(top, doc[top])
                self._keys(top, tab, set(KINDS))
                for k in KINDS:
                    if k in tab:
                        into[k] = self._entry(f"{top}.{k}", self._table(f"{top}.{k}", tab[k]), default=True)
        if "gate" in doc:
            gtab = self._table("gate", doc["gate"])
            self._keys("gate", gtab, set(KINDS))
            for k in KINDS:
                if k not in gtab:
                    continue
                entries = self._table(f"gate.{k}", gtab[k])
                for key in entries:
                    where = f"gate.{k}.{key}"
                    number = self._gate_number(k, key, where)
                    if (k, number) in reg.gates:
                        raise self.fail(where, f"{k} gate {number} is already given as "
                                               f"{reg.gates[(k, number)].source}")
                    reg.gates[(k, number)] = self._entry(where, self._table(where, entries[key]), default=False)
        return reg

    # -- pieces -------------------------------------------------------------------------------

    def _table(self, where: str, v: object) -> dict[str, object]:
        if not isinstance(v, dict):
            raise self.fail(where, f"must be a table ([{where}] or {where} = {{ ... }}), not {_tname(v)}")
        return v

    def _keys(self, where: str, d: dict[str, object], allowed: set[str]) -> None:
        extra = sorted(set(d) - allowed)
        if extra:
            place = f"[{where}]" if where else "the top level"
            raise self.fail(where, f"unknown key {extra[0]!r} in {place}; allowed: {', '.join(sorted(allowed))}")

    def _int(self, where: str, d: dict[str, object], key: str, limit: int) -> int:
        v = d[key]
        if type(v) is not int:  # bool is an int subclass: refuse it too
            raise self.fail(f"{where}.{key}", f"must be an integer (TOML allows 0x hex), not {_tname(v)}")
        if not 0 <= v <= limit:
            raise self.fail(f"{where}.{key}", f"{v} is outside 0..{limit:#x}")
        return v

    def _far_target(self, where: str, d: dict[str, object]) -> Target:
        for k in ("selector", "offset"):
            if k not in d:
                raise self.fail(where, f"needs '{k}' (the undefined-gate handler's far address)")
        return Target("undefined", self._int(where, d, "selector", 0xFFFF),
                      self._int(where, d, "offset", 0xFFFFFFFF), None, where)

    def _entry(self, where: str, d: dict[str, object], default: bool) -> _Entry:
        allowed = {"form", "selector", "offset", "target"} | ({"stride", "max"} if default else set())
        self._keys(where, d, allowed)
        if "form" not in d:
            raise self.fail(where, f"needs 'form' (one of {', '.join(FORMS)})")
        form = d["form"]
        if not isinstance(form, str) or form not in FORMS:
            raise self.fail(f"{where}.form", f"{form!r} is not a form; forms: {', '.join(FORMS)}")
        needs = _NEEDS[form]
        for k in ("selector", "offset", "target"):
            if k in d and k not in needs:
                raise self.fail(where, f"form {form} takes {', '.join(needs) or 'no operands'}, not '{k}'")
        for k in needs:
            if k not in d:
                raise self.fail(where, f"form {form} needs '{k}'")
        values = {k: self._int(where, d, k, _LIMITS[k]) for k in needs}
        stride = 0
        mx = None
        if default:
            if form != "undefined":
                if "stride" not in d:
                    raise self.fail(where, f"a default needs 'stride': gate N resolves to {_STRIDE_FIELD[form]} "
                                           f"+ stride * N (write stride = 0 to send every gate to one place)")
                stride = self._int(where, d, "stride", 0xFFFFFFFF)
            elif "stride" in d:
                raise self.fail(where, "form undefined takes no 'stride'")
            if "max" in d:
                mx = self._int(where, d, "max", 0xFFFFFFFF)
        return _Entry(form, values, stride, mx, where)

    def _gate_number(self, kind: str, key: str, where: str) -> int:
        if _NUMBER_KEY.match(key):
            n = int(key, 0)
            if n > 0xFFFFFFFF:
                raise self.fail(where, f"gate number {n:#x} is past 32 bits")
            return n
        if not _NAME_KEY.match(key):
            raise self.fail(where, "a gate is given by number (12, 0x0c) or by name (allocate_app_mem)")
        numbers = self._by_name(kind, key)
        if not numbers:
            src = self._db().kind_source.get(GateKind(kind))
            db = f"the {src.path} gate list" if src else "the gate list"
            raise self.fail(where, f"no {kind} gate named {key!r} in {db} (give the number instead, or "
                                   f"the gate list that defines it with --gates)")
        if len(numbers) > 1:
            raise self.fail(where, f"{kind} gate name {key!r} has several numbers ({', '.join(map(str, numbers))}); "
                                   f"give the number")
        return numbers[0]

    def _db(self) -> GateDB:
        if self._gates is None:
            from ..gates import bundled

            self._gates = bundled()
        return self._gates

    def _by_name(self, kind: str, name: str) -> list[int]:
        if self._names is None:
            names: dict[str, dict[str, list[int]]] = {k: {} for k in KINDS}
            for (k, n), g in sorted(self._db().gates.items(), key=lambda kv: (kv[0][0].value, kv[0][1])):
                names[k.value].setdefault(g.name, []).append(n)
            self._names = names
        exact = self._names[kind].get(name)
        if exact:
            return exact
        folded = [ns for nm, ns in self._names[kind].items() if nm.lower() == name.lower()]
        return folded[0] if len(folded) == 1 else [n for ns in folded for n in ns]


def _tname(v: object) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "a table"}.get(type(v), type(v).__name__)


__all__ = ["FORMS", "KINDS", "REGISTRY_VERSION", "Registry", "Target", "load_registry", "parse_registry"]
