"""A tiny stand-in for an OHIF viewer, so the demo's "open in viewer" shows real rendered images.

It answers OHIF v3's URL shape, `/viewer/ohif/viewer?StudyInstanceUIDs=<uid>[,<uid>]`, and lays
the studies side by side (current and prior), each series as a rendered image from the sandbox
DICOMweb archive. It is not a diagnostic viewer and says so.
"""

from __future__ import annotations

from flask import Blueprint, render_template, request

from .runtime import runtime

bp = Blueprint("viewer", __name__, url_prefix="/viewer/ohif")


@bp.get("/viewer")
def viewer():
    rt = runtime()
    uids = [u for u in request.args.get("StudyInstanceUIDs", "").split(",") if u][:4]
    studies = [rt.pacs_by_uid[u] for u in uids if u in rt.pacs_by_uid]
    if not studies:
        return render_template("sandbox/error.html", status=404, title="No such study",
                               message="None of the requested studies is in the sandbox archive."), 404
    return render_template("sandbox/viewer.html", studies=studies)
