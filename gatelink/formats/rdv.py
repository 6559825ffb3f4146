"""RDOS device drivers (``.rdv``), as written by ``wlink ... format rdos dev [16]``.

Layouts (little-endian, packed; OW ``exerdos.h``)::

    16-bit "R6", 12 bytes                 32-bit "R2", 18 bytes
    0  u16 signature 0x3652               0  u16 signature 0x3252
    2  u16 ip                             2  u32 eip
    4  u16 code_size                      6  u32 code_size
    6  u16 code_sel                       10 u16 code_sel
    8  u16 data_size                      12 u32 data_size
    10 u16 data_sel                       16 u16 data_sel

File = header, code, data (BSS written as zeros), then optional debug information.

The 32-bit quirk: the linker writes ``code_size`` 16 larger than the code it writes, so the file
either ends 16 bytes short of ``header + code_size + data_size`` or pads the code with 16 zero
bytes. The reader accepts both, reports which, and takes ``code_size - 16`` as the code.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import InputError
from ..image import Anchor, AnchorKind, Image, Region, RegionKind

NAME = "rdv"
MAGIC_HELP = "signature is not R6 (16-bit) or R2 (32-bit)"

SIG16 = 0x3652  # "R6"
SIG32 = 0x3252  # "R2"
QUIRK = 16  # bytes code_size overstates in 32-bit drivers

# Driver selectors in RDOS: 0x400..0xFFF, GDT, RPL 0 (rdos kernel/driver.def).
DRIVER_SEL_MIN, DRIVER_SEL_MAX = 0x400, 0xFFF


@dataclass(frozen=True)
class Header:
    bitness: int
    size: int
    ip: int
    code_size: int
    code_sel: int
    data_size: int
    data_sel: int


_LAYOUT = {
    SIG16: (16, "<HHHHHH", 12),
    SIG32: (32, "<HIIHIH", 18),
}


def probe(data: bytes) -> bool:
    return len(data) >= 2 and struct.unpack_from("<H", data)[0] in _LAYOUT


def parse_header(path: str, data: bytes) -> Header:
    (sig,) = struct.unpack_from("<H", data)
    bitness, fmt, size = _LAYOUT[sig]
    if len(data) < size:
        raise InputError(path, f"truncated {bitness}-bit driver header: {len(data)} of {size} bytes")
    _, ip, code_size, code_sel, data_size, data_sel = struct.unpack_from(fmt, data)
    return Header(bitness, size, ip, code_size, code_sel, data_size, data_sel)


def read(path: str, data: bytes) -> Image:
    h = parse_header(path, data)
    img = Image(path=path, format=f"rdv{h.bitness}", data=data)
    code_bytes = h.code_size
    code_off = h.size
    data_off = code_off + h.code_size
    quirk = "none"
    if h.bitness == 32:
        if h.code_size < QUIRK:
            raise InputError(path, f"code_size {h.code_size} is below the 16 bytes every 32-bit driver overstates it by")
        code_bytes = h.code_size - QUIRK
        declared_end = h.size + h.code_size + h.data_size
        padding = data[code_off + code_bytes : code_off + h.code_size]
        if len(data) >= declared_end and padding == bytes(QUIRK):
            quirk = "padded"  # 16 zero bytes after the code, data where code_size says
        elif len(data) >= declared_end - QUIRK:
            quirk = "short"  # data follows the code directly; the file is 16 bytes "short"
            data_off = code_off + code_bytes
        else:
            raise InputError(
                path,
                f"truncated driver: header, code_size {h.code_size} and data_size {h.data_size} "
                f"need {declared_end - QUIRK} bytes, file has {len(data)}",
            )
    else:
        need = h.size + h.code_size + h.data_size
        if len(data) < need:
            raise InputError(
                path,
                f"truncated driver: header, code_size {h.code_size} and data_size {h.data_size} "
                f"need {need} bytes, file has {len(data)}",
            )
    if code_bytes == 0:
        img.warnings.append("driver has no code")
    # Drivers keep strings in the code segment, possibly before the first function.
    anchors = [Anchor(0, AnchorKind.REGION_START, "code start", strong=False)]
    if h.ip < code_bytes:
        anchors.append(Anchor(h.ip, AnchorKind.ENTRY, "entry point"))
    else:
        img.warnings.append(f"entry point {h.ip:#x} lies outside the {code_bytes} code bytes")
    img.regions.append(
        Region(
            name="code", kind=RegionKind.CODE, file_offset=code_off, address=0, size=code_bytes,
            bitness=h.bitness, anchors=tuple(sorted(anchors, key=lambda a: a.offset)),
            note="driver code segment (holds strings and tables too)",
        )
    )
    data_bytes = max(0, min(h.data_size, len(data) - data_off))
    img.regions.append(Region("data", RegionKind.DATA, data_off, 0, data_bytes))
    trailing = len(data) - (data_off + h.data_size)
    if trailing > 0:
        img.regions.append(Region("trailer", RegionKind.DATA, data_off + h.data_size, 0, trailing, note="debug information?"))
    img.facts.update(
        {
            "bitness": h.bitness,
            "entry_point": h.ip,
            "code_size_field": h.code_size,
            "code_bytes": code_bytes,
            "code_selector": h.code_sel,
            "data_size": h.data_size,
            "data_selector": h.data_sel,
            "trailing_bytes": max(0, trailing),
        }
    )
    if h.bitness == 32:
        img.facts["code_size_quirk"] = quirk
        img.warnings.append(
            "code_size overstates the code by 16 bytes (linker quirk): "
            + ("16 zero bytes pad the code" if quirk == "padded" else "the file ends 16 bytes short")
        )
    for what, sel in (("code", h.code_sel), ("data", h.data_sel)):
        if not (DRIVER_SEL_MIN <= sel <= DRIVER_SEL_MAX and sel & 7 == 0):
            img.warnings.append(f"{what} selector {sel:#x} is outside the driver range 0x400..0xFFF (low 3 bits zero)")
    return img
