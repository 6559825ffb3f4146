"""Hostile input: truncated, bit-flipped and oversized-field files of every format.

Each mutated file must either scan cleanly or fail with InputError (exit 3, one line on
stderr); never another exception, never a hang. Thousands of cases, seeded for repeatability.
"""

import random
import signal
import struct
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import FIXTURES, boot_image, boot_object, device16, device32, pe32, rdv16, rdv32, run_cli
from gatelink import InputError, RawOptions, open_image, scan
from gatelink.catalog import SHAPES_BY_ID, stub_bytes

CODE32 = b"\x55\x89\xe5" + stub_bytes(SHAPES_BY_ID["A"], 17) + b"\x73\x04\x33\xc0\x5d\xc3" + b"Hello\0" * 4
CODE16 = b"\xb8\x05\x00" + stub_bytes(SHAPES_BY_ID["B"], 3) + b"\xcb" + b"Disk\0" * 3


def seeds() -> dict[str, tuple[bytes, int, list[tuple[int, str]]]]:
    """name -> (bytes, length a truncation must stay below to be malformed, size fields)."""
    out = {}
    d16 = rdv16(CODE16, data_size=8)
    out["rdv16"] = (d16, len(d16), [(4, "<H"), (8, "<H")])
    d32 = rdv32(CODE32, data_size=32)
    out["rdv32"] = (d32, len(d32) - 16 - 32 + 32, [(6, "<I"), (12, "<I")])  # code_size, data_size
    d32p = rdv32(CODE32, data_size=8, padded=True)
    out["rdv32p"] = (d32p, len(d32p) - 16, [(6, "<I"), (12, "<I")])
    boot = boot_image(boot_object(0, b"kernel"), boot_object(18, device16("a16.rdv", CODE16)),
                      boot_object(19, device32("b32.rdv", CODE32)))
    second = 12 + 6  # the DEVICE16 object's header
    out["bootimg"] = (boot, len(boot), [(4, "<I"), (second + 4, "<I"), (second + 12, "<i"), (second + 16, "<H")])
    pe = pe32(CODE32, stub_bytes(SHAPES_BY_ID["F"], 6))
    sect = 0x80 + 24 + 0xE0
    out["pe32"] = (pe, len(pe), [(0x3C, "<I"), (0x80 + 6, "<H"), (0x80 + 20, "<H"), (sect + 16, "<I"),
                                 (sect + 20, "<I"), (sect + 40 + 16, "<I"), (sect + 40 + 20, "<I")])
    for f in sorted(FIXTURES.glob("pe/*.exe"))[:1]:
        data = f.read_bytes()
        out["pe-fixture"] = (data, len(data), [(0x3C, "<I")])
    # The built driver and boot-image fixtures too (hundreds of sites each, real layouts).
    drv = FIXTURES / "rdv" / "drv16.rdv"
    if drv.exists():
        data = drv.read_bytes()
        out["rdv16-fixture"] = (data, len(data), [(4, "<H"), (8, "<H")])
    boot_fx = FIXTURES / "boot" / "rdos.bin"
    if boot_fx.exists():
        data = boot_fx.read_bytes()
        out["bootimg-fixture"] = (data, len(data), [(4, "<I")])
    return out


@contextmanager
def time_limit(seconds: float):
    def boom(signum, frame):
        raise TimeoutError("hang")

    old = signal.signal(signal.SIGALRM, boom)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def outcome(path: Path, raw: bool = False) -> int:
    with time_limit(5):
        try:
            img = open_image(str(path), raw=RawOptions(32, 0x1000) if raw else None)
            scan(img)
            return 0
        except InputError as e:
            assert str(path) in str(e) and "\n" not in str(e)
            return 3


def mutations(data: bytes, required: int, fields: list[tuple[int, str]], rng: random.Random):
    # A real fixture holds hundreds of sites, so each scan costs more: fewer mutations of it.
    big = len(data) > 8192
    lengths = range(required) if required <= 400 else sorted({rng.randrange(0, required) for _ in range(100 if big else 200)})
    for n in lengths:
        yield "truncate", data[:n], True
    for _ in range(150 if big else 400):
        b = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        yield "flip", bytes(b), False
    for off, fmt in fields:
        size = struct.calcsize(fmt)
        top = (1 << (8 * size - (1 if fmt[1].islower() else 0))) - 1
        for v in (top, top // 2 + 1, len(data) * 4 + 1, len(data) + 1):
            b = bytearray(data)
            struct.pack_into(fmt, b, off, min(v, top))
            yield f"oversize@{off:#x}", bytes(b), True


@pytest.mark.parametrize("name", list(seeds()))
def test_mutated_inputs(name, tmp_path):
    data, required, fields = seeds()[name]
    rng = random.Random(f"gatelink-{name}")
    p = tmp_path / "m.bin"
    assert outcome_of(p, data) == 0  # the seed itself is fine
    counts = {"truncate": 0, "flip": 0, "oversize": 0}
    for kind, mutated, must_fail in mutations(data, required, fields, rng):
        got = outcome_of(p, mutated)
        counts[kind.split("@")[0]] += 1
        if must_fail:
            assert got == 3, (name, kind, len(mutated))
    assert sum(counts.values()) >= (240 if len(data) > 8192 else 400)


def outcome_of(p: Path, data: bytes) -> int:
    p.write_bytes(data)
    return outcome(p)


def test_raw_images_of_any_bytes(tmp_path):
    rng = random.Random("raw")
    p = tmp_path / "r.bin"
    for _ in range(300):
        n = rng.choice([1, 2, 7, 64, 333, 4096])
        p.write_bytes(bytes(rng.randrange(256) for _ in range(n)))
        assert outcome(p, raw=True) == 0
    p.write_bytes(b"")
    assert outcome(p, raw=True) == 3


def test_cli_sample_exit_3_with_one_line(tmp_path):
    rng = random.Random("cli")
    n = 0
    for name, (data, required, fields) in seeds().items():
        for kind, mutated, must_fail in list(mutations(data, required, fields, rng))[::25]:
            p = tmp_path / f"{name}.bin"
            p.write_bytes(mutated)
            code, out, err = run_cli("scan", str(p), "-f", "json")
            assert code in (0, 3), (name, kind, err)
            assert "Traceback" not in err
            if must_fail:
                assert code == 3, (name, kind)
                errors = [l for l in err.splitlines() if "error" in l]
                assert len(errors) == 1 and str(p) in errors[0]
            n += 1
    assert n > 50
