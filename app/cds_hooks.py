"""CDS Hooks 2.0 services: discovery, patient-view (outside imaging) and order-select / order-sign (repeat imaging).

`GET /cds-services` lists the services; `POST /cds-services/<id>` answers one hook call:

1. The caller's JWT is verified (cds_auth.py): allow-listed client, signature, `aud`, `exp`, `jti`.
2. The patient is the hook context's `patientId`; it must be the patient the credentials cover:
   `fhirAuthorization.patient` (CDS Hooks 2.0 §"Passing the Access Token to the CDS Service")
   must equal it when given, patient-level scopes without it are refused, a prefetched Patient
   with another id is refused, and the EHR itself enforces the token when the Patient is read.
3. The Patient comes from `prefetch.patient` when given, else from `fhirServer` with
   `fhirAuthorization` (CDS Hooks 2.0 §"Prefetch"); with neither, 412 Precondition Failed.
4. The archives are searched (federation.py, wrong-patient guard included) until the deadline
   (CDS_DEADLINE_S, 1.5 s by default): archives that have not answered by then are left out and
   named in the card, so the answer is partial rather than late.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from flask import Blueprint, Flask, Response, current_app, g, jsonify, request

from . import cds_cards, metrics, series_facts
from .archives.base import ArchiveClient
from .archives.config import ArchiveConfig
from .audit import archive_outcome, auditor, client_address
from .audit_event import AuditEvent
from .cds_auth import CdsAuthenticator, VerifiedCall, load_clients
from .errors import AppError, CdsForbidden, CdsRequestError
from .federation import ArchiveOutcome, Federation, federation, merge_studies
from .fhir import is_fhir_id, read_patient, to_summary
from .http import Deadline, OutboundSession
from .models import LaunchContext, PatientSummary, Study
from .smart import fhir_user_url

log = logging.getLogger(__name__)
bp = Blueprint("cds", __name__, url_prefix="/cds-services")


@dataclass(frozen=True)
class Service:
    id: str
    hook: str
    title: str
    description: str
    also: tuple[str, ...] = ()  # other hooks this service answers (order-sign on the order-select service)


PATIENT_VIEW = "imaging-timeline-patient-view"
ORDER_SELECT = "imaging-timeline-order-select"
ORDER_SIGN = "imaging-timeline-order-sign"
SERVICES = {s.id: s for s in (
    Service(PATIENT_VIEW, "patient-view", "Outside imaging",
            "Says when other facilities or archives hold imaging of this patient that the EHR does not list."),
    Service(ORDER_SELECT, "order-select", "Recent comparable imaging",
            "Warns when a drafted imaging order repeats a recent study of the same region and modality.",
            also=("order-sign",)),
    Service(ORDER_SIGN, "order-sign", "Recent comparable imaging (at signing)",
            "The same repeat-imaging check when the order is signed.", also=("order-select",)),
)}
PREFETCH = {"patient": "Patient/{{context.patientId}}"}
DONE = object()
ANSWER_MARGIN_S = 0.25  # stop waiting for archives this long before the deadline, to build and send the answer
SERIES_FACTS_MIN_S = 0.2  # look up slice thickness only with at least this much time left


@dataclass
class CdsServices:
    """What the services need: the authenticator, a bounded pool for searches, and the settings."""

    auth: CdsAuthenticator
    pool: ThreadPoolExecutor
    deadline_s: float
    repeat_window: timedelta
    local_archives: frozenset[str]  # archives that are "this organisation" (not outside)
    http: requests.Session
    slices: series_facts.FactsCache


def services() -> CdsServices:
    return current_app.extensions["cds"]


def _public_base() -> str:
    return (current_app.config.get("PUBLIC_URL") or request.url_root).rstrip("/")


@bp.get("")
@bp.get("/")
def discovery() -> Response:
    """CDS Hooks 2.0 §"Discovery"."""
    return jsonify({"services": [{"hook": s.hook, "id": s.id, "title": s.title, "description": s.description,
                                  "prefetch": PREFETCH} for s in SERVICES.values()]})


@bp.post("/<service_id>")
def call(service_id: str) -> Response:
    started = time.monotonic()  # the deadline counts from the request's arrival, checks included
    service = SERVICES.get(service_id)
    if service is None:
        return Response(status=404)
    cds = services()
    verified = cds.auth.verify(request.headers.get("Authorization"), f"{_public_base()}/cds-services/{service_id}")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise CdsRequestError("The CDS Hooks request must be a JSON object (Content-Type: application/json).")
    hook = body.get("hook")
    if hook != service.hook and hook not in service.also:
        raise CdsRequestError(f'Service {service_id} answers the hook "{service.hook}", not "{str(hook)[:40]}".')
    context = body.get("context")
    if not isinstance(context, dict) or not is_fhir_id(context.get("patientId")):
        raise CdsRequestError("context.patientId must be the FHIR id of the patient.")
    patient_id: str = context["patientId"]
    patient, ctx, token = _patient(cds, verified, body, patient_id)
    user = context.get("userId") if isinstance(context.get("userId"), str) else None
    g.cds_audit = (fhir_user_url(user, ctx.iss) if user and ctx.iss else user, verified.client.iss)
    if service.hook == "patient-view":
        cards = _patient_view(cds, patient, ctx, token, started)
    else:
        cards = _order_check(cds, patient, ctx, token, started, hook, context)
    return jsonify({"cards": cards})


@bp.post("/<service_id>/feedback")
def feedback(service_id: str) -> Response:
    """CDS Hooks 2.0 §"Feedback": whether the clinician took a card's suggestion (counted, not stored)."""
    if service_id not in SERVICES:
        return Response(status=404)
    services().auth.verify(request.headers.get("Authorization"),
                           f"{_public_base()}/cds-services/{service_id}/feedback")
    body = request.get_json(silent=True)
    items = body.get("feedback") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise CdsRequestError('Feedback must be {"feedback": [{"card": ..., "outcome": ...}]}.')
    for item in items:
        if isinstance(item, dict) and item.get("outcome") in ("accepted", "overridden"):
            followed = item["outcome"] == "accepted" and bool(item.get("acceptedSuggestions"))
            metrics.order_warning_feedback(service_id, "followed" if followed else str(item["outcome"]))
    return Response(status=200)


# --- the patient and the credentials -------------------------------------------------------------


class _Token:
    def __init__(self, token: str) -> None:
        self.token = token

    def access_token(self) -> str:
        return self.token


def _patient(cds: CdsServices, verified: VerifiedCall, body: dict[str, Any],
             patient_id: str) -> tuple[PatientSummary, LaunchContext, _Token]:
    fhir_server = body.get("fhirServer")
    if fhir_server is not None and not (isinstance(fhir_server, str) and fhir_server.startswith(("https://",
                                                                                                 "http://"))):
        raise CdsRequestError("fhirServer must be the FHIR base URL of the EHR.")
    if fhir_server:
        cds.auth.check_fhir_server(verified, fhir_server)
    authz = body.get("fhirAuthorization")
    token, scopes = "", frozenset[str]()
    if authz is not None:
        if not isinstance(authz, dict) or not isinstance(authz.get("access_token"), str) or not fhir_server:
            raise CdsRequestError("fhirAuthorization needs access_token, and the request needs fhirServer.")
        token = authz["access_token"]
        scopes = frozenset(str(authz.get("scope") or "").split())
        covered = authz.get("patient")
        if covered is not None and covered != patient_id:
            raise CdsForbidden("The access token is for another patient than context.patientId; nothing is "
                               "answered.")
        if covered is None and scopes and all(s.startswith("patient/") for s in scopes if "/" in s) and any(
                s.startswith("patient/") for s in scopes):
            raise CdsForbidden("The access token has patient-level scopes but does not say which patient "
                               "(fhirAuthorization.patient); nothing is answered.")
    raw_prefetch = body.get("prefetch")
    prefetch: dict[str, Any] = raw_prefetch if isinstance(raw_prefetch, dict) else {}
    resource = prefetch.get("patient")
    if isinstance(resource, dict) and resource.get("resourceType") == "Patient":
        if resource.get("id") != patient_id:
            raise CdsForbidden("The prefetched Patient is not context.patientId; nothing is answered.")
        summary = to_summary(resource)
    elif token and fhir_server:
        summary = read_patient(cds.http, fhir_server, patient_id, token, timeout=cds.deadline_s)
    else:
        raise CdsPrefetchMissing("Send prefetch.patient, or fhirServer with fhirAuthorization, so the service "
                                 "can read the patient.")
    ctx = LaunchContext(iss=(fhir_server or "").rstrip("/"), patient_id=patient_id, granted_scopes=scopes)
    return summary, ctx, _Token(token)


class CdsPrefetchMissing(CdsRequestError):
    """CDS Hooks 2.0 §"Prefetch": without prefetch or FHIR access, 412 Precondition Failed."""

    status = 412
    code = "cds-prefetch-missing"


# --- searching within the deadline ----------------------------------------------------------------


def _within_deadline(cds: CdsServices, fed: Federation, patient: PatientSummary, ctx: LaunchContext,
                     token: _Token, started: float) -> tuple[list[Study], list[str], list[ArchiveOutcome]]:
    """Studies found before the deadline, the names of archives that had not answered, and the outcomes."""
    answers: queue.Queue[Any] = queue.Queue()
    stop = threading.Event()
    usable = tuple(a for a in fed.archives if ctx.iss or not a.is_ehr)

    def search() -> None:
        try:
            feed: Iterator[ArchiveOutcome] = fed.iter_outcomes(patient, ctx, token, session_id=None)
            for outcome in feed:
                answers.put(outcome)
                if stop.is_set():
                    break
        except AppError as exc:
            log.info("CDS search failed: %s", exc.code)
        finally:
            answers.put(DONE)

    cds.pool.submit(search)
    outcomes: list[ArchiveOutcome] = []
    # Stop waiting a little before the deadline: merging, the cards and the answer itself take time too.
    end = started + cds.deadline_s - min(ANSWER_MARGIN_S, cds.deadline_s / 4)
    while True:
        left = end - time.monotonic()
        if left <= 0:
            break
        try:
            item = answers.get(timeout=left)
        except queue.Empty:
            break
        if item is DONE:
            break
        outcomes.append(item)
    stop.set()
    answered = {o.status.id for o in outcomes}
    unanswered = [a.name for a in usable if a.id not in answered]
    _audit(patient, ctx, outcomes)
    # Merge in configuration order (the EHR's fields first), whatever the arrival order, as search() does.
    rank = {a.id: n for n, a in enumerate(fed.archives)}
    outcomes.sort(key=lambda o: rank.get(o.status.id, len(rank)))
    studies = merge_studies(s for o in outcomes for s in o.studies)
    return studies, unanswered, outcomes


def _audit(patient: PatientSummary, ctx: LaunchContext, outcomes: list[ArchiveOutcome]) -> None:
    """The hook read the patient's imaging for the EHR's user: one list-studies event per archive asked."""
    user, client = g.get("cds_audit", (None, None))
    events = [AuditEvent(action="list-studies", patient=patient.id, user=user, client_id=client,
                         address=client_address(), iss=ctx.iss or None, studies=tuple(s.uid for s in o.studies),
                         archive=o.status.id, outcome=archive_outcome(o.status.status))
              for o in outcomes if o.status.status != "not-linked"]
    auditor().record_events(events)


def _names(archives: tuple[ArchiveConfig, ...]) -> dict[str, str]:
    return {a.id: a.name for a in archives}


def _is_outside(study: Study, cds: CdsServices, ehr_ids: frozenset[str]) -> bool:
    """Held by an archive outside this organisation, and not already listed by the EHR."""
    return bool(set(study.sources) - cds.local_archives - ehr_ids) and not set(study.sources) & ehr_ids


def _patient_view(cds: CdsServices, patient: PatientSummary, ctx: LaunchContext, token: _Token,
                  started: float) -> list[dict[str, Any]]:
    fed = federation()
    studies, unanswered, _ = _within_deadline(cds, fed, patient, ctx, token, started)
    ehr_ids = frozenset(a.id for a in fed.archives if a.is_ehr)
    outside = [s for s in studies if _is_outside(s, cds, ehr_ids)]
    card = cds_cards.patient_view_card(outside, names=_names(fed.archives), launch_url=f"{_public_base()}/launch",
                                       now=datetime.now(UTC), unanswered=unanswered)
    return [card] if card else []


def _drafts(hook: str, context: dict[str, Any], patient_id: str) -> list[cds_cards.DraftOrder]:
    """The imaging ServiceRequests to check: order-select's `selections`, or every draft at order-sign."""
    bundle = context.get("draftOrders")
    if not isinstance(bundle, dict) or not isinstance(bundle.get("entry", []), list):
        raise CdsRequestError("context.draftOrders must be a FHIR Bundle of the draft orders.")
    selections = context.get("selections")
    wanted = set(selections) if hook == "order-select" and isinstance(selections, list) else None
    drafts = []
    for entry in bundle.get("entry", []):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or resource.get("resourceType") != "ServiceRequest":
            continue
        if wanted is not None and f"ServiceRequest/{resource.get('id')}" not in wanted:
            continue
        subject = resource.get("subject")
        if not isinstance(subject, dict) or subject.get("reference") != f"Patient/{patient_id}":
            continue  # a draft for anyone else is none of this answer's business
        draft = cds_cards.draft_from_resource(resource)
        if draft is not None:
            drafts.append(draft)
    return drafts


def _order_check(cds: CdsServices, patient: PatientSummary, ctx: LaunchContext, token: _Token, started: float,
                 hook: str, context: dict[str, Any]) -> list[dict[str, Any]]:
    drafts = _drafts(hook, context, patient.id)
    if not drafts:
        return []
    fed = federation()
    studies, _, _ = _within_deadline(cds, fed, patient, ctx, token, started)
    now = datetime.now(UTC)
    cards = []
    end = started + cds.deadline_s - min(ANSWER_MARGIN_S, cds.deadline_s / 4)
    for draft in drafts:
        match = cds_cards.comparable_recent(draft, studies, now=now, window=cds.repeat_window)
        if match is not None:
            slices = _slices(fed, ctx, token, match, Deadline(end)) if end - time.monotonic() > SERIES_FACTS_MIN_S \
                else ()
            cards.append(cds_cards.order_warning_card(draft, match, names=_names(fed.archives),
                                                      launch_url=f"{_public_base()}/launch", now=now,
                                                      slices=series_facts.describe(slices)))
            metrics.order_warning_shown(hook)
    return cards


def _slices(fed: Federation, ctx: LaunchContext, token: _Token, study: Study, deadline: Deadline) -> tuple[float, ...]:
    """The warned-about study's slice thickness, from a DICOMweb archive holding it, within what is left."""
    archives = {a.id: a for a in fed.archives}
    sources = [*study.sources, *(e.archive_id for e in study.endpoints)]

    def client(archive: ArchiveConfig) -> ArchiveClient:
        credentials = fed.auth.for_archive(archive, iss=ctx.iss, ehr_token=token.access_token)
        return ArchiveClient(archive, fed.http, credentials, max_bytes=series_facts.MAX_BYTES)

    return series_facts.for_study(archives, sources, client, ctx.iss, study.uid, deadline, services().slices)


@bp.after_request
def _cors(resp: Response) -> Response:
    """CDS Hooks 2.0 §"Security and Safety": services answer browser-based CDS clients (CORS).

    Safe with any origin: every call needs a JWT signed by an allow-listed client, and no cookie
    or ambient credential is ever honoured here. Flask answers the OPTIONS preflight itself.
    """
    resp.headers["Access-Control-Allow-Origin"] = "*"
    resp.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
    resp.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
    resp.headers["Access-Control-Expose-Headers"] = "Content-Type"
    return resp


def init_app(app: Flask) -> None:
    """Attach the services; needs the audit store (audit.init_app first) for single-use JWT ids."""
    http = OutboundSession()
    clients = load_clients(app.config.get("CDS_CLIENTS"))
    local = app.config.get("CDS_LOCAL_ARCHIVES") or ()
    if isinstance(local, str):
        local = [part.strip() for part in local.split(",") if part.strip()]
    app.extensions["cds"] = CdsServices(
        auth=CdsAuthenticator(clients, http, app.extensions["audit"].store),
        pool=ThreadPoolExecutor(max_workers=int(app.config.get("CDS_MAX_SEARCHES", 32)), thread_name_prefix="cds"),
        deadline_s=float(app.config.get("CDS_DEADLINE_S", 1.5)),
        repeat_window=timedelta(days=float(app.config.get("CDS_REPEAT_WINDOW_DAYS", 30))),
        local_archives=frozenset(local),
        http=http,
        slices=series_facts.FactsCache(),
    )
    app.register_blueprint(bp)
