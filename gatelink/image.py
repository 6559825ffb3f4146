"""The image model every format reader produces: regions of code and data, plus format facts.

One model for every input format (PE32, .rdv drivers, boot images, raw images), so the scanner
and everything after it never look at headers again.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    # Addresses of the 32-bit absolute fields the loader relocates (PE HIGHLOW base relocations),
    # sorted. Each holds an address the linker placed: an instruction operand or data, never an
    # instruction start, and never part of a gate stub (docs/scanning.md, "Code pointers").
    relocations: Sequence[int] = ()

    @property
    def code_regions(self) -> list[Region]:
        return [r for r in self.regions if r.kind is RegionKind.CODE]

    @property
    def data_regions(self) -> list[Region]:
        return [r for r in self.regions if r.kind is RegionKind.DATA]

    def region_bytes(self, region: Region) -> memoryview:
        return memoryview(self.data)[region.file_offset : region.end_offset]
