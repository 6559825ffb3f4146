"""The image model every format reader produces: regions of code and data, plus format facts.

One model for every input format (PE32, .rdv drivers, boot images, raw images), so the scanner
and everything after it never look at headers again.
"""

from __future__ import annotations

import bisect
import sys
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum


class RegionKind(str, Enum):
    CODE = "code"
    DATA = "data"


class AnchorKind(str, Enum):
    """Where a known instruction boundary comes from (see docs/scanning.md)."""

    ENTRY = "entry"  # the format's entry point
    EXPORT = "export"  # an exported function
    REGION_START = "region-start"  # the first byte of a code region the format says starts with code


@dataclass(frozen=True)
class Anchor:
    """A known instruction boundary supplied by the format, in region-relative offset.

    ``strong`` anchors are boundaries the format guarantees (entry points, exports, a PE code
    section's start). A weak one is only likely: a driver's code segment may open with strings.
    """

    offset: int
    kind: AnchorKind
    name: str = ""
    strong: bool = True


@dataclass(frozen=True)
class Region:
    """A contiguous run of file bytes mapped at ``address``.

    ``size`` bytes are present in the file from ``file_offset``; code regions carry a bitness
    (16 or 32; 64 for PE32+ code, which the scanner reports but does not expect stubs in).
    """

    name: str
    kind: RegionKind
    file_offset: int
    address: int
    size: int
    bitness: int | None = None
    anchors: tuple[Anchor, ...] = ()
    note: str = ""

    @property
    def end_offset(self) -> int:
        return self.file_offset + self.size

    def contains_offset(self, file_offset: int) -> bool:
        return self.file_offset <= file_offset < self.file_offset + self.size

    def address_of(self, file_offset: int) -> int:
        return self.address + (file_offset - self.file_offset)


class Relocations:
    """The addresses of relocated 32-bit fields, read lazily from where the format keeps them.

    A large application has a relocation every few dozen bytes (1.4 million in 64 MiB of
    code): building them all as Python integers costs more memory and time than scanning the
    image. The index keeps each 4 KiB page's entries where they lie in the file and decodes a
    page only when asked about it; iteration (small images, whose code is discovered whole)
    decodes them all once.

    ``blocks`` are (page address, file offset of the page's u16 entries, entry count); an entry
    whose top four bits are ``kind`` is a field at page address + its low 12 bits.
    """

    HIGHLOW = 3

    def __init__(self, data: bytes, blocks: Sequence[tuple[int, int, int]]) -> None:
        self._data = data
        self._pages: dict[int, list[tuple[int, int]]] = {}
        for page, off, count in blocks:
            self._pages.setdefault(page, []).append((off, count))
        self._decoded: dict[int, tuple[int, ...]] = {}
        self._all: array[int] | None = None

    def _page(self, page: int) -> tuple[int, ...]:
        got = self._decoded.get(page)
        if got is None:
            out: list[int] = []
            for off, count in self._pages.get(page, ()):
                entries = array("H")
                entries.frombytes(self._data[off : off + 2 * count])
                if sys.byteorder != "little":
                    entries.byteswap()
                out.extend((page + (e & 0xFFF)) & 0xFFFFFFFF for e in entries if e >> 12 == self.HIGHLOW)
            got = self._decoded[page] = tuple(sorted(out))
        return got

    def between(self, lo: int, hi: int) -> list[int]:
        """Sorted addresses of relocated fields that start in ``[lo, hi)``."""
        out: list[int] = []
        if hi - lo > 64 * len(self._pages) * 4096 or hi <= lo:
            return [a for a in self if lo <= a < hi] if hi > lo else []
        page = lo & ~0xFFF
        while page < hi:
            if page in self._pages:
                p = self._page(page)
                out.extend(p[bisect.bisect_left(p, lo) : bisect.bisect_left(p, hi)])
            page += 0x1000
        return out

    def overlaps(self, address: int, n: int) -> bool:
        """Any relocated field covers a byte of ``[address, address + n)``.

        Asked once per site: the page's entries are searched for the few fields that could
        overlap, as bytes, without decoding the page."""
        data = self._data
        for x in range(address - 3, address + n):
            page = x & ~0xFFF
            blocks = self._pages.get(page & 0xFFFFFFFF)
            if not blocks:
                continue
            want = ((self.HIGHLOW << 12) | (x & 0xFFF)).to_bytes(2, "little")
            for off, count in blocks:
                end = off + 2 * count
                q = data.find(want, off, end)
                while q != -1:
                    if (q - off) % 2 == 0:
                        return True
                    q = data.find(want, q + 1, end)
        return False

    def __iter__(self) -> Iterator[int]:
        if self._all is None:
            self._all = array("I", sorted(a for page in self._pages for a in self._page(page)))
        return iter(self._all)

    def __len__(self) -> int:
        return sum(len(self._page(p)) for p in self._pages)

    def __bool__(self) -> bool:
        return any(self._page(p) for p in self._pages)


@dataclass
class Image:
    """A decoded input file.

    ``data`` holds the whole file once; regions are views into it by file offset, so nothing is
    copied per region.
    """

    path: str
    format: str  # "pe32", "pe32+", "rdv16", "rdv32", "bootimg", "raw16", "raw32"
    data: bytes
    regions: list[Region] = field(default_factory=list)
    facts: dict[str, object] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # The 32-bit absolute fields the loader relocates (PE HIGHLOW base relocations). Each holds an
    # address the linker placed: an instruction operand or data, never an instruction start, and
    # never part of a gate stub (docs/scanning.md, "Code discovery").
    relocations: Relocations = field(default_factory=lambda: Relocations(b"", ()))

    @property
    def code_regions(self) -> list[Region]:
        return [r for r in self.regions if r.kind is RegionKind.CODE]

    @property
    def data_regions(self) -> list[Region]:
        return [r for r in self.regions if r.kind is RegionKind.DATA]

    def region_bytes(self, region: Region) -> memoryview:
        return memoryview(self.data)[region.file_offset : region.end_offset]

    def read_at(self, address: int, n: int, prefer: Region | None = None) -> bytes:
        """Up to ``n`` file bytes at a load address, from ``prefer`` or the first region mapping
        it (a jump table may sit in another section); empty if no region maps it."""
        for r in ([prefer] if prefer is not None else []) + self.regions:
            if r.address <= address < r.address + r.size:
                off = r.file_offset + (address - r.address)
                return self.data[off : min(off + n, r.end_offset)]
        return b""
