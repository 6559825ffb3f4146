"""The scanner on what the Open Watcom toolchain emits (issue 7), one situation per test.

Small images assembled here, each reproducing one fact of ``shared/docs/watcom-output.md``:
pre-scaled switch tables far from their jump, handlers reached only by an immediate, data at
the start of a code segment, relocated pointers, a one-byte-late decode, stub templates after a
transfer. The Watcom-style fixtures (``fixtures/watcom``) check the same end to end.
"""

from __future__ import annotations

from conftest import asm, rdv16, rdv32
from gatelink import RawOptions, open_image
from gatelink.catalog import SHAPES_BY_ID, stub_bytes
from gatelink.decode import CodeDecoder
from gatelink.image import Image, Region, RegionKind, Relocations
from gatelink.scan import scan, verify_sites

BASE = 0x400000


def db(raw: bytes) -> str:
    return ".byte " + ",".join(f"0x{b:02x}" for b in raw)


PUSH_DS = db(b"\x1e")  # keystone writes `push ds` in 32-bit code as 66 1E


def stub(sid: str, gate: int = 0x11) -> str:
    return db(stub_bytes(SHAPES_BY_ID[sid], gate))


def scan_file(tmp_path, name: str, data: bytes, raw: RawOptions | None = None):
    p = tmp_path / name
    p.write_bytes(data)
    return scan(open_image(str(p), raw=raw), jobs=1)


def code_sites(res):
    return [(s.address, s.shape, s.confidence) for s in res.sites]


def reasons(res):
    return sorted((n.address, n.reason) for n in res.near_misses)


# -- jump tables ---------------------------------------------------------------------------


def test_unoptimised_bound_and_prescaled_index():
    code = asm("cmp dword ptr [ebp-8], 5\njbe l1\njmp l2\nl1: mov eax, dword ptr [ebp-8]\nshl eax, 2\n"
               "jmp dword ptr cs:[eax+0x100]\nl2: ret", addr=0x200)
    dec = CodeDecoder(code, 32, 0x200)
    assert dec.jump_table(code.find(bytes.fromhex("2eff"))) == (0x100, 4, 6)


def test_and_mask_bounds_a_16bit_table():
    code = asm("and bx, 3\nshl bx, 1\njmp word ptr cs:[bx+0x40]", bits=16)
    dec = CodeDecoder(code, 16, 0)
    assert dec.jump_table(code.find(bytes.fromhex("2eff"))) == (0x40, 2, 4)


def test_the_nearest_compare_bounds_a_table():
    # `lea eax, [ebx+0x3c]` / `cdq` hide `cmp al, 0x99` one byte in; the real check is cmp eax, 3.
    code = asm("lea eax, [ebx+0x3c]\ncdq\ncmp eax, 3\nja out\njmp dword ptr cs:[eax*4+0x80]\nout: ret")
    dec = CodeDecoder(code, 32, 0)
    assert dec.jump_table(code.find(bytes.fromhex("2eff"))) == (0x80, 4, 4)


def test_driver_switch_table_at_the_segment_start(tmp_path):
    """A 32-bit driver whose code starts with the switch table; the dispatch and the case
    bodies follow, and only the init routine at the end calls the dispatcher."""
    cases = [asm(f"{stub('A', 100 + i)}\nret") for i in range(3)]
    table_size = 4 * len(cases)
    disp_at = table_size
    # jmp dword [cs:eax + 0]: the linker writes the table offset as a disp32 even when it is 0
    # (keystone would pick the short form), so the bytes are given.
    dispatch = asm(f"cmp dword ptr [ebp-8], {len(cases) - 1}\njbe l1\njmp l2\nl1: mov eax, dword ptr [ebp-8]\n"
                   f"shl eax, 2\n{db(bytes.fromhex('2effa000000000'))}\nl2: ret", addr=disp_at)
    body_at = disp_at + len(dispatch)
    offs = []
    pos = body_at
    for c in cases:
        offs.append(pos)
        pos += len(c)
    init_at = pos
    init = asm(f"call {disp_at}\nretf", addr=init_at)
    code = b"".join(o.to_bytes(4, "little") for o in offs) + dispatch + b"".join(cases) + init
    res = scan_file(tmp_path, "drv.rdv", rdv32(code, ip=init_at))
    assert code_sites(res) == [(o, "A", "certain") for o in offs]


# -- code pointers ---------------------------------------------------------------------------


def test_handler_registered_by_immediate_is_found_likely(tmp_path):
    """Names first, a handler nothing calls, and init (the entry) loading its offset."""
    names = b"COM1\0COM2\0"
    handler_at = len(names)
    handler = asm(f"{PUSH_DS}\n{stub('A', 7)}\npop ds\nretf", addr=handler_at)
    init_at = handler_at + len(handler)
    init = asm(f"mov esi, {handler_at}\n{stub('A', 9)}\nretf", addr=init_at)
    res = scan_file(tmp_path, "drv.rdv", rdv32(names + handler + init, ip=init_at))
    assert code_sites(res) == [(handler_at + 1, "A", "likely"), (init_at + 5, "A", "certain")]
    assert "immediate" in res.sites[0].evidence


def test_an_immediate_loaded_into_ds_is_a_selector_not_a_pointer(tmp_path):
    # mov eax, 10; mov ds, eax: 10 falls inside `mov ebx, [esi+8]` (9..11); a decode from there
    # reads `pop esi; or [esi], bh` and then an F stub one byte into the C stub at 12. A value
    # moved into a segment register is a selector: it must not be tried as a pointer.
    body = asm(f"nop\nnop\nmov eax, 10\nmov ds, eax\n{db(bytes.fromhex('8b5e08'))}\n{stub('C', 3)}\nretf")
    assert body[10] == 0x5E and body[12] == 0x3E
    res = scan_file(tmp_path, "drv.rdv", rdv32(body, ip=0))
    assert [(s.shape, s.confidence) for s in res.sites] == [("C", "certain")]


def _pe_image(code: bytes, relocs: list[int]) -> Image:
    """A one-section image at BASE with the given relocated field addresses (no file)."""
    page_entries: dict[int, list[int]] = {}
    for a in relocs:
        page_entries.setdefault(a & ~0xFFF, []).append(0x3000 | (a & 0xFFF))
    blob = b""
    blocks = []
    for page, entries in sorted(page_entries.items()):
        blocks.append((page, len(code) + len(blob), len(entries)))
        blob += b"".join(e.to_bytes(2, "little") for e in entries)
    img = Image("mem.exe", "pe32", code + blob)
    img.regions.append(Region(".text", RegionKind.CODE, 0, BASE, len(code), 32))
    img.relocations = Relocations(img.data, blocks)
    return img


def test_relocated_bytes_are_never_a_stub():
    # Stub bytes reached from the entry whose gate field the linker relocates: a far call to a
    # relocated address, whatever the selector; the relocation says it is no gate number.
    from gatelink.image import Anchor, AnchorKind

    code = asm("nop") + stub_bytes(SHAPES_BY_ID["A"], 5) + asm("ret")
    img = _pe_image(code, [BASE + 1 + 3])  # a relocated field over the gate number
    r = img.regions[0]
    img.regions[0] = Region(r.name, r.kind, r.file_offset, r.address, r.size, 32,
                            (Anchor(0, AnchorKind.ENTRY, "entry"),))
    res = scan(img, jobs=1)
    assert res.sites == []
    assert [n.reason for n in res.near_misses] == ["relocated-bytes"]


def test_a_relocated_pointer_proves_a_function_nothing_calls():
    entry = asm("mov eax, 0x400010\nret", addr=BASE)  # the immediate is relocated
    func = asm(f"push ebp\nmov ebp, esp\n{stub('G', 12)}\npop ebp\nret", addr=BASE + 0x10)
    code = entry + b"\xcc" * (0x10 - len(entry)) + func
    img = _pe_image(code, [BASE + 1])
    from gatelink.image import Anchor, AnchorKind

    r = img.regions[0]
    img.regions[0] = Region(r.name, r.kind, r.file_offset, r.address, r.size, 32,
                            (Anchor(0, AnchorKind.ENTRY, "entry"),))
    res = scan(img, jobs=1)
    assert [(s.address - BASE, s.shape, s.confidence) for s in res.sites] == [(0x10 + 3, "G", "certain")]
    assert "relocated pointer" in res.sites[0].evidence


# -- heuristic evidence ----------------------------------------------------------------------


def test_one_byte_late_decode_never_makes_a_legacy_site(tmp_path):
    """`52 89 C2 55 67 9A g g g g 03 00 5D` in code nothing proves: a decode one byte late reads
    `ret 0x6755` and then a legacy 7-byte form at the 9A; the G stub is the site, or nothing."""
    tail = bytes.fromhex("5289c2") + stub_bytes(SHAPES_BY_ID["G"], 0x21) + asm("ret")
    code = asm("ret") + tail  # no entry: everything after the ret is heuristic
    res = scan_file(tmp_path, "k.bin", code, RawOptions(32, BASE))
    assert all(s.shape == "G" for s in res.sites)
    assert [(s.address - BASE, s.shape) for s in res.sites] in ([(4, "G")], [])


def test_a_stub_template_right_after_a_transfer_is_not_a_site(tmp_path):
    template = stub_bytes(SHAPES_BY_ID["A"], 0)
    code = asm(f"call f\nret\n{db(template)}\nf: push ebp\nmov ebp, esp\n{stub('C', 0x30)}\npop ebp\nret")
    res = scan_file(tmp_path, "k.bin", code, RawOptions(32, BASE))
    assert [(s.shape, s.confidence) for s in res.sites] == [("C", "certain")]
    assert [n.reason for n in res.near_misses] == ["no-boundary-evidence"]


def test_a_function_after_zero_fill_nothing_calls_is_found_likely(tmp_path):
    code = asm("ret") + b"\0" * 7 + asm(f"push ebx\nmov ebx, eax\n{stub('C', 0x31)}\npop ebx\nret")
    res = scan_file(tmp_path, "k.bin", code, RawOptions(32, BASE))
    assert [(s.address - BASE, s.shape, s.confidence) for s in res.sites] == [(8 + 3, "C", "likely")]
    assert "gap" in res.sites[0].evidence


def test_no_boundary_evidence_says_what_stopped_the_proof(tmp_path):
    code = asm("ret") + b"\x62\x6f" + stub_bytes(SHAPES_BY_ID["C"], 0x31) + asm("ret")
    res = scan_file(tmp_path, "k.bin", code, RawOptions(32, BASE))
    (miss,) = [n for n in res.near_misses if n.reason == "no-boundary-evidence"]
    assert "gap" in miss.detail and "proven code" in miss.detail


def test_an_instruction_running_past_the_region_is_not_code(tmp_path):
    # The entry falls through into a 5-byte mov whose last bytes are missing.
    code = asm(f"{stub('A', 4)}\nnop") + b"\xb8\x01\x02"
    res = scan_file(tmp_path, "k.bin", code, RawOptions(32, BASE))
    assert [(s.address - BASE, s.shape, s.confidence) for s in res.sites] == [(0, "A", "certain")]


# -- linker-given locations -------------------------------------------------------------------


def test_verify_sites_checks_given_locations(tmp_path):
    code = asm(f"push ebp\n{stub('A', 0x25)}\npop ebp\nret")
    p = tmp_path / "k.bin"
    p.write_bytes(code)
    img = open_image(str(p), raw=RawOptions(32, BASE))
    res = verify_sites(img, [1, 0, 3])
    assert [(s.file_offset, s.shape) for s in res.sites] == [(1, "A")]
    assert sorted((n.file_offset, n.reason) for n in res.near_misses) == [(0, "not-a-stub"), (3, "not-a-stub")]


def test_16bit_driver_handlers_from_66_be_immediates(tmp_path):
    names = b"SER\0"
    h_at = len(names)
    handler = asm(f"push ds\nmov ax, 0x408\nmov ds, ax\n{stub('B', 40)}\npop ds\nretf", bits=16, addr=h_at)
    init_at = h_at + len(handler)
    init = asm(f"mov esi, {h_at}\n{stub('D', 41)}\nretf", bits=16, addr=init_at)
    res = scan_file(tmp_path, "d16.rdv", rdv16(names + handler + init, ip=init_at))
    assert [(s.shape, s.confidence) for s in res.sites] == [("B", "likely"), ("D", "certain")]
