"""The timeline's view model: what the page shows for each study and on top, decided here so the browser only shows it.

One `ViewBuilder` per request: viewer tables, acknowledgements and each study's anatomy are
computed once, not per study view. The current study, its ranked priors, attention reasons with
their acknowledgements, the row's signals, pending orders and the encounter's default range all
come from here (rules in app/priors.py, words in app/words.py); `/api/studies` and the event
stream send the same fields.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from . import priors
from .archives.base import LinkedOrder
from .archives.config import ArchiveConfig, ViewerConfig
from .identity import BIRTH_DATE_UNREADABLE, NAME_DIFFERS, VIA_PIXM
from .models import LaunchContext, Study
from .viewers import images_note, viewer_links

ATTENTION_LABELS = {
    priors.STAT_ORDER: ("stat-order", "STAT order"),
    priors.URGENT_ORDER: ("urgent-order", "Urgent order"),
    priors.CRITICAL_RESULT: ("critical-result", "Critical result"),
    priors.ABNORMAL_RESULT: ("abnormal-result", "Abnormal result"),
    priors.NO_FINAL_REPORT: ("no-final-report", "No final report"),
}
ATTENTION_CODES = frozenset(code for code, _ in ATTENTION_LABELS.values())

#: Encounter.class (v3 ActCode) -> the default date range of the view.
DEFAULT_RANGES = {"EMER": "72h"}


def _viewer_table(archive: ArchiveConfig, viewer: ViewerConfig) -> dict[str, Any]:
    table: dict[str, Any] = {"kind": viewer.kind, "url": viewer.url, "via": viewer.via}
    if archive.issuer_of_patient_id:
        table["issuer_of_patient_id"] = archive.issuer_of_patient_id
    if archive.kind == "dicomweb":
        table["dicomweb_url"] = archive.base_url if archive.base_url != "ehr" else None
    return table


@dataclass(frozen=True, slots=True)
class Decision:
    """Which study is current, which is latest, and the ranked relevant priors of the anchor."""

    current: str | None = None
    latest: str | None = None
    priors: tuple[str, ...] = ()  # ranked, best first
    ranks: dict[str, int] = field(default_factory=dict, compare=False)  # uid -> 1-based rank

    def __post_init__(self) -> None:
        self.ranks.update((uid, n) for n, uid in enumerate(self.priors, 1))

    @property
    def anchor(self) -> str | None:
        return self.current or self.latest

    def flags(self, uid: str) -> tuple[bool, bool, int | None]:
        return uid == self.current, uid == self.latest, self.ranks.get(uid)


@dataclass
class ViewBuilder:
    """Builds study views and the page's top-level decisions for one request."""

    ctx: LaunchContext
    archives: dict[str, ArchiveConfig]
    thumbnail_url: Callable[[Study], str | None]
    patient_name: str = ""
    acks: dict[str, dict[str, str]] = field(default_factory=dict)  # "uid|code" -> {"by", "at"}
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    today: date = field(default_factory=lambda: datetime.now().astimezone().date())
    critical_window: timedelta = priors.CRITICAL_WINDOW
    encounter_class: str | None = None
    # The session's DICOMweb gateway base (app/gateway.py), asked only if a viewer goes through it.
    gateway_base: Callable[[], str | None] = lambda: None
    _parts: dict[str, frozenset[str]] = field(default_factory=dict)
    _viewers: dict[str, dict[str, Any]] = field(default_factory=dict)
    _names: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._viewers = {aid: _viewer_table(a, a.viewer) for aid, a in self.archives.items() if a.viewer is not None}
        self._names = {aid: a.name for aid, a in self.archives.items()}
        self._through = any(v.get("via") == "gateway" for v in self._viewers.values())

    def forget(self, uids: Iterable[str]) -> None:
        """Studies that changed: their anatomy is read again."""
        for uid in uids:
            self._parts.pop(uid, None)

    def parts(self, study: Study) -> frozenset[str]:
        found = self._parts.get(study.uid)
        if found is None:
            found = self._parts[study.uid] = priors.parts_of(study)
        return found

    # --- decisions ------------------------------------------------------------------------------

    def decide(self, studies: Sequence[Study]) -> Decision:
        current = priors.current_study(studies, self.ctx, today=self.today)
        latest = priors.latest_study(studies)
        anchor = current or latest
        ranked: list[Study] = []
        if anchor is not None:
            parts = {s.uid: self.parts(s) for s in studies}
            ranked = priors.ranked_priors(anchor, studies, parts=parts)
        return Decision(current.uid if current else None, latest.uid if latest else None,
                        tuple(s.uid for s in ranked))

    # --- one study ------------------------------------------------------------------------------

    def view(self, study: Study, decision: Decision) -> dict[str, Any]:
        """Study JSON plus everything the page shows for it (the contract in docs and tests)."""
        view = study.to_json()
        region = priors.body_region(study)
        label = priors.region_label(region)
        view["region"] = region
        view["region_label"] = label
        parts = self.parts(study)
        view["regions"] = [p for p in priors.PART_ORDER if p in parts]
        reasons = priors.attention(study, now=self.now, critical_window=self.critical_window)
        view["attention"] = [self._attention_item(study.uid, reason) for reason in reasons]
        view["signals"] = self.signals(study, reasons)
        view["viewers"] = viewer_links(study, self._viewers, patient_id=None,
                                       gateway=self.gateway_base() if self._through else None)
        view["images_note"] = images_note(study, view["viewers"], self._names, set(self._viewers))
        view["thumbnail"] = self.thumbnail_url(study)
        current, latest, rank = decision.flags(study.uid)
        view["current"] = current
        view["latest"] = latest
        view["prior"] = rank is not None
        view["prior_rank"] = rank
        view["source_names"] = [self.archives[s].name if s in self.archives else s for s in study.sources]
        view["search_text"] = search_text(study, label)
        return view

    def _attention_item(self, uid: str, reason: str) -> dict[str, Any]:
        code, label = ATTENTION_LABELS.get(reason, (reason.replace(" ", "-"), reason.capitalize()))
        ack = self.acks.get(f"{uid}|{code}")
        return {"code": code, "label": label, "acknowledged": dict(ack) if ack else None}

    def signals(self, study: Study, reasons: list[str]) -> list[dict[str, str]]:
        """One chip per meaning, in display order: priority, result, report, identity, stage."""
        out: list[dict[str, str]] = []
        # The attention rule already decided whether the order's priority still counts (open or recent).
        if priors.STAT_ORDER in reasons:
            out.append(_signal("priority", "STAT", "critical"))
        elif priors.URGENT_ORDER in reasons:
            out.append(_signal("priority", "Urgent", "warning"))
        if priors.CRITICAL_RESULT in reasons:
            out.append(_signal("result", "Critical result", "critical"))
        elif priors.ABNORMAL_RESULT in reasons:
            out.append(_signal("result", "Abnormal result", "warning"))
        statuses = {(r.status or "").lower() for r in study.reports}
        if statuses & priors.FINAL_REPORT:
            out.append(_signal("report", "Final report", "ok"))
        elif statuses & priors.PENDING_REPORT:
            out.append(_signal("report", "Preliminary report", "warning"))
        elif "available" in statuses:  # a DICOM SR / Encapsulated PDF the archive holds (read on opening)
            out.append(_signal("report", "Report in the archive", "info"))
        elif priors.NO_FINAL_REPORT in reasons:
            out.append(_signal("report", "No report yet", "info"))
        if NAME_DIFFERS in study.badges:
            spellings = sorted({n.casefold(): n for n in sorted(study.other_names.values())
                                if n}.values())
            theirs = " / ".join(spellings) if spellings else "another spelling"
            out.append(_signal("identity", f"Name differs: {theirs} (archive) vs {self.patient_name} (chart)",
                               "warning"))
        if BIRTH_DATE_UNREADABLE in study.badges:
            out.append(_signal("identity", "Identity: birth date unreadable", "warning"))
        if VIA_PIXM in study.badges:
            out.append(_signal("identity", "Linked via the regional patient index", "info"))
        if any((o.status or "").lower() == "in-progress" for o in study.orders):
            out.append(_signal("stage", "In progress", "info"))
        return out

    # --- the top of the page --------------------------------------------------------------------

    def pinned(self, decision: Decision) -> dict[str, Any]:
        return {"uid": decision.anchor, "priors": list(decision.priors[:priors.PINNED_RECENT + 1])}

    def view_settings(self) -> dict[str, Any]:
        return {"default_range": DEFAULT_RANGES.get((self.encounter_class or "").upper()),
                "encounter_class": self.encounter_class}

    def pending_orders(self, studies: Iterable[Study], orders: Iterable[LinkedOrder]) -> list[dict[str, Any]]:
        """Open orders that no study fulfils yet (ordered, scheduled, in progress), soonest first."""
        linked = {(o.source, o.id) for s in studies for o in s.orders}
        out: dict[tuple[str | None, str], dict[str, Any]] = {}
        for linked_order in orders:
            order = linked_order.order
            key = (order.source, order.id)
            if key in linked or key in out:
                continue
            stage = _stage(order.status, order.occurrence, self.now)
            if stage is None:
                continue
            out[key] = {"id": order.id, "archive": order.source or "", "stage": stage,
                        "label": _order_label(stage, order.code_text, order.occurrence, order.location),
                        "priority": order.priority, "date": order.occurrence.isoformat() if order.occurrence else None}
        return sorted(out.values(), key=lambda o: (o["date"] is None, o["date"] or ""))


def _signal(kind: str, label: str, tone: str) -> dict[str, str]:
    return {"kind": kind, "label": label, "tone": tone}


STAGES = {"ordered": "Ordered", "scheduled": "Scheduled", "in-progress": "In progress"}


def _stage(status: str | None, when: datetime | None, now: datetime) -> str | None:
    """ServiceRequest.status (+ occurrence) -> the workflow stage of an order without images."""
    status = (status or "").lower()
    if status == "in-progress":
        return "in-progress"
    if status != "active":
        return None  # draft, on-hold, completed, revoked, entered-in-error: not a pending exam
    if when is not None and (when if when.tzinfo else when.replace(tzinfo=UTC)) > now:
        return "scheduled"
    return "ordered"


def _order_label(stage: str, what: str | None, when: datetime | None, where: str | None) -> str:
    """ "Scheduled: MRI brain, Dec 3, Riverside" """
    day = f"{when:%b} {when.day}" if when else None
    return f"{STAGES[stage]}: " + ", ".join(p for p in (what or "imaging order", day, where) if p)


def search_text(study: Study, region_label: str | None) -> str:
    """What the search box matches: description, accession, facility, modality, region, report text."""
    parts = [study.description, study.accession, study.facility, " ".join(study.modalities), region_label,
             *(r.conclusion for r in study.reports)]
    return " ".join(p for p in parts if p).lower()
