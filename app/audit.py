"""The audit trail: `record(...)` writes who saw which patient's images durably before the answer leaves.

Routes call `record(action, session, studies=..., reports=..., archive=..., outcome=...)`; it
commits to the store (IMAGING_AUDIT_STORE) before returning, so any answer a browser has received
has its event on disk. Optionally each event is also written as one JSON line on stdout
(IMAGING_AUDIT_STDOUT=1, for log shipping) and forwarded as a FHIR AuditEvent
(IMAGING_AUDIT_FHIR_URL) through the store's outbox by a background forwarder that retries with
backoff. The general application log never receives an event's content (no PHI): only counts.

The reports route (GET /api/reports/<archive>/<id>) calls
`record("read-report", session, reports=(id,), studies=(uid,), archive=archive)`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

import requests
from flask import Flask, current_app, has_request_context, request

from .audit_event import Action, AuditEvent, Outcome
from .audit_store import STORE_ERRORS, AuditStore, Pending, open_audit_store
from .errors import AppError, AuditUnavailable
from .http import Deadline, OutboundSession, fetch

if TYPE_CHECKING:
    from .archives.auth import SmartBackendAuth
    from .session import SmartSession

log = logging.getLogger(__name__)

PASS_ERRORS: tuple[type[Exception], ...] = (*STORE_ERRORS, AppError)
BACKOFF_S = (1.0, 5.0, 30.0, 120.0, 600.0)  # then every 10 minutes, for ever: an event is never dropped


@dataclass
class Forwarder:
    """Posts outbox events to a FHIR server's AuditEvent endpoint (FHIR R4 RESTful create, §3.1.0.7)."""

    store: AuditStore
    url: str  # the FHIR base; events go to {url}/AuditEvent
    http: requests.Session
    auth: SmartBackendAuth | None = None
    observer: str = "imaging-timeline"
    timeout_s: float = 10.0
    interval_s: float = 2.0
    backoff_s: tuple[float, ...] = BACKOFF_S
    clock: Callable[[], float] = time.time
    _wake: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _pid: int = -1
    _stop: threading.Event = field(default_factory=threading.Event)

    def deliver(self, limit: int = 50) -> int:
        """Forward what is due now; returns how many were accepted."""
        accepted = 0
        for pending in self.store.claim(self.clock(), lease_s=self.timeout_s * 3, limit=limit):
            if self._post(pending):
                self.store.forwarded(pending.event.id or "")
                accepted += 1
            else:
                delay = self.backoff_s[min(pending.attempts, len(self.backoff_s) - 1)]
                self.store.retry_at(pending.event.id or "", self.clock() + delay)
        return accepted

    def _post(self, pending: Pending) -> bool:
        target = f"{self.url.rstrip('/')}/AuditEvent"
        deadline = Deadline.after(self.timeout_s)
        headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
        try:
            if self.auth is not None:
                headers.update(self.auth.headers_for(target, deadline))
            answer = fetch(self.http, "POST", target, deadline=deadline, timeout=self.timeout_s, max_bytes=256 * 1024,
                           headers=headers, data=json.dumps(pending.event.to_fhir(self.observer)))
        except (requests.RequestException, OSError) as exc:
            log.info("audit forwarding failed (%s); will retry", type(exc).__name__)
            return False
        except AppError as exc:  # the token endpoint refused or failed: retry later, never drop the event
            log.info("audit forwarding failed (%s); will retry", getattr(exc, "code", type(exc).__name__))
            return False
        if 200 <= answer.status < 300:
            return True
        log.info("audit forwarding refused with HTTP %s; will retry", answer.status)
        return False

    def kick(self) -> None:
        """Wake (or start, once per process: threads do not survive a fork) the background loop."""
        if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
            self._pid = os.getpid()
            self._wake, self._stop = threading.Event(), threading.Event()
            self._thread = threading.Thread(target=self._run, name="audit-forwarder", daemon=True)
            self._thread.start()
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval_s)
            self._wake.clear()
            try:
                self.deliver()
            except PASS_ERRORS as exc:  # a store hiccup must not end forwarding for the process
                log.warning("audit forwarder pass failed (%s); retrying", type(exc).__name__)


@dataclass
class Auditor:
    """The app's audit service: the store, the optional stdout stream and the optional forwarder."""

    store: AuditStore
    stdout: IO[str] | None = None
    forwarder: Forwarder | None = None
    observer: str = "imaging-timeline"

    def record_events(self, events: Sequence[AuditEvent]) -> None:
        """Durably store `events` (one transaction), then mirror and forward them."""
        if not events:
            return
        try:
            self.store.append(events, forward=self.forwarder is not None)
        except STORE_ERRORS as exc:
            log.error("audit store write failed (%s): the access was refused", type(exc).__name__)
            raise AuditUnavailable("Imaging Timeline could not record this access in its audit trail, so nothing "
                                   "was shown. Try again in a moment; if it keeps happening, tell your "
                                   "administrator (the audit store is unreachable).") from exc
        if self.stdout is not None:
            for event in events:
                self.stdout.write(json.dumps({"audit": event.to_json()}) + "\n")
            self.stdout.flush()
        if self.forwarder is not None:
            self.forwarder.kick()
        log.debug("audit: %d event(s) recorded", len(events))


def auditor() -> Auditor:
    return current_app.extensions["audit"]


def client_address() -> str | None:
    """The clinician's IP: as the proxy saw it when the deployment trusts one (ProxyFix sets remote_addr)."""
    return request.remote_addr if has_request_context() else None


def _client_id(iss: str) -> str | None:
    """The SMART client id the app holds with this EHR (BALP: the client agent)."""
    from .registration import registration

    try:
        return registration().issuer(iss).client_id
    except AppError:
        return None


def event_for(action: Action, session: SmartSession, *, studies: Iterable[str] = (), reports: Iterable[str] = (),
              archive: str | None = None, outcome: Outcome = "success", patient: str | None = None) -> AuditEvent:
    """The event for `action` in this request by the clinician of `session`."""
    ctx = session.context
    return AuditEvent(action=action, patient=patient or session.patient.id, user=ctx.fhir_user,
                      client_id=_client_id(session.iss), address=client_address(), iss=session.iss,
                      studies=tuple(dict.fromkeys(studies)), reports=tuple(dict.fromkeys(reports)),
                      archive=archive, outcome=outcome)


def record(action: Action, session: SmartSession, *, studies: Iterable[str] = (), reports: Iterable[str] = (),
           archive: str | None = None, outcome: Outcome = "success", patient: str | None = None) -> AuditEvent:
    """Record one access durably; returns the event. Call it before the response is built."""
    event = event_for(action, session, studies=studies, reports=reports, archive=archive, outcome=outcome,
                      patient=patient)
    auditor().record_events([event])
    return event


def archive_outcome(state: str) -> Outcome:
    """An archive's search state as an audit outcome: a failed archive is a minor failure of the list."""
    return "success" if state == "ok" else "minor-failure"


def record_listing(session: SmartSession, answered: Iterable[tuple[str, str, Iterable[str]]]) -> None:
    """One list-studies event per archive that was asked: (archive id, state, study UIDs it returned).

    Archives not linked for this patient were not asked, so they are not audited.
    """
    events = [event_for("list-studies", session, archive=archive, studies=uids, outcome=archive_outcome(state))
              for archive, state, uids in answered if state != "not-linked"]
    auditor().record_events(events)


def _forwarder(app: Flask, store: AuditStore) -> Forwarder | None:
    url = app.config.get("AUDIT_FHIR_URL")
    if not url:
        return None
    http = OutboundSession()
    auth = None
    client_id = app.config.get("AUDIT_FHIR_CLIENT_ID")
    if client_id:
        from .archives.auth import SmartBackendAuth

        keys = app.extensions["app_keys"].by_alg
        key = keys.get("RS384") or keys["ES384"]  # whichever the app's key file holds
        auth = SmartBackendAuth("audit", url, client_id=client_id, key=key, http=http,
                                scope="system/AuditEvent.c", token_url=app.config.get("AUDIT_FHIR_TOKEN_URL"))
    return Forwarder(store, url, http, auth=auth, backoff_s=tuple(app.config.get("AUDIT_FHIR_BACKOFF_S") or BACKOFF_S))


def init_app(app: Flask) -> None:
    configured: Any = app.config.get("AUDIT_STORE")
    store = configured if configured is not None and not isinstance(configured, str) else (
        open_audit_store(configured, app.instance_path))
    stdout = sys.stdout if str(app.config.get("AUDIT_STDOUT") or "").lower() in {"1", "true", "yes"} else None
    app.extensions["audit"] = Auditor(store, stdout=stdout, forwarder=_forwarder(app, store))
