"""Putting a patch table into its image and finding it there (``docs/table-format.md``,
"Embedding").

* PE32/PE32+: a read-only section ``.gltab`` appended by :func:`gatelink.formats.pe_edit.add_section`.
* ``.rdv``: a trailer after code and data (and before Open Watcom debug information, which
  debuggers find from the end of the file), then a 16-byte footer; the header is untouched.
* Boot images and raw images: not supported (a clear usage error).

:func:`extract` returns the table bytes and the image as it was without the table, which is
what the table's identity describes and what ``--check`` and re-embedding start from.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import UsageError
from ..formats import pe_edit
from .binary import HEADER_SIZE, MAGIC, TableError

SECTION = ".gltab"
FOOTER_MAGIC = b"GLTBEND\0"
FOOTER = struct.Struct("<8sII")
WATCOM_DEBUG_SIGNATURE = 0x8386
WATCOM_DEBUG_HEADER = 14


@dataclass(frozen=True)
class Embedded:
    """A table found inside an image file."""

    kind: str  # "pe-section" or "rdv-trailer"
    table: bytes
    original: bytes  # the file without the table


def _kind(fmt: str) -> str:
    if fmt in ("pe32", "pe32+"):
        return "pe"
    if fmt in ("rdv16", "rdv32"):
        return "rdv"
    return fmt


def embed(data: bytes, image_format: str, table: bytes, path: str = "<image>") -> bytes:
    """``data`` (the image without a table) with ``table`` embedded."""
    k = _kind(image_format)
    if k == "pe":
        return pe_edit.add_section(data, SECTION, table, pe_edit.RDATA, path=path)
    if k == "rdv":
        payload_end, declared_end = _rdv_ends(data, path)
        debug = _watcom_debug_start(data)
        if debug is not None and debug < payload_end:
            debug = None  # the "header" is a coincidence inside code or data
        cut = len(data) if debug is None else debug
        # A 32-bit driver may end 16 bytes short of header + code_size + data_size (linker
        # quirk): the loader's read of the declared size must find zeros there, not the table.
        pad = bytes(max(0, declared_end - cut))
        return data[:cut] + pad + table + FOOTER.pack(FOOTER_MAGIC, cut + len(pad), len(table)) + data[cut:]
    if k == "bootimg":
        raise UsageError(f"{path}: --embed does not support boot images (their objects carry CRCs and the "
                         "loader copies each driver as is): embed into the .rdv drivers before building the "
                         "image, or use --sidecar, --c or --asm")
    raise UsageError(f"{path}: --embed does not support raw images (no loader would look for it): "
                     "use --c or --asm to link the table into the kernel, or --sidecar")


def _watcom_debug_start(data: bytes) -> int | None:
    """Where Open Watcom debug information starts, found from its master header at the end of
    the file (``u16 0x8386, 4 version bytes, u16 lang_size, u16 segment_size, u32 debug_size``)."""
    if len(data) < WATCOM_DEBUG_HEADER:
        return None
    sig, = struct.unpack_from("<H", data, len(data) - WATCOM_DEBUG_HEADER)
    size, = struct.unpack_from("<I", data, len(data) - 4)
    if sig != WATCOM_DEBUG_SIGNATURE or not WATCOM_DEBUG_HEADER <= size <= len(data):
        return None
    return len(data) - size


def _rdv_ends(data: bytes, path: str) -> tuple[int, int]:
    """Where the driver's header, code and data end in the file, and where its header says
    they end (``header + code_size + data_size``, what the RDOS loader reads)."""
    from ..formats import rdv

    img = rdv.read(path, data)
    h = rdv.parse_header(path, data)
    end = max((r.end_offset for r in img.regions if r.name != "trailer"), default=0)
    return end, h.size + h.code_size + h.data_size


def _rdv_footer(data: bytes, end: int) -> tuple[int, int] | None:
    if end < FOOTER.size:
        return None
    magic, off, size = FOOTER.unpack_from(data, end - FOOTER.size)
    if magic != FOOTER_MAGIC:
        return None
    return off, size


def extract(data: bytes, image_format: str | None, path: str = "<image>") -> Embedded | None:
    """The table embedded in ``data``, or None when there is none. Raises :class:`TableError`
    when an embedding is there but damaged (the table itself is not parsed here)."""
    if data[:2] == b"MZ" and image_format in (None, "pe32", "pe32+"):
        try:
            h = pe_edit.read_headers(data, path)
        except Exception:
            return None
        s = h.section(SECTION)
        if s is None:
            return None
        if s.raw_pointer + s.raw_size > len(data) or s.raw_size < HEADER_SIZE:
            raise TableError(path, f"section {SECTION} lies outside the file or is too small for a table")
        blob = data[s.raw_pointer : s.raw_pointer + s.raw_size]
        if blob[:4] != MAGIC:
            raise TableError(path, f"section {SECTION} does not start with a patch table")
        total, = struct.unpack_from("<I", blob, 8)
        if not HEADER_SIZE <= total <= min(len(blob), s.virtual_size or len(blob)):
            raise TableError(path, f"section {SECTION}: table size {total} does not fit the section")
        file_size, = struct.unpack_from("<Q", blob, 24)
        try:
            original = pe_edit.remove_last_section(data, SECTION, file_size, path)
        except Exception as e:
            raise TableError(path, f"section {SECTION} is not where gatelink puts it for a {file_size}-byte "
                                   f"image (the table belongs to another file?): {e}") from None
        return Embedded("pe-section", blob[:total], original)
    if image_format not in (None, "rdv16", "rdv32"):
        return None
    end = len(data)
    ft = _rdv_footer(data, end)
    debug_start = None
    if ft is None:
        debug_start = _watcom_debug_start(data)
        if debug_start is None:
            return None
        ft = _rdv_footer(data, debug_start)
        if ft is None:
            return None
        end = debug_start
    off, size = ft
    if off + size + FOOTER.size != end or size < HEADER_SIZE:
        raise TableError(path, f"patch table footer says {size} bytes at {off:#x}, which does not end at the "
                               f"footer ({end - FOOTER.size:#x})")
    table = data[off : off + size]
    if table[:4] != MAGIC:
        raise TableError(path, f"no patch table at {off:#x}, where the footer points")
    # The file without the table: its first file_size - D bytes, then the D bytes of debug
    # information after the footer; up to 16 zero bytes may separate the first part and the table.
    file_size, = struct.unpack_from("<Q", table, 24)
    tail = len(data) - end
    cut = file_size - tail
    if not 0 <= off - cut <= 16 or any(data[cut:off]):
        raise TableError(path, f"the embedded table is for a {file_size}-byte file, which does not fit where it sits")
    original = data[:cut] + data[end:]
    return Embedded("rdv-trailer", table, original)


__all__ = ["FOOTER_MAGIC", "SECTION", "Embedded", "embed", "extract"]
