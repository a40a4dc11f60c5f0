"""DICOM reports from a real Orthanc (DICOMweb plugin): a Basic Text SR and an Encapsulated PDF.

Faye's two PACS-only studies, made by the sandbox's own DICOM generator, are uploaded to Orthanc,
which the demo gets as an extra archive; the app must list them as having a report (ModalitiesInStudy
SR / DOC), find the report series by series-level QIDO, retrieve them by WADO-RS and read them.
"""

from __future__ import annotations

from datetime import date

import pytest
import requests

from sandbox.data import standard_data, study_uid
from sandbox.dicomgen import study_files_bytes
from tests.test_demo_flow import launch, studies
from tests.test_orthanc_demo import orthanc_demo_server

pytestmark = pytest.mark.orthanc
KEYS = ("faye-ct-chest", "faye-mg")


@pytest.fixture(scope="module")
def faye_in_orthanc(orthanc: str) -> None:
    root = orthanc.removesuffix("/dicom-web")
    data = standard_data(date.today())
    for study in data.studies:
        if study.key in KEYS:
            for blob in study_files_bytes(study):
                requests.post(f"{root}/instances", data=blob, timeout=30,
                              headers={"Content-Type": "application/dicom"}).raise_for_status()


@pytest.fixture(scope="module")
def demo_with_orthanc(tmp_path_factory, orthanc, faye_in_orthanc):
    with orthanc_demo_server(tmp_path_factory.mktemp("orthanc-reports"), orthanc) as demo:
        yield demo


@pytest.fixture(scope="module")
def faye(demo_with_orthanc):
    _, browser = launch(demo_with_orthanc, "pat-faye", embedded="1")
    listing = {s["uid"]: s for s in studies(demo_with_orthanc, browser)["studies"]}
    return browser, listing


def orthanc_report(demo, browser, listing, key: str) -> dict:
    uid = study_uid(key)
    report = next(r for r in listing[uid]["reports"] if r["source"] == "orthanc")
    assert (report["kind"], report["id"]) == ("dicom", uid)
    resp = browser.get(f"{demo.base_url}/api/reports/orthanc/{uid}", timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_a_basic_text_sr_in_orthanc_opens_as_text_with_sections(demo_with_orthanc, faye):
    browser, listing = faye
    body = orthanc_report(demo_with_orthanc, browser, listing, "faye-ct-chest")
    assert body["status"] == "final"
    assert body["title"] == "Diagnostic Imaging Report"
    assert [s["title"] for s in body["sections"]] == ["Findings", "Impressions"]
    assert "Stable 4 mm nodule over 12 months" in body["text"]
    assert body["sources"] == [{"archive": "orthanc", "name": "My Orthanc", "what": "DICOM Basic Text SR"}]


def test_an_encapsulated_pdf_in_orthanc_is_served_inline_through_the_app(demo_with_orthanc, faye):
    browser, listing = faye
    body = orthanc_report(demo_with_orthanc, browser, listing, "faye-mg")
    assert [(a["content_type"], a["title"]) for a in body["attachments"]] == [
        ("application/pdf", "MAMMO SCREENING BILATERAL report")]
    resp = browser.get(demo_with_orthanc.base_url + body["attachments"][0]["url"], timeout=30)
    assert resp.status_code == 200
    assert resp.content.startswith(b"%PDF-") and resp.content.rstrip().endswith(b"%%EOF")
    assert resp.headers["Content-Disposition"].startswith("inline;")
    assert resp.headers["Content-Security-Policy"].startswith("sandbox")
