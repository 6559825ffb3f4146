"""Plan builders: the ways people patch stubs today, written down as plans.

``rdos``         the current RDOS kernel (rdos-facts section 6): byte 0 of the call becomes
                 ``CD`` (``INT 67h``/``66h``/``9Ah``: the vector is simply the old byte 1), then
                 the offset dword, the selector word, and ``90`` over byte 0. No syncs.
``thread``       the staged invalid-selector sequences of the forum thread (shared/seed), where
                 the stub's layout is one the thread covers.
``int3-sync``    Linux ``text_poke_bp``: ``INT3`` over the first byte, sync, the other bytes,
                 sync, the first byte, sync.
``single-store`` one store when every changed byte fits one fetch chunk (and one store).
``synthesis``    the search in :mod:`.synth`.

Each builder returns the plan and the final bytes it produces (the ``rdos`` and ``thread``
plans end in their own final encodings, e.g. ``90 67 9A off sel``), or None where it does not
apply.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..catalog import shape as shape_by_id
from .model import LINE, STORE_SIZES, SYNC, Atom, FetchModel, PatchSite, Plan, Step, Write


@dataclass(frozen=True)
class Built:
    """A builder's plan for a site; ``site`` carries the final bytes the plan ends in."""

    site: PatchSite
    plan: Plan


def _store(site: PatchSite, offset: int, data: tuple[Atom, ...], state: tuple[Atom, ...] | None = None) -> list[Write]:
    """Stores that write ``data`` at ``offset``: one store when some 1/2/4/8-byte store inside
    the site covers it without crossing a line (bytes around ``data`` are rewritten with their
    value in ``state``, the site before the store), else the fewest stores, largest first."""
    lo, hi = offset, offset + len(data)
    if state is not None:
        for size in STORE_SIZES:
            if size < hi - lo:
                continue
            for start in sorted(range(hi - size, lo + 1), key=lambda x: ((site.address + x) % size != 0, x)):
                a = site.address + start
                if start < 0 or start + size > site.length or a // LINE != (a + size - 1) // LINE:
                    continue
                block = list(state[start : start + size])
                block[lo - start : hi - start] = data
                return [Write(start, tuple(block))]
    out: list[Write] = []
    pos = 0
    while pos < len(data):
        for size in (8, 4, 2, 1):
            if size <= len(data) - pos:
                a = site.address + offset + pos
                if a // LINE == (a + size - 1) // LINE:
                    out.append(Write(offset + pos, tuple(data[pos : pos + size])))
                    pos += size
                    break
    return out


def _with_final(site: PatchSite, final: tuple[Atom, ...]) -> PatchSite:
    return PatchSite(site.shape, site.bitness, site.address, site.original, final, site.context,
                     site.domains, site.form)


def _fields(site: PatchSite) -> list[tuple[int, int]]:
    """Runs of changed bytes: (offset, length)."""
    runs = []
    start = None
    for i in range(site.length + 1):
        changed = i < site.length and site.original[i] != site.final[i]
        if changed and start is None:
            start = i
        elif not changed and start is not None:
            runs.append((start, i - start))
            start = None
    return runs


def rdos(site: PatchSite, model: FetchModel) -> Built | None:
    """The current kernel's order (trapint.asm / user.asm / os.asm)."""
    s = shape_by_id(site.shape)
    if site.form != "far" or not s.has_selector or s.legacy:
        return None
    c = s.call_at
    if site.original[c + 1] not in (0x66, 0x67, 0x9A):
        return None
    final = list(site.final)
    final[c] = 0x90
    built = _with_final(site, tuple(final))
    off_at = s.gate_at
    steps: list[Step] = [Write(c, (0xCD,))]
    steps += _store(built, off_at, built.final[off_at : off_at + 4])
    steps += _store(built, off_at + 4, built.final[off_at + 4 : off_at + 6])
    steps.append(Write(c, (0x90,)))
    return Built(built, Plan(tuple(steps), "rdos", "CD over byte 0, offset, selector, 90 over byte 0"))


def thread(site: PatchSite, model: FetchModel) -> Built | None:
    """The forum thread's sequences (reply "Patching logic for user/application calls" and the
    later debugger-friendly versions)."""
    s = shape_by_id(site.shape)
    if site.form != "far" or not s.has_selector:
        return None
    fin = site.final
    if not s.legacy:
        # "67 66 9A gg gg 00 00 01 00 -> place offset at 3 -> place selector at 7 -> 90 at 0";
        # the 32-bit form "3E 67 9A" ends with two nops ("place 2 nops at offset 0").
        # Inert prefixes become nops; 66 stays (it makes the offset 32 bits in 16-bit code).
        c = s.call_at
        op = s.opcode_at
        final = list(fin)
        for i in range(c, op):
            if final[i] != 0x66:
                final[i] = 0x90
        built = _with_final(site, tuple(final))
        g = s.gate_at
        steps: list[Step] = []
        steps += _store(built, g, fin[g : g + 4])
        steps += _store(built, g + 4, fin[g + 4 : g + 6])
        steps += _diff_stores(built, fin, tuple(final))
        return Built(built, Plan(tuple(steps), "thread", "offset, selector, nops over the prefixes"))
    if s.id in ("L7P", "L8P"):
        # "9A gg gg 00 00 02 00 90 90 -> 4 cmcs at 5 -> 3E 67 9A at 0 -> offset at 3 ->
        #  selector at 7 -> 2 nops at 0" (32-bit); the 16-bit one adds the 66 prefix.
        wide = s.id == "L8P"
        lead = [0x3E, 0x67, 0x66, 0x9A] if wide else [0x3E, 0x67, 0x9A]
        op = len(lead)
        off = fin[s.gate_at : s.gate_at + 4]
        sel = fin[s.gate_at + 4 : s.gate_at + 6]
        final = tuple([0x90, 0x90] + lead[2:] + list(off) + list(sel))
        if len(final) != site.length:
            return None
        built = _with_final(site, final)
        st0 = list(site.original)
        st1 = st0[: s.gate_at + 4] + [0xF5] * (site.length - s.gate_at - 4)
        st2 = lead + [0x00, 0x00] + st1[op + 2 :]
        st3 = lead + list(off) + st1[op + 4 :]
        st4 = lead + list(off) + list(sel)
        steps = []
        for prev, nxt in ((st0, st1), (st1, st2), (st2, st3), (st3, st4), (st4, list(final))):
            steps += _diff_stores(built, tuple(prev), tuple(nxt))
        return Built(built, Plan(tuple(steps), "thread", "cmcs as an invalid selector, prefixes, offset, selector, nops"))
    return None


def _diff_stores(site: PatchSite, a: tuple[Atom, ...], b: tuple[Atom, ...]) -> list[Write]:
    idx = [i for i in range(len(a)) if a[i] != b[i]]
    if not idx:
        return []
    lo, hi = idx[0], idx[-1] + 1
    return _store(site, lo, b[lo:hi], a)


def int3_sync(site: PatchSite, model: FetchModel) -> Built | None:
    """Linux text_poke_bp: int3, sync, tail, sync, first byte, sync."""
    s = shape_by_id(site.shape)
    c = s.call_at
    runs = _fields(site)
    if not runs:
        return None
    steps: list[Step] = [Write(c, (0xCC,)), SYNC]
    for off, n in runs:
        lo = max(off, c + 1)
        if lo < off + n:
            steps += _store(site, lo, site.final[lo : off + n])
    steps += [SYNC, Write(c, (site.final[c],)), SYNC]
    return Built(site, Plan(tuple(steps), "int3-sync", "breakpoint, sync, body, sync, first byte, sync"))


def single_store(site: PatchSite, model: FetchModel) -> Built | None:
    """One store, when every changed byte lies in one fetch chunk and one 1/2/4/8-byte store."""
    changed = site.changed()
    if not changed:
        return None
    lo, hi = changed[0], changed[-1] + 1
    c = model.chunk
    A = site.address
    if (A + lo) // c != (A + hi - 1) // c:
        return None
    for size in STORE_SIZES:
        if size < hi - lo:
            continue
        # Prefer an aligned store, inside the site, one chunk and one line.
        for start in sorted(range(hi - size, lo + 1), key=lambda x: ((A + x) % size != 0, x)):
            if start < 0 or start + size > site.length:
                continue
            a = A + start
            if a // LINE != (a + size - 1) // LINE:
                continue
            return Built(site, Plan((Write(start, site.final[start : start + size]),), "single-store",
                                    f"one {size}-byte store"))
    return None


BUILDERS: dict[str, Callable[[PatchSite, FetchModel], Built | None]] = {
    "rdos": rdos,
    "thread": thread,
    "int3-sync": int3_sync,
    "single-store": single_store,
}
