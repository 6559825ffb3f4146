"""gatelink: find RDOS gate stubs in x86 binaries and plan provably safe SMP patches for them.

The pipeline, data flowing one way::

    formats (bytes -> Image) -> scan (Sites) -> plan (Plans, proven) -> ...

Library entry points::

    import gatelink
    image = gatelink.open_image("app.exe")          # or format=, raw=RawOptions(32, 0x110000)
    result = gatelink.scan(image)                     # ScanResult: .sites, .near_misses
    for site in result.sites:
        print(hex(site.address), site.shape, site.gate_name)
"""

from __future__ import annotations

from .errors import EXIT_INPUT, EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, GatelinkError, InputError, UsageError
from .formats import RawOptions, open_image
from .gates import GateDB
from .gates import load as load_gates
from .image import Image, Region, RegionKind
from .scan import NearMiss, ScanResult, Site, scan

__version__ = "0.1.0"

__all__ = [
    "EXIT_INPUT", "EXIT_INTERNAL", "EXIT_OK", "EXIT_USAGE", "GateDB", "GatelinkError", "Image",
    "InputError", "NearMiss", "RawOptions", "Region", "RegionKind", "ScanResult", "Site",
    "UsageError", "__version__", "load_gates", "open_image", "scan",
]
