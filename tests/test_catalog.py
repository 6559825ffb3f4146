import capstone
import pytest

from gatelink.catalog import FAMILIES, SHAPES, SHAPES_BY_ID, stub_bytes
from gatelink.decode import Decoded, Kind, decode_view

# rdos-facts section 1, copied as literal text: the table must agree with the facts.
FACTS = {
    "A": ("3E 67 9A g g g g 02 00", 32), "B": ("67 66 9A g g g g 02 00", 16),
    "C": ("3E 67 9A g g g g 03 00", 32), "D": ("67 66 9A g g g g 01 00", 16),
    "E": ("67 66 9A g g g g 03 00", 16), "F": ("67 9A g g g g 03 00", 32),
    "G": ("55 67 9A g g g g 03 00 5D", 32), "H": ("55 67 9A g g g g 04 00 5D", 32),
    "I": ("3E 67 9A g g g g 04 00", 32),
}


@pytest.mark.parametrize("sid", list(FACTS))
def test_current_shapes_match_the_facts(sid):
    s = SHAPES_BY_ID[sid]
    assert s.template() == FACTS[sid][0]
    assert s.bitness == FACTS[sid][1]
    assert s.length == len(FACTS[sid][0].split())


@pytest.mark.parametrize("s", SHAPES, ids=lambda s: s.id)
def test_each_shape_decodes_as_its_trap_in_its_bitness(s):
    bits = s.bitness or 32
    raw = stub_bytes(s, 0x1234 if s.gate_size == 2 else 0x12345678)
    d = decode_view(raw[s.call_at:] + b"\x90" * 8, bits, 0)
    assert isinstance(d, Decoded)
    assert d.length == s.call_length or not s.has_selector
    if s.has_selector:
        assert d.kind is Kind.CALLF and d.selector == s.selectors[0]
        # A second, independent decoder agrees on the far call and its length.
        md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32 if bits == 32 else capstone.CS_MODE_16)
        ins = next(md.disasm(raw[s.call_at:], 0))
        assert ins.mnemonic == "lcall" and ins.size == s.call_length
    else:
        assert d.kind is Kind.UD2


def test_families_group_shapes_sharing_bytes():
    members = {tuple(m.id for m in f.members) for f in FAMILIES}
    assert ("A", "C", "I") in members and ("B", "D", "E") in members and ("G", "H") in members


def test_sixteen_bit_forms_decode_differently_in_32_bit_code():
    raw = stub_bytes(SHAPES_BY_ID["B"], 5)
    d = decode_view(raw, 32, 0)
    assert isinstance(d, Decoded) and d.kind is Kind.CALLF and d.length == 7  # ptr16:16
