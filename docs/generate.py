"""Regenerate the generated parts of the docs: docs/shapes.md and the matrix in docs/safety.md.

    python docs/generate.py          # rewrite them
    python docs/generate.py --check  # exit 1 if they are stale (used by the tests)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from gatelink.catalog import SHAPES  # noqa: E402

BEGIN, END = "<!-- matrix:begin -->", "<!-- matrix:end -->"


def shapes_md() -> str:
    lines = [
        "# Stub shapes",
        "",
        "Generated from `gatelink/catalog.py` by `python docs/generate.py`; do not edit by hand.",
        "`g` is a byte of the gate number (little-endian), `s` a selector byte.",
        "",
        "| id | bytes | length | bitness | call at | gate at | selector at | selectors | emitted by |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in SHAPES:
        sels = ", ".join(str(x) for x in s.selectors) or f"({s.kind.value if s.kind else '-'} gate)"
        lines.append(
            f"| {s.id}{' (legacy)' if s.legacy else ''} | `{s.template()}` | {s.length} | "
            f"{s.bitness or 'any'} | +{s.call_at} | +{s.gate_at} | "
            f"{'+' + str(s.sel_at) if s.sel_at is not None else '-'} | {sels} | {s.emitted_by} |"
        )
    return "\n".join(lines) + "\n"


def matrix_md(jobs: int | None) -> str:
    from gatelink.plan.matrix import run_matrix
    from gatelink.plan.report import matrix_markdown

    return matrix_markdown(run_matrix(jobs=jobs))


def splice(doc: str, table: str) -> str:
    a = doc.index(BEGIN) + len(BEGIN)
    b = doc.index(END)
    return doc[:a] + "\n" + table + "\n" + doc[b:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 if stale")
    ap.add_argument("--jobs", type=int, default=None)
    args = ap.parse_args()
    targets = {HERE / "shapes.md": shapes_md()}
    safety = HERE / "safety.md"
    targets[safety] = splice(safety.read_text(), matrix_md(args.jobs))
    stale = [p for p, text in targets.items() if not p.exists() or p.read_text() != text]
    if args.check:
        for p in stale:
            print(f"stale: {p.name} (run python docs/generate.py)")
        return 1 if stale else 0
    for p in stale:
        p.write_text(targets[p])
        print(f"wrote {p.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
