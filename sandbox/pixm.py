"""A sandbox IHE PIXm manager (ITI-83 "Mobile Patient Identifier Cross-reference Query").

`GET /pixm/Patient/$ihe-pix?sourceIdentifier=<system>|<value>[&targetSystem=<system>]` answers a
FHIR Parameters resource with one `targetIdentifier` per other identifier of that patient (the
EHR MRN and the outside facility's MRN), 404 when the source identifier is unknown and 400 when it
is malformed. It knows cross-references the EHR's own Patient records may lack (Devendra Patel's
outside MRN). No authentication, like the sandbox DICOMweb archive.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from .data import MRN_SYSTEM, OUTSIDE_SYSTEM
from .runtime import runtime

bp = Blueprint("pixm", __name__, url_prefix="/pixm")


def _outcome(status: int, code: str, text: str) -> Response:
    resp = jsonify({"resourceType": "OperationOutcome",
                    "issue": [{"severity": "error", "code": code, "diagnostics": text}]})
    resp.status_code = status
    resp.mimetype = "application/fhir+json"
    return resp


@bp.get("/Patient/$ihe-pix")
def ihe_pix() -> Response:
    system, _, value = request.args.get("sourceIdentifier", "").partition("|")
    if not system or not value:
        return _outcome(400, "required", "sourceIdentifier must be <system>|<value>")
    patient = next((p for p in runtime().data.patients
                    if (system == MRN_SYSTEM and p.mrn == value)
                    or (system == OUTSIDE_SYSTEM and p.outside_mrn == value)), None)
    if patient is None:
        return _outcome(404, "not-found", "sourceIdentifier is not known to this manager")
    known = [(MRN_SYSTEM, patient.mrn)] + ([(OUTSIDE_SYSTEM, patient.outside_mrn)] if patient.outside_mrn else [])
    wanted = set(request.args.getlist("targetSystem"))
    parameters: list[dict[str, Any]] = [
        {"name": "targetIdentifier", "valueIdentifier": {"system": s, "value": v}}
        for s, v in known if (s, v) != (system, value) and (not wanted or s in wanted)
    ]
    resp = jsonify({"resourceType": "Parameters", "parameter": parameters})
    resp.mimetype = "application/fhir+json"
    return resp
