"""FHIR R4 resources (JSON dicts) of the sandbox EHR and outside facility, built once from the data.

Each standard resource is checked once with fhirclient's models (``strict=True``), so the sandbox
cannot serve a structurally invalid resource. References are relative (``Patient/pat-amy``); the
one absolute value, the sandbox archive's Endpoint address, is only known per request and is
filled in by the API layer (see ``ADDRESS_PLACEHOLDERS``).
"""

from __future__ import annotations

import base64
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from fhirclient.models.binary import Binary
from fhirclient.models.diagnosticreport import DiagnosticReport
from fhirclient.models.documentreference import DocumentReference
from fhirclient.models.encounter import Encounter
from fhirclient.models.endpoint import Endpoint
from fhirclient.models.imagingstudy import ImagingStudy
from fhirclient.models.patient import Patient
from fhirclient.models.practitioner import Practitioner
from fhirclient.models.servicerequest import ServiceRequest

from . import report_docs
from .data import (
    ACCESSION_SYSTEM,
    DICOM_DCM,
    DICOM_UID_SYSTEM,
    EHR_INSTITUTION,
    EHR_PACS_ENDPOINT,
    FOREIGN_PACS_ADDRESS,
    FOREIGN_PACS_ENDPOINT,
    INTERPRETATION,
    LOINC,
    MRN_SYSTEM,
    OUTSIDE_ACCESSION_SYSTEM,
    OUTSIDE_INSTITUTION,
    OUTSIDE_PACS_ENDPOINT,
    OUTSIDE_SYSTEM,
    PRACTITIONER_ID,
    SNOMED,
    V2_0203,
    Code,
    SandboxData,
    SandboxPatient,
    SandboxStudy,
)

log = logging.getLogger(__name__)

MODELS = {"Patient": Patient, "Practitioner": Practitioner, "Encounter": Encounter, "ImagingStudy": ImagingStudy,
          "DiagnosticReport": DiagnosticReport, "ServiceRequest": ServiceRequest, "Endpoint": Endpoint,
          "DocumentReference": DocumentReference, "Binary": Binary}
DICOMWEB_PLACEHOLDER = "sandbox:dicomweb"
ADDRESS_PLACEHOLDERS = (DICOMWEB_PLACEHOLDER,)
INTERPRETATION_TEXT = {"N": "Normal", "A": "Abnormal", "AA": "Critical abnormal"}


@dataclass
class ResourceIndex:
    """One FHIR server's resources: by type and id, with each one's patient (compartment owner)."""

    resources: dict[str, dict[str, dict[str, Any]]] = field(default_factory=lambda: defaultdict(dict))
    owner: dict[tuple[str, str], str] = field(default_factory=dict)
    by_patient: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))

    def add(self, resource: dict[str, Any], patient_id: str | None = None) -> None:
        rtype, rid = resource["resourceType"], resource["id"]
        self.resources[rtype][rid] = resource
        if patient_id:
            self.owner[(rtype, rid)] = patient_id
            self.by_patient[(rtype, patient_id)].append(resource)

    def get(self, rtype: str, rid: str) -> dict[str, Any] | None:
        return self.resources.get(rtype, {}).get(rid)

    def all(self, rtype: str) -> list[dict[str, Any]]:
        return list(self.resources.get(rtype, {}).values())


def _coding(code: Code) -> dict[str, str]:
    return {"system": code.system, "code": code.code, "display": code.display}


def _identifier(system: str, value: str, type_code: str | None = None) -> dict[str, Any]:
    ident: dict[str, Any] = {"system": system, "value": value}
    if type_code:
        ident["type"] = {"coding": [{"system": V2_0203, "code": type_code}]}
    return ident


def _accession(study: SandboxStudy, outside: bool) -> dict[str, Any]:
    ident = _identifier(OUTSIDE_ACCESSION_SYSTEM if outside else ACCESSION_SYSTEM, study.accession, "ACSN")
    ident["assigner"] = {"display": study.institution}
    return ident


def _pn_display(pn: str) -> str:
    family, _, given = pn.partition("^")
    return f"{given.title()} {family.title()}".strip()


def patient_resource(p: SandboxPatient, outside: bool = False) -> dict[str, Any]:
    family = (p.outside_family or p.family) if outside else p.family
    given = list((p.outside_given or p.given) if outside else p.given)
    if outside:
        identifiers = [_identifier(OUTSIDE_SYSTEM, p.outside_mrn or "", "MR")]
    else:
        identifiers = [_identifier(MRN_SYSTEM, p.mrn, "MR")]
        if p.outside_mrn and p.outside_mrn_in_ehr:
            ident = _identifier(OUTSIDE_SYSTEM, p.outside_mrn, "MR")
            ident["assigner"] = {"display": OUTSIDE_INSTITUTION}
            identifiers.append(ident)
    return {
        "resourceType": "Patient", "id": p.outside_id if outside else p.id, "active": True,
        "identifier": identifiers,
        "name": [{"use": "official", "family": family, "given": given, "text": " ".join([*given, family])}],
        "gender": p.gender, "birthDate": p.birth_date.isoformat(),
    }


def practitioner_resource() -> dict[str, Any]:
    return {"resourceType": "Practitioner", "id": PRACTITIONER_ID, "active": True,
            "name": [{"use": "official", "family": "Radiant", "given": ["Jane"], "prefix": ["Dr."],
                      "text": "Dr. Jane Radiant"}]}


REQUIRES_ACCESS_TOKEN = "http://fhir.org/argonaut/smart-imaging/StructureDefinition/requires-access-token"


def endpoint_resource(eid: str, name: str, address: str, requires_token: bool | None = None) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Endpoint", "id": eid, "status": "active", "name": name,
        "connectionType": {"system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                           "code": "dicom-wado-rs"},
        "payloadType": [{"text": "DICOM"}], "payloadMimeType": ["application/dicom"], "address": address,
    }
    if requires_token is not None:  # SMART Imaging Access (Argonaut draft) Endpoint extension
        res["extension"] = [{"url": REQUIRES_ACCESS_TOKEN, "valueBoolean": requires_token}]
    return res


def imaging_study_resource(study: SandboxStudy, *, outside: bool) -> dict[str, Any]:
    subject = study.outside_patient_id if outside else study.patient_id
    res: dict[str, Any] = {
        "resourceType": "ImagingStudy", "id": f"{'osh-' if outside else ''}is-{study.key}",
        "identifier": [{"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study.uid}"}, _accession(study, outside)],
        "status": "available", "subject": {"reference": f"Patient/{subject}"},
        "started": study.started.isoformat(),
        "modality": [{"system": DICOM_DCM, "code": m} for m in study.modalities],
        "numberOfSeries": len(study.series), "numberOfInstances": study.instance_count,
        "procedureCode": [{"coding": [_coding(study.procedure)], "text": study.procedure.display}],
        "reasonCode": [{"text": study.reason}], "description": study.description,
        "referrer": {"display": _pn_display(study.referrer)},
        "location": {"display": study.institution},
        "series": [{
            "uid": s.uid, "number": s.number, "modality": {"system": DICOM_DCM, "code": s.modality},
            "description": s.description, "numberOfInstances": s.instances,
            "bodySite": {"system": SNOMED, "code": s.body_site.snomed, "display": s.body_site.display},
        } for s in study.series],
    }
    endpoint = study.outside_endpoint if outside else (EHR_PACS_ENDPOINT if "pacs" in study.locations else None)
    if endpoint:
        res["endpoint"] = [{"reference": f"Endpoint/{endpoint}"}]
    if study.order and not outside:
        res["basedOn"] = [{"reference": f"ServiceRequest/{study.order.id}"}]
    return res


def report_resource(study: SandboxStudy, *, outside: bool, imaging_study_id: str | None) -> dict[str, Any]:
    report = study.report
    if report is None:
        raise ValueError(f"study {study.key} has no report")
    subject = study.outside_patient_id if outside else study.patient_id
    codes = [{"system": INTERPRETATION, "code": report.interpretation,
              "display": INTERPRETATION_TEXT[report.interpretation]}]
    conclusion_code = [{"coding": codes, "text": INTERPRETATION_TEXT[report.interpretation]}]
    if report.finding:
        conclusion_code.append({"coding": [_coding(report.finding)], "text": report.finding.display})
    res: dict[str, Any] = {
        "resourceType": "DiagnosticReport", "id": f"{'osh-' if outside else ''}{report.id}",
        "identifier": [_accession(study, outside)], "status": report.status,
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD",
                                  "display": "Radiology"}]}],
        "code": {"coding": [_coding(study.procedure)], "text": study.procedure.display},
        "subject": {"reference": f"Patient/{subject}"},
        "effectiveDateTime": study.started.isoformat(), "issued": report.issued.isoformat(),
        "performer": [{"display": study.institution}],
        "conclusion": report.conclusion, "conclusionCode": conclusion_code,
    }
    if not report.conclusion:  # FHIR strings are never empty: an empty conclusion is an absent one
        del res["conclusion"]
    if not outside:
        res["resultsInterpreter"] = [{"reference": f"Practitioner/{PRACTITIONER_ID}", "display": "Dr. Jane Radiant"}]
    res["presentedForm"] = [form for form, _ in presented_forms(study, res["id"])]
    if imaging_study_id is not None:
        res["imagingStudy"] = [{"reference": f"ImagingStudy/{imaging_study_id}"}]
    if study.order and not outside:
        res["basedOn"] = [{"reference": f"ServiceRequest/{study.order.id}"}]
    return res


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode("ascii")


def _binary(bid: str, content_type: str, data: str | bytes, context: str) -> dict[str, Any]:
    return {"resourceType": "Binary", "id": bid, "contentType": content_type,
            "securityContext": {"reference": context}, "data": _b64(data)}


def presented_forms(study: SandboxStudy, report_id: str,
                    rtype: str = "DiagnosticReport") -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """(Attachment, Binary or None) per form: text inline; HTML, PDF and RTF as Binary URLs; an addendum inline."""
    report = study.report
    if report is None or report.form == "none":
        return []
    issued = report.issued.isoformat()
    context = f"{rtype}/{report_id}"
    bodies: dict[str, tuple[str, Callable[[], str | bytes]]] = {
              "html": ("text/html; charset=utf-8", lambda: report_docs.report_html(study)),
              "pdf": ("application/pdf", lambda: report_docs.report_pdf(study)),
              "rtf": ("text/rtf", lambda: report_docs.report_rtf(study))}
    out: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
    if report.form in bodies:
        ctype, make = bodies[report.form]
        bid = f"bin-{report_id}"
        out.append(({"contentType": ctype, "url": f"Binary/{bid}", "title": "Report", "creation": issued},
                    _binary(bid, ctype.split(";")[0], make(), context)))
    else:
        out.append(({"contentType": "text/plain; charset=utf-8", "title": "Report", "creation": issued,
                     "data": _b64(report_docs.report_text(study))}, None))
    addendum = report_docs.addendum_text(study)
    if addendum:
        later = (report.issued + timedelta(days=2)).isoformat()
        out.append(({"contentType": "text/plain; charset=utf-8", "title": "Addendum", "creation": later,
                     "data": _b64(addendum)}, None))
    return out


def document_resource(study: SandboxStudy, imaging_study_id: str | None) -> dict[str, Any]:
    """A US Core radiology note (DocumentReference) standing for the report: no DiagnosticReport exists."""
    report = study.report
    if report is None:
        raise ValueError(f"study {study.key} has no report")
    did = f"doc-{study.key}"
    form, _ = presented_forms(study, did, "DocumentReference")[0]
    if "data" in form:  # a note's body is a Binary (US Core clinical notes), not inline
        form = {**form, "url": f"Binary/bin-{did}"}
        del form["data"]
    res: dict[str, Any] = {
        "resourceType": "DocumentReference", "id": did, "status": "current", "docStatus": "final",
        "identifier": [_accession(study, False)],
        "type": {"coding": [{"system": LOINC, "code": "18748-4", "display": "Diagnostic imaging study"}],
                 "text": f"{study.procedure.display} report"},
        "category": [{"coding": [{"system": LOINC, "code": "LP29684-5", "display": "Radiology"}]}],
        "subject": {"reference": f"Patient/{study.patient_id}"}, "date": report.issued.isoformat(),
        "author": [{"reference": f"Practitioner/{PRACTITIONER_ID}", "display": "Dr. Jane Radiant"}],
        "description": report.conclusion or None,
        "content": [{"attachment": form}],
        "context": {"period": {"start": study.started.isoformat()},
                    "event": [{"coding": [{"system": DICOM_DCM, "code": m}]} for m in study.modalities]},
    }
    if imaging_study_id:
        res["context"]["related"] = [{"reference": f"ImagingStudy/{imaging_study_id}"}]
    if not res["description"]:
        del res["description"]
    return res


def document_binary(study: SandboxStudy) -> dict[str, Any]:
    did = f"doc-{study.key}"
    _, binary = presented_forms(study, did, "DocumentReference")[0]
    if binary is not None:
        return binary
    return _binary(f"bin-{did}", "text/plain", report_docs.report_text(study), f"DocumentReference/{did}")


def order_resource(order_id: str, priority: str, status: str, authored: str, reason: str, code: Code,
                   patient_id: str, accession: str | None, encounter: str | None = None, *,
                   occurrence: str | None = None, location: str | None = None) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "ServiceRequest", "id": order_id, "status": status, "intent": "order",
        "priority": priority,
        "category": [{"coding": [{"system": SNOMED, "code": "363679005", "display": "Imaging"}]}],
        "code": {"coding": [_coding(code)], "text": code.display},
        "subject": {"reference": f"Patient/{patient_id}"}, "authoredOn": authored,
        "requester": {"reference": f"Practitioner/{PRACTITIONER_ID}", "display": "Dr. Jane Radiant"},
        "reasonCode": [{"text": reason}],
    }
    if accession:
        ident = _identifier(ACCESSION_SYSTEM, accession, "ACSN")
        ident["assigner"] = {"display": EHR_INSTITUTION}
        res["identifier"] = [ident]
    if encounter:
        res["encounter"] = {"reference": f"Encounter/{encounter}"}
    if occurrence:
        res["occurrenceDateTime"] = occurrence
    if location:
        res["locationReference"] = [{"display": location}]
    return res


def _validate(resource: dict[str, Any]) -> None:
    MODELS[resource["resourceType"]](resource, strict=True)


def build_ehr(data: SandboxData, *, validate: bool = True) -> ResourceIndex:
    """The EHR FHIR server: patients, studies, reports, orders, encounters, one Endpoint."""
    index = ResourceIndex()
    index.add(practitioner_resource())
    # The EHR's own PACS endpoint, on the EHR's origin, reached with the clinician's token.
    index.add(endpoint_resource(EHR_PACS_ENDPOINT, "Sandbox PACS (DICOMweb)", DICOMWEB_PLACEHOLDER, True))
    for p in data.patients:
        index.add(patient_resource(p), p.id)
        if p.encounter_id:
            index.add({"resourceType": "Encounter", "id": p.encounter_id, "status": "in-progress",
                       "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "EMER",
                                 "display": "emergency"},
                       "subject": {"reference": f"Patient/{p.id}"}}, p.id)
    for study in (*data.studies_in("ehr"), *data.studies_in("ehr-report")):
        pid = study.patient_id or ""
        patient = data.patient(pid)
        imaging_id = None
        if "ehr" in study.locations:
            imaging = imaging_study_resource(study, outside=False)
            index.add(imaging, pid)
            imaging_id = imaging["id"]
        # "ehr-report": like many EHRs, this one keeps the report and order but no ImagingStudy;
        # the images are in the PACS and only the accession number ties them together.
        if study.report and study.report.resource == "DocumentReference":
            index.add(document_resource(study, imaging_id), pid)
            index.add(document_binary(study), pid)
        elif study.report:
            report = report_resource(study, outside=False, imaging_study_id=imaging_id)
            index.add(report, pid)
            for _, binary in presented_forms(study, report["id"]):
                if binary is not None:
                    index.add(binary, pid)
        if study.order:
            o = study.order
            encounter = patient.encounter_id if patient and o.priority == "stat" else None
            index.add(order_resource(o.id, o.priority, o.status, o.authored.isoformat(), o.reason,
                                     study.procedure, pid, study.accession, encounter), pid)
    for standalone in data.orders:
        o = standalone.order
        index.add(order_resource(o.id, o.priority, o.status, o.authored.isoformat(), o.reason,
                                 standalone.procedure, standalone.patient_id, None,
                                 occurrence=standalone.scheduled_for.isoformat() if standalone.scheduled_for else None,
                                 location=standalone.location), standalone.patient_id)
    if validate:
        for rtype in MODELS:
            for resource in index.all(rtype):
                _validate(resource)
    return index


def build_outside(data: SandboxData, *, validate: bool = True) -> ResourceIndex:
    """The outside facility's FHIR server: its own Patient ids, studies with Endpoint references."""
    index = ResourceIndex()
    index.add(endpoint_resource(OUTSIDE_PACS_ENDPOINT, "Riverside images (shared archive)", DICOMWEB_PLACEHOLDER))
    index.add(endpoint_resource(FOREIGN_PACS_ENDPOINT, "Riverside legacy PACS", FOREIGN_PACS_ADDRESS))
    for p in data.patients:
        if p.outside_id:
            index.add(patient_resource(p, outside=True), p.outside_id)
    for study in data.studies_in("outside"):
        pid = study.outside_patient_id or ""
        imaging = imaging_study_resource(study, outside=True)
        index.add(imaging, pid)
        if study.report:
            index.add(report_resource(study, outside=True, imaging_study_id=imaging["id"]), pid)
    if validate:
        for rtype in MODELS:
            for resource in index.all(rtype):
                _validate(resource)
    return index
