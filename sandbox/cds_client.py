"""The sandbox EHR as a CDS Hooks 2.0 client: it calls the app's CDS services exactly as an EHR would.

Each call is signed (CDS Hooks 2.0 "Trusting CDS Clients"): a JWT with iss = the sandbox's base URL,
aud = the service's URL, a 5-minute exp, a fresh jti and the `jku` of the sandbox's JWKS, signed
with the sandbox's own key. The request carries `fhirServer`, a `fhirAuthorization` access token
issued for the app and limited to the patient (`patient` set), and the Patient as `prefetch`.

``GET /cds?hook=patient-view&patient=<id>`` and ``GET /cds?hook=order-select&patient=<id>&code=<code or
text>`` return the service's JSON response (status passed through); the chart shows the cards.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
import uuid
from typing import Any

import requests
from flask import Blueprint, Response, jsonify, redirect, request, url_for
from joserfc import jwt

from .data import PRACTITIONER_ID
from .runtime import fhir_base, runtime
from .store import GrantUser, Token

log = logging.getLogger(__name__)
bp = Blueprint("cds_client", __name__)

HOOKS = {"patient-view": "patient-view", "order-select": "order-select", "order-sign": "order-sign"}
CDS_SCOPE = "patient/Patient.rs patient/ImagingStudy.rs patient/DiagnosticReport.rs patient/ServiceRequest.rs " \
            "patient/Endpoint.rs"
LOINC = re.compile(r"^\d{3,6}-\d$")
CPT = re.compile(r"^\d{5}$")
TIMEOUT_S = 10.0


class CdsCallError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def services_url() -> str | None:
    return runtime().config.cds_services_url


def _sandbox_iss() -> str:
    return url_for("chart.chart", _external=True).rstrip("/")


def signed_jwt(audience: str) -> str:
    rt = runtime()
    now = int(rt.clock())
    header = {"alg": "RS256", "typ": "JWT", "kid": rt.id_token_key.kid or "",
              "jku": url_for("auth.jwks", _external=True)}
    claims = {"iss": _sandbox_iss(), "aud": audience, "exp": now + 300, "iat": now, "jti": secrets.token_urlsafe(24)}
    return jwt.encode(header, claims, rt.id_token_key, algorithms=["RS256"])


def _fhir_authorization(patient_id: str) -> dict[str, Any]:
    """An access token for the app, limited to this patient, as the EHR issues for a CDS call."""
    rt = runtime()
    token = Token(secrets.token_urlsafe(32), client_id="imaging-timeline", scope=CDS_SCOPE, grant_type="cds-hooks",
                  issued_at=rt.clock(), expires_in=300, clock=rt.clock,
                  user=GrantUser(practitioner_id=PRACTITIONER_ID, patient_id=patient_id))
    rt.store.add_token(token)
    return {"access_token": token.access_token, "token_type": "Bearer", "expires_in": 300, "scope": CDS_SCOPE,
            "subject": "imaging-timeline", "patient": patient_id}


def draft_order(patient_id: str, code: str) -> dict[str, Any]:
    """A draft imaging ServiceRequest for `code`: a LOINC or CPT code, or free text."""
    code = code.strip()[:120]
    if LOINC.match(code):
        concept: dict[str, Any] = {"coding": [{"system": "http://loinc.org", "code": code}]}
    elif CPT.match(code):
        concept = {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": code}]}
    else:
        concept = {"text": code}
    return {"resourceType": "ServiceRequest", "id": f"draft-{uuid.uuid4().hex[:12]}", "status": "draft",
            "intent": "proposal", "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "363679005",
                                                            "display": "Imaging"}]}],
            "code": concept, "subject": {"reference": f"Patient/{patient_id}"},
            "requester": {"reference": f"Practitioner/{PRACTITIONER_ID}"}}


def _service_for(base: str, hook: str) -> str:
    """The service id for `hook` from the service's discovery document (CDS Hooks 2.0 §"Discovery")."""
    resp = runtime().http.get(base, timeout=TIMEOUT_S, allow_redirects=False, headers={"Accept": "application/json"})
    if resp.status_code != 200:
        raise CdsCallError(502, f"CDS discovery at {base} answered HTTP {resp.status_code}.")
    for service in resp.json().get("services", []):
        if service.get("hook") == hook:
            return str(service["id"])
    raise CdsCallError(404, f"The CDS service offers no {hook} service.")


def call(hook: str, patient_id: str, code: str | None = None) -> tuple[int, Any, dict[str, Any]]:
    """Call the app's service for `hook`; (HTTP status, its JSON, the request sent)."""
    base = services_url()
    if not base:
        raise CdsCallError(404, "This sandbox has no CDS service configured (SandboxConfig.cds_services_url).")
    rt = runtime()
    patient = rt.ehr.get("Patient", patient_id)
    if patient is None:
        raise CdsCallError(404, "That patient is not in this sandbox EHR.")
    service_id = _service_for(base, hook)
    context: dict[str, Any] = {"userId": f"Practitioner/{PRACTITIONER_ID}", "patientId": patient_id}
    if hook in ("order-select", "order-sign"):
        if not code:
            raise CdsCallError(400, f"{hook} needs code=<procedure code or text> for the draft order.")
        draft = draft_order(patient_id, code)
        context["draftOrders"] = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": draft}]}
        if hook == "order-select":
            context["selections"] = [f"ServiceRequest/{draft['id']}"]
    body = {"hook": hook, "hookInstance": str(uuid.uuid4()), "fhirServer": fhir_base(),
            "fhirAuthorization": _fhir_authorization(patient_id), "context": context,
            "prefetch": {"patient": patient}}
    url = f"{base.rstrip('/')}/{service_id}"
    started = time.monotonic()
    resp = rt.http.post(url, json=body, timeout=TIMEOUT_S, allow_redirects=False,
                        headers={"Authorization": f"Bearer {signed_jwt(url)}", "Accept": "application/json"})
    log.info("CDS %s answered %s in %.0f ms", hook, resp.status_code, 1000 * (time.monotonic() - started))
    try:
        answer = resp.json()
    except ValueError:
        answer = {"error": f"the CDS service answered HTTP {resp.status_code} without JSON"}
    return resp.status_code, answer, {**body, "service": service_id}


def send_feedback(service_id: str, card_uuid: str, suggestion_uuid: str | None, outcome: str) -> int:
    """CDS Hooks 2.0 §"Feedback": tell the service what the clinician did with a card."""
    base = services_url()
    if not base:
        return 404
    url = f"{base.rstrip('/')}/{service_id}/feedback"
    item: dict[str, Any] = {"card": card_uuid, "outcome": outcome,
                            "outcomeTimestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if suggestion_uuid and outcome == "accepted":
        item["acceptedSuggestions"] = [{"id": suggestion_uuid}]
    resp = runtime().http.post(url, json={"feedback": [item]}, timeout=TIMEOUT_S, allow_redirects=False,
                               headers={"Authorization": f"Bearer {signed_jwt(url)}"})
    return resp.status_code


@bp.get("/cds")
def cds() -> Response:
    """Call the app's CDS service as the EHR would; answers with the service's own JSON response."""
    hook = request.args.get("hook", "")
    if hook not in HOOKS:
        return jsonify({"error": f"hook must be one of {', '.join(HOOKS)}"}), 400  # type: ignore[return-value]
    try:
        status, answer, _ = call(hook, request.args.get("patient", ""), request.args.get("code"))
    except CdsCallError as exc:
        return jsonify({"error": exc.message}), exc.status  # type: ignore[return-value]
    except requests.RequestException as exc:
        return jsonify({"error": f"the CDS service could not be reached ({type(exc).__name__})"}), 502  # type: ignore[return-value]
    return jsonify(answer), status  # type: ignore[return-value]


@bp.post("/cds/feedback")
def feedback():
    """The chart's "Cancel the draft order" button: the suggestion was taken; tell the service."""
    patient = request.form.get("patient", "")
    service = request.form.get("service", "")
    card, suggestion = request.form.get("card", ""), request.form.get("suggestion") or None
    outcome = "accepted" if request.form.get("outcome") == "accepted" else "overridden"
    try:
        send_feedback(service, card, suggestion, outcome)
    except requests.RequestException as exc:
        log.warning("CDS feedback not delivered: %s", type(exc).__name__)
    return redirect(url_for("chart.cds_panel", patient=patient, cancelled="1" if outcome == "accepted" else None),
                    303)
