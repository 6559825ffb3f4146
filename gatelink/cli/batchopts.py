"""What ``scan`` and ``audit`` share for many inputs: the batch scan with its progress bar, and
the per-file diagnostics in input order."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ..errors import UsageError
from .common import _err, _parse_int, write_output

if TYPE_CHECKING:
    from ..formats import RawOptions
    from ..gates import GateDB
    from ..scan import ScanResult


class FileProgress:
    """A rich progress bar on stderr, one step per file. It refreshes only when a file is done
    (no refresh thread), so worker processes fork from a single-threaded parent."""

    def __init__(self, files: int, what: str) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                           TimeElapsedColumn(), console=Console(stderr=True), transient=True, auto_refresh=False)
        self._p.start()
        self._task = self._p.add_task(what, total=files)
        self._p.refresh()

    def step(self) -> None:
        self._p.advance(self._task)
        self._p.refresh()

    def close(self) -> None:
        self._p.stop()


def raw_options(raw: bool, bitness: Optional[int], base: Optional[str]) -> RawOptions | None:
    """``--raw --bitness N [--base A]`` -> RawOptions (None without --raw)."""
    if raw:
        from ..formats import RawOptions

        if bitness is None:
            raise UsageError("--raw needs --bitness 16 or 32")
        if bitness not in (16, 32):
            raise UsageError(f"--bitness must be 16 or 32, not {bitness}")
        return RawOptions(bitness, _parse_int(base, "--base") if base is not None else 0)
    if bitness is not None or base is not None:
        raise UsageError("--bitness and --base apply to raw images only (add --raw)")
    return None


def check_jobs(jobs: Optional[int]) -> None:
    if jobs is not None and jobs < 1:
        raise UsageError(f"--jobs must be 1 or more, not {jobs}")


class Diagnostics:
    """The lines a run writes to stderr, kept so a remembered run can say them again."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, msg: str) -> None:
        _err(msg)
        self.lines.append(msg)


class RunMemo:
    """A whole run kept in the cache folder: its output, its stderr lines and its exit code,
    under the command, everything that shapes its output (``settings``), each input's path and
    content key, and the source of the package. Rerunning with nothing changed replays it
    without scanning, planning or rendering. Not made when an input cannot be read."""

    def __init__(self, cache: Path, command: str, settings: tuple[object, ...], files: list[Path], db: GateDB,
                 in_fmt: str | None, raw: RawOptions | None, derive_key: str = "") -> None:
        import hashlib

        from ..batch import ScanCache, ScanOptions, package_fingerprint

        self.folder = ScanCache(cache).folder / "runs"
        options = ScanOptions(None if in_fmt == "raw" else in_fmt, raw)
        h = hashlib.sha256(repr((command, settings, package_fingerprint(), _versions(), db.describe())).encode())
        self.key: str | None = None
        for f in files:
            try:
                data = f.read_bytes()
            except OSError:
                return  # the run reports it; no memo
            h.update(b"\0" + str(f).encode() + b"\0" + ScanCache.key(data, options, db, derive_key).encode())
        self.key = h.hexdigest()

    def replay(self, output: Optional[Path]) -> int | None:
        """Write the remembered output and stderr lines; the exit code, or None if not kept."""
        import json

        if self.key is None:
            return None
        try:
            blob = (self.folder / f"{self.key}.run").read_bytes()
            head, _, text = blob.partition(b"\n")
            meta = json.loads(head)
            if meta.get("key") != self.key:
                return None
            lines, code, out = list(meta["stderr"]), int(meta["code"]), text.decode("utf-8")
        except (OSError, ValueError, KeyError, TypeError):
            return None
        for line in lines:
            _err(str(line))
        write_output(out, output)
        return code

    def store(self, text: str, diags: Diagnostics, code: int) -> None:
        import json

        from ..fsutil import atomic_write

        if self.key is None:
            return
        meta = json.dumps({"key": self.key, "stderr": diags.lines, "code": code})
        try:
            self.folder.mkdir(exist_ok=True)
            atomic_write(self.folder / f"{self.key}.run", meta.encode() + b"\n" + text.encode("utf-8"))
        except (OSError, UsageError):
            pass  # a cache that cannot be written only costs time


def _versions() -> tuple[str, ...]:
    """What else shapes the output: Python, and the renderers' and readers' libraries."""
    from ..batch import dist_stamp

    return (sys.version, *(dist_stamp(m) for m in ("rich", "pefile", "sarif_om")))


def scan_inputs(files: list[Path], db: GateDB, in_fmt: str | None, raw: RawOptions | None, jobs: Optional[int],
                cache: Optional[Path], what: str = "scanning", derive: Callable[[ScanResult], object] | None = None,
                derive_key: str = "", diag: Callable[[str], None] = _err, lean: bool = False,
                ) -> tuple[list[tuple[ScanResult, object]], list[tuple[str, str]]]:
    """Scan ``files`` (a process pool for several, the cache if given), applying ``derive`` to
    each scan in the worker that made it; report each file's error or warnings in input order
    through ``diag``. Returns the (scan, derived) pairs and the (path, problem) of failed
    inputs."""
    from ..batch import ScanCache, ScanOptions, map_files
    from ..errors import InputError

    store = ScanCache(cache) if cache is not None else None
    progress = FileProgress(len(files), what) if sys.stderr.isatty() and len(files) > 1 else None
    try:
        outs = map_files([str(f) for f in files], derive, derive_key, db,
                         ScanOptions(None if in_fmt == "raw" else in_fmt, raw), jobs=jobs, cache=store,
                         progress=progress.step if progress else None, lean=lean)
    finally:
        if progress:
            progress.close()
    results = []
    failures = []
    for f, r in zip(files, outs):
        if isinstance(r, InputError):
            diag(f"error: {r}")
            failures.append((str(f), r.problem))
            continue
        for w in r[0].warnings:
            diag(f"warning: {f}: {w}")
        results.append(r)
    return results, failures
