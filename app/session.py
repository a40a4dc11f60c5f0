"""The launched session: who, which patient, which grants; its tokens stay server-side."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass, field, fields
from datetime import date
from typing import Any

from flask import current_app, request

from .errors import AppError, PatientMismatch, SessionExpired, StoreUnavailable
from .locks import held, lock_name
from .models import Identifier, LaunchContext, PatientSummary
from .session_store import store

log = logging.getLogger(__name__)

COOKIE = "itl_session"
REFRESH_MARGIN_S = 60
REFRESH_LOCK_TTL_S = 20.0  # longer than one token request (HTTP_TIMEOUT_S, 10 s)
# Striped locks: one refresh per session at a time, with a bounded number of lock objects
# (a lock per session id would grow without end in a long-running process).
_REFRESH_LOCKS = tuple(threading.Lock() for _ in range(64))


def context_to_json(ctx: LaunchContext) -> dict[str, Any]:
    data = {f.name: getattr(ctx, f.name) for f in fields(ctx)}
    data["granted_scopes"] = sorted(ctx.granted_scopes)
    data["fhir_context"] = list(ctx.fhir_context)
    return data


def context_from_json(data: dict[str, Any]) -> LaunchContext:
    data = dict(data)
    data["granted_scopes"] = frozenset(data["granted_scopes"])
    data["fhir_context"] = tuple(data["fhir_context"])
    return LaunchContext(**data)


def patient_from_json(data: dict[str, Any]) -> PatientSummary:
    return PatientSummary(
        id=data["id"], name=data["name"],
        birth_date=date.fromisoformat(data["birthDate"]) if data.get("birthDate") else None,
        sex=data.get("gender"),
        identifiers=tuple(Identifier(i["system"], i["value"]) for i in data.get("identifiers", [])),
    )


@dataclass
class SmartSession:
    """One launch: the context, the patient, and (server-side only) the token response."""

    id: str
    context: LaunchContext
    patient: PatientSummary
    token: dict[str, Any]
    style: dict[str, str] | None = None
    created: float = field(default_factory=time.time)  # sign-in: the absolute limit counts from here
    seen: float = field(default_factory=time.time)  # last use: the idle limit counts from here
    earlier: tuple[str, ...] = ()  # this browser's previous sessions (other tabs may still show them)

    def to_record(self) -> dict[str, Any]:
        return {"context": context_to_json(self.context), "patient": self.patient.to_json(),
                "token": self.token, "style": self.style, "created": self.created, "seen": self.seen,
                "earlier": list(self.earlier)}

    @classmethod
    def from_record(cls, sid: str, rec: dict[str, Any]) -> SmartSession:
        now = time.time()
        return cls(id=sid, context=context_from_json(rec["context"]), patient=patient_from_json(rec["patient"]),
                   token=rec["token"], style=rec.get("style"), created=rec.get("created", now),
                   seen=rec.get("seen", now), earlier=tuple(rec.get("earlier") or ()))

    def save(self) -> None:
        # Kept a minute past the absolute limit, so that current_session can say why it ended.
        left = current_app.config["SESSION_TTL_S"] - (time.time() - self.created)
        store().put(f"session:{self.id}", self.to_record(), max(left, 0.0) + 60)

    @property
    def iss(self) -> str:
        return self.context.iss

    def access_token(self) -> str:
        """A valid access token for the launch `iss`, refreshed shortly before it expires.

        A refresh that fails while the token is still valid keeps the token (the EHR may be briefly
        unreachable); once it has expired, the session ends.
        """
        if self.token.get("expires_at", float("inf")) - refresh_margin(self.token) > time.time():
            return self.token["access_token"]
        with _lock_for(self.id):
            if self._reload_fresh():  # another thread may have refreshed already
                return self.token["access_token"]
            # Across processes too: the EHR rotates refresh tokens (RFC 6749 §6), so two workers
            # spending the same one would leave one of them, and then the session, refused.
            with held(store(), lock_name("refresh", self.id), ttl_s=REFRESH_LOCK_TTL_S,
                      wait_s=REFRESH_LOCK_TTL_S) as got:
                if self._reload_fresh():
                    return self.token["access_token"]
                if not got:
                    raise StoreUnavailable("The session service is busy renewing your access; retry in a moment.",
                                           log_detail="refresh lock not acquired in time")
                try:
                    self._refresh()
                except SessionExpired:
                    if self.token.get("expires_at", 0) > time.time():
                        log.info("token refresh failed; the current token is still valid and stays in use")
                        return self.token["access_token"]
                    end_session(self.id)
                    raise
            return self.token["access_token"]

    def _reload_fresh(self) -> bool:
        """Take the stored token if another thread or process has refreshed it meanwhile."""
        fresh = store().get(f"session:{self.id}")
        if fresh and fresh["token"].get("expires_at", 0) - refresh_margin(fresh["token"]) > time.time():
            self.token = fresh["token"]
            return True
        return False

    def token_rejected(self, rejected: str) -> None:
        """The launch `iss` answered 401 to `rejected`: refresh once, else end the session (finding 6)."""
        with _lock_for(self.id), held(store(), lock_name("refresh", self.id), ttl_s=REFRESH_LOCK_TTL_S,
                                      wait_s=REFRESH_LOCK_TTL_S) as got:
            fresh = store().get(f"session:{self.id}")
            if fresh is None:
                raise SessionExpired("Your Imaging Timeline session has ended. Relaunch the app from the patient's "
                                     "chart in the EHR.")
            if fresh["token"]["access_token"] != rejected:  # another request (or process) has refreshed already
                self.token = fresh["token"]
                return
            if not got:
                raise StoreUnavailable("The session service is busy renewing your access; retry in a moment.",
                                       log_detail="refresh lock not acquired in time")
            try:
                self._refresh()
            except SessionExpired:
                end_session(self.id)
                raise SessionExpired("The EHR no longer accepts this session (HTTP 401) and it could not be "
                                     "renewed. Relaunch Imaging Timeline from the patient's chart.") from None
            log.info("the EHR answered 401; the token was refreshed once")

    def _refresh(self) -> None:
        from .launch import smart_client_for  # launch owns the client wiring

        refresh_token = self.token.get("refresh_token")
        if not refresh_token:
            raise SessionExpired("Your session with the EHR has expired. Relaunch Imaging Timeline from the "
                                 "patient's chart.")
        try:
            answer = smart_client_for(self.iss).refresh(refresh_token)
        except AppError as exc:
            log.info("token refresh failed for a session on %s: %s", self.iss, exc.code)
            raise SessionExpired("Your session with the EHR has expired and could not be renewed. Relaunch "
                                 "Imaging Timeline from the patient's chart.") from exc
        self.token = token_record(answer, previous=self.token)
        self.save()


def _lock_for(sid: str) -> threading.Lock:
    return _REFRESH_LOCKS[hash(sid) % len(_REFRESH_LOCKS)]


def token_record(answer: dict[str, Any], previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """The token fields kept server-side; `expires_at` is absolute."""
    expires_in = answer.get("expires_in")
    try:
        lifetime = float(expires_in) if expires_in is not None else 3600.0
    except (TypeError, ValueError):
        lifetime = 300.0
    return {
        "lifetime": lifetime,
        "access_token": answer["access_token"],
        # RFC 6749 §6: a refresh may or may not rotate the refresh token.
        "refresh_token": answer.get("refresh_token") or (previous or {}).get("refresh_token"),
        "expires_at": time.time() + lifetime,
        "scope": answer.get("scope") or (previous or {}).get("scope"),
    }


def refresh_margin(token: dict[str, Any]) -> float:
    """Refresh this long before expiry: min(60 s, half the token's lifetime), so a short token still lives."""
    try:
        lifetime = float(token.get("lifetime", 3600.0))
    except (TypeError, ValueError):
        lifetime = 3600.0
    return min(float(REFRESH_MARGIN_S), lifetime / 2)


def new_session_id() -> str:
    return secrets.token_urlsafe(32)


def current_session(expected_patient: str | None = None) -> SmartSession:
    """The session named by this browser's cookie, or SessionExpired.

    `expected_patient` guards against a stale window: if the page was rendered for patient A and
    the cookie now belongs to a later launch for patient B, nothing of B is shown in A's window.
    """
    sid = request.cookies.get(COOKIE)
    rec = store().get(f"session:{sid}") if sid else None
    if not sid or rec is None:
        raise SessionExpired("Your Imaging Timeline session has ended or was never started. Relaunch the app "
                             "from the patient's chart in the EHR.")
    session = SmartSession.from_record(sid, rec)
    _within_limits(session)
    if expected_patient is not None and expected_patient != session.patient.id:
        raise PatientMismatch("This window was opened for a different patient than the app's latest launch. "
                              "Close it and relaunch Imaging Timeline from the chart you are working in.")
    return session


def _within_limits(session: SmartSession) -> None:
    """SessionExpired (and the record deleted) past the idle or absolute limit; else note the use."""
    now = time.time()
    idle_s, max_s = float(current_app.config["SESSION_IDLE_S"]), float(current_app.config["SESSION_TTL_S"])
    if now - session.created > max_s:
        end_session(session.id)
        raise SessionExpired(f"Your Imaging Timeline session ended {_span(max_s)} after sign-in. Relaunch the app "
                             "from the patient's chart in the EHR.")
    if now - session.seen > idle_s:
        end_session(session.id)
        raise SessionExpired(f"Your Imaging Timeline session ended after {_span(idle_s)} without use. Relaunch the "
                             "app from the patient's chart in the EHR.")
    if now - session.seen > min(60.0, idle_s / 4):  # not a write per request
        session.seen = now
        session.save()


def session_for_patient(patient_id: str | None) -> SmartSession:
    """This browser's live session for `patient_id`: the cookie's, or one it replaced in this browser.

    A second launch in the same browser replaces the cookie, but the first tab still shows its
    patient; what that tab reports (a viewer opening, for the audit trail) belongs to the session
    it was opened with. Only sessions this browser held before (remembered at sign-in) qualify.
    """
    session = current_session()
    if patient_id is None or patient_id == session.patient.id:
        return session
    for sid in session.earlier:
        rec = store().get(f"session:{sid}")
        if rec is not None and rec.get("patient", {}).get("id") == patient_id:
            earlier = SmartSession.from_record(sid, rec)
            _within_limits(earlier)
            return earlier
    raise PatientMismatch("This window was opened for a different patient than the app's latest launch. "
                          "Close it and relaunch Imaging Timeline from the chart you are working in.")


def earlier_sessions() -> tuple[str, ...]:
    """At sign-in: the session this browser holds now (and those it replaced), newest first."""
    sid = request.cookies.get(COOKIE)
    rec = store().get(f"session:{sid}") if sid else None
    if not sid or rec is None:
        return ()
    return (sid, *(rec.get("earlier") or ()))[:4]


def end_session(sid: str) -> None:
    """Delete a session's record (its tokens) and what it was shown."""
    store().delete(f"session:{sid}")
    store().delete(f"shown:{sid}")


def _span(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)} hour{'s' if seconds != 3600 else ''}"
    if seconds >= 60:
        return f"{round(seconds / 60)} minute{'s' if round(seconds / 60) != 1 else ''}"
    return f"{seconds:g} seconds"
