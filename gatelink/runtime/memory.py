"""The memory the runtime patches, and where a table's regions sit in it.

The runtime touches code only through :class:`Memory`: read bytes, store 1, 2, 4 or 8 bytes as
one atomic store (one instruction: ``mov``, ``xchg``, ``lock cmpxchg8b``), and sync (serialise
every other core). A kernel implements it over its code mapping, the simulator over versioned
chunks (:mod:`.sim`), and :class:`ImageMemory` over the bytes of a file.

:class:`Placement` says where each region of a table lives: its *memory address* (where the
runtime reads and stores its bytes) and its *code address* (the EIP of its first byte as the
CPU runs it: what a fault reports and what a near call's rel32 is relative to).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..table.model import PatchTable, TableSite

STORE_SIZES = (1, 2, 4, 8)


@runtime_checkable
class Memory(Protocol):
    """What the runtime needs from the memory it patches."""

    def read(self, address: int, size: int) -> bytes:
        """``size`` bytes from ``address``."""
        ...

    def store(self, address: int, data: bytes) -> None:
        """Store ``data`` (1, 2, 4 or 8 bytes, never crossing a 64-byte line) as one atomic
        store: another core fetching these bytes sees all of them old or all new."""
        ...

    def sync(self) -> None:
        """Serialise every other core: each finishes its current instruction and fetches the
        next one afresh, seeing every store made before the sync."""
        ...


class ImageMemory:
    """A :class:`Memory` over a bytearray (a file's bytes): addresses are offsets into it.

    No other core runs this code, so :meth:`sync` does nothing; :meth:`write` writes any
    number of bytes at once (up-front patching needs no atomicity).
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = data if isinstance(data, bytearray) else bytearray(data)

    def read(self, address: int, size: int) -> bytes:
        if address < 0 or address + size > len(self.data):
            raise IndexError(f"read of {size} bytes at {address:#x} outside the {len(self.data)}-byte image")
        return bytes(self.data[address : address + size])

    def store(self, address: int, data: bytes) -> None:
        n = len(data)
        if n not in STORE_SIZES:
            raise ValueError(f"a store writes 1, 2, 4 or 8 bytes, not {n}")
        if address < 0 or address + n > len(self.data):
            raise IndexError(f"store of {n} bytes at {address:#x} outside the {len(self.data)}-byte image")
        self.data[address : address + n] = data

    def write(self, address: int, data: bytes) -> None:
        if address < 0 or address + len(data) > len(self.data):
            raise IndexError(f"write of {len(data)} bytes at {address:#x} outside the {len(self.data)}-byte image")
        self.data[address : address + len(data)] = data

    def sync(self) -> None:
        pass


@dataclass(frozen=True)
class Placement:
    """Per region of a table: ``memory`` address and ``code`` address of its first byte.

    A site at table address ``a`` in region ``r`` (whose table address is ``R``) has memory
    address ``memory[r] + (a - R)`` and code address ``code[r] + (a - R)``.
    """

    memory: tuple[int, ...]
    code: tuple[int, ...]

    @classmethod
    def file(cls, table: PatchTable) -> Placement:
        """The image file: memory addresses are file offsets, code addresses as linked."""
        return cls(tuple(r.file_offset for r in table.regions), tuple(r.address for r in table.regions))

    @classmethod
    def linked(cls, table: PatchTable, memory: Sequence[int] | None = None) -> Placement:
        """Code at its link addresses; memory at ``memory`` per region (default: the same as
        the code addresses, a flat mapping)."""
        code = tuple(r.address for r in table.regions)
        mem = tuple(memory) if memory is not None else code
        if len(mem) != len(code):
            raise ValueError(f"memory gives {len(mem)} region addresses, the table has {len(code)} regions")
        return cls(mem, code)

    def memory_address(self, table: PatchTable, site: TableSite) -> int:
        return self.memory[site.region] + (site.address - table.regions[site.region].address)

    def code_address(self, table: PatchTable, site: TableSite) -> int:
        return self.code[site.region] + (site.address - table.regions[site.region].address)


__all__ = ["STORE_SIZES", "ImageMemory", "Memory", "Placement"]
