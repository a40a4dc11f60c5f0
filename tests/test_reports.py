"""The report panel's API over real HTTP: the demo's sandbox EHR (FHIR) and PACS (DICOMweb) serve every report form.

Faye (pat-faye) has one study per source and format; Amy's MR knee is the amended report with
an addendum. Each report is fetched on open through `/api/reports/<archive_id>/<report_id>`.
"""

from __future__ import annotations

import pytest
import requests

from app.archives.auth import NoAuth
from app.archives.base import ArchiveClient, Subject
from app.archives.config import ArchiveConfig
from app.archives.fhir_reports import FhirReportReader
from app.errors import ReportUnavailable, ReportWrongPatient
from app.http import Deadline
from sandbox.data import study_uid
from tests import demo_fixtures
from tests.test_demo_flow import demo_server, launch, studies


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    with demo_server(tmp_path_factory.mktemp("reports")) as running:
        yield running


sandbox_state = demo_fixtures.sandbox_state  # cleared after each test (tests/demo_fixtures.py)


@pytest.fixture(scope="module")
def faye(demo):
    """A launched session for Faye, with her timeline listed once (as the page would)."""
    _, browser = launch(demo, "pat-faye", embedded="1")
    listing = studies(demo, browser)
    return browser, {s["uid"]: s for s in listing["studies"]}


def report_of(listing: dict, key: str, kind: str | None = None) -> dict:
    reports = listing[study_uid(key)]["reports"]
    return next(r for r in reports if kind is None or r["kind"] == kind)


def open_report(demo, browser, report: dict) -> requests.Response:
    return browser.get(f"{demo.base_url}/api/reports/{report['source']}/{report['id']}", timeout=30)


def test_the_contract_fields_are_all_there(demo, faye):
    browser, listing = faye
    body = open_report(demo, browser, report_of(listing, "faye-xr-chest")).json()
    assert {"id", "status", "issued", "author", "title", "reason", "text", "html", "attachments",
            "addenda"} <= set(body)
    assert body["id"] == "dr-faye-xr-chest" and body["status"] == "final"
    assert body["author"] == "Dr. Jane Radiant"
    assert body["reason"] == "Persistent cough"  # basedOn -> ServiceRequest.reasonCode


def test_an_html_report_keeps_its_sections_and_its_text(demo, faye):
    browser, listing = faye
    body = open_report(demo, browser, report_of(listing, "faye-xr-chest")).json()
    assert "<h2>Findings</h2>" in body["html"]
    assert [s["title"] for s in body["sections"]][-2:] == ["Findings", "Impression"]
    assert "The lungs are clear." in body["text"] and "No acute cardiopulmonary process." in body["text"]


def test_the_hostile_html_report_is_sanitised(demo, faye):
    browser, listing = faye
    body = open_report(demo, browser, report_of(listing, "faye-xr-knee")).json()
    html = body["html"].lower()
    for banned in ("<script", "<iframe", "<style", "<form", "<input", "<img", "onerror", "onclick", "javascript:",
                   "tracker.invalid", "style="):
        assert banned not in html, banned
    assert "Moderate osteoarthritis of the knee." in body["text"]
    assert "window.__hostileRan" not in body["text"]


def test_a_pdf_report_is_served_inline_in_a_sandbox(demo, faye):
    browser, listing = faye
    body = open_report(demo, browser, report_of(listing, "faye-ct-abdpel")).json()
    assert [a["content_type"] for a in body["attachments"]] == ["application/pdf"]
    assert body["text"] == "Acute uncomplicated sigmoid diverticulitis."  # the conclusion: the only text form
    resp = browser.get(demo.base_url + body["attachments"][0]["url"], timeout=30)
    assert resp.status_code == 200
    assert resp.content.startswith(b"%PDF-")
    assert resp.headers["Content-Type"] == "application/pdf"
    assert resp.headers["Content-Disposition"].startswith("inline;")
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Content-Security-Policy"].startswith("sandbox")


def test_a_note_only_as_document_reference_is_listed_and_read(demo, faye):
    browser, listing = faye
    report = report_of(listing, "faye-us-thyroid")
    assert (report["kind"], report["id"]) == ("DocumentReference", "DocumentReference:doc-faye-us-thyroid")
    body = open_report(demo, browser, report).json()
    assert "Right lobe 1.1 cm spongiform nodule" in body["text"]
    assert body["author"] == "Dr. Jane Radiant"
    assert any(s["what"] == "DocumentReference/doc-faye-us-thyroid" for s in body["sources"])


def test_an_empty_conclusion_still_opens_the_full_text(demo, faye):
    browser, listing = faye
    report = report_of(listing, "faye-mr-brain")
    assert report["conclusion"] is None
    body = open_report(demo, browser, report).json()
    assert "No mass, hemorrhage or infarct." in body["text"]
    assert "No acute intracranial abnormality" in next(s["text"] for s in body["sections"]
                                                       if s["title"] == "Impression")


def test_an_rtf_report_is_shown_as_text(demo, faye):
    browser, listing = faye
    body = open_report(demo, browser, report_of(listing, "faye-xr-lspine")).json()
    assert "Normal alignment. Disc heights preserved." in body["text"]
    assert "\\rtf" not in body["text"] and "html" not in body


def test_an_amended_report_shows_its_addendum(demo):
    _, browser = launch(demo, "pat-amy", embedded="1")
    listing = {s["uid"]: s for s in studies(demo, browser)["studies"]}
    body = open_report(demo, browser, report_of(listing, "amy-mr-knee")).json()
    assert body["status"] == "amended"
    assert [(a["kind"], a["title"]) for a in body["addenda"]] == [("addendum", "Addendum")]
    assert "small joint effusion" in body["addenda"][0]["text"]
    assert "Complete tear of the anterior cruciate ligament." in body["text"]


@pytest.mark.parametrize(("patient", "key"), [
    ("pat-ben", "ben-osh-ct-chest"),  # the outside facility, Backend Services token, subject by identifier
    ("pat-dev", "dev-osh-nm-bone"),  # the same, the patient linked through the PIXm manager
])
def test_an_outside_facilitys_report_is_read_with_its_own_credentials(demo, patient, key):
    _, browser = launch(demo, patient, embedded="1")
    listing = {s["uid"]: s for s in studies(demo, browser)["studies"]}
    report = next(r for r in listing[study_uid(key)]["reports"] if r["source"] == "outside")
    body = open_report(demo, browser, report).json()
    assert body["id"] == f"osh-dr-{key}"
    assert "IMPRESSION:" in body["text"]
    assert body["sources"][0] == {"archive": "outside", "name": "Outside Imaging Center",
                                  "what": f"DiagnosticReport/osh-dr-{key}"}


def test_a_dicom_sr_in_the_pacs_is_read_by_wado_rs(demo, faye):
    browser, listing = faye
    report = report_of(listing, "faye-ct-chest", kind="dicom")
    assert report["source"] == "pacs" and report["id"] == study_uid("faye-ct-chest")
    body = open_report(demo, browser, report).json()
    assert body["status"] == "final"
    assert body["author"] == "DR. JANE RADIANT"
    assert [s["title"] for s in body["sections"]] == ["Findings", "Impressions"]
    assert "Stable 4 mm right lower lobe nodule." in body["text"]


def test_an_encapsulated_pdf_in_the_pacs_is_served_through_the_app(demo, faye):
    browser, listing = faye
    body = open_report(demo, browser, report_of(listing, "faye-mg", kind="dicom")).json()
    assert body["attachments"][0]["content_type"] == "application/pdf"
    resp = browser.get(demo.base_url + body["attachments"][0]["url"], timeout=30)
    assert resp.status_code == 200 and resp.content.startswith(b"%PDF-") and resp.content.endswith(b"%%EOF\n")


def test_an_opened_report_is_cached_for_the_session(demo, faye, sandbox_state):
    browser, listing = faye
    report = report_of(listing, "faye-xr-chest")
    assert open_report(demo, browser, report).status_code == 200
    sandbox_state.faults["ehr"] = "500"
    assert open_report(demo, browser, report).json()["id"] == "dr-faye-xr-chest"


def test_an_archive_failure_is_a_clear_error_not_a_stack_trace(demo, sandbox_state):
    _, browser = launch(demo, "pat-faye", embedded="1")  # a new session: nothing cached yet
    listing = {s["uid"]: s for s in studies(demo, browser)["studies"]}
    sandbox_state.faults["ehr"] = "500"
    resp = open_report(demo, browser, report_of(listing, "faye-us-thyroid"))
    assert resp.status_code == 503
    assert resp.json()["error"] == "report-unavailable"
    assert "could not be read" in resp.json()["message"]


# --- bad inputs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "status", "message"), [
    ("/api/reports/nowhere/dr-faye-xr-chest", 404, 'No archive "nowhere" is connected to this timeline.'),
    ("/api/reports/ehr/dr-amy-mr-knee", 404, "No such report in this patient's timeline."),  # Amy's, in Faye's window
    ("/api/reports/ehr/dr-unknown", 404, "No such report in this patient's timeline."),
    (f"/api/reports/pacs/{study_uid('amy-mr-knee')}", 404, "No such report in this patient's timeline."),
    ("/api/reports/ehr/dr-faye-xr-chest/attachments/7", 404, "This report has no attachment 7."),
])
def test_bad_report_requests_are_refused_with_clear_errors(demo, faye, path, status, message):
    browser, _ = faye
    resp = browser.get(demo.base_url + path, timeout=30)
    assert resp.status_code == status
    assert resp.json()["message"] == message


def test_without_a_session_there_is_no_report(demo):
    resp = requests.get(f"{demo.base_url}/api/reports/ehr/dr-faye-xr-chest", timeout=30)
    assert resp.status_code == 401


# --- the reader against an HTTP double: what the guard does when the archive misbehaves ----------------


def reader(httpserver) -> FhirReportReader:
    base = httpserver.url_for("/fhir")
    config = ArchiveConfig(id="other", name="Riverside Imaging", kind="fhir", base_url=base, timeout_s=5)
    client = ArchiveClient(config, requests.Session(), NoAuth(), max_bytes=1_000_000)
    return FhirReportReader("other", "Riverside Imaging", base, client,
                            lambda res, deadline: Subject(reference=res.subject.reference if res.subject else None))


def only_jane(subject: Subject) -> bool:
    return subject.reference == "Patient/jane"


def test_a_report_whose_subject_is_another_patient_is_withheld(httpserver):
    httpserver.expect_request("/fhir/DiagnosticReport/dr-1").respond_with_json(
        {"resourceType": "DiagnosticReport", "id": "dr-1", "status": "final", "subject": {"reference": "Patient/x"},
         "code": {"text": "CT"}, "conclusion": "Someone else's finding."})
    with pytest.raises(ReportWrongPatient, match="returned this report for another patient"):
        reader(httpserver).read("dr-1", Deadline.after(5), only_jane)


def test_a_403_patient_mismatch_is_reported_as_such(httpserver):
    httpserver.expect_request("/fhir/DiagnosticReport/dr-1").respond_with_json(
        {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "forbidden",
                                                        "diagnostics": "Patient mismatch for this token"}]},
        status=403)
    with pytest.raises(ReportWrongPatient, match="it says this DiagnosticReport is not the launched patient's"):
        reader(httpserver).read("dr-1", Deadline.after(5), only_jane)


def test_a_busy_archive_is_retried_once_when_retry_after_fits(httpserver):
    httpserver.expect_ordered_request("/fhir/DiagnosticReport/dr-1").respond_with_data(
        "busy", status=503, headers={"Retry-After": "0"})
    httpserver.expect_ordered_request("/fhir/DiagnosticReport/dr-1").respond_with_json(
        {"resourceType": "DiagnosticReport", "id": "dr-1", "status": "final", "subject": {"reference": "Patient/jane"},
         "code": {"text": "CT"}, "conclusion": "Fine."})
    assert reader(httpserver).read("dr-1", Deadline.after(5), only_jane).view.text == "Fine."


def test_a_busy_archive_says_when_to_retry_when_the_wait_does_not_fit(httpserver):
    httpserver.expect_request("/fhir/DiagnosticReport/dr-1").respond_with_data(
        "busy", status=503, headers={"Retry-After": "120"})
    with pytest.raises(ReportUnavailable, match=r"Riverside Imaging is busy; retry in 120 s"):
        reader(httpserver).read("dr-1", Deadline.after(5), only_jane)


def test_binary_is_asked_for_with_the_attachments_content_type_and_never_elsewhere(httpserver, other_host):
    httpserver.expect_request("/fhir/DiagnosticReport/dr-1").respond_with_json(
        {"resourceType": "DiagnosticReport", "id": "dr-1", "status": "final", "subject": {"reference": "Patient/jane"},
         "code": {"text": "CT"}, "presentedForm": [
             {"contentType": "text/html", "url": "Binary/b-1", "title": "Report"},
             {"contentType": "text/plain", "url": other_host.url_for("/Binary/b-2"), "title": "Copy"}]})
    httpserver.expect_request("/fhir/Binary/b-1", headers={"Accept": "text/html"}).respond_with_data(
        "<h2>Findings</h2><p>Clear.</p>", content_type="text/html")
    view = reader(httpserver).read("dr-1", Deadline.after(5), only_jane).view
    assert view.html == "<h2>Findings</h2><p>Clear.</p>"
    assert other_host.log == []
    assert any("held at another server" in s.what for s in view.sources)


# --- images for every study that has them ----------------------------------------------------------


@pytest.mark.parametrize("patient", ["pat-amy", "pat-ben", "pat-carla", "pat-dev", "pat-elena", "pat-faye"])
def test_every_study_a_configured_archive_holds_has_a_viewer_link_else_a_reason(demo, patient):
    _, browser = launch(demo, patient, embedded="1")
    for view in studies(demo, browser)["studies"]:
        holders = set(view["sources"]) | {e["archive_id"] for e in view["endpoints"]}
        if "pacs" in holders:  # the demo's one archive with a viewer
            assert [v["archive"] for v in view["viewers"]] == ["pacs"], view["description"]
            assert view["images_note"] is None
        else:
            assert view["viewers"] == [] and view["images_note"], view["description"]


def test_a_corrected_report_shows_the_earlier_text_as_such(httpserver):
    import base64

    def form(title: str, text: str) -> dict:
        return {"contentType": "text/plain", "title": title, "data": base64.b64encode(text.encode()).decode()}

    httpserver.expect_request("/fhir/DiagnosticReport/dr-1").respond_with_json(
        {"resourceType": "DiagnosticReport", "id": "dr-1", "status": "corrected",
         "subject": {"reference": "Patient/jane"}, "code": {"text": "XR wrist"},
         "presentedForm": [form("Report", "IMPRESSION: Distal radius fracture, left."),
                           form("Original report", "IMPRESSION: Distal radius fracture, right.")]})
    view = reader(httpserver).read("dr-1", Deadline.after(5), only_jane).view
    assert view.status == "corrected"
    assert view.text == "IMPRESSION: Distal radius fracture, left."
    assert [(a.kind, a.title, a.text) for a in view.addenda] == [
        ("earlier", "Original report", "IMPRESSION: Distal radius fracture, right.")]
