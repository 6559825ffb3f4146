"""The Makefile of docs/make.md, run by real GNU make: the first make pads and builds the tables,
the second does nothing, touching a linked binary rebuilds its binary and table, changing the
options rebuilds everything, and check-tables tells a current table from a stale one."""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FIXTURES, ROOT

MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(MAKE is None, reason="GNU make is not installed")


def makefile_from_docs() -> str:
    text = (ROOT / "docs" / "make.md").read_text()
    blocks = re.findall(r"```make\n(.*?)```", text, re.DOTALL)
    assert len(blocks) == 1, "docs/make.md should hold exactly one make block"
    return blocks[0]


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "Makefile").write_text(makefile_from_docs())
    shutil.copy(FIXTURES / "pe" / "stubs_rdos.exe", tmp_path / "app.linked.exe")
    shutil.copy(FIXTURES / "rdv" / "drv32_short.rdv", tmp_path / "drv.linked.rdv")
    # The gatelink of this checkout, whatever is on PATH.
    gl = Path(sys.executable).with_name("gatelink")
    assert gl.exists(), gl
    return tmp_path, str(gl)


def make(folder: Path, gl: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([MAKE, "--no-print-directory", f"GATELINK={gl}", *args], cwd=folder,
                          capture_output=True, text=True, timeout=600)


def ran(out: str) -> list[str]:
    """The gatelink commands make ran, as 'pad app.exe' / 'table app.exe'."""
    cmds = []
    for line in out.splitlines():
        m = re.match(r"\S*gatelink (pad|table) (\S+)", line)
        if m:
            cmds.append(f"{m.group(1)} {m.group(2)}")
    return cmds


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def bump(path: Path) -> None:
    """touch: now, which is later than anything make wrote (waiting out a coarse clock)."""
    newest = max(p.stat().st_mtime_ns for p in path.parent.iterdir())
    while time.time_ns() <= newest:
        time.sleep(0.01)
    os.utime(path)


def test_first_builds_second_does_nothing_touch_rebuilds(tree):
    folder, gl = tree
    r = make(folder, gl)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(ran(r.stdout)) == ["pad app.linked.exe", "pad drv.linked.rdv", "table app.exe", "table drv.rdv"]
    for name in ("app.exe", "drv.rdv", "app.exe.gltab", "drv.rdv.gltab", "app.exe.pad.txt"):
        assert (folder / name).stat().st_size > 0, name
    assert (folder / "app.exe").read_bytes() != (folder / "app.linked.exe").read_bytes()  # padded

    before = mtimes(folder)
    r = make(folder, gl)
    assert r.returncode == 0 and ran(r.stdout) == [], r.stdout
    assert mtimes(folder) == before
    assert make(folder, gl, "-q", "tables").returncode == 0  # make agrees: nothing to do

    bump(folder / "app.linked.exe")
    r = make(folder, gl)
    assert r.returncode == 0, r.stderr
    assert ran(r.stdout) == ["pad app.linked.exe", "table app.exe"]
    after = mtimes(folder)
    assert after["drv.rdv.gltab"] == before["drv.rdv.gltab"] and after["app.exe.gltab"] > before["app.exe.gltab"]

    # The table alone: touching the shipped binary rebuilds only its table.
    bump(folder / "drv.rdv")
    r = make(folder, gl)
    assert ran(r.stdout) == ["table drv.rdv"]
    assert ran(make(folder, gl).stdout) == []


def test_changed_options_rebuild_everything(tree):
    folder, gl = tree
    assert make(folder, gl).returncode == 0
    r = make(folder, gl, "GATELINK_MODEL=16,arbitrary")
    assert r.returncode == 0, r.stderr
    assert len(ran(r.stdout)) == 4
    assert ran(make(folder, gl, "GATELINK_MODEL=16,arbitrary").stdout) == []


def test_check_tables_tells_current_from_stale(tree):
    folder, gl = tree
    assert make(folder, gl).returncode == 0
    r = make(folder, gl, "check-tables")
    assert r.returncode == 0, r.stdout + r.stderr
    # A table that no longer matches its binary (the binary rebuilt behind make's back).
    shutil.copy(folder / "drv.linked.rdv", folder / "drv.rdv")
    r = make(folder, gl, "check-tables")
    assert r.returncode != 0 and "drv.rdv" in r.stderr
    # Other options than the table was built with are stale too.
    assert make(folder, gl).returncode == 0  # (drv.rdv is newer than its table: rebuilt)
    assert make(folder, gl, "check-tables").returncode == 0
    assert make(folder, gl, "check-tables", "GATELINK_MODEL=64,arbitrary").returncode != 0


def test_audit_target_gates_the_build(tree):
    folder, gl = tree
    r = make(folder, gl, "audit")
    # The fixtures carry decoy stubs of the wrong bitness on purpose: the gate fails the build.
    assert r.returncode != 0 and "wrong-bitness" in r.stderr


def test_start_up_imports_only_what_the_command_needs():
    """``import gatelink`` and ``gatelink --version`` load no decoder, format reader, checker or
    rich; running one command imports only its own module; the public names still resolve."""
    code = r"""
import sys
import gatelink
heavy = ("gatelink.decode", "gatelink.scan", "gatelink.formats", "gatelink.plan", "iced_x86", "pefile", "rich")
assert not [m for m in heavy if m in sys.modules], sorted(m for m in heavy if m in sys.modules)
from gatelink.cli import main
assert main(["--version"]) == 0
loaded = [m for m in heavy if m in sys.modules] + [m for m in sys.modules if m.startswith("gatelink.cli.")
                                                     and m not in ("gatelink.cli.common", "gatelink.cli.run",
                                                                   "gatelink.cli.quick")]
assert not loaded, loaded
main(["scan", "--help"])
assert "gatelink.cli.scan" in sys.modules and "gatelink.cli.audit" not in sys.modules
assert callable(gatelink.scan) and gatelink.Site.__name__ == "Site"
import gatelink.scan as s
assert s is gatelink.scan  # the function, as before the names were lazy
from gatelink.scan import verify_sites  # the subpackage still imports
assert callable(gatelink.scan) and sorted(gatelink.__all__) == sorted(set(gatelink.__all__) & set(dir(gatelink)))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
