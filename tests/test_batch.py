"""Batch mode: many files over a process pool, results in input order and independent of the
number of processes; the content-hash cache (hits, invalidation, damaged and hostile entries)."""

import os
import pickle
import shutil
import time
from pathlib import Path

import pytest
from conftest import FIXTURES, run_cli

from gatelink.batch import ScanCache, ScanOptions, scan_files
from gatelink.errors import InputError, UsageError
from gatelink.gates import load as load_gates
from gatelink.report import scan_json

SOURCES = ["pe/stubs_asm.exe", "pe/stubs_rdos.exe", "rdv/drv16.rdv", "rdv/drv32_padded.rdv",
           "rdv/drv32_short.rdv", "boot/rdos.bin"]


def variants(folder: Path, n: int) -> list[str]:
    """``n`` distinct files made from the fixtures: a unique trailer after each (overlay, debug
    info, bytes after the boot image's end marker), so every file has its own content hash
    and costs a full scan."""
    out = []
    for i in range(n):
        src = FIXTURES / SOURCES[i % len(SOURCES)]
        p = folder / f"{i:03d}_{src.name}"
        p.write_bytes(src.read_bytes() + b"gatelink-variant-%03d\0" % i)
        out.append(str(p))
    return out


def as_json(outs):
    db = load_gates([])
    return scan_json([r for r in outs if not isinstance(r, InputError)], [], db)


def test_pool_results_in_order_and_independent_of_jobs(tmp_path):
    files = variants(tmp_path, 8)
    bad = tmp_path / "bad.rdv"
    bad.write_bytes(b"R6\x01")
    files.insert(3, str(bad))
    files.append(str(tmp_path / "missing.exe"))
    done = []
    one = scan_files(files, jobs=1)
    two = scan_files(files, jobs=2, progress=lambda: done.append(1))
    assert len(done) == len(files)
    for a, b, f in zip(one, two, files):
        assert type(a) is type(b)
        if isinstance(a, InputError):
            assert a.path == b.path == f and a.problem == b.problem
        else:
            assert a.image.path == b.image.path == f
            assert a.image.data == b.image.data == Path(f).read_bytes()
            assert a.sites == b.sites and a.near_misses == b.near_misses and a.warnings == b.warnings
            assert b.gates is not None
    assert isinstance(two[3], InputError) and isinstance(two[-1], InputError)
    assert as_json(one) == as_json(two)


def test_cli_output_is_the_same_for_any_jobs_and_with_the_cache(tmp_path):
    files = variants(tmp_path, 6)
    outs = []
    for extra in (["-j", "1"], ["-j", "2"], ["--cache", str(tmp_path / "c")], ["--cache", str(tmp_path / "c")]):
        for cmd in ("scan", "audit"):
            o = tmp_path / f"{cmd}.json"
            code, _, err = run_cli(cmd, *files, "-f", "json", "-o", str(o), *extra)
            assert code == 0, err
            outs.append((cmd, o.read_bytes()))
    scans = {b for c, b in outs if c == "scan"}
    audits = {b for c, b in outs if c == "audit"}
    assert len(scans) == 1 and len(audits) == 1


def test_cache_hits_and_what_invalidates_an_entry(tmp_path):
    files = variants(tmp_path, 4)
    cache = ScanCache(tmp_path / "cache")
    first = scan_files(files, jobs=1, cache=cache)
    assert (cache.hits, cache.misses) == (0, 4)
    second = scan_files(files, jobs=2, cache=cache)
    assert (cache.hits, cache.misses) == (4, 4)
    assert as_json(first) == as_json(second)
    for a, b in zip(first, second):
        assert b.image.data == a.image.data and b.image.path == a.image.path and b.gates is not None
    # Changed bytes, other gate names, other options: a different key, so a miss.
    Path(files[0]).write_bytes(Path(files[0]).read_bytes() + b"x")
    scan_files(files, jobs=1, cache=cache)
    assert (cache.hits, cache.misses) == (7, 5)
    data = Path(files[2]).read_bytes()
    db = load_gates([])
    gates = tmp_path / "os.def"
    gates.write_text("my_gate_nr = 1\n")
    other = load_gates([str(gates)])
    assert ScanCache.key(data, ScanOptions(), db) != ScanCache.key(data, ScanOptions(), other)
    assert ScanCache.key(data, ScanOptions(), db) != ScanCache.key(data, ScanOptions("rdv"), db)
    # A copy of a file elsewhere hits, and reports its own path.
    copy = tmp_path / "sub" / "copy.rdv"
    copy.parent.mkdir()
    shutil.copy(files[2], copy)
    (res,) = scan_files([str(copy)], cache=cache)
    assert res.image.path == str(copy) and cache.hits == 8


def test_damaged_and_hostile_entries_are_misses(tmp_path):
    files = variants(tmp_path, 2)
    folder = tmp_path / "cache"
    cache = ScanCache(folder)
    clean = scan_files(files, jobs=1, cache=cache)
    entries = sorted(folder.glob("*/*.pickle"))
    assert len(entries) == 2
    entries[0].write_bytes(entries[0].read_bytes()[:50])  # truncated

    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    blob = entries[1].read_bytes()
    magic = blob[: blob.index(b"\n") + 1]
    key = entries[1].stem
    entries[1].write_bytes(magic + pickle.dumps((key, Boom())))
    cache = ScanCache(folder)
    again = scan_files(files, jobs=1, cache=cache)
    assert (cache.hits, cache.misses) == (0, 2)
    assert not (tmp_path / "pwned").exists()
    assert as_json(again) == as_json(clean)
    cache = ScanCache(folder)  # rewritten, so hits now
    scan_files(files, jobs=1, cache=cache)
    assert cache.hits == 2


def test_usage_errors(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UsageError):
        ScanCache(f)
    with pytest.raises(UsageError):
        scan_files([str(f)], jobs=0)
    code, _, err = run_cli("scan", str(FIXTURES / "rdv" / "drv16.rdv"), "--cache", str(f))
    assert code == 2 and "not a directory" in err
    # A raw image too big for a 16-bit segment is a usage error for that file, in any mode.
    big = tmp_path / "big.bin"
    big.write_bytes(b"\x90" * 0x10001)
    for jobs in (1, 2):
        with pytest.raises(UsageError):
            scan_files([str(big), str(big)], options=ScanOptions(raw=__import__("gatelink").RawOptions(16, 0)), jobs=jobs)


@pytest.mark.slow
def test_speed_bars(tmp_path):
    """The issue's bars, on 200 fixture variants (benchmarks/batch.py prints the figures):
    2 processes at least 1.7x faster than 1, and a --cache rerun at least 10x faster than the
    first run. Wall times: run on an otherwise idle 2-core machine."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs 2 CPUs")
    files = variants(tmp_path, 200)

    def wall(*args: str) -> float:
        t = time.perf_counter()
        code, _, err = run_cli("scan", *files, "-f", "json", "-o", str(tmp_path / "out.json"), *args)
        assert code == 0, err
        return time.perf_counter() - t

    wall("-j", "1")  # warm the page cache and imports
    one, two = wall("-j", "1"), wall("-j", "2")
    assert one / two >= 1.7, f"1 process {one:.2f} s, 2 processes {two:.2f} s: {one / two:.2f}x"
    cold = wall("--cache", str(tmp_path / "c"))
    warm = wall("--cache", str(tmp_path / "c"))
    assert cold / warm >= 10, f"first run {cold:.2f} s, cached rerun {warm:.2f} s: {cold / warm:.1f}x"


def test_an_unchanged_run_is_replayed(tmp_path, monkeypatch):
    """With --cache, a rerun with the same inputs and options replays the output, the stderr
    lines and the exit code without scanning; any change is a fresh run."""
    import gatelink.batch

    files = variants(tmp_path, 3)
    bad = tmp_path / "bad.rdv"
    bad.write_bytes(b"R6\x01")  # readable but malformed: exit 3, an error line
    cache = str(tmp_path / "cache")
    args = ["audit", *files, str(bad), "-f", "json", "--cache", cache, "--fail-on", "near-miss"]
    first = run_cli(*args)
    assert first[0] == 3 and "bad.rdv" in first[2]
    real = gatelink.batch.map_files

    def no_scan(*a, **k):
        raise AssertionError("scanned again")

    monkeypatch.setattr(gatelink.batch, "map_files", no_scan)
    assert run_cli(*args) == first
    bad.unlink()  # now --fail-on decides: exit 1 and its line, a fresh run
    monkeypatch.setattr(gatelink.batch, "map_files", real)
    args = ["audit", *files, "-f", "json", "--cache", cache, "--fail-on", "near-miss"]
    again = run_cli(*args)
    assert again[0] == 1 and "audit failed" in again[2]
    monkeypatch.setattr(gatelink.batch, "map_files", no_scan)
    assert run_cli(*args) == again
    o = tmp_path / "out.json"
    assert run_cli(*args, "-o", str(o))[0] == 1 and o.read_text() == again[1]  # -o is written too
    # Other options, another file's bytes, a damaged memo: not replayed.
    code, _, err = run_cli(*args, "--model", "16,arbitrary")
    assert code == 70 and "scanned again" in err  # (main turns the stub's exception into exit 70)
    monkeypatch.setattr(gatelink.batch, "map_files", real)
    for memo in (tmp_path / "cache" / "runs").iterdir():
        memo.write_bytes(b"{}\n")
    assert run_cli(*args) == again
    Path(files[0]).write_bytes(Path(files[0]).read_bytes() + b"!")
    monkeypatch.setattr(gatelink.batch, "map_files", no_scan)
    code, _, err = run_cli(*args)
    assert code == 70 and "scanned again" in err
