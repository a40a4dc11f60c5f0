"""Attack: the EHR revokes a session mid-way; the app must stop serving it (finding 6).

The sandbox EHR is the real authorization server here: its tokens are revoked in its store, so
its FHIR API answers 401 exactly as an EHR does after a logout or an access withdrawal.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterator

import pytest
import requests

from app.keys import generate_keys
from sandbox.demo import Demo, serve_demo

KEYS = generate_keys()


@pytest.fixture
def demo(tmp_path) -> Iterator[Demo]:
    with serve_demo(app_options={"APP_KEYS": KEYS, "SESSION_STORE": f"sqlite:///{tmp_path / 's.db'}",
                                 "PREFETCH_SEARCH": False,
                                 # every request asks the archives again (no cached list, no replayed search)
                                 "STUDY_CACHE_TTL_S": 0, "SEARCH_REPLAY_S": 0}) as running:
        yield running


def _launch(demo: Demo) -> requests.Session:
    browser = requests.Session()
    resp = browser.get(f"{demo.base_url}/sandbox/launch", params={"patient": "pat-amy"}, timeout=30)
    assert resp.url == f"{demo.base_url}/timeline", resp.text
    return browser


def _sandbox_tokens(demo: Demo):
    """The clinician's tokens (not the backend client's) the sandbox EHR has issued."""
    return [t for t in demo.sandbox.extensions["sandbox"].store.tokens.values() if t.grant_type != "client_credentials"]


def _revoke(demo: Demo, *, refresh_too: bool) -> None:
    for token in _sandbox_tokens(demo):
        token.revoked = True
        token.refresh_revoked = token.refresh_revoked or refresh_too


def test_a_revoked_session_with_a_dead_refresh_token_ends(demo):
    browser = _launch(demo)
    assert browser.get(f"{demo.base_url}/api/studies", timeout=60).status_code == 200
    _revoke(demo, refresh_too=True)
    resp = browser.get(f"{demo.base_url}/api/studies", timeout=60)
    assert resp.status_code == 401
    assert "Relaunch" in resp.json()["message"]
    # Ended on the server, not only refused once: the page, the stream and the API all say so.
    assert browser.get(f"{demo.base_url}/api/context", timeout=10).status_code == 401
    assert browser.get(f"{demo.base_url}/timeline", timeout=10).status_code == 401
    stream = browser.get(f"{demo.base_url}/api/studies/stream", params={"patient": "pat-amy"}, timeout=30)
    assert "event: fatal" in stream.text
    assert "event: studies" not in stream.text


def test_a_revoked_access_token_is_refreshed_once_and_the_session_goes_on(demo):
    browser = _launch(demo)
    before = len(_sandbox_tokens(demo))
    _revoke(demo, refresh_too=False)
    resp = browser.get(f"{demo.base_url}/api/studies", timeout=60)
    assert resp.status_code == 200
    assert len(_sandbox_tokens(demo)) == before + 1  # exactly one refresh
    again = browser.get(f"{demo.base_url}/api/studies", timeout=60).json()
    assert {a["id"]: a["status"] for a in again["archives"]}["ehr"] == "ok"


def test_a_revoked_session_from_the_stream_ends_it(demo):
    browser = _launch(demo)
    _revoke(demo, refresh_too=True)
    stream = browser.get(f"{demo.base_url}/api/studies/stream", params={"patient": "pat-amy"}, timeout=60)
    assert "event: fatal" in stream.text
    assert "Relaunch" in html.unescape(stream.text)
    assert browser.get(f"{demo.base_url}/api/context", timeout=10).status_code == 401


@pytest.mark.parametrize("lifetime, margin", [(3600, 60), (120, 60), (60, 30), (10, 5), (1, 0.5)])
def test_the_refresh_margin_is_the_lesser_of_60_s_and_half_the_lifetime(lifetime, margin):
    from app.session import refresh_margin

    assert refresh_margin({"lifetime": lifetime}) == margin


def test_a_failed_refresh_keeps_a_still_valid_token(demo):
    browser = _launch(demo)
    sid = browser.cookies["itl_session"]
    with demo.app.app_context():
        from app.session_store import store

        rec = store().get(f"session:{sid}")
        # Inside the refresh margin but not expired: a refresh is due...
        rec["token"]["expires_at"] = time.time() + 20
        rec["token"]["lifetime"] = 300
        store().put(f"session:{sid}", rec, 600)
    for token in _sandbox_tokens(demo):
        token.refresh_revoked = True  # ...and fails
    resp = browser.get(f"{demo.base_url}/api/context", timeout=10)
    assert resp.status_code == 200


def test_a_401_to_a_thumbnail_from_the_ehrs_imaging_service_ends_the_session(tmp_path):
    from app.archives.config import load_archives
    from sandbox.demo import DEMO_ARCHIVES

    only_ehr = tuple(a for a in load_archives(DEMO_ARCHIVES, substitutions={"sandbox": "http://x"}) if a.id == "ehr")
    with serve_demo(sandbox_options={"advertise_imaging_endpoints": True},
                    app_options={"APP_KEYS": KEYS, "SESSION_STORE": f"sqlite:///{tmp_path / 's.db'}",
                                 "ARCHIVES": only_ehr, "PREFETCH_SEARCH": False}) as demo:
        browser = _launch(demo)
        shown = browser.get(f"{demo.base_url}/api/studies", timeout=60).json()["studies"]
        study = next(s for s in shown if s["thumbnail"])
        _revoke(demo, refresh_too=True)
        demo.sandbox.extensions["sandbox"].faults["dicomweb"] = "401"  # its imaging service refuses the token
        thumb = browser.get(demo.base_url + study["thumbnail"], timeout=30)
        after = browser.get(f"{demo.base_url}/api/context", timeout=10)
    assert thumb.status_code in {401, 404}
    assert after.status_code == 401
