"""The patient-scoped DICOMweb gateway: `/dicomweb/<capability>/…` proxied, guarded, to the archive holding each study.

Viewers are given `…/dicomweb/<capability>` as their DICOMweb base (app/capabilities.py owns the
token). Each request is answered only inside what the wrong-patient guard kept for the session
(`shown:<session id>`, written by app/api.py), and with the archive's own credentials, which never
leave the server:

* QIDO-RS (PS3.18 §10.6) `studies`, `studies/{uid}/series`, `…/instances`: the archives holding
  the session's studies are asked for exactly those StudyInstanceUIDs (UID list matching, PS3.4
  C.2.2.2.2), whatever the viewer's query says; every answer is re-verified (StudyInstanceUID in
  the set, PatientID and IssuerOfPatientID as the guard requires) before it is passed on. A query
  naming another patient's PatientID or issuer is refused (404) and audited.
* WADO-RS (PS3.18 §10.4) metadata: read whole (capped), re-verified instance by instance, and each
  BulkDataURI that points into the archive rewritten to the gateway (so the browser never fetches
  from the archive itself); one that points elsewhere is dropped.
* WADO-RS instances, frames, bulk data, rendered and thumbnail: streamed (app.http.open_stream:
  one 256 kB chunk at a time, a per-response cap `GATEWAY_MAX_RESPONSE_BYTES`, default 4 GiB, and
  a deadline), with `Range`, `Accept` and the multipart body passed through untouched. Once this
  process has checked a viewer's scope and a series' instances, the next frames of that series
  skip Flask (`FastRetrieve`, the same decisions made by the same functions, the capability
  still read from the store every time); anything else goes through the route.
* WADO-URI (PS3.18 §9) for rendered images (`contentType=image/jpeg|image/png`), answered by the
  WADO-RS rendered resource; `application/dicom` is refused (406): no viewer we link needs it.
* A study outside the set → 404; an unknown, expired or revoked capability, or an ended session
  → 401. Each refusal goes to the audit hook (`GATEWAY_AUDIT`, default: the `app.audit` log).
* CORS only for the origins of viewers configured with `via = "gateway"` (plus
  `GATEWAY_CORS_ORIGINS`); no cookies are involved (`Access-Control-Allow-Credentials` never sent).

Verified against Orthanc 1.10 + DICOMweb plugin 1.7 (tests/test_gateway.py runs a real one):
comma-separated UID lists match (backslash-separated ones match nothing); a series asked under
another study answers 404 (metadata) or an empty list (QIDO); BulkDataURIs are absolute URLs
built from the Host the plugin was asked on; frames and rendered answers come gzip-encoded
(passed on as encoded, with their Content-Encoding); `/thumbnail` does not exist (404), so a
thumbnail falls back to `rendered?viewport=128,128` (PS3.18 §10.4.1.1.3: a thumbnail is a
rendered representation). Multipart parts carry a Content-Location naming the archive's own
address: an address, not a credential, passed on unchanged (rewriting would mean re-framing
every part).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from typing import Any
from urllib.parse import quote, urlsplit

import requests
from flask import Blueprint, Flask, Response, current_app, g, jsonify, request, url_for
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry
from werkzeug.datastructures import Headers
from werkzeug.wsgi import ClosingIterator

from .archives.base import ArchiveClient
from .archives.config import ArchiveConfig
from .capabilities import AuditHook, Capabilities, Capability, CapabilityRefused, log_audit
from .errors import AppError, ArchiveError, ArchiveNotLinked
from .http import Deadline, OutboundSession, StreamedAnswer, StreamError, StreamPool, open_stream, origin
from .identity import link as identity_link
from .session import SmartSession
from .session_store import store

log = logging.getLogger(__name__)
bp = Blueprint("gateway", __name__, url_prefix="/dicomweb")

DICOM_JSON = "application/dicom+json"
UID = r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*"
FRAMES = r"[1-9][0-9]*(?:,[1-9][0-9]*)*"
UIDS_PER_QUERY = 50  # StudyInstanceUID list per QIDO request: keeps the URL well under 4 kB
DEFAULT_MAX_BYTES = 4 * 1024**3  # one streamed answer (a whole-study retrieve can be large)
DEFAULT_METADATA_BYTES = 256 * 1024**2  # WADO-RS metadata is read whole to be verified
DEFAULT_QIDO_BYTES = 32 * 1024**2
THUMBNAIL_VIEWPORT = "128,128"
SCOPE_CACHE_SIZE = 1024
PASSED_HEADERS = ("Content-Type", "Content-Length", "Content-Range", "Accept-Ranges", "Content-Encoding",
                  "ETag", "Last-Modified")
PASSED_STATUS = {200, 204, 206, 304, 400, 404, 406, 416}
ALLOWED_REQUEST_HEADERS = "Accept, Range, Content-Type, Cache-Control, If-None-Match"

ROUTES: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(p), kind) for p, kind in (
    (r"studies", "qido-studies"),
    (rf"studies/(?P<study>{UID})/series", "qido-series"),
    (rf"studies/(?P<study>{UID})(?:/series/(?P<series>{UID}))?/instances", "qido-instances"),
    (rf"studies/(?P<study>{UID})(?:/series/{UID}(?:/instances/{UID})?)?/metadata", "metadata"),
    (rf"studies/(?P<study>{UID})(?:/series/{UID}(?:/instances/{UID}(?:/frames/{FRAMES})?)?)?/rendered", "rendered"),
    (rf"studies/(?P<study>{UID})(?:/series/{UID}(?:/instances/{UID})?)?/thumbnail", "thumbnail"),
    (rf"studies/(?P<study>{UID})/series/{UID}/instances/{UID}/frames/{FRAMES}", "binary"),
    (rf"studies/(?P<study>{UID})/series/{UID}/instances/{UID}/bulk/[0-9A-Fa-f]{{8}}(?:/[0-9]+/[0-9A-Fa-f]{{8}})*",
     "binary"),
    (rf"studies/(?P<study>{UID})(?:/series/{UID}(?:/instances/{UID})?)?", "binary"),
))


def _tag(keyword: str) -> str:
    """The DICOM JSON key (PS3.18 §F.2: 8 upper-case hex digits) of a keyword."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return f"{tag:08X}"


STUDY_UID, PATIENT_ID, ISSUER = _tag("StudyInstanceUID"), _tag("PatientID"), _tag("IssuerOfPatientID")
SERIES_UID, SOP_UID = _tag("SeriesInstanceUID"), _tag("SOPInstanceUID")
# Matching keys the gateway decides itself (the viewer's values are checked, never forwarded).
SCOPING_KEYS = {"PatientID", "IssuerOfPatientID", "StudyInstanceUID", "limit", "offset"}


class GatewayNotFound(AppError):
    """Not in this viewer session: outside the guarded studies, another patient, or no such resource."""

    status = 404
    title = "Not found"
    code = "gateway-not-found"


class GatewayBadRequest(AppError):
    """A request the gateway cannot parse (PS3.18 §8.3.4: an invalid query parameter is a 400)."""

    status = 400
    title = "Bad request"
    code = "gateway-bad-request"


class GatewayUpstreamError(AppError):
    """The archive holding the study failed or refused the gateway."""

    status = 502
    title = "The archive failed"
    code = "gateway-archive-error"


@dataclass(frozen=True)
class Scope:
    """What one request may reach: the capability, its session, the guarded studies and their archives."""

    cap: Capability
    session: SmartSession
    studies: Mapping[str, tuple[str, ...]]  # study UID -> DICOMweb archive ids holding it, in config order
    archives: Mapping[str, ArchiveConfig]  # the DICOMweb archives of this launch
    patient_ids: Mapping[str, str]  # archive id -> this patient's identifier value there (when known)
    sourced: Mapping[str, frozenset[str]]  # study UID -> archives whose answer the guard checked
    base: str  # the gateway's absolute base URL for this capability

    def archive_base(self, archive_id: str) -> str:
        return self.archives[archive_id].resolved_base(self.session.iss)


@dataclass
class Gateway:
    """The gateway's settings and collaborators (built once in `init_app`)."""

    capabilities: Capabilities
    http: requests.Session  # JSON answers (QIDO-RS, metadata), through app.http.fetch
    pool: StreamPool  # streamed answers (pixel data), through app.http.open_stream
    cors_origins: frozenset[str] = frozenset()
    max_bytes: int = DEFAULT_MAX_BYTES
    metadata_max_bytes: int = DEFAULT_METADATA_BYTES
    qido_max_bytes: int = DEFAULT_QIDO_BYTES
    deadline_s: float = 300.0
    audit: AuditHook = field(default=log_audit)
    scope_cache_s: float = 2.0
    scopes: dict[str, tuple[float, Scope]] = field(default_factory=dict)
    members: dict[tuple[str, str, str], tuple[float, frozenset[str]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    fast_answers: int = 0  # retrieves FastRetrieve answered (the rest went through the route)

    def base_for(self, session: SmartSession) -> str:
        """The absolute `…/dicomweb/<capability>` base for this session (issued or reused)."""
        cap = self.capabilities.issue(session_id=session.id, patient_id=session.patient.id, iss=session.iss)
        return base_url(cap.token)


def gateway() -> Gateway:
    return current_app.extensions["gateway"]


def base_url(token: str) -> str:
    public = current_app.config.get("PUBLIC_URL")
    if public:
        return f"{public.rstrip('/')}/dicomweb/{token}"
    return url_for("gateway.root", capability=token, _external=True).rstrip("/")


def base_for_request(session: SmartSession) -> str | None:
    """The session's gateway base, memoised for the request (None when no viewer goes through it)."""
    if "gateway_base" not in g:
        service = current_app.extensions.get("gateway")
        g.gateway_base = service.base_for(session) if service is not None else None
    return g.gateway_base


# --- scope ---------------------------------------------------------------------------------------


def audit(event: str, cap: Capability | None, **fields: Any) -> None:
    """Hand one refusal or withheld answer to the audit hook (ids and counts; never a token)."""
    entry = {"capability": cap.digest if cap else None, "patient": cap.patient_id if cap else None,
             "path": request.path.split("/", 3)[-1] if cap else None, **fields}
    try:
        gateway().audit(event, entry)
    except Exception:
        # An audit sink's failure must not turn a refusal into a 500; it is logged with its trace.
        log.exception("gateway audit hook failed")


def _refuse(event: str, cap: Capability | None, exc: AppError, **fields: Any) -> AppError:
    audit(event, cap, **fields)
    return exc


def _scope(token: str) -> Scope:
    """The capability (read from the store on every request, so a revocation applies at once) and
    what it reaches (session, guarded studies, archives: kept for `scope_cache_s` per process, as a
    viewer fetches hundreds of frames a second and each would otherwise re-read two records)."""
    service = gateway()
    try:
        cap = service.capabilities.resolve(token)
    except CapabilityRefused as exc:
        raise _refuse("capability-refused", None, exc, reason=exc.reason,
                      capability=f"sha256:{_digest(token)}") from None
    cached = _cached_scope(service, cap)
    if cached is not None:
        return cached
    scope = _load_scope(cap, token)
    with service.lock:
        if len(service.scopes) >= SCOPE_CACHE_SIZE:
            service.scopes.clear()
        service.scopes[cap.digest] = (time.monotonic() + service.scope_cache_s, scope)
    return scope


def _cached_scope(service: Gateway, cap: Capability) -> Scope | None:
    """What `cap` reaches, as this process loaded it less than `scope_cache_s` ago (else None)."""
    cached = service.scopes.get(cap.digest)
    if cached is not None and cached[0] > time.monotonic() and cached[1].cap.token == cap.token:
        return replace(cached[1], cap=cap)
    return None


def _load_scope(cap: Capability, token: str) -> Scope:
    from .api import archives_for  # the launch's archives (configured + discovered) are the API's

    record = store().get(f"session:{cap.session_id}")
    session = SmartSession.from_record(cap.session_id, record) if record else None
    if session is None or session.patient.id != cap.patient_id:
        raise _refuse("session-ended", cap, CapabilityRefused(
            "The Imaging Timeline session this viewer was opened from has ended. Relaunch the app from the "
            "patient's chart.", reason="session-ended"))
    shown = store().get(f"shown:{cap.session_id}") or {}
    if shown.get("patient") != cap.patient_id:
        shown = {}
    every = archives_for(session)
    archives = {aid: a for aid, a in every.items() if a.kind == "dicomweb"}
    order = list(archives)
    studies = {uid: tuple(sorted((a for a in held if a in archives), key=order.index))
               for uid, held in (shown.get("studies") or {}).items()}
    # The patient's identifier in every archive's domain, FHIR ones too (a PACS copy of an outside
    # record carries the outside id); not the EHR's own FHIR Patient id, which is no PatientID.
    patient_ids = {aid: v for aid, v in (shown.get("ids") or {}).items()
                   if isinstance(v, str) and not (aid in every and every[aid].is_ehr)}
    for aid, archive in archives.items():
        if aid not in patient_ids:
            try:
                ident = identity_link(session.patient, archive, session.iss).identifier
            except ArchiveNotLinked:
                continue
            if ident is not None:
                patient_ids[aid] = ident.value
    sourced = {uid: frozenset(v) for uid, v in (shown.get("sourced") or {}).items()}
    return Scope(cap, session, {u: a for u, a in studies.items() if a}, archives, patient_ids, sourced,
                 base_url(token))


def _digest(token: str) -> str:
    from .capabilities import digest

    return digest(token)[:12]


def _study_in_scope(scope: Scope, uid: str) -> tuple[str, ...]:
    held = scope.studies.get(uid)
    if not held:
        raise _refuse("study-outside-set", scope.cap, GatewayNotFound(
            "No such study in this patient's timeline."), study=uid)
    return held


# --- verification of what archives answer --------------------------------------------------------


def _first(item: Mapping[str, Any], tag: str) -> str | None:
    element = item.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    if isinstance(values, list) and values and isinstance(values[0], str | int | float):
        return str(values[0])
    return None


def patient_matches(item: Mapping[str, Any], scope: Scope, archive_id: str, uid: str, *, required: bool) -> bool:
    """PatientID (and IssuerOfPatientID where the archive files one) exactly as the guard requires.

    A study the guard checked in this archive must carry this patient's PatientID there (and the
    archive's issuer). A study reached here only through a vetted FHIR Endpoint (the record from
    the EHR or an outside facility, the images in this PACS) must carry the patient's identifier
    in this archive's domain or the one the record's own archive matched on: a shared PACS files
    such a copy under the sending facility's identity, and no FHIR system maps to a DICOM issuer,
    so the issuer is not compared then.
    With no identity known at all the study is bound by its UID alone (the guard kept the record).
    `required`: the answer must carry PatientID (study-level QIDO and metadata do by default,
    PS3.18 Table 10.6.3-3; series- and instance-level answers do not, and are bound by UID).
    """
    sources = scope.sourced.get(uid, frozenset())
    if archive_id in sources:
        expected = {scope.patient_ids[archive_id]} if archive_id in scope.patient_ids else set()
        issuer = scope.archives[archive_id].issuer_of_patient_id
    else:
        expected = {scope.patient_ids[a] for a in (*sources, archive_id) if a in scope.patient_ids}
        issuer = None
    if not expected:
        return True
    pid = _first(item, PATIENT_ID)
    if pid is None:
        return not required
    if pid.rstrip(" ") not in expected:
        return False
    found = _first(item, ISSUER)
    if issuer is None or (found is None and not required):  # series/instance level: issuer not returned
        return True
    return found == issuer


def _rewrite_urls(node: Any, archive_base: str, gateway_base: str) -> Any:
    """URLs into the archive point at the gateway instead; any other absolute one is dropped.

    Covers BulkDataURI (PS3.18 §F.2.6) and UR values such as RetrieveURL (0008,1190), which QIDO
    answers carry: the browser must never be sent to the archive itself.
    """
    if isinstance(node, list):
        return [_rewrite_urls(v, archive_base, gateway_base) for v in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "BulkDataURI" and isinstance(value, str):
            moved = _moved(value, archive_base, gateway_base)
            if moved is not None:
                out[key] = moved
            continue
        if key == "Value" and node.get("vr") == "UR" and isinstance(value, list):
            out[key] = [m for m in (_moved(v, archive_base, gateway_base) for v in value if isinstance(v, str))
                        if m is not None]
            continue
        out[key] = _rewrite_urls(value, archive_base, gateway_base)
    return out


def _moved(url: str, archive_base: str, gateway_base: str) -> str | None:
    if url == archive_base or url.startswith(archive_base + "/"):
        return gateway_base + url[len(archive_base):]
    if not urlsplit(url).scheme and not url.startswith("//"):
        return url  # relative: resolves against the gateway
    return None


# --- talking to archives ---------------------------------------------------------------------------


def _client(scope: Scope, archive_id: str, max_bytes: int) -> ArchiveClient:
    from .federation import federation

    fed = federation()
    archive = scope.archives[archive_id]
    credentials = fed.auth.for_archive(archive, iss=scope.session.iss, ehr_token=scope.session.access_token)
    return ArchiveClient(archive, gateway().http, credentials, max_bytes=max_bytes)


def _json_list(scope: Scope, archive_id: str, path: str, params: list[tuple[str, str]], *, max_bytes: int,
               deadline: Deadline, client: ArchiveClient | None = None) -> list[Any] | None:
    """A DICOM JSON array from one archive; None when it answers 404 (not there)."""
    client = client or _client(scope, archive_id, max_bytes)
    answer = client.get(f"{scope.archive_base(archive_id)}/{path}", params=params, deadline=deadline,
                        accept=f"{DICOM_JSON}, application/json;q=0.9")
    if answer.status == 404:
        return None
    body = client.json(answer, empty=[])
    if not isinstance(body, list):
        raise GatewayUpstreamError("The archive answered with something that is not a DICOM JSON array.")
    return [item for item in body if isinstance(item, dict)]


def _forwarded(args: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The viewer's QIDO parameters minus the scoping keys (named by keyword or by tag).

    `includefield=a,b` (PS3.18 §8.3.4.3 allows the list; OHIF sends it) goes out as repeated
    `includefield`s: Orthanc 1.10 silently ignores the comma-separated form.
    """
    out: list[tuple[str, str]] = []
    for k, v in args:
        if k == "includefield":
            out += [(k, part) for part in v.split(",") if part]
        elif _keyword(k) not in SCOPING_KEYS:
            out.append((k, v))
    return out


def _keyword(name: str) -> str:
    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        return keyword_for_tag(int(name, 16)) or name
    return name


def _asked(args: Iterable[tuple[str, str]], keyword: str) -> list[str]:
    values: list[str] = []
    for k, v in args:
        if _keyword(k) == keyword:
            values += [part for part in re.split(r"[,\\]", v) if part]
    return values


def _int_arg(name: str) -> int | None:
    value = request.args.get(name)
    if value is None:
        return None
    if not value.isdigit():
        raise GatewayBadRequest(f'Argument "{name}" must be a non-negative integer (got "{value[:20]}").')
    return int(value)


# --- QIDO-RS -------------------------------------------------------------------------------------


def _qido_studies(scope: Scope, deadline: Deadline) -> Response:
    paging = _paging()
    args = list(request.args.items(multi=True))
    for pid in _asked(args, "PatientID"):
        if pid not in set(scope.patient_ids.values()):
            raise _refuse("another-patient", scope.cap, GatewayNotFound("No such patient in this viewer session."),
                          asked="PatientID")
    issuers = {a.issuer_of_patient_id for a in scope.archives.values() if a.issuer_of_patient_id}
    for issuer in _asked(args, "IssuerOfPatientID"):
        if issuer not in issuers:
            raise _refuse("another-patient", scope.cap, GatewayNotFound("No such patient in this viewer session."),
                          asked="IssuerOfPatientID")
    asked_uids = _asked(args, "StudyInstanceUID")
    outside = [u for u in asked_uids if u not in scope.studies]
    if outside:
        audit("study-outside-set", scope.cap, study=outside[0], count=len(outside))
    wanted = [u for u in scope.studies if not asked_uids or u in asked_uids]
    params = [*_forwarded(args), ("includefield", "PatientID"), ("includefield", "IssuerOfPatientID")]
    jobs: list[tuple[str, list[str]]] = []
    for archive_id in scope.archives:
        uids = [u for u in wanted if archive_id in scope.studies[u]]
        jobs += [(archive_id, uids[n:n + UIDS_PER_QUERY]) for n in range(0, len(uids), UIDS_PER_QUERY)]
    found: dict[str, dict[str, Any]] = {}
    rank = {aid: n for n, aid in enumerate(scope.archives)}
    clients: dict[str, ArchiveClient | ArchiveError] = {}
    for archive_id in dict.fromkeys(aid for aid, _ in jobs):  # built here: the pool threads have no app context
        try:
            clients[archive_id] = _client(scope, archive_id, gateway().qido_max_bytes)
        except ArchiveError as exc:
            clients[archive_id] = exc

    def one(job: tuple[str, list[str]]) -> tuple[str, list[Any]]:
        archive_id, uids = job
        try:
            client = clients[archive_id]
            if isinstance(client, ArchiveError):
                raise client
            items = _json_list(scope, archive_id, "studies", [*params, ("StudyInstanceUID", ",".join(uids))],
                               max_bytes=0, deadline=deadline, client=client)
        except ArchiveError as exc:
            log.info("gateway: QIDO at archive %s failed: %s", archive_id, exc.code)
            return archive_id, []
        return archive_id, items or []

    failed_verification = 0
    with ThreadPoolExecutor(max_workers=max(1, min(4, len(jobs))), thread_name_prefix="gateway-qido") as pool:
        answers = sorted(pool.map(one, jobs), key=lambda a: rank[a[0]])
    for archive_id, items in answers:
        for item in items:
            uid = _first(item, STUDY_UID)
            if uid is None or uid not in wanted or archive_id not in scope.studies.get(uid, ()):
                failed_verification += 1
                continue
            if not patient_matches(item, scope, archive_id, uid, required=True):
                failed_verification += 1
                continue
            # The first archive in configuration order wins.
            found.setdefault(uid, _rewrite_urls(item, scope.archive_base(archive_id), scope.base))
    if failed_verification:
        audit("answer-withheld", scope.cap, count=failed_verification, level="study")
    return _dicom_json(_page(list(found.values()), paging))


def _paging() -> tuple[int, int | None]:
    """(offset, limit) of the viewer's query, applied to the guarded answer (read before any fan-out)."""
    return _int_arg("offset") or 0, _int_arg("limit")


def _page(items: list[Any], paging: tuple[int, int | None]) -> list[Any]:
    offset, limit = paging
    items = items[offset:]
    return items[:limit] if limit is not None else items


def _qido_below(scope: Scope, path: str, uid: str, key: str, deadline: Deadline) -> Response:
    """Series or instances of one guarded study, merged across the archives holding it."""
    held = _study_in_scope(scope, uid)
    paging = _paging()
    args = _forwarded(request.args.items(multi=True))
    merged: dict[str, Any] = {}
    answered = False
    for archive_id in held:
        try:
            items = _json_list(scope, archive_id, path, args, max_bytes=gateway().qido_max_bytes, deadline=deadline)
        except ArchiveError as exc:
            log.info("gateway: QIDO at archive %s failed: %s", archive_id, exc.code)
            continue
        answered = answered or items is not None
        for item in items or ():
            study = _first(item, STUDY_UID)
            wrong_study = study is not None and study != uid
            if wrong_study or not patient_matches(item, scope, archive_id, uid, required=False):
                audit("answer-withheld", scope.cap, study=uid, level=path.rsplit("/", 1)[-1])
                continue
            merged.setdefault(_first(item, key) or str(len(merged)),
                              _rewrite_urls(item, scope.archive_base(archive_id), scope.base))
    if not answered and not merged:
        raise GatewayNotFound("No such study in the archive.")
    return _dicom_json(_page(list(merged.values()), paging))


def _dicom_json(body: Any) -> Response:
    resp = jsonify(body)
    resp.mimetype = DICOM_JSON
    resp.headers["Cache-Control"] = "no-store"
    return resp


# --- WADO-RS -------------------------------------------------------------------------------------


def _metadata(scope: Scope, path: str, uid: str, deadline: Deadline) -> Response:
    for archive_id in _study_in_scope(scope, uid):
        try:
            items = _json_list(scope, archive_id, path, [], max_bytes=gateway().metadata_max_bytes, deadline=deadline)
        except ArchiveError as exc:
            log.info("gateway: metadata at archive %s failed: %s", archive_id, exc.code)
            continue
        if items is None:
            continue
        kept = [item for item in items
                if _first(item, STUDY_UID) == uid and patient_matches(item, scope, archive_id, uid, required=True)]
        if len(kept) < len(items):
            audit("answer-withheld", scope.cap, study=uid, level="metadata", count=len(items) - len(kept))
        return _dicom_json(_rewrite_urls(kept, scope.archive_base(archive_id), scope.base))
    raise GatewayNotFound("No such study in the archive.")


def _binary(scope: Scope, path: str, uid: str, deadline: Deadline, *, query: str | None = None,
            fallback: tuple[str, str] | None = None, accept: str | None = None) -> Response:
    """Stream one WADO-RS resource from the first archive holding `uid` that has it."""
    service = gateway()
    held = _study_in_scope(scope, uid)
    raw_query = request.query_string.decode("latin-1") if query is None else query
    headers = _upstream_headers(request.headers.get, accept)
    refused = 0
    for n, archive_id in enumerate(held):
        if not _in_study(scope, archive_id, path, deadline):
            refused += 1
            continue
        try:
            answer = _retrieve(service, scope, archive_id, path, raw_query, headers, deadline)
        except ArchiveError as exc:
            log.info("gateway: archive %s refused credentials for a retrieve: %s", archive_id, exc.code)
            continue
        except (StreamError, requests.Timeout) as exc:  # Timeout: the deadline had passed
            log.info("gateway: archive %s unreachable for a retrieve (%s)", archive_id, type(exc).__name__)
            continue
        if answer.status == 404 and fallback is not None:
            answer.close()
            return _binary(scope, fallback[0], uid, deadline, query=fallback[1], accept=accept)
        if answer.status == 404 and n + 1 < len(held):
            answer.close()
            continue
        return _relay(answer, archive_id)
    if refused == len(held):
        raise _refuse("outside-study", scope.cap, GatewayNotFound("No such series or instance in this study."),
                      study=uid)
    raise GatewayUpstreamError("No archive holding this study answered.")


def _retrieve(service: Gateway, scope: Scope, archive_id: str, path: str, raw_query: str,
              headers: Mapping[str, str], deadline: Deadline) -> StreamedAnswer:
    """Send one retrieve to one archive with that archive's own credentials (route and fast path alike).

    Raises ArchiveError (credentials refused), StreamError (unreachable) or requests.Timeout.
    """
    from .federation import federation

    archive = scope.archives[archive_id]
    # The raw query string, not `params`: Orthanc refuses a percent-encoded viewport comma (400).
    url = f"{scope.archive_base(archive_id)}/{path}" + (f"?{raw_query}" if raw_query else "")
    credentials = federation().auth.for_archive(archive, iss=scope.session.iss, ehr_token=scope.session.access_token)
    return open_stream(service.pool, url, deadline=deadline, timeout=archive.timeout_s, max_bytes=service.max_bytes,
                       headers={**headers, **credentials.headers_for(url, deadline)})


def _upstream_headers(asked: Any, accept: str | None = None) -> dict[str, str]:
    """What a retrieve passes on from the viewer's request (`asked`: header name -> value or None)."""
    headers = {"Accept": accept or asked("Accept") or "*/*", "Accept-Encoding": asked("Accept-Encoding") or "identity"}
    for name in ("Range", "If-None-Match"):
        if value := asked(name):
            headers[name] = value
    return headers


HIERARCHY = re.compile(rf"studies/(?P<study>{UID})/series/(?P<series>{UID})(?:/instances/(?P<instance>{UID}))?(?:/.*)?")
MEMBERS_TTL_S = 60.0


def _in_study(scope: Scope, archive_id: str, path: str, deadline: Deadline) -> bool:
    """Whether the series (and instance) a retrieve names belong to the guarded study in that archive.

    PS3.18 §10.4 resources are hierarchical, but not every archive checks that the series in
    `studies/{A}/series/{S}` is A's (Orthanc 1.10 does): without this, a guarded study's UID could
    front another patient's series. The series' instance list is read once (QIDO-RS) and kept a
    minute per process; an instance missing from it (new, or beyond a server's default `limit`)
    is asked for by its SOPInstanceUID.
    """
    match = HIERARCHY.fullmatch(path)
    if match is None:
        return True  # study level: the study itself is guarded
    study, series, instance = match["study"], match["series"], match["instance"]
    service, key, now = gateway(), (archive_id, study, series), time.monotonic()
    held = service.members.get(key)
    if held is None or held[0] <= now:
        found = _instances(scope, archive_id, study, series, None, deadline)
        if found is None:
            return False
        held = (now + MEMBERS_TTL_S, found)
    if instance is not None and instance not in held[1]:
        found = _instances(scope, archive_id, study, series, instance, deadline)
        held = (held[0], held[1] | (found or frozenset()))
    with service.lock:
        if len(service.members) >= SCOPE_CACHE_SIZE:
            service.members.clear()
        service.members[key] = held
    return bool(held[1]) and (instance is None or instance in held[1])


def _known_member(service: Gateway, archive_id: str, path: str) -> bool:
    """Whether this process already knows (`_in_study`'s cache, unexpired) that the instance `path`
    names belongs to its study in that archive; False when it does not know (not: it does not)."""
    match = HIERARCHY.fullmatch(path)
    if match is None or match["instance"] is None:
        return False
    held = service.members.get((archive_id, match["study"], match["series"]))
    return held is not None and held[0] > time.monotonic() and match["instance"] in held[1]


def _instances(scope: Scope, archive_id: str, study: str, series: str, instance: str | None,
               deadline: Deadline) -> frozenset[str] | None:
    """SOPInstanceUIDs the archive lists in `series` of `study` (only `instance`, when given); None on failure."""
    params = [("includefield", "SOPInstanceUID"), ("includefield", "SeriesInstanceUID"),
              ("includefield", "StudyInstanceUID")]
    if instance is not None:
        params.append(("SOPInstanceUID", instance))
    try:
        items = _json_list(scope, archive_id, f"studies/{study}/series/{series}/instances", params,
                           max_bytes=gateway().qido_max_bytes, deadline=deadline) or []
    except ArchiveError as exc:
        log.info("gateway: archive %s: instance list unavailable (%s)", archive_id, exc.code)
        return None
    return frozenset(sop for item in items
                     if _first(item, STUDY_UID) in (None, study) and _first(item, SERIES_UID) in (None, series)
                     and (sop := _first(item, SOP_UID)) is not None and instance in (None, sop))


def _relay(answer: Any, archive_id: str) -> Response:
    if answer.status not in PASSED_STATUS:
        answer.close()
        log.info("gateway: archive %s answered HTTP %s to a retrieve", archive_id, answer.status)
        what = "refused the gateway's credentials" if answer.status in (401, 403) else f"answered HTTP {answer.status}"
        raise GatewayUpstreamError(f"The archive {what}.")
    _no_delay(request.environ)
    resp = Response(_relayed(answer, archive_id), status=answer.status, headers=_relayed_headers(answer),
                    direct_passthrough=True)
    # A body never iterated (HEAD, a client gone before the first byte) must still free the
    # archive connection; after a full read this is a no-op (the connection is back in the pool).
    resp.call_on_close(answer.close)
    return resp


PASSED_LOWER = {name.lower(): name for name in PASSED_HEADERS}


def _relayed_headers(answer: StreamedAnswer) -> dict[str, str]:
    """The archive's headers a viewer gets (PASSED_HEADERS, first of each), and the gateway's caching."""
    headers: dict[str, str] = {}
    for name, value in answer.headers.items():  # one pass: an HTTPMessage lookup scans every header
        passed = PASSED_LOWER.get(name.lower())
        if passed is not None and passed not in headers:
            headers[passed] = value
    headers["Cache-Control"] = "private, max-age=600"
    return headers


def _relayed(answer: StreamedAnswer, archive_id: str) -> Iterator[bytes]:
    """The archive's body as it comes; the connection is released (or dropped) when it ends or is closed."""
    yield from answer.iter_bytes()
    if answer.cut:
        log.warning("gateway: answer from archive %s cut at the size cap or deadline", archive_id)


def _no_delay(environ: Mapping[str, Any]) -> None:
    """TCP_NODELAY on the viewer's connection: a streamed answer is written in many small writes,
    which Nagle's algorithm would hold back for the client's delayed ACK (as in api.stream)."""
    from .api import _no_delay as no_delay

    no_delay(dict(environ))


def _wado_uri(scope: Scope, deadline: Deadline) -> Response:
    """WADO-URI (PS3.18 §9.1) for rendered images, answered from the WADO-RS rendered resource."""
    args = request.args
    if args.get("requestType") != "WADO":
        raise GatewayBadRequest('WADO-URI needs requestType=WADO.')
    study, series, instance = args.get("studyUID", ""), args.get("seriesUID", ""), args.get("objectUID", "")
    if not all(re.fullmatch(UID, v) for v in (study, series, instance)):
        raise GatewayBadRequest("WADO-URI needs studyUID, seriesUID and objectUID.")
    content_type = args.get("contentType", "image/jpeg")  # PS3.18 §9.1.2.1.4: image/jpeg by default
    if content_type not in ("image/jpeg", "image/png"):
        return Response("contentType must be image/jpeg or image/png here", 406, mimetype="text/plain")
    query = "&".join(f"{k}={quote(args[k], safe=',')}" for k in ("viewport", "quality") if k in args)
    return _binary(scope, f"studies/{study}/series/{series}/instances/{instance}/rendered", study, deadline,
                   query=query, accept=content_type)


def ohif_config(scope: Scope) -> dict[str, Any]:
    """The DICOMweb data source OHIF v3's `dicomwebproxy` reads from `?url=` (servers.dicomWeb[0])."""
    return {"servers": {"dicomWeb": [{
        "name": "imaging-timeline", "friendlyName": "Imaging Timeline (this patient only)",
        "qidoRoot": scope.base, "wadoRoot": scope.base, "wadoUriRoot": f"{scope.base}/wado",
        "qidoSupportsIncludeField": True, "imageRendering": "wadors", "thumbnailRendering": "wadors",
        "enableStudyLazyLoad": True, "supportsFuzzyMatching": False, "supportsWildcard": False,
        "supportsReject": False, "dicomUploadEnabled": False, "omitQuotationForMultipartRequest": True,
        "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
    }]}}


# --- the hot path: a frame of a study the viewer is already reading ---------------------------------

FAST_PATH = re.compile(rf"/dicomweb/(?P<capability>[A-Za-z0-9_-]{{20,128}})/(?P<rest>studies/(?P<study>{UID})"
                       rf"/series/{UID}/instances/{UID}(?:/frames/{FRAMES})?)")
FAST_STATUS = frozenset({200, 206, 304})


class FastRetrieve:
    """WSGI middleware: a viewer's instance or frame retrieve answered without Flask's request machinery.

    A viewer fetches every frame of a series, hundreds a second, through the same capability; on
    the machines we measure (bench/gateway.py), Flask's request context, routing, response
    object and hooks cost as much CPU as the relay itself. This path serves such a request only
    when every decision is already made in this process, and makes them with the same functions
    as the route:

    * the capability is resolved from the store on this request too (a revocation applies at
      once, in every process), and the scope this process loaded for it is still fresh
      (`_cached_scope`);
    * the study is in the guarded set, and `_in_study`'s cache holds the instance as a member of
      that study in the first archive holding it (`_known_member`);
    * that archive answers 200, 206 or 304.

    Anything else (no cached scope yet, a refusal, a query string, another archive, a 404, an
    error) goes to the Flask route untouched, which decides, audits and answers as always. The
    answer carries the same headers as the route's: the relayed ones, CORS, and the app's
    security headers (`app.extensions["security_headers"]`).
    """

    def __init__(self, app: Flask, inner: Any) -> None:
        self.app, self.inner = app, inner
        self._security: list[tuple[str, str]] | None = None

    def security(self) -> list[tuple[str, str]]:
        """What the app's security headers add to a relayed answer (the same for every one: computed once).

        A relayed answer already has Cache-Control (`_relayed_headers`) and Referrer-Policy
        (`_cors_headers`), which `security_headers` only sets where absent; the rest it adds.
        """
        if self._security is None:
            given = {"Cache-Control", "Referrer-Policy"}
            headers = Headers([(name, "") for name in given])
            self.app.extensions["security_headers"](headers, path="/dicomweb/", nonce=None)
            self._security = [(k, v) for k, v in headers.items() if k not in given]
        return self._security

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        match = FAST_PATH.fullmatch(environ.get("PATH_INFO", "")) if environ.get("REQUEST_METHOD") == "GET" \
            and not environ.get("QUERY_STRING") else None
        if match is None:
            return self.inner(environ, start_response)
        with self.app.app_context():
            found = _fast_answer(match, environ)
            if found is None:
                return self.inner(environ, start_response)
            answer, archive_id = found
            service = gateway()
            with service.lock:
                service.fast_answers += 1
            headers = [*_relayed_headers(answer).items(), *_cors_headers(service.cors_origins,
                                                                         environ.get("HTTP_ORIGIN"), "GET"),
                       *self.security()]
        _no_delay(environ)
        start_response(f"{answer.status} {HTTPStatus(answer.status).phrase}", headers)
        # The server closes what it was given even when the client left before the first byte (a
        # generator never started runs no `finally`): the archive connection is dropped then too.
        return ClosingIterator(_relayed(answer, archive_id), answer.close)


def _fast_answer(match: re.Match[str], environ: Mapping[str, Any]) -> tuple[StreamedAnswer, str] | None:
    """The archive's answer when every decision for this retrieve is already made here (see FastRetrieve)."""

    service = gateway()
    try:
        cap = service.capabilities.resolve(match["capability"])
    except AppError:
        return None  # refused, or the store is down: the route says so (and audits a refusal)
    scope = _cached_scope(service, cap)
    held = scope.studies.get(match["study"]) if scope is not None else None
    if scope is None or not held or not _known_member(service, held[0], match["rest"]):
        return None
    asked = {name: environ.get("HTTP_" + name.upper().replace("-", "_")) for name in
             ("Accept", "Accept-Encoding", "Range", "If-None-Match")}
    try:
        answer = _retrieve(service, scope, held[0], match["rest"], "", _upstream_headers(asked.get),
                           Deadline.after(service.deadline_s))
    except (ArchiveError, StreamError, requests.Timeout):
        return None
    if answer.status not in FAST_STATUS:
        answer.close()
        return None
    return answer, held[0]


# --- routes --------------------------------------------------------------------------------------


@bp.route("/<capability>/", methods=["GET", "OPTIONS"], defaults={"rest": ""})
@bp.route("/<capability>/<path:rest>", methods=["GET", "OPTIONS"])
def root(capability: str, rest: str) -> Response:
    """Every gateway path: preflight, OHIF's data-source configuration, QIDO-RS, WADO-RS, WADO-URI."""
    if request.method == "OPTIONS":
        return Response(status=204)
    scope = _scope(capability)
    deadline = Deadline.after(gateway().deadline_s)
    rest = rest.rstrip("/")
    if rest == "ohif-config.json":
        resp = jsonify(ohif_config(scope))
        resp.headers["Cache-Control"] = "no-store"
        return resp
    if rest == "wado":
        return _wado_uri(scope, deadline)
    for pattern, kind in ROUTES:
        match = pattern.fullmatch(rest)
        if match is None:
            continue
        uid = match.groupdict().get("study") or ""
        if kind == "qido-studies":
            return _qido_studies(scope, deadline)
        if kind == "qido-series":
            return _qido_below(scope, rest, uid, SERIES_UID, deadline)
        if kind == "qido-instances":
            return _qido_below(scope, rest, uid, SOP_UID, deadline)
        if kind == "metadata":
            return _metadata(scope, rest, uid, deadline)
        if kind == "thumbnail":
            rendered = rest.removesuffix("/thumbnail") + "/rendered"
            return _binary(scope, rest, uid, deadline, fallback=(rendered, f"viewport={THUMBNAIL_VIEWPORT}"))
        return _binary(scope, rest, uid, deadline)
    raise GatewayNotFound("Not a DICOMweb resource this gateway serves.")


@bp.errorhandler(AppError)
def _error(exc: AppError) -> Response:
    log.info("gateway %s -> %s%s", request.method, exc.code, f" ({exc.log_detail})" if exc.log_detail else "")
    resp = jsonify({"error": exc.code, "title": exc.title, "message": exc.message})
    resp.status_code = exc.status
    resp.headers["Cache-Control"] = "no-store"
    if exc.status == 503:
        resp.headers["Retry-After"] = "5"  # a temporary outage (the session store): the viewer may retry
    return resp


@bp.after_request
def _cors(resp: Response) -> Response:
    """CORS for the configured viewer origins only; the capability is in the path, so no credentials mode."""
    for name, value in _cors_headers(gateway().cors_origins, request.headers.get("Origin"), request.method):
        if name == "Vary":
            resp.headers.add(name, value)
        else:
            resp.headers[name] = value
    return resp


def _cors_headers(allowed: frozenset[str], asked: str | None, method: str) -> list[tuple[str, str]]:
    """The headers every gateway answer gets for CORS (Vary is added to any the answer has; the rest set)."""
    headers = []
    if asked and asked in allowed:
        headers += [("Access-Control-Allow-Origin", asked),
                    ("Access-Control-Expose-Headers", "Content-Range, Content-Length, Accept-Ranges, Content-Type")]
        if method == "OPTIONS":
            headers += [("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS"),
                        ("Access-Control-Allow-Headers", ALLOWED_REQUEST_HEADERS), ("Access-Control-Max-Age", "600")]
    return [*headers, ("Vary", "Origin"), ("Referrer-Policy", "no-referrer")]


def viewer_origins(archives: Iterable[ArchiveConfig]) -> set[str]:
    """The origins of the viewers that go through the gateway (CORS allows these, and only these)."""
    found = set()
    for archive in archives:
        viewer = archive.viewer
        if viewer is not None and viewer.via == "gateway":
            scheme, host, port = origin(re.sub(r"\{[^{}]*\}", "x", viewer.url))
            default = {"http": 80, "https": 443}.get(scheme)
            found.add(f"{scheme}://{host}" + ("" if port == default else f":{port}"))
    return found


def _retry() -> Retry:
    """One more try of a GET sent on a pooled connection the archive had just closed.

    Orthanc keeps idle connections for 1 s; GET is idempotent and nothing has reached the viewer
    yet. There is never a retry once an answer has started, and redirects are still not followed.
    """
    return Retry(total=1, connect=1, read=1, status=0, other=0, allowed_methods={"GET"}, redirect=0,
                 raise_on_redirect=False, raise_on_status=False)


def archive_http() -> requests.Session:
    """The gateway's session for JSON answers: pooled keep-alive connections (32 per archive)."""
    http = OutboundSession()
    for scheme in ("http://", "https://"):
        http.mount(scheme, HTTPAdapter(pool_connections=8, pool_maxsize=32, max_retries=_retry()))
    return http


def archive_pool() -> StreamPool:
    """The gateway's pool for streamed answers (32 idle keep-alive connections kept per archive)."""
    return StreamPool(maxsize=32)


class RedactCapabilities(logging.Filter):
    """Hides capabilities in request-log lines (werkzeug logs each request's path, the capability in it).

    A WSGI server's own access log (gunicorn `--access-logfile`, a reverse proxy) is configured
    outside the app: redact `/dicomweb/<capability>` there the same way.
    """

    PATTERN = re.compile(r"(/dicomweb/)[A-Za-z0-9_-]{20,128}")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = self.PATTERN.sub(r"\1[capability]", record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(self.PATTERN.sub(r"\1[capability]", a) if isinstance(a, str) else a
                                for a in record.args)
        return True


def init_app(app: Flask) -> None:
    """Attach the gateway (after session_store and federation) and register its blueprint."""
    from .federation import federation

    http, pool = archive_http(), archive_pool()
    with app.app_context():
        archives = federation().archives
    extra = app.config.get("GATEWAY_CORS_ORIGINS") or ()
    if isinstance(extra, str):
        extra = [o.strip() for o in extra.split(",") if o.strip()]
    hook = app.config.get("GATEWAY_AUDIT") or log_audit
    app.extensions["gateway"] = Gateway(
        capabilities=Capabilities(lambda: app.extensions["session_store"],
                                  ttl_s=float(app.config.get("GATEWAY_CAPABILITY_TTL_S") or 7200),
                                  clock=app.config.get("GATEWAY_CLOCK") or time.time),
        http=http,
        pool=pool,
        cors_origins=frozenset({*viewer_origins(archives), *(o.rstrip("/") for o in extra)}),
        max_bytes=int(app.config.get("GATEWAY_MAX_RESPONSE_BYTES") or DEFAULT_MAX_BYTES),
        metadata_max_bytes=int(app.config.get("GATEWAY_METADATA_MAX_BYTES") or DEFAULT_METADATA_BYTES),
        deadline_s=float(app.config.get("GATEWAY_DEADLINE_S") or 300.0),
        audit=hook,
        scope_cache_s=float(app.config.get("GATEWAY_SCOPE_CACHE_S", 2.0)),
    )
    server_log = logging.getLogger("werkzeug")
    if not any(isinstance(f, RedactCapabilities) for f in server_log.filters):
        server_log.addFilter(RedactCapabilities())
    app.register_blueprint(bp)
    app.wsgi_app = FastRetrieve(app, app.wsgi_app)  # type: ignore[method-assign]


@bp.delete("/<capability>")
def revoke(capability: str) -> Response:
    """Withdraw a capability (whoever holds the link may end it; nothing more is granted by this)."""
    gateway().capabilities.revoke(capability)
    return Response(status=204)
