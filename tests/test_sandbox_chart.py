"""The sandbox EHR's chart page launches the app the way an EHR does; its data is deterministic and valid."""

from __future__ import annotations

import html
import io
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pydicom
import pytest
import requests

from sandbox import dicomgen
from sandbox.data import (
    BIRTH_DATE_CONFLICT_KEY,
    FOREIGN_PACS_ENDPOINT,
    MRN_SYSTEM,
    OUTSIDE_SYSTEM,
    big_patient,
    standard_data,
)
from tests.test_sandbox_support import APP, TODAY, Sandbox, running_sandbox


@pytest.fixture(scope="module")
def sb() -> Iterator[Sandbox]:
    with running_sandbox() as sandbox:
        yield sandbox


def test_chart_lists_patients_with_an_iframe_launch_each(sb: Sandbox) -> None:
    page = requests.get(f"{sb.base}/", timeout=10)
    assert page.status_code == 200
    text = html.unescape(page.text)
    assert '<iframe name="app-frame"' in text and 'width="900"' in text
    for patient in ("pat-amy", "pat-ben", "pat-carla", "pat-dev", "pat-elena"):
        assert f'href="/sandbox/launch?patient={patient}&embedded=1"' in text
        assert f'href="/sandbox/launch?patient={patient}"' in text
    assert "SB100003" in text and "1975-05-03" in text and "Jiménez, Carla" in text
    assert f'href="{APP}/launch?iss={sb.fhir.replace(":", "%3A").replace("/", "%2F")}"' in text


def test_chart_with_a_selected_patient_frames_its_launch(sb: Sandbox) -> None:
    text = html.unescape(requests.get(f"{sb.base}/", params={"patient": "pat-ben"}, timeout=10).text)
    assert 'src="/sandbox/launch?patient=pat-ben&embedded=1"' in text


def test_launch_redirects_to_the_app_with_iss_and_launch(sb: Sandbox) -> None:
    resp = sb.get(f"{sb.base}/launch", params={"patient": "pat-amy"})
    location = urlsplit(resp.headers["Location"])
    query = parse_qs(location.query)
    assert (resp.status_code, f"{location.scheme}://{location.netloc}{location.path}") == (302, f"{APP}/launch")
    assert query["iss"] == [sb.fhir]
    assert len(query["launch"][0]) >= 20


@pytest.mark.parametrize(("params", "status"), [
    ({"patient": "nobody"}, 404),
    ({}, 404),
    ({"patient": "pat-amy", "fhir_context": "not a reference"}, 400),
    ({"patient": "pat-amy", "intent": "<script>"}, 400),
])
def test_bad_launches_get_an_error_page(sb: Sandbox, params: dict[str, str], status: int) -> None:
    resp = sb.get(f"{sb.base}/launch", params=params)
    assert resp.status_code == status
    assert "Back to the chart" in resp.text


def test_patients_json(sb: Sandbox) -> None:
    rows = {r["id"]: r for r in requests.get(f"{sb.base}/patients", timeout=10).json()}
    assert rows["pat-amy"]["name"] == "Amy V. Shaw"
    assert rows["pat-amy"]["identifiers"] == [{"system": MRN_SYSTEM, "value": "SB100001"},
                                              {"system": OUTSIDE_SYSTEM, "value": "RRH-550101"}]
    assert rows["pat-carla"]["identifiers"] == [{"system": MRN_SYSTEM, "value": "SB100003"}]


def test_smart_style_document(sb: Sandbox) -> None:
    style = requests.get(f"{sb.base}/smart-style.json", timeout=10).json()
    assert {"color_background", "color_highlight", "font_family_body"} <= set(style)


# --- data and DICOM generation ------------------------------------------------------------------


def test_data_is_deterministic() -> None:
    assert standard_data(TODAY) == standard_data(TODAY)


def test_data_covers_the_demo_cases() -> None:
    data = standard_data(TODAY)
    assert len(data.patients) >= 5
    assert [p.id for p in data.patients if not p.outside_mrn] == ["pat-carla"]
    assert any(p.outside_given and p.outside_given != p.given for p in data.patients)
    assert {m for s in data.studies for m in s.modalities} >= {"CT", "MR", "CR", "DX", "US", "MG", "NM", "PT"}
    stat = [s for s in data.studies if s.order and s.order.priority == "stat"]
    assert stat and all(s.report and s.report.status != "final" for s in stat)
    assert {s.report.status for s in data.studies if s.report} == {"final", "preliminary", "amended"}
    assert any(s.report and s.report.interpretation == "AA" for s in data.studies)
    assert any(s.outside_endpoint == FOREIGN_PACS_ENDPOINT for s in data.studies)
    conflict = next(s for s in data.studies if s.key == BIRTH_DATE_CONFLICT_KEY)
    assert conflict.dicom_patient.birth_date != data.patient(conflict.patient_id or "").birth_date


def test_instances_are_valid_part10() -> None:
    study = next(s for s in standard_data(TODAY).studies if s.key == "ben-pet-ct")
    files = dicomgen.study_files_bytes(study)
    assert len(files) == study.instance_count
    for raw in files:
        assert raw[128:132] == b"DICM"
        ds = pydicom.dcmread(io.BytesIO(raw))
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.StudyInstanceUID == study.uid
        assert ds.PatientID == "SB100002" and ds.IssuerOfPatientID == "SANDBOX-PACS"
        assert len(ds.PixelData) == ds.Rows * ds.Columns
    assert {pydicom.dcmread(io.BytesIO(f)).Modality for f in files} == {"CT", "PT"}


def test_big_patient_is_cheap() -> None:
    data = big_patient(200, today=TODAY)
    assert len(data.studies) == 200
    assert len({s.uid for s in data.studies}) == 200
