"""IHE PIXm cross-references: asked only when the EHR lacks the identifier, never guessed."""

from __future__ import annotations

import pytest
import requests

from app.errors import ArchiveError, ArchiveNotLinked
from app.http import Deadline
from app.models import Identifier, PatientSummary
from app.pixm import cross_reference

MRN = "urn:oid:2.999.7418.1.1"
OUTSIDE = "urn:oid:2.999.7418.2.1"
PATIENT = PatientSummary("pat-1", "Dev Patel", identifiers=(Identifier("urn:other", "X-1"), Identifier(MRN, "SB1")))


def parameters(*values: str, system: str = OUTSIDE) -> dict:
    return {"resourceType": "Parameters", "parameter": [
        {"name": "targetIdentifier", "valueIdentifier": {"system": system, "value": v}} for v in values]}


def ask(httpserver) -> Identifier | None:
    return cross_reference(requests.Session(), httpserver.url_for("/pixm"), PATIENT, OUTSIDE,
                           deadline=Deadline.after(5), timeout=5)


def test_the_target_identifier_is_returned_and_the_query_names_source_and_target(httpserver):
    httpserver.expect_request("/pixm/Patient/$ihe-pix").respond_with_json(parameters("RRH-1"))

    assert ask(httpserver) == Identifier(OUTSIDE, "RRH-1")
    request, _ = httpserver.log[0]
    assert request.args["sourceIdentifier"] == "urn:other|X-1"
    assert request.args["targetSystem"] == OUTSIDE


def test_an_unknown_source_identifier_moves_on_to_the_next_one(httpserver):
    def answer(request):
        from werkzeug import Response

        if request.args["sourceIdentifier"].startswith("urn:other"):
            return Response('{"resourceType": "OperationOutcome"}', status=404)
        return Response('{"resourceType": "Parameters", "parameter": [{"name": "targetIdentifier", '
                        f'"valueIdentifier": {{"system": "{OUTSIDE}", "value": "RRH-2"}}}}]}}',
                        content_type="application/fhir+json")

    httpserver.expect_request("/pixm/Patient/$ihe-pix").respond_with_handler(answer)

    assert ask(httpserver) == Identifier(OUTSIDE, "RRH-2")
    assert len(httpserver.log) == 2


def test_no_cross_reference_is_none(httpserver):
    httpserver.expect_request("/pixm/Patient/$ihe-pix").respond_with_json(parameters(system="urn:elsewhere"))
    assert ask(httpserver) is None


def test_several_identifiers_in_the_target_domain_are_not_guessed_between(httpserver):
    httpserver.expect_request("/pixm/Patient/$ihe-pix").respond_with_json(parameters("RRH-1", "RRH-9"))
    with pytest.raises(ArchiveNotLinked, match=r"returned 2 identifiers in domain \S+; ambiguous"):
        ask(httpserver)


@pytest.mark.parametrize("status, body, message", [
    (500, "oops", "answered HTTP 500"),
    (200, "<html>", "was not JSON"),
    (200, '{"resourceType": "Bundle"}', "was not a FHIR Parameters resource"),
])
def test_a_failing_manager_is_an_archive_error(httpserver, status, body, message):
    httpserver.expect_request("/pixm/Patient/$ihe-pix").respond_with_data(body, status=status)
    with pytest.raises(ArchiveError, match=message):
        ask(httpserver)


def test_an_unreachable_manager_is_an_archive_error():
    with pytest.raises(ArchiveError, match="unreachable"):
        cross_reference(requests.Session(), "http://127.0.0.1:9/pixm", PATIENT, OUTSIDE,
                        deadline=Deadline.after(5), timeout=2)


def test_the_sandbox_manager_knows_the_cross_reference_the_ehr_lacks(tmp_path):
    from tests.test_demo_flow import demo_server

    with demo_server(tmp_path) as demo:
        url = f"{demo.base_url}/sandbox/pixm/Patient/$ihe-pix"
        known = requests.get(url, params={"sourceIdentifier": f"{MRN}|SB100004", "targetSystem": OUTSIDE}, timeout=10)
        unknown = requests.get(url, params={"sourceIdentifier": f"{MRN}|NOPE"}, timeout=10)
        malformed = requests.get(url, params={"sourceIdentifier": "no-bar"}, timeout=10)
    assert known.json()["parameter"] == [
        {"name": "targetIdentifier", "valueIdentifier": {"system": OUTSIDE, "value": "RRH-550104"}}]
    assert (unknown.status_code, malformed.status_code) == (404, 400)
