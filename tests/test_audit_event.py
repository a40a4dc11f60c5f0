"""The audit event's BALP shape (FHIR R4 AuditEvent) and the CDS cards' wording rules, as tables."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.audit_event import AuditEvent
from app.cds_cards import DraftOrder, ago, contrast, draft_from_resource
from app.series_facts import describe

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def test_a_read_is_a_balp_patient_read_with_user_client_server_and_entities():
    event = AuditEvent("open-viewer", "pat-1", "https://ehr/fhir/Practitioner/dr", client_id="imaging-timeline",
                       address="10.1.2.3", studies=("1.2.3", "1.2.4"), archive="pacs", recorded=T0)
    fhir = event.to_fhir()
    assert fhir["meta"]["profile"] == ["https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit."
                                       "PatientRead"]
    assert fhir["type"] == {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest",
                            "display": "Restful Operation"}
    assert fhir["subtype"] == [{"system": "http://hl7.org/fhir/restful-interaction", "code": "read"}]
    assert (fhir["action"], fhir["outcome"], fhir["recorded"]) == ("R", "0", "2026-12-01T09:00:00.000000Z")
    user, client, server = fhir["agent"]
    assert user["who"] == {"identifier": {"value": "https://ehr/fhir/Practitioner/dr"}} and user["requestor"]
    assert user["network"] == {"address": "10.1.2.3", "type": "2"}
    assert client["who"] == {"display": "imaging-timeline"} and client["type"]["coding"][0]["code"] == "110153"
    assert server["type"]["coding"][0]["code"] == "110152"
    patient, *studies = fhir["entity"]
    assert patient["what"] == {"reference": "Patient/pat-1"} and patient["role"]["code"] == "1"
    assert [s["what"]["identifier"]["value"] for s in studies] == ["urn:oid:1.2.3", "urn:oid:1.2.4"]
    assert all(s["role"]["code"] == "4" and s["detail"] == [{"type": "archive", "valueString": "pacs"}]
               for s in studies)


def test_a_study_list_is_a_balp_patient_query_with_its_query_entity():
    fhir = AuditEvent("list-studies", "pat-1", None, studies=("1.2.3",), archive="outside",
                      outcome="minor-failure", recorded=T0).to_fhir()
    assert fhir["meta"]["profile"][0].endswith("PatientQuery")
    assert (fhir["action"], fhir["outcome"], fhir["subtype"][0]["code"]) == ("E", "4", "search-type")
    assert fhir["entity"][-1]["role"]["code"] == "24" and fhir["entity"][-1]["query"]


def test_a_report_read_names_the_report():
    fhir = AuditEvent("read-report", "pat-1", "u", reports=("rep-9",), studies=("1.2.3",), recorded=T0).to_fhir()
    assert {"reference": "DiagnosticReport/rep-9"} in [e["what"] for e in fhir["entity"]]


@pytest.mark.parametrize(("description", "said"), [
    ("CT ABD/PELVIS W CONTRAST", "with contrast"),
    ("CT CHEST WITH CONTRAST", "with contrast"),
    ("CT HEAD WO CONTRAST", "without contrast"),
    ("MRI BRAIN W/WO CONTRAST", "with and without contrast"),
    ("CT CHEST W/O CONTRAST", "without contrast"),
    ("CT C+ ABDOMEN", "with contrast"),
    ("XR CHEST 2 VIEWS", None),
    (None, None),
])
def test_contrast_is_read_from_the_description(description, said):
    assert contrast(description) == said


@pytest.mark.parametrize(("delta", "text"), [
    (timedelta(seconds=20), "just now"), (timedelta(minutes=5), "5 min ago"), (timedelta(hours=6), "6 h ago"),
    (timedelta(days=3), "3 days ago"), (timedelta(days=240), "8 months ago"), (timedelta(days=800), "2 years ago"),
])
def test_ages_are_said_plainly(delta, text):
    assert ago(T0 - delta, T0) == text


@pytest.mark.parametrize(("code", "modalities"), [
    ({"text": "CT head"}, ("CT",)), ({"text": "MRI knee left"}, ("MR",)), ({"text": "US abdomen"}, ("US",)),
    ({"text": "XR chest 2 views"}, ("DX", "CR")), ({"text": "PET/CT skull base to thigh"}, ("PT", "CT")),
    ({"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "74177"}]}, ("CT",)),
    ({"coding": [{"system": "http://loinc.org", "code": "24590-2"}]}, ("MR",)),
    ({"text": "please advise"}, ()),
])
def test_a_draft_orders_modality_comes_from_its_code_or_text(code, modalities):
    draft = draft_from_resource({"resourceType": "ServiceRequest", "id": "d", "code": code})
    assert isinstance(draft, DraftOrder) and draft.modalities == modalities


@pytest.mark.parametrize("resource", [
    {"resourceType": "MedicationRequest", "id": "m"},
    {"resourceType": "ServiceRequest", "id": "d"},
    {"resourceType": "ServiceRequest", "code": {"text": "CT head"}},
])
def test_something_that_is_not_an_imaging_draft_is_ignored(resource):
    assert draft_from_resource(resource) is None


@pytest.mark.parametrize(("values", "text"), [
    ((), None), ((5.0,), "5 mm slices"), ((1.25, 5.0), "1.25 to 5 mm slices"),
])
def test_slice_thickness_is_said_as_one_value_or_a_range(values, text):
    assert describe(values) == text
