"""The strict FHIR R4 REST API served twice: the EHR (``/fhir``) and the outside facility (``/outside/fhir``).

Every data request needs a Bearer token from the sandbox auth server (RFC 6750: 401 with
``WWW-Authenticate`` otherwise). Access follows SMART App Launch 2.x "Scopes": the token needs
``<level>/<Type>.r`` to read and ``.s`` to search (v1 ``.read`` allows both); ``patient/`` scopes
reach only the launched patient (403 for anyone else), ``system/`` scopes of a backend-services
token reach every patient. The outside facility accepts backend-services tokens only.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlencode

from authlib.integrations.flask_oauth2.requests import FlaskJsonRequest
from authlib.oauth2 import OAuth2Error, ResourceProtector
from authlib.oauth2.rfc6750 import BearerTokenValidator
from flask import Blueprint, Response, jsonify, request, url_for
from werkzeug.datastructures import MultiDict

from . import smart
from .fhir_resources import ADDRESS_PLACEHOLDERS, ResourceIndex
from .runtime import dicomweb_base, fhir_base, outside_base, runtime, token_url
from .store import Token

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
COMPARTMENT = {"Patient", "Encounter", "ImagingStudy", "DiagnosticReport", "ServiceRequest", "DocumentReference",
               "Binary"}
PATIENT_REF_PARAMS = ("patient", "subject")
PATIENT_ID_PARAMS = ("patient.identifier", "subject.identifier", "subject:Patient.identifier",
                     "patient:Patient.identifier")
DATE_FIELDS = {"ImagingStudy": ("started", "started"), "DiagnosticReport": ("date", "effectiveDateTime"),
               "ServiceRequest": ("authored", "authoredOn")}
SORT_FIELDS = {"started": "started", "date": "effectiveDateTime", "issued": "issued", "authored": "authoredOn"}
CONTROL_PARAMS = {"_count", "_offset", "_sort", "_format", "_include"}
Kind = Literal["ehr", "outside"]


class FhirProblem(Exception):
    """An error answered as an OperationOutcome."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


@dataclass(frozen=True, slots=True)
class Access:
    """What one token may see: `patients` None means every patient."""

    token: Token
    patients: frozenset[str] | None


class _Validator(BearerTokenValidator):
    def authenticate_token(self, token_string: str) -> Token | None:
        return runtime().store.token(token_string)


def fhir_response(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status=status, headers=headers, mimetype=FHIR_JSON)


def outcome(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return fhir_response({"resourceType": "OperationOutcome",
                          "issue": [{"severity": "error", "code": code, "diagnostics": message}]}, status, headers)


def scope_levels(scope: str, rtype: str, interaction: Literal["read", "search"]) -> set[str]:
    """The levels (patient, user, system) whose scopes allow `interaction` on `rtype`."""
    levels = set()
    letter = "r" if interaction == "read" else "s"
    for s in scope.split():
        level, _, rest = s.partition("/")
        rtype_scope, _, perms = rest.partition(".")
        perms = perms.split("?", 1)[0]
        if level not in ("patient", "user", "system") or rtype_scope not in (rtype, "*"):
            continue
        v1 = perms in ("read", "*")
        v2 = bool(perms) and perms == "".join(c for c in "cruds" if c in perms) and letter in perms
        if v1 or v2:
            levels.add(level)
    return levels


def _bearer_challenge(error: str | None, description: str) -> dict[str, str]:
    # RFC 6750 section 3: no error attribute when the request had no credentials at all.
    attrs = 'realm="sandbox-fhir"'
    if error:
        attrs += f', error="{error}", error_description="{description}"'
    return {"WWW-Authenticate": f"Bearer {attrs}"}


def authenticate(kind: Kind) -> Token:
    protector = ResourceProtector()
    protector.register_token_validator(_Validator())
    try:
        token = protector.validate_request(None, FlaskJsonRequest(request))
    except OAuth2Error as exc:
        missing = exc.error == "missing_authorization"
        raise FhirProblem(401, "login", "A valid Bearer access token is required.",
                          _bearer_challenge(None if missing else "invalid_token",
                                            "The access token is missing, expired, revoked or unknown.")) from exc
    if kind == "outside" and not token.is_backend:
        raise FhirProblem(401, "login", "This server accepts only SMART Backend Services tokens.",
                          _bearer_challenge("invalid_token", "Token not issued for this server."))
    return token


def access_for(kind: Kind, token: Token, rtype: str, interaction: Literal["read", "search"]) -> Access:
    levels = scope_levels(token.scope, rtype, interaction)
    if token.is_backend:
        if "system" in levels:
            return Access(token, None)
    elif "user" in levels:
        return Access(token, None)
    elif "patient" in levels and token.user and token.user.patient_id and kind == "ehr":
        return Access(token, frozenset({token.user.patient_id}))
    needed = f"{rtype}.{'r' if interaction == 'read' else 's'}"
    raise FhirProblem(403, "forbidden", f"The access token's scopes do not allow {interaction} of {rtype} "
                                        f"(needs a scope such as patient/{needed}).")


def _wants_fhir(accept: str) -> bool:
    return not accept or "fhir+json" in accept or "application/json" in accept


def _render(resource: dict[str, Any]) -> dict[str, Any]:
    if resource["resourceType"] == "Endpoint" and resource.get("address") in ADDRESS_PLACEHOLDERS:
        return {**resource, "address": dicomweb_base()}
    return resource


def _token_matches(identifiers: list[dict[str, Any]], value: str) -> bool:
    system, sep, code = value.rpartition("|")
    for ident in identifiers:
        if ident.get("value") != code:
            continue
        if not sep or ident.get("system") == system:
            return True
    return False


def _patient_ids_for(index: ResourceIndex, value: str) -> set[str]:
    return {p["id"] for p in index.all("Patient")
            if any(_token_matches(p.get("identifier", []), v) for v in value.split(","))}


def _ref_ids(value: str) -> set[str]:
    ids = set()
    for ref in value.split(","):
        rtype, _, rid = ref.rstrip("/").rpartition("/")
        if rtype and not rtype.endswith("Patient"):
            raise FhirProblem(400, "invalid", f"Search reference must point to a Patient (got {ref}).")
        ids.add(rid)
    return ids


def _date_matches(value: str, param: str) -> bool:
    prefix = param[:2] if param[:2] in {"eq", "ne", "gt", "lt", "ge", "le"} else "eq"
    target = param[2:] if param[:2] == prefix else param
    have = value[: len(target)]
    return {"eq": have == target, "ne": have != target, "gt": have > target, "lt": have < target,
            "ge": have >= target, "le": have <= target}[prefix]


def _int_param(params: MultiDict, name: str, default: int, maximum: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    if not raw.isdigit():
        raise FhirProblem(400, "invalid", f'Search parameter "{name}" must be a non-negative integer.')
    return min(int(raw), maximum)


class Search:
    """One search: which patients it may and does name, which resources match."""

    def __init__(self, kind: Kind, index: ResourceIndex, rtype: str, params: MultiDict, access: Access) -> None:
        self.kind, self.index, self.rtype, self.params, self.access = kind, index, rtype, params, access
        self.used: list[tuple[str, str]] = []
        self.ignored: list[str] = []

    def _patients(self) -> set[str] | None:
        """Patients named by the search (None: not restricted by patient), checked against access."""
        named: set[str] | None = None
        keys = PATIENT_REF_PARAMS + PATIENT_ID_PARAMS if self.rtype != "Patient" else ("_id", "identifier")
        for key in keys:
            for value in self.params.getlist(key):
                self.used.append((key, value))
                if key in PATIENT_REF_PARAMS or key == "_id":
                    ids = _ref_ids(value) if key != "_id" else set(value.split(","))
                else:
                    ids = _patient_ids_for(self.index, value)
                named = ids if named is None else named & ids
        allowed = self.access.patients
        if allowed is not None:
            if named is None:
                return set(allowed)
            if named - allowed:
                raise FhirProblem(403, "forbidden", "This token is limited to the launch patient; the search "
                                                    "names another patient.")
        return named

    def run(self) -> list[dict[str, Any]]:
        patients = self._patients()
        if self.rtype not in COMPARTMENT:
            found = self.index.all(self.rtype)
        elif self.rtype == "Patient":
            found = [r for r in self.index.all("Patient") if patients is None or r["id"] in patients]
        elif patients is None:
            found = self.index.all(self.rtype)
        else:
            found = [r for pid in sorted(patients) for r in self.index.by_patient.get((self.rtype, pid), [])]
        for key, values in self.params.lists():
            if key in CONTROL_PARAMS or key in PATIENT_REF_PARAMS + PATIENT_ID_PARAMS or (
                    self.rtype == "Patient" and key in ("_id", "identifier")):
                continue
            for value in values:
                matcher = self._matcher(key, value)
                if matcher is None:
                    self.ignored.append(key)
                    continue
                self.used.append((key, value))
                found = [r for r in found if matcher(r)]
        return self._sorted(found)

    def _matcher(self, key: str, value: str) -> Callable[[dict[str, Any]], bool] | None:
        options = value.split(",")
        if key == "_id":
            return lambda r: r["id"] in options
        if key == "identifier":
            return lambda r: any(_token_matches(r.get("identifier", []), v) for v in options)
        if key in ("status", "priority", "intent"):
            return lambda r: r.get(key) in options
        if key == "modality" and self.rtype == "ImagingStudy":
            codes = {v.rpartition("|")[2] for v in options}
            return lambda r: any(m.get("code") in codes for m in r.get("modality", []))
        if key == "based-on" and self.rtype in ("DiagnosticReport", "ImagingStudy"):
            return lambda r: any(b.get("reference") in options or b.get("reference", "").endswith(
                tuple(f"/{o}" for o in options)) for b in r.get("basedOn", []))
        date_param = DATE_FIELDS.get(self.rtype)
        if date_param and key == date_param[0]:
            return lambda r: bool(r.get(date_param[1])) and _date_matches(r[date_param[1]], value)
        return None

    def _sorted(self, found: list[dict[str, Any]]) -> list[dict[str, Any]]:
        sort = self.params.get("_sort")
        if not sort:
            return found
        for key in reversed(sort.split(",")):
            field = SORT_FIELDS.get(key.lstrip("-"))
            if field is None:
                self.ignored.append(f"_sort={key}")
                continue
            found = sorted(found, key=_sort_key(field), reverse=key.startswith("-"))
        self.used.append(("_sort", sort))
        return found


def _sort_key(field: str) -> Callable[[dict[str, Any]], Any]:
    return lambda resource: resource.get(field) or ""


def _link(params: list[tuple[str, str]], offset: int, count: int) -> str:
    url = request.base_url.removesuffix("/_search")
    return f"{url}?{urlencode([*params, ('_count', str(count)), ('_offset', str(offset))])}"


def _bundle(base: str, search: Search, matches: list[dict[str, Any]]) -> dict[str, Any]:
    rt = runtime()
    count = _int_param(search.params, "_count", rt.config.page_size, rt.config.max_page_size)
    offset = _int_param(search.params, "_offset", 0, len(matches))
    page = matches[offset: offset + count]
    links = [{"relation": "self", "url": _link(search.used, offset, count)}]
    if offset + count < len(matches) and count:
        links.append({"relation": "next", "url": _link(search.used, offset + count, count)})
    if offset > 0:
        links.append({"relation": "previous", "url": _link(search.used, max(0, offset - count), count)})
    entries = [{"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": _render(r),
                "search": {"mode": "match"}} for r in page]
    includes = set(search.params.getlist("_include"))
    refs: dict[str, None] = {}
    if "ImagingStudy:endpoint" in includes and search.rtype == "ImagingStudy":
        refs.update(dict.fromkeys(e["reference"] for r in page for e in r.get("endpoint", [])))
    if f"{search.rtype}:subject" in includes or f"{search.rtype}:patient" in includes:
        # FHIR R4 search §3.1.1.5.5: the subject Patient of each match, once.
        refs.update(dict.fromkeys(r["subject"]["reference"] for r in page
                                  if isinstance(r.get("subject"), dict) and "reference" in r["subject"]))
    if refs:
        for ref in refs:
            rtype, _, rid = ref.partition("/")
            if (resource := search.index.get(rtype, rid)) is not None:
                entries.append({"fullUrl": f"{base}/{ref}", "resource": _render(resource),
                                "search": {"mode": "include"}})
    return {"resourceType": "Bundle", "type": "searchset", "total": len(matches), "link": links,
            "entry": entries}


def capability_statement(kind: Kind) -> dict[str, Any]:
    """The CapabilityStatement with SMART's oauth-uris extension (SMART App Launch 2.x, section 3)."""
    uris = [{"url": "token", "valueUri": token_url()}]
    if kind == "ehr":
        uris.insert(0, {"url": "authorize", "valueUri": url_for("auth.authorize", _external=True)})
    types = ("ImagingStudy", "DiagnosticReport", "Patient", "Endpoint") if kind == "outside" else (
        "Patient", "Practitioner", "Encounter", "ImagingStudy", "DiagnosticReport", "ServiceRequest", "Endpoint",
        "DocumentReference", "Binary")
    return {
        "resourceType": "CapabilityStatement", "status": "active", "date": "2024-01-01", "kind": "instance",
        "software": {"name": "Imaging Timeline sandbox " + ("EHR" if kind == "ehr" else "outside facility")},
        "implementation": {"description": "Sandbox FHIR server",
                           "url": fhir_base() if kind == "ehr" else outside_base()},
        "fhirVersion": "4.0.1", "format": ["json"],
        "rest": [{
            "mode": "server",
            "security": {
                "extension": [{"url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                               "extension": uris}],
                "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                         "code": "SMART-on-FHIR"}]}],
            },
            "resource": [{"type": t, "interaction": [{"code": "read"}, {"code": "search-type"}]} for t in types],
        }],
    }


def make_blueprint(kind: Kind, index_of: Callable[[], ResourceIndex]) -> Blueprint:
    """The FHIR API for `kind`; `index_of` gives the resources (read at request time)."""
    name, prefix, archive = ("ehr_fhir", "/fhir", "ehr") if kind == "ehr" else (
        "outside_fhir", "/outside/fhir", "outside")
    bp = Blueprint(name, __name__, url_prefix=prefix)
    base_of = fhir_base if kind == "ehr" else outside_base

    @bp.errorhandler(FhirProblem)
    def problem(exc: FhirProblem):
        return outcome(exc.status, exc.code, exc.message, exc.headers)

    @bp.get("/metadata")
    def metadata():
        return fhir_response(capability_statement(kind))

    @bp.get("/.well-known/smart-configuration")
    def smart_configuration():
        return jsonify(smart.smart_configuration(runtime(), kind))

    if kind == "ehr":
        @bp.get("/.well-known/openid-configuration")
        def openid_configuration():
            return jsonify(smart.openid_configuration(runtime()))

    def _guard(rtype: str) -> Response | None:
        if rtype not in index_of().resources and rtype not in COMPARTMENT:
            raise FhirProblem(404, "not-supported", f"Resource type {rtype} is not supported here.")
        accept = request.headers.get("Accept", "")
        fmt = request.args.get("_format", "")
        if (fmt and "json" not in fmt) or ("xml" in accept and "json" not in accept and "*/*" not in accept):
            raise FhirProblem(406, "not-supported", "Only JSON is supported (application/fhir+json).")
        return runtime().disturb(archive)

    if kind == "ehr":
        _audit_repository(bp, base_of)

    @bp.get("/<rtype>/<rid>")
    def read(rtype: str, rid: str):
        if (disturbed := _guard(rtype)) is not None:
            return disturbed
        token = authenticate(kind)
        access = access_for(kind, token, rtype, "read")
        resource = index_of().get(rtype, rid)
        if resource is None:
            raise FhirProblem(404, "not-found", f"{rtype}/{rid} is not known to this server.")
        owner = index_of().owner.get((rtype, rid))
        if access.patients is not None and rtype in COMPARTMENT and owner not in access.patients:
            raise FhirProblem(403, "forbidden", "This token is limited to the launch patient.")
        if rtype == "Binary" and not _wants_fhir(request.headers.get("Accept", "")):
            # FHIR R4 Binary read: a non-FHIR Accept gets the content itself, as its own media type.
            return Response(base64.b64decode(resource.get("data", "")), mimetype=resource["contentType"])
        return fhir_response(_render(resource))

    def _search(rtype: str, params: MultiDict):
        if (disturbed := _guard(rtype)) is not None:
            return disturbed
        token = authenticate(kind)
        access = access_for(kind, token, rtype, "search")
        search = Search(kind, index_of(), rtype, params, access)
        matches = search.run()
        if search.ignored and "handling=strict" in request.headers.get("Prefer", ""):
            raise FhirProblem(400, "not-supported", f"Unsupported search parameters: {', '.join(search.ignored)}.")
        return fhir_response(_bundle(base_of(), search, matches))

    @bp.get("/<rtype>")
    def search_get(rtype: str):
        return _search(rtype, request.args)

    @bp.post("/<rtype>/_search")
    def search_post(rtype: str):
        return _search(rtype, MultiDict([*request.args.items(multi=True), *request.form.items(multi=True)]))

    return bp


AUDIT_EVENTS_KEPT = 10_000


def _audit_access(token: Token, write: bool) -> None:
    """Backend-services tokens only, with system/AuditEvent.c (write) or .rs (read); v1 forms too."""
    scopes = set(token.scope.split())
    allowed = {"system/AuditEvent.c", "system/AuditEvent.write"} if write else {
        "system/AuditEvent.rs", "system/AuditEvent.read"}
    if not token.is_backend or not scopes & allowed:
        needed = "system/AuditEvent.c" if write else "system/AuditEvent.rs"
        raise FhirProblem(403, "forbidden", f"AuditEvents need a backend-services token with {needed}.")


def _audit_repository(bp: Blueprint, base_of: Callable[[], str]) -> None:
    """POST /AuditEvent (FHIR R4 create, §3.1.0.7) and GET /AuditEvent (all of them, newest last)."""

    @bp.post("/AuditEvent")
    def create_audit_event():
        if (disturbed := runtime().disturb("ehr")) is not None:
            return disturbed
        _audit_access(authenticate("ehr"), write=True)
        body = request.get_json(silent=True, force=True)
        if not isinstance(body, dict) or body.get("resourceType") != "AuditEvent":
            raise FhirProblem(400, "invalid", "The body must be a FHIR AuditEvent resource (application/fhir+json).")
        for required in ("type", "recorded", "agent", "source"):
            if required not in body:
                raise FhirProblem(400, "required", f"AuditEvent.{required} is required (FHIR R4 AuditEvent).")
        rt = runtime()
        resource = {**body, "id": secrets.token_hex(8)}
        rt.audit_events.append(resource)
        del rt.audit_events[:-AUDIT_EVENTS_KEPT]
        return fhir_response(resource, 201, {"Location": f"{base_of()}/AuditEvent/{resource['id']}"})

    @bp.get("/AuditEvent")
    def list_audit_events():
        _audit_access(authenticate("ehr"), write=False)
        patient = request.args.get("patient")
        found = [e for e in runtime().audit_events if patient is None or any(
            (ent.get("what") or {}).get("reference") == f"Patient/{patient}" for ent in e.get("entity", []))]
        return fhir_response({"resourceType": "Bundle", "type": "searchset", "total": len(found),
                              "entry": [{"fullUrl": f"{base_of()}/AuditEvent/{e['id']}", "resource": e,
                                         "search": {"mode": "match"}} for e in found]})
