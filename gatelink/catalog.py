"""The shape catalog: every gate-stub encoding gatelink knows, as one table.

Each row says which bytes are fixed, where the gate number and selector sit, which code bitness
the stub is written for and what its selector means. The scanner, the planner and the docs all
read this table; nothing else in the package hard-codes stub bytes.

Sources: ``docs/shapes.md`` (generated from this table) and rdos-facts section 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class GateKind(str, Enum):
    OS = "os"
    USER = "user"
    SERVER = "server"


# The meaning of the selector of a current stub (rdos-facts section 1): 1..3 are null selectors
# with RPL 1..3, 4 is LDT index 0; all four always fault.
SELECTOR_KIND: dict[int, GateKind] = {
    1: GateKind.USER,
    2: GateKind.OS,
    3: GateKind.USER,
    4: GateKind.SERVER,
}


@dataclass(frozen=True)
class Shape:
    """One stub encoding.

    ``prefix`` is every fixed byte before the gate field (its last byte is the opcode, 9A or the
    UD2 marker); ``gate_size`` bytes of gate number follow, then ``middle`` fixed bytes (the zero
    high word of legacy 16-bit gate numbers), then the selector word (absent for UD2 forms), then
    ``suffix`` fixed bytes. ``markers`` lists the bytes allowed at ``marker_at`` (UD2 forms only).
    """

    id: str
    prefix: bytes
    gate_size: int
    selectors: tuple[int, ...]
    bitness: int | None  # 16 or 32; None: either (UD2 forms)
    call_at: int  # where the trapping instruction starts inside the site
    emitted_by: str
    middle: bytes = b""
    suffix: bytes = b""
    legacy: bool = False
    has_selector: bool = True
    marker_at: int | None = None
    markers: tuple[int, ...] = ()
    kind: GateKind | None = None  # fixed kind (UD2 forms); otherwise from the selector

    @property
    def opcode_at(self) -> int:
        return len(self.prefix) - 1 if self.has_selector else 0

    @property
    def gate_at(self) -> int:
        return len(self.prefix)

    @property
    def sel_at(self) -> int | None:
        if not self.has_selector:
            return None
        return self.gate_at + self.gate_size + len(self.middle)

    @property
    def length(self) -> int:
        sel = 2 if self.has_selector else 0
        return len(self.prefix) + self.gate_size + len(self.middle) + sel + len(self.suffix)

    @property
    def call_length(self) -> int:
        """Length of the trapping instruction (the far call, or UD2 with its inline operands)."""
        return self.length - self.call_at - len(self.suffix)

    def kind_of(self, selector: int | None, marker: int | None = None) -> GateKind | None:
        if self.kind is not None:
            return self.kind
        if selector is None:
            return None
        return SELECTOR_KIND.get(selector)

    def template(self) -> str:
        """Human-readable byte template, e.g. ``3E 67 9A g g g g 02 00``."""
        parts = [f"{b:02X}" for b in self.prefix]
        if self.marker_at is not None:
            parts[self.marker_at] = "|".join(f"{m:02X}" for m in self.markers)
        parts += ["g"] * self.gate_size
        parts += [f"{b:02X}" for b in self.middle]
        if self.has_selector:
            sel = self.selectors[0] if len(self.selectors) == 1 else None
            parts += [f"{sel:02X}" if sel is not None else "s", "00"]
        parts += [f"{b:02X}" for b in self.suffix]
        return " ".join(parts)


def _cur(id: str, prefix: str, sel: int, bits: int, by: str, suffix: str = "", call_at: int = 0) -> Shape:
    return Shape(
        id=id,
        prefix=bytes.fromhex(prefix),
        gate_size=4,
        selectors=(sel,),
        bitness=bits,
        call_at=call_at,
        emitted_by=by,
        suffix=bytes.fromhex(suffix),
    )


# The table. Order matters only for documentation.
SHAPES: tuple[Shape, ...] = (
    _cur("A", "3E 67 9A", 2, 32, "OsGate32 macro, OW rdk.h (32-bit drivers)"),
    _cur("B", "67 66 9A", 2, 16, "OsGate16 (16-bit kernel, drivers)"),
    _cur("C", "3E 67 9A", 3, 32, "UserGate32, OW rdu.h non-flat, rdosdev.h"),
    _cur("D", "67 66 9A", 1, 16, "UserGate16"),
    _cur("E", "67 66 9A", 3, 16, "UserGateForce32"),
    _cur("F", "67 9A", 3, 32, "UserGateApp (C startup cstrtrdu.asm)"),
    _cur("G", "55 67 9A", 3, 32, "OW owflat.h / rdu.h FLAT (push ebp / F / pop ebp)", suffix="5D", call_at=1),
    _cur("H", "55 67 9A", 4, 32, "rdos-uACPI ServGate, ShareGate", suffix="5D", call_at=1),
    _cur("I", "3E 67 9A", 4, 32, "non-flat ShareGate"),
    # Legacy encodings (forum thread, old kernels): 16-bit gate number in the low word of the
    # offset. Their selector meant something else in old kernels; the current meaning is used.
    Shape("L7", b"\x9a", 2, (1, 2, 3), 32, 0, "old 32-bit segments", middle=b"\0\0", legacy=True),
    Shape("L8", b"\x66\x9a", 2, (1, 2, 3), 16, 0, "old 16-bit segments", middle=b"\0\0", legacy=True),
    Shape("L7P", b"\x9a", 2, (1, 2, 3), 32, 0, "old 32-bit segments, nop padded", middle=b"\0\0", suffix=b"\x90\x90", legacy=True),
    Shape("L8P", b"\x66\x9a", 2, (1, 2, 3), 16, 0, "old 16-bit segments, nop padded", middle=b"\0\0", suffix=b"\x90\x90", legacy=True),
    Shape(
        "U5", b"\x0f\x0b\xca", 2, (), None, 0, "old kernels: UD2 + OS gate", legacy=True,
        has_selector=False, marker_at=2, markers=(0xCA, 0xCB), kind=GateKind.OS,
    ),
    Shape(
        "U7", b"\x0f\x0b\xd6", 4, (), None, 0, "old kernels: UD2 + user gate", legacy=True,
        has_selector=False, marker_at=2, markers=(0xD6, 0xD7), kind=GateKind.USER,
    ),
)

SHAPES_BY_ID: dict[str, Shape] = {s.id: s for s in SHAPES}
CURRENT_SHAPES: tuple[Shape, ...] = tuple(s for s in SHAPES if not s.legacy)
LEGACY_SHAPES: tuple[Shape, ...] = tuple(s for s in SHAPES if s.legacy)

# The highest selector the stub forms use as "never valid" (GDT index 0 and LDT index 0 with any
# RPL); candidates with a selector in this range that no shape allows are near misses.
MAX_STUB_SELECTOR = 7


def shape(id: str) -> Shape:
    try:
        return SHAPES_BY_ID[id]
    except KeyError:
        raise KeyError(f"unknown shape {id!r}; known: {', '.join(SHAPES_BY_ID)}") from None


@dataclass(frozen=True)
class Family:
    """Shapes that share every fixed byte but the selector (A, C, I share ``3E 67 9A``).

    A candidate whose bytes fit a family but whose selector no member allows is a near miss
    ("selector out of range"), not a site.
    """

    prefix: bytes
    gate_size: int
    middle: bytes
    suffix: bytes
    members: tuple[Shape, ...]

    def member_for(self, selector: int) -> Shape | None:
        for s in self.members:
            if selector in s.selectors:
                return s
        return None


def _families() -> tuple[Family, ...]:
    groups: dict[tuple[bytes, int, bytes, bytes], list[Shape]] = {}
    for s in SHAPES:
        if not s.has_selector:
            continue
        groups.setdefault((s.prefix, s.gate_size, s.middle, s.suffix), []).append(s)
    return tuple(Family(p, g, m, x, tuple(v)) for (p, g, m, x), v in groups.items())


FAMILIES: tuple[Family, ...] = _families()
UD2_SHAPES: tuple[Shape, ...] = tuple(s for s in SHAPES if not s.has_selector)


def stub_bytes(s: Shape, gate: int, selector: int | None = None, marker: int | None = None) -> bytes:
    """The bytes of a stub of shape ``s`` calling ``gate`` (used by fixtures, tests and docs)."""
    out = bytearray(s.prefix)
    if s.marker_at is not None:
        out[s.marker_at] = marker if marker is not None else s.markers[0]
    out += gate.to_bytes(s.gate_size, "little")
    out += s.middle
    if s.has_selector:
        sel = s.selectors[0] if selector is None else selector
        out += sel.to_bytes(2, "little")
    out += s.suffix
    assert len(out) == s.length
    return bytes(out)
