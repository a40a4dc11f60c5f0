"""The access log (audit of viewer openings) across tabs and patients (finding 7), over real HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests

from app.keys import generate_keys
from sandbox.demo import Demo, serve_demo

KEYS = generate_keys()


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Iterator[Demo]:
    tmp = tmp_path_factory.mktemp("audit")
    with serve_demo(app_options={"APP_KEYS": KEYS, "SESSION_STORE": f"sqlite:///{tmp / 's.db'}",
                                 "ACCESS_LOG_FILE": str(tmp / "access.jsonl")}) as running:
        yield running


def _launch(demo: Demo, patient: str, browser: requests.Session | None = None) -> requests.Session:
    browser = browser or requests.Session()
    resp = browser.get(f"{demo.base_url}/sandbox/launch", params={"patient": patient, "embedded": "1"}, timeout=30)
    assert resp.url == f"{demo.base_url}/timeline", resp.text
    return browser


def _studies(demo: Demo, browser: requests.Session) -> list[dict]:
    resp = browser.get(f"{demo.base_url}/api/studies", timeout=60)
    assert resp.status_code == 200, resp.text
    return resp.json()["studies"]


def _entries(demo: Demo) -> list[dict]:
    with open(demo.app.config["ACCESS_LOG_FILE"], encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def _post(demo: Demo, browser: requests.Session, **body) -> requests.Response:
    return browser.post(f"{demo.base_url}/api/access-log", json=body, timeout=10)


def test_the_first_tabs_openings_are_recorded_after_a_second_launch(demo):
    browser = _launch(demo, "pat-amy")
    amy = next(s for s in _studies(demo, browser) if s["viewers"])
    _launch(demo, "pat-ben", browser)  # a second launch in the same browser: the cookie is now Ben's
    resp = _post(demo, browser, uid=amy["uid"], archive=amy["viewers"][0]["archive"], kind="ohif",
                 patient="pat-amy")
    assert resp.status_code == 204
    entry = _entries(demo)[-1]
    assert (entry["patient"], entry["study"]) == ("pat-amy", amy["uid"])


def test_a_page_naming_a_patient_this_browser_never_launched_is_refused(demo):
    amy_browser = _launch(demo, "pat-amy")
    amy = next(s for s in _studies(demo, amy_browser) if s["viewers"])
    other = _launch(demo, "pat-ben")  # another browser, never Amy's
    before = len(_entries(demo))
    resp = _post(demo, other, uid=amy["uid"], archive=amy["viewers"][0]["archive"], patient="pat-amy")
    assert resp.status_code == 409
    resp = _post(demo, other, uid=amy["uid"], archive=amy["viewers"][0]["archive"])
    assert resp.status_code == 404  # Ben's session was never shown Amy's study
    assert len(_entries(demo)) == before


def test_a_comparison_opening_records_both_studies(demo):
    browser = _launch(demo, "pat-amy")
    shown = [s for s in _studies(demo, browser) if any(v["archive"] == "pacs" for v in s["viewers"])]
    current, prior = shown[0], shown[1]
    resp = _post(demo, browser, uid=current["uid"], archive="pacs", kind="ohif", compare_uid=prior["uid"],
                 patient="pat-amy")
    assert resp.status_code == 204
    entry = _entries(demo)[-1]
    assert (entry["study"], entry["compare_study"]) == (current["uid"], prior["uid"])


def test_a_comparison_with_a_study_not_shown_is_refused(demo):
    browser = _launch(demo, "pat-amy")
    current = next(s for s in _studies(demo, browser) if any(v["archive"] == "pacs" for v in s["viewers"]))
    resp = _post(demo, browser, uid=current["uid"], archive="pacs", compare_uid="1.2.3.4", patient="pat-amy")
    assert resp.status_code == 404
