"""`imaging-timeline audit`: who looked at this patient's images, read from the audit store."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

from .audit_event import AuditEvent
from .errors import ConfigError

FORMATS = ("table", "json", "fhir")


def parse_since(text: str | None) -> datetime | None:
    """An ISO-8601 date or date-time; a time without a zone is UTC."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f'--since "{text}" is not an ISO-8601 date or date-time (e.g. 2026-12-01 or '
                          "2026-12-01T08:00:00Z).") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def render(events: Sequence[AuditEvent], fmt: str) -> str:
    """The events as a table, one JSON object per line, or one FHIR AuditEvent per line."""
    if fmt == "json":
        return "".join(json.dumps(e.to_json()) + "\n" for e in events)
    if fmt == "fhir":
        return "".join(json.dumps(e.to_fhir()) + "\n" for e in events)
    if not events:
        return "no audit events for this patient\n"
    rows = [("recorded", "action", "user", "client", "archive", "outcome", "studies")]
    for e in events:
        studies = ", ".join(e.studies) + (f" (reports: {', '.join(e.reports)})" if e.reports else "")
        rows.append((e.recorded_text, e.action, e.user or "-", e.client_id or "-", e.archive or "-", e.outcome,
                     studies or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    return "".join("  ".join(c.ljust(w) for c, w in zip(r[:6], widths, strict=True)) + "  " + r[6] + "\n"
                   for r in rows)


def default_instance_path() -> str:
    """The instance folder `create_app` uses (where the default audit.sqlite3 lives)."""
    from flask import Flask

    return Flask("app", instance_relative_config=True).instance_path
