"""End to end over real HTTP: the sandbox EHR launches the app, which federates the sandbox archives."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from html.parser import HTMLParser

import pytest
import requests

from app.archives.config import load_archives
from app.keys import generate_keys
from sandbox.demo import DEMO_ARCHIVES, Demo, serve_demo

KEYS = generate_keys()


def demo_server(tmp_path, **options) -> Iterator[Demo]:
    app_options = {"APP_KEYS": KEYS, "SESSION_STORE": f"sqlite:///{tmp_path / 'sessions.db'}",
                   "ACCESS_LOG_FILE": str(tmp_path / "access.jsonl"), **options.pop("app_options", {})}
    return serve_demo(app_options=app_options, **options)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Iterator[Demo]:
    with demo_server(tmp_path_factory.mktemp("demo")) as running:
        yield running


def launch(demo: Demo, patient: str, **params) -> tuple[requests.Response, requests.Session]:
    browser = requests.Session()
    resp = browser.get(f"{demo.base_url}/sandbox/launch", params={"patient": patient, **params}, timeout=30)
    return resp, browser


def studies(demo: Demo, browser: requests.Session) -> dict:
    resp = browser.get(f"{demo.base_url}/api/studies", timeout=60)
    assert resp.status_code == 200, resp.text
    return resp.json()


def events(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.split("\n\n"):
        name = re.search(r"^event: (.+)$", block, re.M)
        data = re.search(r"^data: (.+)$", block, re.M)
        if name and data:
            out.append((name.group(1), json.loads(data.group(1))))
    return out


# --- launch --------------------------------------------------------------------------------------


def test_full_window_launch_shows_the_patient_banner(demo):
    resp, _ = launch(demo, "pat-ben")
    assert resp.url == f"{demo.base_url}/timeline"
    assert 'class="patient-banner' in resp.text
    assert "Benjamin" in resp.text


def test_chart_iframe_launch_says_no_banner_is_needed(demo):
    resp, browser = launch(demo, "pat-ben", embedded="1")
    assert resp.status_code == 200
    assert 'class="patient-banner' not in resp.text
    ctx = browser.get(f"{demo.base_url}/api/context", timeout=10).json()
    assert ctx["launch"]["need_patient_banner"] is False
    assert ctx["patient"]["id"] == "pat-ben"
    assert ctx["launch"]["fhirUser"].startswith(demo.iss + "/Practitioner/")
    assert "patient/ImagingStudy.rs" in ctx["launch"]["scope"]
    assert "access_token" not in json.dumps(ctx)


def test_fhir_context_from_the_ehr_reaches_the_app(demo):
    resp, browser = launch(demo, "pat-ben", embedded="1", fhir_context="ServiceRequest/sr-ben-stat")
    assert resp.status_code == 200
    ctx = browser.get(f"{demo.base_url}/api/context", timeout=10).json()
    assert ctx["launch"]["fhirContext"] == ["ServiceRequest/sr-ben-stat"]


def test_standalone_launch_goes_through_the_ehr_patient_picker(demo):
    browser = requests.Session()
    picker = browser.get(f"{demo.base_url}/launch", params={"iss": demo.iss}, timeout=30)
    assert picker.status_code == 200
    form = FormReader.read(picker.text)
    form.fields.update(patient="pat-carla", decision="approve")
    resp = browser.post(f"{demo.base_url}/sandbox/auth/authorize", data=form.fields, timeout=30)
    assert resp.url == f"{demo.base_url}/timeline"
    assert browser.get(f"{demo.base_url}/api/context", timeout=10).json()["patient"]["id"] == "pat-carla"


def test_denied_standalone_launch_is_a_readable_page(demo):
    browser = requests.Session()
    picker = browser.get(f"{demo.base_url}/launch", params={"iss": demo.iss}, timeout=30)
    form = FormReader.read(picker.text)
    form.fields.update(decision="deny")
    resp = browser.post(f"{demo.base_url}/sandbox/auth/authorize", data=form.fields, timeout=30)
    assert resp.status_code == 403
    assert "declined" in resp.text


def test_the_start_page_offers_the_standalone_launch(demo):
    resp = requests.get(f"{demo.base_url}/", timeout=10)
    assert resp.status_code == 200
    assert 'action="/launch"' in resp.text


# --- federation through the API -------------------------------------------------------------------


def test_studies_are_merged_across_the_three_archives(demo):
    _, browser = launch(demo, "pat-ben", embedded="1")
    data = studies(demo, browser)
    assert {a["id"]: a["status"] for a in data["archives"]} == {"ehr": "ok", "outside": "ok", "pacs": "ok"}
    uids = [s["uid"] for s in data["studies"]]
    assert len(uids) == len(set(uids))
    everywhere = [s for s in data["studies"] if set(s["sources"]) == {"ehr", "outside", "pacs"}]
    assert len(everywhere) == 1
    assert "identity: name differs" in everywhere[0]["badges"]
    started = [s["started"] for s in data["studies"] if s["started"]]
    assert started == sorted(started, reverse=True)


def test_stat_study_without_final_report_needs_attention(demo):
    _, browser = launch(demo, "pat-ben", embedded="1")
    first = studies(demo, browser)["studies"][0]
    assert first["attention"][:2] == [
        {"code": "stat-order", "label": "STAT order", "acknowledged": None},
        {"code": "no-final-report", "label": "No final report", "acknowledged": None}]
    assert first["orders"][0]["priority"] == "stat"
    # One chip per meaning: the STAT priority and the preliminary report, each once.
    assert [s["kind"] for s in first["signals"]].count("priority") == 1
    assert [s["kind"] for s in first["signals"]].count("report") == 1


def test_patient_without_an_outside_identifier_is_not_linked_there(demo):
    _, browser = launch(demo, "pat-carla", embedded="1")
    outside = next(a for a in studies(demo, browser)["archives"] if a["id"] == "outside")
    assert outside["status"] == "not-linked"
    assert outside["reason"] == ("not linked (no identifier in domain urn:oid:2.999.7418.2.1; "
                                 "the PIXm manager has no cross-reference)")


def test_birth_date_conflict_withholds_the_study(demo):
    _, browser = launch(demo, "pat-dev", embedded="1")
    data = studies(demo, browser)
    pacs = next(a for a in data["archives"] if a["id"] == "pacs")
    assert pacs["dropped"] >= 1


@pytest.mark.parametrize("patient", ["pat-amy", "pat-ben", "pat-carla", "pat-dev", "pat-elena"])
def test_no_study_of_another_patient_is_ever_returned(demo, patient):
    _, browser = launch(demo, patient, embedded="1")
    data = studies(demo, browser)
    truth = demo.sandbox.extensions["sandbox"].data.patient(patient)  # incl. what only PIXm knows
    mine = {i["value"] for i in data["patient"]["identifiers"]} | {data["patient"]["id"], truth.outside_mrn}
    for study in data["studies"]:
        assert set(v["value"] for v in study["matched_ids"].values()) <= mine


def test_studies_stream_sends_each_archive_then_done(demo):
    _, browser = launch(demo, "pat-amy", embedded="1")
    resp = browser.get(f"{demo.base_url}/api/studies/stream", timeout=60)
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    names = [n for n, _ in events(resp.text)]
    assert names.count("archive") == 3
    assert names[-1] == "done"
    rows = {s["uid"] for n, d in events(resp.text) if n == "studies" for s in d["studies"]}
    assert len(rows) == events(resp.text)[-1][1]["count"]


def test_a_window_for_another_patient_is_refused(demo):
    _, browser = launch(demo, "pat-amy", embedded="1")
    resp = browser.get(f"{demo.base_url}/api/studies", params={"patient": "pat-ben"}, timeout=10)
    assert resp.status_code == 409
    assert resp.json()["error"] == "patient-mismatch"


def test_api_without_a_session_is_401_json(demo):
    resp = requests.get(f"{demo.base_url}/api/studies", timeout=10)
    assert resp.status_code == 401
    assert resp.json()["error"] == "session-expired"


# --- thumbnails and the access log ------------------------------------------------------------


def test_thumbnail_comes_through_the_app(demo):
    _, browser = launch(demo, "pat-amy", embedded="1")
    study = next(s for s in studies(demo, browser)["studies"] if s["thumbnail"])
    resp = browser.get(demo.base_url + study["thumbnail"], timeout=30)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] in {"image/jpeg", "image/png"}
    assert "private" in resp.headers["Cache-Control"]


def test_thumbnail_of_a_study_not_in_this_timeline_is_refused(demo):
    _, amy = launch(demo, "pat-amy", embedded="1")
    bens = studies(demo, launch(demo, "pat-ben", embedded="1")[1])["studies"]
    studies(demo, amy)
    foreign = next(s for s in bens if s["thumbnail"])
    assert amy.get(demo.base_url + foreign["thumbnail"], timeout=10).status_code == 404


def test_viewer_opening_is_recorded_in_the_access_log(demo):
    _, browser = launch(demo, "pat-amy", embedded="1")
    study = next(s for s in studies(demo, browser)["studies"] if s["viewers"])
    viewer = study["viewers"][0]
    resp = browser.post(f"{demo.base_url}/api/access-log",
                        json={"uid": study["uid"], "archive": viewer["archive"], "kind": viewer["kind"]}, timeout=10)
    assert resp.status_code == 204
    path = demo.app.config["ACCESS_LOG_FILE"]
    entry = json.loads(open(path, encoding="utf-8").read().splitlines()[-1])
    assert entry["patient"] == "pat-amy"
    assert entry["study"] == study["uid"]
    assert entry["archive"] == viewer["archive"]
    assert entry["user"].endswith("/Practitioner/sandbox-dr-radiant")


def test_access_log_refuses_a_study_outside_the_timeline(demo):
    _, browser = launch(demo, "pat-amy", embedded="1")
    studies(demo, browser)
    resp = browser.post(f"{demo.base_url}/api/access-log", json={"uid": "1.2.3", "archive": "pacs"}, timeout=10)
    assert resp.status_code == 404


# --- tokens over time ----------------------------------------------------------------------------


def test_an_expiring_token_is_refreshed_before_use(tmp_path):
    with demo_server(tmp_path, sandbox_options={"access_token_lifetime_s": 2}) as demo:
        _, browser = launch(demo, "pat-amy", embedded="1")
        time.sleep(2.2)
        data = studies(demo, browser)
    assert next(a for a in data["archives"] if a["id"] == "ehr")["status"] == "ok"


def test_a_token_that_cannot_be_refreshed_says_relaunch(tmp_path):
    with demo_server(tmp_path, sandbox_options={"access_token_lifetime_s": 1, "refresh_token_lifetime_s": 1}) as demo:
        _, browser = launch(demo, "pat-amy", embedded="1")
        time.sleep(1.5)
        resp = browser.get(f"{demo.base_url}/api/studies", timeout=30)
        page = browser.get(f"{demo.base_url}/api/studies", headers={"Accept": "text/html"}, timeout=30)
    assert resp.status_code == 401
    assert "Relaunch" in resp.json()["message"]
    assert page.status_code == 401


def test_archives_advertised_by_the_ehr_join_the_federation(tmp_path):
    only_ehr = tuple(a for a in load_archives(DEMO_ARCHIVES, substitutions={"sandbox": "http://x"}) if a.id == "ehr")
    with demo_server(tmp_path, sandbox_options={"advertise_imaging_endpoints": True},
                     app_options={"ARCHIVES": only_ehr}) as demo:
        _, browser = launch(demo, "pat-amy", embedded="1")
        data = studies(demo, browser)
    discovered = [a for a in data["archives"] if a["source"] == "discovered"]
    assert len(discovered) == 1
    assert discovered[0]["status"] == "ok"
    assert discovered[0]["count"] > 0


class FormReader(HTMLParser):
    """Collects the hidden inputs of the first form on a page."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, str] = {}

    @classmethod
    def read(cls, html: str) -> FormReader:
        reader = cls()
        reader.feed(html)
        return reader

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "input" and a.get("type") == "hidden" and a.get("name"):
            self.fields[a["name"]] = a.get("value") or ""


def test_the_viewer_link_opens_the_study_in_the_sandbox_viewer_through_the_gateway(demo):
    _, browser = launch(demo, "pat-amy", embedded="1")
    study = next(s for s in studies(demo, browser)["studies"] if any(v["kind"] == "ohif" for v in s["viewers"]))
    link = next(v for v in study["viewers"] if v["kind"] == "ohif")
    assert re.fullmatch(rf"{re.escape(demo.base_url)}/dicomweb/[A-Za-z0-9_-]{{43}}", link["gateway"])
    config = requests.utils.quote(link["gateway"] + "/ohif-config.json", safe="")
    assert link["url"] == (f"{demo.base_url}/sandbox/viewer/ohif/viewer/dicomwebproxy?url={config}"
                           f"&studyInstanceUIDs={study['uid']}")
    page = requests.get(link["url"], timeout=10)
    assert page.status_code == 200
    assert f'data-study-uid="{study["uid"]}"' in page.text
    images = re.findall(r'<img[^>]* src="([^"]+)"', page.text)
    assert images and all(src.startswith(link["gateway"] + "/studies/") for src in images)
    assert requests.get(images[0], timeout=10).headers["Content-Type"].startswith("image/")


def test_an_imaging_study_in_fhir_context_is_the_current_study(demo):
    _, browser = launch(demo, "pat-ben", embedded="1")
    older = studies(demo, browser)["studies"][-1]
    assert older["ids"], "EHR studies carry their FHIR id"
    _, browser = launch(demo, "pat-ben", embedded="1", fhir_context=f"ImagingStudy/{older['ids'][0]}")
    current = [s["uid"] for s in studies(demo, browser)["studies"] if s["current"]]
    assert current == [older["uid"]]


def test_the_timeline_page_starts_the_search_that_its_stream_then_delivers(demo):
    resp, browser = launch(demo, "pat-ben", embedded="1")  # ends on /timeline: the search is under way
    assert resp.status_code == 200
    prefetch = demo.app.extensions["prefetch"]
    sid = browser.cookies["itl_session"]
    run = prefetch.running(f"{sid}:pat-ben")
    assert run is not None
    streamed = browser.get(f"{demo.base_url}/api/studies/stream", timeout=60)
    assert prefetch.running(f"{sid}:pat-ben") is run  # joined by the stream, not searched again
    rows = {s["uid"] for n, d in events(streamed.text) if n == "studies" for s in d["studies"]}
    assert rows == {s["uid"] for s in studies(demo, browser)["studies"]}


def test_twenty_reloads_of_the_timeline_cause_one_archive_search(demo):
    from collections import Counter
    from concurrent.futures import ThreadPoolExecutor

    hits: Counter = Counter()
    inner = demo.server.app

    def counting(environ, start_response):
        hits[environ.get("PATH_INFO", "")] += 1
        return inner(environ, start_response)

    demo.sandbox.extensions["sandbox"].delays["dicomweb"] = 1.0  # the search is still running during the reloads
    demo.server.app = counting
    try:
        _, browser = launch(demo, "pat-ben", embedded="1")
        with ThreadPoolExecutor(5) as pool:
            pages = list(pool.map(lambda _: browser.get(f"{demo.base_url}/timeline", timeout=30).status_code,
                                  range(20)))
        streamed = browser.get(f"{demo.base_url}/api/studies/stream", timeout=60)
        assert browser.get(f"{demo.base_url}/api/studies", timeout=60).status_code == 200
    finally:
        demo.server.app = inner
        demo.sandbox.extensions["sandbox"].delays.pop("dicomweb", None)
    assert pages == [200] * 20
    assert events(streamed.text)[-1][0] == "done"
    assert hits["/sandbox/dicomweb/studies"] == 1


def test_a_stream_without_a_session_says_relaunch_as_an_event(demo):
    resp = requests.get(f"{demo.base_url}/api/studies/stream", timeout=10)
    assert resp.status_code == 200  # EventSource cannot read error statuses
    (name, data), = events(resp.text)
    assert name == "fatal"
    assert data["status"] == 401
    assert "Relaunch" in data["message"]


def test_a_stream_for_another_patients_window_is_refused_as_an_event(demo):
    _, browser = launch(demo, "pat-amy", embedded="1")
    resp = browser.get(f"{demo.base_url}/api/studies/stream", params={"patient": "pat-ben"}, timeout=10)
    (name, data), = events(resp.text)
    assert (name, data["status"]) == ("fatal", 409)


def test_extra_archives_join_the_demo(tmp_path):
    extra = tmp_path / "extra.toml"
    extra.write_text('[[archive]]\nid = "mine"\nname = "My PACS"\nkind = "dicomweb"\n'
                     'base_url = "{sandbox}/dicomweb"\nidentifier_system = "urn:oid:2.999.7418.1.1"\n'
                     'issuer_of_patient_id = "SANDBOX-PACS"\nauth = { kind = "none" }\n')
    with demo_server(tmp_path, extra_archives=str(extra)) as demo:
        _, browser = launch(demo, "pat-amy", embedded="1")
        mine = next(a for a in studies(demo, browser)["archives"] if a["id"] == "mine")
    assert (mine["status"], mine["name"]) == ("ok", "My PACS")
    assert mine["count"] > 0


def test_extra_archives_may_not_reuse_a_demo_archive_id(tmp_path):
    from app.errors import ConfigError

    extra = tmp_path / "extra.toml"
    extra.write_text('[[archive]]\nid = "pacs"\nname = "Mine"\nkind = "dicomweb"\nbase_url = "https://x.example"\n'
                     'identifier_system = "urn:oid:1.2"\nauth = { kind = "none" }\n')
    with pytest.raises(ConfigError, match='archive id "pacs" is already used by the demo'):
        with demo_server(tmp_path, extra_archives=str(extra)):
            pass


def test_without_report_access_the_timeline_says_so_and_asks_for_none(tmp_path):
    with demo_server(tmp_path) as demo:
        client = demo.sandbox.extensions["sandbox"].clients["imaging-timeline"]
        client._grantable.discard("patient/DiagnosticReport.rs")  # this EHR withholds report access
        resp, browser = launch(demo, "pat-ben", embedded="1")
        data = studies(demo, browser)
    assert "the EHR did not grant Imaging Timeline access to its diagnostic reports" in resp.text
    assert '"reportsGranted": false' in resp.text
    assert not [r for s in data["studies"] for r in s["reports"] if r["source"] == "ehr"]
    assert next(a for a in data["archives"] if a["id"] == "ehr")["status"] == "ok"


@pytest.mark.parametrize("patient", ["pat-amy", "pat-ben", "pat-elena"])
def test_the_stream_ends_with_the_same_timeline_as_the_json_api_whatever_answers_first(tmp_path, patient):
    # The PACS answers first and the EHR (with the reports and orders) last.
    with demo_server(tmp_path, sandbox_options={"delays": {"ehr": 0.4, "outside": 0.2}}) as demo:
        _, browser = launch(demo, patient, embedded="1")
        streamed = browser.get(f"{demo.base_url}/api/studies/stream", timeout=60)
        final = {}
        for name, data in events(streamed.text):
            if name == "studies":
                final.update({s["uid"]: s for s in data["studies"]})
        whole = {s["uid"]: s for s in studies(demo, browser)["studies"]}

    def shape(view):
        return (sorted(view["sources"]), sorted(r["id"] for r in view["reports"]),
                sorted(o["id"] for o in view["orders"]), view["current"])

    assert {uid: shape(v) for uid, v in final.items()} == {uid: shape(v) for uid, v in whole.items()}


def test_an_ehr_report_without_an_imaging_study_links_to_the_pacs_study_by_accession(demo):
    _, browser = launch(demo, "pat-amy", embedded="1")
    pacs_only = [s for s in studies(demo, browser)["studies"] if s["sources"] == ["pacs"]]
    assert pacs_only, "Amy has a study whose images only the PACS holds"
    (report,) = pacs_only[0]["reports"]
    assert (report["source"], report["status"]) == ("ehr", "final")
    assert pacs_only[0]["orders"][0]["source"] == "ehr"


def test_access_log_refuses_a_cross_site_form_post(demo):
    _, browser = launch(demo, "pat-amy", embedded="1")
    study = next(s for s in studies(demo, browser)["studies"] if s["viewers"])
    resp = browser.post(f"{demo.base_url}/api/access-log", data={"uid": study["uid"], "archive": "pacs"},
                        timeout=10)
    assert resp.status_code == 400
    assert "application/json" in resp.json()["message"]


def test_an_identity_the_ehr_lacks_is_linked_through_the_pixm_manager(demo):
    resp, browser = launch(demo, "pat-dev", embedded="1")
    data = studies(demo, browser)
    assert "urn:oid:2.999.7418.2.1" not in {i["system"] for i in data["patient"]["identifiers"]}
    outside = next(a for a in data["archives"] if a["id"] == "outside")
    assert outside["status"] == "ok"
    assert outside["reason"].startswith("linked through the PIXm cross-reference manager")
    assert 'data-archive-id="outside"' in resp.text
    for study in data["studies"]:
        if "outside" in study["sources"]:
            assert "identity: linked via PIXm" in study["badges"]
            assert study["matched_ids"]["outside"]["value"] == "RRH-550104"
