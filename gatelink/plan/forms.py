"""Final forms: what a stub becomes once patched, as byte templates per shape.

Forms (docs/safety.md, "Final forms"):

``far``       far call ``sel:off`` keeping the stub's padding prefixes in front (one instruction,
              so debuggers still step over it): ``3E 67 9A off32 sel`` for shape A.
``pushcs``    ``push cs`` + near call (``0E E8 rel32``; 16-bit code ``66 0E 66 E8 rel32``), nop
              padded in front; the callee returns with a far return.
``callgate``  far call through a call gate: only the selector changes (the CPU ignores the offset).
``near``      the SYSENTER-style near call: ``90 E8 rel32`` then nops (RDOS: ``90 E8 rel32 90 90``).
``undefined`` far call to the undefined-gate stub (returns with carry set): a ``far`` instance
              with the handler's fixed selector and offset.

The gate number, offset, selector and rel32 are template fields (``gate``, ``off``, ``sel``,
``rel``); the bytes after the site are ``ctx`` ("any following code") unless given.
"""

from __future__ import annotations

from ..catalog import Shape, shape as shape_by_id
from .model import (
    ANY16,
    ANY32,
    RDOS_CALL_GATES,
    RDOS_SELECTORS,
    Atom,
    Domain,
    PatchSite,
    Policy,
    field_atoms,
)

FORMS = ("far", "pushcs", "callgate", "near", "undefined")
CONTEXT_LEN = 16

# The undefined-gate handler's entry (stc; retf32) as the kernel would resolve it; only its being
# a fixed far target matters to the safety of a plan.
UNDEFINED_TARGET = (0x0408, 0x00000010)

# What the C headers put after a stub (rdos-facts section 1), padded: used for concrete instances.
DEFAULT_CONTEXT = {
    32: bytes.fromhex("7304 33c0 eb05 b801000000 c3 90909090"),
    16: bytes.fromhex("7303 33c0 eb03 b80100 c3 90909090909090"),
}


class FormError(ValueError):
    """The form does not fit this shape (too short, wrong bitness)."""


def natural_bitness(s: Shape) -> int:
    return s.bitness if s.bitness is not None else 32


def original_template(s: Shape) -> tuple[Atom, ...]:
    out: list[Atom] = list(s.prefix)
    if s.marker_at is not None:
        out[s.marker_at] = s.markers[0]
    out += field_atoms("gate", s.gate_size)
    out += list(s.middle)
    if s.has_selector:
        out += [s.selectors[0], 0]
    out += list(s.suffix)
    return tuple(out)


def _call_region(s: Shape) -> tuple[int, int]:
    """Where the trapping instruction sits inside the site: [start, end)."""
    return s.call_at, s.call_at + s.call_length


def final_template(s: Shape, form: str, bitness: int) -> tuple[Atom, ...]:
    orig = original_template(s)
    c0, c1 = _call_region(s)
    n = c1 - c0
    head, tail = list(orig[:c0]), list(orig[c1:])
    if form in ("far", "undefined"):
        if s.has_selector:
            body = list(orig[c0:c1])
            off_at = s.gate_at - c0
            body[off_at : off_at + 4] = field_atoms("off", 4)  # legacy: gate16 + zero word = offset32
            body[off_at + 4 : off_at + 6] = field_atoms("sel", 2)
            if s.gate_size == 2 and bitness == 32 and body[0] != 0x9A and body[:2] != [0x66, 0x9A]:
                raise FormError(f"shape {s.id}: unexpected layout")
        else:
            # UD2 forms: a far call must fit and push a 32-bit frame.
            if bitness == 32 and n >= 7:
                body = [0x9A, *field_atoms("off", 4), *field_atoms("sel", 2)] + [0x90] * (n - 7)
            elif bitness == 16 and n >= 8:
                body = [0x66, 0x9A, *field_atoms("off", 4), *field_atoms("sel", 2)] + [0x90] * (n - 8)
            else:
                raise FormError(f"shape {s.id} ({n} bytes) cannot hold a far call with a 32-bit frame in {bitness}-bit code")
        return tuple(head + body + tail)
    if form == "callgate":
        if not s.has_selector:
            raise FormError(f"shape {s.id} has no selector to turn into a call gate")
        body = list(orig[c0:c1])
        sel_at = (s.sel_at or 0) - c0
        body[sel_at : sel_at + 2] = field_atoms("sel", 2)
        return tuple(head + body + tail)
    if form == "pushcs":
        core: list[Atom] = [0x0E, 0xE8, *field_atoms("rel", 4)] if bitness == 32 else \
            [0x66, 0x0E, 0x66, 0xE8, *field_atoms("rel", 4)]
        if len(core) > n:
            raise FormError(f"shape {s.id}: push cs + near call needs {len(core)} bytes, the stub has {n}")
        return tuple(head + [0x90] * (n - len(core)) + core + tail)
    if form == "near":
        core = [0xE8, *field_atoms("rel", 4)] if bitness == 32 else [0x66, 0xE8, *field_atoms("rel", 4)]
        if len(core) > n:
            raise FormError(f"shape {s.id}: a near call needs {len(core)} bytes, the stub has {n}")
        lead = 1 if n > len(core) else 0
        return tuple(head + [0x90] * lead + core + [0x90] * (n - len(core) - lead) + tail)
    raise FormError(f"unknown form {form!r}; forms: {', '.join(FORMS)}")


def domains_for(s: Shape, form: str) -> dict[str, Domain]:
    d: dict[str, Domain] = {"gate": ANY32 if s.gate_size == 4 else ANY16, "off": ANY32, "rel": ANY32}
    d["sel"] = RDOS_CALL_GATES if form == "callgate" else RDOS_SELECTORS
    d["ctx"] = Domain(1)
    return d


def make_site(
    shape_id: str,
    form: str = "far",
    address: int = 0x1000,
    bitness: int | None = None,
    context: bytes | None = None,
    domains: dict[str, Domain] | None = None,
) -> PatchSite:
    """A site template for ``shape_id`` patched to ``form``.

    ``context`` gives the bytes after the site (default: any bytes, as template variables).
    """
    s = shape_by_id(shape_id)
    bits = bitness if bitness is not None else natural_bitness(s)
    if s.bitness is not None and bits != s.bitness:
        raise FormError(f"shape {s.id} is {s.bitness}-bit code, not {bits}-bit")
    if form not in FORMS:
        raise FormError(f"unknown form {form!r}; forms: {', '.join(FORMS)}")
    final = final_template(s, form, bits)
    doms = dict(domains_for(s, form))
    if domains:
        doms.update(domains)
    ctx: tuple[Atom, ...] = tuple(context) if context is not None else field_atoms("ctx", CONTEXT_LEN)
    site = PatchSite(s.id, bits, address, original_template(s), final, ctx, doms, form)
    if form == "undefined":
        sel, off = UNDEFINED_TARGET
        site = PatchSite(s.id, bits, address, site.original,
                         site.instance({"sel": sel, "off": off}).final, ctx, doms, form)
    return site


def policy_for(site: PatchSite, base: Policy) -> Policy:
    """The policy a plan for ``site`` is checked under: the call-gate form declares its gate
    selectors to be call gates (a call through one ignores the offset)."""
    if site.form != "callgate":
        return base
    dom = site.domains["sel"]
    assert dom.values is not None
    gates = tuple(sorted((v, v) for v in dom.values))
    return Policy(base.invalid_ranges, base.invalid_rules, gates, base.int_vectors, base.ud2, base.int3,
                  base.name + "+callgates")


def applicable(shape_id: str, form: str, bitness: int | None = None) -> bool:
    try:
        make_site(shape_id, form, bitness=bitness)
        return True
    except FormError:
        return False


DEFAULT_DOMAINS_TEXT = {
    "sel": RDOS_SELECTORS.text,
    "off": "any 32-bit value",
    "rel": "any 32-bit value",
    "gate": "any",
    "ctx": "any bytes",
}
_ = ANY16  # re-exported for callers building their own domains
