"""Where a stub can sit so that its lazy patch needs no sync, and the in-place layouts a stub's
own bytes allow.

Whether a plan is safe depends only on the site's shape and form and on where chunk and 64-byte
line boundaries fall inside it (:func:`gatelink.plan.matrix.class_key`): with chunks of at most
64 bytes, on the address modulo 64. So for every (shape, bitness, forms, model, policy) the
syncs of the cheapest proven plan are computed once for the 64 residues, with
:func:`gatelink.plan.select.choose`, and every site, slot and reshaped layout is judged by its
residue. A site needs no sync when every requested form that fits its shape has a plan without
one.

Reshaping (docs/pad.md, "Reshaped"): a stub whose shape ends in ``nop`` padding (the legacy
``L7P``/``L8P``: ``9A g16 00 00 sel 90 90``) can move its far call forward into that padding,
``90 90 9A ...``: the bytes that change move with it. The current shapes cannot be reshaped:
their prefixes are not padding but the kernel's dispatch (the #GP handler writes ``CD`` over byte
0 and byte 1 becomes the vector: ``3E 67`` is INT 67h, ``67 66`` INT 66h, ``67 9A`` INT 9Ah), so
dropping, adding or reordering one changes how the kernel treats the stub. Each reshaped layout
is checked to have the same effects as the stub's final form (the checker's own effect
semantics) and its plan is proven like any other.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from ..catalog import SHAPES, Shape
from ..catalog import shape as shape_by_id
from ..plan.checker import Checker, PlanError
from ..plan.forms import (
    FORMS,
    FormError,
    domains_for,
    final_template,
    make_site,
    original_template,
    policy_for,
)
from ..plan.model import (
    LINE,
    RDOS_POLICY,
    Domain,
    FetchModel,
    Order,
    PatchSite,
    Policy,
    is_var,
    var_field,
)
from ..plan.select import choose

NOP = 0x90


@dataclass(frozen=True)
class Requirements:
    """What "patchable with no sync" means for one run: the model and policy the plans are proven
    under, the final forms wanted (each form that fits a shape must have a sync-free plan) and
    the operand domains (None: the RDOS defaults)."""

    model: FetchModel
    policy: Policy
    forms: tuple[str, ...] = ("far",)
    domains: tuple[tuple[str, Domain], ...] = ()

    def __post_init__(self) -> None:
        for f in self.forms:
            if f not in FORMS:
                raise ValueError(f"unknown form {f!r}; forms: {', '.join(FORMS)}")
        if not self.forms:
            raise ValueError("at least one form")


def forms_for(shape_id: str, bitness: int, req: Requirements) -> tuple[str, ...]:
    """The requested forms that fit the shape; where none does (``U5`` is too short for a far
    call), the first of ``far``, ``near`` that fits, so every site is judged by some plan."""
    fit = tuple(f for f in req.forms if _fits(shape_id, f, bitness))
    if fit:
        return fit
    for f in ("far", "near"):
        if _fits(shape_id, f, bitness):
            return (f,)
    return ()


@functools.cache
def _fits(shape_id: str, form: str, bitness: int) -> bool:
    try:
        make_site(shape_id, form, bitness=bitness)
        return True
    except FormError:
        return False


@functools.lru_cache(maxsize=4096)
def syncs_by_residue(shape_id: str, bitness: int, req: Requirements) -> tuple[int | None, ...]:
    """For each address residue modulo 64: the syncs the site needs (the most over its forms),
    or None where some form has no proven plan at all."""
    forms = forms_for(shape_id, bitness, req)
    doms = dict(req.domains) or None
    out: list[int | None] = []
    for r in range(LINE):
        worst: int | None = 0
        for f in forms:
            s = choose(shape_id, 0x1000 + r, f, req.model, req.policy, bitness, doms).syncs
            if s is None or worst is None:
                worst = None
            else:
                worst = max(worst, s)
        out.append(worst if forms else None)
    return tuple(out)


def syncs_at(shape_id: str, bitness: int, address: int, req: Requirements) -> int | None:
    """Syncs the cheapest proven plan(s) of a ``shape_id`` site at ``address`` need (None: no
    plan)."""
    return syncs_by_residue(shape_id, bitness, req)[address % LINE]


def sync_free(shape_id: str, bitness: int, req: Requirements) -> frozenset[int]:
    """Residues modulo 64 where a ``shape_id`` site needs no sync."""
    return frozenset(r for r, s in enumerate(syncs_by_residue(shape_id, bitness, req)) if s == 0)


def next_sync_free(shape_id: str, bitness: int, address: int, req: Requirements) -> int | None:
    """The lowest address >= ``address`` where a ``shape_id`` site needs no sync, or None if no
    residue does (the model is too strict for any layout, e.g. ``1,arbitrary``)."""
    good = sync_free(shape_id, bitness, req)
    if not good:
        return None
    for d in range(LINE):
        if (address + d) % LINE in good:
            return address + d
    return None  # unreachable: some residue is good


# ---------------------------------------------------------------------------------------------
# Reshaping in place


@dataclass(frozen=True)
class Reshape:
    """One in-place layout of a ``source`` stub: ``shift`` nops, the far call (the stub without
    its nop suffix, shape ``core``), then the rest of the nops. Where the bytes after the site
    continue the nops, the scanner reads the longer ``source`` shape at the new place."""

    source: str
    core: str
    shift: int

    def apply(self, stub: bytes) -> bytes:
        s = shape_by_id(self.source)
        n = len(s.suffix)
        body = stub[: len(stub) - n]
        return bytes([NOP]) * self.shift + body + bytes([NOP]) * (n - self.shift)


def _nop_padded(s: Shape) -> bool:
    return bool(s.suffix) and set(s.suffix) == {NOP} and s.has_selector and s.call_at == 0


def _core_of(s: Shape) -> Shape | None:
    for t in SHAPES:
        if t is not s and t.prefix == s.prefix and t.gate_size == s.gate_size and t.middle == s.middle \
                and not t.suffix and t.selectors == s.selectors and t.bitness == s.bitness \
                and t.legacy == s.legacy and t.call_at == s.call_at:
            return t
    return None


def reshapes(shape_id: str) -> tuple[Reshape, ...]:
    """The in-place layouts of ``shape_id`` (smallest shift first); empty for the current
    shapes (see the module docstring)."""
    s = shape_by_id(shape_id)
    if not _nop_padded(s):
        return ()
    core = _core_of(s)
    if core is None:
        return ()
    return tuple(Reshape(s.id, core.id, k) for k in range(1, len(s.suffix) + 1))


@functools.cache
def same_effects(r: Reshape, form: str, bitness: int) -> bool:
    """Does the reshaped layout, patched to ``form``, have exactly the effects of the stub's own
    final form? Judged by the checker's effect semantics (docs/safety.md decision 4): the final
    code of both is decoded and its effects compared; nops have none. A near call's effect is its
    target, which the runtime fills relative to where the call ends, so its ``rel`` is compared
    as a target, not as bytes."""
    s = shape_by_id(r.source)
    try:
        orig = make_site(s.id, form, bitness=bitness)
    except FormError:
        return False
    n = len(s.suffix)
    fin = final_template(s, form, bitness)
    moved = (NOP,) * r.shift + tuple(fin[: len(fin) - n]) + (NOP,) * (n - r.shift)
    doms = dict(domains_for(s, form))
    src = (NOP,) * r.shift + tuple(original_template(s)[: len(fin) - n]) + (NOP,) * (n - r.shift)
    site = PatchSite(s.id, bitness, orig.address, src, moved, orig.context, doms, form)
    try:
        # The effects of the final code depend on neither the model nor the site's address.
        a = Checker(orig, _ANY_MODEL, policy_for(orig, RDOS_POLICY)).expected
        b = Checker(site, _ANY_MODEL, policy_for(site, RDOS_POLICY)).expected
    except PlanError:
        return False
    if a is None or b is None:
        return False
    return [_norm(e) for e in a] == [_norm(e) for e in b]


def _norm(e: tuple[object, ...]) -> tuple[object, ...]:
    # ("call", end, rel, opsize) with a template rel: the target is end + rel, filled at run time.
    if e and e[0] == "call" and len(e) == 4:
        rel = e[2]
        if isinstance(rel, tuple) and any(isinstance(a, int) and is_var(a) and var_field(a) == "rel" for a in rel):
            return ("call", "target", e[3])
    return e


_ANY_MODEL = FetchModel(64, Order.ARBITRARY)


__all__ = [
    "Requirements", "Reshape", "forms_for", "next_sync_free", "reshapes", "same_effects", "sync_free",
    "syncs_at", "syncs_by_residue",
]
