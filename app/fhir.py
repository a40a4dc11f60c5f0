"""Reads from the launching EHR's FHIR server: the Patient header, with clear errors."""

from __future__ import annotations

import logging
import re
from datetime import date

import requests
from fhirclient.models.patient import Patient

from .errors import FhirAccessDenied, FhirError, FhirNotFound, FhirUnauthorized
from .models import Identifier, PatientSummary
from .smart import get_json

log = logging.getLogger(__name__)

# FHIR R4 §2.26.0.1 "id": 1-64 of [A-Za-z0-9-.]
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def is_fhir_id(value: object) -> bool:
    return isinstance(value, str) and bool(FHIR_ID.match(value))


def human_name(patient: Patient) -> str:
    """The official (else first) name as "Given Family", or the text form."""
    names = patient.name or []
    chosen = next((n for n in names if n.use == "official"), names[0] if names else None)
    if chosen is None:
        return "(no name recorded)"
    if chosen.text and not (chosen.given or chosen.family):
        return chosen.text
    return " ".join([*(chosen.given or []), chosen.family or ""]).strip() or (chosen.text or "(no name recorded)")


def to_summary(resource: dict) -> PatientSummary:
    """A lenient parse of a FHIR Patient (real EHR data is messy) into a PatientSummary."""
    patient = Patient(resource, strict=False)
    birth: date | None = None
    if patient.birthDate is not None and isinstance(patient.birthDate.date, date):
        birth = patient.birthDate.date
    idents = tuple(
        Identifier(i.system, i.value) for i in (patient.identifier or []) if i.system and i.value
    )
    return PatientSummary(id=patient.id or "", name=human_name(patient), birth_date=birth,
                          sex=patient.gender, identifiers=idents)


def read_patient(http: requests.Session, iss: str, patient_id: str, access_token: str, *,
                 timeout: float) -> PatientSummary:
    """GET Patient/{id} from the EHR with the clinician's token."""
    if not is_fhir_id(patient_id):
        raise FhirError(f"The EHR named the patient {patient_id!r}, which is not a valid FHIR id. Tell your "
                        "administrator; the EHR's launch context is misconfigured.")
    url = f"{iss.rstrip('/')}/Patient/{patient_id}"
    try:
        status, body = get_json(http, url, timeout=timeout, accept="application/fhir+json",
                                headers={"Authorization": f"Bearer {access_token}"})
    except requests.RequestException as exc:
        raise FhirError(f"Could not reach the EHR's FHIR server at {iss} ({type(exc).__name__}). Check the "
                        "network and relaunch from the chart.") from exc
    except ValueError as exc:
        raise FhirError(f"The EHR's Patient record is unreasonably large ({exc}).") from exc
    if status == 401:
        raise FhirUnauthorized("The EHR did not accept the app's access token when reading the patient "
                               "(HTTP 401). Relaunch the app from the patient's chart.")
    if status == 403:
        raise FhirAccessDenied("The EHR refused access to this patient's record (HTTP 403). You may not have "
                               "permission for this patient, or the app was not granted patient/Patient.rs.")
    if status == 404:
        raise FhirNotFound(f"The EHR has no patient with id {patient_id} (HTTP 404). Relaunch from the chart.")
    if status != 200 or not isinstance(body, dict) or body.get("resourceType") != "Patient":
        raise FhirError(f"The EHR answered HTTP {status} with no usable Patient resource. Tell your "
                        "administrator.")
    summary = to_summary(body)
    if summary.id != patient_id:
        raise FhirError("The EHR returned a different patient than the one launched; nothing is shown. "
                        "Tell your administrator.", log_detail="Patient.id mismatch")
    return summary
