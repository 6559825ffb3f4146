"""gatelink.formats.pe_edit: adding a section keeps a PE valid for pefile, lief and objdump."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pefile
import pytest
from conftest import FIXTURES

from gatelink import open_image, scan
from gatelink.errors import InputError
from gatelink.formats import pe_edit

PE_FIXTURES = sorted((FIXTURES / "pe").glob("*.exe"))
OBJDUMP = shutil.which("objdump") or shutil.which("i686-w64-mingw32-objdump")
MINGW_GCC = shutil.which("i686-w64-mingw32-gcc")


def _symbol_pe(tmp_path: Path) -> bytes:
    """A small mingw PE that keeps its COFF symbol table (an overlay after the sections)."""
    if MINGW_GCC is None:
        pytest.skip("i686-w64-mingw32-gcc not installed")
    src = tmp_path / "sym.c"
    src.write_text("int f(int x){return x*3+1;}\nint main(void){return f(2);}\n")
    exe = tmp_path / "sym.exe"
    subprocess.run([MINGW_GCC, "-O1", "-Wl,--no-insert-timestamp", "-o", str(exe), str(src)], check=True)
    data = exe.read_bytes()
    pe = pefile.PE(data=data, fast_load=True)
    assert pe.FILE_HEADER.PointerToSymbolTable, "mingw kept no symbol table: the test needs one"
    return data


def _check_all_tools(path: Path, name: str, payload: bytes) -> None:
    data = path.read_bytes()
    pe = pefile.PE(data=data)  # full load: every directory parsed
    sec = [s for s in pe.sections if s.Name.rstrip(b"\0") == name.encode()][0]
    assert sec.get_data()[: len(payload)] == payload
    assert pe.OPTIONAL_HEADER.SizeOfImage % pe.OPTIONAL_HEADER.SectionAlignment == 0
    assert pe.OPTIONAL_HEADER.SizeOfImage >= sec.VirtualAddress + sec.Misc_VirtualSize
    if pe.OPTIONAL_HEADER.CheckSum:
        assert pe.OPTIONAL_HEADER.CheckSum == pe.generate_checksum()
    import lief

    lb = lief.parse(str(path))
    assert lb is not None
    ls = lb.get_section(name)
    assert ls is not None and bytes(ls.content)[: len(payload)] == payload
    assert len(lb.sections) == pe.FILE_HEADER.NumberOfSections
    if OBJDUMP:
        out = subprocess.run([OBJDUMP, "-h", str(path)], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert name in out.stdout
        assert "warning" not in out.stderr.lower(), out.stderr


@pytest.mark.parametrize("exe", PE_FIXTURES, ids=lambda p: p.name)
def test_add_rdata_section_fixture(exe: Path, tmp_path: Path) -> None:
    data = exe.read_bytes()
    payload = bytes(range(256)) * 5 + b"end"
    out = pe_edit.add_section(data, ".gltab", payload, pe_edit.RDATA)
    assert out[: len(data)] != data  # headers changed
    # nothing existing moved: every old section's raw bytes are where they were
    old = pe_edit.read_headers(data)
    new = pe_edit.read_headers(out)
    assert new.nsections == old.nsections + 1
    for a, b in zip(old.sections, new.sections):
        assert a == b
        assert out[a.raw_pointer : a.raw_pointer + a.raw_size] == data[a.raw_pointer : a.raw_pointer + a.raw_size]
    s = new.sections[-1]
    assert s.raw_pointer % new.file_alignment == 0 and s.virtual_address % new.section_alignment == 0
    assert s.characteristics == pe_edit.RDATA and s.virtual_size == len(payload)
    f = tmp_path / exe.name
    f.write_bytes(out)
    _check_all_tools(f, ".gltab", payload)
    # initialised-data size grew by the raw size
    pe0 = pefile.PE(data=data, fast_load=True)
    pe1 = pefile.PE(data=out, fast_load=True)
    assert pe1.OPTIONAL_HEADER.SizeOfInitializedData == pe0.OPTIONAL_HEADER.SizeOfInitializedData + s.raw_size
    assert pe1.OPTIONAL_HEADER.SizeOfCode == pe0.OPTIONAL_HEADER.SizeOfCode
    # gatelink still reads it and finds the same sites
    a = [(x.address, x.shape, x.gate) for x in scan(open_image(exe), jobs=1).sites]
    b = [(x.address, x.shape, x.gate) for x in scan(open_image(f), jobs=1).sites]
    assert a == b and a


def test_add_code_section_and_remove(tmp_path: Path) -> None:
    exe = PE_FIXTURES[0]
    data = exe.read_bytes()
    code = b"\x90" * 30 + b"\xc3"
    out = pe_edit.add_section(data, ".gltext", code, pe_edit.CODE)
    pe0 = pefile.PE(data=data, fast_load=True)
    pe1 = pefile.PE(data=out, fast_load=True)
    assert pe1.OPTIONAL_HEADER.SizeOfCode == pe0.OPTIONAL_HEADER.SizeOfCode + 512
    assert pe1.OPTIONAL_HEADER.SizeOfInitializedData == pe0.OPTIONAL_HEADER.SizeOfInitializedData
    f = tmp_path / "code.exe"
    f.write_bytes(out)
    _check_all_tools(f, ".gltext", code)
    img = open_image(f)
    assert any(r.name == ".gltext" and r.kind.value == "code" for r in img.regions)
    back = pe_edit.remove_last_section(out, ".gltext", len(data))
    # same size and sections; header fields restored (SizeOfImage recomputed equals the linker's)
    assert len(back) == len(data)
    h0, h1 = pe_edit.read_headers(data), pe_edit.read_headers(back)
    assert h0.sections == h1.sections and h0.size_of_image == h1.size_of_image
    assert back == data


def test_symbol_table_overlay_kept(tmp_path: Path) -> None:
    data = _symbol_pe(tmp_path)
    pe0 = pefile.PE(data=data, fast_load=True)
    ptr = pe0.FILE_HEADER.PointerToSymbolTable
    nsym = pe0.FILE_HEADER.NumberOfSymbols
    symtab = data[ptr:]
    out = pe_edit.add_section(data, ".gltab", b"T" * 100, pe_edit.RDATA)
    pe1 = pefile.PE(data=out, fast_load=True)
    assert pe1.FILE_HEADER.PointerToSymbolTable == ptr and pe1.FILE_HEADER.NumberOfSymbols == nsym
    assert out[ptr : ptr + len(symtab)] == symtab  # symbols and string table untouched
    assert pe1.sections[-1].PointerToRawData >= len(data)
    f = tmp_path / "sym2.exe"
    f.write_bytes(out)
    _check_all_tools(f, ".gltab", b"T" * 100)
    if OBJDUMP:
        # the symbol table still reads: objdump -t lists the function symbols
        t = subprocess.run([OBJDUMP, "-t", str(f)], capture_output=True, text=True)
        assert t.returncode == 0 and "_main" in t.stdout and "_f" in t.stdout


def test_checksum_matches_pefile() -> None:
    for exe in PE_FIXTURES:
        data = exe.read_bytes()
        pe = pefile.PE(data=data, fast_load=True)
        off = pe.OPTIONAL_HEADER.get_file_offset() + 64
        assert pe_edit.pe_checksum(data, off) == pe.generate_checksum()
        odd = data + b"\x01"
        pe2 = pefile.PE(data=odd, fast_load=True)
        assert pe_edit.pe_checksum(odd, off) == pe2.generate_checksum()


def test_zero_checksum_stays_zero() -> None:
    data = bytearray(PE_FIXTURES[0].read_bytes())
    h = pe_edit.read_headers(bytes(data))
    struct.pack_into("<I", data, h.opt_off + 64, 0)
    out = pe_edit.add_section(bytes(data), ".x", b"abc", pe_edit.RDATA)
    assert pe_edit.read_headers(out).checksum == 0


def test_no_room_is_a_clear_error() -> None:
    data = bytearray(PE_FIXTURES[0].read_bytes())
    h = pe_edit.read_headers(bytes(data))
    slot = h.section_table + 40 * h.nsections
    # something lives right after the section table (as a bound import directory would)
    data[slot + 5] = 0x11
    with pytest.raises(InputError, match="no room for another section header"):
        pe_edit.add_section(bytes(data), ".gltab", b"x", pe_edit.RDATA)
    # headers that end right at the section table
    data = bytearray(PE_FIXTURES[0].read_bytes())
    struct.pack_into("<I", data, h.opt_off + 60, slot + 20)
    with pytest.raises(InputError, match="no room"):
        pe_edit.add_section(bytes(data), ".gltab", b"x", pe_edit.RDATA)


def test_refusals() -> None:
    data = PE_FIXTURES[0].read_bytes()
    out = pe_edit.add_section(data, ".gltab", b"x", pe_edit.RDATA)
    with pytest.raises(InputError, match="already has a section"):
        pe_edit.add_section(out, ".gltab", b"y", pe_edit.RDATA)
    signed = bytearray(data)
    h = pe_edit.read_headers(data)
    struct.pack_into("<II", signed, h.opt_off + 96 + 8 * 4, len(data), 8)
    with pytest.raises(InputError, match="signed"):
        pe_edit.add_section(bytes(signed), ".gltab", b"x", pe_edit.RDATA)
    with pytest.raises(InputError):
        pe_edit.add_section(b"MZ" + bytes(100), ".gltab", b"x", pe_edit.RDATA)
    with pytest.raises(ValueError):
        pe_edit.add_section(data, "toolongname", b"x", pe_edit.RDATA)
    with pytest.raises(InputError, match="not the last|no section"):
        pe_edit.remove_last_section(data, ".text")
