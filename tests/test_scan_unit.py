"""Scanner behaviour on small images assembled here, one situation per test."""


from conftest import asm
from gatelink import RawOptions, open_image, scan
from gatelink.catalog import SHAPES_BY_ID, stub_bytes

BASE = 0x400000


def db(raw: bytes) -> str:
    return ".byte " + ",".join(f"0x{b:02x}" for b in raw)


def stub(sid: str, gate: int = 0x11, sel: int | None = None) -> str:
    return db(stub_bytes(SHAPES_BY_ID[sid], gate, sel))


def scan_raw(tmp_path, code: bytes, bits: int = 32, base: int = BASE):
    p = tmp_path / "img.bin"
    p.write_bytes(code)
    return scan(open_image(str(p), raw=RawOptions(bits, base)))


def sites(res):
    return [(s.address - BASE, s.shape, s.confidence) for s in res.sites]


def misses(res):
    return [(n.address - BASE, n.reason) for n in res.near_misses]


def test_fall_through_from_entry_is_certain(tmp_path):
    code = asm(f"push ebp\nmov ebp, esp\n{stub('A', 0x25)}\njnc ok\nxor eax, eax\nok: pop ebp\nret")
    res = scan_raw(tmp_path, code)
    assert sites(res) == [(3, "A", "certain")]
    assert res.sites[0].gate == 0x25 and res.sites[0].gate_kind == "os"


def test_operand_decoy_is_inside_an_instruction(tmp_path):
    # C7 05 <3E 67 9A 05> <00 00 00 02> then 00 C0: mov dword [disp], imm; add al, al
    code = asm("nop\n" + db(bytes.fromhex("c7053e679a05000000020000c0")) + "\nret")
    res = scan_raw(tmp_path, code)
    assert res.sites == []
    assert misses(res) == [(3, "inside-instruction")]


def test_string_after_ret_is_not_a_site_and_called_code_is(tmp_path):
    msg = b"Press a key" + stub_bytes(SHAPES_BY_ID["A"], 7) + b"to go on\0"
    code = asm(f"call f\nret\n{db(msg)}\nf: {stub('C', 0x30)}\nret")
    res = scan_raw(tmp_path, code)
    assert [s[1:] for s in sites(res)] == [("C", "certain")]
    assert [m[1] for m in misses(res)] == ["no-boundary-evidence"]


def test_loop_entered_at_its_condition(tmp_path):
    code = asm(f"mov ecx, 5\njmp cond\nbody: {stub('F', 0x40)}\ndec ecx\ncond: test ecx, ecx\njnz body\nret")
    res = scan_raw(tmp_path, code)
    assert [s[1:] for s in sites(res)] == [("F", "certain")]


def test_jump_table_cases(tmp_path):
    # jmp [table + eax*4] with the table inline after it, then two case blocks with stubs.
    head = asm("cmp eax, 1\nja out\njmp dword ptr [eax*4 + 0x400100]\nout: ret", addr=BASE)
    case0 = asm(f"{stub('A', 1)}\nret")
    case1 = asm(f"{stub('I', 2)}\nret")
    table = (BASE + 0x108).to_bytes(4, "little") + (BASE + 0x108 + len(case0)).to_bytes(4, "little")
    code = head + b"\xcc" * (0x100 - len(head)) + table + case0 + case1
    res = scan_raw(tmp_path, code)
    assert sites(res) == [(0x108, "A", "certain"), (0x108 + len(case0), "I", "certain")]


def test_stub_bytes_inside_a_jump_table(tmp_path):
    head = asm("jmp dword ptr [eax*4 + 0x400010]", addr=BASE)
    case0 = asm(f"{stub('A', 1)}\nret")
    # Two entries, the second one's bytes with the first entry form "3E 67 9A ..." lookalikes.
    entry = (BASE + 0x20).to_bytes(4, "little")
    table = entry + entry
    code = head + b"\xcc" * (0x10 - len(head)) + table + b"\xcc" * 8 + case0
    res = scan_raw(tmp_path, code)
    assert sites(res) == [(0x20, "A", "certain")]


def test_padding_anchor_gives_likely(tmp_path):
    # f is never called: only the ret + int3 padding + 16-byte alignment points at it.
    code = asm("ret")
    code += b"\xcc" * (16 - len(code)) + asm(f"push ebp\n{stub('G', 0x50)}\npop ebp\nret")
    res = scan_raw(tmp_path, code)
    assert sites(res) == [(17, "G", "likely")]


def test_wrong_bitness_bad_selector_unknown_form(tmp_path):
    code = asm(f"{stub('B', 3)}\nnop\n{db(bytes.fromhex('3e679a0500000006 00'.replace(' ', '')))}\nnop\n"
               f"{db(bytes.fromhex('679a050000000200'))}\nret")
    res = scan_raw(tmp_path, code)
    assert res.sites == []
    assert [m[1] for m in misses(res)] == ["wrong-bitness", "selector-out-of-range", "selector-out-of-range"]


def test_unknown_form_at_a_boundary(tmp_path):
    # 9A with a non-zero offset high word and selector 2: a far call to a null selector, no shape.
    code = asm("nop\n" + db(bytes.fromhex("9a050001000200")) + "\nret")
    res = scan_raw(tmp_path, code)
    assert misses(res) == [(1, "unknown-form")]


def test_operand_byte_then_real_flat_stub(tmp_path):
    # mov bl, 0x3E swallows the 3E: what follows is a shape F stub at the 67.
    code = asm(f"mov bl, 0x3e\n{db(bytes.fromhex('679a2200000003 00'.replace(' ', '')))}\nret")
    res = scan_raw(tmp_path, code)
    assert sites(res) == [(2, "F", "certain")]


def test_push_byte_is_an_operand_then_f(tmp_path):
    code = asm(f"mov al, 0x55\n{db(bytes.fromhex('679a22000000030 05d'.replace(' ', '')))}\nret")
    res = scan_raw(tmp_path, code)
    assert sites(res) == [(2, "F", "certain")]


def test_ud2_forms_and_the_walk_continues_after_them(tmp_path):
    code = asm(f"nop\n{stub('U5', 0x33)}\n{stub('U7', 0x44)}\n{stub('A', 0x55)}\nret")
    res = scan_raw(tmp_path, code)
    assert sites(res) == [(1, "U5", "certain"), (6, "U7", "certain"), (13, "A", "certain")]
    assert res.sites[0].gate_kind == "os" and res.sites[1].gate_kind == "user"


def test_straddle(tmp_path):
    from conftest import rdv32

    code = asm("nop\nnop\nret") + stub_bytes(SHAPES_BY_ID["A"], 9)[:5]
    # The stub's tail lies in the 16 zero bytes after the code (the padded quirk), outside it.
    data = rdv32(code, padded=True)
    data = data[: 18 + len(code)] + stub_bytes(SHAPES_BY_ID["A"], 9)[5:] + data[18 + len(code) + 4 :]
    p = tmp_path / "d.rdv"
    p.write_bytes(data)
    res = scan(open_image(str(p)))
    assert res.sites == []
    assert [(n.address, n.reason) for n in res.near_misses] == [(3, "straddles-region-end")]


def test_sixteen_bit_code(tmp_path):
    # mov ax,5 ; B ; D ; E ; L8 ; ret  (hand-written: keystone miscodes 16-bit ret)
    code = (bytes.fromhex("b80500") + stub_bytes(SHAPES_BY_ID["B"], 1) + stub_bytes(SHAPES_BY_ID["D"], 2)
            + stub_bytes(SHAPES_BY_ID["E"], 3) + stub_bytes(SHAPES_BY_ID["L8"], 4, 1) + b"\xc3")
    res = scan_raw(tmp_path, code, bits=16, base=0)
    assert [(s.address, s.shape, s.confidence) for s in res.sites] == [
        (3, "B", "certain"), (12, "D", "certain"), (21, "E", "certain"), (30, "L8", "certain")]
    # As 32-bit code, mov eax, imm32 swallows "67 66" and a legacy L7 stub follows.
    res32 = scan_raw(tmp_path, code, bits=32)
    assert sites(res32) == [(5, "L7", "certain")]


def test_data_in_code_of_a_driver(tmp_path):
    from conftest import rdv16

    strings = b"Disk error\0" + stub_bytes(SHAPES_BY_ID["B"], 9) + b"\0"
    # entry at the code after the strings: mov ax,5 ; B stub ; retf
    code = strings + bytes.fromhex("b80500") + stub_bytes(SHAPES_BY_ID["B"], 10) + b"\xcb"
    p = tmp_path / "d.rdv"
    p.write_bytes(rdv16(code, ip=len(strings)))
    res = scan(open_image(str(p)))
    assert [(s.address, s.shape, s.confidence) for s in res.sites] == [(len(strings) + 3, "B", "certain")]
    assert [m.reason for m in res.near_misses] == ["no-boundary-evidence"]
