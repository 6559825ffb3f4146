"""Where each format can take slots, and writing the padded file (docs/pad.md, "Layouts").

* **PE**: one new executable section (:func:`gatelink.formats.pe_edit.add_section`): header
  after the section table, raw data at the end of the file, virtual address after the last
  section; ``NumberOfSections``, ``SizeOfImage``, ``SizeOfCode`` and ``CheckSum`` (when set)
  updated. No base relocations are needed: every jump is relative.
* **.rdv**: at the end of the code segment; the header's ``code_size`` grows (the 32-bit
  linker's 16-byte overstatement kept as it was) and the data segment, the 16 zero bytes of a
  padded 32-bit driver and any debug information move up in the file. The data segment has its
  own selector, so its addresses do not change. 16-bit code stays within 64 KiB.
* **Boot image**: at the end of the DEVICE16/DEVICE32 object's code; the object's ``len`` and
  its device header's ``code_size`` grow and the object's CRC is recomputed with the variant it
  had (the kernel's, or XMODEM).
* **Raw**: appended; the image grows (16-bit images stay within 64 KiB of address space).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import InputError
from ..formats import BACKENDS, RawOptions, pe_edit, raw_read
from ..formats import bootimg as _boot
from ..image import Image, Region

SECTION_NAME = ".glpad"
CODE_FILL = 0xCC  # what is left of a moved stub: int3, so a stray jump there traps
SLOT_FILL = 0x90  # alignment fill in a slot area: nops, so decoding runs on into the next slot


@dataclass(frozen=True)
class SlotArea:
    """Where the slots of the stubs moved out of some code regions go.

    ``address`` is the address of the area's first byte in the output; slots must end at or
    before ``limit`` (``limit_why`` says what sets it). ``region`` is the name the output image
    gives the code region that holds them.
    """

    key: str
    region: str
    address: int
    limit: int
    bitness: int
    limit_why: str


@dataclass(frozen=True)
class NoArea:
    """Why a code region cannot take slots at all."""

    reason: str


def unmodifiable(image: Image) -> str:
    """Why no byte of ``image`` may change (a signed PE), or ''."""
    if image.format in ("pe32", "pe32+"):
        h = pe_edit.read_headers(image.data, image.path)
        if len(h.data_dirs) > _DIR_SECURITY and h.data_dirs[_DIR_SECURITY][1]:
            return "the image is signed (certificate table present): changing any byte would invalidate the signature"
    return ""


_DIR_SECURITY = 4


def slot_areas(image: Image) -> dict[str, SlotArea | NoArea]:
    """The slot area of each code region (by region name)."""
    fmt = image.format
    out: dict[str, SlotArea | NoArea] = {}
    code = [r for r in image.code_regions if r.bitness in (16, 32)]
    if not code:
        return out
    if fmt == "pe32":
        area = _pe_area(image)
        for r in code:
            out[r.name] = area
    elif fmt in ("rdv16", "rdv32"):
        r = code[0]
        end = r.address + r.size
        if fmt == "rdv16":
            out[r.name] = SlotArea(r.name, r.name, end, 0xFFFF, 16, "a 16-bit driver's code_size (and segment) ends at 0xFFFF")
        else:
            out[r.name] = SlotArea(r.name, r.name, end, 0xFFFFFFFF - _RDV_QUIRK, 32, "the 32-bit code_size field")
    elif fmt == "bootimg":
        for r in code:
            if r.bitness == 16:
                out[r.name] = SlotArea(r.name, r.name, r.address + r.size, 0xFFFF, 16,
                                       "a DEVICE16 object's code_size (and segment) ends at 0xFFFF")
            else:
                out[r.name] = SlotArea(r.name, r.name, r.address + r.size, 0xFFFFFFFF - _RDV_QUIRK, 32,
                                       "the DEVICE32 code_size field")
    elif fmt in ("raw16", "raw32"):
        r = code[0]
        end = r.address + r.size
        if r.bitness == 16:
            out[r.name] = SlotArea(r.name, r.name, end, 0x10000, 16, "a 16-bit image ends at 64 KiB")
        else:
            out[r.name] = SlotArea(r.name, r.name, end, 1 << 32, 32, "the 4 GiB address space")
    return out


_RDV_QUIRK = 16


def _section_name(image: Image) -> str:
    names = {r.name.split("#")[0] for r in image.regions}
    if SECTION_NAME not in names:
        return SECTION_NAME
    k = 2
    while f"{SECTION_NAME}{k}" in names:
        k += 1
    return f"{SECTION_NAME}{k}"


def _pe_area(image: Image) -> SlotArea | NoArea:
    name = _section_name(image)
    try:
        # A trial run tells where the section would go (and whether it can be added at all).
        trial = pe_edit.add_section(image.data, name, b"\xcc", pe_edit.CODE, path=image.path)
        h = pe_edit.read_headers(trial, image.path)
    except InputError as e:
        return NoArea(e.problem)
    sec = h.section(name)
    assert sec is not None
    base = int(image.facts.get("image_base") or 0)  # type: ignore[call-overload]
    return SlotArea(name, name, base + sec.virtual_address, 1 << 32, 32, "the 4 GiB address space")


def write(image: Image, patches: dict[int, bytes], payloads: dict[str, bytes],
          areas: dict[str, SlotArea | NoArea]) -> tuple[bytes, list[str]]:
    """The padded file: ``patches`` (file offset -> new bytes, same length) applied in place and
    each area's slot bytes (``payloads``, by area key) placed where :func:`slot_areas` said.
    Returns the bytes and warnings. With nothing to change, the input bytes exactly."""
    warnings: list[str] = []
    payloads = {k: v for k, v in payloads.items() if v}
    if not patches and not payloads:
        return image.data, warnings
    buf = bytearray(image.data)
    for off, new in patches.items():
        assert len(buf[off : off + len(new)]) == len(new)
        buf[off : off + len(new)] = new
    fmt = image.format
    if fmt == "pe32":
        return _write_pe(image, buf, payloads, areas), warnings
    code = [r for r in image.code_regions if r.bitness in (16, 32)]
    if fmt in ("rdv16", "rdv32"):
        return _write_rdv(image, buf, code[0], payloads.get(code[0].name, b"")), warnings
    if fmt == "bootimg":
        return _write_boot(image, buf, code, patches, payloads, warnings), warnings
    if fmt in ("raw16", "raw32"):
        return bytes(buf) + payloads.get(code[0].name, b""), warnings
    raise InputError(image.path, f"cannot pad a {fmt} image")


def _write_pe(image: Image, buf: bytearray, payloads: dict[str, bytes], areas: dict[str, SlotArea | NoArea]) -> bytes:
    keys = {a.key: a for a in areas.values() if isinstance(a, SlotArea)}
    if not payloads:
        h = pe_edit.read_headers(bytes(buf), image.path)
        if h.checksum:
            struct.pack_into("<I", buf, h.opt_off + 64, pe_edit.pe_checksum(buf, h.opt_off + 64))
        return bytes(buf)
    (key, payload), = payloads.items()
    area = keys[key]
    out = pe_edit.add_section(bytes(buf), area.region, payload, pe_edit.CODE, path=image.path)
    sec = pe_edit.read_headers(out, image.path).section(area.region)
    base = int(image.facts.get("image_base") or 0)  # type: ignore[call-overload]
    assert sec is not None and base + sec.virtual_address == area.address, "section placed elsewhere than planned"
    return out


def _write_rdv(image: Image, buf: bytearray, code: Region, payload: bytes) -> bytes:
    if not payload:
        return bytes(buf)
    at = code.end_offset
    out = buf[:at] + payload + buf[at:]
    if image.format == "rdv16":
        (size,) = struct.unpack_from("<H", out, 4)
        struct.pack_into("<H", out, 4, size + len(payload))
    else:
        (size,) = struct.unpack_from("<I", out, 6)
        struct.pack_into("<I", out, 6, size + len(payload))
    return bytes(out)


def _write_boot(image: Image, buf: bytearray, code: list[Region], patches: dict[int, bytes],
                payloads: dict[str, bytes], warnings: list[str]) -> bytes:
    objects = image.facts.get("objects") or []
    assert isinstance(objects, list)
    # Objects from the last to the first, so the offsets of the ones before stay valid.
    for obj in sorted(objects, key=lambda o: -int(o["offset"])):
        pos, length = int(obj["offset"]), int(obj["length"])
        region = next((r for r in code if pos < r.file_offset <= pos + length), None)
        payload = payloads.get(region.name, b"") if region is not None else b""
        touched = payload or any(pos + _boot.HEADER <= off < pos + length for off in patches)
        if not touched:
            continue
        if payload:
            assert region is not None
            at = region.end_offset
            buf[at:at] = payload
            struct.pack_into("<I", buf, pos + 4, length + len(payload))
            dev = pos + _boot.HEADER
            if obj["type"] == _boot.DEVICE16:
                (cs,) = struct.unpack_from("<H", buf, dev + 4)
                struct.pack_into("<H", buf, dev + 4, cs + len(payload))
            else:
                (cs,) = struct.unpack_from("<I", buf, dev + 4)
                struct.pack_into("<I", buf, dev + 4, cs + len(payload))
            length += len(payload)
        body = bytes(buf[pos + _boot.HEADER : pos + length])
        variant = obj.get("crc_ok")
        if variant is False:
            warnings.append(f"object {obj['index']} ({obj['type_name']}) had a CRC mismatch; "
                            "the padded object carries a fresh RDOS kernel CRC")
        crc = _boot.crc_xmodem(body) if variant == "xmodem" else _boot.crc_rdos(body)
        struct.pack_into("<H", buf, pos + 10, crc)
    return bytes(buf)


def reopen(image: Image, data: bytes) -> Image:
    """Read ``data`` (a padded ``image``) with the same reader and options."""
    fmt = image.format
    if fmt in ("raw16", "raw32"):
        bits = int(image.facts["bitness"])  # type: ignore[call-overload]
        base = int(image.facts["base"])  # type: ignore[call-overload]
        return raw_read(image.path, data, RawOptions(bits, base))
    name = {"pe32": "pe", "pe32+": "pe", "rdv16": "rdv", "rdv32": "rdv", "bootimg": "bootimg"}[fmt]
    return BACKENDS[name].read(image.path, data)


__all__ = ["CODE_FILL", "SECTION_NAME", "SLOT_FILL", "NoArea", "SlotArea", "reopen", "slot_areas", "unmodifiable", "write"]
