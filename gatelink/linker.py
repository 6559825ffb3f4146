"""Images for a linker: bytes already in memory, with the code regions and bitness the linker
knows, rather than a file on disk (``docs/api.md``, "For linkers").

``image_from_bytes(data)`` reads a whole image held in memory (PE, .rdv, boot image, or raw
with :class:`~gatelink.formats.RawOptions`) exactly as :func:`gatelink.open_image` reads a file.
``memory_image(data, spans)`` builds an image from caller-supplied code spans: where each lies
in ``data``, its load address, its bitness, and the instruction starts the linker knows (its
function symbols), which the scanner takes as proven boundaries.

Everything here raises :class:`~gatelink.errors.UsageError` (a wrong argument) or
:class:`~gatelink.errors.InputError` (malformed bytes); nothing prints or exits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .errors import InputError, UsageError
from .formats import BACKENDS, FORMAT_NAMES, RawOptions, detect, raw_read
from .image import Anchor, AnchorKind, Image, Region, RegionKind


@dataclass(frozen=True)
class CodeSpan:
    """A run of code in the caller's buffer.

    ``file_offset``/``size``: where it lies in the data; ``address``: where it is loaded;
    ``bitness``: 16 or 32; ``entries``: load addresses of known instruction starts inside it
    (function symbols, the entry point), each a proven boundary for the scanner. ``starts_with_code``:
    the span's first byte is an instruction (true for a linker's text section).
    """

    file_offset: int
    address: int
    size: int
    bitness: int
    name: str = ".text"
    entries: tuple[int, ...] = ()
    starts_with_code: bool = True


def image_from_bytes(data: bytes, name: str = "<memory>", format: str | None = None,
                     raw: RawOptions | None = None) -> Image:
    """Read an image held in memory, as :func:`gatelink.open_image` reads a file. ``name`` is what
    reports and errors call it; ``format`` one of ``pe``, ``rdv``, ``bootimg``, ``raw`` or None
    to detect it; ``raw`` is needed for (and implies) ``raw``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise UsageError(f"{name}: image data must be bytes, not {type(data).__name__}")
    buf = bytes(data)
    if format is not None and format not in FORMAT_NAMES:
        raise UsageError(f"unknown input format {format!r}; choose one of {', '.join(FORMAT_NAMES)}")
    if raw is not None or format == "raw":
        if raw is None:
            raise UsageError("a raw image needs RawOptions(bitness, base)")
        if format not in (None, "raw"):
            raise UsageError(f"raw options conflict with input format {format!r}")
        return raw_read(name, buf, raw)
    fmt = format or detect(buf)
    if fmt is None:
        raise InputError(name, "unknown format: not PE (MZ), .rdv (R6/R2) or a boot image; give RawOptions for "
                               "a headerless image")
    mod = BACKENDS[fmt]
    if not mod.probe(buf):
        raise InputError(name, f"not a {fmt} file: {mod.MAGIC_HELP}")
    return mod.read(name, buf)


def memory_image(data: bytes, spans: Iterable[CodeSpan], name: str = "<memory>", format: str | None = None) -> Image:
    """An image of ``data`` whose code is exactly ``spans`` (everything else is not scanned).

    ``format`` is what the image says it is (default ``raw32``/``raw16`` by the first span's
    bitness; ``pe32`` for a PE's code lets the scanner assume compiled code without data between
    functions). Raises :class:`UsageError` for spans outside ``data``, overlapping, of a bitness
    other than 16 or 32, or with entries outside the span.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise UsageError(f"{name}: image data must be bytes, not {type(data).__name__}")
    buf = bytes(data)
    spans = list(spans)
    if not spans:
        raise UsageError(f"{name}: no code spans given")
    regions: list[Region] = []
    names: set[str] = set()
    for s in sorted(spans, key=lambda s: s.file_offset):
        where = f"{name}: code span {s.name!r}"
        if s.bitness not in (16, 32):
            raise UsageError(f"{where}: bitness must be 16 or 32, not {s.bitness}")
        if s.size <= 0 or s.file_offset < 0 or s.file_offset + s.size > len(buf):
            raise UsageError(f"{where}: bytes {s.file_offset:#x}..{s.file_offset + s.size:#x} are not inside the "
                             f"{len(buf)}-byte data")
        if s.address < 0 or s.address + s.size > (1 << s.bitness):
            raise UsageError(f"{where}: addresses {s.address:#x}..{s.address + s.size:#x} do not fit "
                             f"{s.bitness}-bit code")
        if regions and s.file_offset < regions[-1].end_offset:
            raise UsageError(f"{where} overlaps {regions[-1].name!r}")
        if s.name in names:
            raise UsageError(f"{where}: two spans have this name")
        names.add(s.name)
        anchors = [Anchor(0, AnchorKind.REGION_START, "span start")] if s.starts_with_code else []
        for e in sorted(set(s.entries)):
            if not s.address <= e < s.address + s.size:
                raise UsageError(f"{where}: entry {e:#x} is outside {s.address:#x}..{s.address + s.size:#x}")
            anchors.append(Anchor(e - s.address, AnchorKind.EXPORT, f"entry {e:#x}"))
        regions.append(Region(s.name, RegionKind.CODE, s.file_offset, s.address, s.size, s.bitness, tuple(anchors),
                              "caller-supplied code span"))
    fmt = format or f"raw{regions[0].bitness}"
    img = Image(path=name, format=fmt, data=buf, regions=regions)
    img.facts.update({"spans": len(regions), "source": "memory"})
    return img


def stub_offsets(image: Image, addresses: Sequence[int]) -> list[int]:
    """File offsets of stubs the linker placed at these load addresses (for
    :func:`gatelink.scan.verify_sites`); raises :class:`UsageError` for an address in no code
    region."""
    out = []
    for a in addresses:
        r = next((r for r in image.code_regions if r.address <= a < r.address + r.size), None)
        if r is None:
            raise UsageError(f"{image.path}: address {a:#x} is in no code region")
        out.append(r.file_offset + (a - r.address))
    return out


__all__ = ["CodeSpan", "image_from_bytes", "memory_image", "stub_offsets"]
