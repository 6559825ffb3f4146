"""Raw images: a kernel or blob with no headers; the user gives bitness and load address."""

from __future__ import annotations

from ..errors import InputError
from ..image import Anchor, AnchorKind, Image, Region, RegionKind

NAME = "raw"


def read(path: str, data: bytes, bitness: int, base: int) -> Image:
    if not data:
        raise InputError(path, "empty file")
    # A raw kernel image starts executing at its first byte, so the start is a strong boundary.
    region = Region(
        name="image", kind=RegionKind.CODE, file_offset=0, address=base, size=len(data),
        bitness=bitness, anchors=(Anchor(0, AnchorKind.ENTRY, "image start"),),
    )
    img = Image(path=path, format=f"raw{bitness}", data=data, regions=[region])
    img.facts.update({"bitness": bitness, "base": base, "size": len(data)})
    return img
