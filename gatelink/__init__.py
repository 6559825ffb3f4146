"""gatelink: find RDOS gate stubs in x86 binaries and plan provably safe SMP patches for them.

The pipeline, data flowing one way::

    formats (bytes -> Image) -> scan (Sites) -> plan (Plans, proven) -> ...

Library entry points::

    import gatelink
    image = gatelink.open_image("app.exe")          # or format=, raw=RawOptions(32, 0x110000)
    result = gatelink.scan(image)                     # ScanResult: .sites, .near_misses
    for site in result.sites:
        print(hex(site.address), site.shape, site.gate_name)

The names below are imported on first use (module ``__getattr__``), so ``import gatelink`` and
the command line start fast: a command that does not scan never loads the decoder.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from .errors import (
    EXIT_INPUT,
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_USAGE,
    GatelinkError,
    InputError,
    UsageError,
)

if TYPE_CHECKING:
    from .formats import RawOptions, open_image
    from .gates import GateDB
    from .gates import load as load_gates
    from .image import Image, Region, RegionKind
    from .scan import NearMiss, ScanResult, Site, scan

__version__ = "0.1.0"

# Public name -> (module, attribute), loaded on first access.
_LAZY = {
    "RawOptions": (".formats", "RawOptions"),
    "open_image": (".formats", "open_image"),
    "GateDB": (".gates", "GateDB"),
    "load_gates": (".gates", "load"),
    "Image": (".image", "Image"),
    "Region": (".image", "Region"),
    "RegionKind": (".image", "RegionKind"),
    "NearMiss": (".scan", "NearMiss"),
    "ScanResult": (".scan", "ScanResult"),
    "Site": (".scan", "Site"),
    "scan": (".scan", "scan"),
}


def __getattr__(name: str) -> Any:
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'gatelink' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module, __name__), attr)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _Package(types.ModuleType):
    """``gatelink.scan`` is the scan function, though a subpackage has the same name: importing
    the subpackage must not rebind the package attribute to it (with eager imports the function
    was bound after the subpackage; lazily, this keeps it so). ``sys.modules["gatelink.scan"]``
    and ``from gatelink.scan import ...`` still give the subpackage."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__all__ = [
    "EXIT_INPUT", "EXIT_INTERNAL", "EXIT_OK", "EXIT_USAGE", "GateDB", "GatelinkError", "Image",
    "InputError", "NearMiss", "RawOptions", "Region", "RegionKind", "ScanResult", "Site",
    "UsageError", "__version__", "load_gates", "open_image", "scan",
]
