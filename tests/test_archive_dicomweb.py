"""DICOMweb archives: QIDO-RS against a real Orthanc, and every HTTP-level fault against pytest-httpserver."""

from __future__ import annotations

import json
import time
from datetime import datetime

import pytest
from conftest import MRN_SYSTEM, ConcurrencyProbe
from orthanc import ISSUER, SEED
from werkzeug import Response

from app.archives.config import ArchiveConfig, AuthConfig
from app.federation import Federation
from app.identity import NAME_DIFFERS
from app.models import Identifier, LaunchContext, PatientSummary, StudyEndpoint

CTX = LaunchContext(iss="http://ehr.invalid/fhir", patient_id="pat-1", granted_scopes=frozenset())
FOREIGN = {s.uid for key, s in SEED.items() if key in {"case_variant", "other_issuer", "birth_conflict"}}


def pacs(base_url: str, **changes) -> ArchiveConfig:
    fields = {"id": "pacs", "name": "Main PACS", "kind": "dicomweb", "base_url": base_url,
              "identifier_system": MRN_SYSTEM, "issuer_of_patient_id": ISSUER, "timeout_s": 5.0}
    return ArchiveConfig(**{**fields, **changes})


def search(archive: ArchiveConfig, patient: PatientSummary, **federation_kw):
    result = Federation([archive], **federation_kw).search(patient, CTX, _NoToken())
    assert not {s.uid for s in result.studies} & FOREIGN  # never another patient's study, whatever happened
    return result, result.archives[0]


class _NoToken:
    def access_token(self) -> str:
        raise AssertionError("a dicomweb archive without auth ehr must not ask for the EHR token")


def with_mrn(patient: PatientSummary, value: str) -> PatientSummary:
    return PatientSummary(id=patient.id, name=patient.name, birth_date=patient.birth_date, sex=patient.sex,
                          identifiers=(Identifier(MRN_SYSTEM, value),))


# --- Real Orthanc -----------------------------------------------------------------------------------


@pytest.mark.orthanc
def test_finds_the_patients_studies_by_patient_id_and_issuer(orthanc, jane):
    result, status = search(pacs(orthanc), jane)

    assert status.status == "ok"
    assert [s.uid for s in result.studies] == [SEED["jane_ct"].uid, SEED["jane_mr"].uid]  # newest first
    ct = result.studies[0]
    assert ct.started == datetime(2024, 3, 1, 10, 15)
    assert ct.modalities == ("CT",)
    assert ct.description == "CT CHEST"
    assert ct.accession == "ACC-CT-1"
    assert (ct.series_count, ct.instance_count) == (1, 1)
    assert ct.referrer == "GREGORY HOUSE"
    assert ct.sources == ["pacs"]
    assert ct.matched_ids == {"pacs": Identifier(MRN_SYSTEM, "MRN-1001")}
    assert ct.endpoints == [StudyEndpoint("pacs", orthanc)]


@pytest.mark.orthanc
def test_studies_whose_description_names_the_region_need_no_series_query(orthanc, jane):
    result, _ = search(pacs(orthanc), jane)

    assert [(s.modalities, s.description, s.body_sites) for s in result.studies] == [
        (("CT",), "CT CHEST", ()), (("MR",), "MR BRAIN", ())]


@pytest.mark.orthanc
def test_a_study_without_study_time_starts_at_midnight(orthanc, jane):
    result, _ = search(pacs(orthanc), jane)

    assert result.studies[1].started == datetime(2023, 5, 10)


@pytest.mark.orthanc
def test_case_variant_patient_id_returned_by_orthanc_is_dropped(orthanc, jane):
    result, status = search(pacs(orthanc), jane)

    assert SEED["case_variant"].uid not in {s.uid for s in result.studies}
    assert (status.count, status.dropped) == (2, 1)
    assert status.reason == "1 withheld: another patient's identifier"


@pytest.mark.orthanc
def test_issuer_filter_keeps_the_same_patient_id_of_another_issuer_out(orthanc, jane):
    result, _ = search(pacs(orthanc), jane)

    assert SEED["other_issuer"].uid not in {s.uid for s in result.studies}
    assert SEED["no_issuer"].uid not in {s.uid for s in result.studies}


@pytest.mark.orthanc
def test_without_a_configured_issuer_demographics_withhold_the_other_persons_study(orthanc, jane):
    result, status = search(pacs(orthanc, issuer_of_patient_id=None), jane)

    assert {s.uid for s in result.studies} == {SEED["jane_ct"].uid, SEED["jane_mr"].uid, SEED["no_issuer"].uid}
    assert status.dropped == 2  # the case variant, and the other issuer's patient (born 1950)
    assert status.reason == ("1 withheld: another patient's identifier; "
                             "1 withheld: birth date differs from the EHR")


@pytest.mark.orthanc
def test_a_name_spelled_differently_keeps_the_study_with_a_badge(orthanc, jane):
    result, status = search(pacs(orthanc), with_mrn(jane, "MRN-3003"))

    assert [s.uid for s in result.studies] == [SEED["name_variant"].uid]
    assert result.studies[0].badges == [NAME_DIFFERS]
    assert status.dropped == 0


@pytest.mark.orthanc
def test_a_birth_date_conflict_withholds_the_study(orthanc, jane):
    result, status = search(pacs(orthanc), with_mrn(jane, "MRN-4004"))

    assert result.studies == []
    assert (status.status, status.dropped) == ("ok", 1)
    assert status.reason == "1 withheld: birth date differs from the EHR"


@pytest.mark.orthanc
def test_an_unknown_patient_is_ok_with_no_studies(orthanc, jane):
    result, status = search(pacs(orthanc), with_mrn(jane, "MRN-9999"))

    assert (status.status, status.count, result.studies) == ("ok", 0, [])


@pytest.mark.orthanc
def test_pages_through_orthanc_until_a_short_page(orthanc, jane):
    _, status = search(pacs(orthanc, page_size=1), jane)

    assert (status.count, status.dropped) == (2, 1)  # three matches, one per page
    assert status.partial is False


@pytest.mark.orthanc
def test_max_results_caps_what_is_fetched_and_says_so(orthanc, jane):
    _, status = search(pacs(orthanc, max_results=1, page_size=1), jane)

    assert status.count + status.dropped == 1
    assert status.partial is True
    assert status.reason.startswith("showing 1 of at least 2 — narrow by date (max_results = 1)")
    assert status.message.startswith(f"Showing {status.count} {'study' if status.count == 1 else 'studies'}; "
                                     "this archive holds more. Narrow by date to see others.")


# --- What goes over the wire ------------------------------------------------------------------------


def study_json(uid: str = "1.2.3.4", patient_id: str = "MRN-1001", issuer: str | None = ISSUER, **extra) -> dict:
    data = {
        "0020000D": {"vr": "UI", "Value": [uid]},
        "00080020": {"vr": "DA", "Value": ["20240301"]},
        "00100020": {"vr": "LO", "Value": [patient_id]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "DOE^JANE"}]},
        "00100030": {"vr": "DA", "Value": ["19700101"]},
        "00100040": {"vr": "CS", "Value": ["F"]},
    }
    if issuer is not None:
        data["00100021"] = {"vr": "LO", "Value": [issuer]}
    data.update(extra)
    return data


def test_qido_request_names_patient_issuer_fields_and_page(httpserver, jane):
    httpserver.expect_request("/dicom-web/studies").respond_with_json([])

    search(pacs(httpserver.url_for("/dicom-web")), jane)

    (request, _), = httpserver.log
    assert request.path == "/dicom-web/studies"
    assert request.args["PatientID"] == "MRN-1001"
    assert request.args["IssuerOfPatientID"] == ISSUER
    # One keyword per includefield: Orthanc ignores the comma-separated form.
    assert {"StudyInstanceUID", "StudyDate", "ModalitiesInStudy", "PatientBirthDate"} <= set(
        request.args.getlist("includefield"))
    # One request for everything up to max_results (+1, to know when the answer is cut): paging
    # by a small limit is quadratic on Orthanc.
    assert (request.args["limit"], request.args["offset"]) == ("501", "0")
    assert request.headers["Accept"].startswith("application/dicom+json")
    assert "Authorization" not in request.headers


def test_basic_auth_goes_to_the_archive(httpserver, jane):
    httpserver.expect_request("/dicom-web/studies").respond_with_json([])
    archive = pacs(httpserver.url_for("/dicom-web"),
                   auth=AuthConfig(kind="basic", username="timeline", password_env="PACS_PASSWORD"))

    search(archive, jane, env={"PACS_PASSWORD": "s3cret"})

    assert httpserver.log[0][0].headers["Authorization"] == "Basic dGltZWxpbmU6czNjcmV0"


def test_series_query_is_sent_only_for_studies_that_passed_the_guard(httpserver, jane):
    httpserver.expect_request("/dicom-web/studies").respond_with_json(
        [study_json("1.1"), study_json("6.6", patient_id="MRN-6666")])
    httpserver.expect_request("/dicom-web/studies/1.1/series").respond_with_json(
        [{"00080060": {"vr": "CS", "Value": ["CT"]}, "00180015": {"vr": "CS", "Value": ["CHEST"]}}])

    result, status = search(pacs(httpserver.url_for("/dicom-web")), jane)

    assert [r.path for r, _ in httpserver.log] == ["/dicom-web/studies", "/dicom-web/studies/1.1/series"]
    assert (result.studies[0].modalities, result.studies[0].body_sites) == (("CT",), ("CHEST",))
    assert status.dropped == 1


def test_no_series_query_when_modality_and_region_are_known_at_study_level(httpserver, jane):
    described = {"00081030": {"vr": "LO", "Value": ["CT CHEST WO CONTRAST"]},
                 "00080061": {"vr": "CS", "Value": ["CT"]}}
    httpserver.expect_request("/dicom-web/studies").respond_with_json([study_json("1.1", **described)])

    result, _ = search(pacs(httpserver.url_for("/dicom-web")), jane)

    assert [r.path for r, _ in httpserver.log] == ["/dicom-web/studies"]
    assert result.studies[0].modalities == ("CT",)


def test_series_queries_run_in_parallel(threaded_httpserver, jane):
    httpserver = threaded_httpserver
    uids = [f"1.{n}" for n in range(6)]
    httpserver.expect_request("/dicom-web/studies").respond_with_json([study_json(uid) for uid in uids])

    probe = ConcurrencyProbe()
    slow_series = probe.answer([{"00180015": {"vr": "CS", "Value": ["KNEE"]}}], "application/dicom+json")

    for uid in uids:
        httpserver.expect_request(f"/dicom-web/studies/{uid}/series").respond_with_handler(slow_series)

    result, _ = search(pacs(httpserver.url_for("/dicom-web")), jane)

    assert [s.body_sites for s in result.studies] == [("KNEE",)] * 6
    assert probe.most > 1  # the archive saw several lookups at once, not one after another


def test_an_answer_without_the_issuer_we_asked_for_is_dropped(httpserver, jane):
    httpserver.expect_request("/dicom-web/studies").respond_with_json([study_json(issuer=None)])

    result, status = search(pacs(httpserver.url_for("/dicom-web")), jane)

    assert (result.studies, status.dropped) == ([], 1)


def test_an_archive_ignoring_the_patient_filter_returns_no_foreign_study(httpserver, jane):
    httpserver.expect_request("/dicom-web/studies").respond_with_json(
        [study_json("1.1"), *(study_json(f"9.{n}", patient_id=f"MRN-9{n}") for n in range(5))])
    httpserver.expect_request("/dicom-web/studies/1.1/series").respond_with_json([])

    result, status = search(pacs(httpserver.url_for("/dicom-web")), jane)

    assert [s.uid for s in result.studies] == ["1.1"]
    assert (status.count, status.dropped) == (1, 5)


# --- Faults -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("respond", "state", "reason"), [
    (Response("boom", status=500), "error", "HTTP 500"),
    (Response("", status=401), "error", "HTTP 401 (credentials not accepted)"),
    (Response("", status=403), "error", "HTTP 403 (access refused)"),
    (Response("", status=503, headers={"Retry-After": "30"}), "error", "HTTP 503: busy, retry in 30 s"),
    (Response("<html>login</html>", status=200, content_type="text/html"), "error", "answer was not JSON"),
    (Response('{"studies": []}', status=200, content_type="application/dicom+json"), "error",
     "answer was not a DICOM JSON array"),
    (Response("", status=302, headers={"Location": "http://elsewhere.invalid/"}), "error",
     "HTTP 302 redirect, not followed"),
    (Response(status=204), "ok", None),  # Azure DICOM: no matches
], ids=["500", "401", "403", "503-retry-after", "not-json", "wrong-shape", "redirect", "204-empty"])
def test_http_faults_become_a_readable_archive_status(httpserver, jane, respond, state, reason):
    httpserver.expect_request("/dicom-web/studies").respond_with_response(respond)

    result, status = search(pacs(httpserver.url_for("/dicom-web")), jane)

    assert (status.status, status.reason, result.studies) == (state, reason, [])


def test_application_json_is_accepted_as_well_as_dicom_json(httpserver, jane):
    httpserver.expect_request("/dicom-web/studies").respond_with_json([study_json()],
                                                                     content_type="application/json")

    _, status = search(pacs(httpserver.url_for("/dicom-web")), jane)

    assert (status.status, status.count) == ("ok", 1)


def test_a_huge_answer_is_cut_and_reported(httpserver, jane):
    httpserver.expect_request("/dicom-web/studies").respond_with_data(
        json.dumps([study_json(f"1.{n}") for n in range(200)]), content_type="application/dicom+json")

    _, status = search(pacs(httpserver.url_for("/dicom-web")), jane, max_bytes=4096)

    assert (status.status, status.error, status.reason) == ("error", "archive-bad-response", "answer over 4 kB, cut")


def test_connection_refused_is_an_error_status(jane):
    from orthanc import free_port

    _, status = search(pacs(f"http://127.0.0.1:{free_port()}/dicom-web"), jane)

    assert (status.status, status.error, status.reason) == (
        "error", "archive-unavailable", "archive unreachable (connection refused)")


def test_a_slow_archive_times_out(threaded_httpserver, jane):
    threaded_httpserver.expect_request("/dicom-web/studies").respond_with_handler(
        lambda request: (time.sleep(1.5), Response("[]"))[1])
    started = time.monotonic()

    _, status = search(pacs(threaded_httpserver.url_for("/dicom-web"), timeout_s=0.3), jane)

    assert (status.status, status.error, status.reason) == ("timeout", "archive-timeout", "no answer within 0.3 s")
    assert time.monotonic() - started < 1.4


@pytest.mark.parametrize(("bad", "why"), [
    ({"00080020": {"vr": "DA", "Value": ["20240301"]}, "00100020": {"vr": "LO", "Value": ["MRN-1001"]}},
     "no StudyInstanceUID"),
    (study_json("2.2", **{"00080020": {"vr": "DA", "Value": ["2024-99-99"]}}), "unreadable StudyDate"),
    (["not", "an", "object"], "unreadable DICOM JSON"),
], ids=["no-uid", "invalid-date", "not-an-object"])
def test_an_unusable_study_is_skipped_and_the_rest_kept(httpserver, jane, bad, why):
    httpserver.expect_request("/dicom-web/studies").respond_with_json([bad, study_json("1.1")])
    httpserver.expect_request("/dicom-web/studies/1.1/series").respond_with_json([])

    result, status = search(pacs(httpserver.url_for("/dicom-web")), jane)

    assert [s.uid for s in result.studies] == ["1.1"]
    assert (status.status, status.skipped, status.reason) == ("ok", 1, f"1 skipped: {why}")


def test_a_failing_series_query_keeps_the_studies(httpserver, jane):
    httpserver.expect_request("/dicom-web/studies").respond_with_json([study_json("1.1")])
    httpserver.expect_request("/dicom-web/studies/1.1/series").respond_with_data("no", status=500)

    result, status = search(pacs(httpserver.url_for("/dicom-web")), jane)

    assert (status.status, [s.uid for s in result.studies]) == ("ok", ["1.1"])
