"""FHIR archives: the EHR (by patient id, clinician's token) and an outside server (by identifier), over real HTTP."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from conftest import MRN_SYSTEM, OUTSIDE_SYSTEM, ConcurrencyProbe
from werkzeug import Response

from app.archives.config import ArchiveConfig, AuthConfig
from app.federation import Federation
from app.models import Identifier, LaunchContext, StudyEndpoint

READ_ALL = frozenset({"patient/ImagingStudy.rs", "patient/DiagnosticReport.rs", "patient/ServiceRequest.rs"})
ACSN_TYPE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]}


def imaging_study(rid: str, uid: str | None, *, subject: dict | None = None, started: str = "2024-03-01T10:15:00Z",
                  accession: str | None = None, **extra) -> dict:
    identifiers = [{"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}] if uid else []
    if accession:
        identifiers.append({"type": ACSN_TYPE, "value": accession})
    return {"resourceType": "ImagingStudy", "id": rid, "status": "available", "identifier": identifiers,
            "subject": subject or {"reference": "Patient/pat-1"}, "started": started, **extra}


def bundle(*resources: dict, included: tuple[dict, ...] = (), next_url: str | None = None) -> dict:
    entries = [{"resource": r, "search": {"mode": "match"}} for r in resources]
    entries += [{"resource": r, "search": {"mode": "include"}} for r in included]
    return {"resourceType": "Bundle", "type": "searchset", "entry": entries,
            "link": [{"relation": "next", "url": next_url}] if next_url else []}


def outside_patient(pid: str = "o-1", value: str = "OUT-77", birth: str = "1970-01-01") -> dict:
    return {"resourceType": "Patient", "id": pid, "identifier": [{"system": OUTSIDE_SYSTEM, "value": value}],
            "name": [{"family": "Doe", "given": ["Jane"]}], "birthDate": birth, "gender": "female"}


EHR = ArchiveConfig(id="ehr", name="Hospital EHR", kind="fhir", base_url="ehr", auth=AuthConfig(kind="ehr"),
                    identifier_system=MRN_SYSTEM, timeout_s=5)


def outside(base: str, **changes) -> ArchiveConfig:
    fields = {"id": "outside", "name": "Outside Imaging", "kind": "fhir", "base_url": base,
              "identifier_system": OUTSIDE_SYSTEM, "timeout_s": 5, "auth": AuthConfig(kind="bearer", token_env="OUT")}
    return ArchiveConfig(**{**fields, **changes})


def search(archives, jane, ehr_token, iss: str, scopes=READ_ALL):
    ctx = LaunchContext(iss=iss, patient_id=jane.id, granted_scopes=scopes)
    result = Federation(archives, env={"OUT": "outside-token"}).search(jane, ctx, ehr_token)
    assert all(s.matched_ids for s in result.studies)
    return result, {a.id: a for a in result.archives}


# --- The EHR -------------------------------------------------------------------------------------------


def test_ehr_is_searched_by_patient_id_with_the_clinicians_token(httpserver, jane, ehr_token):
    httpserver.expect_request("/fhir/ImagingStudy").respond_with_json(bundle())

    search([EHR], jane, ehr_token, httpserver.url_for("/fhir"), scopes=frozenset())

    (request, _), = httpserver.log
    assert request.args["patient"] == "pat-1"
    assert request.args.getlist("_include") == ["ImagingStudy:endpoint"]
    assert request.headers["Accept"].startswith("application/fhir+json")
    assert request.headers["Authorization"] == "Bearer ehr-token"


def test_ehr_imaging_study_is_normalised(httpserver, jane, ehr_token):
    study = imaging_study(
        "is-1", "1.2.3", accession="ACC-1", description="CT chest", numberOfSeries=2, numberOfInstances=120,
        modality=[{"code": "CT"}], referrer={"display": "Dr House"},
        procedureCode=[{"text": "CT CHEST W CONTRAST"}],
        series=[{"uid": "1.2.3.1", "modality": {"code": "CT"}, "bodySite": {"code": "51185008", "display": "Chest"}}])
    httpserver.expect_request("/fhir/ImagingStudy").respond_with_json(bundle(study))

    result, status = search([EHR], jane, ehr_token, httpserver.url_for("/fhir"), scopes=frozenset())

    (s,) = result.studies
    assert (s.uid, s.accession, s.description, s.modalities, s.body_sites) == (
        "1.2.3", "ACC-1", "CT chest", ("CT",), ("Chest",))
    assert (s.series_count, s.instance_count, s.referrer, s.procedure_codes) == (
        2, 120, "Dr House", ("CT CHEST W CONTRAST",))
    assert (s.started.isoformat(), s.facility, s.sources) == ("2024-03-01T10:15:00+00:00", "Hospital EHR", ["ehr"])
    assert s.matched_ids == {"ehr": Identifier("Patient", "pat-1")}
    assert (status["ehr"].status, status["ehr"].count) == ("ok", 1)


@pytest.mark.parametrize("reference", ["Patient/pat-2", "Patient/PAT-1", "Patient/pat-1/_history/1", None])
def test_ehr_study_of_another_subject_is_dropped(httpserver, jane, ehr_token, reference):
    other = imaging_study("is-2", "9.9", subject={"reference": reference} if reference else {"display": "?"})
    httpserver.expect_request("/fhir/ImagingStudy").respond_with_json(bundle(imaging_study("is-1", "1.1"), other))

    result, status = search([EHR], jane, ehr_token, httpserver.url_for("/fhir"), scopes=frozenset())

    assert [s.uid for s in result.studies] == ["1.1"]
    assert status["ehr"].dropped == 1


def test_ehr_subject_as_an_absolute_reference_to_the_iss_is_accepted(httpserver, jane, ehr_token):
    iss = httpserver.url_for("/fhir")
    httpserver.expect_request("/fhir/ImagingStudy").respond_with_json(
        bundle(imaging_study("is-1", "1.1", subject={"reference": f"{iss}/Patient/pat-1"})))

    result, _ = search([EHR], jane, ehr_token, iss, scopes=frozenset())

    assert [s.uid for s in result.studies] == ["1.1"]


def test_reports_and_orders_link_by_reference_and_by_accession(httpserver, jane, ehr_token):
    httpserver.expect_request("/fhir/ImagingStudy").respond_with_json(bundle(
        imaging_study("is-1", "1.1", basedOn=[{"reference": "ServiceRequest/sr-1"}]),
        imaging_study("is-2", "2.2", accession="ACC-2", started="2023-01-01")))
    httpserver.expect_request("/fhir/DiagnosticReport").respond_with_json(bundle(
        {"resourceType": "DiagnosticReport", "id": "dr-1", "status": "final", "subject": {"reference": "Patient/pat-1"},
         "code": {"text": "CT"}, "imagingStudy": [{"reference": "ImagingStudy/is-1"}], "conclusion": "Nodule.",
         "conclusionCode": [{"coding": [{"code": "A"}]}], "issued": "2024-03-02T08:00:00Z"},
        {"resourceType": "DiagnosticReport", "id": "dr-2", "status": "preliminary", "code": {"text": "XR"},
         "subject": {"reference": "Patient/pat-1"}, "identifier": [{"type": ACSN_TYPE, "value": "ACC-2"}]}))
    httpserver.expect_request("/fhir/ServiceRequest").respond_with_json(bundle(
        {"resourceType": "ServiceRequest", "id": "sr-1", "status": "completed", "intent": "order", "priority": "stat",
         "subject": {"reference": "Patient/pat-1"}, "code": {"text": "CT chest"}},
        {"resourceType": "ServiceRequest", "id": "sr-2", "status": "active", "intent": "order",
         "subject": {"reference": "Patient/pat-1"}, "identifier": [{"type": ACSN_TYPE, "value": "ACC-2"}]}))

    result, _ = search([EHR], jane, ehr_token, httpserver.url_for("/fhir"))

    first, second = result.studies
    assert [(r.id, r.abnormal, r.conclusion) for r in first.reports] == [("dr-1", True, "Nodule.")]
    assert [(o.id, o.priority, o.code_text) for o in first.orders] == [("sr-1", "stat", "CT chest")]
    assert [r.id for r in second.reports] == ["dr-2"]
    assert [o.id for o in second.orders] == ["sr-2"]
    assert [r.args["patient"] for r, _ in httpserver.log] == ["pat-1"] * 3


def test_reports_are_not_requested_without_the_grant(httpserver, jane, ehr_token):
    httpserver.expect_request("/fhir/ImagingStudy").respond_with_json(bundle(imaging_study("is-1", "1.1")))

    search([EHR], jane, ehr_token, httpserver.url_for("/fhir"), scopes=frozenset({"patient/ImagingStudy.rs"}))

    assert [r.path for r, _ in httpserver.log] == ["/fhir/ImagingStudy"]


def test_a_report_of_another_patient_is_dropped(httpserver, jane, ehr_token):
    httpserver.expect_request("/fhir/ImagingStudy").respond_with_json(bundle(imaging_study("is-1", "1.1")))
    httpserver.expect_request("/fhir/DiagnosticReport").respond_with_json(bundle(
        {"resourceType": "DiagnosticReport", "id": "dr-9", "status": "final", "code": {"text": "CT"},
         "subject": {"reference": "Patient/pat-2"}, "imagingStudy": [{"reference": "ImagingStudy/is-1"}]}))
    httpserver.expect_request("/fhir/ServiceRequest").respond_with_json(bundle())

    result, status = search([EHR], jane, ehr_token, httpserver.url_for("/fhir"))

    assert result.studies[0].reports == []
    assert status["ehr"].dropped == 1


def test_failing_reports_keep_the_studies_and_say_so(httpserver, jane, ehr_token):
    httpserver.expect_request("/fhir/ImagingStudy").respond_with_json(bundle(imaging_study("is-1", "1.1")))
    httpserver.expect_request("/fhir/DiagnosticReport").respond_with_data("", status=403)
    httpserver.expect_request("/fhir/ServiceRequest").respond_with_json(bundle())

    result, status = search([EHR], jane, ehr_token, httpserver.url_for("/fhir"))

    assert (status["ehr"].status, len(result.studies)) == ("ok", 1)
    assert status["ehr"].reason == "DiagnosticReport unavailable (HTTP 403 (access refused))"


# --- Another facility's FHIR server ---------------------------------------------------------------------


def test_outside_server_is_searched_by_identifier_with_its_own_token(httpserver, jane, ehr_token):
    httpserver.expect_request("/out/fhir/ImagingStudy").respond_with_json(
        bundle(imaging_study("x-1", "1.1", subject={"reference": "Patient/o-1"}), included=(outside_patient(),)))

    result, _ = search([outside(httpserver.url_for("/out/fhir"))], jane, ehr_token, "http://ehr.invalid/fhir")

    (request, _), = [entry for entry in httpserver.log if entry[0].path.endswith("/ImagingStudy")]
    assert request.args["patient.identifier"] == f"{OUTSIDE_SYSTEM}|OUT-77"
    assert set(request.args.getlist("_include")) == {"ImagingStudy:subject", "ImagingStudy:endpoint"}
    assert request.headers["Authorization"] == "Bearer outside-token"
    assert [s.uid for s in result.studies] == ["1.1"]
    assert result.studies[0].matched_ids == {"outside": Identifier(OUTSIDE_SYSTEM, "OUT-77")}
    assert ehr_token.calls == 0


def test_outside_reports_are_fetched_by_identifier_and_guarded_like_studies(httpserver, jane, ehr_token):
    httpserver.expect_request("/out/fhir/ImagingStudy").respond_with_json(
        bundle(imaging_study("x-1", "1.1", subject={"reference": "Patient/o-1"}), included=(outside_patient(),)))
    httpserver.expect_request("/out/fhir/DiagnosticReport").respond_with_json(bundle(
        {"resourceType": "DiagnosticReport", "id": "odr-1", "status": "final", "code": {"text": "CT"},
         "subject": {"reference": "Patient/o-1"}, "imagingStudy": [{"reference": "ImagingStudy/x-1"}],
         "conclusion": "Outside read."},
        {"resourceType": "DiagnosticReport", "id": "odr-9", "status": "final", "code": {"text": "CT"},
         "subject": {"reference": "Patient/o-9"}, "imagingStudy": [{"reference": "ImagingStudy/x-1"}]},
        included=(outside_patient(pid="o-9", value="OUT-99"),)))
    httpserver.expect_request("/out/fhir/ServiceRequest").respond_with_json(bundle())

    result, status = search([outside(httpserver.url_for("/out/fhir"))], jane, ehr_token, "http://ehr.invalid/fhir")

    reports = [(r.id, r.conclusion, r.source) for r in result.studies[0].reports]
    assert reports == [("odr-1", "Outside read.", "outside")]
    assert status["outside"].dropped == 1
    report_query = next(r for r, _ in httpserver.log if r.path.endswith("/DiagnosticReport"))
    assert report_query.args["patient.identifier"] == f"{OUTSIDE_SYSTEM}|OUT-77"


def test_studies_reports_and_orders_are_searched_at_once(threaded_httpserver, jane, ehr_token):
    probe = ConcurrencyProbe()
    slow = probe.answer

    server = threaded_httpserver
    server.expect_request("/out/fhir/ImagingStudy").respond_with_handler(
        slow(bundle(imaging_study("x-1", "1.1", subject={"reference": "Patient/o-1"}), included=(outside_patient(),))))
    server.expect_request("/out/fhir/DiagnosticReport").respond_with_handler(slow(bundle()))
    server.expect_request("/out/fhir/ServiceRequest").respond_with_handler(slow(bundle()))

    result, _ = search([outside(server.url_for("/out/fhir"))], jane, ehr_token, "http://ehr.invalid/fhir")

    assert [s.uid for s in result.studies] == ["1.1"]
    assert probe.most == 3  # one round trip for the archive, not three


def test_outside_falls_back_to_explicit_chaining_when_patient_identifier_is_refused(httpserver, jane, ehr_token):
    found = bundle(imaging_study("x-1", "1.1", subject={"reference": "Patient/o-1", "identifier": {
        "system": OUTSIDE_SYSTEM, "value": "OUT-77"}}))

    def server(request):
        if "patient.identifier" in request.args:  # a server without chained search on `patient`
            return Response(json.dumps({"resourceType": "OperationOutcome"}), status=400)
        return Response(json.dumps(found), content_type="application/fhir+json")

    httpserver.expect_request("/fhir/ImagingStudy").respond_with_handler(server)

    result, _ = search([outside(httpserver.url_for("/fhir"))], jane, ehr_token, "http://ehr.invalid/fhir")

    study_queries = [r for r, _ in httpserver.log if r.path == "/fhir/ImagingStudy"]
    assert study_queries[1].args["subject:Patient.identifier"] == f"{OUTSIDE_SYSTEM}|OUT-77"
    assert [s.uid for s in result.studies] == ["1.1"]


@pytest.mark.parametrize(("patient", "reason"), [
    (outside_patient(value="OUT-78"), "1 withheld: another patient's identifier"),
    (outside_patient(value="out-77"), "1 withheld: another patient's identifier"),
    (outside_patient(birth="1971-01-01"), "1 withheld: birth date differs from the EHR"),
    ({**outside_patient(), "gender": "male"}, "1 withheld: sex differs from the EHR"),
], ids=["other-value", "case-variant", "birth-date", "sex"])
def test_outside_study_failing_the_guard_is_withheld(httpserver, jane, ehr_token, patient, reason):
    httpserver.expect_request("/fhir/ImagingStudy").respond_with_json(
        bundle(imaging_study("x-1", "1.1", subject={"reference": "Patient/o-1"}), included=(patient,)))

    result, status = search([outside(httpserver.url_for("/fhir"))], jane, ehr_token, "http://ehr.invalid/fhir")

    assert result.studies == []
    assert (status["outside"].dropped, status["outside"].reason) == (1, reason)


def test_outside_subject_not_included_is_read_from_the_same_server(httpserver, jane, ehr_token):
    httpserver.expect_request("/fhir/ImagingStudy").respond_with_json(
        bundle(imaging_study("x-1", "1.1", subject={"reference": "Patient/o-1"})))
    httpserver.expect_request("/fhir/Patient/o-1").respond_with_json(
        {**outside_patient(), "name": [{"family": "Doe-Smith", "given": ["Janet"]}]})

    result, _ = search([outside(httpserver.url_for("/fhir"))], jane, ehr_token, "http://ehr.invalid/fhir")

    assert result.studies[0].badges == ["identity: name differs"]
    assert httpserver.log[1][0].headers["Authorization"] == "Bearer outside-token"


def test_outside_subject_on_another_host_is_not_read_and_the_study_is_dropped(httpserver, other_host, jane,
                                                                               ehr_token):
    httpserver.expect_request("/fhir/ImagingStudy").respond_with_json(
        bundle(imaging_study("x-1", "1.1", subject={"reference": other_host.url_for("/fhir/Patient/o-1")})))

    result, status = search([outside(httpserver.url_for("/fhir"))], jane, ehr_token, "http://ehr.invalid/fhir")

    assert (result.studies, status["outside"].dropped) == ([], 1)
    assert other_host.log == []


# --- Paging and endpoints: nothing goes to a host we did not configure ------------------------------------


def test_next_links_on_the_same_origin_are_followed(httpserver, jane, ehr_token):
    iss = httpserver.url_for("/fhir")
    httpserver.expect_request("/fhir/ImagingStudy").respond_with_json(
        bundle(imaging_study("is-1", "1.1"), next_url=f"{iss}/page2?ct=abc"))
    httpserver.expect_request("/fhir/page2").respond_with_json(bundle(imaging_study("is-2", "2.2")))

    result, _ = search([EHR], jane, ehr_token, iss, scopes=frozenset())

    assert {s.uid for s in result.studies} == {"1.1", "2.2"}
    assert httpserver.log[1][0].headers["Authorization"] == "Bearer ehr-token"


def test_a_next_link_to_another_host_is_not_followed(httpserver, other_host, jane, ehr_token):
    httpserver.expect_request("/fhir/ImagingStudy").respond_with_json(
        bundle(imaging_study("is-1", "1.1"), next_url=other_host.url_for("/fhir/page2")))

    result, status = search([EHR], jane, ehr_token, httpserver.url_for("/fhir"), scopes=frozenset())

    assert [s.uid for s in result.studies] == ["1.1"]
    assert status["ehr"].reason == "next page on another host not followed"
    assert other_host.log == []


def test_endpoints_are_kept_only_under_a_configured_archive(httpserver, other_host, jane, ehr_token):
    iss = httpserver.url_for("/fhir")
    pacs_base = httpserver.url_for("/dicom-web")
    study = imaging_study(
        "is-1", "1.1", endpoint=[{"reference": "#foreign"}, {"reference": "Endpoint/ep-1"}],
        contained=[{"resourceType": "Endpoint", "id": "foreign", "status": "active",
                    "address": other_host.url_for("/dicom-web")}])
    endpoint = {"resourceType": "Endpoint", "id": "ep-1", "status": "active", "address": pacs_base}
    httpserver.expect_request("/fhir/ImagingStudy").respond_with_json(bundle(study, included=(endpoint,)))
    pacs = ArchiveConfig(id="pacs", name="PACS", kind="dicomweb", base_url=pacs_base, identifier_system="urn:none")

    result, status = search([EHR, pacs], jane, ehr_token, iss, scopes=frozenset())

    assert result.studies[0].endpoints == [StudyEndpoint("pacs", pacs_base)]
    assert status["ehr"].reason == "1 endpoint(s) at an unconfigured host ignored"
    assert other_host.log == []


def test_a_referenced_endpoint_that_was_not_included_is_read_from_the_fhir_server(httpserver, jane, ehr_token):
    pacs_base = httpserver.url_for("/dicom-web")
    httpserver.expect_request("/fhir/ImagingStudy").respond_with_json(
        bundle(imaging_study("is-1", "1.1", endpoint=[{"reference": "Endpoint/ep-1"}])))
    httpserver.expect_request("/fhir/Endpoint/ep-1").respond_with_json(
        {"resourceType": "Endpoint", "id": "ep-1", "status": "active", "address": f"{pacs_base}/"})
    pacs = ArchiveConfig(id="pacs", name="PACS", kind="dicomweb", base_url=pacs_base, identifier_system="urn:none")

    result, _ = search([EHR, pacs], jane, ehr_token, httpserver.url_for("/fhir"), scopes=frozenset())

    assert result.studies[0].endpoints == [StudyEndpoint("pacs", pacs_base)]


# --- Faults -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "reason"), [
    ({"resourceType": "OperationOutcome"}, "answer was not a FHIR Bundle"),
    ([1, 2], "answer was not a FHIR Bundle"),
    ({"resourceType": "Bundle", "entry": {"resource": {}}}, "answer was not a FHIR Bundle (entry is not a list)"),
], ids=["operation-outcome", "array", "entry-not-list"])
def test_a_wrongly_shaped_answer_is_an_error_status(httpserver, jane, ehr_token, body, reason):
    httpserver.expect_request("/fhir/ImagingStudy").respond_with_json(body)

    _, status = search([EHR], jane, ehr_token, httpserver.url_for("/fhir"), scopes=frozenset())

    assert (status["ehr"].status, status["ehr"].reason) == ("error", reason)


@pytest.mark.parametrize(("bad", "why"), [
    (imaging_study("is-9", None), "no StudyInstanceUID"),
    (imaging_study("is-9", "9.9", started="last tuesday"), "invalid date"),
], ids=["no-uid", "invalid-date"])
def test_an_unusable_imaging_study_is_skipped_and_the_rest_kept(httpserver, jane, ehr_token, bad, why):
    httpserver.expect_request("/fhir/ImagingStudy").respond_with_json(bundle(bad, imaging_study("is-1", "1.1")))

    result, status = search([EHR], jane, ehr_token, httpserver.url_for("/fhir"), scopes=frozenset())

    assert [s.uid for s in result.studies] == ["1.1"]
    assert (status["ehr"].skipped, status["ehr"].reason) == (1, f"1 skipped: {why}")


def test_a_204_answer_means_no_studies(httpserver, jane, ehr_token):
    httpserver.expect_request("/fhir/ImagingStudy").respond_with_data("", status=204)

    result, status = search([EHR], jane, ehr_token, httpserver.url_for("/fhir"), scopes=frozenset())

    assert (status["ehr"].status, result.studies) == ("ok", [])


def test_a_server_refusing_include_is_asked_again_without_it(httpserver, jane, ehr_token):
    def server(request):
        if "_include" in request.args:
            return Response(json.dumps({"resourceType": "OperationOutcome"}), status=400)
        return Response(json.dumps(bundle(imaging_study("is-1", "1.1"))), content_type="application/fhir+json")

    httpserver.expect_request("/fhir/ImagingStudy").respond_with_handler(server)

    result, _ = search([EHR], jane, ehr_token, httpserver.url_for("/fhir"), scopes=frozenset())

    assert [s.uid for s in result.studies] == ["1.1"]
    assert [r.args.get("patient") for r, _ in httpserver.log] == ["pat-1", "pat-1"]


def test_a_server_refusing_every_form_is_an_error_status(httpserver, jane, ehr_token):
    httpserver.expect_request("/fhir/ImagingStudy").respond_with_json({"resourceType": "OperationOutcome"}, status=400)

    _, status = search([outside(httpserver.url_for("/fhir"))], jane, ehr_token, "http://ehr.invalid/fhir")

    assert (status["outside"].status, status["outside"].reason) == ("error", "HTTP 400")
    assert len([r for r, _ in httpserver.log if r.path == "/fhir/ImagingStudy"]) == 3


def test_a_fhir_answer_cut_at_max_results_says_so(httpserver, jane, ehr_token):
    studies = [imaging_study(f"is-{n}", f"1.2.{n}", started=f"2024-03-0{n}T10:00:00Z") for n in range(1, 4)]
    httpserver.expect_request("/fhir/ImagingStudy").respond_with_json(bundle(*studies))
    ehr = replace(EHR, max_results=2)

    result, statuses = search([ehr], jane, ehr_token, httpserver.url_for("/fhir"), scopes=frozenset())

    status = statuses["ehr"]
    assert (len(result.studies), status.partial) == (2, True)
    assert status.reason == "showing 2 of at least 3 — narrow by date (max_results = 2)"


def test_procedure_codings_are_kept_as_codes_so_loinc_names_the_anatomy(httpserver, jane, ehr_token):
    from app import priors

    study = imaging_study("is-1", "1.2.3", description="Outside study",
                          procedureCode=[{"coding": [{"system": "http://loinc.org", "code": "24590-2",
                                                      "display": "MR Brain WO contrast"}], "text": "MRI HEAD"}])
    httpserver.expect_request("/fhir/ImagingStudy").respond_with_json(bundle(study))

    result, _ = search([EHR], jane, ehr_token, httpserver.url_for("/fhir"), scopes=frozenset())

    (found,) = result.studies
    assert found.procedure_codes == ("http://loinc.org|24590-2", "MRI HEAD")
    assert priors.body_region(found) == "head"
