"""The in-chart timeline page: the shell paints at once, studies stream in per archive."""

from __future__ import annotations

from flask import Blueprint, current_app, render_template, url_for

from . import audit, priors
from .api import initial_statuses, start_search
from .session import current_session

bp = Blueprint("timeline", __name__)


@bp.get("/timeline")
def timeline() -> str:
    session = current_session()
    audit.record("view-timeline", session)
    if current_app.config["PREFETCH_SEARCH"]:
        start_search(session)  # the archives work while the page loads; the stream picks the run up
    return render_template(
        "timeline.html", session=session, patient=session.patient, ctx=session.context,
        style=session.style or {}, archives=initial_statuses(session),
        stream_url=url_for("api.stream", patient=session.patient.id),
        access_log_url=url_for("api.record_access"), prior_rules=priors.rules_json(),
    )
