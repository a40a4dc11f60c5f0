"""Attacks on a live session: caching, style fetches, Host-decided redirect_uri, session limits (finding 9)."""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from app.cli import main
from tests import launching
from tests.launching import SCOPE, launch, running_app

ROOT = Path(__file__).resolve().parent.parent

ehr, app_url = launching.ehr, launching.app_url  # the shared fixtures (tests/launching.py)


# --- pages with PHI are never cached ----------------------------------------------------------------


def test_the_timeline_and_error_pages_are_not_stored(app_url, ehr):
    resp, browser = launch(app_url, ehr.iss)
    assert resp.url.endswith("/timeline")
    assert resp.headers["Cache-Control"] == "no-store"
    for path in ("/timeline?x=1", "/api/context", "/no-such-page"):
        assert browser.get(f"{app_url}{path}", timeout=10).headers["Cache-Control"] == "no-store", path
    assert requests.get(f"{app_url}/timeline", timeout=10).headers["Cache-Control"] == "no-store"
    assert "no-store" not in requests.get(f"{app_url}/static/app.css", timeout=10).headers.get("Cache-Control", "")


# --- smart_style_url: only from the issuer's origin or an allow-list -----------------------------------


def test_smart_style_url_on_another_host_is_not_fetched(ehr, tmp_path, other_host):
    other_host.expect_request("/style.json").respond_with_json({"color_background": "#000000"})
    ehr.token_extra = {"smart_style_url": other_host.url_for("/style.json")}
    with running_app(ehr, tmp_path) as url:
        resp, _ = launch(url, ehr.iss)
    assert resp.status_code == 200
    assert other_host.log == []
    assert "--smart-color-background" not in resp.text


def test_smart_style_url_on_an_allow_listed_origin_is_fetched(ehr, tmp_path, other_host):
    other_host.expect_request("/style.json").respond_with_json({"color_background": "#010203"})
    ehr.token_extra = {"smart_style_url": other_host.url_for("/style.json")}
    with running_app(ehr, tmp_path, STYLE_ORIGINS=other_host.url_for("/").rstrip("/")) as url:
        resp, _ = launch(url, ehr.iss)
    assert "--smart-color-background: #010203" in resp.text


# --- redirect_uri comes from launch.json, never from the Host header ------------------------------------


def _launch_registered_at_one_https_address(ehr, tmp_path, **headers) -> requests.Response:
    """/launch, unfollowed, of the app whose launch.json has the one redirect_uri https://timeline.example.org/callback."""
    issuer = {"iss": ehr.iss, "token_endpoint_auth_method": "none"}
    config = {"client_id": "imaging-timeline", "client_name": "Imaging Timeline", "scope": SCOPE,
              "redirect_uris": ["https://timeline.example.org/callback"], "issuers": [issuer]}
    with running_app(ehr, tmp_path, LAUNCH_CONFIG=config) as url:
        return requests.get(f"{url}/launch", params={"iss": ehr.iss, "launch": "l"}, allow_redirects=False,
                            headers=headers, timeout=10)


def test_the_host_header_does_not_choose_the_redirect_uri(ehr, tmp_path):
    resp = _launch_registered_at_one_https_address(ehr, tmp_path, Host="evil.example")
    redirect_uri = parse_qs(urlsplit(resp.headers["Location"]).query)["redirect_uri"]
    assert redirect_uri == ["https://timeline.example.org/callback"]


@pytest.mark.parametrize("redirect_uris", [[], ["https://a.example.org/callback", "https://b.example.org/callback"]])
def test_serve_refuses_to_start_without_a_public_url(monkeypatch, capsys, tmp_path, redirect_uris):
    monkeypatch.delenv("IMAGING_PUBLIC_URL", raising=False)
    config = json.loads((ROOT / "launch.json").read_text())
    config["redirect_uris"] = redirect_uris
    (tmp_path / "launch.json").write_text(json.dumps(config))
    monkeypatch.setenv("IMAGING_LAUNCH_CONFIG", str(tmp_path / "launch.json"))
    assert main(["serve", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "IMAGING_PUBLIC_URL" in err
    assert "Traceback" not in err


def test_launch_jsons_single_redirect_uri_is_the_public_url(ehr, tmp_path):
    resp = _launch_registered_at_one_https_address(ehr, tmp_path)
    # The registered address is https, so the launch-binding cookie is set for a cross-site frame.
    cookie = resp.headers["Set-Cookie"]
    assert "Secure" in cookie and "SameSite=None" in cookie


# --- the token-error page has a clean address --------------------------------------------------------


def test_a_failed_callback_redirects_to_an_address_without_the_code(app_url, ehr):
    ehr.token_status, ehr.token_body = 400, {"error": "invalid_grant"}
    resp, _ = launch(app_url, ehr.iss)
    assert resp.status_code == 502
    assert "invalid_grant" in resp.text
    assert "code=" not in resp.url and "state=" not in resp.url
    assert resp.history[-1].status_code == 303


# --- logout and session limits ------------------------------------------------------------------------


def test_logout_ends_the_session(app_url, ehr):
    resp, browser = launch(app_url, ehr.iss)
    assert 'action="/logout"' in resp.text
    out = browser.post(f"{app_url}/logout", headers={"Origin": app_url}, timeout=10)
    assert out.status_code == 200
    assert "signed out" in out.text.lower()
    # Even with the old cookie replayed, the session is gone on the server.
    sid = resp.history[-1].cookies.get("itl_session") or "x"
    replay = requests.get(f"{app_url}/api/context", cookies={"itl_session": sid}, timeout=10)
    assert replay.status_code == 401
    assert browser.get(f"{app_url}/api/context", timeout=10).status_code == 401


def test_logout_from_another_site_is_refused(app_url, ehr):
    _, browser = launch(app_url, ehr.iss)
    out = browser.post(f"{app_url}/logout", headers={"Origin": "http://evil.example"}, timeout=10)
    assert out.status_code == 403
    assert browser.get(f"{app_url}/api/context", timeout=10).status_code == 200


def test_an_idle_session_ends(ehr, tmp_path):
    with running_app(ehr, tmp_path, SESSION_IDLE_S=0.6) as url:
        _, browser = launch(url, ehr.iss)
        assert browser.get(f"{url}/api/context", timeout=10).status_code == 200
        time.sleep(1.0)
        resp = browser.get(f"{url}/api/context", timeout=10)
    assert resp.status_code == 401
    assert "without use" in html.unescape(resp.text)


def test_a_used_session_still_ends_at_its_absolute_limit(ehr, tmp_path):
    with running_app(ehr, tmp_path, SESSION_TTL_S=3, SESSION_IDLE_S=60) as url:
        _, browser = launch(url, ehr.iss)
        answers = []
        for _ in range(40):  # bounded: used every 0.25 s, never idle, until the limit ends it
            resp = browser.get(f"{url}/api/context", timeout=10)
            answers.append(resp.status_code)
            if resp.status_code == 401:
                break
            time.sleep(0.25)
    assert answers[0] == 200
    assert answers[-1] == 401
    assert "after sign-in" in html.unescape(resp.text)
