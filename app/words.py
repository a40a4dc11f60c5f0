"""Words for clinicians: archive statuses and withheld studies in plain language, the technical detail kept apart.

A status `reason` is written for integrators ("not linked (no identifier in domain
urn:oid:2.16...)", "HTTP 401 (credentials not accepted)"). The page shows `message` (no OIDs, no
protocol names, no HTTP codes) and keeps `detail` behind a "details" disclosure.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .models import Study

#: ArchiveError codes (app/errors.py) -> what a clinician reads, and whether "try again" may help.
ERROR_WORDS: dict[str, tuple[str, bool]] = {
    "archive-timeout": ("did not answer in time", True),
    "archive-unavailable": ("could not be reached", True),
    "archive-auth": ("refused the app's sign-in; tell IT", False),
    "archive-bad-response": ("sent an answer the app could not read; tell IT", True),
    "archive-error": ("failed unexpectedly; tell IT", True),
}


@dataclass(frozen=True, slots=True)
class StatusWords:
    """What the page says about one archive."""

    message: str | None
    detail: str | None
    retry: bool


def describe(state: str, *, error: str | None, reason: str | None, count: int = 0, partial: bool = False,
             via_pixm: bool = False, dropped: int = 0, skipped: int = 0) -> StatusWords:
    """Plain words for one archive's status; the integrator's `reason` becomes the `detail`."""
    if state == "not-linked":
        return StatusWords("Not searched: this archive has no record number for this patient.", reason, False)
    if state == "searching":
        return StatusWords(None, None, False)
    if state in ("timeout", "error"):
        what, retry = ERROR_WORDS.get(error or "", ("failed", True))
        shown = f" Showing the {count} {_studies(count)} it had sent." if count else ""
        return StatusWords(f"This archive {what}.{shown}", reason, retry)
    parts = []
    if partial:
        parts.append(f"Showing {count} {_studies(count)}; this archive holds more. Narrow by date to see others.")
    if via_pixm:
        parts.append("Found through the regional patient index.")
    if dropped:
        parts.append(f"{dropped} {_studies(dropped)} withheld: the record does not match the chart.")
    if skipped:
        parts.append(f"{skipped} {'record' if skipped == 1 else 'records'} could not be read.")
    return StatusWords(" ".join(parts) or None, reason, False)


def _studies(n: int) -> str:
    return "study" if n == 1 else "studies"


def cut_reason(cut: str, shown: int, *, max_results: int, timeout_s: float) -> str:
    """The status reason for an answer that was cut, with the number shown."""
    if cut == "max_results":
        return f"showing {shown:,} of at least {max_results + 1:,} — narrow by date (max_results = {max_results:,})"
    if cut == "pages":
        return f"showing {shown:,}; the archive kept paging past the page limit — narrow by date"
    return f"showing {shown:,}; the archive did not finish within {timeout_s:g} s — narrow by date or try again"


def withheld_stubs(archive_id: str, withheld: Iterable[tuple[str, Study]]) -> list[dict[str, str]]:
    """Stub rows for studies withheld on a demographic conflict, one per reason.

    "1 study withheld: birth date differs — XR pelvis, 2023; ask HIM to reconcile". Only studies
    whose identifier matched are described: they are this patient's by identifier, and the
    conflict is a record to reconcile, not another patient's data.
    """
    groups: dict[str, list[Study]] = {}
    for reason, study in withheld:
        groups.setdefault(reason, []).append(study)
    stubs = []
    for reason, studies in groups.items():
        named = [_summary(s) for s in studies[:3]]
        more = f" and {len(studies) - 3} more" if len(studies) > 3 else ""
        summary = f"{len(studies)} {_studies(len(studies))} withheld: {reason} — {', '.join(named)}{more}"
        stubs.append({"archive": archive_id, "reason": reason, "summary": summary,
                      "action": "Ask HIM (health information management) to reconcile the record."})
    return stubs


def _summary(study: Study) -> str:
    what = study.description or " ".join(study.modalities) or "study"
    return f"{what}, {study.started.year}" if study.started else what
