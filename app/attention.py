"""Acknowledged "needs attention" items (per user and item, in the session store); the encounter class."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import requests
from flask import current_app

from .fhir import is_fhir_id
from .session_store import store
from .smart import get_json

log = logging.getLogger(__name__)

ENCOUNTER_CLASS_TTL_S = 3600.0


def _key(user: str, patient_id: str) -> str:
    return f"ack:{user}:{patient_id}"


def acknowledgements(user: str, patient_id: str) -> dict[str, dict[str, str]]:
    """This user's acknowledgements for the patient: {"<uid>|<code>": {"by": ..., "at": ...}}."""
    record = store().get(_key(user, patient_id))
    items = record.get("items") if record else None
    return items if isinstance(items, dict) else {}


def acknowledge(user: str, by: str, patient_id: str, uid: str, code: str, *, ttl_s: float,
                now: datetime | None = None) -> dict[str, str]:
    """Record that `user` acknowledged attention item `code` of study `uid`; the stored entry.

    The store has no atomic update, so two acknowledgements in the same instant by the same user
    may keep only one; the user sees the survivor on the next refresh and can acknowledge again.
    """
    items = acknowledgements(user, patient_id)
    entry = {"by": by, "at": (now or datetime.now(UTC)).isoformat(timespec="seconds")}
    items[f"{uid}|{code}"] = entry
    store().put(_key(user, patient_id), {"items": items}, ttl_s)
    return entry


def encounter_class(session: Any) -> str | None:
    """The launch encounter's class code (v3 ActCode: EMER, IMP, AMB...), read once per session; None if unknown.

    SMART App Launch `encounter` context names the Encounter; FHIR R4 Encounter.class is a Coding.
    A failure to read it only means the default view (it never blocks the timeline).
    """
    ctx = session.context
    if not is_fhir_id(ctx.encounter_id) or not ctx.can_read("Encounter"):
        return None
    key = f"encounter-class:{session.id}"
    cached = store().get(key)
    if cached is not None:
        return cached.get("code")
    code: str | None = None
    try:
        status, body = get_json(current_app.extensions["federation"].http,
                                f"{session.iss.rstrip('/')}/Encounter/{ctx.encounter_id}",
                                timeout=5.0, accept="application/fhir+json",
                                headers={"Authorization": f"Bearer {session.access_token()}"})
    except (requests.RequestException, ValueError) as exc:
        log.info("encounter class unavailable (%s)", type(exc).__name__)
        return None
    if status == 200 and isinstance(body, dict) and isinstance(body.get("class"), dict):
        value = body["class"].get("code")
        code = value if isinstance(value, str) else None
    store().put(key, {"code": code}, ENCOUNTER_CLASS_TTL_S)
    return code
