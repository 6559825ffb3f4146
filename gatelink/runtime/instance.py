"""From a table's plan templates to the concrete bytes of one site: the registry says where the
site's gate resolves, the template says what the site becomes and how; this module fills the
template's fields and checks that every value lies in the domain the plan was proven for.

Fields (``docs/runtime.md``, "Filling a template"): ``off`` and ``sel`` are the far target's
offset and selector, ``rel = target - (code address of the site + rel_end)`` modulo 2**32 for
the near forms, and ``gate`` (kept by the call-gate form in the unused offset field) is the
site's own gate number. Every value is stored little-endian.
"""

from __future__ import annotations

from typing import NamedTuple

from ..errors import InputError
from ..plan.model import Atom, Domain, is_var, var_field, var_index
from ..table.model import PatchTable, PlanTemplate, TableSite
from .memory import Placement
from .registry import Registry, Target

# Template field -> the value the fill needs it from.
_FILLABLE = ("off", "sel", "rel", "gate")


class SitePatch(NamedTuple):
    """One site, concrete: where it is, what it holds, what it becomes and how.

    ``steps`` are the plan's steps with every field filled: ``(offset, data)`` stores of 1, 2,
    4 or 8 bytes at ``address + offset``, and ``(0, b"")`` for a sync. ``resume`` is the offset
    of the instruction that traps first (a first fault is reported there). (A named tuple: a
    fault handler makes one per first fault.)
    """

    site: int  # its index in the table
    address: int  # memory address of the site's first byte
    code_address: int  # its EIP
    original: bytes
    final: bytes
    steps: tuple[tuple[int, bytes], ...]
    resume: int
    form: str
    target: Target

    @property
    def length(self) -> int:
        return len(self.original)


class _Compiled:
    """A template's atoms as constant bytes plus (position, field, shift) fills: filling is a
    copy and a few byte stores instead of a walk over atoms."""

    __slots__ = ("const", "fills")

    def __init__(self, atoms: tuple[Atom, ...]) -> None:
        self.const = bytes(0 if is_var(a) else a for a in atoms)
        fills = []
        for i, a in enumerate(atoms):
            if is_var(a):
                f = var_field(a)
                if f not in _FILLABLE:
                    raise ValueError(f"template field {f!r} cannot be filled at run time")
                fills.append((i, f, 8 * var_index(a)))
        self.fills = tuple(fills)

    def fill(self, values: dict[str, int]) -> bytes:
        if not self.fills:
            return self.const
        b = bytearray(self.const)
        for i, f, sh in self.fills:
            b[i] = (values[f] >> sh) & 0xFF
        return bytes(b)


class _Plan:
    __slots__ = ("fields", "final", "steps", "tpl")

    def __init__(self, tpl: PlanTemplate) -> None:
        self.tpl = tpl
        self.final = _Compiled(tpl.final)
        self.steps = tuple((s.offset, _Compiled(s.data) if s.data else None) for s in tpl.steps)
        self.fields = {f for _, f, _ in self.final.fills}
        for _, c in self.steps:
            if c is not None:
                self.fields |= {f for _, f, _ in c.fills}


def proven_domain(table: PatchTable, form: str, fieldname: str) -> Domain | None:
    """The values ``fieldname`` of a ``form`` plan of ``table`` was proven for
    (:meth:`PatchTable.domains_of`; ``undefined`` uses the far plans). None: any 32-bit value."""
    return table.domains_of(form).get(fieldname)


def in_domain(dom: Domain | None, value: int) -> bool:
    if dom is None:
        return 0 <= value < 1 << 32
    if dom.values is not None:
        return value in dom.values
    return 0 <= value < 1 << (8 * dom.size)


class Binder:
    """Resolves every site of ``table`` through ``registry`` and fills its plan, checking each
    value against the plan's proven domain (once per distinct target and form)."""

    def __init__(self, table: PatchTable, registry: Registry | None, placement: Placement | None = None) -> None:
        self.table = table
        self.registry = registry
        self.placement = placement or Placement.file(table)
        self._plans: dict[int, _Plan] = {}
        self._checked: set[tuple[Target, str]] = set()
        self._form_index = {f: i for i, f in enumerate(table.forms)}
        self._mem = self.placement.memory
        self._code = self.placement.code
        self._rbase = [r.address for r in table.regions]
        self._targets: dict[tuple[str | None, int], Target] = {}
        self._rpath = registry.path if registry is not None else "<registry>"
        # (kind, gate, the site's plan indices) -> (target, plan), checked; None: no plan at all
        self._bound: dict[tuple[str | None, int, tuple[int | None, ...]], tuple[Target, _Plan] | None] = {}
        # (plan, target, gate) -> (final, steps) for plans without a rel32 (site-independent);
        # by identity: plans and targets are cached objects that live as long as the binder
        self._filled: dict[tuple[int, int, int], tuple[bytes, tuple[tuple[int, bytes], ...]]] = {}

    def bind(self, site: TableSite) -> tuple[Target, _Plan] | None:
        """The site's target and plan, its values checked against the proven domains (cached
        per gate and plan set); None when the table has no plan for the site."""
        key = (site.gate_kind, site.gate, site.plans)
        try:
            return self._bound[key]
        except KeyError:
            pass
        t = self.target(site)
        got = None
        if t is not None:
            p = self.plan(site, t)
            self.check(site, t)
            got = (t, p)
        self._bound[key] = got
        return got

    def fill(self, site: TableSite, t: Target, p: _Plan, code: int) -> tuple[bytes, tuple[tuple[int, bytes], ...]]:
        """(final, steps) of ``site`` bound to ``t`` and ``p`` (:meth:`bind`) at ``code``."""
        key = None
        if "rel" not in p.fields:
            key = (id(p), id(t), site.gate if "gate" in p.fields else 0)
            got = self._filled.get(key)
            if got is not None:
                return got
        vals = self.values(site, t, p.tpl, code)
        out = (p.final.fill(vals), tuple((off, c.fill(vals) if c is not None else b"") for off, c in p.steps))
        if key is not None:
            self._filled[key] = out
        return out

    def target(self, site: TableSite) -> Target | None:
        """Where ``site`` resolves: the registry's target for its gate, or the kind's fallback
        when the table has no plan for that form at this site; None when the table has no plan
        for the site in any form (the runtime leaves it alone). Raises :class:`InputError`
        when the table could patch the site but neither target has a plan."""
        key = (site.gate_kind, site.gate)
        t = self._targets.get(key)
        if t is None:
            if self.registry is None:
                raise ValueError("resolving a gate needs a registry")
            t = self._targets[key] = self.registry.resolve(site.gate_kind, site.gate)
        if self._plan_index(site, t.form) is not None:
            return t
        if all(p is None for p in site.plans):
            return None
        assert self.registry is not None
        fb = self.registry.resolve_fallback(site.gate_kind, site.gate)
        if fb is not None and self._plan_index(site, fb.form) is not None:
            return fb
        kind = site.gate_kind or "unknown-kind"
        form = "far" if t.form == "undefined" else t.form
        have = [f for f, p in zip(self.table.forms, site.plans) if p is not None]
        why = f"nor for its fallback form {fb.form} ({fb.source})" if fb is not None else \
            f"and the registry has no [fallback.{kind}]"
        raise InputError(self._rpath,
                         f"{t.source}: {kind} gate {site.gate} resolves to form {t.form}, but the table has no "
                         f"{form} plan for the shape {site.shape} site at {site.address:#x} {why}; the table can give "
                         f"it: {', '.join(have)}")

    def _plan_index(self, site: TableSite, form: str) -> int | None:
        fi = self._form_index.get("far" if form == "undefined" else form)
        return None if fi is None else site.plans[fi]

    def plan(self, site: TableSite, target: Target) -> _Plan:
        idx = self._plan_index(site, target.form)
        assert idx is not None, "target() gives only forms the site has a plan for"
        p = self._plans.get(idx)
        if p is None:
            p = self._plans[idx] = _Plan(self.table.plans[idx])
        return p

    def check(self, site: TableSite, target: Target) -> None:
        """Refuse a value the plan was not proven for (``InputError`` naming the registry)."""
        key = (target, target.form)
        if key in self._checked:
            return
        form = "far" if target.form == "undefined" else target.form
        pol = self.table.policy
        where = f"{target.source}: {site.gate_kind or 'unknown-kind'} gate {site.gate}"
        if form in ("far", "callgate"):
            sel = target.selector
            assert sel is not None
            dom = proven_domain(self.table, form, "sel")
            if not in_domain(dom, sel):
                raise InputError(self._rpath, f"{where}: selector {sel:#06x} is outside the table's proven "
                                                     f"{form} selector domain {_dtext(dom)} (its plans were not "
                                                     f"proven for it)")
            if pol.invalid(sel):
                raise InputError(self._rpath, f"{where}: selector {sel:#06x} is one the table's policy treats "
                                                     f"as never valid (a trap): the site would fault for ever")
        if form == "far":
            off = target.offset
            assert off is not None
            dom = proven_domain(self.table, form, "off")
            if not in_domain(dom, off):
                raise InputError(self._rpath, f"{where}: offset {off:#x} is outside the table's proven offset "
                                                     f"domain {_dtext(dom)}")
        self._checked.add(key)

    def values(self, site: TableSite, target: Target, tpl: PlanTemplate, code_address: int) -> dict[str, int]:
        v = {"gate": site.gate}
        if target.form in ("far", "undefined"):
            v["off"] = target.offset  # type: ignore[assignment]
            v["sel"] = target.selector  # type: ignore[assignment]
        elif target.form == "callgate":
            v["sel"] = target.selector  # type: ignore[assignment]
        else:
            assert target.target is not None and tpl.rel_end is not None
            rel = (target.target - (code_address + tpl.rel_end)) & 0xFFFFFFFF
            dom = proven_domain(self.table, target.form, "rel")
            if not in_domain(dom, rel):
                raise InputError(self._rpath, f"{target.source}: rel32 {rel:#x} for the site at "
                                                     f"{site.address:#x} is outside the proven domain {_dtext(dom)}")
            v["rel"] = rel
        return v

    def final(self, i: int) -> tuple[int, bytes] | None:
        """(memory address, final bytes) of site ``i`` (None: no plan for it): the fast path of
        ``apply``."""
        site = self.table.sites[i]
        b = self.bind(site)
        if b is None:
            return None
        d = site.address - self._rbase[site.region]
        fin, _ = self.fill(site, b[0], b[1], self._code[site.region] + d)
        return self._mem[site.region] + d, fin

    def patch(self, i: int) -> SitePatch | None:
        """Site ``i`` made concrete (None: the table has no plan for it)."""
        site = self.table.sites[i]
        b = self.bind(site)
        if b is None:
            return None
        t, p = b
        d = site.address - self._rbase[site.region]
        code = self._code[site.region] + d
        fin, steps = self.fill(site, t, p, code)
        return SitePatch(i, self._mem[site.region] + d, code, site.original, fin, steps, p.tpl.resume, t.form, t)

    def finals(self, site: TableSite) -> list[tuple[str, _Compiled]]:
        """Every final template the table holds for ``site`` (form, compiled), for unpatch."""
        out = []
        for f, idx in zip(self.table.forms, site.plans):
            if idx is None:
                continue
            p = self._plans.get(idx)
            if p is None:
                p = self._plans[idx] = _Plan(self.table.plans[idx])
            out.append((f, p.final))
        return out


def _dtext(dom: Domain | None) -> str:
    if dom is None:
        return "any 32-bit value"
    return dom.text if dom.values is not None else f"any {8 * dom.size}-bit value"


__all__ = ["Binder", "SitePatch", "in_domain", "proven_domain"]
