"""Shared test helpers: assembling snippets, building small images, running the CLI."""

from __future__ import annotations

import io
import struct
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


def asm(text: str, bits: int = 32, addr: int = 0) -> bytes:
    """Assemble with keystone. keystone miscodes some far calls, so any far call it emits is
    refused here: tests put stub bytes in with ``db``-style byte strings instead."""
    import keystone

    mode = keystone.KS_MODE_32 if bits == 32 else keystone.KS_MODE_16
    ks = keystone.Ks(keystone.KS_ARCH_X86, mode)
    enc, _ = ks.asm(text, addr)
    out = bytes(enc or [])
    import capstone

    placed = b"".join(
        bytes(int(x, 16) for x in line.split(".byte", 1)[1].split(","))
        for line in text.splitlines() if ".byte" in line
    )
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32 if bits == 32 else capstone.CS_MODE_16)
    for ins in md.disasm(out, addr):
        if ins.mnemonic in ("lcall", "ljmp"):
            assert bytes(ins.bytes) in placed, f"keystone encoded a far transfer itself: {ins.bytes.hex()}"
    return out


def rdv16(code: bytes, ip: int = 0, data_size: int = 0, code_sel: int = 0x400, data_sel: int = 0x408) -> bytes:
    """An R6 driver, written from the layout in rdos-facts (not from gatelink's reader)."""
    return struct.pack("<HHHHHH", 0x3652, ip, len(code), code_sel, data_size, data_sel) + code + bytes(data_size)


def rdv32(code: bytes, ip: int = 0, data_size: int = 0, padded: bool = False, code_sel: int = 0x410,
          data_sel: int = 0x418) -> bytes:
    """An R2 driver with the linker's quirk: code_size is 16 more than the code written."""
    hdr = struct.pack("<HIIHIH", 0x3252, ip, len(code) + 16, code_sel, data_size, data_sel)
    return hdr + code + (bytes(16) if padded else b"") + bytes(data_size)


def rdos_crc(data: bytes) -> int:
    table = []
    for i in range(256):
        d = i << 8
        for _ in range(8):
            d = ((d << 1) ^ 0x1021) & 0xFFFF if d & 0x8000 else (d << 1) & 0xFFFF
        table.append(d)
    crc = 0
    for b in data:
        idx = (crc >> 8) ^ b
        crc = (((crc & 0xFF) << 8) | idx) ^ table[idx]
    return crc


def boot_object(typ: int, body: bytes, crc: int | None = None) -> bytes:
    return struct.pack("<IIHH", 0x5A1E75D4, 12 + len(body), typ, rdos_crc(body) if crc is None else crc) + body


def device16(path: str, code: bytes, ip: int = 0, data: bytes = b"", param: str = "") -> bytes:
    strings = path.encode() + b"\0" + param.encode() + b"\0"
    size = 14 + len(strings)
    return struct.pack("<iHHHHH", size, len(code), 0x400, len(data), 0x408, ip) + strings + code + data


def device32(path: str, code: bytes, ip: int = 0, data: bytes = b"", param: str = "") -> bytes:
    strings = path.encode() + b"\0" + param.encode() + b"\0"
    size = 20 + len(strings)
    return struct.pack("<iIHIHI", size, len(code), 0x410, len(data), 0x418, ip) + strings + code + data


def boot_image(*objects: bytes) -> bytes:
    return b"".join(objects) + struct.pack("<IIHH", 0x5A1E75D4, 0, 0xE5E5, 0)


def pe32(code: bytes, data: bytes = b"", subsystem: int = 0xAD05, entry_offset: int = 0) -> bytes:
    """A minimal PE32 image (DOS header, PE header, optional header, .text and .data), written
    from the PE/COFF layout, not with pefile. File alignment 0x200, section alignment 0x1000."""
    def align(n: int, a: int) -> int:
        return (n + a - 1) // a * a

    text_raw = align(len(code), 0x200)
    data_raw = align(max(len(data), 1), 0x200)
    dos = bytearray(0x80)
    dos[0:2] = b"MZ"
    struct.pack_into("<I", dos, 0x3C, 0x80)
    coff = struct.pack("<IHHIIIHH", 0x4550, 0x14C, 2, 0, 0, 0, 0xE0, 0x0102)
    opt = struct.pack(
        "<HBBIIIIIIIIIHHHHHHIIIIHHIIIIII",
        0x10B, 2, 40, text_raw, data_raw, 0, 0x1000 + entry_offset, 0x1000, 0x2000, 0x400000,
        0x1000, 0x200, 8, 8, 0, 0, 4, 0, 0, 0x3000, 0x200, 0, subsystem, 0, 0x100000, 0x1000,
        0x100000, 0x1000, 0, 16,
    ) + bytes(16 * 8)
    sec = struct.pack("<8sIIIIIIHHI", b".text", len(code), 0x1000, text_raw, 0x200, 0, 0, 0, 0, 0x60000020)
    sec += struct.pack("<8sIIIIIIHHI", b".data", max(len(data), 1), 0x2000, data_raw, 0x200 + text_raw, 0, 0, 0, 0,
                       0xC0000040)
    head = bytes(dos) + coff + opt + sec
    head += bytes(0x200 - len(head))
    return head + code + bytes(text_raw - len(code)) + data + bytes(data_raw - len(data))


def run_cli(*args: str) -> tuple[int, str, str]:
    """Run ``gatelink`` in-process: (exit code, stdout, stderr)."""
    from gatelink.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path


sys.path.insert(0, str(ROOT / "tests"))
