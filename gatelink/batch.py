"""Scanning many files at once: a process pool over the files, and a content-hash cache.

``scan_files(paths, ...)`` scans every file and returns, in the order given, a
:class:`~gatelink.scan.ScanResult` or the :class:`~gatelink.errors.InputError` that file gave.
``map_files(paths, derive, derive_key, ...)`` also applies ``derive`` (an audit, say) to each
scan, in the worker that made it. With several files to do and ``jobs`` > 1 the files are shared
out to forked worker processes (largest first, so the pool stays busy); one file alone is
scanned in this process, its large code regions shared out by the scanner itself. The results
do not depend on ``jobs``.

``cache=DIR`` keeps each result under the SHA-256 of everything it depends on: the file's bytes,
the input-format options, the gate list, the gatelink version and the source of the modules
that read and scan (so a changed scanner never serves stale results); a derived result also
under its settings and the source of the whole package. A file whose key is in the cache is
read and hashed here, in the calling process, not scanned; only misses go to the workers. Entries are written atomically; a damaged or foreign
entry is ignored and rewritten. Entries are pickles read back by an unpickler that builds only
gatelink's own types (and plain containers), so a planted entry cannot run code; still, keep the
cache as private as the build tree.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import hashlib
import io
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

from . import __version__
from .errors import InputError, UsageError

if TYPE_CHECKING:  # imported where used: a replayed run must not load the decoder
    from .formats import RawOptions
    from .gates import GateDB
    from .scan import ScanResult

CACHE_FORMAT = 2
_MAGIC = b"gatelink-scan-cache\n"


@dataclass(frozen=True)
class ScanOptions:
    """How to read the inputs (see :func:`gatelink.open_image`)."""

    format: str | None = None
    raw: RawOptions | None = None


def dist_stamp(module: str) -> str:
    """What identifies the installed version of a library without importing it (or
    importlib.metadata): the names, sizes and mtimes of the files of its package folder."""
    from importlib.util import find_spec

    try:
        spec = find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        return f"{module} -"
    origin = Path(spec.origin)
    try:
        if spec.submodule_search_locations:  # a package: the files of its folder
            entries = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(origin.parent)
                             if e.is_file())
        else:  # a single module
            st = origin.stat()
            entries = [(origin.name, st.st_size, st.st_mtime_ns)]
    except OSError:
        return f"{module} ?"
    return f"{module} " + hashlib.sha256(repr(entries).encode()).hexdigest()[:16]


def code_fingerprint() -> str:
    """SHA-256 over what a scan result depends on besides its input: the gatelink version, the
    installed iced-x86, and the source of the modules that read formats, decode and scan."""
    global _FINGERPRINT
    if _FINGERPRINT is None:
        h = hashlib.sha256(f"gatelink {__version__}; cache {CACHE_FORMAT}; {dist_stamp('iced_x86')}\n".encode())
        root = Path(__file__).resolve().parent
        files = [root / n for n in ("catalog.py", "decode.py", "gates.py", "image.py", "errors.py")]
        for sub in ("scan", "formats", "data"):
            files += sorted((root / sub).glob("*.*"))
        for f in files:
            if f.suffix in (".py", ".csv") and f.is_file():
                h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
        _FINGERPRINT = h.hexdigest()
    return _FINGERPRINT


_FINGERPRINT: str | None = None


class _SafeUnpickler(pickle.Unpickler):
    """Builds gatelink's own types and plain containers, nothing else."""

    _BUILTINS = frozenset({"frozenset", "set", "tuple", "list", "dict", "bytes", "bytearray", "int", "str"})

    def find_class(self, module: str, name: str) -> object:
        if (module == "gatelink" or module.startswith("gatelink.")) and not name.startswith("_"):
            return super().find_class(module, name)
        if module == "builtins" and name in self._BUILTINS:
            return super().find_class(module, name)
        if module == "array" and name in ("array", "_array_reconstructor"):  # PE relocation lists
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a scan cache entry")


class ScanCache:
    """Scan results (and results derived from them, e.g. audits) keyed by content (see the
    module docstring). ``hits`` and ``misses`` count this object's lookups."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise UsageError(f"--cache {folder}: not a directory")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"--cache {folder}: cannot create: {e.strerror or e}") from None
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(data: bytes, options: ScanOptions, gates: GateDB, derive_key: str = "") -> str:
        """The entry's key: what the scan depends on, and for a derived result (``derive_key``:
        what it was derived with) the source of the whole package too."""
        h = hashlib.sha256()
        raw = options.raw
        h.update(repr((code_fingerprint(), options.format, None if raw is None else (raw.bitness, raw.base),
                       gates.describe())).encode())
        if derive_key:
            h.update(b"\0derived\0" + derive_key.encode() + b"\0" + package_fingerprint().encode())
        h.update(b"\0")
        h.update(data)
        return h.hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.pickle"

    def load(self, key: str, path: str, data: bytes, gates: GateDB) -> tuple[ScanResult, object] | None:
        """The cached (scan result, derived result or None) for ``key``, given the file's
        ``path`` and ``data``, or None."""
        try:
            blob = self._path(key).read_bytes()
        except OSError:
            self.misses += 1
            return None
        from .scan import ScanResult

        try:
            if not blob.startswith(_MAGIC):
                raise ValueError("not a cache entry")
            stored_key, res, derived = _SafeUnpickler(io.BytesIO(blob[len(_MAGIC):])).load()
            if stored_key != key or not isinstance(res, ScanResult):
                raise ValueError("entry for another key")
        except Exception:  # noqa: BLE001 - a damaged entry is a miss, rewritten after the scan
            self.misses += 1
            return None
        self.hits += 1
        return _attach(res, path, data, gates), derived

    def store(self, key: str, result: ScanResult, derived: object = None) -> None:
        from .fsutil import atomic_write

        p = self._path(key)
        bare = _detach(result)
        if derived is not None:
            # The derived result refers to the scan result: pickle both together, so the reader
            # gets one object, the one it re-attaches the file's bytes to.
            derived = _swap_scan(derived, result, bare)
        try:
            p.parent.mkdir(exist_ok=True)
            atomic_write(p, _MAGIC + pickle.dumps((key, bare, derived), pickle.HIGHEST_PROTOCOL))
        except (OSError, UsageError):
            pass  # a cache that cannot be written only costs time


def package_fingerprint() -> str:
    """SHA-256 of the source of the whole package (derived results depend on all of it)."""
    global _PACKAGE_FINGERPRINT
    if _PACKAGE_FINGERPRINT is None:
        h = hashlib.sha256(code_fingerprint().encode())
        root = Path(__file__).resolve().parent
        for f in sorted(root.rglob("*")):
            if f.suffix in (".py", ".csv") and f.is_file() and "__pycache__" not in f.parts:
                h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
        _PACKAGE_FINGERPRINT = h.hexdigest()
    return _PACKAGE_FINGERPRINT


_PACKAGE_FINGERPRINT: str | None = None


def _detach(res: ScanResult, keep_data: bool = False) -> ScanResult:
    """A copy without the gate list (the receiver has it) and, unless ``keep_data``, without the
    file's bytes (a cache reader has them)."""
    img = res.image if keep_data else dataclasses.replace(res.image, data=b"")
    return dataclasses.replace(res, image=img, gates=None)


def _swap_scan(derived: object, old: ScanResult, new: ScanResult) -> object:
    """``derived`` with its ``scan`` attribute (if it is ``old``) pointing at ``new``."""
    if getattr(derived, "scan", None) is old:
        derived = copy.copy(derived)
        derived.scan = new  # type: ignore[attr-defined]
    return derived


def _attach(res: ScanResult, path: str, data: bytes | None, gates: GateDB) -> ScanResult:
    res.image.path = path
    if data is not None:
        res.image.data = data
    res.gates = gates
    return res


Derive = Callable[["ScanResult"], object]


@dataclass
class _Job:
    """What every file of one call shares (inherited by forked workers, never pickled)."""

    gates: GateDB
    options: ScanOptions
    cache: ScanCache | None
    derive: Derive | None
    derive_key: str
    jobs: int  # the scanner's own processes, for a file scanned in this process
    lean: bool = False  # workers send results without sites and near misses (derive has them)


_W_JOB: _Job | None = None


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None  # open_image names the problem


def _lookup(path: str, job: _Job) -> tuple[ScanResult, object] | None:
    if job.cache is None:
        return None
    data = _read(path)
    if data is None:
        return None
    return job.cache.load(job.cache.key(data, job.options, job.gates, job.derive_key), path, data, job.gates)


def _compute(path: str, job: _Job, jobs: int) -> tuple[ScanResult, object]:
    """Open, scan, derive, and keep it in the cache."""
    from .formats import open_image
    from .scan import scan

    opts = job.options
    img = open_image(path, format=None if opts.raw is not None else opts.format, raw=opts.raw)
    res = scan(img, job.gates, jobs=jobs)
    derived = job.derive(res) if job.derive is not None else None
    if job.cache is not None:
        job.cache.store(job.cache.key(img.data, opts, job.gates, job.derive_key), res, derived)
    return res, derived


def _work(item: tuple[int, str]) -> tuple[int, str, object]:
    """In a worker: (index, kind, payload) with kind ``ok`` ((result, derived), the gate list
    left out), ``input`` ((path, problem)) or ``usage`` (message)."""
    i, path = item
    job = _W_JOB
    assert job is not None
    try:
        res, derived = _compute(path, job, 1)
    except InputError as e:
        return i, "input", (e.path, e.problem)
    except UsageError as e:
        return i, "usage", str(e)
    bare = _detach(res, keep_data=not job.lean)
    if job.lean:
        # The caller needs only what derive made from the sites (and the warnings): do not ship
        # the sites, near misses and file bytes back (for a large batch, unpickling them is most
        # of what the parent does).
        bare = dataclasses.replace(bare, sites=[], near_misses=[])
    return i, "ok", (bare, _swap_scan(derived, res, bare))


def map_files(
    paths: Sequence[str | os.PathLike[str]],
    derive: Derive | None = None,
    derive_key: str = "",
    gates: GateDB | None = None,
    options: ScanOptions = ScanOptions(),
    jobs: int | None = None,
    cache: ScanCache | str | os.PathLike[str] | None = None,
    progress: Callable[[], None] | None = None,
    lean: bool = False,
) -> list[tuple[ScanResult, object] | InputError]:
    """Scan every file of ``paths`` and apply ``derive`` to each scan (in the worker that
    scanned it); the result for each file, in the order given, is ``(scan result, derived)``
    (derived None without ``derive``) or the :class:`InputError` it gave. ``lean``: the
    caller needs only the derived results and the scans' warnings, so a scan made in a worker
    process may come back without its sites and near misses.

    ``derive_key`` names what ``derive`` depends on besides the scan (its settings); with a
    cache, derived results are kept too, under the scan's key, ``derive_key`` and the package's
    source, so a rerun skips both. Cache lookups happen here; only misses go to the workers.
    ``jobs``: worker processes (default: one per CPU; 1: everything in this process).
    ``progress`` is called once per file done. A :class:`UsageError` (a wrong option for some
    file) is raised, for the first such file in order.
    """
    if gates is None:
        from .gates import bundled as bundled_gates

        gates = bundled_gates()
    db = gates
    store = cache if isinstance(cache, ScanCache) or cache is None else ScanCache(cache)
    n_jobs = jobs if jobs is not None else (os.cpu_count() or 1)
    if n_jobs < 1:
        raise UsageError(f"jobs must be 1 or more, not {n_jobs}")
    if derive is not None and store is not None and not derive_key:
        raise UsageError("a cached derived result needs a derive_key naming its settings")
    job = _Job(db, options, store, derive, derive_key if derive is not None else "", n_jobs, lean and derive is not None)
    spaths = [os.fspath(p) for p in paths]
    out: list[tuple[ScanResult, object] | InputError | None] = [None] * len(spaths)
    usage: dict[int, str] = {}
    todo = []
    for i, p in enumerate(spaths):
        hit = _lookup(p, job)
        if hit is None:
            todo.append(i)
            continue
        out[i] = hit
        if progress is not None:
            progress()
    workers = min(n_jobs, len(todo))
    if workers <= 1 or not hasattr(os, "fork"):
        for i in todo:
            try:
                out[i] = _compute(spaths[i], job, n_jobs if len(todo) == 1 else 1)
            except InputError as e:
                out[i] = e
            except UsageError as e:
                usage[i] = str(e)
            if progress is not None:
                progress()
    else:
        _pool(spaths, todo, job, workers, out, usage, progress)
    if usage:
        raise UsageError(usage[min(usage)])
    return [r for r in out if r is not None]


def scan_files(
    paths: Sequence[str | os.PathLike[str]],
    gates: GateDB | None = None,
    options: ScanOptions = ScanOptions(),
    jobs: int | None = None,
    cache: ScanCache | str | os.PathLike[str] | None = None,
    progress: Callable[[], None] | None = None,
) -> list[ScanResult | InputError]:
    """Scan every file of ``paths``; the result for each, in the same order, is its
    :class:`ScanResult` or the :class:`InputError` it gave (other files are still scanned).
    See :func:`map_files` for ``jobs``, ``cache`` and ``progress``."""
    return [r if isinstance(r, InputError) else r[0]
            for r in map_files(paths, None, "", gates, options, jobs, cache, progress)]


def _pool(paths: list[str], todo: list[int], job: _Job, workers: int,
          out: list[tuple[ScanResult, object] | InputError | None], usage: dict[int, str],
          progress: Callable[[], None] | None) -> None:
    import multiprocessing

    global _W_JOB
    _W_JOB = job

    def size(p: str) -> int:
        try:
            return os.path.getsize(p)
        except OSError:
            return 0

    # Largest first: the long jobs start early and the short ones fill the gaps.
    order = sorted(todo, key=lambda i: (-size(paths[i]), i))
    ctx = multiprocessing.get_context("fork")
    # What every worker needs is imported once, here, before the fork (each worker would import
    # it again otherwise); objects alive then are shared copy-on-write with the workers: keep
    # the collector from touching them there (every page it walks is copied into each worker).
    import importlib

    for name in (".formats", ".scan", ".scan.discover"):
        importlib.import_module(name, __package__)
    gc.freeze()
    try:
        with ctx.Pool(workers) as pool:
            for i, kind, payload in pool.imap_unordered(_work, [(i, paths[i]) for i in order]):
                if kind == "ok":
                    assert isinstance(payload, tuple)
                    res, derived = payload
                    out[i] = (_attach(res, paths[i], None, job.gates), derived)
                elif kind == "input":
                    assert isinstance(payload, tuple)
                    out[i] = InputError(*payload)
                else:
                    usage[i] = str(payload)
                if progress is not None:
                    progress()
    finally:
        _W_JOB = None
        gc.unfreeze()


__all__ = ["CACHE_FORMAT", "ScanCache", "ScanOptions", "code_fingerprint", "dist_stamp", "map_files", "package_fingerprint",
           "scan_files"]
