"""The sandbox FHIR servers (EHR and outside facility) enforce tokens, scopes and the patient compartment."""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import requests

from sandbox.data import FOREIGN_PACS_ADDRESS, MRN_SYSTEM, OUTSIDE_SYSTEM, PATIENTS, study_uid
from tests.test_sandbox_support import NARROW, Sandbox, backend_token, ehr_launch, running_sandbox

FHIR_JSON = "application/fhir+json"


@pytest.fixture(scope="module")
def sb() -> Iterator[Sandbox]:
    with running_sandbox() as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def amy(sb: Sandbox) -> str:
    return ehr_launch(sb, "pat-amy")["access_token"]


@pytest.fixture(scope="module")
def system(sb: Sandbox) -> str:
    return backend_token(sb)


def _outcome(resp: requests.Response, status: int, code: str) -> str:
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].startswith(FHIR_JSON)
    body = resp.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == code
    return body["issue"][0]["diagnostics"]


def test_no_token_is_401_with_a_bearer_challenge(sb: Sandbox) -> None:
    resp = sb.get(f"{sb.fhir}/ImagingStudy", params={"patient": "pat-amy"})
    _outcome(resp, 401, "login")
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="sandbox-fhir"'


@pytest.mark.parametrize("authorization", ["Bearer not-a-token", "Basic dXNlcjpwYXNz", "Bearer"])
def test_bad_credentials_are_401(sb: Sandbox, authorization: str) -> None:
    resp = sb.get(f"{sb.fhir}/Patient/pat-amy", headers={"Authorization": authorization})
    assert resp.status_code == 401


def test_read_own_patient(sb: Sandbox, amy: str) -> None:
    resp = sb.get(f"{sb.fhir}/Patient/pat-amy", amy)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith(FHIR_JSON)
    patient = resp.json()
    assert {"system": MRN_SYSTEM, "value": "SB100001"}.items() <= patient["identifier"][0].items()
    assert patient["identifier"][1]["system"] == OUTSIDE_SYSTEM


@pytest.mark.parametrize(("path", "params"), [
    ("Patient/pat-ben", {}),
    ("ImagingStudy/is-ben-ldct", {}),
    ("ImagingStudy", {"patient": "pat-ben"}),
    ("ImagingStudy", {"subject": "Patient/pat-ben"}),
    ("ImagingStudy", {"patient": "pat-amy,pat-ben"}),
    ("DiagnosticReport", {"patient.identifier": f"{MRN_SYSTEM}|SB100002"}),
    ("ImagingStudy", {"subject:Patient.identifier": f"{OUTSIDE_SYSTEM}|RRH-550102"}),
    ("Patient", {"identifier": f"{MRN_SYSTEM}|SB100002"}),
    ("Patient", {"_id": "pat-ben"}),
])
def test_patient_token_cannot_reach_another_patient(sb: Sandbox, amy: str, path: str, params: dict) -> None:
    _outcome(sb.get(f"{sb.fhir}/{path}", amy, params=params), 403, "forbidden")


def test_search_without_patient_stays_in_the_compartment(sb: Sandbox, amy: str) -> None:
    bundle = sb.get(f"{sb.fhir}/ImagingStudy", amy, params={"_count": "100"}).json()
    assert bundle["total"] == 4  # Amy's EHR studies only (her archive-only study is not in the EHR)
    assert {e["resource"]["subject"]["reference"] for e in bundle["entry"]} == {"Patient/pat-amy"}


def test_search_by_chained_identifier(sb: Sandbox, amy: str) -> None:
    bundle = sb.get(f"{sb.fhir}/ImagingStudy", amy, params={"patient.identifier": f"{MRN_SYSTEM}|SB100001"}).json()
    assert bundle["type"] == "searchset"
    assert bundle["total"] == 4


def test_missing_scope_is_403(sb: Sandbox) -> None:
    token = ehr_launch(sb, "pat-amy", client_id=NARROW)["access_token"]
    assert sb.get(f"{sb.fhir}/ImagingStudy", token, params={"patient": "pat-amy"}).status_code == 200
    message = _outcome(sb.get(f"{sb.fhir}/DiagnosticReport", token, params={"patient": "pat-amy"}), 403, "forbidden")
    assert message == ("The access token's scopes do not allow search of DiagnosticReport "
                       "(needs a scope such as patient/DiagnosticReport.s).")


def test_read_scope_does_not_allow_search(sb: Sandbox) -> None:
    token = ehr_launch(sb, "pat-amy", scope="launch patient/ImagingStudy.r")["access_token"]
    assert sb.get(f"{sb.fhir}/ImagingStudy/is-amy-mr-knee", token).status_code == 200
    _outcome(sb.get(f"{sb.fhir}/ImagingStudy", token), 403, "forbidden")


def test_unknown_id_is_404(sb: Sandbox, amy: str) -> None:
    assert "ImagingStudy/nope" in _outcome(sb.get(f"{sb.fhir}/ImagingStudy/nope", amy), 404, "not-found")


def test_unknown_type_is_404(sb: Sandbox, amy: str) -> None:
    _outcome(sb.get(f"{sb.fhir}/Observation", amy), 404, "not-supported")


def test_paging_follows_absolute_next_links(sb: Sandbox, system: str) -> None:
    url: str | None = f"{sb.fhir}/DiagnosticReport?patient=pat-ben&_count=2"
    seen, pages = [], 0
    while url:
        assert urlsplit(url).netloc == urlsplit(sb.fhir).netloc
        bundle = sb.get(url, system).json()
        pages += 1
        seen += [e["resource"]["id"] for e in bundle["entry"]]
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
    assert len(seen) == len(set(seen)) == bundle["total"] == 6
    assert pages == 3


def test_sort_and_date_filters(sb: Sandbox, amy: str) -> None:
    bundle = sb.get(f"{sb.fhir}/ImagingStudy", amy, params={"_sort": "-started", "started": "ge2024"}).json()
    started = [e["resource"]["started"] for e in bundle["entry"]]
    assert started == sorted(started, reverse=True)
    assert all(s >= "2024" for s in started)


def test_strict_handling_refuses_unknown_parameters(sb: Sandbox, amy: str) -> None:
    assert sb.get(f"{sb.fhir}/ImagingStudy", amy, params={"bogus": "1"}).status_code == 200
    resp = sb.get(f"{sb.fhir}/ImagingStudy", amy, params={"bogus": "1"}, headers={"Prefer": "handling=strict"})
    assert "bogus" in _outcome(resp, 400, "not-supported")


def test_imaging_study_shape(sb: Sandbox, amy: str) -> None:
    study = sb.get(f"{sb.fhir}/ImagingStudy/is-amy-mr-knee", amy).json()
    assert {"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid('amy-mr-knee')}"} in study["identifier"]
    assert study["identifier"][1]["type"]["coding"][0]["code"] == "ACSN"
    assert study["series"][0]["bodySite"]["system"] == "http://snomed.info/sct"
    assert study["endpoint"] == [{"reference": "Endpoint/sandbox-pacs"}]
    assert study["basedOn"] == [{"reference": "ServiceRequest/sr-amy-mr-knee"}]
    endpoint = sb.get(f"{sb.fhir}/Endpoint/sandbox-pacs", amy).json()
    assert endpoint["address"] == sb.dicomweb


def test_include_endpoints(sb: Sandbox, amy: str) -> None:
    bundle = sb.get(f"{sb.fhir}/ImagingStudy", amy, params={"_include": "ImagingStudy:endpoint"}).json()
    included = [e for e in bundle["entry"] if e["search"]["mode"] == "include"]
    assert [e["resource"]["address"] for e in included] == [sb.dicomweb]


def test_stat_order_without_final_report(sb: Sandbox, system: str) -> None:
    orders = sb.get(f"{sb.fhir}/ServiceRequest", system, params={"patient": "pat-ben", "priority": "stat"}).json()
    assert [e["resource"]["id"] for e in orders["entry"]] == ["sr-ben-ct-head-stat"]
    report = sb.get(f"{sb.fhir}/DiagnosticReport/dr-ben-ct-head-stat", system).json()
    assert report["status"] == "preliminary"


def test_backend_token_reads_any_patient(sb: Sandbox, system: str) -> None:
    assert sb.get(f"{sb.fhir}/Patient/pat-carla", system).status_code == 200
    assert sb.get(f"{sb.fhir}/Patient", system).json()["total"] == len(PATIENTS) + 1  # + pat-faye (reports)


def test_metadata_has_oauth_uris(sb: Sandbox) -> None:
    cap = requests.get(f"{sb.fhir}/metadata", timeout=10).json()
    ext = cap["rest"][0]["security"]["extension"][0]
    assert ext["url"] == "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    assert {e["url"]: e["valueUri"] for e in ext["extension"]} == {
        "authorize": f"{sb.base}/auth/authorize", "token": f"{sb.base}/auth/token"}


# --- outside facility ---------------------------------------------------------------------------


def test_outside_refuses_patient_tokens(sb: Sandbox, amy: str) -> None:
    resp = sb.get(f"{sb.outside}/ImagingStudy", amy, params={"patient.identifier": f"{OUTSIDE_SYSTEM}|RRH-550101"})
    assert "Backend Services" in _outcome(resp, 401, "login")


def test_outside_finds_studies_by_its_identifier(sb: Sandbox, system: str) -> None:
    bundle = sb.get(f"{sb.outside}/ImagingStudy", system,
                    params={"subject:Patient.identifier": f"{OUTSIDE_SYSTEM}|RRH-550105"}).json()
    assert bundle["total"] == 1
    study = bundle["entry"][0]["resource"]
    assert study["subject"] == {"reference": "Patient/rrh-9005"}
    endpoint = sb.get(f"{sb.outside}/{study['endpoint'][0]['reference']}", system).json()
    assert endpoint["address"] == FOREIGN_PACS_ADDRESS
    assert bundle["entry"][0]["fullUrl"].startswith(f"{sb.outside}/ImagingStudy/")


def test_outside_spells_one_name_differently(sb: Sandbox, system: str) -> None:
    bundle = sb.get(f"{sb.outside}/Patient", system, params={"identifier": f"{OUTSIDE_SYSTEM}|RRH-550102"}).json()
    assert bundle["entry"][0]["resource"]["name"][0]["given"] == ["Benjamen"]


def test_outside_has_no_record_of_the_unlinked_patient(sb: Sandbox, system: str) -> None:
    patient = sb.get(f"{sb.fhir}/Patient/pat-carla", system).json()
    assert [i["system"] for i in patient["identifier"]] == [MRN_SYSTEM]


def test_outside_smart_configuration_is_backend_only(sb: Sandbox) -> None:
    doc = requests.get(f"{sb.outside}/.well-known/smart-configuration", timeout=10).json()
    assert doc["token_endpoint"] == sb.token_url
    assert doc["grant_types_supported"] == ["client_credentials"]


# --- faults and latency ---------------------------------------------------------------------------


@pytest.mark.parametrize(("fault", "status"), [("500", 500), ("503", 503), ("401", 401), ("garbage", 200)])
def test_runtime_faults(sb: Sandbox, amy: str, fault: str, status: int) -> None:
    sb.runtime.faults["ehr"] = fault
    try:
        resp = sb.get(f"{sb.fhir}/ImagingStudy", amy)
        metadata = sb.get(f"{sb.fhir}/metadata")
    finally:
        del sb.runtime.faults["ehr"]
    assert resp.status_code == status
    if fault == "garbage":
        with pytest.raises(requests.JSONDecodeError):
            resp.json()
    assert metadata.status_code == 200
    assert sb.get(f"{sb.fhir}/ImagingStudy", amy).status_code == 200


def test_runtime_delay_and_timeout(sb: Sandbox, system: str) -> None:
    rt = sb.runtime
    rt.delays["outside"] = 0.3
    try:
        started = time.monotonic()
        assert sb.get(f"{sb.outside}/Patient", system).status_code == 200
        assert time.monotonic() - started >= 0.3
    finally:
        rt.delays.pop("outside")
    rt.faults["outside"] = "timeout"
    try:
        with pytest.raises(requests.Timeout):
            requests.get(f"{sb.outside}/Patient", headers={"Authorization": f"Bearer {system}"}, timeout=0.3)
    finally:
        rt.faults.pop("outside")
