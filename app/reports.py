"""The report panel's API: one report read in full on open, guarded like studies, cached per session.

`GET /api/reports/<archive_id>/<report_id>` answers the ReportView JSON (app/report_view.py).
The guard, in order:

* the archive must be one this launch searched (configured, or discovered for this `iss`);
* the report must be one this session's timeline listed (`remember`, called as studies are
  shown): an id guessed or copied from another patient's window is refused without a request;
* the archive is asked with the same origin-bound credentials as the search (app/archives/auth.py),
  and the subject it returns is re-verified against the launched patient by identifier
  (app/identity.py); a report (or instance) of anyone else is withheld and the refusal said.

Attachments (`/attachments/<n>`) go through the app as well, so archive credentials never reach
the browser; a PDF is served `inline` with `X-Content-Type-Options: nosniff` and
`Content-Security-Policy: sandbox`, every other type as a download.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, url_for

from . import audit, identity, pixm
from .archives.base import ArchiveClient, PatientRef, Subject
from .archives.config import ArchiveConfig
from .archives.dicomweb_reports import DicomReportReader
from .archives.fhir import FhirArchive
from .archives.fhir_reports import FhirReportReader
from .errors import AppError, ArchiveError, ArchiveNotLinked, ReportNotFound, ReportUnavailable
from .federation import federation
from .http import Deadline
from .models import Study
from .report_formats import INLINE_TYPES
from .report_view import AttachmentSource, FetchedReport
from .session import SmartSession
from .session_store import store

log = logging.getLogger(__name__)
bp = Blueprint("reports", __name__, url_prefix="/api/reports")

REPORT_DEADLINE_S = 20.0
SAFE_NAME = re.compile(r"[^A-Za-z0-9 ._-]+")


# --- which reports this session has listed ---------------------------------------------------------


def _listed_key(session: SmartSession) -> str:
    return f"reports:{session.id}"


def remember(session: SmartSession, studies: Iterable[Study]) -> None:
    """Record the reports the timeline listed for this session (the only ones the panel may open)."""
    key = _listed_key(session)
    listed = store().get(key) or {"patient": session.patient.id, "reports": {}}
    before = len(listed["reports"])
    owners = listed.setdefault("studies", {})  # which study each report was listed under (the audit names it)
    for study in studies:
        for report in study.reports:
            if report.source:
                listed["reports"].setdefault(f"{report.source}/{report.id}", report.kind)
                owners.setdefault(f"{report.source}/{report.id}", study.uid)
    if len(listed["reports"]) != before or before == 0:
        store().put(key, listed, current_app.config["SESSION_TTL_S"])


def _listed_kind(session: SmartSession, archive_id: str, report_id: str) -> str | None:
    listed = store().get(_listed_key(session))
    if not listed or listed.get("patient") != session.patient.id:
        return None
    kind = listed["reports"].get(f"{archive_id}/{report_id}")
    return kind if isinstance(kind, str) else None


def _listed_study(session: SmartSession, archive_id: str, report_id: str) -> list[str]:
    """The study a listed report was shown under, for the audit trail ([] if it was never listed)."""
    listed = store().get(_listed_key(session))
    if not listed or listed.get("patient") != session.patient.id:
        return []
    uid = (listed.get("studies") or {}).get(f"{archive_id}/{report_id}")
    return [uid] if isinstance(uid, str) else []


# --- reading ---------------------------------------------------------------------------------------


def _patient_ref(session: SmartSession, archive: ArchiveConfig, deadline: Deadline) -> PatientRef:
    """Whom the archive's answer must name: the same identifier the search used (PIXm included)."""
    try:
        return identity.link(session.patient, archive, session.iss)
    except ArchiveNotLinked as exc:
        if not archive.pixm_url or not archive.identifier_system:
            raise ReportNotFound(f"{archive.name} is not linked to this patient, so its reports are not "
                                 "shown.") from exc
        found = pixm.cross_reference(federation().http, archive.pixm_url, session.patient,
                                     archive.identifier_system, deadline=deadline, timeout=archive.timeout_s)
        if found is None:
            raise ReportNotFound(f"{archive.name} is not linked to this patient.") from exc
        return identity.ref_for(archive, found, session.iss)


class _Reader:
    """One archive's reader for this request, with the guard that every subject must pass."""

    def __init__(self, session: SmartSession, archive: ArchiveConfig) -> None:
        fed = federation()
        self.archive = archive
        self.deadline = Deadline.after(min(archive.timeout_s * 2, REPORT_DEADLINE_S))
        self.ref = _patient_ref(session, archive, self.deadline)
        self.patient = session.patient
        credentials = fed.auth.for_archive(archive, iss=session.iss, ehr_token=session.access_token)
        client = ArchiveClient(archive, fed.http, credentials, max_bytes=fed.max_bytes)
        base = archive.resolved_base(session.iss)
        self.reader: DicomReportReader | FhirReportReader
        if archive.kind == "dicomweb":
            self.reader = DicomReportReader(archive.id, archive.name, base, client)
        else:
            adapter = FhirArchive(archive, client, base=base, ctx=session.context)
            self.reader = FhirReportReader(archive.id, archive.name, base, client, adapter.subject_of)

    def verify(self, subject: Subject) -> bool:
        return identity.verified(subject, self.ref, self.patient)

    def read(self, report_id: str) -> FetchedReport:
        return self.reader.read(report_id, self.deadline, self.verify)

    def attachment(self, source: AttachmentSource) -> tuple[bytes, str]:
        if isinstance(self.reader, DicomReportReader):
            return self.reader.attachment(source, self.deadline, self.verify)
        return self.reader.attachment(source, self.deadline)


def _archive(session: SmartSession, archive_id: str) -> ArchiveConfig:
    from .api import archives_for

    archive = archives_for(session).get(archive_id)
    if archive is None:
        raise ReportNotFound(f'No archive "{archive_id[:64]}" is connected to this timeline.')
    return archive


def _cache_key(session: SmartSession, archive_id: str, report_id: str) -> str:
    return f"report:{session.id}:{archive_id}:{report_id}"


def load(session: SmartSession, archive_id: str, report_id: str) -> dict[str, Any]:
    """The cached record {view, attachments} of one listed report, reading it from the archive on first open."""
    archive = _archive(session, archive_id)
    if _listed_kind(session, archive_id, report_id) is None:
        raise ReportNotFound("No such report in this patient's timeline.")
    key = _cache_key(session, archive_id, report_id)
    cached = store().get(key)
    if cached is not None and cached.get("patient") == session.patient.id:
        return cached
    try:
        fetched = _Reader(session, archive).read(report_id)
    except ArchiveError as exc:
        log.info("report from %s failed: %s", archive_id, exc.code)
        raise ReportUnavailable(f"{archive.name} could not be read: {exc.message}.") from exc

    def attachment_url(n: int) -> str:
        return url_for("reports.attachment", archive_id=archive_id, report_id=report_id, n=n)

    record = {"patient": session.patient.id, "view": fetched.view.to_json(attachment_url),
              "attachments": [a.to_record() for a in fetched.view.attachments]}
    store().put(key, record, current_app.config["SESSION_TTL_S"])
    return record


# --- routes ----------------------------------------------------------------------------------------


def _session() -> SmartSession:
    from .api import _session as api_session

    return api_session()


@bp.get("/<archive_id>/<report_id>")
def report(archive_id: str, report_id: str) -> Response:
    """One report in full (see module docstring for the guard)."""
    session = _session()
    archive_id, report_id = archive_id[:64], report_id[:128]
    studies = _listed_study(session, archive_id, report_id)
    try:
        view = load(session, archive_id, report_id)["view"]
    except AppError:
        # A refused or failed read is recorded too (who tried to read which report), then answered.
        audit.record("read-report", session, reports=[report_id], studies=studies, archive=archive_id,
                     outcome="minor-failure")
        raise
    audit.record("read-report", session, reports=[report_id], studies=studies, archive=archive_id)
    return jsonify(view)


@bp.get("/<archive_id>/<report_id>/attachments/<int:n>")
def attachment(archive_id: str, report_id: str, n: int) -> Response:
    """A report attachment through the app: PDF inline in a sandbox, anything else as a download."""
    session = _session()
    record = load(session, archive_id, report_id)
    if not 0 <= n < len(record["attachments"]):
        raise ReportNotFound(f"This report has no attachment {n}.")
    source = AttachmentSource.from_record(record["attachments"][n])
    archive = _archive(session, archive_id)
    try:
        body, content_type = _Reader(session, archive).attachment(source)
    except ArchiveError as exc:
        raise ReportUnavailable(f"{archive.name} could not send the attachment: {exc.message}.") from exc
    inline = content_type in INLINE_TYPES
    name = SAFE_NAME.sub("_", source.title).strip() or "report"
    extension = {"application/pdf": ".pdf", "text/rtf": ".rtf", "application/rtf": ".rtf"}.get(content_type, "")
    resp = Response(body, mimetype=content_type if inline else "application/octet-stream")
    disposition = "inline" if inline else "attachment"
    resp.headers["Content-Disposition"] = f'{disposition}; filename="{name[:80]}{extension}"'
    resp.headers["X-Content-Type-Options"] = "nosniff"
    # The document cannot run script or reach anything, even opened on its own in a tab.
    resp.headers["Content-Security-Policy"] = "sandbox; default-src 'none'; object-src 'none'"
    resp.headers["Cache-Control"] = "private, no-store"
    return resp


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)

    @app.errorhandler(ReportUnavailable)
    def busy(exc: ReportUnavailable) -> Any:
        from .errors import _respond

        log.warning("report unavailable: %s", exc.code)
        resp = _respond(exc.status, exc.title, exc.message, exc.code)
        if exc.retry_after_s is not None and isinstance(resp, tuple):
            body, status = resp[0], resp[1]
            return body, status, {"Retry-After": str(exc.retry_after_s)}
        return resp

