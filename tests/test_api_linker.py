"""The library API for linkers (docs/api.md, "For linkers"): the documented example runs as
written, and every call a linker makes answers bad input with an exception, never an exit or a
line of output."""

import re
import struct

import pytest
from conftest import FIXTURES, ROOT

import gatelink
from gatelink.catalog import SHAPES_BY_ID, stub_bytes
from gatelink.errors import GatelinkError, InputError, UsageError
from gatelink.linker import CodeSpan, image_from_bytes, memory_image, stub_offsets
from gatelink.scan import verify_sites


def doc_example() -> str:
    text = (ROOT / "docs" / "api.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.DOTALL) if b.startswith("# example: linker")]
    assert len(blocks) == 1, "docs/api.md should hold one '# example: linker' block"
    return blocks[0]


def test_the_documented_example_runs_silently(capfd):
    namespace: dict[str, object] = {"__name__": "linker_example"}
    exec(compile(doc_example(), "docs/api.md (example: linker)", "exec"), namespace)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert namespace["shipped"] != namespace["drv"]


CODE = b"\x55\x89\xe5" + stub_bytes(SHAPES_BY_ID["A"], 17) + b"\x90" + stub_bytes(SHAPES_BY_ID["C"], 5) + b"\x5d\xc3"


def test_memory_image_matches_the_file_reader(tmp_path):
    """The same bytes give the same sites whether read from memory or from a file."""
    p = tmp_path / "k.bin"
    p.write_bytes(CODE)
    from_file = gatelink.scan(gatelink.open_image(p, raw=gatelink.RawOptions(32, 0x1000)))
    from_mem = gatelink.scan(image_from_bytes(CODE, str(p), raw=gatelink.RawOptions(32, 0x1000)))
    assert from_file.sites == from_mem.sites and from_file.near_misses == from_mem.near_misses
    spans = memory_image(b"\xcc" * 16 + CODE, [CodeSpan(16, 0x1000, len(CODE), 32, entries=(0x1000,))])
    found = gatelink.scan(spans)
    assert [s.address for s in found.sites] == [s.address for s in from_file.sites]
    assert [s.file_offset - 16 for s in found.sites] == [s.file_offset for s in from_file.sites]
    pe = (FIXTURES / "pe" / "stubs_rdos.exe").read_bytes()
    a = gatelink.scan(image_from_bytes(pe, "app.exe"))
    b = gatelink.scan(gatelink.open_image(FIXTURES / "pe" / "stubs_rdos.exe"))
    assert a.sites == b.sites


def test_verify_sites_checks_exactly_the_given_locations():
    img = memory_image(CODE, [CodeSpan(0, 0x1000, len(CODE), 32, entries=(0x1000,))])
    every = gatelink.scan(img)
    offs = [s.file_offset for s in every.sites]
    assert verify_sites(img, offs).sites == every.sites
    one = verify_sites(img, offs[1:])
    assert one.sites == every.sites[1:] and not one.near_misses
    wrong = verify_sites(img, [offs[0] + 1, 0])
    assert not wrong.sites and {n.file_offset for n in wrong.near_misses} == {offs[0] + 1, 0}


def never_exits_or_prints(capfd, call, exc=GatelinkError):
    with pytest.raises(exc) as e:
        call()
    out, err = capfd.readouterr()
    assert out == "" and err == "", (out, err)
    assert not isinstance(e.value, SystemExit)
    return e.value


def test_bad_input_is_an_exception(capfd):
    from gatelink.pad import pad
    from gatelink.plan import FetchModel, Order
    from gatelink.table import build_table, read_table, write_table
    from gatelink.table.embed import embed

    e = never_exits_or_prints(capfd, lambda: image_from_bytes(b"garbage!" * 4, "lib.o"), InputError)
    assert e.path == "lib.o" and "unknown format" in e.problem
    never_exits_or_prints(capfd, lambda: image_from_bytes(b"MZ" + b"\0" * 30, "a.exe"), InputError)
    never_exits_or_prints(capfd, lambda: image_from_bytes(struct.pack("<HIIHIH", 0x3252, 0, 999, 0, 0, 0), "d.rdv"),
                          InputError)
    never_exits_or_prints(capfd, lambda: image_from_bytes("text", "x"), UsageError)
    never_exits_or_prints(capfd, lambda: image_from_bytes(CODE, "x", format="elf"), UsageError)
    for spans in ([CodeSpan(0, 0, len(CODE) + 1, 32)], [CodeSpan(0, 0, 4, 64)], [CodeSpan(0, 0, 8, 32),
                  CodeSpan(4, 0x100, 8, 32, name="b")], [CodeSpan(0, 0x1000, 8, 32, entries=(0x2000,))],
                  [CodeSpan(0, 0xFFFF, 8, 16)], []):
        never_exits_or_prints(capfd, lambda spans=spans: memory_image(CODE, spans), UsageError)
    img = memory_image(CODE, [CodeSpan(0, 0x1000, len(CODE), 32)])
    never_exits_or_prints(capfd, lambda: stub_offsets(img, [0x5000]), UsageError)
    never_exits_or_prints(capfd, lambda: read_table(b"GLTB" + b"\0" * 200, "t.gltab"), InputError)
    never_exits_or_prints(capfd, lambda: embed(b"garbage", "elf", b"", "x"), GatelinkError)
    # The happy path prints nothing either.
    res = gatelink.scan(img, jobs=1)
    table = build_table(res, FetchModel(8, Order.ARBITRARY))
    write_table(table)
    pad(image_from_bytes(CODE, "k.bin", raw=gatelink.RawOptions(32, 0x1000)), FetchModel(8, Order.ARBITRARY))
    assert capfd.readouterr() == ("", "")
