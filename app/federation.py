"""Federated search: every archive at once, each answer guarded, normalised, merged by StudyInstanceUID and linked.

A slow, failing or malformed archive never delays or breaks the others: each runs in its own
thread with its own deadline inside an overall one, and its failure becomes its ArchiveStatus.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from flask import Flask, current_app

from . import identity, pixm, words
from .accumulator import Accumulator, copy_study, link, merge_studies, newest_first, union
from .archives.auth import AuthFactory, EhrTokenProvider, SigningKey
from .archives.base import Archive, ArchiveAnswer, ArchiveClient, LinkedOrder, LinkedReport
from .archives.config import ArchiveConfig, load_archives
from .archives.dicomweb import DicomWebArchive
from .archives.fhir import FhirArchive
from .errors import ArchiveError, ArchiveNotLinked, ArchiveTimeout
from .http import Deadline, OutboundSession
from .locks import hashed_key
from .models import ArchiveStatus, LaunchContext, PatientSummary, Study
from .outcome_json import outcome_of, outcome_to_json
from .session_store import SessionStore

log = logging.getLogger(__name__)
__all__ = ["ArchiveOutcome", "Federation", "FederationResult", "federation", "init_app", "link", "make_archive",
           "merge_studies", "newest_first"]

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
    withheld: list[dict[str, str]] = field(default_factory=list)  # stub rows (app/words.py)


# --- merging and linking: app/accumulator.py (one accumulator for /api/studies and the stream) ----


# --- the federation ------------------------------------------------------------------------------


class Federation:
    """Searches every configured archive for one patient; shared by all sessions (attach with init_app)."""

    def __init__(self, archives: Sequence[ArchiveConfig], *, http: requests.Session | None = None,
                 private_key: SigningKey | str | bytes | None = None, deadline_s: float = 30.0,
                 cache_ttl_s: float = 120.0, max_bytes: int = DEFAULT_MAX_BYTES, env: dict[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic, max_workers: int = 8,
                 adapter_factory: AdapterFactory = make_archive, shared_cache: SessionStore | None = None) -> None:
        self.archives = tuple(archives)
        self.http = http or OutboundSession()
        self.auth = AuthFactory(self.http, private_key=private_key, env=env)
        self.deadline_s, self.cache_ttl_s, self.max_bytes = deadline_s, cache_ttl_s, max_bytes
        self.clock, self.max_workers, self.adapter_factory = clock, max_workers, adapter_factory
        self._cache: dict[tuple[str, str, str], tuple[float, ArchiveOutcome]] = {}
        self._cache_lock = threading.Lock()
        # The session store, when given, holds the per-session study cache instead of this process
        # (so a reload served by another worker or machine spares the archives too).
        self.shared_cache = shared_cache
        # Told of each archive answer as it comes from the archive itself (never a cached or
        # replayed one): the telemetry counts archives asked, not answers read (metrics.init_app).
        self.observe: Callable[[ArchiveStatus], None] | None = None

    def search(self, patient: PatientSummary, ctx: LaunchContext, ehr_token_provider: EhrTokenProvider, *,
               session_id: str | None = None, extra_archives: Sequence[ArchiveConfig] = ()) -> FederationResult:
        """Wait for every archive (or its deadline), then merge and link across archives."""
        acc = self.accumulate(patient, ctx, ehr_token_provider, session_id=session_id,
                              extra_archives=extra_archives)
        return FederationResult(patient, acc.studies(), tuple(acc.ordered_statuses()))

    def accumulate(self, patient: PatientSummary, ctx: LaunchContext, ehr_token_provider: EhrTokenProvider, *,
                   session_id: str | None = None, extra_archives: Sequence[ArchiveConfig] = (),
                   outcomes: Iterable[ArchiveOutcome] | None = None) -> Accumulator:
        """Every archive's outcome (or the given ones) folded into one Accumulator."""
        source = outcomes if outcomes is not None else self._outcomes(patient, ctx, ehr_token_provider,
                                                                      session_id, extra_archives)
        return self.fold_outcomes(source, extra_archives)

    def fold_outcomes(self, outcomes: Iterable[ArchiveOutcome],
                      extra_archives: Sequence[ArchiveConfig] = ()) -> Accumulator:
        """Outcomes (searched here, joined from a running search or read from another process's)
        folded into one Accumulator in configuration order."""
        acc = Accumulator([a.id for a in (*self.archives, *extra_archives)])
        for outcome in outcomes:
            acc.add(outcome)
        return acc

    def merge(self, patient: PatientSummary, found: Iterable[ArchiveOutcome],
              extra_archives: Sequence[ArchiveConfig] = ()) -> FederationResult:
        """Outcomes read elsewhere (a joined or replayed search) merged and linked like search()'s."""
        acc = self.fold_outcomes(found, extra_archives)
        return FederationResult(patient, acc.studies(), tuple(acc.ordered_statuses()))

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
                      session_id: str | None = None, extra_archives: Sequence[ArchiveConfig] = (),
                      retry: str | None = None) -> Iterator[ArchiveOutcome]:
        """Each archive's whole answer (status, guarded studies, reports, orders) as it completes.

        For a caller that merges and links across archives itself (the event stream), so that a
        report from one archive reaches a study that another archive brought earlier. `retry`:
        search only that archive again (bypassing the cache); the others answer from the cache
        when they can and are not searched again.
        """
        with closing(self._outcomes(patient, ctx, ehr_token_provider, session_id, extra_archives,
                                    retry=retry)) as outcomes:
            yield from outcomes

    # --- internals ------------------------------------------------------------------------------

    def _outcomes(self, patient: PatientSummary, ctx: LaunchContext, provider: EhrTokenProvider,
                  session_id: str | None, extra: Sequence[ArchiveConfig], *, retry: str | None = None
                  ) -> Generator[ArchiveOutcome, None, None]:
        every = [*self.archives, *extra]
        todo = []
        for archive in every:
            if archive.id == retry:
                todo.append(archive)
                continue
            cached = self._cached(session_id, patient.id, archive.id)
            if cached is not None:
                yield cached
            elif retry is None:
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
                    self._observed(outcome.status)
                    yield outcome
                now = time.monotonic()
                for future in [f for f in pending if now >= futures[f][1].at + GRACE_S]:
                    pending.discard(future)
                    future.cancel()
                    archive = futures[future][0]
                    log.warning("archive %s: no answer before its deadline", archive.id)
                    timed_out = _status(archive, "timeout", ms=_ms(started), error=ArchiveTimeout.code,
                                        reason=f"no answer within {min(archive.timeout_s, self.deadline_s):g} s")
                    self._observed(timed_out)
                    yield ArchiveOutcome(timed_out)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _observed(self, status: ArchiveStatus) -> None:
        if self.observe is None:
            return
        try:
            self.observe(status)
        except Exception:  # telemetry must never cost the clinician an archive's answer
            log.exception("archive %s: recording its answer time failed", status.id)

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
            if answer.cut != "deadline":
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
        if answer.cut:
            reason = "; ".join(filter(None, [words.cut_reason(answer.cut, len(kept.studies) + kept.dropped,
                                                              max_results=archive.max_results,
                                                              timeout_s=archive.timeout_s), reason]))
        if via_pixm:
            for study in kept.studies:
                union(study.badges, [identity.VIA_PIXM])
            reason = "; ".join(filter(None, ["linked through the PIXm cross-reference manager", reason]))
        state = "timeout" if answer.cut == "deadline" else "ok"
        status = _status(archive, state, count=len(kept.studies), ms=_ms(started), dropped=kept.dropped + foreign,
                         skipped=sum(answer.skipped.values()), reason=reason, partial=answer.cut is not None,
                         error=ArchiveTimeout.code if state == "timeout" else None, via_pixm=via_pixm)
        return ArchiveOutcome(status, kept.studies, reports, orders,
                              withheld=words.withheld_stubs(archive.id, kept.withheld))

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
            return _copy_outcome(hit[1])

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
                                                                        _copy_outcome(outcome))


def _copy_outcome(outcome: ArchiveOutcome) -> ArchiveOutcome:
    """A copy the cache and a reader can each change: studies copied, immutable parts shared.

    Reports' and orders' link sets are settled when the archive's answer is collected, and only
    read afterwards, so the lists are copied and the linked items shared.
    """
    return ArchiveOutcome(outcome.status, [copy_study(s) for s in outcome.studies], list(outcome.reports),
                          list(outcome.orders), list(outcome.withheld))


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


def _status(archive: ArchiveConfig, state: Any, *, via_pixm: bool = False, **fields: Any) -> ArchiveStatus:
    """An archive's status with its plain words (message), technical detail and "try again" (app/words.py)."""
    said = words.describe(state, error=fields.get("error"), reason=fields.get("reason"),
                          count=fields.get("count", 0), partial=fields.get("partial", False), via_pixm=via_pixm,
                          dropped=fields.get("dropped", 0), skipped=fields.get("skipped", 0))
    return ArchiveStatus(id=archive.id, name=archive.name, status=state, source=archive.source,
                         message=said.message, detail=said.detail, retry=said.retry, **fields)


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
        tuple(archives or ()), http=OutboundSession(),
        private_key=keys.by_alg.get("RS384") if keys is not None else None,
        deadline_s=float(app.config.get("FEDERATION_DEADLINE_S", 30.0)),
        cache_ttl_s=float(app.config.get("STUDY_CACHE_TTL_S", 120)),
        max_bytes=int(app.config.get("MAX_RESPONSE_BYTES", DEFAULT_MAX_BYTES)),
        shared_cache=app.extensions.get("session_store"),
    )


def outcome_from_json(data: dict[str, Any]) -> ArchiveOutcome:
    """An ArchiveOutcome read back from the shared store (see outcome_json.py)."""
    return outcome_of(ArchiveOutcome, data)


def federation() -> Federation:
    """The app's Federation (inside an app context)."""
    return current_app.extensions["federation"]
