"""The gate registry: format, resolution, hostile files, and values outside the proven domains."""

from __future__ import annotations

import pytest
from conftest import ROOT, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatelink.errors import InputError
from gatelink.gates import bundled
from gatelink.runtime import Binder, load_registry, parse_registry

EXAMPLE = ROOT / "docs" / "registry.example.toml"
HEAD = "version = 1\n[undefined]\nselector = 0x0408\noffset = 0x10\n"


def test_example_file_resolves():
    reg = load_registry(EXAMPLE)
    t = reg.resolve("os", 12)
    assert (t.form, t.selector, t.offset, t.source) == ("far", 0x418, 0x1000, "gate.os.12")
    t = reg.resolve("os", 5)  # the kind's default, stepped by the stride
    assert (t.form, t.selector, t.offset, t.source) == ("far", 0x408, 0x20000 + 16 * 5, "default.os")
    t = reg.resolve("os", 882)  # past the default's max
    assert (t.form, t.selector, t.offset) == ("undefined", 0x408, 0x10)
    t = reg.resolve("server", 1)  # an explicit undefined entry
    assert t.form == "undefined" and t.source == "gate.server.1"
    t = reg.resolve("server", 2)  # no default for server gates
    assert t.form == "undefined" and t.source == "undefined"
    assert reg.resolve(None, 3).form == "undefined"  # a site whose kind is unknown
    # by name: get_version is a user gate of the bundled list
    num = next(n for (k, n), g in bundled().gates.items() if k.value == "user" and g.name == "get_version")
    t = reg.resolve("user", num)
    assert (t.selector, t.offset, t.source) == (0x410, 0x1234, "gate.user.get_version")


def test_forms_defaults_fallback_and_per_kind_undefined():
    reg = parse_registry(HEAD + """
[undefined.user]
selector = 0x0500
offset = 0x20
[default.user]
form = "callgate"
selector = 0x0403
stride = 8
max = 10
[fallback.user]
form = "near"
target = 0x4000
stride = 4
[gate.os.0x0c]
form = "pushcs"
target = 0x1234
[gate.os.13]
form = "near"
target = 0xFFFFFFFF
""")
    assert reg.resolve("user", 3).selector == 0x403 + 24 and reg.resolve("user", 3).form == "callgate"
    u = reg.resolve("user", 11)
    assert (u.form, u.selector, u.offset) == ("undefined", 0x500, 0x20)
    assert reg.resolve("os", 99).selector == 0x408  # the general undefined handler for other kinds
    fb = reg.resolve_fallback("user", 5)
    assert fb is not None and (fb.form, fb.target) == ("near", 0x4000 + 20)
    assert reg.resolve_fallback("os", 5) is None
    assert reg.resolve("os", 12).form == "pushcs" and reg.resolve("os", 13).target == 0xFFFFFFFF


@pytest.mark.parametrize("text, words", [
    ("version = 1\n[undefined\n", "not valid TOML"),
    ("[undefined]\nselector = 1\noffset = 2\n", "no 'version'"),
    ("version = 2\n" + HEAD[12:], "registry version"),
    ("version = true\n" + HEAD[12:], "registry version"),
    ("version = 1\n", "no [undefined]"),
    ("version = 1\nundefined = 3\n", "must be a table"),
    ("version = 1\n[undefined]\nselector = 0x408\n", "needs 'offset'"),
    (HEAD + "extra = 1\n", "unknown key 'extra'"),
    (HEAD.replace("offset = 0x10", "offset = 0x10\nofset = 3"), "unknown key 'ofset'"),
    (HEAD + "[default.os]\nselector = 1\n", "needs 'form'"),
    (HEAD + "[default.os]\nform = 'farcall'\n", "is not a form"),
    (HEAD + "[default.os]\nform = 'far'\nselector = 0x408\noffset = 0\n", "needs 'stride'"),
    (HEAD + "[default.os]\nform = 'far'\nselector = 0x408\n", "needs 'offset'"),
    (HEAD + "[default.os]\nform = 'near'\ntarget = 1\nselector = 2\nstride = 1\n", "not 'selector'"),
    (HEAD + "[default.os]\nform = 'undefined'\nstride = 1\n", "takes no 'stride'"),
    (HEAD + "[default.kernel]\nform = 'undefined'\n", "unknown key 'kernel'"),
    (HEAD + "[gate.os.12]\nform = 'far'\nselector = true\noffset = 0\n", "not a boolean"),
    (HEAD + "[gate.os.12]\nform = 'far'\nselector = '0x408'\noffset = 0\n", "not a string"),
    (HEAD + "[gate.os.12]\nform = 'far'\nselector = 1.5\noffset = 0\n", "not a number"),
    (HEAD + "[gate.os.12]\nform = 'far'\nselector = 0x10000\noffset = 0\n", "outside 0..0xffff"),
    (HEAD + "[gate.os.12]\nform = 'far'\nselector = -1\noffset = 0\n", "outside"),
    (HEAD + "[gate.os.12]\nform = 'near'\ntarget = 0x100000000\n", "outside 0..0xffffffff"),
    (HEAD + "[gate.os.12]\nform = 'far'\nselector = 8\noffset = 0\nstride = 4\n", "unknown key 'stride'"),
    (HEAD + "[gate.os.no_such_gate_name]\nform = 'undefined'\n", "no os gate named 'no_such_gate_name'"),
    (HEAD + "[gate.os.'a b']\nform = 'undefined'\n", "by number"),
    (HEAD + "[gate.os.0x100000000]\nform = 'undefined'\n", "past 32 bits"),
    (HEAD + "[gate.user.get_version]\nform = 'undefined'\n[gate.user.%d]\nform = 'undefined'\n", "already given"),
    (HEAD + "[gate.os]\n12 = 3\n", "must be a table"),
    ("description = 5\n" + HEAD, "must be a string"),
    (HEAD + "[default.os]\nform = 'far'\nselector = 0x408\noffset = 0xFFFFFFF0\nstride = 16\n", None),
])
def test_malformed_registries_fail_on_one_line(text, words):
    if "%d" in text:
        num = next(n for (k, n), g in bundled().gates.items() if k.value == "user" and g.name == "get_version")
        text = text % num
    if words is None:  # valid file; the stride overflows only for high gates, at resolve time
        reg = parse_registry(text, "r.toml")
        assert reg.resolve("os", 0).offset == 0xFFFFFFF0
        with pytest.raises(InputError, match="past 0xffffffff") as e:
            reg.resolve("os", 1)
        assert str(e.value).startswith("r.toml: ")
        return
    with pytest.raises(InputError) as e:
        parse_registry(text, "r.toml")
    msg = str(e.value)
    assert msg.startswith("r.toml: ") and words in msg and "\n" not in msg


def test_file_problems(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_registry(tmp_path / "missing.toml")
    with pytest.raises(InputError, match="is a directory"):
        load_registry(tmp_path)
    bad = tmp_path / "bin.toml"
    bad.write_bytes(b"version = 1\n\xff\xfe")
    with pytest.raises(InputError, match="not UTF-8"):
        load_registry(bad)
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (5 << 20))
    with pytest.raises(InputError, match="at most"):
        load_registry(big)
    deep = tmp_path / "deep.toml"
    deep.write_text("version = 1\nx = " + "[" * 100000 + "]" * 100000 + "\n")
    with pytest.raises(InputError) as e:
        load_registry(deep)
    assert "\n" not in str(e.value)


def test_names_from_another_gate_list(tmp_path):
    osdef = tmp_path / "os.def"
    osdef.write_text("osgate_entries = 3\nmy_gate_nr = 2\n")
    from gatelink.gates import load

    db = load([str(osdef)])
    reg = parse_registry(HEAD + "[gate.os.my_gate]\nform = 'far'\nselector = 0x410\noffset = 7\n", "r.toml", db)
    assert reg.resolve("os", 2).offset == 7
    with pytest.raises(InputError, match="no os gate named 'my_gate' in the bundled gate list"):
        parse_registry(HEAD + "[gate.os.my_gate]\nform = 'undefined'\n", "r.toml")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_hostile_text_never_escapes(text):
    try:
        parse_registry(HEAD + text, "r.toml")
    except InputError as e:
        assert "\n" not in str(e)


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.one_of(st.integers(-5, 1 << 33), st.booleans(), st.text(max_size=5), st.floats()),
                    lambda c: st.dictionaries(st.sampled_from(["version", "undefined", "default", "gate", "os", "user",
                                                               "server", "form", "selector", "offset", "target",
                                                               "stride", "max", "12", "fallback", "far"]), c, max_size=4)
                    | st.lists(c, max_size=3), max_leaves=12))
def test_hostile_structures_never_escape(doc):
    from gatelink.runtime.registry import _Parser

    if not isinstance(doc, dict):
        doc = {"version": 1, "undefined": doc}
    try:
        reg = _Parser("r.toml", None).parse(doc)
        for kind in ("os", "user", "server", None):
            reg.resolve(kind, 12)
    except InputError as e:
        assert "\n" not in str(e)


# -- values against the table's proven domains ------------------------------------------------


@pytest.fixture(scope="module")
def table():
    import gatelink
    from gatelink.table import build_table

    img = gatelink.open_image(str(ROOT / "fixtures" / "rdv" / "drv32_padded.rdv"))
    return build_table(gatelink.scan(img, jobs=1))


@pytest.mark.parametrize("entry, words", [
    ("form = 'far'\nselector = 0x0013\noffset = 0", "selector 0x0013 is outside the table's proven far selector domain"),
    ("form = 'far'\nselector = 0x0403\noffset = 0", "outside the table's proven far selector domain 0x400..0xfff"),
    ("form = 'callgate'\nselector = 0x0403", "no callgate plan"),
])
def test_values_outside_proven_domains_are_refused(table, entry, words):
    site = next(s for s in table.sites if s.gate_kind == "os")
    reg = parse_registry(HEAD + f"[gate.os.{site.gate}]\n{entry}\n", "r.toml")
    b = Binder(table, reg)
    with pytest.raises(InputError) as e:
        b.patch(table.sites.index(site))
    assert str(e.value).startswith("r.toml: ") and words in str(e.value)


def test_undefined_handler_outside_domain_is_refused(table):
    reg = parse_registry("version = 1\n[undefined]\nselector = 0x0002\noffset = 0\n", "r.toml")
    site = next(i for i, s in enumerate(table.sites) if s.gate_kind == "os")
    with pytest.raises(InputError, match="selector 0x0002 is outside"):
        Binder(table, reg).patch(site)


def test_cli_bad_registry_exit_3(tmp_path, table):
    from gatelink.table import write_table

    t = tmp_path / "t.gltab"
    t.write_bytes(write_table(table))
    r = tmp_path / "bad.toml"
    r.write_text("version = 1\n[undefined]\nselector = 'x'\noffset = 0\n")
    img = ROOT / "fixtures" / "rdv" / "drv32_padded.rdv"
    out = tmp_path / "out.rdv"
    code, _, err = run_cli("apply", str(img), "--table", str(t), "--registry", str(r), "-o", str(out))
    assert code == 3 and not out.exists()
    assert err.count("\n") == 1 and str(r) in err and "undefined.selector" in err
    r.write_text(HEAD + "[default.os]\nform = 'far'\nselector = 0x0004\noffset = 0\nstride = 0\n")
    code, _, err = run_cli("apply", str(img), "--table", str(t), "--registry", str(r), "-o", str(out))
    assert code == 3 and not out.exists() and "selector 0x0004" in err and err.count("\n") == 1
