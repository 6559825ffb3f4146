"""PE32 and PE32+ through pefile.

Executable sections are code regions; the rest are data regions. The entry point and exported
functions are boundary anchors. The RDOS subsystem (0xAD05, what ``wlink sys rdos`` writes) is
recognised and reported; other PE32 files are scanned too. PE32+ is read and reported as 64-bit:
no RDOS stub is expected there and the scanner says so.
"""

from __future__ import annotations

import logging
import struct

import pefile

from ..errors import InputError
from ..image import Anchor, AnchorKind, Image, Region, RegionKind, Relocations

NAME = "pe"
MAGIC_HELP = "no MZ header"

PE_SS_RDOS = 0xAD05
_SCN_CNT_CODE = 0x00000020
_SCN_MEM_EXECUTE = 0x20000000
_MACHINES = {0x14C: "i386", 0x8664: "amd64", 0xAA64: "arm64", 0x1C4: "armnt", 0x1C0: "arm"}
# pefile parses exports lazily and caps them itself; this cap keeps a hostile export table from
# turning into thousands of anchors.
MAX_EXPORT_ANCHORS = 65536

# pefile logs through the logging module; a hostile file must not spray warnings on stderr.
logging.getLogger("pefile").setLevel(logging.CRITICAL)


def probe(data: bytes) -> bool:
    return data[:2] == b"MZ"


def read(path: str, data: bytes) -> Image:
    _precheck(path, data)
    try:
        pe = pefile.PE(data=data, fast_load=True)
    except pefile.PEFormatError as e:
        raise InputError(path, f"malformed PE: {e.value}") from None
    except Exception as e:  # pefile raises assorted errors on hostile input
        raise InputError(path, f"malformed PE: {type(e).__name__}: {e}") from None
    try:
        return _build(path, data, pe)
    except InputError:
        raise
    except Exception as e:
        raise InputError(path, f"malformed PE: {type(e).__name__}: {e}") from None
    # No pe.close(): pefile was given bytes, not a file, so there is nothing to release, and its
    # close() runs a full gc.collect(), which costs a linker or a batch holding many objects
    # tens of milliseconds per image.


def _precheck(path: str, data: bytes) -> None:
    """Check the headers pefile relies on, so the usual damage gets a precise message."""
    if len(data) < 0x40:
        raise InputError(path, f"truncated PE: {len(data)} bytes, the DOS header alone is 64")
    (e_lfanew,) = struct.unpack_from("<I", data, 0x3C)
    if e_lfanew + 24 > len(data):
        raise InputError(path, f"truncated PE: e_lfanew {e_lfanew:#x} points past the end ({len(data)} bytes)")
    if data[e_lfanew : e_lfanew + 4] != b"PE\0\0":
        raise InputError(path, f"no PE signature at e_lfanew {e_lfanew:#x} (an MZ-only DOS program?)")
    nsections, = struct.unpack_from("<H", data, e_lfanew + 6)
    opt_size, = struct.unpack_from("<H", data, e_lfanew + 20)
    end = e_lfanew + 24 + opt_size + 40 * nsections
    if end > len(data):
        raise InputError(path, f"truncated PE: {nsections} section headers after a {opt_size}-byte optional "
                               f"header end at {end:#x}, the file has {len(data)} bytes")


def _build(path: str, data: bytes, pe: pefile.PE) -> Image:
    oh = pe.OPTIONAL_HEADER
    fh = pe.FILE_HEADER
    is64 = oh.Magic == pefile.OPTIONAL_HEADER_MAGIC_PE_PLUS
    if oh.Magic not in (pefile.OPTIONAL_HEADER_MAGIC_PE, pefile.OPTIONAL_HEADER_MAGIC_PE_PLUS):
        raise InputError(path, f"unknown optional header magic {oh.Magic:#x}")
    bitness = 64 if is64 else 32
    base = oh.ImageBase
    img = Image(path=path, format="pe32+" if is64 else "pe32", data=data)
    machine = _MACHINES.get(fh.Machine, f"{fh.Machine:#x}")
    subsystem = oh.Subsystem
    img.facts.update(
        {
            "machine": machine,
            "image_base": base,
            "entry_point": base + oh.AddressOfEntryPoint if oh.AddressOfEntryPoint else None,
            "subsystem": subsystem,
            "subsystem_name": "RDOS" if subsystem == PE_SS_RDOS else pefile.SUBSYSTEM_TYPE.get(subsystem, "unknown"),
            "rdos": subsystem == PE_SS_RDOS,
            "os_version": f"{oh.MajorOperatingSystemVersion}.{oh.MinorOperatingSystemVersion}",
            "sections": len(pe.sections),
        }
    )
    if is64:
        img.warnings.append("PE32+ (64-bit) image: RDOS gate stubs are 16/32-bit, none are expected here")
    elif fh.Machine != 0x14C:
        img.warnings.append(f"machine is {machine}, not i386: code is decoded as 32-bit x86 anyway")
    if len(pe.sections) != fh.NumberOfSections:
        # pefile drops section headers it cannot use (data past the end, absurd sizes).
        bad = fh.NumberOfSections - len(pe.sections)
        raise InputError(path, f"malformed PE: {bad} of {fh.NumberOfSections} section headers are unusable "
                               "(raw data outside the file or absurd sizes)")
    if len(pe.sections) == 0:
        img.warnings.append("no sections")

    entry_rva = oh.AddressOfEntryPoint
    exports = _exports(pe, img) if not is64 else []
    seen_names: dict[str, int] = {}
    for idx, s in enumerate(pe.sections):
        raw_name = s.Name.rstrip(b"\0").decode("latin-1") or f"#{idx}"
        # Two sections may share a name; the region name must stay unique.
        n = seen_names.get(raw_name, 0)
        seen_names[raw_name] = n + 1
        name = raw_name if n == 0 else f"{raw_name}#{n}"
        raw_off = s.get_PointerToRawData_adj()
        raw_size = s.SizeOfRawData
        vsize = s.Misc_VirtualSize
        size = min(raw_size, vsize) if vsize else raw_size
        note = ""
        if raw_size and raw_off + raw_size > len(data):
            # A loader refuses such an image: the file is truncated or the header is damaged.
            have = max(0, len(data) - raw_off)
            raise InputError(path, f"truncated PE: section {name} declares {raw_size} raw bytes at {raw_off:#x}, "
                                   f"the file holds {have}")
        va = s.VirtualAddress
        executable = bool(s.Characteristics & (_SCN_MEM_EXECUTE | _SCN_CNT_CODE))
        anchors: list[Anchor] = []
        if executable:
            if entry_rva and va <= entry_rva < va + size:
                anchors.append(Anchor(entry_rva - va, AnchorKind.ENTRY, "entry point"))
            for rva, ename in exports:
                if va <= rva < va + size:
                    anchors.append(Anchor(rva - va, AnchorKind.EXPORT, ename))
            # Linkers start a code section with code.
            anchors.append(Anchor(0, AnchorKind.REGION_START, name))
        img.regions.append(
            Region(
                name=name,
                kind=RegionKind.CODE if executable else RegionKind.DATA,
                file_offset=raw_off,
                address=base + va,
                size=size,
                bitness=bitness if executable else None,
                anchors=tuple(sorted(set(anchors), key=lambda a: (a.offset, a.kind.value, a.name))),
                note=note,
            )
        )
    _check_overlaps(img)
    if not is64:
        img.relocations = _relocations(pe, data, img)
    return img


_DIR_BASERELOC = 5
# A relocation block covers one 4 KiB page; more entries than bytes in the directory is
# impossible, so the directory size bounds the work on a hostile file.


def _relocations(pe: pefile.PE, data: bytes, img: Image) -> Relocations:
    """The HIGHLOW base relocations, indexed by page (read by hand and lazily: pefile builds an
    object per entry, and a large application has over a million)."""
    dirs = pe.OPTIONAL_HEADER.DATA_DIRECTORY
    if len(dirs) <= _DIR_BASERELOC:
        return Relocations(data, ())
    rva, size = dirs[_DIR_BASERELOC].VirtualAddress, dirs[_DIR_BASERELOC].Size
    if not rva or not size:
        return Relocations(data, ())
    try:
        off = pe.get_offset_from_rva(rva)
    except Exception:
        off = None
    if off is None or off >= len(data):
        img.warnings.append(f"base relocation directory at RVA {rva:#x} is outside the file: ignored")
        return Relocations(data, ())
    end = min(len(data), off + size)
    base = pe.OPTIONAL_HEADER.ImageBase
    blocks: list[tuple[int, int, int]] = []
    other = False
    pos = off
    while pos + 8 <= end:
        page, block = struct.unpack_from("<II", data, pos)
        if block < 8 or pos + block > end:
            if block != 0:
                img.warnings.append(f"base relocation block at {pos:#x} has a bad size {block}: the rest is ignored")
            break
        count = (block - 8) // 2
        blocks.append(((base + page) & 0xFFFFFFFF, pos + 8, count))
        # Kinds other than HIGHLOW (3) and padding (0) show in the high byte of each entry.
        if not other and data[pos + 9 : pos + 8 + 2 * count : 2].translate(None, _HIGHLOW_OR_PAD):
            other = True
        pos += block
    if other:
        img.warnings.append("base relocations other than HIGHLOW are present: not used as code-pointer evidence")
    return Relocations(data, blocks)


# High bytes of relocation entries of kind 0 (padding) and 3 (HIGHLOW).
_HIGHLOW_OR_PAD = bytes(range(0x00, 0x10)) + bytes(range(0x30, 0x40))


def _exports(pe: pefile.PE, img: Image) -> list[tuple[int, str]]:
    try:
        pe.parse_data_directories(directories=[pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_EXPORT"]])
    except Exception as e:
        img.warnings.append(f"export directory unreadable: {type(e).__name__}")
        return []
    exp = getattr(pe, "DIRECTORY_ENTRY_EXPORT", None)
    if exp is None:
        return []
    out = []
    for sym in exp.symbols[:MAX_EXPORT_ANCHORS]:
        if sym.forwarder is not None or not sym.address:
            continue
        name = sym.name.decode("latin-1", "replace") if sym.name else f"ordinal {sym.ordinal}"
        out.append((sym.address, name))
    return out


def _check_overlaps(img: Image) -> None:
    """Sections whose raw bytes overlap are legal but suspicious; say so once."""
    spans = sorted((r.file_offset, r.end_offset, r.name) for r in img.regions if r.size)
    for (a0, a1, an), (b0, b1, bn) in zip(spans, spans[1:]):
        if b0 < a1:
            img.warnings.append(f"sections {an} and {bn} overlap in the file")
