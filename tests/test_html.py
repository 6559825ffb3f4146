"""gatelink audit --format html in a real headless browser (Debian's chromium, driven by
playwright): it loads offline with no console errors and no request leaving the file, shows
the right counts, and its tables sort and filter."""

import json
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from conftest import FIXTURES, run_cli

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


@pytest.fixture(scope="module")
def browser_page():
    """A fresh headless chromium page (a new profile), skipped only if no browser exists."""
    exe = chromium_path()
    if exe is None:
        pytest.skip("no chromium on this machine (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package drives chromium")
    with sync_api.sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        ctx = p.chromium.launch_persistent_context(profile, executable_path=exe, headless=True, args=CHROMIUM_ARGS,
                                                   viewport={"width": 1400, "height": 1000})
        try:
            yield ctx
        finally:
            ctx.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    files = [str(FIXTURES / "pe" / "stubs_rdos.exe"), str(FIXTURES / "rdv" / "drv32_short.rdv")]
    out = tmp_path_factory.mktemp("html") / "audit.html"
    code, _, err = run_cli("audit", *files, "--format", "html", "-o", str(out))
    assert code == 0, err
    code, js, _ = run_cli("audit", *files, "--format", "json")
    return out, json.loads(js)


def open_page(ctx, path: Path):
    page = ctx.new_page()
    problems, requests = [], []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))

    def route(r):
        requests.append(r.request.url)
        if r.request.url.startswith("file://"):
            r.continue_()
        else:
            r.abort()

    page.route("**/*", route)
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    return page, problems, requests


def test_self_contained_source(report):
    path, _ = report
    text = path.read_text()
    assert not re.search(r"https?:|//[a-z0-9.-]+\.[a-z]{2,}/", text), "an external reference"
    assert not re.search(r"\b(src|href)=", text), "a loaded resource"
    assert "Content-Security-Policy" in text and "default-src 'none'" in text


def test_loads_with_the_right_counts(browser_page, report):
    path, doc = report
    page, problems, requests = open_page(browser_page, path)
    try:
        assert problems == []
        assert requests == [path.as_uri()]
        totals = doc["totals"]
        assert page.inner_text("[data-count=count-sites] .n") == str(totals["sites"])
        assert page.inner_text("[data-count=count-gates] .n") == str(totals["distinct_gates"])
        assert page.inner_text("[data-count=count-near-misses] .n") == str(totals["near_misses"])
        for v, n in totals["by_verdict"].items():
            assert page.inner_text(f"[data-count=verdict-{v}] .n") == str(n)
        assert page.locator("#sites-table tbody tr").count() == totals["sites"]
        assert page.locator("#near-table tbody tr").count() == totals["near_misses"]
        assert page.locator("#gates-table tbody tr").count() == len(totals["gates"])
        assert page.inner_text("#shown-sites") == str(totals["sites"])
        for i, inp in enumerate(doc["inputs"]):
            assert page.locator(f"#map-{i} rect[fill]").count() >= inp["summary"]["sites"]
            hist = page.locator(f"#hist-{i}")
            assert hist.locator("line.b64").count() == 2 and hist.locator("line.b16").count() == 3
            assert hist.locator("line.b8").count() == 4
            bars = hist.locator("rect.hbar").evaluate_all("els => els.map(e => [+e.dataset.align, e.dataset.verdict, +e.dataset.n])")
            assert sum(n for _, _, n in bars) == inp["summary"]["sites"]
            want = {}
            for s in inp["sites"]:
                want[(s["align64"], s["verdict"])] = want.get((s["align64"], s["verdict"]), 0) + 1
            assert {(a, v): n for a, v, n in bars} == want
    finally:
        page.close()


def column(page, table: str, name: str) -> list[str]:
    headers = page.locator(f"#{table} thead th").all_inner_texts()
    idx = [h.strip() for h in headers].index(name) + 1
    return page.locator(f"#{table} tbody tr:not([hidden]) td:nth-child({idx})").all_inner_texts()


def test_sorting_and_filtering(browser_page, report):
    path, doc = report
    page, problems, _ = open_page(browser_page, path)
    try:
        gate = page.locator("#sites-table thead th", has_text=re.compile(r"^gate$"))
        gate.click()
        values = [int(v) for v in column(page, "sites-table", "gate")]
        assert values == sorted(values) and values != [int(s["gate"]) for i in doc["inputs"] for s in i["sites"]]
        assert gate.get_attribute("aria-sort") == "ascending"
        gate.click()
        assert [int(v) for v in column(page, "sites-table", "gate")] == sorted(values, reverse=True)
        assert gate.get_attribute("aria-sort") == "descending"
        page.locator("#sites-table thead th", has_text="address").first.click()
        addrs = [int(v, 16) for v in column(page, "sites-table", "address")]
        assert addrs == sorted(addrs)
        page.locator("#sites-table thead th", has_text="verdict").click()
        verdicts = column(page, "sites-table", "verdict")
        assert verdicts == sorted(verdicts)

        want = doc["totals"]["by_verdict"]["needs-pad"]
        page.select_option(".filters[data-table=sites-table] select[data-attr=data-verdict]", "needs-pad")
        assert page.inner_text("#shown-sites") == str(want)
        assert set(column(page, "sites-table", "verdict")) == {"needs-pad"}
        page.select_option(".filters[data-table=sites-table] select[data-attr=data-verdict]", "")
        name = next(s["gate_name"] for s in doc["inputs"][0]["sites"] if s["gate_name"])
        page.fill(".filters[data-table=sites-table] input[type=search]", name)
        n = sum(1 for i in doc["inputs"] for s in i["sites"] if name in (s["gate_name"] or ""))
        assert int(page.inner_text("#shown-sites")) >= n >= 1
        assert all(name in r for r in column(page, "sites-table", "name"))
        assert problems == []
    finally:
        page.close()
