"""Federated search: every archive at once, each answer guarded, normalised, merged by StudyInstanceUID and linked.

A slow, failing or malformed archive never delays or breaks the others: each runs in its own
thread with its own deadline inside an overall one, and its failure becomes its ArchiveStatus.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import requests
from flask import Flask, current_app

from . import identity, pixm
from .archives.auth import AuthFactory, EhrTokenProvider, SigningKey
from .archives.base import Archive, ArchiveAnswer, ArchiveClient, LinkedOrder, LinkedReport
from .archives.config import ArchiveConfig, load_archives
from .archives.dicomweb import DicomWebArchive
from .archives.fhir import FhirArchive
from .errors import ArchiveError, ArchiveNotLinked, ArchiveTimeout
from .http import Deadline
from .locks import hashed_key
from .models import ArchiveStatus, LaunchContext, PatientSummary, Study
from .outcome_json import outcome_parts, outcome_to_json
from .session_store import SessionStore

log = logging.getLogger(__name__)

GRACE_S = 0.5  # an archive thread gets this long past its deadline to hand back what it has
DEFAULT_MAX_BYTES = 20 * 1024 * 1024

AdapterFactory = Callable[[ArchiveConfig, ArchiveClient, LaunchContext, Sequence[ArchiveConfig]], Archive]


def make_archive(config: ArchiveConfig, client: ArchiveClient, ctx: LaunchContext,
                 every: Sequence[ArchiveConfig]) -> Archive:
    """The adapter for `config.kind`; FHIR archives learn the DICOMweb bases to vet ImagingStudy.endpoint."""
    if config.kind == "dicomweb":
        return DicomWebArchive(config, client)
    bases = [(a.id, a.base_url) for a in every if a.kind == "dicomweb"]
    return FhirArchive(config, client, base=config.resolved_base(ctx.iss), ctx=ctx, archive_bases=bases)


@dataclass(frozen=True)
class FederationResult:
    """Every study of the patient across archives (newest first), and how each archive answered."""

    patient: PatientSummary
    studies: list[Study]
    archives: tuple[ArchiveStatus, ...]

    def to_json(self) -> dict[str, Any]:
        return {"patient": self.patient.to_json(), "studies": [s.to_json() for s in self.studies],
                "archives": [a.to_json() for a in self.archives]}


@dataclass
class ArchiveOutcome:
    """One archive's answer: its status, its guarded studies, and the reports and orders it holds."""

    status: ArchiveStatus
    studies: list[Study] = field(default_factory=list)
    reports: list[LinkedReport] = field(default_factory=list)
    orders: list[LinkedOrder] = field(default_factory=list)


# --- merging and linking -------------------------------------------------------------------------


def _sort_key(study: Study) -> tuple[bool, datetime]:
    started = study.started.replace(tzinfo=None) if study.started else datetime.min
    return study.started is not None, started


def newest_first(studies: Iterable[Study]) -> list[Study]:
    """Studies by start time, newest first; undated ones last."""
    return sorted(studies, key=_sort_key, reverse=True)


def _union(into: list, items: Iterable, key: Callable[[Any], Any] = lambda x: x) -> None:
    have = {key(x) for x in into}
    for item in items:
        if key(item) not in have:
            into.append(item)
            have.add(key(item))


def merge_studies(studies: Iterable[Study]) -> list[Study]:
    """One Study per StudyInstanceUID (several `sources`), newest first; the inputs are not modified."""
    merged: dict[str, Study] = {}
    for study in studies:
        have = merged.get(study.uid)
        if have is None:
            merged[study.uid] = copy.deepcopy(study)
            continue
        for name in ("started", "description", "accession", "series_count", "instance_count", "referrer",
                     "facility"):
            if getattr(have, name) is None:
                setattr(have, name, getattr(study, name))
        for name in ("modalities", "body_sites", "procedure_codes"):
            setattr(have, name, tuple(dict.fromkeys((*getattr(have, name), *getattr(study, name)))))
        _union(have.sources, study.sources)
        _union(have.badges, study.badges)
        _union(have.reports, copy.deepcopy(study.reports), key=lambda r: (r.source, r.id))
        _union(have.orders, copy.deepcopy(study.orders), key=lambda o: (o.source, o.id))
        _union(have.endpoints, study.endpoints)
        _union(have.ids, study.ids)
        _union(have.elsewhere, study.elsewhere)
        have.matched_ids.update(study.matched_ids)
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
            before = len(study.reports)
            _union(study.reports, [linked_report.report], key=lambda r: (r.source, r.id))
            if len(study.reports) != before:
                changed.add(study.uid)
    for linked_order in orders:
        for study in targets(linked_order.study_uids, linked_order.order.accession):
            before = len(study.orders)
            _union(study.orders, [linked_order.order], key=lambda o: (o.source, o.id))
            if len(study.orders) != before:
                changed.add(study.uid)
    return changed


# --- the federation ------------------------------------------------------------------------------


class Federation:
    """Searches every configured archive for one patient; shared by all sessions (attach with init_app)."""

    def __init__(self, archives: Sequence[ArchiveConfig], *, http: requests.Session | None = None,
                 private_key: SigningKey | str | bytes | None = None, deadline_s: float = 30.0,
                 cache_ttl_s: float = 120.0, max_bytes: int = DEFAULT_MAX_BYTES, env: dict[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic, max_workers: int = 8,
                 adapter_factory: AdapterFactory = make_archive, shared_cache: SessionStore | None = None) -> None:
        self.archives = tuple(archives)
        self.http = http or requests.Session()
        self.auth = AuthFactory(self.http, private_key=private_key, env=env)
        self.deadline_s, self.cache_ttl_s, self.max_bytes = deadline_s, cache_ttl_s, max_bytes
        self.clock, self.max_workers, self.adapter_factory = clock, max_workers, adapter_factory
        self._cache: dict[tuple[str, str, str], tuple[float, ArchiveOutcome]] = {}
        self._cache_lock = threading.Lock()
        # The session store, when given, holds the per-session study cache instead of this process
        # (so a reload served by another worker or machine spares the archives too).
        self.shared_cache = shared_cache

    def search(self, patient: PatientSummary, ctx: LaunchContext, ehr_token_provider: EhrTokenProvider, *,
               session_id: str | None = None, extra_archives: Sequence[ArchiveConfig] = ()) -> FederationResult:
        """Wait for every archive (or its deadline), then merge and link across archives."""
        return self.merge(patient, self._outcomes(patient, ctx, ehr_token_provider, session_id, extra_archives),
                          extra_archives)

    def merge(self, patient: PatientSummary, found: Iterable[ArchiveOutcome],
              extra_archives: Sequence[ArchiveConfig] = ()) -> FederationResult:
        """Every archive's outcome merged and linked across archives (search(), and /api/studies)."""
        order = {a.id: n for n, a in enumerate([*self.archives, *extra_archives])}
        # Merge in configuration order, not arrival order, so `sources` and merged fields are stable.
        outcomes = sorted(found, key=lambda o: order.get(o.status.id, len(order)))
        studies = merge_studies(s for o in outcomes for s in o.studies)
        link(studies, [r for o in outcomes for r in o.reports], [r for o in outcomes for r in o.orders])
        statuses = [o.status for o in outcomes]
        return FederationResult(patient, studies, tuple(statuses))

    def iter_search(self, patient: PatientSummary, ctx: LaunchContext, ehr_token_provider: EhrTokenProvider, *,
                    session_id: str | None = None, extra_archives: Sequence[ArchiveConfig] = ()
                    ) -> Iterator[tuple[ArchiveStatus, list[Study]]]:
        """(status, studies) per archive as each completes; merge client side with merge_studies.

        Reports and orders are linked to each archive's studies using everything that has arrived
        so far; search() links across all archives at the end.
        """
        reports: list[LinkedReport] = []
        orders: list[LinkedOrder] = []
        # closing(): a client that disconnects mid-stream releases the worker pool at once.
        with closing(self._outcomes(patient, ctx, ehr_token_provider, session_id, extra_archives)) as outcomes:
            for outcome in outcomes:
                reports += outcome.reports
                orders += outcome.orders
                studies = newest_first(outcome.studies)
                link(studies, reports, orders)
                yield outcome.status, studies

    def iter_outcomes(self, patient: PatientSummary, ctx: LaunchContext, ehr_token_provider: EhrTokenProvider, *,
                      session_id: str | None = None, extra_archives: Sequence[ArchiveConfig] = ()
                      ) -> Iterator[ArchiveOutcome]:
        """Each archive's whole answer (status, guarded studies, reports, orders) as it completes.

        For a caller that merges and links across archives itself (the event stream), so that a
        report from one archive reaches a study that another archive brought earlier.
        """
        with closing(self._outcomes(patient, ctx, ehr_token_provider, session_id, extra_archives)) as outcomes:
            yield from outcomes

    # --- internals ------------------------------------------------------------------------------

    def _outcomes(self, patient: PatientSummary, ctx: LaunchContext, provider: EhrTokenProvider,
                  session_id: str | None, extra: Sequence[ArchiveConfig]) -> Generator[ArchiveOutcome, None, None]:
        every = [*self.archives, *extra]
        todo = []
        for archive in every:
            cached = self._cached(session_id, patient.id, archive.id)
            if cached is not None:
                yield cached
            else:
                todo.append(archive)
        if not todo:
            return
        # Read (and if need be refresh) the clinician's token here, in the caller's thread and
        # context: the provider may need the Flask app, and a search is shorter than a token's life.
        token = provider.access_token() if any(a.auth.kind == "ehr" for a in todo) else ""
        overall = Deadline.after(self.deadline_s)
        pool = ThreadPoolExecutor(max_workers=max(1, min(self.max_workers, len(todo))),
                                  thread_name_prefix="archive")
        started = time.monotonic()
        futures: dict[Future[ArchiveOutcome], tuple[ArchiveConfig, Deadline]] = {}
        try:
            for archive in todo:
                deadline = Deadline.after(archive.timeout_s).earliest(overall)
                futures[pool.submit(self._run, archive, every, patient, ctx, token, deadline)] = (archive, deadline)
            pending = set(futures)
            while pending:
                wake = min(futures[f][1].at for f in pending) + GRACE_S
                done, pending = wait(pending, timeout=max(0.0, wake - time.monotonic()), return_when=FIRST_COMPLETED)
                for future in done:
                    outcome = self._collect(future, futures[future][0], started)
                    self._remember(session_id, patient.id, outcome)
                    yield outcome
                now = time.monotonic()
                for future in [f for f in pending if now >= futures[f][1].at + GRACE_S]:
                    pending.discard(future)
                    future.cancel()
                    archive = futures[future][0]
                    log.warning("archive %s: no answer before its deadline", archive.id)
                    yield ArchiveOutcome(_status(archive, "timeout", ms=_ms(started), error=ArchiveTimeout.code,
                                           reason=f"no answer within {min(archive.timeout_s, self.deadline_s):g} s"))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _collect(self, future: Future[ArchiveOutcome], archive: ArchiveConfig, started: float) -> ArchiveOutcome:
        try:
            return future.result()
        except Exception as exc:  # the bulkhead: one archive's bug must not break the others
            log.exception("archive %s: unexpected failure", archive.id)
            return ArchiveOutcome(_status(archive, "error", ms=_ms(started), error="archive-error",
                                    reason=f"unexpected failure ({type(exc).__name__})"))

    def _run(self, archive: ArchiveConfig, every: Sequence[ArchiveConfig], patient: PatientSummary,
             ctx: LaunchContext, token: str, deadline: Deadline) -> ArchiveOutcome:
        started = time.monotonic()
        via_pixm = False
        try:
            ref = identity.link(patient, archive, ctx.iss)
        except ArchiveNotLinked as exc:
            if not archive.pixm_url or not archive.identifier_system:
                return ArchiveOutcome(_status(archive, "not-linked", reason=exc.message))
            try:
                found = pixm.cross_reference(self.http, archive.pixm_url, patient, archive.identifier_system,
                                             deadline=deadline, timeout=archive.timeout_s)
            except ArchiveNotLinked as ambiguous:
                return ArchiveOutcome(_status(archive, "not-linked", reason=ambiguous.message))
            except ArchiveTimeout as failed:
                return ArchiveOutcome(_status(archive, "timeout", ms=_ms(started), error=failed.code,
                                              reason=failed.message))
            except ArchiveError as failed:
                return ArchiveOutcome(_status(archive, "error", ms=_ms(started), error=failed.code,
                                              reason=failed.message))
            if found is None:
                return ArchiveOutcome(_status(archive, "not-linked", reason=exc.message.removesuffix(")")
                                              + "; the PIXm manager has no cross-reference)"))
            ref = identity.ref_for(archive, found, ctx.iss)
            via_pixm = True
        try:
            credentials = self.auth.for_archive(archive, iss=ctx.iss, ehr_token=lambda: token)
            client = ArchiveClient(archive, self.http, credentials, max_bytes=self.max_bytes)
            adapter = self.adapter_factory(archive, client, ctx, every)
            answer = adapter.search(ref, deadline)
            kept = identity.guard(answer.candidates, ref, patient)
            adapter.complete(kept.studies, deadline)
        except ArchiveTimeout as exc:
            return ArchiveOutcome(_status(archive, "timeout", ms=_ms(started), error=exc.code, reason=exc.message))
        except ArchiveError as exc:
            log.info("archive %s: %s", archive.id, exc.code)
            return ArchiveOutcome(_status(archive, "error", ms=_ms(started), error=exc.code, reason=exc.message))
        reports = [r for r in answer.reports if identity.verified(r.subject, ref, patient)]
        orders = [o for o in answer.orders if identity.verified(o.subject, ref, patient)]
        foreign = len(answer.reports) + len(answer.orders) - len(reports) - len(orders)
        if foreign:
            log.warning("archive %s: wrong-patient guard withheld %d reports/orders", archive.id, foreign)
        _resolve_links(kept.studies, answer, reports, orders)
        link(kept.studies, reports, orders)
        reason = _reason(answer, kept)
        if via_pixm:
            for study in kept.studies:
                _union(study.badges, [identity.VIA_PIXM])
            reason = "; ".join(filter(None, ["linked through the PIXm cross-reference manager", reason]))
        status = _status(archive, "ok", count=len(kept.studies), ms=_ms(started), dropped=kept.dropped + foreign,
                         skipped=sum(answer.skipped.values()), reason=reason)
        return ArchiveOutcome(status, kept.studies, reports, orders)

    def _cached(self, session_id: str | None, patient_id: str, archive_id: str) -> ArchiveOutcome | None:
        if session_id is None:
            return None
        if self.shared_cache is not None:
            record = self.shared_cache.get(hashed_key("studies", session_id, patient_id, archive_id))
            return outcome_from_json(record) if record is not None else None
        with self._cache_lock:
            hit = self._cache.get((session_id, patient_id, archive_id))
            if hit is None or hit[0] <= self.clock():
                self._cache.pop((session_id, patient_id, archive_id), None)
                return None
            return copy.deepcopy(hit[1])

    def _remember(self, session_id: str | None, patient_id: str, outcome: ArchiveOutcome) -> None:
        # Only settled answers are kept: a reload retries archives that timed out or failed.
        if session_id is None or self.cache_ttl_s <= 0 or outcome.status.status not in ("ok", "not-linked"):
            return
        if self.shared_cache is not None:
            self.shared_cache.put(hashed_key("studies", session_id, patient_id, outcome.status.id),
                                  outcome_to_json(outcome), self.cache_ttl_s)
            return
        with self._cache_lock:
            now = self.clock()
            for key in [k for k, (until, _) in self._cache.items() if until <= now]:
                del self._cache[key]
            self._cache[(session_id, patient_id, outcome.status.id)] = (now + self.cache_ttl_s,
                                                                        copy.deepcopy(outcome))


def _resolve_links(studies: list[Study], answer: ArchiveAnswer, reports: list[LinkedReport],
                   orders: list[LinkedOrder]) -> None:
    """Turn FHIR references (DiagnosticReport.imagingStudy, ImagingStudy.basedOn) into StudyInstanceUIDs."""
    kept = {s.uid for s in studies}
    by_ref = {ref: c.study.uid for c in answer.candidates if c.study.uid in kept for ref in c.refs}
    for report in reports:
        report.study_uids |= {by_ref[r] for r in report.study_refs if r in by_ref}
    for order in orders:
        order.study_uids |= {c.study.uid for c in answer.candidates
                             if c.study.uid in kept and set(c.based_on) & set(order.refs)}


def _reason(answer: ArchiveAnswer, kept: identity.GuardResult) -> str | None:
    """What a clinician should know about an archive that answered: skips, withheld studies, notes."""
    parts = [f"{n} skipped: {why}" for why, n in sorted(answer.skipped.items())]
    parts += [f"{n} withheld: {why}" for why, n in sorted(kept.reasons.items())]
    if answer.ignored_endpoints:
        parts.append(f"{answer.ignored_endpoints} endpoint(s) at an unconfigured host ignored")
    parts += answer.notes
    return "; ".join(parts) or None


def _status(archive: ArchiveConfig, state: Any, **fields: Any) -> ArchiveStatus:
    return ArchiveStatus(id=archive.id, name=archive.name, status=state, source=archive.source, **fields)


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


# --- Flask wiring --------------------------------------------------------------------------------


def init_app(app: Flask) -> None:
    """Load the archives (config ARCHIVES, else the ARCHIVES_FILE TOML) and attach a Federation."""
    archives = app.config.get("ARCHIVES")
    if archives is None and app.config.get("ARCHIVES_FILE"):
        archives = load_archives(Path(app.config["ARCHIVES_FILE"]),
                                 substitutions=app.config.get("ARCHIVE_SUBSTITUTIONS") or {})
    if not archives:
        log.warning("no archives configured (IMAGING_ARCHIVES): the timeline will be empty")
    keys = app.extensions.get("app_keys")
    app.extensions["federation"] = Federation(
        tuple(archives or ()), http=requests.Session(),
        private_key=keys.by_alg.get("RS384") if keys is not None else None,
        deadline_s=float(app.config.get("FEDERATION_DEADLINE_S", 30.0)),
        cache_ttl_s=float(app.config.get("STUDY_CACHE_TTL_S", 120)),
        max_bytes=int(app.config.get("MAX_RESPONSE_BYTES", DEFAULT_MAX_BYTES)),
        shared_cache=app.extensions.get("session_store"),
    )


def outcome_from_json(data: dict[str, Any]) -> ArchiveOutcome:
    """An ArchiveOutcome read back from the shared store (see outcome_json.py)."""
    return ArchiveOutcome(*outcome_parts(data))


def federation() -> Federation:
    """The app's Federation (inside an app context)."""
    return current_app.extensions["federation"]
