import glob
import struct

import pytest

from conftest import boot_image, boot_object, device16, device32, rdv16, rdv32
from gatelink import InputError, RawOptions, UsageError, open_image
from gatelink.formats.bootimg import crc_rdos, crc_xmodem

CODE32 = bytes.fromhex("55 89e5 3e679a 11000000 0200 5d c3".replace(" ", ""))
CODE16 = bytes.fromhex("67669a 05000000 0100 c3".replace(" ", ""))


def write(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def test_crc_variants():
    assert crc_rdos(b"123456789") == 0x5C0F
    assert crc_xmodem(b"123456789") == 0x31C3


def test_rdv16(tmp_path):
    img = open_image(write(tmp_path, "d.rdv", rdv16(CODE16, ip=0, data_size=32)))
    assert img.format == "rdv16"
    code = img.code_regions[0]
    assert (code.file_offset, code.size, code.bitness) == (12, len(CODE16), 16)
    assert img.facts["code_selector"] == 0x400


@pytest.mark.parametrize("padded", [False, True])
def test_rdv32_quirk_both_layouts(tmp_path, padded):
    img = open_image(write(tmp_path, "d.rdv", rdv32(CODE32, data_size=16, padded=padded)))
    assert img.format == "rdv32"
    code = img.code_regions[0]
    assert code.size == len(CODE32) and code.file_offset == 18
    assert img.facts["code_size_quirk"] == ("padded" if padded else "short")
    assert any("16 bytes" in w for w in img.warnings)


def test_rdv_truncated_is_exit_3(tmp_path):
    data = rdv16(CODE16, data_size=8)
    with pytest.raises(InputError, match="truncated"):
        open_image(write(tmp_path, "t.rdv", data[:-3]))
    with pytest.raises(InputError, match="header"):
        open_image(write(tmp_path, "h.rdv", data[:7]))


def test_bootimg_devices_become_code_regions(tmp_path):
    img = open_image(write(tmp_path, "rdos.bin", boot_image(
        boot_object(0, b"kernel bytes"),
        boot_object(18, device16("drivers\\a16.rdv", CODE16, ip=0, data=bytes(4))),
        boot_object(19, device32("drivers\\b32.rdv", CODE32)),
    )))
    assert img.format == "bootimg"
    names = {r.name: r for r in img.code_regions}
    assert set(names) == {"drivers\\a16.rdv", "drivers\\b32.rdv"}
    assert names["drivers\\a16.rdv"].bitness == 16 and names["drivers\\b32.rdv"].bitness == 32
    assert [o["type_name"] for o in img.facts["objects"]] == ["KERNEL", "DEVICE16", "DEVICE32"]
    assert not img.warnings


def test_bootimg_crc_mismatch_is_a_warning(tmp_path):
    img = open_image(write(tmp_path, "rdos.bin", boot_image(boot_object(7, b"run me", crc=0x1234))))
    assert any("CRC mismatch" in w for w in img.warnings)


def test_bootimg_without_end_marker(tmp_path):
    data = boot_object(7, b"x")
    with pytest.raises(InputError, match="end marker"):
        open_image(write(tmp_path, "rdos.bin", data))


def test_raw(tmp_path):
    p = write(tmp_path, "k.bin", CODE32)
    img = open_image(p, raw=RawOptions(32, 0x110000))
    assert img.format == "raw32" and img.code_regions[0].address == 0x110000
    with pytest.raises(UsageError):
        open_image(p, raw=RawOptions(16, 0xFFF8))


def test_unknown_format_and_forced_mismatch(tmp_path):
    p = write(tmp_path, "x.bin", b"hello world")
    with pytest.raises(InputError, match="unknown format"):
        open_image(p)
    with pytest.raises(InputError, match="not a rdv file"):
        open_image(p, format="rdv")


MINGW_DLLS = sorted(glob.glob("/usr/lib/gcc/i686-w64-mingw32/*/*.dll") + glob.glob("/usr/i686-w64-mingw32/lib/*.dll"))


@pytest.mark.skipif(not MINGW_DLLS, reason="Debian's mingw-w64 runtime DLLs are not installed")
def test_real_pe32_reads(tmp_path):
    img = open_image(MINGW_DLLS[0])
    assert img.format == "pe32"
    assert img.facts["machine"] == "i386" and not img.facts["rdos"]
    text = [r for r in img.code_regions if r.name == ".text"][0]
    kinds = {a.kind.value for a in text.anchors}
    assert {"region-start", "export"} <= kinds


def test_pe_truncations(tmp_path):
    if not MINGW_DLLS:
        pytest.skip("no PE to truncate")
    data = open(MINGW_DLLS[0], "rb").read()
    for n in (10, 0x3C + 2, 0x80):
        with pytest.raises(InputError):
            open_image(write(tmp_path, f"t{n}.dll", data[:n]))
    e_lfanew = struct.unpack_from("<I", data, 0x3C)[0]
    bad = bytearray(data)
    bad[e_lfanew] = 0
    with pytest.raises(InputError, match="no PE signature"):
        open_image(write(tmp_path, "nosig.dll", bytes(bad)))
