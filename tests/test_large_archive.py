"""Large, capped and slow archives: a 5,000-study patient in a real Orthanc, stated truncation, partial answers."""

from __future__ import annotations

import json
import time
from datetime import date, timedelta

import pytest
from conftest import MRN_SYSTEM
from orthanc import FakeStudy, installed, running_orthanc, upload_zip

from app.archives.config import ArchiveConfig
from app.federation import Federation
from app.identity import BIRTH_DATE_UNREADABLE
from app.models import Identifier, LaunchContext, PatientSummary

CTX = LaunchContext(iss="http://ehr.invalid/fhir", patient_id="pat-big", granted_scopes=frozenset())
ISSUER = "SANDBOX-PACS"
BIG = 5000
PATIENT = PatientSummary(id="pat-big", name="Morgan Bigsby", birth_date=date(1950, 1, 1), sex="other",
                         identifiers=(Identifier(MRN_SYSTEM, "BIG-0001"),))


class _NoToken:
    def access_token(self) -> str:
        raise AssertionError("no archive here uses the EHR token")


def pacs(base_url: str, **changes) -> ArchiveConfig:
    fields = {"id": "pacs", "name": "Main PACS", "kind": "dicomweb", "base_url": base_url,
              "identifier_system": MRN_SYSTEM, "issuer_of_patient_id": ISSUER}
    return ArchiveConfig(**{**fields, **changes})


@pytest.fixture(scope="module")
def big_orthanc(tmp_path_factory: pytest.TempPathFactory):
    """A real Orthanc holding 5,000 single-instance studies of one patient (uploaded as one ZIP)."""
    if not installed():
        pytest.skip("Orthanc not installed: apt-get install orthanc orthanc-dicomweb")
    first = date(2025, 6, 1)
    studies = [FakeStudy("BIG-0001", ISSUER, name="BIGSBY^MORGAN", birth_date="19500101", sex="O",
                         study_date=(first - timedelta(days=n)).strftime("%Y%m%d"), accession=f"BIG{n:05d}",
                         description="CT CHEST").with_uid() for n in range(BIG)]
    with running_orthanc(tmp_path_factory.mktemp("big-orthanc"), startup_s=60) as root:
        upload_zip(root, studies)
        yield f"{root}/dicom-web"


@pytest.mark.orthanc
def test_a_5000_study_patient_loads_from_orthanc_within_the_default_timeout(big_orthanc):
    archive = pacs(big_orthanc, max_results=BIG)
    assert archive.timeout_s == 10.0  # the default

    result = Federation([archive], deadline_s=30.0).search(PATIENT, CTX, _NoToken())

    status = result.archives[0]
    assert (status.status, status.count, status.partial, status.reason) == ("ok", BIG, False, None)
    assert len(result.studies) == BIG


@pytest.mark.orthanc
def test_the_default_cap_says_how_many_are_shown_and_how_to_see_more(big_orthanc):
    result = Federation([pacs(big_orthanc)]).search(PATIENT, CTX, _NoToken())

    status = result.archives[0]
    assert (status.status, status.count, len(result.studies), status.partial) == ("ok", 500, 500, True)
    assert status.reason == "showing 500 of at least 501 — narrow by date (max_results = 500)"
    assert status.message == "Showing 500 studies; this archive holds more. Narrow by date to see others."
    assert status.to_json()["partial"] is True


def study_json(uid: str, birth: str = "19500101") -> dict:
    return {"0020000D": {"vr": "UI", "Value": [uid]}, "00080020": {"vr": "DA", "Value": ["20240301"]},
            "00080061": {"vr": "CS", "Value": ["CT"]}, "00081030": {"vr": "LO", "Value": ["CT CHEST"]},
            "00100020": {"vr": "LO", "Value": ["BIG-0001"]}, "00100021": {"vr": "LO", "Value": [ISSUER]},
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "BIGSBY^MORGAN"}]},
            "00100030": {"vr": "DA", "Value": [birth]}, "00100040": {"vr": "CS", "Value": ["O"]}}


def test_page_size_pages_by_that_many(httpserver):
    held = [study_json(f"1.{n}") for n in range(5)]

    def answer(request):
        from werkzeug import Response

        offset, limit = int(request.args["offset"]), int(request.args["limit"])
        return Response(json.dumps(held[offset:offset + limit]), content_type="application/dicom+json")

    httpserver.expect_request("/dicom-web/studies").respond_with_handler(answer)

    result = Federation([pacs(httpserver.url_for("/dicom-web"), page_size=2)]).search(PATIENT, CTX, _NoToken())

    sent = [(r.args["limit"], r.args["offset"]) for r, _ in httpserver.log]
    assert sent == [("2", "0"), ("2", "2"), ("2", "4")]
    assert (result.archives[0].count, result.archives[0].partial) == (5, False)


def test_a_deadline_after_the_first_page_keeps_what_arrived_marked_partial(threaded_httpserver):
    server = threaded_httpserver
    calls = {"n": 0}

    def answer(request):
        from werkzeug import Response

        calls["n"] += 1
        if calls["n"] > 1:
            time.sleep(1.5)  # the second page arrives after the archive's timeout
        return Response(json.dumps([study_json(f"2.{calls['n']}.{k}") for k in range(2)]),
                        content_type="application/dicom+json")

    server.expect_request("/dicom-web/studies").respond_with_handler(answer)
    archive = pacs(server.url_for("/dicom-web"), page_size=2, timeout_s=1.0)

    result = Federation([archive]).search(PATIENT, CTX, _NoToken())

    status = result.archives[0]
    assert [s.uid for s in result.studies] == ["2.1.0", "2.1.1"]
    assert (status.status, status.count, status.partial, status.retry) == ("timeout", 2, True, True)
    assert status.reason == "showing 2; the archive did not finish within 1 s — narrow by date or try again"
    assert status.message == "This archive did not answer in time. Showing the 2 studies it had sent."


def test_an_unreadable_birth_date_shows_the_study_with_a_badge(httpserver):
    httpserver.expect_request("/dicom-web/studies").respond_with_json([study_json("3.1", birth="12/25/1961")])

    result = Federation([pacs(httpserver.url_for("/dicom-web"))]).search(PATIENT, CTX, _NoToken())

    assert [s.uid for s in result.studies] == ["3.1"]
    assert result.studies[0].badges == [BIRTH_DATE_UNREADABLE]
    assert (result.archives[0].skipped, result.archives[0].dropped) == (0, 0)
