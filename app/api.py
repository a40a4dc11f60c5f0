"""The session-bound JSON API: studies (whole or streamed per archive), thumbnails, access log."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request, stream_with_context, url_for

from . import priors
from .archives.base import ArchiveClient, LinkedOrder, LinkedReport, raise_for_status
from .archives.config import ArchiveConfig, ViewerConfig, discover_archives
from .errors import AppError, ArchiveError, FhirNotFound, LaunchError
from .federation import federation, link, merge_studies
from .gateway import base_for_request
from .http import Deadline
from .launch import discovery
from .models import ArchiveStatus, Study
from .prefetch import Prefetcher
from .session import SmartSession, current_session
from .session_store import store
from .viewers import is_dicom_uid, viewer_links

log = logging.getLogger(__name__)
access_log = logging.getLogger("app.access")
bp = Blueprint("api", __name__, url_prefix="/api")

THUMBNAIL_VIEWPORT = "160,160"
THUMBNAIL_MAX_BYTES = 2 * 1024 * 1024


# --- archives for this launch --------------------------------------------------------------------


def discovered_archives(session: SmartSession) -> tuple[ArchiveConfig, ...]:
    """Archives the EHR advertises (`associated_endpoints`, SMART Imaging Access) for this launch."""
    fed = federation()
    try:
        config = discovery()(session.iss)
    except AppError:
        return ()
    ehr = next((a for a in fed.archives if a.is_ehr), None)
    return discover_archives(config.raw, session.iss, fed.archives,
                             identifier_system=ehr.identifier_system if ehr else None)


def archives_for(session: SmartSession) -> dict[str, ArchiveConfig]:
    return {a.id: a for a in (*federation().archives, *discovered_archives(session))}


def initial_statuses(session: SmartSession) -> list[ArchiveStatus]:
    """What the page shows before any archive answers: "searching" (or "not-linked", known at once)."""
    from .errors import ArchiveNotLinked
    from .identity import link

    statuses = []
    for archive in archives_for(session).values():
        try:
            link(session.patient, archive, session.iss)
            statuses.append(ArchiveStatus(archive.id, archive.name, "searching", source=archive.source))
        except ArchiveNotLinked as exc:
            if archive.pixm_url:  # the cross-reference manager may still know an identifier
                statuses.append(ArchiveStatus(archive.id, archive.name, "searching", source=archive.source))
                continue
            statuses.append(ArchiveStatus(archive.id, archive.name, "not-linked", reason=exc.message,
                                          source=archive.source))
    return statuses


# --- the study view the page renders -------------------------------------------------------------


def study_view(study: Study, session: SmartSession, archives: dict[str, ArchiveConfig],
               current_uid: str | None) -> dict[str, Any]:
    """Study JSON plus what the page needs: region, attention reasons, viewer links, thumbnail URL."""
    view = study.to_json()
    view["region"] = priors.body_region(study)
    view["region_label"] = priors.region_label(view["region"])
    view["attention"] = priors.attention(study)
    viewers = {aid: _viewer_table(a, a.viewer) for aid, a in archives.items() if a.viewer is not None}
    through = any(v.get("via") == "gateway" for v in viewers.values())
    view["viewers"] = viewer_links(study, viewers, patient_id=None,
                                   gateway=base_for_request(session) if through else None)
    view["thumbnail"] = _thumbnail_url(study, archives)
    view["current"] = study.uid == current_uid
    view["source_names"] = [archives[s].name if s in archives else s for s in study.sources]
    return view


def _viewer_table(archive: ArchiveConfig, viewer: ViewerConfig) -> dict[str, Any]:
    table: dict[str, Any] = {"kind": viewer.kind, "url": viewer.url, "via": viewer.via}
    if archive.issuer_of_patient_id:
        table["issuer_of_patient_id"] = archive.issuer_of_patient_id
    if archive.kind == "dicomweb":
        table["dicomweb_url"] = archive.base_url if archive.base_url != "ehr" else None
    return table


def _thumbnail_source(study: Study, archives: dict[str, ArchiveConfig]) -> str | None:
    """A DICOMweb archive holding the study: a direct source first, else a vetted FHIR Endpoint."""
    for source in study.sources:
        if source in archives and archives[source].kind == "dicomweb":
            return source
    for endpoint in study.endpoints:
        if endpoint.archive_id in archives and archives[endpoint.archive_id].kind == "dicomweb":
            return endpoint.archive_id
    return None


def _thumbnail_url(study: Study, archives: dict[str, ArchiveConfig]) -> str | None:
    source = _thumbnail_source(study, archives)
    return url_for("api.thumbnail", archive_id=source, uid=study.uid) if source else None


# --- which studies this session has been shown (the guard for thumbnails and the access log) ----


def _remember_shown(session: SmartSession, studies: list[Study]) -> None:
    key = f"shown:{session.id}"
    shown = store().get(key) or {"patient": session.patient.id, "studies": {}}
    for study in studies:
        archives = set(shown["studies"].get(study.uid, []))
        archives.update(study.sources)
        archives.update(e.archive_id for e in study.endpoints)
        shown["studies"][study.uid] = sorted(archives)
        # For the DICOMweb gateway (app/gateway.py), which re-verifies archives' answers: the
        # PatientID each archive matched on, and the archives the guard checked the study in.
        shown.setdefault("ids", {}).update({aid: i.value for aid, i in study.matched_ids.items()})
        sourced = shown.setdefault("sourced", {})
        sourced[study.uid] = sorted({*sourced.get(study.uid, ()), *study.sources})
    store().put(key, shown, current_app.config["SESSION_TTL_S"])


def _was_shown(session: SmartSession, uid: str, archive_id: str) -> bool:
    shown = store().get(f"shown:{session.id}")
    return bool(shown and shown["patient"] == session.patient.id and archive_id in shown["studies"].get(uid, ()))


# --- searching ---------------------------------------------------------------------------------


class _FixedToken:
    """The clinician's token as read (and refreshed if due) in the request; a search is shorter than its life."""

    def __init__(self, token: str) -> None:
        self.token = token

    def access_token(self) -> str:
        return self.token


def _run_key(session: SmartSession) -> str:
    return f"{session.id}:{session.patient.id}"


def start_search(session: SmartSession) -> None:
    """Start the federated search in the background as the timeline page is served (see prefetch.py)."""
    fed = federation()
    extra = tuple(a for a in archives_for(session).values() if a.source == "discovered")
    needs_ehr_token = any(a.auth.kind == "ehr" for a in (*fed.archives, *extra))
    token = _FixedToken(session.access_token() if needs_ehr_token else "")
    patient, ctx, sid = session.patient, session.context, session.id
    current_app.extensions["prefetch"].start(
        _run_key(session), lambda: fed.iter_outcomes(patient, ctx, token, session_id=sid, extra_archives=extra))


# --- routes --------------------------------------------------------------------------------------


def _session() -> SmartSession:
    """The live session: its EHR token valid or renewable, else SessionExpired (even with results cached)."""
    session = current_session(expected_patient=request.args.get("patient"))
    session.access_token()
    return session


@bp.get("/context")
def context() -> Response:
    """The launch context the page may know (never a token)."""
    session = _session()
    ctx = session.context
    return jsonify({
        "patient": session.patient.to_json(),
        "launch": {"kind": ctx.launch_kind, "need_patient_banner": ctx.need_patient_banner,
                   "fhirContext": list(ctx.fhir_context), "intent": ctx.intent, "tenant": ctx.tenant,
                   "encounter": ctx.encounter_id, "fhirUser": ctx.fhir_user,
                   "scope": sorted(ctx.granted_scopes)},
    })


@bp.get("/studies")
def studies() -> Response:
    """Every study of the launched patient across archives, merged, with per-archive statuses."""
    session = _session()
    archives = archives_for(session)
    result = federation().search(session.patient, session.context, session, session_id=session.id,
                                 extra_archives=tuple(a for a in archives.values() if a.source == "discovered"))
    _remember_shown(session, result.studies)
    current = priors.current_study(result.studies, session.context)
    return jsonify({
        "patient": session.patient.to_json(),
        "studies": [study_view(s, session, archives, current.uid if current else None) for s in result.studies],
        "archives": [a.to_json() for a in result.archives],
    })


def _no_delay(environ: dict[str, Any]) -> None:
    """Send each event at once (TCP_NODELAY) where the server exposes its socket (werkzeug, gunicorn)."""
    sock = environ.get("werkzeug.socket") or environ.get("gunicorn.socket")
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            log.debug("TCP_NODELAY not available on this socket")


def _event(name: str, data: Any) -> str:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


@bp.get("/studies/stream")
def stream() -> Response:
    """Server-sent events: each archive's studies as soon as that archive answers.

    SSE rather than one JSON answer: time to the first study is the fastest archive's latency,
    and a slow archive shows as "searching" instead of holding the page. Each `studies` event
    carries the merged state of every study that changed, so the browser only upserts rows.
    """
    try:
        session = _session()
    except AppError as exc:
        # An EventSource cannot read an HTTP error status: say it as the stream's one event, so
        # the page shows "relaunch from the chart" instead of retrying a dead session.
        log.info("stream refused: %s", exc.code)
        body = _event("fatal", {"message": exc.message, "status": exc.status, "title": exc.title})
        return Response(body, mimetype="text/event-stream", headers={"Cache-Control": "no-store"})
    archives = archives_for(session)
    extra = tuple(a for a in archives.values() if a.source == "discovered")
    _no_delay(request.environ)

    def generate() -> Iterator[str]:
        yield ": " + " " * 2048 + "\n\n"  # flush proxies' buffers so the first event is not held
        merged: dict[str, Study] = {}
        parts: dict[str, list[Study]] = {}  # each archive's version of a study
        reports: list[LinkedReport] = []
        orders: list[LinkedOrder] = []
        rank = {aid: n for n, aid in enumerate(archives)}
        statuses = []
        current_uid: str | None = None
        try:
            run = current_app.extensions["prefetch"].take(_run_key(session))
            source = run.feed() if run is not None else federation().iter_outcomes(
                session.patient, session.context, session, session_id=session.id, extra_archives=extra)
            for outcome in source:
                status, found = outcome.status, outcome.studies
                statuses.append(status)
                reports += outcome.reports
                orders += outcome.orders
                changed = {study.uid for study in found}
                for study in found:
                    # Merge in configuration order (the EHR's fields first), whatever the arrival order.
                    versions = parts.setdefault(study.uid, [])
                    versions.append(study)
                    versions.sort(key=lambda v: min((rank.get(src, len(rank)) for src in v.sources), default=0))
                    merged[study.uid] = merge_studies(versions)[0]
                # Link across archives: a report or order from this archive may belong to a study
                # another archive brought earlier (e.g. by accession number), and vice versa.
                changed |= link(merged.values(), reports, orders)
                current = priors.current_study(merged.values(), session.context)
                if current is not None and current.uid != current_uid:
                    changed |= {current.uid, *([current_uid] if current_uid else [])}
                    current_uid = current.uid
                if found:
                    _remember_shown(session, found)
                # One write per archive: two small writes in a row meet Nagle's algorithm and the
                # browser's delayed ACK, which held the second event back by 40-200 ms.
                chunk = _event("archive", status.to_json())
                if changed:
                    views = [study_view(merged[uid], session, archives, current_uid) for uid in changed]
                    chunk += _event("studies", {"archive": status.id, "studies": views})
                yield chunk
            yield _event("done", {"archives": [s.to_json() for s in statuses], "count": len(merged)})
        except AppError as exc:
            log.info("stream ended early: %s", exc.code)
            yield _event("fatal", {"message": exc.message, "status": exc.status, "title": exc.title})

    resp = Response(stream_with_context(generate()), mimetype="text/event-stream")
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["X-Accel-Buffering"] = "no"
    return resp


@bp.get("/thumbnail/<archive_id>/<uid>")
def thumbnail(archive_id: str, uid: str) -> Response:
    """A representative image, fetched by the app so archive credentials never reach the browser."""
    session = _session()
    if not is_dicom_uid(uid) or not _was_shown(session, uid, archive_id):
        raise FhirNotFound("No such study in this patient's timeline.")
    archive = archives_for(session).get(archive_id)
    if archive is None or archive.kind != "dicomweb":
        raise FhirNotFound("No such archive.")
    fed = federation()
    deadline = Deadline.after(min(archive.timeout_s, 15.0))
    try:
        credentials = fed.auth.for_archive(archive, iss=session.iss, ehr_token=session.access_token)
        client = ArchiveClient(archive, fed.http, credentials, max_bytes=THUMBNAIL_MAX_BYTES)
        base = archive.resolved_base(session.iss).rstrip("/")
        # DICOM PS3.18 §10.4 (rendered): study-level rendered with a viewport is what Orthanc's
        # DICOMweb plugin 1.7 offers (it has no /thumbnail); dcm4chee and cloud stores accept it too.
        # Verified against Orthanc 1.10 + plugin 1.7: the viewport comma must not be
        # percent-encoded ("%2C" is one argument: HTTP 400), and an Accept list with q-values is
        # refused (400), so ask for image/jpeg alone (the rendered default media type).
        answer = client.get(f"{base}/studies/{uid}/rendered?viewport={THUMBNAIL_VIEWPORT}", deadline=deadline,
                            accept="image/jpeg")
        raise_for_status(answer)
    except ArchiveError as exc:
        log.info("thumbnail from %s failed: %s", archive_id, exc.code)
        return Response(status=404, headers={"Cache-Control": "private, max-age=60"})
    if answer.content_type not in {"image/jpeg", "image/png", "image/gif"} or not answer.body:
        return Response(status=404, headers={"Cache-Control": "private, max-age=60"})
    resp = Response(answer.body, mimetype=answer.content_type)
    resp.headers["Cache-Control"] = "private, max-age=86400, immutable"
    return resp


@bp.post("/access-log")
def record_access() -> Response:
    """Record a viewer opening: who, which patient, which study, which archive, when."""
    session = _session()
    # JSON only: a cross-site form cannot send application/json without a CORS preflight, which
    # this app never grants, so another site cannot write entries into a clinician's audit trail.
    if not request.is_json:
        raise LaunchError("An access-log entry must be sent as application/json.")
    data = request.get_json(silent=True)
    if not isinstance(data, dict) or not isinstance(data.get("uid"), str) or not isinstance(data.get("archive"), str):
        raise LaunchError("An access-log entry needs `uid` and `archive`.")
    uid, archive_id = data["uid"][:128], data["archive"][:64]
    if not _was_shown(session, uid, archive_id):
        raise FhirNotFound("No such study in this patient's timeline.")
    entry = {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "user": session.context.fhir_user, "patient": session.patient.id, "study": uid, "archive": archive_id,
        "viewer": str(data.get("kind") or "")[:16], "iss": session.iss,
    }
    access_log.info("viewer opened: %s", json.dumps(entry))
    path = current_app.config.get("ACCESS_LOG_FILE")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
    return Response(status=204)





def init_app(app: Flask) -> None:
    app.extensions["prefetch"] = Prefetcher()
    app.register_blueprint(bp)
