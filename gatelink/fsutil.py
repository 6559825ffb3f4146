"""Writing files without losing anything: every output goes to a temporary file in the target's
folder and is renamed over the target only once complete, so a crash or a full disk never
leaves a half-written table or binary, and an input is never touched unless it is the target.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import UsageError


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
