"""Patching up front (``apply``) and undoing it (``unpatch``), all or nothing.

``apply`` runs before the code does, so plain writes suffice: every selected site gets its final
bytes at once, after every one of them was checked to hold the original bytes the table
records. ``unpatch`` puts the original bytes back. Neither writes anything unless every check
passed (``docs/runtime.md``, "apply" and "unpatch").
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

from ..errors import InputError
from ..table.model import PatchTable, TableSite
from .instance import Binder, in_domain, proven_domain
from .memory import ImageMemory, Memory, Placement
from .registry import Registry

# How many differing sites an error message lists before "and N more".
_SHOW = 3


class ImageMismatch(InputError):
    """The image is not the one the table describes (a site's bytes or its identity differ)."""


@dataclass
class ApplyResult:
    """What :func:`apply` did: ``patched`` site indices in table order, counts per final form,
    how many lazy sites it left for the fault handler, and the selected sites it left as stubs
    because the table has no plan for them in any form (``unplanned``)."""

    patched: list[int] = field(default_factory=list)
    forms: Counter[str] = field(default_factory=Counter)
    lazy_left: int = 0
    unplanned: list[int] = field(default_factory=list)

    def summary(self) -> str:
        forms = ", ".join(f"{n} {f}" for f, n in sorted(self.forms.items()))
        text = f"patched {len(self.patched)} sites ({forms or 'none'}); {self.lazy_left} lazy sites left for the fault handler"
        if self.unplanned:
            text += f"; {len(self.unplanned)} sites left as stubs: the table has no plan for them"
        return text


@dataclass
class UnpatchResult:
    """What :func:`unpatch` did: ``restored`` site indices; ``untouched`` sites already held
    their original bytes."""

    restored: list[int] = field(default_factory=list)
    untouched: int = 0

    def summary(self) -> str:
        return f"restored {len(self.restored)} sites; {self.untouched} already held their original bytes"


def selected(table: PatchTable, lazy: bool) -> list[int]:
    """The sites ``apply`` patches: the eager ones, or every site with ``lazy``."""
    if lazy:
        return list(range(len(table.sites)))
    return [i for i, s in enumerate(table.sites) if s.eager]


def verify_identity(table: PatchTable, data: bytes | bytearray, path: str = "<image>") -> None:
    """Raise :class:`ImageMismatch` unless ``data`` is the image the table was built from:
    same file size, same SHA-256 over the code regions' bytes (in region order)."""
    ident = table.identity
    if len(data) != ident.file_size:
        raise ImageMismatch(path, f"is {len(data)} bytes; the table describes a {ident.file_size}-byte image")
    if _code_digest(table, data) != ident.code_sha256:
        raise ImageMismatch(path, "its code differs from the image the table describes (SHA-256 of the code regions)")


def _code_digest(table: PatchTable, data: bytes | bytearray) -> bytes:
    h = hashlib.sha256()
    mv = memoryview(data)
    for r in table.regions:
        h.update(mv[r.file_offset : r.file_offset + r.size])
    return h.digest()


def _where(site: TableSite) -> str:
    return f"site at {site.address:#x} (file offset {site.file_offset:#x}, shape {site.shape})"


def apply(table: PatchTable, memory: Memory, registry: Registry, placement: Placement | None = None,
          lazy: bool = False, path: str = "<image>") -> ApplyResult:
    """Give every eager site (every site with ``lazy``) its final bytes in ``memory``.

    Each site's gate is resolved through ``registry`` and its plan's final template filled (a
    site the table has no plan for in any form is left as it is, and counted);
    every value must lie in the domain the table's plans were proven for, and every site must
    hold exactly its original bytes: otherwise :class:`InputError` (registry) or
    :class:`ImageMismatch` (image) is raised and nothing is written.
    """
    binder = Binder(table, registry, placement)
    todo = selected(table, lazy)
    sites = table.sites
    finals: list[tuple[int, bytes]] = []
    bad: list[str] = []
    nbad = 0
    already = 0
    res = ApplyResult()
    unplanned = res.unplanned
    patched = res.patched
    forms: dict[str, int] = {}
    bind = binder.bind
    fill = binder.fill
    mem_base = binder.placement.memory
    code_base = binder.placement.code
    rbase = [r.address for r in table.regions]
    # An ImageMemory is compared in place (no copy per site); any other memory is read.
    buf = memory.data if isinstance(memory, ImageMemory) else None
    read = memory.read
    for i in todo:
        s = sites[i]
        b = bind(s)
        if b is None:
            unplanned.append(i)
            continue
        t, p = b
        d = s.address - rbase[s.region]
        addr = mem_base[s.region] + d
        fin = fill(s, t, p, code_base[s.region] + d)[0]
        patched.append(i)
        forms[t.form] = forms.get(t.form, 0) + 1
        orig = s.original
        n = len(orig)
        if (buf[addr : addr + n] if buf is not None else read(addr, n)) != orig:
            cur = read(addr, n)
            nbad += 1
            already += cur == fin
            if len(bad) < _SHOW:
                bad.append(f"{_where(s)} holds {cur.hex(' ')}, the table expects {orig.hex(' ')}")
            continue
        finals.append((addr, fin))
    if nbad:
        if already == nbad:
            raise ImageMismatch(path, f"already patched: {nbad} of {len(todo)} sites hold their final bytes "
                                      f"(apply needs the unpatched image; unpatch restores it); nothing written")
        more = f" (and {nbad - len(bad)} more)" if nbad > len(bad) else ""
        raise ImageMismatch(path, f"{nbad} of {len(todo)} sites do not hold the bytes the table records; "
                                  f"nothing written: {'; '.join(bad)}{more}")
    _write_all(memory, finals)
    res.forms.update(forms)
    res.lazy_left = len(sites) - len(todo)
    return res


def _write_all(memory: Memory, writes: list[tuple[int, bytes]]) -> None:
    """Plain writes (no code runs yet, so no plan is needed), each of bytes its caller has
    already read at that address: in place into an image's bytes; else through the memory's
    ``write`` where it has one, or as naturally aligned 8/4/2/1-byte stores."""
    if isinstance(memory, ImageMemory):
        buf = memory.data
        for addr, data in writes:
            buf[addr : addr + len(data)] = data
        return
    write = getattr(memory, "write", None)
    for addr, data in writes:
        if write is not None:
            write(addr, data)
            continue
        pos = 0
        while pos < len(data):
            for n in (8, 4, 2, 1):
                if pos + n <= len(data) and (addr + pos) % n == 0:
                    memory.store(addr + pos, data[pos : pos + n])
                    pos += n
                    break


def apply_image(table: PatchTable, data: bytes | bytearray, registry: Registry, lazy: bool = False,
                path: str = "<image>", without_table: bytes | None = None) -> tuple[bytes, ApplyResult]:
    """:func:`apply` on the bytes of the image file the table was built from: checks the
    table's identity against ``data`` too, and returns the patched bytes (``data`` itself is
    not changed). For an image with the table embedded in it, ``without_table`` is the image
    as it was before (what the identity describes; embedding never moves existing bytes, so
    the code regions must be the same bytes at the same offsets in both)."""
    _check_regions(table, data, path)
    mem = ImageMemory(bytearray(data))
    # The site check comes first for its message; the identity check then covers the rest.
    res = apply(table, mem, registry, Placement.file(table), lazy, path)
    _verify(table, data, path, without_table)
    return bytes(mem.data), res


def _verify(table: PatchTable, data: bytes | bytearray, path: str, without_table: bytes | None) -> None:
    if without_table is None:
        verify_identity(table, data, path)
        return
    verify_identity(table, without_table, path)
    if _code_digest(table, data) != table.identity.code_sha256:
        raise ImageMismatch(path, "its code regions differ from those of the image its embedded table describes")


def site_state(binder: Binder, site: TableSite, cur: bytes, registry: Registry | None) -> str:
    """``original``, ``final`` (bytes a final form of the table can produce, with values in
    the proven domains; exactly the registry's when given) or ``foreign``."""
    if cur == site.original:
        return "original"
    if registry is not None:
        try:
            t = binder.target(site)
            if t is None:
                return "foreign"
            p = binder.plan(site, t)
            d = site.address - binder.table.regions[site.region].address
            code = binder.placement.code[site.region] + d
            vals = binder.values(site, t, p.tpl, code)
        except InputError:
            return "foreign"
        return "final" if p.final.fill(vals) == cur else "foreign"
    for form, comp in binder.finals(site):
        if _matches(binder.table, site, form, comp.const, comp.fills, cur):
            return "final"
    return "foreign"


def _matches(table: PatchTable, site: TableSite, form: str, const: bytes, fills: tuple[tuple[int, str, int], ...],
             cur: bytes) -> bool:
    if len(cur) != len(const):
        return False
    var_pos = {i for i, _, _ in fills}
    if any(cur[i] != const[i] for i in range(len(const)) if i not in var_pos):
        return False
    vals: dict[str, int] = {}
    for i, f, sh in fills:
        vals[f] = vals.get(f, 0) | cur[i] << sh
    if "gate" in vals and vals["gate"] != site.gate:
        return False
    if "sel" in vals:
        sel = vals["sel"]
        # A far final whose selector is the undefined handler's is still a far final.
        if not in_domain(proven_domain(table, form, "sel"), sel) or table.policy.invalid(sel):
            return False
    return True


def unpatch(table: PatchTable, memory: Memory, registry: Registry | None = None, placement: Placement | None = None,
            path: str = "<image>") -> UnpatchResult:
    """Put the original bytes back at every patched site of ``memory``.

    A site must hold its original bytes (left alone) or bytes one of the table's final forms
    produces (with ``registry``: exactly the final bytes it resolves to); anything else (a
    half-patched site, foreign bytes) raises :class:`ImageMismatch` and nothing is written.
    """
    binder = Binder(table, registry, placement)
    res = UnpatchResult()
    bad: list[str] = []
    nbad = 0
    restore: list[tuple[int, bytes]] = []
    mem_base = binder.placement.memory
    for i, s in enumerate(table.sites):
        addr = mem_base[s.region] + (s.address - table.regions[s.region].address)
        cur = memory.read(addr, len(s.original))
        st = site_state(binder, s, cur, registry)
        if st == "original":
            res.untouched += 1
        elif st == "final":
            restore.append((addr, s.original))
            res.restored.append(i)
        else:
            nbad += 1
            if len(bad) < _SHOW:
                what = "the registry's final bytes" if registry is not None else "any final form of the table"
                bad.append(f"{_where(s)} holds {cur.hex(' ')}: neither the original {s.original.hex(' ')} nor {what}")
    if nbad:
        more = f" (and {nbad - len(bad)} more)" if nbad > len(bad) else ""
        raise ImageMismatch(path, f"{nbad} sites hold bytes unpatch cannot restore; nothing written: "
                                  f"{'; '.join(bad)}{more}")
    _write_all(memory, restore)
    return res


def unpatch_image(table: PatchTable, data: bytes | bytearray, registry: Registry | None = None,
                  path: str = "<image>", without_table: bytes | None = None) -> tuple[bytes, UnpatchResult]:
    """:func:`unpatch` on an image file's bytes; the result must be, byte for byte, the image
    the table describes (its identity), or :class:`ImageMismatch` is raised. ``without_table``
    as for :func:`apply_image` (its size is the one the identity records)."""
    _check_regions(table, data, path)
    size = len(data) if without_table is None else len(without_table)
    if size != table.identity.file_size:
        raise ImageMismatch(path, f"is {size} bytes; the table describes a {table.identity.file_size}-byte image")
    mem = ImageMemory(bytearray(data))
    res = unpatch(table, mem, registry, Placement.file(table), path)
    if _code_digest(table, mem.data) != table.identity.code_sha256:
        raise ImageMismatch(path, "with every site restored, its code still differs from the image the table "
                                  "describes (bytes outside the sites changed); nothing written")
    return bytes(mem.data), res


def _check_regions(table: PatchTable, data: bytes | bytearray, path: str) -> None:
    for r in table.regions:
        if r.file_offset + r.size > len(data):
            raise ImageMismatch(path, f"is {len(data)} bytes, too short for the table's region {r.name} "
                                      f"(file offsets {r.file_offset:#x}..{r.file_offset + r.size:#x})")


__all__ = ["ApplyResult", "ImageMismatch", "UnpatchResult", "apply", "apply_image", "selected", "site_state",
           "unpatch", "unpatch_image", "verify_identity"]
