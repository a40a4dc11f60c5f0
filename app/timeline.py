"""The in-chart timeline page."""

from __future__ import annotations

from flask import Blueprint, render_template

from .session import current_session

bp = Blueprint("timeline", __name__)


@bp.get("/timeline")
def timeline():
    session = current_session()
    return render_template("timeline.html", session=session, patient=session.patient, ctx=session.context,
                           style=session.style or {})
