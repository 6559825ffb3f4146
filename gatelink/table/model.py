"""The patch table in memory: what a loader or a fault handler needs to patch every gate site of
one image, up front or on first fault, with plans proven safe before the image ever ran.

This module is the data model only; :mod:`.build` makes a table from a scan, :mod:`.binary`
and :mod:`.jsonform` read and write it (``docs/table-format.md`` is the byte-level
specification), and :mod:`gatelink.runtime` applies it.

Plan templates reuse the atoms of :mod:`gatelink.plan.model`: an int 0..255 is a constant byte,
an int >= 256 (``var(field, i)``) is byte ``i`` of a value filled at patch time from the gate's
resolved target: ``off`` (far call offset), ``sel`` (selector), ``rel`` (near call rel32,
``target - (site address + rel_end)``), or ``gate``: byte ``i`` of the site's own gate number
(bytes a wider store rewrites unchanged, and the offset field the call-gate form keeps).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from ..plan.model import Atom, Domain, FetchModel, Policy, is_var, var_field

FORMAT_VERSION = 1

# Site flags (bit values are part of the binary format).
FLAG_EAGER = 0x01  # apply up front (a `certain` site, or --eager all)
FLAG_LAZY = 0x02  # patch on first fault only
FLAG_NEEDS_SYNC = 0x04  # some plan of the site has a sync step: other cores must be serialised
FLAG_PADDED = 0x08  # the site was moved or reshaped by `gatelink pad`

# Final forms a table can carry plans for ("undefined" is a far call to the undefined-gate
# handler: the runtime serves it with the far plan).
TABLE_FORMS = ("far", "callgate", "near", "pushcs")

# Template fields filled at patch time.
FILL_FIELDS = ("off", "sel", "rel")


@dataclass(frozen=True)
class PlanStep:
    """One step of a plan template: a store of ``len(data)`` (1, 2, 4 or 8) bytes at ``offset``
    inside the site, or a sync (``data`` empty)."""

    offset: int
    data: tuple[Atom, ...] = ()

    @property
    def is_sync(self) -> bool:
        return not self.data

    @property
    def width(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class PlanTemplate:
    """A proven plan, independent of the site's address within its class and of the operand
    values: ``final`` is what the site becomes, ``steps`` how it gets there.

    ``resume`` is the offset of the instruction that traps first (the far call or UD2 of the
    original stub): the place a first fault is reported at and resumed from. ``rel_end`` is, for
    forms with a near call, the offset just past its rel32 (the runtime computes
    ``rel = target - (site address + rel_end)``); None otherwise.
    """

    shape: str
    form: str
    bitness: int
    final: tuple[Atom, ...]
    steps: tuple[PlanStep, ...]
    resume: int
    rel_end: int | None = None

    @property
    def length(self) -> int:
        return len(self.final)

    @property
    def syncs(self) -> int:
        return sum(1 for s in self.steps if s.is_sync)

    @property
    def writes(self) -> int:
        return sum(1 for s in self.steps if not s.is_sync)

    def fields(self) -> set[str]:
        """The template fields this plan needs filled."""
        return {var_field(a) for a in self.final if is_var(a)}


@dataclass(frozen=True)
class TableRegion:
    """A code region the table describes (the image's own region, by value)."""

    name: str
    address: int
    file_offset: int
    size: int
    bitness: int


@dataclass(frozen=True)
class TableSite:
    """One gate site.

    ``plans`` holds, for each form of :attr:`PatchTable.forms` in order, the index of the site's
    plan in :attr:`PatchTable.plans`, or None where that form does not fit the shape.
    ``original`` is the exact bytes the site holds before any patch: the runtime refuses to
    patch (and ``unpatch`` restores) by them.
    """

    region: int
    address: int
    file_offset: int
    shape: str
    gate: int
    gate_kind: str | None  # "os", "user", "server"; None for an unknown selector meaning
    selector: int | None  # None for the UD2 forms
    confidence: str  # "certain" or "likely"
    flags: int
    original: bytes
    plans: tuple[int | None, ...]

    @property
    def length(self) -> int:
        return len(self.original)

    @property
    def eager(self) -> bool:
        return bool(self.flags & FLAG_EAGER)


@dataclass(frozen=True)
class Identity:
    """Which image a table belongs to: its file size and the SHA-256 of the bytes of every code
    region the table describes, concatenated in region order."""

    file_size: int
    code_sha256: bytes


@dataclass(frozen=True)
class BuildInfo:
    """What determines a table's content besides the image and the options stored in the
    header (model, forms, policy, domains): what ``gatelink table --check`` compares.

    ``gates``: the scan's gate lists as ``path:version``; ``layout_sha256``: hex digest of the
    regions' layout and anchors, the relocations and the data regions' bytes
    (:func:`gatelink.table.check.layout_digest`).
    """

    gatelink: str = ""
    eager: str = "certain"
    gates: tuple[str, ...] = ()
    layout_sha256: str = ""
    # ``gatelink table`` only: a digest of the whole input file and every option that decides
    # the table (:func:`gatelink.cli.quick.table_stamp`), so that ``--check`` can say
    # "fresh" without reading more than the header (:mod:`gatelink.cli.quick`).
    stamp: str = ""

    def to_json(self) -> dict[str, object]:
        d: dict[str, object] = {"eager": self.eager, "gatelink": self.gatelink, "gates": list(self.gates),
                                "layout_sha256": self.layout_sha256}
        if self.stamp:
            d["stamp"] = self.stamp
        return d


@dataclass
class PatchTable:
    """Every gate site of one image, with the plans proven for them.

    ``model`` and ``policy`` are what the plans were proven under, ``domains`` the operand
    values they were proven for (a runtime must not fill a value outside them). ``sites`` are
    sorted by (region, address).

    ``domains`` are those of the first form; ``form_domains`` gives them per form (the
    ``callgate`` form's selectors are call gates, the others' code selectors): use
    :meth:`domains_of`. ``build`` records what ``--check`` compares besides the image.
    """

    image_format: str
    identity: Identity
    model: FetchModel
    policy: Policy
    domains: dict[str, Domain]
    forms: tuple[str, ...]
    regions: list[TableRegion] = field(default_factory=list)
    sites: list[TableSite] = field(default_factory=list)
    plans: list[PlanTemplate] = field(default_factory=list)
    version: int = FORMAT_VERSION
    form_domains: dict[str, dict[str, Domain]] = field(default_factory=dict)
    build: BuildInfo = field(default_factory=BuildInfo)

    def domains_of(self, form: str) -> dict[str, Domain]:
        """The operand domains the plans of ``form`` were proven for (``undefined``: far's)."""
        f = "far" if form == "undefined" else form
        return self.form_domains.get(f, self.domains)

    def site_syncs(self, site: TableSite) -> tuple[int | None, ...]:
        """Per form of :attr:`forms`: the number of syncs of the site's plan (None: no plan)."""
        return tuple(None if i is None else self.plans[i].syncs for i in site.plans)

    def find(self, address: int, region: int | None = None) -> TableSite | None:
        """The site whose bytes contain ``address`` (in ``region``, or in any region whose
        addresses contain it), by binary search."""
        regions = [region] if region is not None else [
            i for i, r in enumerate(self.regions) if r.address <= address < r.address + r.size]
        for ri in regions:
            keys = self._keys()
            i = bisect.bisect_right(keys, (ri, address)) - 1
            if i >= 0:
                s = self.sites[i]
                if s.region == ri and s.address <= address < s.address + s.length:
                    return s
        return None

    def _keys(self) -> list[tuple[int, int]]:
        k = self.__dict__.get("_key_cache")
        if k is None or len(k) != len(self.sites):
            k = [(s.region, s.address) for s in self.sites]
            self.__dict__["_key_cache"] = k
        return k

    def plan_for(self, site: TableSite, form: str) -> PlanTemplate | None:
        """The site's plan for ``form`` (``undefined`` uses the far plan), or None."""
        f = "far" if form == "undefined" else form
        if f not in self.forms:
            return None
        idx = site.plans[self.forms.index(f)]
        return None if idx is None else self.plans[idx]


__all__ = [
    "FILL_FIELDS", "FLAG_EAGER", "FLAG_LAZY", "FLAG_NEEDS_SYNC", "FLAG_PADDED", "FORMAT_VERSION",
    "TABLE_FORMS", "BuildInfo", "Identity", "PatchTable", "PlanStep", "PlanTemplate", "TableRegion", "TableSite",
]
