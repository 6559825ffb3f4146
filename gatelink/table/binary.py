"""The binary patch table: :func:`write_table` and :func:`read_table` (``docs/table-format.md``
is the byte-level specification; the constants below are its tables).

The reader treats a table as hostile input: every count, offset, index and reference is
bounded before use, every malformation is a :class:`TableError` (exit 3) with a one-line
message, and a table is accepted only if it is exactly the bytes :func:`write_table` gives for
what was read (so reading and writing round-trip exactly, both ways).
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterable

from ..catalog import SHAPES
from ..errors import InputError
from ..plan.model import (
    Domain,
    FetchModel,
    Order,
    Policy,
    SelectorRule,
    is_var,
    var,
    var_field,
    var_index,
)
from .model import (
    FLAG_EAGER,
    FLAG_LAZY,
    FLAG_NEEDS_SYNC,
    FLAG_PADDED,
    FORMAT_VERSION,
    TABLE_FORMS,
    BuildInfo,
    Identity,
    PatchTable,
    PlanStep,
    PlanTemplate,
    TableRegion,
    TableSite,
)

MAGIC = b"GLTB"
HEADER_SIZE = 160
REGION_SIZE = 32
SITE_SIZE = 64
PLAN_SIZE = 48
STEP_SIZE = 24
DOMAIN_SIZE = 24
RANGE_SIZE = 12
MAX_SLOTS = 4
MAX_SITE_LEN = 16
MAX_STEP_WIDTH = 8
NO_PLAN = 0xFFFF
NO_SYNCS = 0xFF
NO_SELECTOR = 0xFFFFFFFF

MAX_TOTAL = 1 << 30
MAX_REGIONS = 1 << 16
MAX_SITES = 1 << 24
MAX_PLANS = 65534
MAX_STEPS = 1 << 20
MAX_DOMAINS = 64
MAX_RANGES = 1 << 16
MAX_STRINGS = 1 << 20
MAX_BUILD = 1 << 16
MAX_NAME = 255
MAX_POLICY_ITEMS = 256
MAX_DOMAIN_VALUES = 1 << 17  # over all listed domains (the defaults list 896)

IMAGE_FORMATS = {"pe32": 1, "pe32+": 2, "rdv16": 3, "rdv32": 4, "bootimg": 5, "raw16": 6, "raw32": 7}
IMAGE_FORMAT_NAMES = {v: k for k, v in IMAGE_FORMATS.items()}
FLAT_FORMATS = ("pe32", "pe32+", "raw16", "raw32")
FORM_CODES = {f: i for i, f in enumerate(TABLE_FORMS)}  # far 0, callgate 1, near 2, pushcs 3
SHAPE_CODES = {s.id: i for i, s in enumerate(SHAPES)}
SHAPE_IDS = {i: s.id for i, s in enumerate(SHAPES)}
SHAPE_LENGTHS = {s.id: s.length for s in SHAPES}
GATE_KINDS = {None: 0, "os": 1, "user": 2, "server": 3}
GATE_KIND_NAMES = {v: k for k, v in GATE_KINDS.items()}
CONFIDENCES = {"certain": 0, "likely": 1}
CONFIDENCE_NAMES = {v: k for k, v in CONFIDENCES.items()}
ORDERS = {Order.ARBITRARY: 0, Order.MONOTONE: 1}
ORDER_NAMES = {v: k for k, v in ORDERS.items()}
CHUNKS = (1, 2, 4, 8, 16, 32, 64)
# Atom kinds: 1..3 are filled from the resolved target (and have domains); 4 is the site's own
# gate number, unchanged bytes a wider store rewrites with the value they already hold.
FIELD_CODES = {"off": 1, "sel": 2, "rel": 3, "gate": 4}
FIELD_NAMES = {v: k for k, v in FIELD_CODES.items()}
FIELD_SIZES = {"off": 4, "sel": 2, "rel": 4}  # fields with a domain
FIELD_BYTES = {"off": 4, "sel": 2, "rel": 4, "gate": 4}  # valid byte indices per field
FLAG_BITS = FLAG_EAGER | FLAG_LAZY | FLAG_NEEDS_SYNC | FLAG_PADDED
BUILD_KEYS = ("eager", "gatelink", "gates", "layout_sha256")
EAGER_NAMES = ("certain", "all", "none")

_HEADER = struct.Struct("<4sHHII4B4sQ32s6I6I6I24s")
_REGION = struct.Struct("<QIIIIB7s")
_SITE = struct.Struct("<QIIIIBBBBB3s16s4H4B4s")
_PLAN = struct.Struct("<BBBBBBBBIH2s32s")
_STEP = struct.Struct("<BBBB16s4s")
_DOMAIN = struct.Struct("<BBBBIIII4s")
_RANGE = struct.Struct("<III")
_POLICY = struct.Struct("<IIBBHHHHH")
assert _HEADER.size == HEADER_SIZE and _REGION.size == REGION_SIZE and _SITE.size == SITE_SIZE
assert _PLAN.size == PLAN_SIZE and _STEP.size == STEP_SIZE and _DOMAIN.size == DOMAIN_SIZE
assert _POLICY.size == 20


class TableError(InputError):
    """A patch table that cannot be read: truncated, corrupt, inconsistent or hostile (exit 3)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(path, f"bad patch table: {problem}")


# ---------------------------------------------------------------------------------------------
# Atoms


def encode_atom(a: int) -> int:
    """A plan atom as the table's u16: constant ``0x00NN``, else ``kind << 8 | byte index``."""
    if not is_var(a):
        if not 0 <= a <= 0xFF:
            raise ValueError(f"atom {a} is not a byte")
        return a
    f = var_field(a)
    if f not in FIELD_CODES:
        raise ValueError(f"template field {f!r} cannot be filled at patch time")
    i = var_index(a)
    if i >= FIELD_BYTES[f]:
        raise ValueError(f"byte {i} of the {FIELD_SIZES[f]}-byte field {f}")
    return FIELD_CODES[f] << 8 | i


def decode_atom(u: int) -> int | None:
    """The plan atom of a u16, or None when it is not a valid atom."""
    kind, value = u >> 8, u & 0xFF
    if kind == 0:
        return value
    f = FIELD_NAMES.get(kind)
    if f is None or value >= FIELD_BYTES[f]:
        return None
    return var(f, value)


def _decode_atoms(units: tuple[int, ...], n: int, byte: str, past: str) -> tuple[int, ...]:
    """The atoms of the first ``n`` u16 ``units`` (the rest must be zero); ValueError names the
    first unit that is wrong (``byte`` and ``past`` word the message)."""
    atoms = []
    for j, u in enumerate(units[:n]):
        a = decode_atom(u)
        if a is None:
            raise ValueError(f"{byte} {j} is not a valid atom ({u:#06x})")
        atoms.append(a)
    if any(units[n:]):
        raise ValueError(f"{past} not zero")
    return tuple(atoms)


def _atoms_bytes(atoms: Iterable[int], slots: int) -> bytes:
    enc = [encode_atom(a) for a in atoms]
    if len(enc) > slots:
        raise ValueError(f"{len(enc)} atoms, room for {slots}")
    return struct.pack(f"<{slots}H", *(enc + [0] * (slots - len(enc))))


# ---------------------------------------------------------------------------------------------
# Writing


def _progressions(values: Iterable[int]) -> list[tuple[int, int, int]]:
    """A set of values as increasing arithmetic progressions (lo, hi, step), greedily."""
    vs = sorted(set(values))
    out: list[tuple[int, int, int]] = []
    i = 0
    while i < len(vs):
        lo = vs[i]
        if i + 1 == len(vs):
            out.append((lo, lo, 1))
            break
        step = vs[i + 1] - lo
        j = i + 1
        while j + 1 < len(vs) and vs[j + 1] - vs[j] == step:
            j += 1
        out.append((lo, vs[j], step))
        i = j + 1
    return out


class _Strings:
    def __init__(self) -> None:
        self.buf = bytearray()
        self.index: dict[str, int] = {}

    def add(self, s: str) -> tuple[int, int]:
        raw = s.encode("utf-8")
        if len(raw) > MAX_NAME:
            raise ValueError(f"string of {len(raw)} bytes (at most {MAX_NAME}): {s[:40]!r}")
        off = self.index.get(s)
        if off is None:
            off = self.index[s] = len(self.buf)
            self.buf += raw + b"\0"
        return off, len(raw)


def _slot_domains(table: PatchTable) -> list[tuple[int, str, Domain]]:
    out = []
    for slot, form in enumerate(table.forms):
        doms = table.domains_of(form)
        for f in sorted(doms, key=lambda k: FIELD_CODES.get(k, 99)):
            if f not in FIELD_SIZES:
                raise ValueError(f"domain of field {f!r}: only off, sel and rel are filled at patch time")
            out.append((slot, f, doms[f]))
    return out


def _pad8(buf: bytearray) -> None:
    buf += bytes(-len(buf) % 8)


def build_info_bytes(b: BuildInfo) -> bytes:
    return json.dumps(b.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def write_table(table: PatchTable) -> bytes:
    """The binary encoding of ``table`` (deterministic). Raises ValueError when the table
    cannot be encoded (too many entries, a field out of range)."""
    if table.version != FORMAT_VERSION:
        raise ValueError(f"can only write format version {FORMAT_VERSION}")
    forms = tuple(table.forms)
    if not 1 <= len(forms) <= MAX_SLOTS or len(set(forms)) != len(forms) or any(f not in FORM_CODES for f in forms):
        raise ValueError(f"forms must be 1..4 distinct of {', '.join(TABLE_FORMS)}: {forms}")
    if table.image_format not in IMAGE_FORMATS:
        raise ValueError(f"unknown image format {table.image_format!r}")
    if len(table.regions) > MAX_REGIONS or len(table.sites) > MAX_SITES or len(table.plans) > MAX_PLANS:
        raise ValueError("too many regions, sites or plans for the table format")
    strings = _Strings()
    body = bytearray()

    # regions
    regions_off = HEADER_SIZE
    for r in table.regions:
        no, nl = strings.add(r.name)
        body += _REGION.pack(r.address, r.file_offset, r.size, no, nl, r.bitness, bytes(7))
    # sites
    _pad8(body)
    sites_off = HEADER_SIZE + len(body)
    plans = table.plans
    psyncs = [p.syncs for p in plans]
    for s in table.sites:
        if len(s.plans) != len(forms):
            raise ValueError(f"site {s.address:#x} has {len(s.plans)} plan slots for {len(forms)} forms")
        idx = [NO_PLAN if p is None else p for p in s.plans] + [NO_PLAN] * (MAX_SLOTS - len(forms))
        syn = [NO_SYNCS if p is None else psyncs[p] for p in s.plans] + [NO_SYNCS] * (MAX_SLOTS - len(forms))
        if len(s.original) > MAX_SITE_LEN:
            raise ValueError(f"site {s.address:#x} is {len(s.original)} bytes long")
        body += _SITE.pack(
            s.address, s.file_offset, s.region, s.gate, NO_SELECTOR if s.selector is None else s.selector,
            len(s.original), SHAPE_CODES[s.shape], GATE_KINDS[s.gate_kind], CONFIDENCES[s.confidence], s.flags,
            bytes(3), s.original.ljust(MAX_SITE_LEN, b"\0"), *idx, *syn, bytes(4))
    # plans
    _pad8(body)
    plans_off = HEADER_SIZE + len(body)
    first = 0
    for p in plans:
        body += _PLAN.pack(SHAPE_CODES[p.shape], FORM_CODES[p.form], p.bitness, p.length, p.resume,
                           p.rel_end or 0, p.syncs, p.writes, first, len(p.steps), bytes(2),
                           _atoms_bytes(p.final, MAX_SITE_LEN))
        first += len(p.steps)
    if first > MAX_STEPS:
        raise ValueError(f"{first} steps, the format holds {MAX_STEPS}")
    # steps
    _pad8(body)
    steps_off = HEADER_SIZE + len(body)
    for p in plans:
        for st in p.steps:
            if st.is_sync:
                body += _STEP.pack(1, 0, 0, 0, bytes(16), bytes(4))
            else:
                body += _STEP.pack(0, st.offset, st.width, 0, _atoms_bytes(st.data, MAX_STEP_WIDTH), bytes(4))
    # domains and ranges
    _pad8(body)
    domains_off = HEADER_SIZE + len(body)
    doms = _slot_domains(table)
    if len(doms) > MAX_DOMAINS:
        raise ValueError(f"{len(doms)} domains, the format holds {MAX_DOMAINS}")
    ranges: list[tuple[int, int, int]] = []
    for slot, f, d in doms:
        to, tl = strings.add(d.text)
        if d.values is None:
            body += _DOMAIN.pack(slot, FIELD_CODES[f], d.size, 0, 0, 0, to, tl, bytes(4))
        else:
            prog = _progressions(d.values)
            if not prog:
                raise ValueError(f"empty domain for {f}")
            body += _DOMAIN.pack(slot, FIELD_CODES[f], d.size, 1, len(ranges), len(prog), to, tl, bytes(4))
            ranges += prog
    if len(ranges) > MAX_RANGES:
        raise ValueError("domains too fragmented for the table format")
    _pad8(body)
    ranges_off = HEADER_SIZE + len(body)
    for lo, hi, step in ranges:
        body += _RANGE.pack(lo, hi, step)
    # policy
    _pad8(body)
    policy_off = HEADER_SIZE + len(body)
    pol = table.policy
    no, nl = strings.add(pol.name)
    items = (pol.invalid_ranges, pol.invalid_rules, pol.call_gates, pol.int_vectors)
    if any(len(x) > MAX_POLICY_ITEMS for x in items):
        raise ValueError("policy has too many entries for the table format")
    pbuf = bytearray(_POLICY.pack(no, nl, int(pol.ud2), int(pol.int3), len(pol.invalid_ranges),
                                  len(pol.invalid_rules), len(pol.call_gates), len(pol.int_vectors), 0))
    for lo, hi in pol.invalid_ranges:
        pbuf += struct.pack("<HH", lo, hi)
    for rule in pol.invalid_rules:
        mask = ((rule.ti is not None) | (rule.rpl is not None) << 1 | (rule.min_index is not None) << 2
                | (rule.max_index is not None) << 3)
        pbuf += struct.pack("<BBBBHH", mask, rule.ti or 0, rule.rpl or 0, 0, rule.min_index or 0, rule.max_index or 0)
    for lo, hi in pol.call_gates:
        pbuf += struct.pack("<HH", lo, hi)
    pbuf += bytes(pol.int_vectors)
    body += pbuf
    policy_size = len(pbuf)
    # strings
    _pad8(body)
    strings_off = HEADER_SIZE + len(body)
    if len(strings.buf) > MAX_STRINGS:
        raise ValueError("string pool too large")
    body += strings.buf
    # build info
    _pad8(body)
    build_off = HEADER_SIZE + len(body)
    binfo = build_info_bytes(table.build)
    if not 1 <= len(binfo) <= MAX_BUILD:
        raise ValueError("build info too large")
    body += binfo
    total = HEADER_SIZE + len(body)
    if total > MAX_TOTAL:
        raise ValueError("table larger than the format's 1 GiB")
    if len(table.identity.code_sha256) != 32:
        raise ValueError("identity code_sha256 must be 32 bytes")
    slots = bytes(FORM_CODES[f] for f in forms) + b"\xff" * (MAX_SLOTS - len(forms))
    header = _HEADER.pack(
        MAGIC, FORMAT_VERSION, HEADER_SIZE, total, 0,
        IMAGE_FORMATS[table.image_format], table.model.chunk, ORDERS[table.model.order], len(forms), slots,
        table.identity.file_size, table.identity.code_sha256,
        len(table.regions), len(table.sites), len(plans), first, len(doms), len(ranges),
        regions_off, sites_off, plans_off, steps_off, domains_off, ranges_off,
        policy_off, policy_size, strings_off, len(strings.buf), build_off, len(binfo), bytes(24))
    out = bytearray(header) + body
    struct.pack_into("<I", out, 12, zlib.crc32(out))
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# Reading


def is_table(data: bytes) -> bool:
    """Does ``data`` start with a patch table's magic?"""
    return data[:4] == MAGIC


def table_size(data: bytes) -> int | None:
    """``total_size`` from a table's header, or None when ``data`` has no table header."""
    if len(data) < 12 or data[:4] != MAGIC:
        return None
    return int(struct.unpack_from("<I", data, 8)[0])


def read_table(data: bytes | bytearray | memoryview, path: str = "<table>") -> PatchTable:
    """Parse and validate a binary table (``docs/table-format.md``, "What a loader must
    validate", plus the consistency checks listed there). Raises :class:`TableError`."""
    data = bytes(data)
    try:
        table = _read(data, path)
    except TableError:
        raise
    except (struct.error, ValueError, KeyError, IndexError, OverflowError, UnicodeDecodeError, TypeError,
            AttributeError, RecursionError) as e:
        # Every check above should have caught it first; never let a malformation escape as a
        # traceback.
        raise TableError(path, f"malformed ({type(e).__name__}: {e})") from None
    try:
        again = write_table(table)
    except ValueError as e:
        raise TableError(path, f"cannot be re-encoded: {e}") from None
    if again != data:
        pos = next((i for i, (a, b) in enumerate(zip(again, data)) if a != b), min(len(again), len(data)))
        raise TableError(path, f"not in canonical form (first difference at byte {pos:#x}): "
                               "reserved bytes, padding or section order differ from the specification")
    return table


def _read(data: bytes, path: str) -> PatchTable:
    def bad(msg: str) -> TableError:
        return TableError(path, msg)

    n = len(data)
    if n < HEADER_SIZE:
        if n >= 4 and data[:4] != MAGIC:
            raise bad("no GLTB magic (not a gatelink patch table)")
        raise bad(f"truncated: {n} bytes, the header alone is {HEADER_SIZE}")
    (magic, version, hsize, total, crc, fmt, chunk, order, nforms, slots, file_size, code_sha,
     nreg, nsite, nplan, nstep, ndom, nrange,
     reg_off, site_off, plan_off, step_off, dom_off, range_off,
     pol_off, pol_size, str_off, str_size, build_off, build_size, reserved) = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise bad("no GLTB magic (not a gatelink patch table)")
    if version != FORMAT_VERSION:
        raise bad(f"format version {version}, this gatelink reads version {FORMAT_VERSION}")
    if hsize != HEADER_SIZE:
        raise bad(f"header_size {hsize}, expected {HEADER_SIZE}")
    if total < HEADER_SIZE or total > MAX_TOTAL:
        raise bad(f"total_size {total} out of range")
    if total != n:
        raise bad(f"total_size says {total} bytes, {n} given" + (" (truncated)" if total > n else " (trailing bytes)"))
    got = zlib.crc32(data[:12] + b"\0\0\0\0" + data[16:])
    if got != crc:
        raise bad(f"CRC32 mismatch: stored {crc:#010x}, computed {got:#010x} (corrupted)")
    if fmt not in IMAGE_FORMAT_NAMES:
        raise bad(f"unknown image format code {fmt}")
    if chunk not in CHUNKS:
        raise bad(f"model chunk {chunk} is not one of {CHUNKS}")
    if order not in ORDER_NAMES:
        raise bad(f"model order code {order} unknown")
    if not 1 <= nforms <= MAX_SLOTS:
        raise bad(f"form_count {nforms} not in 1..4")
    forms = []
    for k in range(MAX_SLOTS):
        c = slots[k]
        if k < nforms:
            if c not in range(len(TABLE_FORMS)):
                raise bad(f"form slot {k}: unknown form code {c}")
            forms.append(TABLE_FORMS[c])
        elif c != 0xFF:
            raise bad(f"unused form slot {k} holds {c}, not 0xFF")
    if len(set(forms)) != len(forms):
        raise bad("a form appears in two slots")
    for what, count, limit in (("region_count", nreg, MAX_REGIONS), ("site_count", nsite, MAX_SITES),
                               ("plan_count", nplan, MAX_PLANS), ("step_count", nstep, MAX_STEPS),
                               ("domain_count", ndom, MAX_DOMAINS), ("range_count", nrange, MAX_RANGES),
                               ("strings_size", str_size, MAX_STRINGS), ("build_size", build_size, MAX_BUILD)):
        if count > limit:
            raise bad(f"{what} {count} exceeds the limit {limit}")
    spans = []
    for what, off, size, align in (
        ("regions", reg_off, nreg * REGION_SIZE, 8), ("sites", site_off, nsite * SITE_SIZE, 8),
        ("plans", plan_off, nplan * PLAN_SIZE, 8), ("steps", step_off, nstep * STEP_SIZE, 8),
        ("domains", dom_off, ndom * DOMAIN_SIZE, 8), ("ranges", range_off, nrange * RANGE_SIZE, 8),
        ("policy", pol_off, pol_size, 8), ("strings", str_off, str_size, 8), ("build info", build_off, build_size, 8),
    ):
        if off % align:
            raise bad(f"{what} offset {off:#x} is not {align}-byte aligned")
        if off < HEADER_SIZE or off + size > total:
            raise bad(f"{what} section [{off:#x}, {off + size:#x}) lies outside the table's {total} bytes")
        spans.append((off, off + size, what))
    spans.sort()
    for (a0, a1, an), (b0, b1, bn) in zip(spans, spans[1:]):
        if b0 < a1 and a1 > a0 and b1 > b0:
            raise bad(f"sections {an} and {bn} overlap")
    if build_size < 1:
        raise bad("build info is empty")

    strings = data[str_off : str_off + str_size]

    def string(off: int, ln: int, what: str) -> str:
        if ln > MAX_NAME or off + ln >= str_size or strings[off + ln] != 0:
            raise bad(f"{what}: string reference ({off}, {ln}) outside the string pool or not NUL-terminated")
        try:
            return strings[off : off + ln].decode("utf-8")
        except UnicodeDecodeError:
            raise bad(f"{what}: string is not UTF-8") from None

    # regions
    regions = []
    image_format = IMAGE_FORMAT_NAMES[fmt]
    names = set()
    for i in range(nreg):
        addr, foff, size, no, nl, bits, res = _REGION.unpack_from(data, reg_off + i * REGION_SIZE)
        if any(res):
            raise bad(f"region {i}: reserved bytes are not zero")
        if bits not in (16, 32, 64):
            raise bad(f"region {i}: bitness {bits}")
        if foff + size > file_size:
            raise bad(f"region {i}: file bytes [{foff:#x}, {foff + size:#x}) lie outside the {file_size}-byte image")
        if addr + size > 1 << 64:
            raise bad(f"region {i}: addresses wrap around")
        name = string(no, nl, f"region {i} name")
        if name in names:
            raise bad(f"region {i}: duplicate name {name!r}")
        names.add(name)
        regions.append(TableRegion(name, addr, foff, size, bits))
    if image_format in FLAT_FORMATS:
        spans_a = sorted((r.address, r.address + r.size, i) for i, r in enumerate(regions) if r.size)
        for (a0, a1, ai), (b0, b1, bi) in zip(spans_a, spans_a[1:]):
            if b0 < a1:
                raise bad(f"regions {ai} and {bi} overlap in a flat image's address space")

    # steps
    step_list: list[PlanStep] = []
    for i in range(nstep):
        kind, off, width, res1, raw, res2 = _STEP.unpack_from(data, step_off + i * STEP_SIZE)
        if res1 or any(res2):
            raise bad(f"step {i}: reserved bytes are not zero")
        if kind == 1:
            if off or width or any(raw):
                raise bad(f"step {i}: a sync step has an offset, width or data")
            step_list.append(PlanStep(0, ()))
        elif kind == 0:
            if width not in (1, 2, 4, 8):
                raise bad(f"step {i}: write width {width} is not 1, 2, 4 or 8")
            try:
                atoms = _decode_atoms(struct.unpack_from("<8H", raw), width, "data byte", "data past its width is")
            except ValueError as e:
                raise bad(f"step {i}: {e}") from None
            step_list.append(PlanStep(off, atoms))
        else:
            raise bad(f"step {i}: unknown kind {kind}")

    # domains
    ranges_raw = [_RANGE.unpack_from(data, range_off + i * RANGE_SIZE) for i in range(nrange)]
    slot_domains: dict[int, dict[str, Domain]] = {}
    prev: tuple[int, int] | None = None
    next_range = 0
    total_values = 0
    for i in range(ndom):
        slot, fcode, size, kind, first, count, to, tl, res = _DOMAIN.unpack_from(data, dom_off + i * DOMAIN_SIZE)
        if any(res):
            raise bad(f"domain {i}: reserved bytes are not zero")
        if slot >= nforms:
            raise bad(f"domain {i}: form slot {slot} >= form_count {nforms}")
        f = FIELD_NAMES.get(fcode)
        if f is None or f not in FIELD_SIZES:
            raise bad(f"domain {i}: unknown field code {fcode}")
        if size != FIELD_SIZES[f]:
            raise bad(f"domain {i}: field {f} has size {size}, not {FIELD_SIZES[f]}")
        if prev is not None and (slot, fcode) <= prev:
            raise bad(f"domain {i}: not sorted by (form slot, field) or a duplicate")
        prev = (slot, fcode)
        text = string(to, tl, f"domain {i} text")
        if kind == 0:
            if first or count:
                raise bad(f"domain {i}: an any-value domain lists ranges")
            dom = Domain(size, None, text)
        elif kind == 1:
            if count < 1 or first != next_range or first + count > nrange:
                raise bad(f"domain {i}: ranges [{first}, {first + count}) out of order or outside the {nrange} ranges")
            next_range = first + count
            vals: list[int] = []
            last_hi = -1
            for lo, hi, step in ranges_raw[first : first + count]:
                if step < 1 or lo > hi or (hi - lo) % step or hi >= 1 << (8 * size) or lo <= last_hi:
                    raise bad(f"domain {i}: malformed range ({lo:#x}, {hi:#x}, step {step})")
                total_values += (hi - lo) // step + 1
                if total_values > MAX_DOMAIN_VALUES:
                    raise bad(f"domains list more than {MAX_DOMAIN_VALUES} values")
                vals.extend(range(lo, hi + 1, step))
                last_hi = hi
            dom = Domain(size, frozenset(vals), text)
        else:
            raise bad(f"domain {i}: unknown kind {kind}")
        slot_domains.setdefault(slot, {})[f] = dom
    if next_range != nrange:
        raise bad(f"ranges {next_range}..{nrange - 1} belong to no domain")

    # plans
    plans = []
    plan_slots: list[int] = []
    expect_first = 0
    for i in range(nplan):
        (shape_c, form_c, bits, length, resume, rel_end, syncs, writes, first, count, res,
         raw) = _PLAN.unpack_from(data, plan_off + i * PLAN_SIZE)
        where = f"plan {i}"
        if any(res):
            raise bad(f"{where}: reserved bytes are not zero")
        shape = SHAPE_IDS.get(shape_c)
        if shape is None:
            raise bad(f"{where}: unknown shape code {shape_c}")
        if form_c >= len(TABLE_FORMS):
            raise bad(f"{where}: unknown form code {form_c}")
        form = TABLE_FORMS[form_c]
        if form not in forms:
            raise bad(f"{where}: form {form} is not one of the table's forms")
        if bits not in (16, 32):
            raise bad(f"{where}: bitness {bits}")
        if length != SHAPE_LENGTHS[shape]:
            raise bad(f"{where}: length {length}, shape {shape} is {SHAPE_LENGTHS[shape]} bytes")
        if resume >= length:
            raise bad(f"{where}: resume point {resume} outside the {length}-byte site")
        if first != expect_first or count < 1 or first + count > nstep:
            raise bad(f"{where}: steps [{first}, {first + count}) do not follow the previous plan's or leave the {nstep} steps")
        expect_first = first + count
        steps = tuple(step_list[first : first + count])
        if sum(1 for s in steps if s.is_sync) != syncs or sum(1 for s in steps if not s.is_sync) != writes:
            raise bad(f"{where}: syncs {syncs} / writes {writes} do not match its steps")
        if syncs > 3 or writes < 1:
            raise bad(f"{where}: {syncs} syncs and {writes} writes")
        try:
            final = _decode_atoms(struct.unpack_from("<16H", raw), length, "final byte", "final bytes past its length are")
        except ValueError as e:
            raise bad(f"{where}: {e}") from None
        last: dict[int, int] = {}
        for k, st in enumerate(steps):
            if st.is_sync:
                continue
            if st.offset + st.width > length:
                raise bad(f"{where}: step {k} writes bytes {st.offset}..{st.offset + st.width - 1} of a {length}-byte site")
            for j, a in enumerate(st.data):
                last[st.offset + j] = a
        for j, a in enumerate(final):
            if j in last and last[j] != a:
                raise bad(f"{where}: its writes leave byte {j} different from the final template")
            if j not in last and is_var(a) and var_field(a) != "gate":
                raise bad(f"{where}: final byte {j} is a target byte no step writes")
        fields = {var_field(a) for a in final if is_var(a)} - {"gate"}
        for k, st in enumerate(steps):
            for a in st.data:
                # A step writes the final value of a target byte (or a constant): a field the
                # final template does not hold has no value to fill at patch time.
                if is_var(a) and var_field(a) != "gate" and var_field(a) not in fields:
                    raise bad(f"{where}: step {k} writes field {var_field(a)}, which its final template does not hold")
        slot = forms.index(form)
        for f in sorted(fields):
            if f not in slot_domains.get(slot, {}):
                raise bad(f"{where}: uses field {f} but form {form} has no domain for it")
        uses_rel = "rel" in fields
        if uses_rel != (rel_end != 0) or rel_end > length:
            raise bad(f"{where}: rel_end {rel_end} does not fit its template")
        plans.append(PlanTemplate(shape, form, bits, tuple(final), steps, resume, rel_end or None))
        plan_slots.append(slot)
    if expect_first != nstep:
        raise bad(f"steps {expect_first}..{nstep - 1} belong to no plan")

    # sites
    sites = []
    prev_key: tuple[int, int, int] | None = None  # region, address, end
    unwritten: list[list[tuple[int, int]]] = []
    psyncs = [p.syncs for p in plans]
    for p in plans:
        written = {st.offset + j for st in p.steps for j in range(st.width)}
        unwritten.append([(j, a) for j, a in enumerate(p.final) if j not in written])
    for i in range(nsite):
        (addr, foff, reg, gate, sel, length, shape_c, kind_c, conf_c, flags, res1, orig, p0, p1, p2, p3,
         s0, s1, s2, s3, res2) = _SITE.unpack_from(data, site_off + i * SITE_SIZE)
        where = f"site {i}"
        if any(res1) or any(res2):
            raise bad(f"{where}: reserved bytes are not zero")
        if reg >= nreg:
            raise bad(f"{where}: region {reg} >= region_count {nreg}")
        r = regions[reg]
        if not 1 <= length <= MAX_SITE_LEN:
            raise bad(f"{where}: length {length}")
        if addr < r.address or addr + length > r.address + r.size:
            raise bad(f"{where}: [{addr:#x}, {addr + length:#x}) lies outside region {r.name}")
        if foff != r.file_offset + (addr - r.address):
            raise bad(f"{where}: file offset {foff:#x} does not match its address {addr:#x} in region {r.name}")
        if prev_key is not None:
            pr, pa, pe = prev_key
            if (reg, addr) <= (pr, pa):
                raise bad(f"{where}: not sorted by (region, address) or a duplicate")
            if reg == pr and addr < pe:
                raise bad(f"{where}: overlaps the previous site (ends at {pe:#x})")
        prev_key = (reg, addr, addr + length)
        shape = SHAPE_IDS.get(shape_c)
        if shape is None:
            raise bad(f"{where}: unknown shape code {shape_c}")
        if length != SHAPE_LENGTHS[shape]:
            raise bad(f"{where}: length {length}, shape {shape} is {SHAPE_LENGTHS[shape]} bytes")
        if kind_c not in GATE_KIND_NAMES:
            raise bad(f"{where}: unknown gate kind code {kind_c}")
        if conf_c not in CONFIDENCE_NAMES:
            raise bad(f"{where}: unknown confidence code {conf_c}")
        if sel != NO_SELECTOR and sel > 0xFFFF:
            raise bad(f"{where}: selector {sel:#x} is not 16-bit")
        if flags & ~FLAG_BITS:
            raise bad(f"{where}: unknown flag bits {flags:#x}")
        if bool(flags & FLAG_EAGER) == bool(flags & FLAG_LAZY):
            raise bad(f"{where}: exactly one of EAGER and LAZY must be set (flags {flags:#x})")
        if any(orig[length:]):
            raise bad(f"{where}: original bytes past its length are not zero")
        idx = (p0, p1, p2, p3)
        syn = (s0, s1, s2, s3)
        site_plans: list[int | None] = []
        needs_sync = False
        for k in range(MAX_SLOTS):
            pi, sy = idx[k], syn[k]
            if k >= nforms or pi == NO_PLAN:
                if pi != NO_PLAN or sy != NO_SYNCS:
                    raise bad(f"{where}: form slot {k} has no plan but plan {pi} / syncs {sy}")
                if k < nforms:
                    site_plans.append(None)
                continue
            if pi >= nplan:
                raise bad(f"{where}: plan index {pi} >= plan_count {nplan}")
            p = plans[pi]
            if plan_slots[pi] != k:
                raise bad(f"{where}: form slot {k} ({forms[k]}) points to a {p.form} plan")
            if p.shape != shape or p.length != length or p.bitness != r.bitness:
                raise bad(f"{where}: plan {pi} is for a {p.bitness}-bit {p.shape} site, not this {r.bitness}-bit {shape}")
            if sy != psyncs[pi]:
                raise bad(f"{where}: syncs {sy} for form {forms[k]}, its plan has {psyncs[pi]}")
            for j, a in unwritten[pi]:
                b = (gate >> 8 * var_index(a)) & 0xFF if is_var(a) else a
                if b != orig[j]:
                    raise bad(f"{where}: plan {pi} leaves byte {j} at {b:#04x}, the site holds {orig[j]:#04x}")
            needs_sync |= psyncs[pi] > 0
            site_plans.append(pi)
        if bool(flags & FLAG_NEEDS_SYNC) != needs_sync:
            raise bad(f"{where}: NEEDS_SYNC flag does not match its plans' syncs")
        sites.append(TableSite(reg, addr, foff, shape, gate, GATE_KIND_NAMES[kind_c],
                               None if sel == NO_SELECTOR else sel, CONFIDENCE_NAMES[conf_c], flags,
                               bytes(orig[:length]), tuple(site_plans)))

    # policy
    if pol_size < 20:
        raise bad(f"policy record of {pol_size} bytes, at least 20")
    no, nl, ud2, int3, ninv, nrule, ngate, nvec, res = _POLICY.unpack_from(data, pol_off)
    if res or ud2 > 1 or int3 > 1:
        raise bad("policy: reserved bytes or ud2/int3 flags out of range")
    if max(ninv, nrule, ngate, nvec) > MAX_POLICY_ITEMS:
        raise bad("policy: too many entries")
    if pol_size != 20 + 4 * ninv + 8 * nrule + 4 * ngate + nvec:
        raise bad(f"policy: size {pol_size} does not match its counts")
    pos = pol_off + 20
    inv = []
    for _ in range(ninv):
        lo, hi = struct.unpack_from("<HH", data, pos)
        pos += 4
        if lo > hi:
            raise bad(f"policy: invalid-selector range {lo:#x}..{hi:#x} is empty")
        inv.append((lo, hi))
    rules = []
    for _ in range(nrule):
        mask, ti, rpl, r0, mn, mx = struct.unpack_from("<BBBBHH", data, pos)
        pos += 8
        if mask & ~0xF or r0 or ti > 1 or rpl > 3 or mn > 0x1FFF or mx > 0x1FFF:
            raise bad("policy: malformed selector rule")
        for bit, v in ((1, ti), (2, rpl), (4, mn), (8, mx)):
            if not mask & bit and v:
                raise bad("policy: a selector rule field outside its mask is not zero")
        rules.append(SelectorRule(ti if mask & 1 else None, rpl if mask & 2 else None, mn if mask & 4 else None,
                                  mx if mask & 8 else None))
    gates = []
    for _ in range(ngate):
        lo, hi = struct.unpack_from("<HH", data, pos)
        pos += 4
        if lo > hi:
            raise bad(f"policy: call-gate range {lo:#x}..{hi:#x} is empty")
        gates.append((lo, hi))
    vectors = tuple(data[pos : pos + nvec])
    policy = Policy(tuple(inv), tuple(rules), tuple(gates), vectors, bool(ud2), bool(int3),
                    string(no, nl, "policy name"))

    # build info
    try:
        b = json.loads(data[build_off : build_off + build_size].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise bad("build info is not UTF-8 JSON") from None
    if not isinstance(b, dict) or sorted(k for k in b if k != "stamp") != sorted(BUILD_KEYS):
        raise bad(f"build info must be a JSON object with keys {', '.join(BUILD_KEYS)} (and optionally stamp)")
    if not (isinstance(b["gatelink"], str) and b["eager"] in EAGER_NAMES and isinstance(b["gates"], list)
            and all(isinstance(g, str) for g in b["gates"]) and isinstance(b["layout_sha256"], str)
            and isinstance(b.get("stamp", ""), str) and b.get("stamp", "x") != ""):
        raise bad("build info has a field of the wrong type")
    build = BuildInfo(b["gatelink"], b["eager"], tuple(b["gates"]), b["layout_sha256"], b.get("stamp", ""))

    form_domains = {forms[s]: d for s, d in sorted(slot_domains.items())}
    for k, f in enumerate(forms):
        form_domains.setdefault(f, {})
    return PatchTable(
        image_format=image_format, identity=Identity(file_size, bytes(code_sha)),
        model=FetchModel(chunk, ORDER_NAMES[order]), policy=policy, domains=dict(form_domains[forms[0]]),
        forms=tuple(forms), regions=regions, sites=sites, plans=plans, version=version,
        form_domains=form_domains, build=build,
    )


__all__ = [
    "FIELD_CODES", "FORM_CODES", "HEADER_SIZE", "IMAGE_FORMATS", "MAGIC", "SHAPE_CODES", "TableError",
    "build_info_bytes", "decode_atom", "encode_atom", "is_table", "read_table", "table_size", "write_table",
]
