"""Reading and writing files without losing anything: an input that cannot be read is one
:class:`InputError` naming the file (:func:`read_input`); every output goes to a temporary file
in the target's folder and is renamed over the target only once complete, so a crash or a full
disk never leaves a half-written table or binary, and an input is never touched unless it is
the target.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import InputError, UsageError


def read_input(path: str | os.PathLike[str], what: str = "file", limit: int | None = None) -> bytes:
    """The bytes of the input file ``path``, at most ``limit`` of them (``what`` names the file's
    kind in the error). Raises :class:`InputError` naming the file when it is missing, a
    folder, unreadable, or larger than ``limit`` (checked before reading, and again on what was
    read, should the file grow in between)."""
    p = os.fspath(path)
    try:
        with open(p, "rb") as f:
            if limit is None:
                return f.read()
            size = os.fstat(f.fileno()).st_size
            data = f.read(limit + 1) if size <= limit else b""
            if size > limit or len(data) > limit:
                raise InputError(p, f"{what} is {max(size, len(data))} bytes; at most {limit} are read")
            return data
    except FileNotFoundError:
        raise InputError(p, "no such file") from None
    except IsADirectoryError:
        raise InputError(p, "is a directory") from None
    except PermissionError:
        raise InputError(p, "permission denied") from None
    except OSError as e:
        raise InputError(p, f"cannot read: {e.strerror or e}") from None


def atomic_write(path: str | os.PathLike[str], data: bytes | str, mode: int | None = None) -> None:
    """Write ``data`` (bytes, or text written as UTF-8) to ``path`` atomically.

    ``mode``: the file's permission bits (default: what a new file gets under the umask; an
    existing target keeps its mode, so rewriting an executable keeps it executable).
    Raises :class:`UsageError` (exit 2) when the folder is not writable.
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if mode is None:
        try:
            mode = os.stat(target).st_mode & 0o7777
        except OSError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, mode)  # mkstemp makes 0600
        os.replace(tmp, target)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise UsageError(f"cannot write {path}: {e.strerror or e}") from None
