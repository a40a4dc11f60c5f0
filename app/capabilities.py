"""Gateway capabilities: unguessable, expiring, revocable tokens bound to one session's patient and guarded studies.

A capability is what a viewer is given instead of any credential: the path segment of
`/dicomweb/<capability>/…` (the capability-URL pattern the SMART Imaging Access draft describes).
It names a session, never a token of the clinician's, and it grants exactly what the wrong-patient
guard kept for that session: the study UIDs recorded in `shown:<session id>` by app/api.py, for the
patient the session was launched for.

Rules (each one a test in tests/test_gateway.py):

* 256 random bits (`secrets.token_urlsafe(32)`); the store keys a record by the token's SHA-256,
  so neither a Redis dump nor a log line holds a usable capability.
* One capability per session, reused while it has more than `REUSE_MARGIN_S` to live; expiry is
  `GATEWAY_CAPABILITY_TTL_S` (default 2 h), checked against the injected clock on every request.
* Revocation (one capability, or every capability of a session) takes effect on the next request:
  the record stays, marked revoked, until it would have expired, so a refusal can say "revoked".
* The record lives in the session store (`app.session_store.store()`), so every worker serves it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import AppError
from .session_store import SessionStore

log = logging.getLogger(__name__)
audit_log = logging.getLogger("app.audit")

DEFAULT_TTL_S = 2 * 3600
REUSE_MARGIN_S = 600  # a link handed out has at least this long to live
KEEP_AFTER_EXPIRY_S = 3600  # expired records kept this long, so refusals can say "expired"


class CapabilityRefused(AppError):
    """The capability is unknown, expired or revoked: the viewer must be opened again from the timeline."""

    status = 401
    title = "This viewer link has expired"
    code = "capability-refused"

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message, log_detail=reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Capability:
    """What one capability grants: the session, its patient, the launch `iss`, until when."""

    token: str
    session_id: str
    patient_id: str
    iss: str
    expires_at: float

    @property
    def digest(self) -> str:
        """A short, non-secret handle for logs and audit entries."""
        return digest(self.token)[:12]


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class AuditHook(Protocol):
    """Receives every gateway refusal (another helper's audit trail plugs in here)."""

    def __call__(self, event: str, fields: dict[str, Any]) -> None: ...


def log_audit(event: str, fields: dict[str, Any]) -> None:
    """The default audit hook: one JSON line on the `app.audit` logger (ids only, never a token)."""
    audit_log.warning("gateway %s: %s", event, json.dumps(fields, sort_keys=True))


class Capabilities:
    """Issues, resolves and revokes capabilities in a SessionStore."""

    def __init__(self, store: Callable[[], SessionStore], *, ttl_s: float = DEFAULT_TTL_S,
                 clock: Callable[[], float] = time.time) -> None:
        if ttl_s <= 0:
            raise ValueError(f'Argument "ttl_s" must be positive (got {ttl_s!r}).')
        self.store, self.ttl_s, self.clock = store, ttl_s, clock

    def issue(self, *, session_id: str, patient_id: str, iss: str) -> Capability:
        """The session's live capability, or a new one when it has none or it is about to expire."""
        now = self.clock()
        held = self.store().get(f"capability-of:{session_id}")
        if held and isinstance(held.get("token"), str):
            try:
                current = self.resolve(held["token"])
            except CapabilityRefused:
                current = None
            if current is not None and current.patient_id == patient_id and current.expires_at - now > min(
                    REUSE_MARGIN_S, self.ttl_s / 2):
                return current
        token = secrets.token_urlsafe(32)
        cap = Capability(token, session_id, patient_id, iss, now + self.ttl_s)
        record = {"session": session_id, "patient": patient_id, "iss": iss, "expires_at": cap.expires_at,
                  "revoked": False}
        self.store().put(f"capability:{digest(token)}", record, self.ttl_s + KEEP_AFTER_EXPIRY_S)
        self.store().put(f"capability-of:{session_id}", {"token": token}, self.ttl_s)
        log.info("gateway capability %s issued (expires in %d s)", cap.digest, int(self.ttl_s))
        return cap

    def resolve(self, token: str) -> Capability:
        """The capability `token` names; CapabilityRefused (reason unknown/expired/revoked) otherwise."""
        record = self.store().get(f"capability:{digest(token)}") if 20 <= len(token) <= 128 else None
        if record is None:
            raise CapabilityRefused(_REFUSED, reason="unknown")
        if record.get("revoked"):
            raise CapabilityRefused(_REFUSED, reason="revoked")
        if float(record["expires_at"]) <= self.clock():
            raise CapabilityRefused(_REFUSED, reason="expired")
        return Capability(token, record["session"], record["patient"], record["iss"], float(record["expires_at"]))

    def revoke(self, token: str) -> None:
        """Refuse `token` from now on (a no-op for an unknown one)."""
        key = f"capability:{digest(token)}"
        record = self.store().get(key)
        if record is None:
            return
        record["revoked"] = True
        left = float(record["expires_at"]) - self.clock() + KEEP_AFTER_EXPIRY_S
        self.store().put(key, record, max(1.0, left))
        log.info("gateway capability %s revoked", digest(token)[:12])

    def revoke_session(self, session_id: str) -> None:
        """Revoke the session's capability (logout, relaunch, session ended)."""
        held = self.store().get(f"capability-of:{session_id}")
        if held and isinstance(held.get("token"), str):
            self.revoke(held["token"])
        self.store().delete(f"capability-of:{session_id}")


_REFUSED = ("This viewer link is no longer valid (it expired or was withdrawn). Open the study again "
            "from the Imaging Timeline.")
