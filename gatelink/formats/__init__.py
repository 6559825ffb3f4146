"""Format readers: bytes in, :class:`~gatelink.image.Image` out.

One backend per format behind one entry point, :func:`open_image`. Each backend module has
``NAME``, ``probe(data) -> bool`` (does the magic match?) and ``read(path, data, options)``.
Detection tries the backends in order; ``format=`` forces one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import InputError, UsageError
from ..fsutil import read_input
from ..image import Image
from . import bootimg, pe, rdv
from . import raw as raw_format

# Largest input read; a bigger file is refused rather than exhausting memory.
MAX_INPUT_BYTES = 1 << 31


@dataclass(frozen=True)
class RawOptions:
    """How to read a headerless image: its code bitness and load address."""

    bitness: int
    base: int = 0


BACKENDS = {m.NAME: m for m in (pe, rdv, bootimg)}
FORMAT_NAMES = ("pe", "rdv", "bootimg", "raw")


def detect(data: bytes) -> str | None:
    """The format whose magic ``data`` starts with, or None."""
    for name, mod in BACKENDS.items():
        if mod.probe(data):
            return name
    return None


def open_image(path: str | os.PathLike[str], format: str | None = None, raw: RawOptions | None = None) -> Image:
    """Read ``path`` into an :class:`Image`.

    ``format`` is one of ``pe``, ``rdv``, ``bootimg``, ``raw`` or None to detect it from the
    magic. ``raw`` (bitness, base) is required for raw images and implies ``format="raw"``.
    Raises :class:`InputError` (unreadable or malformed file) or :class:`UsageError`.
    """
    spath = os.fspath(path)
    if format is not None and format not in FORMAT_NAMES:
        raise UsageError(f"unknown input format {format!r}; choose one of {', '.join(FORMAT_NAMES)}")
    if raw is not None:
        if format not in (None, "raw"):
            raise UsageError(f"--raw conflicts with input format {format!r}")
        format = "raw"
    if format == "raw" and raw is None:
        raise UsageError("raw images need --bitness 16|32 (and optionally --base)")
    data = read_input(spath, "file", MAX_INPUT_BYTES)
    if format == "raw":
        assert raw is not None
        return raw_read(spath, data, raw)
    if format is None:
        format = detect(data)
        if format is None:
            raise InputError(
                spath,
                "unknown format: not PE (MZ), .rdv (R6/R2) or a boot image (D4 75 1E 5A); "
                "use --raw --bitness 16|32 for a headerless image",
            )
    mod = BACKENDS[format]
    if not mod.probe(data):
        raise InputError(spath, f"not a {format} file: {mod.MAGIC_HELP}")
    return mod.read(spath, data)


def raw_read(path: str, data: bytes, opts: RawOptions) -> Image:
    if opts.bitness not in (16, 32):
        raise UsageError(f"--bitness must be 16 or 32, not {opts.bitness}")
    if not 0 <= opts.base < (1 << 32):
        raise UsageError(f"--base must be between 0 and 0xFFFFFFFF, not {opts.base:#x}")
    if opts.bitness == 16 and opts.base + len(data) > 0x10000:
        raise UsageError(
            f"{path}: {len(data)} bytes at base {opts.base:#x} do not fit a 16-bit segment (64 KiB)"
        )
    if opts.base + len(data) > (1 << 32):
        raise UsageError(f"{path}: {len(data)} bytes at base {opts.base:#x} run past 4 GiB")
    return raw_format.read(path, data, opts.bitness, opts.base)


