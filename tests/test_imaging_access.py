"""SMART Imaging Access (Argonaut draft) conformance of the FHIR archive adapter, against HTTP doubles.

Endpoints contained in or `_include`d with an ImagingStudy, the Endpoint `requires-access-token`
extension (the clinician's token only to its own origin; a capability URL gets none), a 403 that
says the patient does not match, and `503` + `Retry-After` retried once when it fits.
"""

from __future__ import annotations

import pytest
from werkzeug import Response

from app.archives.auth import AuthFactory, NoAuth
from app.archives.config import ArchiveConfig
from app.errors import ArchiveAuthError
from app.http import Deadline
from app.imaging_endpoints import REQUIRES_ACCESS_TOKEN, archive_config, endpoint_id
from app.models import StudyEndpoint
from tests.test_archive_fhir import EHR, bundle, imaging_study, search


def endpoint(eid: str, address: str, token: bool | None, name: str = "Imaging server") -> dict:
    res = {"resourceType": "Endpoint", "id": eid, "status": "active", "name": name, "address": address,
           "connectionType": {"code": "dicom-wado-rs"}, "payloadType": [{"text": "DICOM"}]}
    if token is not None:
        res["extension"] = [{"url": REQUIRES_ACCESS_TOKEN, "valueBoolean": token}]
    return res


def test_requires_access_token_decides_which_endpoints_are_used(httpserver, other_host, jane, ehr_token):
    iss = httpserver.url_for("/fhir")
    own = httpserver.url_for("/wado")  # same origin as the EHR: the clinician's token may go there
    foreign = other_host.url_for("/wado")
    capability = other_host.url_for("/share/abc123")
    study = imaging_study(
        "is-1", "1.1",
        endpoint=[{"reference": "#own"}, {"reference": "Endpoint/foreign"}, {"reference": "#cap"},
                  {"reference": "#silent"}],
        contained=[endpoint("own", own, True, "Hospital imaging"), endpoint("cap", capability, False, "Shared link"),
                   endpoint("silent", other_host.url_for("/x"), None, "Unlabelled PACS")])
    httpserver.expect_request("/fhir/ImagingStudy").respond_with_json(
        bundle(study, included=(endpoint("foreign", foreign, True, "Riverside Imaging"),)))

    result, _ = search([EHR], jane, ehr_token, iss, scopes=frozenset())

    (found,) = result.studies
    assert found.endpoints == [
        StudyEndpoint(endpoint_id(own), own, token=True, name="Hospital imaging"),
        StudyEndpoint(endpoint_id(capability), capability, token=False, name="Shared link"),
    ]
    assert found.elsewhere == ["Riverside Imaging", "Unlabelled PACS"]
    assert other_host.log == []


def test_the_clinicians_token_goes_only_to_the_endpoint_that_requires_it(httpserver):
    iss = httpserver.url_for("/fhir")
    own = StudyEndpoint(endpoint_id(httpserver.url_for("/wado")), httpserver.url_for("/wado"), token=True)
    credentials = AuthFactory(None).for_archive(archive_config(own), iss=iss, ehr_token=lambda: "clinician")
    assert credentials.headers_for(f"{own.address}/studies/1.1/rendered", Deadline.after(5)) == {
        "Authorization": "Bearer clinician"}
    with pytest.raises(ArchiveAuthError, match="refused to send credentials"):
        credentials.headers_for("http://elsewhere.invalid/wado/studies/1.1", Deadline.after(5))


def test_a_capability_url_gets_no_credentials(httpserver):
    capability = StudyEndpoint(endpoint_id("http://share.invalid/x"), "http://share.invalid/x", token=False)
    credentials = AuthFactory(None).for_archive(archive_config(capability), iss=httpserver.url_for("/fhir"),
                                                ehr_token=lambda: "clinician")
    assert isinstance(credentials, NoAuth)


def test_a_busy_server_is_retried_once_when_retry_after_fits(httpserver, jane, ehr_token):
    httpserver.expect_ordered_request("/fhir/ImagingStudy").respond_with_response(
        Response("warming up", status=503, headers={"Retry-After": "0"}))
    httpserver.expect_ordered_request("/fhir/ImagingStudy").respond_with_json(bundle(imaging_study("is-1", "1.1")))

    result, status = search([EHR], jane, ehr_token, httpserver.url_for("/fhir"), scopes=frozenset())

    assert [s.uid for s in result.studies] == ["1.1"]
    assert status["ehr"].status == "ok"


def test_a_busy_server_whose_wait_does_not_fit_says_when_to_retry(httpserver, jane, ehr_token):
    httpserver.expect_request("/fhir/ImagingStudy").respond_with_response(
        Response("cold storage", status=503, headers={"Retry-After": "120"}))

    _, status = search([EHR], jane, ehr_token, httpserver.url_for("/fhir"), scopes=frozenset())

    assert (status["ehr"].status, status["ehr"].reason) == ("error", "HTTP 503: busy, retry in 120 s")
    assert len(httpserver.log) == 1


def test_a_403_patient_mismatch_is_reported_as_such(httpserver, jane, ehr_token):
    httpserver.expect_request("/fhir/ImagingStudy").respond_with_json(
        {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "forbidden",
                                                        "diagnostics": "patient does not match the token"}]},
        status=403)

    _, status = search([EHR], jane, ehr_token, httpserver.url_for("/fhir"), scopes=frozenset())

    assert status["ehr"].reason == "HTTP 403 (patient mismatch: the archive says this is not the token's patient)"



def test_the_fhir_context_study_is_searched_by_its_uid_when_the_list_missed_it(httpserver, jane, ehr_token):
    from app.federation import Federation
    from app.models import LaunchContext

    iss = httpserver.url_for("/fhir")
    httpserver.expect_ordered_request("/fhir/ImagingStudy", query_string={
        "patient": "pat-1", "_include": "ImagingStudy:endpoint", "_count": "100"}).respond_with_json(
        bundle(imaging_study("is-1", "1.1")))
    httpserver.expect_ordered_request("/fhir/ImagingStudy", query_string={
        "patient": "pat-1", "identifier": "urn:oid:1.9", "_include": "ImagingStudy:endpoint"}).respond_with_json(
        bundle(imaging_study("is-9", "1.9")))
    ctx = LaunchContext(iss=iss, patient_id=jane.id, granted_scopes=frozenset(), fhir_context=("ImagingStudy/1.9",))

    result = Federation([EHR]).search(jane, ctx, ehr_token)

    assert sorted(s.uid for s in result.studies) == ["1.1", "1.9"]


def test_a_fhir_context_given_by_dicom_identifier_names_the_study_by_uid():
    from app.launch import _fhir_context

    assert _fhir_context([{"type": "ImagingStudy", "identifier": {"system": "urn:dicom:uid",
                                                                  "value": "urn:oid:1.2.840.99"}},
                          {"reference": "ServiceRequest/sr-1"}]) == ("ImagingStudy/1.2.840.99", "ServiceRequest/sr-1")


# --- end to end: the demo without a configured PACS, so only the EHR's Endpoint leads to the images ----


class HeaderLog:
    """WSGI wrapper: the Authorization header of each request to the sandbox's DICOMweb archive."""

    def __init__(self, app) -> None:
        self.app, self.seen = app, []

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO", "").startswith("/sandbox/dicomweb/"):
            self.seen.append(environ.get("HTTP_AUTHORIZATION"))
        return self.app(environ, start_response)


def test_a_thumbnail_from_an_endpoint_that_requires_the_token_is_fetched_with_it(tmp_path):
    from app.archives.config import AuthConfig
    from sandbox.data import MRN_SYSTEM
    from tests.test_demo_flow import demo_server, launch, studies

    ehr_only = (ArchiveConfig(id="ehr", name="Sandbox Hospital (EHR)", kind="fhir", base_url="ehr",
                              auth=AuthConfig(kind="ehr"), identifier_system=MRN_SYSTEM),)
    with demo_server(tmp_path, app_options={"ARCHIVES": ehr_only}) as demo:
        log = HeaderLog(demo.server.app)
        demo.server.app = log
        _, browser = launch(demo, "pat-amy", embedded="1")
        view = next(s for s in studies(demo, browser)["studies"] if s["thumbnail"])
        (endpoint,) = view["endpoints"]
        assert endpoint["token"] is True and endpoint["archive_id"].startswith("endpoint-")
        assert view["images_note"] == "Images are at Sandbox PACS (DICOMweb), for which no viewer is configured."
        resp = browser.get(demo.base_url + view["thumbnail"], timeout=30)
        assert resp.status_code == 200 and resp.headers["Content-Type"] in {"image/jpeg", "image/png"}
        assert log.seen and all(h and h.startswith("Bearer ") for h in log.seen)
