"""The patient-scoped DICOMweb gateway against a real Orthanc (with the other-issuer trap) and the demo.

What a viewer can reach through `/dicomweb/<capability>` is exactly what the timeline shows: QIDO
answers only the guarded studies, whatever it is asked; WADO of anything else is 404; a dead
capability is 401; every refusal is audited; no archive credential reaches the browser.
"""

from __future__ import annotations

import json
import re
import time

import pytest
import requests
from gateway_env import gateway_env, instances_of, series_of
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from app.capabilities import Capabilities, CapabilityRefused, digest
from app.session_store import SQLiteStore

DICOM_JSON = {"Accept": "application/dicom+json"}
FRAMES = {"Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"}
VIEWER = "https://viewer.example"


class Clock:
    """An injectable epoch clock (the gateway's capabilities expire by it)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


GATEWAY_CLOCK = Clock()


@pytest.fixture(scope="module")
def env(tmp_path_factory, orthanc):  # `orthanc`: skips (or fails in CI) where Orthanc is not installed
    with gateway_env(tmp_path_factory.mktemp("gateway"), viewer_url=VIEWER,
                     app_options={"GATEWAY_CLOCK": GATEWAY_CLOCK}) as running:
        yield running


@pytest.fixture(scope="module")
def amy(env):
    """Amy's browser session and its gateway base (the timeline was loaded, so the guard has run)."""
    browser = env.launch("pat-amy")
    return browser, env.gateway(browser)


def uids(answer: requests.Response) -> set[str]:
    assert answer.status_code == 200, answer.text
    return {item["0020000D"]["Value"][0] for item in answer.json()}


def first_series(base: str, study: str) -> str:
    return series_of(base, study)[0]


def first_instance(base: str, study: str, series: str) -> str:
    return instances_of(base, study, series)[0]


def events(env, name: str) -> list[dict]:
    return [fields for event, fields in env.audit if event == name]


# --- QIDO-RS: exactly the guarded timeline ---------------------------------------------------------


def test_qido_studies_answers_exactly_the_timelines_dicomweb_studies(env, amy):
    browser, base = amy
    timeline = env.studies(browser)["studies"]
    reachable = {s["uid"] for s in timeline if any("gateway" in v for v in s["viewers"])}
    answer = requests.get(f"{base}/studies", headers=DICOM_JSON, timeout=30)
    answered = uids(answer)
    assert env.amy in answered
    assert answered == reachable
    assert env.orthanc not in answer.text, "RetrieveURLs point at the gateway, not the archive"
    assert not {env.other_issuer, env.case_variant} & answered


def test_all_studies_of_the_patient_by_patientid_is_the_guarded_timeline_not_orthancs_answer(env, amy):
    _, base = amy
    direct = uids(requests.get(f"{env.dicomweb}/studies", params={"PatientID": "SB100001"}, headers=DICOM_JSON,
                               timeout=10))
    assert {env.amy, env.other_issuer, env.case_variant} <= direct, "Orthanc itself returns the traps"
    answered = uids(requests.get(f"{base}/studies", params={"PatientID": "SB100001"}, headers=DICOM_JSON, timeout=30))
    assert env.amy in answered
    assert not {env.other_issuer, env.case_variant} & answered


def test_asking_for_the_trap_by_uid_answers_nothing_and_is_audited(env, amy):
    _, base = amy
    answer = requests.get(f"{base}/studies", params={"StudyInstanceUID": env.other_issuer}, headers=DICOM_JSON,
                          timeout=30)
    assert uids(answer) == set()
    assert any(e["study"] == env.other_issuer for e in events(env, "study-outside-set"))


def test_a_uid_list_is_narrowed_to_the_guarded_studies(env, amy):
    _, base = amy
    answer = requests.get(f"{base}/studies", params={"StudyInstanceUID": f"{env.amy},{env.other_issuer}"},
                          headers=DICOM_JSON, timeout=30)
    assert uids(answer) == {env.amy}


@pytest.mark.parametrize(("key", "value"), [
    ("PatientID", "SB100002"),
    ("00100020", "SB100002"),
    ("PatientID", "sb100001"),
    ("PatientID", "SB*"),
    ("IssuerOfPatientID", "OTHER-HOSPITAL"),
])
def test_a_query_for_another_patient_is_refused_and_audited(env, amy, key, value):
    _, base = amy
    before = len(events(env, "another-patient"))
    answer = requests.get(f"{base}/studies", params={key: value}, headers=DICOM_JSON, timeout=10)
    assert answer.status_code == 404
    assert answer.json()["error"] == "gateway-not-found"
    assert len(events(env, "another-patient")) == before + 1


def test_paging_applies_to_the_guarded_answer(env, amy):
    _, base = amy
    everything = requests.get(f"{base}/studies", headers=DICOM_JSON, timeout=30).json()
    page = requests.get(f"{base}/studies", params={"limit": 1, "offset": 1}, headers=DICOM_JSON, timeout=30).json()
    assert page == everything[1:2]


def test_series_and_instances_of_a_guarded_study(env, amy):
    _, base = amy
    series = requests.get(f"{base}/studies/{env.amy}/series", headers=DICOM_JSON, timeout=10)
    assert series.status_code == 200 and len(series.json()) == 1
    series_uid = series.json()[0]["0020000E"]["Value"][0]
    instances = requests.get(f"{base}/studies/{env.amy}/series/{series_uid}/instances", headers=DICOM_JSON, timeout=10)
    assert instances.status_code == 200 and len(instances.json()) == 3


# --- WADO-RS: only inside the set ----------------------------------------------------------------------


@pytest.mark.parametrize("path", [
    "studies/{uid}/series",
    "studies/{uid}/metadata",
    "studies/{uid}/rendered",
    "studies/{uid}/thumbnail",
    "studies/{uid}",
])
def test_anything_of_a_study_outside_the_set_is_404_and_audited(env, amy, path):
    _, base = amy
    before = len(events(env, "study-outside-set"))
    answer = requests.get(f"{base}/{path.format(uid=env.other_issuer)}", timeout=10)
    assert answer.status_code == 404
    assert len(events(env, "study-outside-set")) == before + 1


def test_another_studys_series_under_a_guarded_study_uid_is_not_served(env, amy):
    _, base = amy
    trap_series = first_series(env.dicomweb, env.other_issuer)
    assert requests.get(f"{base}/studies/{env.amy}/series/{trap_series}/metadata", timeout=10).status_code == 404
    listed = requests.get(f"{base}/studies/{env.amy}/series/{trap_series}/instances", headers=DICOM_JSON, timeout=10)
    assert listed.status_code in (200, 404) and (listed.status_code == 404 or listed.json() == [])


def test_metadata_is_verified_and_its_bulkdata_uris_point_at_the_gateway(env, amy):
    _, base = amy
    series = first_series(base, env.amy)
    answer = requests.get(f"{base}/studies/{env.amy}/series/{series}/metadata", timeout=10)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("application/dicom+json")
    items = answer.json()
    assert len(items) == 3
    assert {i["00100020"]["Value"][0] for i in items} == {"SB100001"}
    bulk = [i["7FE00010"]["BulkDataURI"] for i in items]
    assert all(uri.startswith(base + "/studies/") for uri in bulk)
    assert env.orthanc not in answer.text


def test_a_bulkdata_uri_from_the_metadata_is_served_by_the_gateway(env, amy):
    _, base = amy
    series = first_series(base, env.amy)
    uri = requests.get(f"{base}/studies/{env.amy}/series/{series}/metadata", timeout=10).json()[0]["7FE00010"][
        "BulkDataURI"]
    answer = requests.get(uri, headers={"Accept": "multipart/related; type=application/octet-stream"}, timeout=10)
    assert answer.status_code == 200
    assert len(answer.content) >= 256 * 256 * 2


def test_frames_stream_as_multipart_with_the_archives_content_type(env, amy):
    _, base = amy
    series = first_series(base, env.amy)
    instance = first_instance(base, env.amy, series)
    path = f"studies/{env.amy}/series/{series}/instances/{instance}/frames/1"
    via = requests.get(f"{base}/{path}", headers=FRAMES, timeout=10)
    direct = requests.get(f"{env.dicomweb}/{path}", headers=FRAMES, timeout=10)
    assert via.status_code == 200
    assert via.headers["Content-Type"].split(";")[0] == "multipart/related"
    boundary = re.search(r"boundary=([^;]+)", via.headers["Content-Type"]).group(1)
    assert via.content.startswith(b"--" + boundary.encode())
    assert len(via.content) == len(direct.content)  # same body; parts differ only by boundary
    assert via.headers["Cache-Control"].startswith("private")


COMPARED = ("Content-Encoding", "Cache-Control", "Content-Security-Policy", "X-Content-Type-Options",
            "Referrer-Policy", "Vary", "Access-Control-Allow-Origin", "Access-Control-Expose-Headers")


def test_frames_after_the_first_take_the_fast_path_with_the_routes_answer(env, amy):
    """The route answers the first frame of a series (and learns its instances); the next frames
    are answered without Flask (FastRetrieve) with the same headers and bytes as Orthanc's."""
    _, base = amy
    series = first_series(base, env.amy)
    first, second = instances_of(base, env.amy, series)[:2]
    service = env.demo.app.extensions["gateway"]
    service.scopes.clear()  # this process forgets what it knew: the route decides the first frame
    service.members.clear()
    asked = {**FRAMES, "Origin": VIEWER}
    before = service.fast_answers
    via_route = requests.get(f"{base}/studies/{env.amy}/series/{series}/instances/{first}/frames/1", headers=asked,
                             timeout=10)
    assert service.fast_answers == before  # the scope and the series' members were not known yet
    path = f"studies/{env.amy}/series/{series}/instances/{second}/frames/1"
    via_fast = requests.get(f"{base}/{path}", headers=asked, timeout=10)
    assert service.fast_answers == before + 1
    direct = requests.get(f"{env.dicomweb}/{path}", headers=FRAMES, stream=True, timeout=10)
    assert via_route.status_code == via_fast.status_code == 200
    assert {k: via_fast.headers.get(k) for k in COMPARED} == {k: via_route.headers.get(k) for k in COMPARED}
    assert via_fast.headers["Access-Control-Allow-Origin"] == VIEWER
    boundary = re.compile(r"boundary=([^;]+)")
    ours, theirs = (boundary.search(r.headers["Content-Type"]).group(1) for r in (via_fast, direct))
    assert via_fast.headers["Content-Type"] == direct.headers["Content-Type"].replace(theirs, ours)
    assert via_fast.content == direct.content.replace(theirs.encode(), ours.encode())  # each answer its own boundary


def test_a_revocation_reaches_the_fast_path_at_once(env):
    browser = env.launch("pat-amy")
    base = env.gateway(browser)
    series = first_series(base, env.amy)
    first, second, third = instances_of(base, env.amy, series)[:3]
    service = env.demo.app.extensions["gateway"]
    frame = f"{base}/studies/{env.amy}/series/{series}/instances/{{}}/frames/1"
    assert requests.get(frame.format(first), headers=FRAMES, timeout=10).status_code == 200
    before = service.fast_answers
    assert requests.get(frame.format(second), headers=FRAMES, timeout=10).status_code == 200
    assert service.fast_answers == before + 1
    assert requests.delete(base, timeout=10).status_code == 204
    refused = requests.get(frame.format(third), headers=FRAMES, timeout=10)
    assert refused.status_code == 401
    assert b"--" not in refused.content
    assert service.fast_answers == before + 1
    assert events(env, "capability-refused")[-1]["reason"] == "revoked"


def test_head_of_a_frame_answers_its_headers_without_a_body(env, amy):
    _, base = amy
    series = first_series(base, env.amy)
    instance = first_instance(base, env.amy, series)
    path = f"{base}/studies/{env.amy}/series/{series}/instances/{instance}/frames/1"
    for _ in range(3):
        head = requests.head(path, headers=FRAMES, timeout=10)
        assert head.status_code == 200 and head.content == b""
        assert head.headers["Content-Type"].startswith("multipart/related")
    assert requests.get(path, headers=FRAMES, timeout=10).status_code == 200


def test_rendered_image_keeps_the_viewport_query_orthanc_needs_unencoded(env, amy):
    _, base = amy
    series = first_series(base, env.amy)
    answer = requests.get(f"{base}/studies/{env.amy}/series/{series}/rendered?viewport=64,64",
                          headers={"Accept": "image/jpeg"}, timeout=10)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "image/jpeg"
    assert answer.content[:2] == b"\xff\xd8"


def test_a_thumbnail_falls_back_to_rendered_where_the_archive_has_none(env, amy):
    _, base = amy
    series = first_series(base, env.amy)
    assert requests.get(f"{env.dicomweb}/studies/{env.amy}/series/{series}/thumbnail", timeout=10).status_code == 404
    answer = requests.get(f"{base}/studies/{env.amy}/series/{series}/thumbnail", headers={"Accept": "image/jpeg"},
                          timeout=10)
    assert answer.status_code == 200 and answer.content[:2] == b"\xff\xd8"


def test_wado_uri_answers_a_rendered_image(env, amy):
    _, base = amy
    series = first_series(base, env.amy)
    instance = first_instance(base, env.amy, series)
    answer = requests.get(f"{base}/wado", params={"requestType": "WADO", "studyUID": env.amy, "seriesUID": series,
                                                  "objectUID": instance, "contentType": "image/jpeg"}, timeout=10)
    assert answer.status_code == 200 and answer.content[:2] == b"\xff\xd8"
    refused = requests.get(f"{base}/wado", params={"requestType": "WADO", "studyUID": env.other_issuer,
                                                   "seriesUID": series, "objectUID": instance}, timeout=10)
    assert refused.status_code == 404


@pytest.mark.parametrize(("query", "message"), [
    ({"limit": "-1"}, 'Argument "limit" must be a non-negative integer (got "-1").'),
    ({"offset": "x"}, 'Argument "offset" must be a non-negative integer (got "x").'),
])
def test_a_bad_paging_argument_is_a_400_naming_it(env, amy, query, message):
    _, base = amy
    answer = requests.get(f"{base}/studies", params=query, headers=DICOM_JSON, timeout=30)
    assert answer.status_code == 400
    assert answer.json()["message"] == message


@pytest.mark.parametrize(("query", "message"), [
    ({"studyUID": "1.2"}, "WADO-URI needs requestType=WADO."),
    ({"requestType": "WADO", "studyUID": "1.2"}, "WADO-URI needs studyUID, seriesUID and objectUID."),
])
def test_a_bad_wado_uri_request_is_a_400_naming_what_is_missing(env, amy, query, message):
    _, base = amy
    answer = requests.get(f"{base}/wado", params=query, timeout=10)
    assert answer.status_code == 400 and answer.json()["message"] == message


@pytest.mark.parametrize("path", ["studies/1.2.3/../../etc", "patients", "studies/1.2.x/series", "workitems"])
def test_paths_that_are_not_dicomweb_resources_are_404(env, amy, path):
    _, base = amy
    assert requests.get(f"{base}/{path}", timeout=10).status_code == 404


def test_ohif_configuration_names_the_gateway_for_every_root(env, amy):
    _, base = amy
    config = requests.get(f"{base}/ohif-config.json", timeout=10).json()
    (server,) = config["servers"]["dicomWeb"]
    assert {server["qidoRoot"], server["wadoRoot"]} == {base}
    assert server["wadoUriRoot"] == f"{base}/wado"


# --- capabilities: unguessable, bound, expiring, revocable -----------------------------------------


def test_an_unknown_capability_is_401_and_audited(env):
    before = len(events(env, "capability-refused"))
    answer = requests.get(f"{env.demo.base_url}/dicomweb/{'A' * 43}/studies", timeout=10)
    assert answer.status_code == 401
    assert answer.json()["error"] == "capability-refused"
    assert events(env, "capability-refused")[before:][0]["reason"] == "unknown"


def test_each_session_has_its_own_capability_bound_to_its_patient(env, amy):
    browser, base = amy
    assert env.gateway(browser) == base, "one capability per session, reused"
    ben = env.launch("pat-ben")
    other = env.gateway(ben)
    assert other != base
    assert env.amy not in uids(requests.get(f"{other}/studies", headers=DICOM_JSON, timeout=30))
    assert requests.get(f"{other}/studies/{env.amy}/metadata", timeout=10).status_code == 404


def test_a_revoked_capability_is_refused(env):
    browser = env.launch("pat-amy")
    base = env.gateway(browser)
    assert requests.get(f"{base}/studies", headers=DICOM_JSON, timeout=30).status_code == 200
    assert requests.delete(base, timeout=10).status_code == 204
    answer = requests.get(f"{base}/studies", headers=DICOM_JSON, timeout=10)
    assert answer.status_code == 401
    assert events(env, "capability-refused")[-1]["reason"] == "revoked"
    assert env.gateway(browser) != base, "the timeline hands out a fresh capability"


def test_an_expired_capability_is_refused_and_the_timeline_hands_out_a_new_one(env):
    browser = env.launch("pat-amy")
    base = env.gateway(browser)
    assert requests.get(f"{base}/studies", headers=DICOM_JSON, timeout=30).status_code == 200
    GATEWAY_CLOCK.offset += 2 * 3600 + 1  # the default lifetime, 2 h, has passed
    try:
        answer = requests.get(f"{base}/studies", headers=DICOM_JSON, timeout=10)
        assert answer.status_code == 401
        assert events(env, "capability-refused")[-1]["reason"] == "expired"
        fresh = env.gateway(browser)
        assert fresh != base
        assert requests.get(f"{fresh}/studies", headers=DICOM_JSON, timeout=30).status_code == 200
    finally:
        GATEWAY_CLOCK.offset = 0.0


def test_a_capability_dies_with_its_session(env):
    browser = env.launch("pat-amy")
    base = env.gateway(browser)
    env.demo.app.extensions["session_store"].delete(f"session:{browser.cookies['itl_session']}")
    answer = requests.get(f"{base}/studies", headers=DICOM_JSON, timeout=10)
    assert answer.status_code == 401
    assert events(env, "session-ended")


def test_the_capability_is_the_only_secret_in_the_link_and_not_a_token(env, amy):
    browser, base = amy
    token = base.rsplit("/", 1)[1]
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)
    body = json.dumps(env.studies(browser))
    record = env.demo.app.extensions["session_store"].get(f"session:{browser.cookies['itl_session']}")
    assert record["token"]["access_token"] not in body
    assert browser.cookies["itl_session"] not in base


def test_the_request_log_never_shows_the_capability(env, amy, caplog):
    import logging

    _, base = amy
    token = base.rsplit("/", 1)[1]
    caplog.set_level(logging.INFO, logger="werkzeug")
    assert requests.get(f"{base}/studies", headers=DICOM_JSON, timeout=30).status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "werkzeug"]
    assert any("/dicomweb/[capability]/studies" in line for line in lines)
    assert not [line for line in lines if token in line]


# --- CORS -----------------------------------------------------------------------------------------------


def test_cors_is_granted_to_the_configured_viewer_origin_only(env, amy):
    _, base = amy
    ok = requests.get(f"{base}/studies", headers={**DICOM_JSON, "Origin": VIEWER}, timeout=30)
    assert ok.headers["Access-Control-Allow-Origin"] == VIEWER
    assert "Access-Control-Allow-Credentials" not in ok.headers
    other = requests.get(f"{base}/studies", headers={**DICOM_JSON, "Origin": "https://evil.example"}, timeout=30)
    assert "Access-Control-Allow-Origin" not in other.headers


def test_a_preflight_from_the_viewer_allows_range_and_accept(env, amy):
    _, base = amy
    answer = requests.options(f"{base}/studies/{env.amy}/metadata", timeout=10, headers={
        "Origin": VIEWER, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "accept, range"})
    assert answer.status_code == 204
    assert answer.headers["Access-Control-Allow-Origin"] == VIEWER
    allowed = {h.strip().lower() for h in answer.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"accept", "range"} <= allowed


# --- cross-archive: one viewer session, one gateway ------------------------------------------------------


def test_a_compare_across_archives_opens_in_one_viewer_through_one_gateway(env):
    browser = env.launch("pat-amy")
    timeline = env.studies(browser)["studies"]
    orthanc_study = next(s for s in timeline if s["uid"] == env.amy)
    pacs_study = next(s for s in timeline if "pacs" in s["sources"])
    link = next(v for v in pacs_study["viewers"] if v["archive"] == "pacs")
    assert {v["gateway"] for v in orthanc_study["viewers"]} == {link["gateway"]}
    url = link["compare_url_template"].replace("{prior_uid}", env.amy)
    page = requests.get(url, timeout=30)
    assert page.status_code == 200
    assert f'data-study-uid="{pacs_study["uid"]}"' in page.text and f'data-study-uid="{env.amy}"' in page.text
    assert page.text.count('data-via="gateway"') == 2


def test_a_record_from_a_fhir_archive_with_images_in_the_pacs_opens_through_the_gateway(env):
    browser = env.launch("pat-amy")
    study = next(s for s in env.studies(browser)["studies"] if s["sources"] == ["outside"])
    (link,) = [v for v in study["viewers"] if "gateway" in v]
    assert link["archive"] == "pacs"
    page = requests.get(link["url"], timeout=30)
    assert page.status_code == 200 and f'data-study-uid="{study["uid"]}"' in page.text
    series = first_series(link["gateway"], study["uid"])
    image = requests.get(f"{link['gateway']}/studies/{study['uid']}/series/{series}/rendered", timeout=10)
    assert image.status_code == 200 and image.headers["Content-Type"].startswith("image/")


# --- capabilities (unit): expiry by the injected clock ---------------------------------------------------


class FixedClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def capabilities(tmp_path):
    clock = FixedClock()
    store = SQLiteStore(tmp_path / "caps.sqlite3", clock=clock)
    return Capabilities(lambda: store, ttl_s=7200, clock=clock), store, clock


def test_a_capability_expires_after_its_ttl(capabilities):
    caps, _, clock = capabilities
    cap = caps.issue(session_id="s1", patient_id="p1", iss="https://ehr.example/fhir")
    clock.now += 7199
    assert caps.resolve(cap.token).patient_id == "p1"
    clock.now += 2
    with pytest.raises(CapabilityRefused, match="no longer valid") as refused:
        caps.resolve(cap.token)
    assert refused.value.reason == "expired"


def test_a_capability_near_its_end_is_replaced_not_handed_out_again(capabilities):
    caps, _, clock = capabilities
    first = caps.issue(session_id="s1", patient_id="p1", iss="x")
    assert caps.issue(session_id="s1", patient_id="p1", iss="x") == first
    clock.now += 7200 - 300
    second = caps.issue(session_id="s1", patient_id="p1", iss="x")
    assert second.token != first.token and second.expires_at == clock.now + 7200


def test_a_new_patient_in_the_same_session_gets_a_new_capability(capabilities):
    caps, _, _ = capabilities
    first = caps.issue(session_id="s1", patient_id="p1", iss="x")
    assert caps.issue(session_id="s1", patient_id="p2", iss="x").token != first.token


def test_revoking_a_session_refuses_its_capability(capabilities):
    caps, _, _ = capabilities
    cap = caps.issue(session_id="s1", patient_id="p1", iss="x")
    caps.revoke_session("s1")
    with pytest.raises(CapabilityRefused) as refused:
        caps.resolve(cap.token)
    assert refused.value.reason == "revoked"


def test_the_store_keys_capabilities_by_digest_never_by_token(capabilities):
    caps, store, _ = capabilities
    cap = caps.issue(session_id="s1", patient_id="p1", iss="x")
    assert store.get(f"capability:{cap.token}") is None
    assert store.get(f"capability:{digest(cap.token)}")["patient"] == "p1"


@pytest.mark.parametrize("ttl", [0, -1])
def test_a_non_positive_ttl_is_refused(tmp_path, ttl):
    with pytest.raises(ValueError, match=r'Argument "ttl_s" must be positive'):
        Capabilities(lambda: SQLiteStore(tmp_path / "x.sqlite3"), ttl_s=ttl)


# --- on the wire: credentials, Range, what is not passed back (a DICOMweb archive stand-in) --------------


STUDY = "1.2.840.99.1"
SERIES = "1.2.840.99.1.1"
SOP = "1.2.840.99.1.1.1"
OTHER_SERIES, OTHER_SOP = "1.2.840.77.2.1", "1.2.840.77.2.1.1"
SECRET = "s3cret-archive-password"


def _qido_answer(request: Request) -> Response:
    # The search asks by PatientID and gets Amy; the gateway asks by StudyInstanceUID and, as a
    # mis-merged archive might, gets the same UID filed under another PatientID.
    patient = "SB100001" if "PatientID" in request.args else "SB999999"
    item = {"0020000D": {"vr": "UI", "Value": [STUDY]}, "00100020": {"vr": "LO", "Value": [patient]},
            "00100021": {"vr": "LO", "Value": ["SANDBOX-PACS"]}, "00100030": {"vr": "DA", "Value": ["19870220"]},
            "00100040": {"vr": "CS", "Value": ["F"]}, "00080020": {"vr": "DA", "Value": ["20250101"]},
            "00080061": {"vr": "CS", "Value": ["CT"]}, "00081030": {"vr": "LO", "Value": ["CT HEAD"]}}
    return Response(json.dumps([item]), content_type="application/dicom+json")


@pytest.fixture
def wire(tmp_path, monkeypatch):
    """The demo with an extra archive served by pytest-httpserver (basic auth), viewer via the gateway."""
    from sandbox.demo import serve_demo

    monkeypatch.setenv("WIRE_ARCHIVE_PASSWORD", SECRET)
    server = HTTPServer()
    server.start()
    server.expect_request("/dicomweb/studies").respond_with_handler(_qido_answer)
    server.expect_request(f"/dicomweb/studies/{STUDY}/series").respond_with_json([])
    seen: list[Request] = []

    def instance(request: Request) -> Response:
        seen.append(request)
        return Response(b"0123456789", status=206, headers={
            "Content-Type": 'multipart/related; type="application/dicom"; boundary=b1',
            "Content-Range": "bytes 0-9/100", "WWW-Authenticate": 'Basic realm="archive"',
            "Set-Cookie": "archive-session=abc"})

    server.expect_request(f"/dicomweb/studies/{STUDY}/series/{SERIES}/instances/{SOP}").respond_with_handler(instance)
    server.expect_request(f"/dicomweb/studies/{STUDY}/series/{SERIES}/instances").respond_with_json(
        [{"00080018": {"vr": "UI", "Value": [SOP]}, "0020000E": {"vr": "UI", "Value": [SERIES]}}])
    # An archive that does not check the hierarchy: it would serve another study's series under STUDY.
    server.expect_request(f"/dicomweb/studies/{STUDY}/series/{OTHER_SERIES}/instances").respond_with_json([])
    server.expect_request(f"/dicomweb/studies/{STUDY}/series/{OTHER_SERIES}/instances/{OTHER_SOP}/frames/1"
                          ).respond_with_data(b"another patient's pixels")
    toml = f'''
[[archive]]
id = "wire"
name = "Wire PACS"
kind = "dicomweb"
base_url = "{server.url_for('/dicomweb')}"
identifier_system = "urn:oid:2.999.7418.1.1"
issuer_of_patient_id = "SANDBOX-PACS"
auth = {{ kind = "basic", username = "timeline", password_env = "WIRE_ARCHIVE_PASSWORD" }}
[archive.viewer]
kind = "weasis"
url = "https://weasis.example"
via = "gateway"
'''
    audit: list[tuple[str, dict]] = []
    options = {"SESSION_STORE": f"sqlite:///{tmp_path / 's.db'}",
               "GATEWAY_AUDIT": lambda event, fields: audit.append((event, fields))}
    with serve_demo(app_options=options, extra_archives=toml) as demo:
        yield demo, seen, audit
    server.clear()
    server.stop()


def _wire_link(demo) -> tuple[requests.Response, dict]:
    browser = requests.Session()
    browser.get(f"{demo.base_url}/sandbox/launch", params={"patient": "pat-amy", "embedded": "1"}, timeout=30)
    body = browser.get(f"{demo.base_url}/api/studies", timeout=60)
    study = next(s for s in body.json()["studies"] if s["uid"] == STUDY)
    (link,) = [v for v in study["viewers"] if v["archive"] == "wire"]
    return body, link


def test_an_archive_answer_under_another_patientid_is_withheld_even_for_a_guarded_uid(wire):
    demo, _, audit = wire
    _, link = _wire_link(demo)
    answered = requests.get(f"{link['gateway']}/studies", params={"StudyInstanceUID": STUDY}, headers=DICOM_JSON,
                            timeout=30)
    assert uids(answered) == set()
    assert [f["level"] for e, f in audit if e == "answer-withheld"] == ["study"]


def test_a_series_the_archive_does_not_list_under_the_study_is_not_retrieved(wire):
    demo, _, audit = wire
    _, link = _wire_link(demo)
    answer = requests.get(f"{link['gateway']}/studies/{STUDY}/series/{OTHER_SERIES}/instances/{OTHER_SOP}/frames/1",
                          headers=FRAMES, timeout=10)
    assert answer.status_code == 404
    assert b"pixels" not in answer.content
    assert [f["study"] for e, f in audit if e == "outside-study"] == [STUDY]


def test_the_archives_credentials_go_to_the_archive_and_never_back_to_the_browser(wire):
    demo, seen, _ = wire
    body, link = _wire_link(demo)
    assert link["url"].startswith("weasis://") and requests.utils.unquote(link["url"]).count(link["gateway"]) == 1
    service = demo.app.extensions["gateway"]
    before = service.fast_answers
    for n in range(2):  # the route answers first; then the scope and the series are known: FastRetrieve
        answer = requests.get(f"{link['gateway']}/studies/{STUDY}/series/{SERIES}/instances/{SOP}", timeout=10,
                              headers={"Range": "bytes=0-9", "Accept": 'multipart/related; type="application/dicom"'})
        assert service.fast_answers == before + n
        assert answer.status_code == 206
        assert answer.headers["Content-Range"] == "bytes 0-9/100"
        assert answer.content == b"0123456789"
        request = seen[n]
        assert request.headers["Range"] == "bytes=0-9"
        assert request.headers["Accept"] == 'multipart/related; type="application/dicom"'
        assert request.authorization is not None and request.authorization.password == SECRET
        for header in ("WWW-Authenticate", "Set-Cookie", "Authorization"):
            assert header not in answer.headers
        assert SECRET not in body.text and SECRET not in json.dumps(dict(answer.headers))
    assert len(seen) == 2


# --- the outbound policy for streams (app.http.open_stream) ----------------------------------------------


def test_a_stream_stops_at_its_size_cap(httpserver):
    from app.http import Deadline, StreamPool, open_stream

    httpserver.expect_request("/big").respond_with_data(b"x" * (300 * 1024))
    answer = open_stream(StreamPool(), httpserver.url_for("/big"), deadline=Deadline.after(10), timeout=5,
                         max_bytes=100 * 1024)
    received = b"".join(answer.iter_bytes())
    assert len(received) <= 100 * 1024 and answer.cut


def test_a_stream_never_follows_a_redirect(httpserver, other_host):
    from app.http import Deadline, StreamPool, open_stream

    other_host.expect_request("/stolen").respond_with_data(b"never")
    httpserver.expect_request("/go").respond_with_data(b"", status=302,
                                                       headers={"Location": other_host.url_for("/stolen")})
    answer = open_stream(StreamPool(), httpserver.url_for("/go"), deadline=Deadline.after(10), timeout=5,
                         max_bytes=1024)
    assert answer.status == 302
    answer.close()
    assert other_host.log == []


def test_a_pooled_connection_the_archive_closed_is_retried_once_on_a_fresh_one():
    """Orthanc closes idle keep-alive connections after 1 s; the next GET on one must not fail."""
    import socket
    import threading

    from app.gateway import archive_pool
    from app.http import Deadline, open_stream

    listener = socket.create_server(("127.0.0.1", 0))
    connections = []

    def serve() -> None:
        # The race: the first connection answers once, then drops the next request sent on it
        # without an answer (the archive closed it as idle just as the request went out).
        first, _ = listener.accept()
        connections.append(first)
        first.recv(65536)
        first.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok")
        first.recv(65536)
        first.close()
        second, _ = listener.accept()
        connections.append(second)
        second.recv(65536)
        second.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        second.close()

    threading.Thread(target=serve, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/frames/1"
    http = archive_pool()
    bodies = []
    for _ in range(2):
        answer = open_stream(http, url, deadline=Deadline.after(10), timeout=5, max_bytes=1024)
        bodies.append(b"".join(answer.iter_bytes()))
    listener.close()
    assert bodies == [b"ok", b"ok"]
    assert len(connections) == 2


def _counting_server(answers: int) -> tuple[str, list[object]]:
    """A raw HTTP/1.1 server on loopback answering `answers` GETs per connection (keep-alive); counts connections."""
    import socket

    from tests.servers import accept_forever

    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[object] = []

    def answer(conn: socket.socket) -> None:
        accepted.append(conn)
        for _ in range(answers):
            if not conn.recv(65536):
                break
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello")
        conn.close()

    accept_forever(listener, answer)
    return f"http://127.0.0.1:{listener.getsockname()[1]}", accepted


def test_an_answer_read_to_the_end_leaves_its_connection_for_the_next_get():
    from app.http import Deadline, StreamPool, open_stream

    url, accepted = _counting_server(answers=10)
    pool = StreamPool()
    for _ in range(3):
        answer = open_stream(pool, f"{url}/frames/1", deadline=Deadline.after(10), timeout=5, max_bytes=1024)
        assert (answer.status, b"".join(answer.iter_bytes())) == (200, b"hello")
    assert len(accepted) == 1


def test_an_answer_cut_short_is_never_pooled():
    from app.http import Deadline, StreamPool, open_stream

    url, accepted = _counting_server(answers=10)
    pool = StreamPool()
    for _ in range(2):
        answer = open_stream(pool, f"{url}/frames/1", deadline=Deadline.after(10), timeout=5, max_bytes=3)
        assert b"".join(answer.iter_bytes()) == b"" and answer.cut  # 5 bytes over a cap of 3
    assert len(accepted) == 2


def test_an_idle_connection_the_server_closed_is_not_reused():
    """Closed while idle (Orthanc's 1 s keep-alive): seen before the request is sent, and replaced."""
    from app.http import Deadline, StreamPool, open_stream

    url, accepted = _counting_server(answers=1)  # one answer, then the server closes the connection
    pool = StreamPool()
    for _ in range(2):
        answer = open_stream(pool, f"{url}/frames/1", deadline=Deadline.after(10), timeout=5, max_bytes=1024)
        assert b"".join(answer.iter_bytes()) == b"hello"
        time.sleep(0.05)  # the server's FIN arrives
    assert len(accepted) == 2


def test_a_stalled_archive_is_a_stream_error_after_the_timeout():
    import socket

    from app.http import Deadline, StreamError, StreamPool, open_stream

    listener = socket.create_server(("127.0.0.1", 0))  # accepts (backlog), never answers
    started = time.monotonic()
    with pytest.raises(StreamError, match=r"timed out|TimeoutError"):
        open_stream(StreamPool(), f"http://127.0.0.1:{listener.getsockname()[1]}/frames/1",
                    deadline=Deadline.after(10), timeout=0.3, max_bytes=1024)
    assert time.monotonic() - started < 5
    listener.close()


def test_streams_verify_tls_and_refuse_other_schemes():
    import ssl

    from app.http import Deadline, StreamError, StreamPool, open_stream

    pool = StreamPool()
    assert pool._tls.verify_mode == ssl.CERT_REQUIRED and pool._tls.check_hostname
    with pytest.raises(StreamError, match="scheme"):
        open_stream(pool, "ftp://127.0.0.1/x", deadline=Deadline.after(5), timeout=1, max_bytes=10)


# --- the re-verification rule, as a table ------------------------------------------------------------


def _item(patient_id: str | None, issuer: str | None) -> dict:
    item: dict = {"0020000D": {"vr": "UI", "Value": ["1.2.3"]}}
    if patient_id is not None:
        item["00100020"] = {"vr": "LO", "Value": [patient_id]}
    if issuer is not None:
        item["00100021"] = {"vr": "LO", "Value": [issuer]}
    return item


@pytest.mark.parametrize(("sourced", "patient_id", "issuer", "required", "kept"), [
    ({"pacs"}, "SB100001", "SANDBOX-PACS", True, True),
    ({"pacs"}, "SB100001 ", "SANDBOX-PACS", True, True),  # DICOM padding
    ({"pacs"}, "sb100001", "SANDBOX-PACS", True, False),  # exact, case-sensitive
    ({"pacs"}, "SB100001", "OTHER-HOSPITAL", True, False),  # the other-issuer trap
    ({"pacs"}, "SB100001", None, True, False),  # issuer missing where the archive files one
    ({"pacs"}, "SB100001", None, False, True),  # series level: no issuer returned
    ({"pacs"}, None, None, True, False),  # study level / metadata must carry PatientID
    ({"pacs"}, None, None, False, True),  # series / instance level: bound by UID
    ({"outside"}, "RRH-550101", "RIVERSIDE-RRH", True, True),  # outside record, copy in the PACS
    ({"outside"}, "SB100001", None, True, True),  # or filed under the PACS's own id
    ({"outside"}, "RRH-999999", "RIVERSIDE-RRH", True, False),
    (set(), "ANYTHING", None, True, True),  # no identity known: bound by UID (the guard kept the record)
])
def test_an_archive_answer_is_the_patients_only_by_exact_identifier(sourced, patient_id, issuer, required, kept):
    from app.archives.config import ArchiveConfig
    from app.gateway import Scope, patient_matches

    pacs = ArchiveConfig(id="pacs", name="PACS", kind="dicomweb", base_url="https://pacs.example/rs",
                         identifier_system="urn:oid:2.999.7418.1.1", issuer_of_patient_id="SANDBOX-PACS")
    ids = {"pacs": "SB100001", "outside": "RRH-550101"} if sourced else {}
    scope = Scope(cap=None, session=None, studies={"1.2.3": ("pacs",)}, archives={"pacs": pacs},
                  patient_ids=ids, sourced={"1.2.3": frozenset(sourced)}, base="https://t.example/dicomweb/x")
    assert patient_matches(_item(patient_id, issuer), scope, "pacs", "1.2.3", required=required) is kept
