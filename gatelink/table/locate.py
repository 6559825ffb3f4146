"""Finding the patch table of an image: embedded in it, or beside it (``FILE.gltab``,
``FILE.gltab.json``), checked against the image's identity. What the runtime and
``gatelink table --check`` share.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..fsutil import read_input
from ..image import Image
from .binary import TableError, read_table
from .check import check_identity
from .embed import extract
from .model import PatchTable

SIDECARS = (".gltab", ".gltab.json")


@dataclass
class Located:
    """A table and the image it describes (without the embedded table, if it was embedded)."""

    table: PatchTable
    image: Image
    where: str  # "embedded" or the sidecar's path


def image_without_table(image: Image) -> tuple[Image, bytes | None]:
    """``image`` with an embedded table removed (re-read from the original bytes), and that
    table's bytes; ``image`` itself and None when it holds no table."""
    if image.format not in ("pe32", "pe32+", "rdv16", "rdv32"):
        return image, None
    emb = extract(image.data, image.format, image.path)
    if emb is None:
        return image, None
    from ..formats import BACKENDS

    mod = BACKENDS["pe" if image.format.startswith("pe") else "rdv"]
    return mod.read(image.path, emb.original), emb.table


def read_table_file(path: str) -> PatchTable:
    """A table file: binary, or the JSON mirror (``.json``)."""
    data = read_input(path, "table")
    if path.endswith(".json"):
        from .jsonform import read_json

        return read_json(data, path)
    return read_table(data, path)


def locate(image: Image, table_path: str | None = None) -> Located:
    """The table of ``image``: ``table_path`` if given, else the table embedded in the image,
    else the first sidecar that exists. Raises :class:`TableError` when there is none or it
    does not belong to the image (identity and code regions checked)."""
    original, embedded = image_without_table(image)
    if table_path is not None:
        table, where = read_table_file(table_path), table_path
    elif embedded is not None:
        table, where = read_table(embedded, image.path), "embedded"
    else:
        for suffix in SIDECARS:
            p = image.path + suffix
            if os.path.exists(p):
                table, where = read_table_file(p), p
                break
        else:
            raise TableError(image.path, f"no patch table: none embedded, no {image.path}.gltab beside it "
                                         "(write one with gatelink table)")
    check_identity(table, original)
    return Located(table, original, where)


__all__ = ["SIDECARS", "Located", "image_without_table", "locate", "read_table_file"]
