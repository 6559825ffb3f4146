"""Make docs/screenshots/audit-report.png: the HTML audit of a bundled fixture, as headless
Chromium (Debian's ``chromium``, driven by playwright) shows it.

    .venv/bin/python docs/screenshots/audit_report.py [--full]

Run from the repository root. Needs ``chromium`` (apt) and ``playwright`` (pip); playwright
never downloads a browser here: it drives /usr/bin/chromium.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent / "audit-report.png"
FIXTURE = "fixtures/pe/stubs_rdos.exe"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="the whole page, not the first screen")
    args = ap.parse_args()
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        print("no chromium (apt-get install chromium)", file=sys.stderr)
        return 1
    from playwright.sync_api import sync_playwright

    from gatelink.cli import main as gatelink

    os.chdir(ROOT)
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        html = Path(tmp) / "audit.html"
        code = gatelink(["audit", FIXTURE, "--format", "html", "-o", str(html)])
        if code != 0:
            return code
        ctx = p.chromium.launch_persistent_context(
            str(Path(tmp) / "profile"), executable_path=exe, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"],
            viewport={"width": 1280, "height": 1500})
        page = ctx.new_page()
        page.goto(html.as_uri())
        page.screenshot(path=str(OUT), full_page=args.full)
        ctx.close()
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
