"""The objects of the safety model (docs/safety.md): sites, steps, plans, fetch models, policies.

Bytes of a site are *atoms*: an int 0..255 is a concrete byte; an int >= 256 is a byte of a
value filled in late (a template variable): ``var(field, i)`` is byte ``i`` (little-endian) of
field ``field``. A plan over atoms is a *template*: the checker proves it for every value in
each field's declared domain. A concrete instance has only concrete atoms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

# ---------------------------------------------------------------------------------------------
# Atoms and template fields

FIELDS = ("gate", "off", "sel", "rel", "ctx")
_FIELD_INDEX = {f: i for i, f in enumerate(FIELDS)}
_VAR_BASE = 256
_FIELD_STRIDE = 64  # up to 64 bytes per field (context templates use many)

Atom = int


def var(fieldname: str, i: int) -> Atom:
    return _VAR_BASE + _FIELD_INDEX[fieldname] * _FIELD_STRIDE + i


def is_var(a: Atom) -> bool:
    return a >= _VAR_BASE


def var_field(a: Atom) -> str:
    return FIELDS[(a - _VAR_BASE) // _FIELD_STRIDE]


def var_index(a: Atom) -> int:
    return (a - _VAR_BASE) % _FIELD_STRIDE


def field_atoms(fieldname: str, size: int) -> tuple[Atom, ...]:
    return tuple(var(fieldname, i) for i in range(size))


def atom_text(a: Atom) -> str:
    if is_var(a):
        return f"{var_field(a)}{var_index(a)}"
    return f"{a:02X}"


def atoms_text(atoms: tuple[Atom, ...]) -> str:
    return " ".join(atom_text(a) for a in atoms)


def atoms_hex(atoms: tuple[Atom, ...]) -> str:
    """Hex of concrete atoms (a template variable raises)."""
    if any(is_var(a) for a in atoms):
        raise ValueError("template has unfilled bytes: " + atoms_text(atoms))
    return bytes(atoms).hex()


def substitute(atoms: tuple[Atom, ...], values: dict[str, int], sizes: dict[str, int] | None = None) -> tuple[Atom, ...]:
    """Fill template variables with concrete field values (fields not given stay variables)."""
    out = []
    for a in atoms:
        if is_var(a):
            f = var_field(a)
            if f in values:
                out.append((values[f] >> (8 * var_index(a))) & 0xFF)
                continue
        out.append(a)
    return tuple(out)


@dataclass(frozen=True)
class Domain:
    """The values a late-filled field may take.

    ``values`` is None for "any value of ``size`` bytes" (every byte independent); otherwise an
    explicit set (e.g. the selectors 0x400..0xFFF with the low 3 bits zero).
    """

    size: int
    values: frozenset[int] | None = None
    text: str = "any"

    def byte_values(self, i: int) -> tuple[int, ...]:
        """The values byte ``i`` of the field can take."""
        if self.values is None:
            return tuple(range(256))
        return tuple(sorted({(v >> (8 * i)) & 0xFF for v in self.values}))

    def example(self) -> int:
        if self.values is None:
            return int.from_bytes(bytes(range(0x11, 0x11 + self.size)), "little")
        return min(self.values)


def selector_range(lo: int, hi: int, step: int = 8, rpl: int = 0) -> Domain:
    vals = frozenset(v for v in range(lo, hi + 1) if v % step == rpl % step)
    return Domain(2, vals, f"{lo:#x}..{hi:#x} step {step}" + (f" rpl {rpl}" if rpl else ""))


def parse_selectors(text: str) -> Domain:
    """A selector domain from text: comma-separated values and ranges, ``0x23``,
    ``0x400-0xFFF`` (every 8th, from the first), ``0x403-0xFFF/8`` (an explicit step).

    Raises ValueError with a message naming what is wrong."""
    values: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        step = 8
        if "/" in part:
            part, st = part.split("/", 1)
            step = int(st, 0)
        try:
            if "-" in part or ".." in part:
                lo_t, hi_t = part.split("..", 1) if ".." in part else part.split("-", 1)
                lo, hi = int(lo_t, 0), int(hi_t, 0)
            else:
                lo = hi = int(part, 0)
        except ValueError:
            raise ValueError(f"bad selector {part!r}: write values or ranges like 0x23,0x400-0xFFF/8") from None
        if not (0 <= lo <= hi <= 0xFFFF) or step < 1:
            raise ValueError(f"bad selector range {part!r}: selectors are 0..0xFFFF, low to high")
        values.update(range(lo, hi + 1, step))
    if not values:
        raise ValueError("no selectors given")
    return Domain(2, frozenset(values), text.replace(" ", ""))


ANY32 = Domain(4)
ANY16 = Domain(2)
# RDOS driver and kernel code selectors: 0x400..0xFFF, GDT, RPL 0 (rdos kernel/driver.def).
RDOS_SELECTORS = selector_range(0x400, 0xFFF)
# Call gates a flat application is given: assumed GDT selectors 0x400..0xFFF with RPL 3
# (RDOS allocates call gates in the GDT; the exact range is the OS's to declare).
RDOS_CALL_GATES = selector_range(0x403, 0xFFF, 8, 3)


# ---------------------------------------------------------------------------------------------
# Fetch models


class Order(str, Enum):
    ARBITRARY = "arbitrary"
    MONOTONE = "monotone"


CHUNKS = (1, 2, 4, 8, 16, 32, 64)
LINE = 64


@dataclass(frozen=True)
class FetchModel:
    """Instruction bytes are fetched in naturally aligned ``chunk``-byte pieces, each from one
    state; ``order`` says whether one fetch may take its chunks from states in any order
    (``arbitrary``) or only non-decreasing with address (``monotone``)."""

    chunk: int
    order: Order

    def __post_init__(self) -> None:
        if self.chunk not in CHUNKS:
            raise ValueError(f"chunk must be one of {CHUNKS}, not {self.chunk}")

    def __str__(self) -> str:
        return f"({self.chunk},{self.order.value})"

    def to_json(self) -> dict[str, object]:
        return {"chunk": self.chunk, "order": self.order.value}

    @staticmethod
    def parse(text: str) -> FetchModel:
        """``8,monotone``, ``(16,arbitrary)``, ``64:arb``..."""
        t = text.strip().strip("()").replace(":", ",").replace(" ", "")
        try:
            c, o = t.split(",")
            order = {"arbitrary": Order.ARBITRARY, "arb": Order.ARBITRARY, "monotone": Order.MONOTONE,
                     "mono": Order.MONOTONE}[o.lower()]
            return FetchModel(int(c), order)
        except (ValueError, KeyError):
            raise ValueError(f"bad fetch model {text!r}: write CHUNK,ORDER, e.g. 8,monotone") from None

    @property
    def strictness(self) -> tuple[int, int]:
        """Sort key: stricter models first (smaller chunks, arbitrary order allow more views)."""
        return (self.chunk, 0 if self.order is Order.ARBITRARY else 1)


STANDARD_MODELS = (
    FetchModel(1, Order.ARBITRARY),
    FetchModel(8, Order.MONOTONE),
    FetchModel(8, Order.ARBITRARY),
    FetchModel(16, Order.ARBITRARY),
    FetchModel(64, Order.ARBITRARY),
)


# ---------------------------------------------------------------------------------------------
# Invalid-selector policy


@dataclass(frozen=True)
class SelectorRule:
    """Selectors matching every given field are never valid (e.g. ``ti=1, min_index=0x1000``:
    LDT entries the OS never allocates; ``rpl=1``: ring 1, for code that runs at ring 0)."""

    ti: int | None = None
    rpl: int | None = None
    min_index: int | None = None
    max_index: int | None = None

    def matches(self, sel: int) -> bool:
        if self.ti is not None and (sel >> 2) & 1 != self.ti:
            return False
        if self.rpl is not None and sel & 3 != self.rpl:
            return False
        if self.min_index is not None and sel >> 3 < self.min_index:
            return False
        if self.max_index is not None and sel >> 3 > self.max_index:
            return False
        return True

    def to_json(self) -> dict[str, int]:
        return {k: v for k, v in (("ti", self.ti), ("rpl", self.rpl), ("min_index", self.min_index),
                                   ("max_index", self.max_index)) if v is not None}

    def text(self) -> str:
        parts = []
        if self.ti is not None:
            parts.append("LDT" if self.ti else "GDT")
        if self.rpl is not None:
            parts.append(f"RPL {self.rpl}")
        if self.min_index is not None:
            parts.append(f"index >= {self.min_index:#x}")
        if self.max_index is not None:
            parts.append(f"index <= {self.max_index:#x}")
        return " ".join(parts)


@dataclass(frozen=True)
class Policy:
    """What the patch handler treats as a trap, and which selectors are call gates."""

    invalid_ranges: tuple[tuple[int, int], ...] = ((0, 7),)
    invalid_rules: tuple[SelectorRule, ...] = ()
    call_gates: tuple[tuple[int, int], ...] = ()
    int_vectors: tuple[int, ...] = (0x66, 0x67, 0x9A, 0xE8)
    ud2: bool = True
    int3: bool = True
    name: str = "custom"
    _cache: dict[int, bool] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def invalid(self, sel: int) -> bool:
        c = self._cache.get(sel)
        if c is None:
            c = sel <= 7 or any(lo <= sel <= hi for lo, hi in self.invalid_ranges) or any(
                r.matches(sel) for r in self.invalid_rules
            )
            self._cache[sel] = c
        return c

    def is_call_gate(self, sel: int) -> bool:
        return any(lo <= sel <= hi for lo, hi in self.call_gates)

    def to_json(self) -> dict[str, object]:
        ranges = sorted({(0, 7), *self.invalid_ranges})
        return {
            "name": self.name,
            "invalid_selectors": [list(r) for r in ranges],
            "invalid_rules": [r.to_json() for r in self.invalid_rules],
            "call_gates": [list(r) for r in self.call_gates],
            "int_vectors": list(self.int_vectors),
            "ud2": self.ud2,
            "int3": self.int3,
        }

    @staticmethod
    def from_json(d: dict[str, object]) -> Policy:
        def ranges(key: str) -> tuple[tuple[int, int], ...]:
            raw = d.get(key) or []
            assert isinstance(raw, list)
            return tuple((int(a), int(b)) for a, b in raw)

        rules_raw = d.get("invalid_rules") or []
        assert isinstance(rules_raw, list)
        return Policy(
            invalid_ranges=ranges("invalid_selectors") or ((0, 7),),
            invalid_rules=tuple(SelectorRule(**{k: int(v) for k, v in r.items()}) for r in rules_raw),
            call_gates=ranges("call_gates"),
            int_vectors=tuple(int(v) for v in d.get("int_vectors", [0x66, 0x67, 0x9A, 0xE8])),  # type: ignore[union-attr]
            ud2=bool(d.get("ud2", True)),
            int3=bool(d.get("int3", True)),
            name=str(d.get("name", "custom")),
        )

    def describe(self) -> str:
        parts = ["selectors " + ", ".join(f"{lo:#x}..{hi:#x}" for lo, hi in sorted({(0, 7), *self.invalid_ranges}))]
        parts += [r.text() for r in self.invalid_rules]
        traps = [f"int {', '.join(f'{v:#x}' for v in self.int_vectors)}"] if self.int_vectors else []
        traps += ["ud2"] if self.ud2 else []
        traps += ["int3"] if self.int3 else []
        return f"invalid: {'; '.join(parts)}; traps: {', '.join(traps)}"


# The RDOS default: selectors 0..7 (null and LDT 0 with any RPL; what every stub uses), and LDT
# selectors with index >= 0x1000, which RDOS never allocates (it hands out few LDT entries, from
# the bottom; the forum thread's F5F5 is one). INT 66h/67h/9Ah/E8h are the handler's vectors.
RDOS_POLICY = Policy(
    invalid_ranges=((0, 7),),
    invalid_rules=(SelectorRule(ti=1, min_index=0x1000),),
    name="rdos",
)
STRICT_POLICY = Policy(name="strict")  # selectors 0..7 only


# ---------------------------------------------------------------------------------------------
# Sites, steps, plans


@dataclass(frozen=True)
class PatchSite:
    """A site as the planner sees it: where it is, what it is now and what it becomes.

    ``original`` and ``final`` are atom tuples of the same length; ``context`` the atoms after
    the site (``ctx`` variables stand for "any following code"). ``domains`` give the values of
    each template field.
    """

    shape: str
    bitness: int
    address: int
    original: tuple[Atom, ...]
    final: tuple[Atom, ...]
    context: tuple[Atom, ...]
    domains: dict[str, Domain]
    form: str = "far"

    def __post_init__(self) -> None:
        if len(self.original) != len(self.final):
            raise ValueError("original and final differ in length")

    @property
    def length(self) -> int:
        return len(self.original)

    def is_template(self) -> bool:
        return any(is_var(a) for a in self.original + self.final + self.context)

    def changed(self) -> tuple[int, ...]:
        return tuple(i for i, (o, f) in enumerate(zip(self.original, self.final)) if o != f)

    def at(self, address: int) -> PatchSite:
        return PatchSite(self.shape, self.bitness, address, self.original, self.final, self.context,
                         self.domains, self.form)

    def instance(self, values: dict[str, int]) -> PatchSite:
        """A concrete instance: every template field filled with the given value."""
        return PatchSite(
            self.shape, self.bitness, self.address, substitute(self.original, values),
            substitute(self.final, values), substitute(self.context, values), self.domains, self.form,
        )

    def example_values(self) -> dict[str, int]:
        vals = {f: d.example() for f, d in self.domains.items()}
        vals.setdefault("ctx", 0)
        return vals


@dataclass(frozen=True)
class Write:
    """One store of 1, 2, 4 or 8 bytes at ``offset`` inside the site (one instruction)."""

    offset: int
    data: tuple[Atom, ...]

    def to_json(self) -> dict[str, object]:
        return {"op": "write", "offset": self.offset, "data": atoms_hex(self.data)}


@dataclass(frozen=True)
class Sync:
    """Serialise every core (an IPI running a serialising instruction everywhere)."""

    def to_json(self) -> dict[str, object]:
        return {"op": "sync"}


Step = Write | Sync
SYNC = Sync()
STORE_SIZES = (1, 2, 4, 8)


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...]
    builder: str = "manual"
    note: str = ""

    @property
    def writes(self) -> int:
        return sum(1 for s in self.steps if isinstance(s, Write))

    @property
    def syncs(self) -> int:
        return sum(1 for s in self.steps if isinstance(s, Sync))

    def states(self, site: PatchSite) -> list[tuple[Atom, ...]]:
        """S0 = original, then the site after each write."""
        cur = list(site.original)
        out = [tuple(cur)]
        for s in self.steps:
            if isinstance(s, Write):
                cur[s.offset : s.offset + len(s.data)] = s.data
                out.append(tuple(cur))
        return out

    def sync_points(self) -> tuple[int, ...]:
        """State indices at which a sync happens (the state current when it runs)."""
        k = 0
        pts = []
        for s in self.steps:
            if isinstance(s, Write):
                k += 1
            elif not pts or pts[-1] != k:
                pts.append(k)
        return tuple(pts)

    def problems(self, site: PatchSite) -> list[str]:
        """Why this plan is malformed for ``site`` (empty if it is well formed)."""
        out = []
        for i, s in enumerate(self.steps):
            if not isinstance(s, Write):
                continue
            n = len(s.data)
            if n not in STORE_SIZES:
                out.append(f"step {i}: a store writes 1, 2, 4 or 8 bytes, not {n}")
            if s.offset < 0 or s.offset + n > site.length:
                out.append(f"step {i}: bytes {s.offset}..{s.offset + n - 1} leave the {site.length}-byte site")
            a = site.address + s.offset
            if a // LINE != (a + n - 1) // LINE:
                out.append(f"step {i}: the store at {a:#x} crosses a 64-byte line")
        if not out:
            last = self.states(site)[-1]
            if last != site.final:
                out.append(f"the plan ends at {atoms_text(last)}, not the final {atoms_text(site.final)}")
        return out
