"""Audits of a binary's gate sites: every site with its alignment, chosen plan and verdict, the
near misses with their reasons, and summaries (``docs/audit.md``).

``audit(scan_result)`` audits one image (:mod:`.model`); an :class:`AuditReport` gathers the
audits of several inputs with the settings they were made under, and the renderers turn it into
text, JSON, CSV, SARIF 2.1.0 or a self-contained HTML page (:func:`render`). Every renderer is
deterministic: the same inputs give byte-identical output.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ..gates import GateDB
from ..plan.model import FetchModel, Policy
from ..scan import REASONS
from .model import (
    NEEDS_PAD,
    NEEDS_SYNC,
    NO_PLAN,
    PATCHABLE,
    PLAN_STATUSES,
    REASON_HELP,
    UNKNOWN_GATE,
    VERDICT_HELP,
    VERDICTS,
    Audit,
    AuditSite,
    audit,
    audit_site,
    matches_fail_on,
    plan_text,
    reason_help,
    summarise,
    sync_free_alignments,
)

OUTPUT_FORMATS = ("text", "json", "csv", "sarif", "html")

# What --fail-on accepts: verdicts (and plan statuses, the same names), near-miss reasons, and
# "near-miss" for any near miss.
ANY_NEAR_MISS = "near-miss"
FAIL_ON_NAMES = (*VERDICTS, *REASONS, ANY_NEAR_MISS)


@dataclass(frozen=True)
class InputProblem:
    """An input that could not be audited (unreadable or malformed): reported, not fatal."""

    path: str
    problem: str


@dataclass
class AuditReport:
    """The audits of every input of one run, with the settings they were made under."""

    audits: list[Audit]
    gates: GateDB
    model: FetchModel
    policy: Policy
    form: str = "far"
    eager: str = "certain"
    failures: list[InputProblem] = field(default_factory=list)

    def settings(self) -> dict[str, object]:
        return {"model": self.model.to_json(), "policy": self.policy.name, "form": self.form, "eager": self.eager}

    def totals(self) -> dict[str, object]:
        """The summary over every input (what a multi-binary audit's API surface is)."""
        return summarise([a for x in self.audits for a in x.sites], [n for x in self.audits for n in x.near_misses])

    def triggered(self, fail_on: Iterable[str]) -> list[tuple[str, int]]:
        """For ``--fail-on``: each given name that some site or near miss matches, with how
        many match, in the order given."""
        out = []
        for name in dict.fromkeys(fail_on):
            if name == ANY_NEAR_MISS:
                n = sum(len(x.near_misses) for x in self.audits)
            elif name in REASONS:
                n = sum(1 for x in self.audits for m in x.near_misses if m.reason == name)
            else:
                n = sum(1 for x in self.audits for a in x.sites if matches_fail_on(a, frozenset((name,))))
            if n:
                out.append((name, n))
        return out


def parse_fail_on(values: Iterable[str]) -> list[str]:
    """``--fail-on needs-sync,unknown-gate`` (repeatable, comma separated) -> names; raises
    :class:`~gatelink.errors.UsageError` for an unknown name."""
    from ..errors import UsageError

    out: list[str] = []
    for v in values:
        for part in v.split(","):
            part = part.strip().lower()
            if not part:
                continue
            if part not in FAIL_ON_NAMES:
                raise UsageError(f"unknown --fail-on {part!r}; verdicts: {', '.join(VERDICTS)}; near-miss "
                                 f"reasons: {', '.join(REASONS)}; or {ANY_NEAR_MISS} for any near miss")
            out.append(part)
    return list(dict.fromkeys(out))


def render(report: AuditReport, fmt: str, width: int = 120, color: bool = False) -> str:
    """The report in ``fmt`` (one of :data:`OUTPUT_FORMATS`)."""
    if fmt == "json":
        from .jsonout import render_json

        return render_json(report)
    if fmt == "csv":
        from .csvout import render_csv

        return render_csv(report)
    if fmt == "sarif":
        from .sarif import render_sarif

        return render_sarif(report)
    if fmt == "html":
        from .html import render_html

        return render_html(report)
    if fmt == "text":
        from .text import render_text

        return render_text(report, width=width, color=color)
    from ..errors import UsageError

    raise UsageError(f"unknown audit format {fmt!r}; formats: {', '.join(OUTPUT_FORMATS)}")


__all__ = [
    "ANY_NEAR_MISS", "FAIL_ON_NAMES", "NEEDS_PAD", "NEEDS_SYNC", "NO_PLAN", "OUTPUT_FORMATS", "PATCHABLE",
    "PLAN_STATUSES", "REASON_HELP", "UNKNOWN_GATE", "VERDICTS", "VERDICT_HELP", "Audit", "AuditReport",
    "AuditSite", "InputProblem", "audit", "audit_site", "matches_fail_on", "parse_fail_on", "plan_text",
    "reason_help", "render", "summarise", "sync_free_alignments",
]
