"""The one merge-and-link accumulator: archive answers merged by StudyInstanceUID, linked across archives.

`/api/studies` (Federation.search) and the event stream both feed archive outcomes into an
`Accumulator` as they arrive, so the two paths cannot merge differently. Merging is independent
of arrival order (versions are folded in configuration order, the EHR's fields first), and it
copies only what it changes: a study held by one archive is used as that archive built it, and a
study held by several is rebuilt from its versions (shallow copies; `Report`, `Order`,
`Identifier` and `StudyEndpoint` are immutable and shared).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, Protocol

from .archives.base import LinkedOrder, LinkedReport
from .models import ArchiveStatus, Study


class Outcome(Protocol):
    """What one archive answered (federation.ArchiveOutcome)."""

    status: ArchiveStatus
    studies: list[Study]
    reports: list[LinkedReport]
    orders: list[LinkedOrder]
    withheld: list[dict[str, str]]


def _sort_key(study: Study) -> tuple[bool, datetime]:
    started = study.started
    if started is None:
        return False, datetime.min
    return True, started.replace(tzinfo=None) if started.tzinfo is not None else started


def newest_first(studies: Iterable[Study]) -> list[Study]:
    """Studies by start time, newest first; undated ones last."""
    return sorted(studies, key=_sort_key, reverse=True)


def union(into: list, items: Iterable, key: Callable[[Any], Any] = lambda x: x) -> bool:
    """Append the items `into` does not hold yet (by `key`); whether any was added."""
    have = {key(x) for x in into}
    added = False
    for item in items:
        k = key(item)
        if k not in have:
            into.append(item)
            have.add(k)
            added = True
    return added


def _report_key(report: Any) -> tuple[str | None, str]:
    return report.source, report.id


def copy_study(study: Study) -> Study:
    """A copy whose lists and dicts are its own; the immutable parts (reports, orders...) are shared."""
    twin = copy.copy(study)
    twin.sources, twin.reports, twin.orders = list(study.sources), list(study.reports), list(study.orders)
    twin.endpoints, twin.badges, twin.ids = list(study.endpoints), list(study.badges), list(study.ids)
    twin.matched_ids, twin.other_names = dict(study.matched_ids), dict(study.other_names)
    twin.elsewhere = list(study.elsewhere)
    return twin


def fold(into: Study, study: Study) -> None:
    """Merge `study` (another archive's version) into `into`: first non-empty value wins, lists unite."""
    for name in ("started", "description", "accession", "series_count", "instance_count", "referrer",
                 "facility"):
        if getattr(into, name) is None:
            setattr(into, name, getattr(study, name))
    for name in ("modalities", "body_sites", "procedure_codes"):
        mine, theirs = getattr(into, name), getattr(study, name)
        if theirs and theirs != mine:
            setattr(into, name, tuple(dict.fromkeys((*mine, *theirs))))
    union(into.sources, study.sources)
    union(into.badges, study.badges)
    union(into.reports, study.reports, key=_report_key)
    union(into.orders, study.orders, key=_report_key)
    union(into.endpoints, study.endpoints)
    union(into.ids, study.ids)
    union(into.elsewhere, study.elsewhere)
    into.matched_ids.update(study.matched_ids)
    for archive_id, name in study.other_names.items():
        into.other_names.setdefault(archive_id, name)


def merge_studies(studies: Iterable[Study]) -> list[Study]:
    """One Study per StudyInstanceUID (several `sources`), newest first; the inputs are not modified."""
    merged: dict[str, Study] = {}
    for study in studies:
        have = merged.get(study.uid)
        if have is None:
            merged[study.uid] = copy_study(study)
        else:
            fold(have, study)
    return newest_first(merged.values())


def link(studies: Iterable[Study], reports: Iterable[LinkedReport], orders: Iterable[LinkedOrder]) -> set[str]:
    """Attach reports (by imagingStudy reference or accession) and orders (by basedOn or accession).

    Idempotent and indexed (a report finds its studies by UID and accession, not by a scan), so it
    can run again whenever more archives have answered; returns the UIDs of studies that gained one.
    """
    by_uid: dict[str, Study] = {}
    by_accession: dict[str, list[Study]] = {}
    by_day: dict[tuple[Any, str], list[Study]] = {}
    for study in studies:
        by_uid[study.uid] = study
        if study.accession:
            by_accession.setdefault(study.accession, []).append(study)
        if study.started:
            for modality in study.modalities:
                by_day.setdefault((study.started.date(), modality), []).append(study)
    changed: set[str] = set()

    def targets(uids: Iterable[str], accession: str | None) -> list[Study]:
        found = [by_uid[u] for u in uids if u in by_uid]
        return found + [s for s in by_accession.get(accession or "", []) if all(s is not f for f in found)]

    def same_day(report: LinkedReport) -> list[Study]:
        # Only for a note with no reference and no accession, and only when exactly one study matches.
        if report.study_refs or report.accession or report.day is None:
            return []
        found = {s.uid: s for m in report.modalities for s in by_day.get((report.day, m), [])}
        return list(found.values()) if len(found) == 1 else []

    for linked_report in reports:
        for study in targets(linked_report.study_uids, linked_report.accession) or same_day(linked_report):
            if union(study.reports, [linked_report.report], key=_report_key):
                changed.add(study.uid)
    for linked_order in orders:
        for study in targets(linked_order.study_uids, linked_order.order.accession):
            if union(study.orders, [linked_order.order], key=_report_key):
                changed.add(study.uid)
    return changed


class Accumulator:
    """Archive outcomes in, merged and linked studies out; `add` says which studies changed.

    The accumulator owns the studies it is given (each search builds its own; cached ones are
    copies), so a study held by one archive is not copied at all.
    """

    def __init__(self, archive_order: Sequence[str] = ()) -> None:
        self._rank = {aid: n for n, aid in enumerate(archive_order)}
        self._versions: dict[str, list[Study]] = {}
        self.merged: dict[str, Study] = {}
        self.reports: list[LinkedReport] = []
        self.orders: list[LinkedOrder] = []
        self.statuses: list[ArchiveStatus] = []
        self.withheld: list[dict[str, str]] = []  # stub rows for studies withheld on a demographic conflict

    def _rank_of(self, study: Study) -> int:
        return min((self._rank.get(src, len(self._rank)) for src in study.sources), default=len(self._rank))

    def add(self, outcome: Outcome) -> set[str]:
        """Fold in one archive's answer; the UIDs of studies that are new or changed."""
        self.statuses.append(outcome.status)
        self.withheld += outcome.withheld
        changed = self._merge(outcome.studies)
        self.reports += outcome.reports
        self.orders += outcome.orders
        if outcome.reports or outcome.orders or changed:
            # A report or order from this archive may belong to a study another archive brought
            # earlier (by accession number), and a re-merged study must regain cross-archive links.
            changed |= link(self.merged.values(), self.reports, self.orders)
        return changed

    def _merge(self, studies: Iterable[Study]) -> set[str]:
        changed: set[str] = set()
        for study in studies:
            changed.add(study.uid)
            versions = self._versions.get(study.uid)
            if versions is None:
                self._versions[study.uid] = [study]
                self.merged[study.uid] = study
                continue
            versions.append(study)
            versions.sort(key=self._rank_of)  # configuration order, whatever the arrival order
            merged = copy_study(versions[0])
            for other in versions[1:]:
                fold(merged, other)
            self.merged[study.uid] = merged
        return changed

    def studies(self) -> list[Study]:
        """Every merged study, newest first (undated last)."""
        return newest_first(self.merged.values())

    def ordered_statuses(self) -> list[ArchiveStatus]:
        """The statuses in configuration order (stable whatever the arrival order)."""
        return sorted(self.statuses, key=lambda s: self._rank.get(s.id, len(self._rank)))
