"""The audit as one self-contained HTML page (``docs/audit.md``, "HTML").

Everything is inline: styles, the script that sorts and filters the tables, and the pictures as
SVG (a map of where the sites sit in each image, and the histogram of site alignments mod 64
with the 8-, 16- and 64-byte boundaries marked, coloured by verdict). A Content-Security-Policy
forbids every external load, so the page reads the same offline. The tables are plain HTML
(readable without the script); the script only sorts and filters them.
"""

from __future__ import annotations

import html
from collections import Counter

from .. import __version__
from ..image import Image
from . import AuditReport
from .model import VERDICT_HELP, VERDICTS, Audit, reason_help

VERDICT_COLOUR = {
    "patchable": "#2e7d32", "needs-pad": "#e0a000", "needs-sync": "#c62828", "no-plan": "#6a1b9a",
    "unknown-gate": "#1f5fbf",
}
NEAR_MISS_COLOUR = "#777777"

CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"

_CSS = """
:root { --fg: #1d1f21; --muted: #5f6368; --line: #d0d4d9; --bg: #ffffff; --band: #f3f5f7; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: var(--fg);
       background: var(--bg); margin: 0 auto; padding: 16px 24px 48px; max-width: 1400px; }
h1 { font-size: 22px; margin: 4px 0 2px; } h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 18px 0 6px; }
.muted { color: var(--muted); } code, .mono, td.num, td.hex { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12.5px; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 8px 0; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; min-width: 120px; background: var(--band); }
.card .n { font-size: 22px; font-weight: 600; display: block; } .card .l { color: var(--muted); font-size: 12px; }
.chip { display: inline-block; padding: 1px 8px; border-radius: 10px; color: #fff; font-size: 12px; white-space: nowrap; }
.v-patchable { background: #2e7d32; } .v-needs-pad { background: #e0a000; color: #1d1f21; } .v-needs-sync { background: #c62828; }
.v-no-plan { background: #6a1b9a; } .v-unknown-gate { background: #1f5fbf; } .v-near-miss { background: #777; }
.bar { display: flex; height: 14px; border-radius: 3px; overflow: hidden; margin: 6px 0 2px; max-width: 900px; border: 1px solid var(--line); }
.bar span { display: block; height: 100%; }
table { border-collapse: collapse; width: 100%; margin: 6px 0; }
th, td { text-align: left; padding: 3px 8px; border-bottom: 1px solid #eceff1; white-space: nowrap; vertical-align: top; }
td.wrap { white-space: normal; min-width: 240px; }
td.detail { max-width: 420px; overflow: hidden; text-overflow: ellipsis; }
th { position: sticky; top: 0; background: #e8ecf0; cursor: pointer; user-select: none; font-weight: 600; }
th[aria-sort="ascending"]::after { content: " \\25B2"; font-size: 10px; } th[aria-sort="descending"]::after { content: " \\25BC"; font-size: 10px; }
td.num, td.hex { text-align: right; }
tr:hover td { background: #fafbe6; }
.filters { display: flex; flex-wrap: wrap; gap: 12px; align-items: center; margin: 8px 0; padding: 8px; background: var(--band);
           border: 1px solid var(--line); border-radius: 6px; }
.filters label { color: var(--muted); font-size: 12px; } .filters input[type=search] { width: 260px; }
.scroll { max-height: 640px; overflow: auto; border: 1px solid var(--line); border-radius: 4px; }
svg { display: block; max-width: 100%; height: auto; } svg text { font: 11px system-ui, "DejaVu Sans", sans-serif; fill: #3c4043; }
.legend { display: flex; flex-wrap: wrap; gap: 10px; font-size: 12px; color: var(--muted); margin: 4px 0; }
.legend i { display: inline-block; width: 12px; height: 12px; border-radius: 2px; vertical-align: -2px; margin-right: 4px; }
.pics { display: grid; grid-template-columns: minmax(0, 1fr); gap: 8px; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
"""

_JS = r"""
(function () {
  "use strict";
  function cellValue(row, idx, type) {
    var cell = row.cells[idx];
    if (!cell) { return type === "num" ? -Infinity : ""; }
    var raw = cell.hasAttribute("data-v") ? cell.getAttribute("data-v") : cell.textContent;
    if (type === "num") { var n = parseFloat(raw); return isNaN(n) ? -Infinity : n; }
    return raw.toLowerCase();
  }
  function sortTable(table, th) {
    var idx = Array.prototype.indexOf.call(th.parentNode.children, th);
    var type = th.getAttribute("data-type") || "text";
    var dir = th.getAttribute("aria-sort") === "ascending" ? "descending" : "ascending";
    Array.prototype.forEach.call(th.parentNode.children, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir);
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var keyed = rows.map(function (r, i) { return [cellValue(r, idx, type), i, r]; });
    keyed.sort(function (a, b) {
      var c = a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0;
      if (dir === "descending") { c = -c; }
      return c !== 0 ? c : a[1] - b[1];
    });
    var frag = document.createDocumentFragment();
    keyed.forEach(function (k) { frag.appendChild(k[2]); });
    body.appendChild(frag);
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
      th.setAttribute("tabindex", "0");
      th.addEventListener("click", function () { sortTable(table, th); });
      th.addEventListener("keydown", function (e) { if (e.key === "Enter") { sortTable(table, th); } });
    });
  });
  function setupFilter(box) {
    var table = document.getElementById(box.getAttribute("data-table"));
    var counter = box.querySelector(".shown");
    var inputs = box.querySelectorAll("input, select");
    function apply() {
      var text = "", attrs = [];
      Array.prototype.forEach.call(inputs, function (el) {
        if (el.type === "search") { text = el.value.trim().toLowerCase(); }
        else if (el.value) { attrs.push([el.getAttribute("data-attr"), el.value]); }
      });
      var shown = 0;
      Array.prototype.forEach.call(table.tBodies[0].rows, function (row) {
        var ok = !text || row.textContent.toLowerCase().indexOf(text) >= 0;
        for (var i = 0; ok && i < attrs.length; i++) { ok = row.getAttribute(attrs[i][0]) === attrs[i][1]; }
        row.hidden = !ok;
        if (ok) { shown++; }
      });
      counter.textContent = String(shown);
    }
    Array.prototype.forEach.call(inputs, function (el) { el.addEventListener("input", apply); el.addEventListener("change", apply); });
    apply();
  }
  Array.prototype.forEach.call(document.querySelectorAll(".filters"), setupFilter);
})();
"""


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _chip(verdict: str) -> str:
    return f'<span class="chip v-{_e(verdict)}">{_e(verdict)}</span>'


def _verdict_bar(by_verdict: dict[str, int]) -> str:
    total = sum(by_verdict.values())
    if not total:
        return ""
    parts = []
    for v in VERDICTS:
        n = by_verdict.get(v, 0)
        if n:
            parts.append(f'<span style="width:{100 * n / total:.3f}%;background:{VERDICT_COLOUR[v]}" '
                         f'title="{_e(v)}: {n}"></span>')
    return '<div class="bar" role="img" aria-label="sites by verdict">' + "".join(parts) + "</div>"


def _legend(extra_near: bool = False) -> str:
    items = [f'<span><i style="background:{VERDICT_COLOUR[v]}"></i>{_e(v)}</span>' for v in VERDICTS]
    if extra_near:
        items.append(f'<span><i style="background:{NEAR_MISS_COLOUR}"></i>near miss</span>')
    return '<div class="legend">' + "".join(items) + "</div>"


def _image_map(x: Audit, idx: int) -> str:
    """Where the sites sit in the file: regions as bands, sites as ticks coloured by verdict,
    near misses on a lane below."""
    img: Image = x.image
    size = max(1, len(img.data))
    w, left, right = 1000, 6, 6
    span = w - left - right
    lane_y, lane_h = 40, 34
    near_y = lane_y + lane_h + 8
    h = near_y + 16 + 22

    def xpos(off: int) -> float:
        return left + span * off / size

    out = [f'<svg id="map-{idx}" class="map" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" '
           f'aria-label="map of sites in {_e(img.path)}">']
    out.append(f'<text x="{left}" y="12">file offset 0</text><text x="{w - right}" y="12" text-anchor="end">'
               f'{size:#x} ({size} bytes)</text>')
    for r in sorted(img.regions, key=lambda r: (r.file_offset, r.name)):
        if r.size <= 0:
            continue
        x0, x1 = xpos(r.file_offset), xpos(r.end_offset)
        fill = "#dfe7f1" if r.kind.value == "code" else "#efefef"
        out.append(f'<rect x="{x0:.2f}" y="{lane_y - 18}" width="{max(0.5, x1 - x0):.2f}" height="{lane_h + 18}" '
                   f'fill="{fill}" stroke="#b8c2cc" stroke-width="0.5"><title>{_e(r.name)} ({_e(r.kind.value)}'
                   f'{", " + str(r.bitness) + "-bit" if r.bitness else ""}): file {r.file_offset:#x}..{r.end_offset:#x}, '
                   f'address {r.address:#x}</title></rect>')
        if x1 - x0 > 40:
            out.append(f'<text x="{x0 + 3:.2f}" y="{lane_y - 6}">{_e(r.name)} ({_e(r.kind.value)})</text>')
    for a in x.sites:
        s = a.site
        xc = xpos(s.file_offset)
        out.append(f'<rect x="{xc:.2f}" y="{lane_y}" width="1.2" height="{lane_h}" fill="{VERDICT_COLOUR[a.verdict]}">'
                   f'<title>{s.address:#x} shape {_e(s.shape)} gate {s.gate} {_e(s.gate_name or "unknown")}: '
                   f'{_e(a.verdict)}</title></rect>')
    for n in x.near_misses:
        xc = xpos(n.file_offset)
        out.append(f'<rect x="{xc:.2f}" y="{near_y}" width="1.2" height="14" fill="{NEAR_MISS_COLOUR}">'
                   f'<title>file offset {n.file_offset:#x}: {_e(n.reason)}</title></rect>')
    out.append(f'<text x="{left}" y="{h - 4}">sites (top lane), near misses (bottom lane); bands are regions</text>')
    out.append("</svg>")
    return "".join(out)


def _histogram(x: Audit, idx: int) -> str:
    """Sites per alignment (address mod 64), stacked by verdict, with the 8-, 16- and 64-byte
    boundaries marked."""
    counts: dict[int, Counter[str]] = {a: Counter() for a in range(64)}
    for site in x.sites:
        counts[site.align64][site.verdict] += 1
    peak = max([sum(c.values()) for c in counts.values()] + [1])
    w, h = 1000, 260
    left, right, top, bottom = 44, 10, 14, 40
    cw = (w - left - right) / 64
    ph = h - top - bottom
    out = [f'<svg id="hist-{idx}" class="hist" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" '
           f'aria-label="sites per alignment mod 64 in {_e(x.image.path)}">']
    # Axis and count ticks.
    for frac in (0, 0.5, 1):
        y = top + ph * (1 - frac)
        out.append(f'<line x1="{left}" x2="{w - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e6ea"/>'
                   f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{round(peak * frac)}</text>')
    for a in range(64):
        y = top + ph
        for v in reversed(VERDICTS):
            n = counts[a][v]
            if not n:
                continue
            bh = ph * n / peak
            y -= bh
            out.append(f'<rect class="hbar" data-align="{a}" data-verdict="{_e(v)}" data-n="{n}" x="{left + a * cw + 1:.2f}" '
                       f'y="{y:.2f}" width="{cw - 2:.2f}" height="{bh:.2f}" fill="{VERDICT_COLOUR[v]}"><title>align {a}: {n} {_e(v)}</title></rect>')
    # Boundaries: every 64 (line), 16 and 8 bytes, strongest first so the weaker do not hide them.
    for a in range(0, 65, 8):
        xb = left + a * cw
        if a % 64 == 0:
            style = 'stroke="#000" stroke-width="2.5"'
        elif a % 16 == 0:
            style = 'stroke="#333" stroke-width="1.4" stroke-dasharray="6 3"'
        else:
            style = 'stroke="#666" stroke-width="0.8" stroke-dasharray="2 3"'
        out.append(f'<line class="boundary b{64 if a % 64 == 0 else 16 if a % 16 == 0 else 8}" x1="{xb:.2f}" '
                   f'x2="{xb:.2f}" y1="{top - 6}" y2="{top + ph + 4}" {style}/>')
        out.append(f'<text x="{xb:.2f}" y="{top + ph + 16}" text-anchor="middle">{a}</text>')
    out.append(f'<text x="{left + (w - left - right) / 2:.1f}" y="{h - 6}" text-anchor="middle">site address mod 64 '
               '(solid: 64-byte line, dashed: 16-byte, dotted: 8-byte boundary)</text>')
    out.append("</svg>")
    return "".join(out)


def _cards(summ: dict[str, object]) -> str:
    by_v = summ["by_verdict"]
    assert isinstance(by_v, dict)
    cards = [("sites", summ["sites"], "count-sites"), ("distinct gates", summ["distinct_gates"], "count-gates"),
             ("near misses", summ["near_misses"], "count-near-misses"), ("syncs in all", summ["syncs"], "count-syncs"),
             ("eager / lazy", f"{summ['eager']} / {summ['lazy']}", "count-eager")]
    out = ['<div class="cards">']
    for label, n, cid in cards:
        out.append(f'<div class="card" data-count="{cid}"><span class="n">{_e(n)}</span><span class="l">{_e(label)}</span></div>')
    for v in VERDICTS:
        out.append(f'<div class="card" data-count="verdict-{_e(v)}" title="{_e(VERDICT_HELP[v])}"><span class="n">'
                   f'{by_v.get(v, 0)}</span><span class="l">{_chip(v)}</span></div>')
    out.append("</div>")
    out.append(_verdict_bar(by_v))
    return "".join(out)


def _counts_line(d: object) -> str:
    assert isinstance(d, dict)
    return ", ".join(f"{_e(k)} {v}" for k, v in d.items() if v) or "none"


SITE_COLUMNS = (
    ("file", "text"), ("address", "num"), ("offset", "num"), ("region", "text"), ("shape", "text"),
    ("gate", "num"), ("kind", "text"), ("name", "text"), ("confidence", "text"), ("align", "num"),
    ("crosses", "text"), ("plan", "text"), ("syncs", "num"), ("load", "text"), ("verdict", "text"),
    ("detail", "text"),
)


def _select(attr: str, label: str, values: list[str]) -> str:
    opts = "".join(f'<option value="{_e(v)}">{_e(v)}</option>' for v in values)
    return f'<label>{_e(label)} <select data-attr="{_e(attr)}"><option value="">all</option>{opts}</select></label>'


def render_html(report: AuditReport) -> str:
    audits = report.audits
    title = "gatelink audit: " + (", ".join(a.image.path for a in audits[:3]) + (" ..." if len(audits) > 3 else "")
                                  if audits else "no inputs")
    totals = report.totals()
    out = [
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n',
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n',
        '<meta name="generator" content="gatelink ' + _e(__version__) + '">\n',
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n",
        f"<header><h1>{_e(title)}</h1>\n<p class=\"muted\">fetch model <code>{_e(report.model)}</code>, policy "
        f"<code>{_e(report.policy.name)}</code>, final form <code>{_e(report.form)}</code>, eager policy "
        f"<code>{_e(report.eager)}</code>; gates: "
        + "; ".join(_e(s.describe()) for s in report.gates.sources) + "</p></header>\n",
        '<section id="summary"><h2>Summary</h2>\n',
        f'<p class="muted">{len(audits)} input{"s" if len(audits) != 1 else ""}'
        + (f", {len(report.failures)} unreadable" if report.failures else "") + "</p>\n",
        _cards(totals),
        f'<p>shapes: {_counts_line(totals["by_shape"])}; confidence: {_counts_line(totals["by_confidence"])}; '
        f'plan status: {_counts_line(totals["by_plan_status"])}</p>\n',
        f'<p>near misses by reason: {_counts_line(totals["near_misses_by_reason"])}</p>\n',
    ]
    for f in report.failures:
        out.append(f'<p class="error"><strong>{_e(f.path)}</strong>: error: {_e(f.problem)}</p>\n')
    out.append("<details><summary>What the verdicts mean</summary><dl>"
               + "".join(f"<dt>{_chip(v)}</dt><dd>{_e(VERDICT_HELP[v])}</dd>" for v in VERDICTS)
               + "</dl></details>\n</section>\n")

    out.append('<section id="pictures"><h2>Pictures</h2>\n' + _legend(extra_near=True))
    for i, x in enumerate(audits):
        summ = x.summary()
        out.append(f'<h3>{_e(x.image.path)} <span class="muted">({_e(x.image.format)}, {summ["sites"]} sites, '
                   f'{summ["near_misses"]} near misses)</span></h3>\n')
        out.append(_verdict_bar(summ["by_verdict"]))  # type: ignore[arg-type]
        for w in x.warnings:
            out.append(f'<p class="muted">warning: {_e(w)}</p>\n')
        out.append('<div class="pics">' + _image_map(x, i) + _histogram(x, i) + "</div>\n")
    out.append("</section>\n")

    gates = totals["gates"]
    assert isinstance(gates, list)
    out.append(f'<section id="gates"><h2>Gates called <span class="muted">({len(gates)} distinct: the API surface)'
               '</span></h2>\n<div class="filters" data-table="gates-table"><label>search <input type="search" '
               'aria-label="search gates"></label><span class="muted">showing <span class="shown">'
               f'{len(gates)}</span> of {len(gates)}</span></div>\n'
               '<div class="scroll"><table id="gates-table" class="sortable"><thead><tr>'
               '<th data-type="text">kind</th><th data-type="num">gate</th><th data-type="text">name</th>'
               '<th data-type="num">sites</th><th data-type="text">verdicts</th></tr></thead><tbody>\n')
    for g in gates:
        out.append(f'<tr><td>{_e(g["kind"])}</td><td class="num">{g["gate"]}</td><td>{_e(g["name"] or "unknown")}</td>'
                   f'<td class="num">{g["sites"]}</td><td>'
                   + " ".join(f'{_chip(v)} {n}' for v, n in g["by_verdict"].items()) + "</td></tr>\n")
    out.append("</tbody></table></div></section>\n")

    n_sites = sum(len(x.sites) for x in audits)
    many = len(audits) > 1
    shapes = sorted({a.site.shape for x in audits for a in x.sites})
    out.append('<section id="sites"><h2>Sites</h2>\n<div class="filters" data-table="sites-table">'
               '<label>search <input type="search" aria-label="search sites"></label>'
               + _select("data-verdict", "verdict", list(VERDICTS))
               + _select("data-shape", "shape", shapes)
               + _select("data-confidence", "confidence", ["certain", "likely"])
               + (_select("data-file", "file", [x.image.path for x in audits]) if len(audits) > 1 else "")
               + f'<span class="muted">showing <span class="shown" id="shown-sites">{n_sites}</span> of {n_sites}'
               '</span></div>\n<div class="scroll"><table id="sites-table" class="sortable"><thead><tr>'
               + "".join(f'<th data-type="{t}">{_e(c)}</th>' for c, t in SITE_COLUMNS if c != "file" or many)
               + "</tr></thead><tbody>\n")
    for x in audits:
        path = _e(x.image.path)
        for a in x.sites:
            s = a.site
            out.append(
                f'<tr data-verdict="{_e(a.verdict)}" data-shape="{_e(s.shape)}" data-confidence="{_e(s.confidence)}" '
                f'data-file="{path}">' + (f"<td>{path}</td>" if many else "") +
                f'<td class="hex" data-v="{s.address}">{s.address:#x}</td>'
                f'<td class="hex" data-v="{s.file_offset}">{s.file_offset:#x}</td><td>{_e(s.region)}</td>'
                f'<td>{_e(s.shape)}</td><td class="num">{s.gate}</td><td>{_e(s.gate_kind or "?")}</td>'
                f'<td>{_e(s.gate_name or "unknown")}</td><td>{_e(s.confidence)}</td>'
                f'<td class="num">{a.align64}</td><td>{_e(a.crossing_text)}</td><td class="mono">{_e(a.plan or "-")}</td>'
                f'<td class="num" data-v="{-1 if a.syncs is None else a.syncs}">{"-" if a.syncs is None else a.syncs}</td>'
                f'<td>{"eager" if a.eager else "lazy"}</td><td>{_chip(a.verdict)}</td>'
                f'<td class="detail" title="{_e(a.detail)}">{_e(a.detail)}</td></tr>\n')
    out.append("</tbody></table></div></section>\n")

    n_near = sum(len(x.near_misses) for x in audits)
    reasons = sorted({n.reason for x in audits for n in x.near_misses})
    out.append(f'<section id="near-misses"><h2>Near misses <span class="muted">({n_near}: stub-like bytes that are '
               'not sites)</span></h2>\n<div class="filters" data-table="near-table"><label>search <input '
               'type="search" aria-label="search near misses"></label>' + _select("data-reason", "reason", reasons)
               + f'<span class="muted">showing <span class="shown">{n_near}</span> of {n_near}</span></div>\n'
               '<div class="scroll"><table id="near-table" class="sortable"><thead><tr><th data-type="text">file</th>'
               '<th data-type="num">offset</th><th data-type="num">address</th><th data-type="text">region</th>'
               '<th data-type="text">looks like</th><th data-type="text">reason</th><th data-type="text">detail</th>'
               "</tr></thead><tbody>\n")
    for x in audits:
        path = _e(x.image.path)
        for n in x.near_misses:
            addr = "" if n.address is None else f"{n.address:#x}"
            out.append(f'<tr data-reason="{_e(n.reason)}"><td>{path}</td><td class="hex" data-v="{n.file_offset}">'
                       f'{n.file_offset:#x}</td><td class="hex" data-v="{-1 if n.address is None else n.address}">'
                       f'{addr}</td><td>{_e(n.region)}</td><td>{_e(n.shape or "")}</td>'
                       f'<td title="{_e(reason_help(n.reason))}">{_e(n.reason)}</td><td class="wrap">{_e(n.detail)}</td></tr>\n')
    out.append("</tbody></table></div></section>\n")
    out.append(f'<footer>gatelink {_e(__version__)} audit. Plan notation: <code>wN@+K</code> stores N bytes at site '
               'offset K, <code>sync</code> serialises every core. <em>crosses</em>: the chunk and 64-byte line '
               "boundaries inside the bytes the patch changes. See docs/audit.md.</footer>\n")
    out.append(f"<script>{_JS}</script>\n</body>\n</html>\n")
    return "".join(out)
