import pytest

from gatelink.catalog import GateKind
from gatelink.errors import InputError
from gatelink.gates import bundled, load


def test_bundled_counts_and_names():
    db = bundled()
    kinds = {k: sum(1 for (kk, _) in db.gates if kk is k) for k in GateKind}
    assert kinds == {GateKind.USER: 793, GateKind.OS: 681, GateKind.SERVER: 26}
    assert db.name(GateKind.USER, 0) == "allocate_dos_mem"
    assert db.name(GateKind.SERVER, 1) == "uacpi_get_acpi"
    assert db.name(GateKind.OS, 999999) is None
    assert db.describe()["sources"][0]["version"].startswith("sha256:")


def test_def_file_replaces_its_kind_only(tmp_path):
    p = tmp_path / "os.def"
    p.write_text("osgate_entries = 3\nfoo_nr = 0\nbar_nr = 0Ah ; hex\nbaz_nr EQU 0x0B\n")
    db = load([str(p)])
    assert db.name(GateKind.OS, 0) == "foo" and db.name(GateKind.OS, 10) == "bar" and db.name(GateKind.OS, 11) == "baz"
    assert db.name(GateKind.OS, 54) is None  # the bundled OS names are gone
    assert db.name(GateKind.USER, 0) == "allocate_dos_mem"  # user names stay
    assert db.describe()["by_kind"]["os"] == str(p)


def test_watcom_header(tmp_path):
    p = tmp_path / "rdu.h"
    p.write_text("#define usergate_free_mem 0x00000002\n#define usergate_entries 900\n"
                 "#define osgate_lock 17\n#define CallGate_free_mem 0x67 0x9a 2 0 0 0 3 0\n")
    db = load([str(p)], use_bundled=False)
    assert db.name(GateKind.USER, 2) == "free_mem"
    assert db.name(GateKind.OS, 17) == "lock"
    assert len(db) == 2


def test_ambiguous_def_is_refused(tmp_path):
    p = tmp_path / "gates.def"
    p.write_text("foo_nr = 1\n")
    with pytest.raises(InputError, match="os.def or user.def"):
        load([str(p)])


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load([str(tmp_path / "nope.def")])
    p = tmp_path / "user.def"
    p.write_text("nothing here\n")
    with pytest.raises(InputError, match="no gate definitions"):
        load([str(p)])
