"""RDOS boot images (``rdos.bin``): a stream of objects built by rdos-user ``base/rdosimg.cpp``.

Every object starts with a 12-byte header ``u32 sign = 0x5A1E75D4, u32 len (header included),
u16 type, u16 crc (of the data)``; a header with ``len = 0, type = 0xE5E5`` ends the stream.
DEVICE16 and DEVICE32 objects carry a driver and become code regions named after its path::

    DEVICE16: i32 size; u16 code_size; u16 code_sel; u16 data_size; u16 data_sel; u16 start_ip;
              "path\\0param\\0"; code at +size, then data
    DEVICE32: i32 size; u32 code_size; u16 code_sel; u32 data_size; u16 data_sel; u32 start_ip;
              "path\\0param\\0"; code at +size, then data

(``+size`` counts from the start of the object's data, after the 12-byte header.)

The CRC is the RDOS kernel's (``kernel/os/crc.asm`` ``calc_crc``, polynomial 0x1021, initial 0),
whose per-byte step keeps ``crc_hi ^ byte`` in the low byte: "123456789" gives 0x5C0F, where
CRC-16/XMODEM gives 0x31C3. The UEFI loader checks with XMODEM, so a CRC matching either is
accepted; a mismatch is a warning, not an error.
"""

from __future__ import annotations

import struct

from ..errors import InputError
from ..image import Anchor, AnchorKind, Image, Region, RegionKind

NAME = "bootimg"
MAGIC_HELP = "no object signature D4 75 1E 5A at offset 0"

SIGN = 0x5A1E75D4
END_TYPE = 0xE5E5
HEADER = 12

TYPES = {
    0: "KERNEL", 1: "FONT", 2: "SIMPLE_DEVICE", 3: "SHUTDOWN", 6: "OLD_FILE", 7: "COMMAND",
    8: "SET", 9: "PATH", 16: "DOS_DEVICE", 17: "FILE", 18: "DEVICE16", 19: "DEVICE32",
    20: "LONG_MODE", 21: "REAL_TIME", 22: "SERVER",
}
DEVICE16, DEVICE32 = 18, 19
_DEVICE_LAYOUT = {DEVICE16: ("<iHHHHH", 14, 16), DEVICE32: ("<iIHIHI", 20, 32)}

MAX_OBJECTS = 1 << 16


def probe(data: bytes) -> bool:
    return len(data) >= 4 and struct.unpack_from("<I", data)[0] == SIGN


def _table(poly: int) -> list[int]:
    out = []
    for i in range(256):
        d = i << 8
        for _ in range(8):
            d = ((d << 1) ^ poly) & 0xFFFF if d & 0x8000 else (d << 1) & 0xFFFF
        out.append(d)
    return out


_T1021 = _table(0x1021)


def crc_rdos(data: bytes | memoryview, crc: int = 0) -> int:
    """The RDOS kernel's CRC-16 (see module docstring)."""
    t = _T1021
    for b in data:
        idx = (crc >> 8) ^ b
        crc = (((crc & 0xFF) << 8) | idx) ^ t[idx]
    return crc


def crc_xmodem(data: bytes | memoryview, crc: int = 0) -> int:
    """CRC-16/XMODEM, the variant the RDOS UEFI loader checks with."""
    t = _T1021
    for b in data:
        crc = ((crc << 8) & 0xFFFF) ^ t[(crc >> 8) ^ b]
    return crc


def read(path: str, data: bytes) -> Image:
    img = Image(path=path, format="bootimg", data=data)
    pos = 0
    objects = []
    ended = False
    for index in range(MAX_OBJECTS):
        if pos + HEADER > len(data):
            raise InputError(path, f"truncated boot image: object header at {pos:#x} runs past the end, no end marker")
        sign, length, typ, crc = struct.unpack_from("<IIHH", data, pos)
        if sign != SIGN:
            raise InputError(path, f"object {index} at {pos:#x}: bad signature {sign:#010x}")
        if length == 0:
            if typ != END_TYPE:
                raise InputError(path, f"object {index} at {pos:#x}: length 0 but type {typ:#x} is not the end marker 0xE5E5")
            ended = True
            pos += HEADER
            break
        if length < HEADER:
            raise InputError(path, f"object {index} at {pos:#x}: length {length} is shorter than its header")
        if pos + length > len(data):
            raise InputError(path, f"truncated boot image: object {index} at {pos:#x} needs {length} bytes, {len(data) - pos} remain")
        body = memoryview(data)[pos + HEADER : pos + length]
        name = TYPES.get(typ, f"type {typ}")
        entry: dict[str, object] = {"index": index, "offset": pos, "length": length, "type": typ, "type_name": name, "crc": crc}
        got = crc_rdos(body)
        if got == crc:
            entry["crc_ok"] = "rdos"
        elif crc_xmodem(body) == crc:
            entry["crc_ok"] = "xmodem"
        else:
            entry["crc_ok"] = False
            img.warnings.append(f"object {index} ({name}) at {pos:#x}: CRC mismatch, stored {crc:#06x}, computed {got:#06x}")
        if typ in _DEVICE_LAYOUT:
            _device(path, img, data, pos, length, typ, index, entry)
        else:
            img.regions.append(Region(f"object{index}:{name}", RegionKind.DATA, pos + HEADER, 0, length - HEADER))
        objects.append(entry)
        pos += length
    if not ended:
        raise InputError(path, f"boot image has more than {MAX_OBJECTS} objects")
    if pos < len(data):
        img.warnings.append(f"{len(data) - pos} bytes after the end marker")
    img.facts["objects"] = objects
    img.facts["devices"] = sum(1 for o in objects if o["type"] in _DEVICE_LAYOUT)
    return img


def _device(path: str, img: Image, data: bytes, pos: int, length: int, typ: int, index: int, entry: dict[str, object]) -> None:
    fmt, fixed, bitness = _DEVICE_LAYOUT[typ]
    base = pos + HEADER
    end = pos + length
    where = f"object {index} ({TYPES[typ]}) at {pos:#x}"
    if base + fixed > end:
        raise InputError(path, f"{where}: device header needs {fixed} bytes, object holds {end - base}")
    size, code_size, code_sel, data_size, data_sel, ip = struct.unpack_from(fmt, data, base)
    strings = data[base + fixed : end]
    parts = strings.split(b"\0", 2)
    if len(parts) < 3:
        raise InputError(path, f"{where}: path and parameter strings are not NUL-terminated")
    dev_path = parts[0].decode("latin-1")
    param = parts[1].decode("latin-1")
    if size < fixed + len(parts[0]) + len(parts[1]) + 2:
        raise InputError(path, f"{where}: header size {size} overlaps its path strings")
    code_off = base + size
    code_bytes = code_size
    avail = end - code_off
    if code_off > end:
        raise InputError(path, f"{where}: code starts at +{size}, past the object's end")
    if code_bytes > avail:
        # The 32-bit linker quirk may carry over from the .rdv file: code_size 16 too large.
        if bitness == 32 and code_bytes - avail <= 16:
            img.warnings.append(f"{where}: code_size {code_size} overstates the {avail} code bytes present (linker quirk)")
            code_bytes = avail
        else:
            raise InputError(path, f"{where}: code_size {code_size} exceeds the {avail} bytes left in the object")
    # Drivers keep strings in the code segment, possibly before the first function.
    anchors = [Anchor(0, AnchorKind.REGION_START, "code start", strong=False)]
    if ip < code_bytes:
        anchors.append(Anchor(ip, AnchorKind.ENTRY, "start_ip"))
    else:
        img.warnings.append(f"{where}: start_ip {ip:#x} lies outside the {code_bytes} code bytes")
    name = dev_path or f"object{index}"
    img.regions.append(
        Region(
            name=name, kind=RegionKind.CODE, file_offset=code_off, address=0, size=code_bytes,
            bitness=bitness, anchors=tuple(sorted(anchors, key=lambda a: a.offset)),
            note=f"{TYPES[typ]} object {index}",
        )
    )
    data_off = code_off + code_bytes
    if data_off < end:
        img.regions.append(Region(f"{name}:data", RegionKind.DATA, data_off, 0, end - data_off))
    entry.update({"path": dev_path, "param": param, "code_size": code_size, "code_selector": code_sel,
                  "data_size": data_size, "data_selector": data_sel, "start_ip": ip, "bitness": bitness})
