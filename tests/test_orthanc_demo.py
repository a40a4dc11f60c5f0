"""A real Orthanc as an integrator's own PACS, added to the demo with --extra-archives.

The sandbox patients' PACS studies are loaded into Orthanc as Part-10 files made by the sandbox's
own DICOM generator; the app must find them by MRN + issuer, merge them with the EHR's copies,
and fetch thumbnails from Orthanc's rendered endpoint (the DICOMweb plugin 1.7 has no /thumbnail).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import date
from pathlib import Path

import pytest
import requests

from sandbox.data import MRN_SYSTEM, PACS_ISSUER, standard_data
from sandbox.demo import Demo
from sandbox.dicomgen import study_files_bytes
from tests.test_demo_flow import demo_server, launch, studies


@pytest.fixture(scope="module")
def amy_in_orthanc(orthanc: str) -> list[str]:
    """Amy's PACS studies uploaded to the real Orthanc; the UIDs of those filed under her MRN and issuer."""
    root = orthanc.removesuffix("/dicom-web")
    data = standard_data(date.today())
    uploaded = []
    for study in data.studies_in("pacs"):
        if study.patient_id != "pat-amy":
            continue
        for blob in study_files_bytes(study):
            resp = requests.post(f"{root}/instances", data=blob, timeout=30,
                                 headers={"Content-Type": "application/dicom"})
            resp.raise_for_status()
        if study.dicom_patient.issuer != PACS_ISSUER:
            continue  # filed under another issuer (an outside study kept in this PACS): not Amy here
        uploaded.append(study.uid)
    return uploaded


def orthanc_demo_server(workdir: Path, orthanc: str) -> AbstractContextManager[Demo]:
    """demo_server in `workdir` with the real Orthanc as extra archive "orthanc" (the sandbox PACS's MRNs + issuer)."""
    extra = workdir / "orthanc.toml"
    extra.write_text(
        '[[archive]]\nid = "orthanc"\nname = "My Orthanc"\nkind = "dicomweb"\n'
        f'base_url = "{orthanc}"\nidentifier_system = "{MRN_SYSTEM}"\nissuer_of_patient_id = "{PACS_ISSUER}"\n'
        'auth = { kind = "none" }\n')
    return demo_server(workdir, extra_archives=str(extra))


@pytest.fixture
def demo_with_orthanc(tmp_path, orthanc, amy_in_orthanc):
    with orthanc_demo_server(tmp_path, orthanc) as demo:
        yield demo


def test_orthanc_studies_merge_with_the_ehrs_copies(demo_with_orthanc, amy_in_orthanc):
    _, browser = launch(demo_with_orthanc, "pat-amy", embedded="1")
    data = studies(demo_with_orthanc, browser)
    status = next(a for a in data["archives"] if a["id"] == "orthanc")
    assert (status["status"], status["count"]) == ("ok", len(amy_in_orthanc))
    from_orthanc = {s["uid"] for s in data["studies"] if "orthanc" in s["sources"]}
    assert from_orthanc == set(amy_in_orthanc)
    merged = [s for s in data["studies"] if {"orthanc", "ehr", "pacs"} <= set(s["sources"])]
    assert merged, "the same study from Orthanc, the sandbox PACS and the EHR is one row"


def test_a_thumbnail_comes_from_orthancs_rendered_endpoint(demo_with_orthanc, amy_in_orthanc):
    _, browser = launch(demo_with_orthanc, "pat-amy", embedded="1")
    studies(demo_with_orthanc, browser)
    uid = amy_in_orthanc[0]
    resp = browser.get(f"{demo_with_orthanc.base_url}/api/thumbnail/orthanc/{uid}", timeout=30)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] in {"image/jpeg", "image/png"}
    assert len(resp.content) > 100


def test_another_patient_in_orthanc_is_not_linked_to_amys_timeline(demo_with_orthanc):
    _, browser = launch(demo_with_orthanc, "pat-ben", embedded="1")
    data = studies(demo_with_orthanc, browser)
    status = next(a for a in data["archives"] if a["id"] == "orthanc")
    assert (status["status"], status["count"]) == ("ok", 0)
