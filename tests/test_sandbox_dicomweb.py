"""The sandbox DICOMweb archive answers QIDO-RS and WADO-RS like a real one, traps included."""

from __future__ import annotations

import email.parser
import email.policy
import io
from collections.abc import Iterator

import pydicom
import pytest
import requests
from PIL import Image
from pydicom import Dataset

from sandbox.data import OTHER_CLINIC_ISSUER, PACS_ISSUER, study_uid
from tests.test_sandbox_support import Sandbox, backend_token, running_sandbox


@pytest.fixture(scope="module")
def sb() -> Iterator[Sandbox]:
    with running_sandbox() as sandbox:
        yield sandbox


def qido(sb: Sandbox, path: str = "studies", **params: str) -> list[Dataset]:
    resp = requests.get(f"{sb.dicomweb}/{path}", params=params, timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"] == "application/dicom+json"
    return [Dataset.from_json(item) for item in resp.json()]


def test_qido_by_patient_id_and_issuer(sb: Sandbox) -> None:
    studies = qido(sb, PatientID="SB100001", IssuerOfPatientID=PACS_ISSUER)
    assert len(studies) == 4
    for ds in studies:
        assert ds.PatientID == "SB100001"
        assert ds.IssuerOfPatientID == PACS_ISSUER
        assert ds.PatientName.family_name == "SHAW"
        assert ds.RetrieveURL == f"{sb.dicomweb}/studies/{ds.StudyInstanceUID}"
        assert ds.NumberOfStudyRelatedInstances > 0


def test_qido_accepts_tags_instead_of_keywords(sb: Sandbox) -> None:
    assert len(qido(sb, **{"00100020": "SB100001", "00100021": PACS_ISSUER})) == 4


def test_query_without_issuer_returns_another_clinics_patient(sb: Sandbox) -> None:
    studies = qido(sb, PatientID="SB100001")
    strangers = [ds for ds in studies if ds.get("IssuerOfPatientID") != PACS_ISSUER]
    assert len(studies) == 5
    assert "IssuerOfPatientID" not in strangers[0]  # not asked for, not returned
    full = qido(sb, PatientID="SB100001", includefield="IssuerOfPatientID,PatientBirthDate")
    assert {ds.IssuerOfPatientID for ds in full} == {PACS_ISSUER, OTHER_CLINIC_ISSUER}
    other = next(ds for ds in full if ds.IssuerOfPatientID == OTHER_CLINIC_ISSUER)
    assert str(other.PatientName) == "PRICE^DANIEL"


def test_patient_id_is_case_sensitive_by_default(sb: Sandbox) -> None:
    assert qido(sb, PatientID="sb100001", IssuerOfPatientID=PACS_ISSUER)[0].PatientName == "WEBB^TOMAS"
    assert len(qido(sb, PatientID="SB100001", IssuerOfPatientID=PACS_ISSUER)) == 4


def test_case_insensitive_mode_returns_the_lower_case_trap() -> None:
    with running_sandbox(dicomweb_patient_id_case_insensitive=True) as sandbox:
        names = {str(ds.PatientName) for ds in qido(sandbox, PatientID="SB100001", IssuerOfPatientID=PACS_ISSUER)}
    assert "WEBB^TOMAS" in names and "SHAW^AMY V." in names


def test_birth_date_conflict_is_in_the_header(sb: Sandbox) -> None:
    studies = qido(sb, PatientID="SB100004", IssuerOfPatientID=PACS_ISSUER, includefield="PatientBirthDate")
    assert sorted({ds.PatientBirthDate for ds in studies}) == ["19491103", "19491130"]


@pytest.mark.parametrize(("params", "count"), [
    ({"StudyDate": "20200101-20231231"}, 2),
    ({"StudyDate": "-20200101"}, 0),
    ({"ModalitiesInStudy": "MR"}, 2),
    ({"ModalitiesInStudy": "MR,CR"}, 3),
    ({"AccessionNumber": "SGH*"}, 4),
    ({"limit": "2"}, 2),
    ({"limit": "2", "offset": "3"}, 1),
])
def test_qido_matching(sb: Sandbox, params: dict[str, str], count: int) -> None:
    assert len(qido(sb, PatientID="SB100001", IssuerOfPatientID=PACS_ISSUER, **params)) == count


@pytest.mark.parametrize(("params", "message"), [
    ({"limit": "-1"}, 'Argument "limit" must be a non-negative integer.'),
    ({"offset": "x"}, 'Argument "offset" must be a non-negative integer.'),
])
def test_qido_bad_arguments(sb: Sandbox, params: dict[str, str], message: str) -> None:
    resp = requests.get(f"{sb.dicomweb}/studies", params=params, timeout=10)
    assert (resp.status_code, resp.text) == (400, message)


def test_unsupported_matching_key_is_ignored_with_a_warning(sb: Sandbox) -> None:
    resp = requests.get(f"{sb.dicomweb}/studies", params={"PatientID": "SB100001", "Bogus": "1"}, timeout=10)
    assert resp.status_code == 200
    assert "Bogus" in resp.headers["Warning"]


def test_series_and_instances(sb: Sandbox) -> None:
    uid = study_uid("amy-mr-brain")
    series = qido(sb, f"studies/{uid}/series", includefield="BodyPartExamined")
    assert [s.Modality for s in series] == ["MR", "MR", "MR"]
    assert series[0].BodyPartExamined == "BRAIN"
    instances = qido(sb, f"studies/{uid}/series/{series[0].SeriesInstanceUID}/instances")
    assert len(instances) == series[0].NumberOfSeriesRelatedInstances == 3
    assert instances[0].SOPClassUID == pydicom.uid.MRImageStorage


def test_unknown_study_is_404(sb: Sandbox) -> None:
    assert requests.get(f"{sb.dicomweb}/studies/1.2.3/series", timeout=10).status_code == 404


def test_metadata_points_pixel_data_to_bulk_data(sb: Sandbox) -> None:
    uid = study_uid("amy-xr-chest")
    items = requests.get(f"{sb.dicomweb}/studies/{uid}/metadata", timeout=10).json()
    assert len(items) == 2
    assert items[0]["7FE00010"]["BulkDataURI"].endswith("/frames/1")
    assert Dataset.from_json(items[0], lambda *_: b"").Modality == "CR"


def test_retrieve_study_is_multipart_part10(sb: Sandbox) -> None:
    uid = study_uid("amy-xr-chest")
    resp = requests.get(f"{sb.dicomweb}/studies/{uid}", timeout=10)
    assert resp.headers["Content-Type"].startswith('multipart/related; type="application/dicom"')
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + resp.headers["Content-Type"].encode() + b"\r\n\r\n" + resp.content)
    parts = [pydicom.dcmread(io.BytesIO(p.get_payload(decode=True))) for p in message.iter_parts()]
    assert [p.StudyInstanceUID for p in parts] == [uid, uid]


def test_rendered_instance_is_a_png_fitted_to_the_viewport(sb: Sandbox) -> None:
    uid = study_uid("amy-mr-brain")
    ds = qido(sb, f"studies/{uid}/series")[0]
    sop = qido(sb, f"studies/{uid}/series/{ds.SeriesInstanceUID}/instances")[0].SOPInstanceUID
    resp = requests.get(f"{sb.dicomweb}/studies/{uid}/series/{ds.SeriesInstanceUID}/instances/{sop}/rendered",
                        params={"viewport": "256,128"}, timeout=10)
    assert resp.headers["Content-Type"] == "image/png"
    assert resp.content.startswith(b"\x89PNG")
    assert Image.open(io.BytesIO(resp.content)).size == (128, 128)


@pytest.mark.parametrize("level", ["", "/series/{series}"])
def test_thumbnail_as_jpeg(sb: Sandbox, level: str) -> None:
    uid = study_uid("carla-mg-1")
    series = qido(sb, f"studies/{uid}/series")[0].SeriesInstanceUID
    resp = requests.get(f"{sb.dicomweb}/studies/{uid}{level.format(series=series)}/thumbnail",
                        headers={"Accept": "image/jpeg"}, timeout=10)
    assert resp.headers["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(resp.content)).size == (128, 128)


def test_rendered_refuses_other_media_types(sb: Sandbox) -> None:
    resp = requests.get(f"{sb.dicomweb}/studies/{study_uid('carla-mg-1')}/rendered",
                        headers={"Accept": "image/gif"}, timeout=10)
    assert resp.status_code == 406


def test_same_study_in_the_ehr_and_the_archive(sb: Sandbox) -> None:
    token = backend_token(sb)
    ehr = requests.get(f"{sb.fhir}/ImagingStudy", params={"patient": "pat-amy"},
                       headers={"Authorization": f"Bearer {token}"}, timeout=10).json()
    ehr_uids = {i["value"].removeprefix("urn:oid:") for e in ehr["entry"] for i in e["resource"]["identifier"]
                if i["system"] == "urn:dicom:uid"}
    pacs_uids = {ds.StudyInstanceUID for ds in qido(sb, PatientID="SB100001", IssuerOfPatientID=PACS_ISSUER)}
    assert len(ehr_uids & pacs_uids) == 3
    assert pacs_uids - ehr_uids == {study_uid("amy-ct-abdpel")}


def test_basic_auth_when_configured() -> None:
    with running_sandbox(dicomweb_basic_auth=("pacs", "pw")) as sandbox:
        url = f"{sandbox.dicomweb}/studies"
        refused = requests.get(url, timeout=10)
        accepted = requests.get(url, auth=("pacs", "pw"), params={"PatientID": "SB100002"}, timeout=10)
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"] == 'Basic realm="sandbox-pacs"'
    assert accepted.status_code == 200


def test_dicomweb_faults(sb: Sandbox) -> None:
    sb.runtime.faults["dicomweb"] = "503"
    try:
        assert requests.get(f"{sb.dicomweb}/studies", timeout=10).status_code == 503
    finally:
        sb.runtime.faults.pop("dicomweb")


def test_the_sandbox_viewer_lays_the_asked_studies_side_by_side_with_rendered_series(sb: Sandbox) -> None:
    """The stand-in for OHIF (direct links): each study in the asked order, each series' image renders."""
    import re

    current, prior = qido(sb, PatientID="SB100001", IssuerOfPatientID=PACS_ISSUER)[:2]
    uids = [current.StudyInstanceUID, prior.StudyInstanceUID]
    page = requests.get(f"{sb.base}/viewer/ohif/viewer", params={"StudyInstanceUIDs": ",".join(uids)}, timeout=10)
    assert page.status_code == 200
    assert re.findall(r'class="box viewer-study" data-study-uid="([^"]+)"', page.text) == uids
    assert "data-via" not in page.text and "gateway" not in page.text  # straight from the archive
    images = re.findall(r'<img alt="[^"]*" width="256" height="256" src="([^"]+)">', page.text)
    assert images and all("/rendered?viewport=256,256" in src for src in images)
    rendered = requests.get(f"{sb.origin}{images[0].replace('&amp;', '&')}", timeout=10)
    assert rendered.status_code == 200 and Image.open(io.BytesIO(rendered.content)).size[0] <= 256
    missing = requests.get(f"{sb.base}/viewer/ohif/viewer", params={"StudyInstanceUIDs": "1.2.3"}, timeout=10)
    assert missing.status_code == 404 and "None of the requested studies" in missing.text
