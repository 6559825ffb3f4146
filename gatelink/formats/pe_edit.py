"""Editing PE files: adding a section (the patch table's ``.gltab``, pad-and-align's code).

Only what gatelink needs, done by hand on the headers rather than through a PE rewriting
library (lief's builder rebuilds far more than it is asked to and has left stale fields, such as
``PointerToSymbolTable``, behind). :func:`add_section` never moves existing bytes: the new
section's header goes into the free space after the section table, its raw data after the last
byte of the file (so an overlay such as a COFF symbol table keeps its offset and
``PointerToSymbolTable`` stays right), its virtual address after the last section's.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import InputError

SECTION_HEADER = 40
SCN_CNT_CODE = 0x00000020
SCN_CNT_INITIALIZED_DATA = 0x00000040
SCN_CNT_UNINITIALIZED_DATA = 0x00000080
SCN_MEM_EXECUTE = 0x20000000
SCN_MEM_READ = 0x40000000
SCN_MEM_WRITE = 0x80000000
# A read-only initialised data section (what the patch table uses).
RDATA = SCN_CNT_INITIALIZED_DATA | SCN_MEM_READ
# An executable code section (what pad-and-align uses).
CODE = SCN_CNT_CODE | SCN_MEM_EXECUTE | SCN_MEM_READ

_DIR_SECURITY = 4
_DIR_BOUND_IMPORT = 11


@dataclass(frozen=True)
class SectionHeader:
    index: int
    name: bytes
    virtual_size: int
    virtual_address: int
    raw_size: int
    raw_pointer: int
    characteristics: int

    @property
    def text_name(self) -> str:
        return self.name.rstrip(b"\0").decode("latin-1")


@dataclass(frozen=True)
class Headers:
    """The PE header fields :func:`add_section` reads and updates (file offsets of each)."""

    e_lfanew: int
    nsections: int
    opt_off: int  # start of the optional header
    opt_size: int
    pe32plus: bool
    section_table: int  # file offset of the first section header
    section_alignment: int
    file_alignment: int
    size_of_image: int
    size_of_headers: int
    checksum: int
    sections: tuple[SectionHeader, ...]
    data_dirs: tuple[tuple[int, int], ...]

    def section(self, name: str) -> SectionHeader | None:
        for s in self.sections:
            if s.text_name == name:
                return s
        return None


def _align(v: int, a: int) -> int:
    return (v + a - 1) // a * a if a > 1 else v


def read_headers(data: bytes, path: str = "<pe>") -> Headers:
    """The PE headers of ``data``; :class:`InputError` when they are not a well-formed PE."""
    if len(data) < 0x40 or data[:2] != b"MZ":
        raise InputError(path, "not a PE file (no MZ header)")
    (e_lfanew,) = struct.unpack_from("<I", data, 0x3C)
    if e_lfanew + 24 > len(data) or data[e_lfanew : e_lfanew + 4] != b"PE\0\0":
        raise InputError(path, f"no PE signature at e_lfanew {e_lfanew:#x}")
    nsections, = struct.unpack_from("<H", data, e_lfanew + 6)
    opt_size, = struct.unpack_from("<H", data, e_lfanew + 20)
    opt = e_lfanew + 24
    if opt_size < 96 or opt + opt_size > len(data):
        raise InputError(path, f"optional header of {opt_size} bytes is truncated or too small")
    magic, = struct.unpack_from("<H", data, opt)
    if magic not in (0x10B, 0x20B):
        raise InputError(path, f"unknown optional header magic {magic:#x}")
    plus = magic == 0x20B
    sa, fa = struct.unpack_from("<II", data, opt + 32)
    size_of_image, size_of_headers, checksum = struct.unpack_from("<III", data, opt + 56)
    if fa == 0 or fa & (fa - 1) or sa == 0 or sa & (sa - 1):
        raise InputError(path, f"section alignment {sa:#x} / file alignment {fa:#x} not powers of two")
    dd_off = opt + (112 if plus else 96)
    (ndirs,) = struct.unpack_from("<I", data, dd_off - 4)
    ndirs = min(ndirs, 16, max(0, (opt + opt_size - dd_off) // 8))
    dirs = tuple(struct.unpack_from("<II", data, dd_off + 8 * i) for i in range(ndirs))
    table = opt + opt_size
    if table + SECTION_HEADER * nsections > len(data):
        raise InputError(path, f"{nsections} section headers run past the end of the file")
    secs = []
    for i in range(nsections):
        off = table + SECTION_HEADER * i
        name = data[off : off + 8]
        vs, va, rs, rp = struct.unpack_from("<IIII", data, off + 8)
        (ch,) = struct.unpack_from("<I", data, off + 36)
        secs.append(SectionHeader(i, name, vs, va, rs, rp, ch))
    return Headers(e_lfanew, nsections, opt, opt_size, plus, table, sa, fa, size_of_image, size_of_headers,
                   checksum, tuple(secs), dirs)


def pe_checksum(data: bytes | bytearray, checksum_offset: int) -> int:
    """The PE image checksum (what ``imagehlp!CheckSumMappedFile`` computes): the ones'
    complement sum of the file's 16-bit words, the checksum field taken as zero, plus the
    file length. Computed as one big-integer remainder: 65536 = 1 (mod 65535), so the sum of
    the words mod 65535 is the whole file, read as a number, mod 65535."""
    buf = bytearray(data)
    buf[checksum_offset : checksum_offset + 4] = b"\0\0\0\0"
    if len(buf) % 2:
        buf.append(0)
    n = int.from_bytes(buf, "little")
    s = n % 0xFFFF
    if s == 0 and n != 0:
        s = 0xFFFF  # ones' complement: a non-zero sum that is a multiple of 0xFFFF folds to 0xFFFF
    return (s + len(data)) & 0xFFFFFFFF


def add_section(
    data: bytes,
    name: str,
    payload: bytes,
    characteristics: int,
    *,
    virtual_size: int | None = None,
    path: str = "<pe>",
) -> bytes:
    """``data`` (a PE32 or PE32+ file) with one more section holding ``payload``.

    The section is named ``name`` (at most 8 bytes), has ``characteristics`` (e.g.
    :data:`RDATA`, :data:`CODE`), ``VirtualSize`` = ``virtual_size`` or ``len(payload)``. Its
    raw data starts at the file's end rounded up to ``FileAlignment`` (existing bytes never
    move), padded with zeros to a multiple of it; its virtual address follows the highest
    section, rounded up to ``SectionAlignment``. ``NumberOfSections``, ``SizeOfImage``,
    ``SizeOfCode`` / ``SizeOfInitializedData`` / ``SizeOfUninitializedData`` (by the
    characteristics) are updated and ``CheckSum`` recomputed if it was set.

    Raises :class:`InputError` when the headers have no free room for one more section header
    (before ``SizeOfHeaders`` and the first section's raw data, and all zero there; sections are
    never shifted to make room), when a section by that name exists, or when the image is
    signed (a certificate table: adding a section would invalidate the signature).
    """
    raw_name = name.encode("ascii")
    if not 1 <= len(raw_name) <= 8:
        raise ValueError(f"section name must be 1..8 ASCII bytes, not {name!r}")
    h = read_headers(data, path)
    if h.section(name) is not None:
        raise InputError(path, f"already has a section named {name}")
    if len(h.data_dirs) > _DIR_SECURITY and h.data_dirs[_DIR_SECURITY][1]:
        raise InputError(path, "is signed (certificate table present): adding a section would invalidate the signature")
    slot = h.section_table + SECTION_HEADER * h.nsections
    limit = h.size_of_headers
    for s in h.sections:
        if s.raw_size and s.raw_pointer:
            limit = min(limit, s.raw_pointer)
    if len(h.data_dirs) > _DIR_BOUND_IMPORT:
        rva, size = h.data_dirs[_DIR_BOUND_IMPORT]
        if size and rva < limit:  # bound imports live in the headers, after the section table
            limit = min(limit, rva)
    if slot + SECTION_HEADER > limit or any(data[slot : slot + SECTION_HEADER]):
        raise InputError(
            path, f"no room for another section header: the section table ends at {slot:#x} and the "
                  f"headers' free space ends at {limit:#x} (gatelink does not move sections)")
    vsize = len(payload) if virtual_size is None else virtual_size
    if vsize < len(payload):
        raise ValueError("virtual_size is smaller than the payload")
    top = h.size_of_headers
    for s in h.sections:
        top = max(top, s.virtual_address + max(s.virtual_size, s.raw_size))
    va = _align(max(top, 1), h.section_alignment)
    raw_ptr = _align(len(data), h.file_alignment)
    raw_size = _align(len(payload), h.file_alignment)
    if raw_ptr + raw_size >= 1 << 32 or va + vsize >= 1 << 32:
        raise InputError(path, "the new section would not fit the 32-bit file and address fields")
    out = bytearray(data)
    out += bytes(raw_ptr - len(data))
    out += payload
    out += bytes(raw_size - len(payload))
    struct.pack_into("<8sIIIIIIHHI", out, slot, raw_name.ljust(8, b"\0"), vsize, va, raw_size,
                     raw_ptr if raw_size else 0, 0, 0, 0, 0, characteristics)
    struct.pack_into("<H", out, h.e_lfanew + 6, h.nsections + 1)
    struct.pack_into("<I", out, h.opt_off + 56, _align(va + vsize, h.section_alignment))
    for flag, field in ((SCN_CNT_CODE, 4), (SCN_CNT_INITIALIZED_DATA, 8), (SCN_CNT_UNINITIALIZED_DATA, 12)):
        if characteristics & flag:
            (old,) = struct.unpack_from("<I", out, h.opt_off + field)
            grow = raw_size if flag != SCN_CNT_UNINITIALIZED_DATA else _align(vsize, h.file_alignment)
            struct.pack_into("<I", out, h.opt_off + field, (old + grow) & 0xFFFFFFFF)
    if h.checksum:
        struct.pack_into("<I", out, h.opt_off + 64, pe_checksum(out, h.opt_off + 64))
    return bytes(out)


def remove_last_section(data: bytes, name: str, file_size: int | None = None, path: str = "<pe>") -> bytes:
    """Undo :func:`add_section` for the section ``name``, which must be the last in the section
    table and hold the file's last raw bytes: the file is cut back to ``file_size`` (default:
    where the section's raw data starts) and the header fields are restored. Used to replace an
    embedded patch table. Raises :class:`InputError` when the section is not where
    :func:`add_section` puts it."""
    h = read_headers(data, path)
    s = h.section(name)
    if s is None:
        raise InputError(path, f"has no section named {name}")
    if s.index != h.nsections - 1:
        raise InputError(path, f"section {name} is not the last section header")
    start = s.raw_pointer if s.raw_size else len(data)
    if s.raw_size and start + s.raw_size != len(data):
        raise InputError(path, f"section {name} does not end the file")
    end = start if file_size is None else file_size
    if not (0 < end <= start and _align(end, h.file_alignment) == _align(start, h.file_alignment)) or any(data[end:start]):
        raise InputError(path, f"section {name} does not start where the file it was added to ended")
    out = bytearray(data[:end])
    slot = h.section_table + SECTION_HEADER * s.index
    out[slot : slot + SECTION_HEADER] = bytes(SECTION_HEADER)
    struct.pack_into("<H", out, h.e_lfanew + 6, h.nsections - 1)
    top = h.size_of_headers
    for o in h.sections[:-1]:
        top = max(top, o.virtual_address + max(o.virtual_size, o.raw_size))
    struct.pack_into("<I", out, h.opt_off + 56, _align(top, h.section_alignment))
    for flag, field in ((SCN_CNT_CODE, 4), (SCN_CNT_INITIALIZED_DATA, 8), (SCN_CNT_UNINITIALIZED_DATA, 12)):
        if s.characteristics & flag:
            (old,) = struct.unpack_from("<I", out, h.opt_off + field)
            shrink = s.raw_size if flag != SCN_CNT_UNINITIALIZED_DATA else _align(s.virtual_size, h.file_alignment)
            struct.pack_into("<I", out, h.opt_off + field, max(0, old - shrink))
    if h.checksum:
        struct.pack_into("<I", out, h.opt_off + 64, pe_checksum(out, h.opt_off + 64))
    return bytes(out)


__all__ = [
    "CODE", "RDATA", "SCN_CNT_CODE", "SCN_CNT_INITIALIZED_DATA", "SCN_CNT_UNINITIALIZED_DATA",
    "SCN_MEM_EXECUTE", "SCN_MEM_READ", "SCN_MEM_WRITE", "Headers", "SectionHeader", "add_section",
    "pe_checksum", "read_headers", "remove_last_section",
]
