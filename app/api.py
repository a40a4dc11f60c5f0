"""The session-bound JSON API: studies (whole or streamed per archive), thumbnails, access log."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from flask import Blueprint, Flask, Response, current_app, jsonify, request, stream_with_context, url_for

from . import audit, imaging_endpoints, words
from . import reports as report_api
from .accumulator import Accumulator
from .archives.base import ArchiveClient, raise_for_status
from .archives.config import ArchiveConfig, discover_archives
from .attention import acknowledge, acknowledgements, encounter_class
from .errors import AppError, ArchiveError, FhirNotFound, LaunchError
from .federation import ArchiveOutcome, federation
from .gateway import base_for_request
from .http import Deadline
from .launch import discovery
from .models import ArchiveStatus, Study
from .prefetch import Prefetcher
from .revocation import check_answers, check_error
from .session import SmartSession, current_session, session_for_patient
from .session_store import store
from .view_model import ATTENTION_CODES, Decision, ViewBuilder
from .viewers import is_dicom_uid

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
            said = words.describe("not-linked", error=None, reason=exc.message)
            statuses.append(ArchiveStatus(archive.id, archive.name, "not-linked", reason=exc.message,
                                          source=archive.source, message=said.message, detail=said.detail))
    return statuses


# --- the study view the page renders (app/view_model.py) -----------------------------------------


def view_builder(session: SmartSession, archives: dict[str, ArchiveConfig]) -> ViewBuilder:
    """One per request: viewer tables, acknowledgements and anatomy computed once, not per study."""
    window = timedelta(days=float(current_app.config.get("CRITICAL_WINDOW_DAYS", 7)))
    today = _today(current_app.config.get("TIMEZONE"))
    return ViewBuilder(session.context, archives, _thumbnail_urls(archives), today=today,
                       patient_name=session.patient.name, acks=acknowledgements(_user(session), session.patient.id),
                       critical_window=window, encounter_class=encounter_class(session),
                       gateway_base=lambda: base_for_request(session))


def _today(zone: str | None) -> date:
    """The clinicians' calendar day: in TIMEZONE (IANA) when set and known, else the server's."""
    if zone:
        try:
            return datetime.now(ZoneInfo(zone)).date()
        except (ZoneInfoNotFoundError, ValueError):
            log.warning("TIMEZONE %r is not an IANA time zone; using the server's local date", zone)
    return datetime.now().astimezone().date()


def _thumbnail_source(study: Study, archives: dict[str, ArchiveConfig]) -> str | None:
    """A DICOMweb archive holding the study: a direct source first, else a vetted FHIR Endpoint."""
    for source in study.sources:
        if source in archives and archives[source].kind == "dicomweb":
            return source
    for endpoint in study.endpoints:
        if endpoint.archive_id in archives and archives[endpoint.archive_id].kind == "dicomweb":
            return endpoint.archive_id
    for endpoint in study.endpoints:
        if endpoint.token is not None:  # SMART Imaging Access endpoint (app/imaging_endpoints.py)
            return endpoint.archive_id
    return None


def _thumbnail_url(study: Study, archives: dict[str, ArchiveConfig]) -> str | None:
    source = _thumbnail_source(study, archives)
    return url_for("api.thumbnail", archive_id=source, uid=study.uid) if source else None


def _thumbnail_urls(archives: dict[str, ArchiveConfig]) -> Callable[[Study], str | None]:
    """`_thumbnail_url` with the route built once per archive (url_for per study cost 28 µs)."""
    templates: dict[str, str] = {}

    def url(study: Study) -> str | None:
        source = _thumbnail_source(study, archives)
        if source is None:
            return None
        if source not in templates:
            templates[source] = url_for("api.thumbnail", archive_id=source, uid="0")[:-1]
        # Only DICOM UIDs (digits and dots) are shown with a thumbnail route: nothing to escape.
        return templates[source] + study.uid if is_dicom_uid(study.uid) else _thumbnail_url(study, archives)

    return url


# --- which studies this session has been shown (the guard for thumbnails and the access log) ----


def _remember_shown(session: SmartSession, studies: list[Study]) -> None:
    key = f"shown:{session.id}"
    shown = store().get(key) or {"patient": session.patient.id, "studies": {}}
    changed = False
    for study in studies:
        have = shown["studies"].get(study.uid, [])
        archives = sorted({*have, *study.sources, *(e.archive_id for e in study.endpoints)})
        if archives != have:
            shown["studies"][study.uid] = archives
            changed = True
        # For the DICOMweb gateway (app/gateway.py), which re-verifies archives' answers: the
        # PatientID each archive matched on, and the archives the guard checked the study in.
        ids = shown.setdefault("ids", {})
        for aid, ident in study.matched_ids.items():
            if ids.get(aid) != ident.value:
                ids[aid] = ident.value
                changed = True
        sourced = shown.setdefault("sourced", {})
        checked = sorted({*sourced.get(study.uid, ()), *study.sources})
        if checked != sourced.get(study.uid):
            sourced[study.uid] = checked
            changed = True
    if changed:  # a reload shows the same studies: no rewrite of a record that can hold thousands
        store().put(key, shown, current_app.config["SESSION_TTL_S"])
    report_api.remember(session, studies)
    imaging_endpoints.remember(session.id, studies)


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


def _search_for(session: SmartSession, extra: tuple[ArchiveConfig, ...]) -> Callable[[], Iterator[ArchiveOutcome]]:
    """The federated search for this session, runnable in a background thread (no request context)."""
    fed = federation()
    needs_ehr_token = any(a.auth.kind == "ehr" for a in (*fed.archives, *extra))
    token = _FixedToken(session.access_token() if needs_ehr_token else "")
    patient, ctx, sid = session.patient, session.context, session.id
    return lambda: fed.iter_outcomes(patient, ctx, token, session_id=sid, extra_archives=extra)


def _discovered(session: SmartSession) -> tuple[ArchiveConfig, ...]:
    return tuple(a for a in archives_for(session).values() if a.source == "discovered")


def start_search(session: SmartSession) -> None:
    """Start the federated search as the timeline page is served, unless it already runs (see prefetch.py)."""
    _prefetcher().begin(_run_key(session), _search_for(session, _discovered(session)))


def search_outcomes(session: SmartSession, extra: tuple[ArchiveConfig, ...]) -> Iterator[ArchiveOutcome]:
    """Each archive's outcome, from the one search for this session and patient (joined, never doubled)."""
    return _prefetcher().feed(_run_key(session), _search_for(session, extra))


def _prefetcher() -> Prefetcher:
    return current_app.extensions["prefetch"]


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
    extra = tuple(a for a in archives.values() if a.source == "discovered")
    acc = federation().fold_outcomes(search_outcomes(session, extra), extra)
    check_answers(session, acc.statuses, archives)  # a 401 from the iss: refresh once, else the session ends
    found = acc.studies()
    _remember_shown(session, found)
    audit.record_listing(session, ((a.id, a.status, [s.uid for s in found if a.id in s.sources])
                                   for a in acc.ordered_statuses()))
    builder = view_builder(session, archives)
    decision = builder.decide(found)
    body = {
        "patient": session.patient.to_json(),
        "studies": [builder.view(s, decision) for s in found],
        "archives": [a.to_json() for a in acc.ordered_statuses()],
        "pinned": builder.pinned(decision),
        "pending_orders": builder.pending_orders(found, acc.orders),
        "view": builder.view_settings(),
        "withheld": acc.withheld,
    }
    # Compact and unsorted (jsonify sorts keys: a third of the encoding time at 5,000 studies).
    return Response(json.dumps(body, separators=(",", ":")), mimetype="application/json")


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

    retry = request.args.get("retry") or None
    if retry is not None and retry not in archives:
        retry = None  # an unknown archive id: a normal search (nothing is re-searched by guesswork)

    def generate() -> Iterator[str]:
        # Flush proxies' buffers so the first event is not held; `retry`: if the connection drops,
        # the browser reconnects after 1 s (HTML Living Standard, server-sent events, "retry" field).
        yield "retry: 1000\n: " + " " * 2048 + "\n\n"
        acc = Accumulator(list(archives))
        builder = view_builder(session, archives)
        decision = Decision()
        pending: list[dict[str, Any]] = []
        try:
            # "Try again" for one archive searches it afresh; otherwise join the one search of this session.
            source = search_outcomes(session, extra) if retry is None else federation().iter_outcomes(
                session.patient, session.context, session, session_id=session.id, extra_archives=extra,
                retry=retry)
            for outcome in source:
                status, found = outcome.status, outcome.studies
                check_answers(session, [status], archives)  # a 401 from the iss: refresh once, else end
                changed = acc.add(outcome)
                builder.forget(changed)
                studies_now = list(acc.merged.values())
                before, decision = decision, builder.decide(studies_now)
                if before != decision:
                    # The current study or the priors moved: re-send every study whose flags changed.
                    changed |= {uid for uid in {*before.priors, *decision.priors, before.current,
                                                decision.current, before.latest, decision.latest}
                                if uid and before.flags(uid) != decision.flags(uid)}
                if found:
                    _remember_shown(session, found)
                # A report linked across archives (by accession) reaches a study another archive brought.
                report_api.remember(session, (acc.merged[uid] for uid in changed if uid in acc.merged))
                audit.record_listing(session, [(status.id, status.status, [s.uid for s in found])])
                # One write per archive: two small writes in a row meet Nagle's algorithm and the
                # browser's delayed ACK, which held the second event back by 40-200 ms.
                chunk = _event("archive", status.to_json())
                if changed:
                    views = [builder.view(acc.merged[uid], decision) for uid in changed if uid in acc.merged]
                    chunk += _event("studies", {"archive": status.id, "studies": views,
                                                "pinned": builder.pinned(decision)})
                now_pending = builder.pending_orders(studies_now, acc.orders)
                if now_pending != pending:
                    pending = now_pending
                    chunk += _event("orders", {"orders": pending})
                yield chunk
            yield _event("done", {"archives": [s.to_json() for s in acc.statuses], "count": len(acc.merged),
                                  "pinned": builder.pinned(decision), "pending_orders": pending,
                                  "view": builder.view_settings(), "withheld": acc.withheld})
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
    archive = archives_for(session).get(archive_id) or imaging_endpoints.lookup(session.id, archive_id)
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
        check_error(session, archive, exc)  # a 401 from the iss: refresh once, else the session ends
        audit.record("thumbnail", session, studies=[uid], archive=archive_id, outcome="minor-failure")
        return Response(status=404, headers={"Cache-Control": "private, max-age=60"})
    if answer.content_type not in {"image/jpeg", "image/png", "image/gif"} or not answer.body:
        audit.record("thumbnail", session, studies=[uid], archive=archive_id, outcome="minor-failure")
        return Response(status=404, headers={"Cache-Control": "private, max-age=60"})
    audit.record("thumbnail", session, studies=[uid], archive=archive_id)
    resp = Response(answer.body, mimetype=answer.content_type)
    resp.headers["Cache-Control"] = "private, max-age=86400, immutable"
    return resp


@bp.post("/access-log")
def record_access() -> Response:
    """Record a viewer opening: who, which patient, which study, which archive, when."""
    # JSON only: a cross-site form cannot send application/json without a CORS preflight, which
    # this app never grants, so another site cannot write entries into a clinician's audit trail.
    if not request.is_json:
        raise LaunchError("An access-log entry must be sent as application/json.")
    data = request.get_json(silent=True)
    if not isinstance(data, dict) or not isinstance(data.get("uid"), str) or not isinstance(data.get("archive"), str):
        raise LaunchError("An access-log entry needs `uid` and `archive`.")
    # The page names its patient (as the stream does): after a second launch in this browser, the
    # first tab's openings still belong to the session that tab was opened with.
    patient = data.get("patient") if isinstance(data.get("patient"), str) else None
    session = session_for_patient(patient)
    uid, archive_id = data["uid"][:128], data["archive"][:64]
    compare_uid = data["compare_uid"][:128] if isinstance(data.get("compare_uid"), str) else None
    if not _was_shown(session, uid, archive_id) or (compare_uid and not _was_shown(session, compare_uid, archive_id)):
        raise FhirNotFound("No such study in this patient's timeline.")
    # A compare opens two studies: both are recorded (both were checked above).
    opened = [uid, *([compare_uid] if compare_uid else [])]
    audit.record("open-viewer", session, studies=opened, archive=archive_id)
    entry = {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "user": session.context.fhir_user, "patient": session.patient.id, "study": uid, "archive": archive_id,
        "viewer": str(data.get("kind") or "")[:16], "iss": session.iss,
        **({"compare_study": compare_uid} if compare_uid else {}),  # a comparison opens both studies
    }
    # The general log gets no PHI (the audit store has the event); the legacy file keeps its lines.
    access_log.info("viewer opened (%d studies)", len(opened))
    path = current_app.config.get("ACCESS_LOG_FILE")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
    return Response(status=204)



def _user(session: SmartSession) -> str:
    """Whose acknowledgements: the EHR's user (fhirUser), else this launch session."""
    return session.context.fhir_user or f"session:{session.id}"


@bp.post("/attention/ack")
def acknowledge_attention() -> Response:
    """Acknowledge one "needs attention" item of a study shown in this session; stored per user and item."""
    session = _session()
    if not request.is_json:  # JSON only, as for the access log: no cross-site form posts
        raise LaunchError("An acknowledgement must be sent as application/json.")
    data = request.get_json(silent=True)
    if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in ("patient", "uid", "code")):
        raise LaunchError("An acknowledgement needs `patient`, `uid` and `code`.")
    if data["patient"] != session.patient.id:
        raise LaunchError("This acknowledgement names another patient than the one launched; relaunch from "
                          "the chart.")
    if data["code"] not in ATTENTION_CODES:
        raise LaunchError(f"Unknown attention code {data['code'][:40]!r}; expected one of "
                          f"{', '.join(sorted(ATTENTION_CODES))}.")
    uid = data["uid"][:128]
    shown = store().get(f"shown:{session.id}")
    if not shown or shown["patient"] != session.patient.id or uid not in shown["studies"]:
        raise FhirNotFound("No such study in this patient's timeline.")
    by = session.context.fhir_user.rsplit("/", 2)[-2:] if session.context.fhir_user else None
    entry = acknowledge(_user(session), "/".join(by) if by else "you (this session)", session.patient.id, uid,
                        data["code"], ttl_s=float(current_app.config.get("ACK_TTL_S", 90 * 86400)))
    access_log.info("attention acknowledged: %s", json.dumps({"user": session.context.fhir_user,
                                                              "patient": session.patient.id, "study": uid,
                                                              "code": data["code"], "at": entry["at"]}))
    return jsonify(entry)


def init_app(app: Flask) -> None:
    # Access entries name patients and studies: they go to IMAGING_ACCESS_LOG only, never the app log.
    access_log.propagate = False
    if not app.config.get("ACCESS_LOG_FILE"):
        log.warning("IMAGING_ACCESS_LOG is not set: viewer openings go to the audit trail only")
    app.extensions["prefetch"] = Prefetcher(store=app.extensions.get("session_store"),
                                            replay_s=float(app.config["SEARCH_REPLAY_S"]))
    app.register_blueprint(bp)
    report_api.init_app(app)
