"""Attacks on /callback over HTTP: login CSRF, forged EHR errors, cross-site POSTs (findings 1 and 9).

The real-browser half (the frame binding in sessionStorage, the cross-site iframe) is in
tests/test_security_browser.py.
"""

from __future__ import annotations

import html
import json
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from tests import launching
from tests.fake_ehr import FakeEhr
from tests.launching import launch, started_state

BROWSER_NAV = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document", "Sec-Fetch-Site": "none"}

ehr, app_url = launching.ehr, launching.app_url  # the shared fixtures (tests/launching.py)


def _attackers_callback_url(app_url: str, ehr: FakeEhr) -> str:
    """The attacker runs a launch up to its callback URL, in their own client, and stops there."""
    attacker = requests.Session()
    resp = attacker.get(f"{app_url}/launch", params={"iss": ehr.iss, "launch": "lx-attacker"}, allow_redirects=False,
                        timeout=10)
    authorize = attacker.get(resp.headers["Location"], allow_redirects=False, timeout=10)
    return authorize.headers["Location"]


def test_a_callback_without_either_binding_never_yields_a_session(app_url, ehr):
    url = _attackers_callback_url(app_url, ehr)
    victim = requests.Session()  # the clinician's browser: no launch cookie of this launch
    resp = victim.get(url, timeout=10)
    assert resp.status_code == 400
    assert "cannot be tied to a launch started in this browser window" in html.unescape(resp.text)
    assert "itl_session" not in victim.cookies
    assert ehr.token_requests == []  # the attacker's code was never exchanged
    # ...and the refused answer is spent: the attacker cannot retry it either.
    again = requests.get(url, timeout=10)
    assert "already used" in again.text


def test_a_browser_launch_gets_the_launch_page_with_a_frame_binding(app_url, ehr):
    resp = requests.get(f"{app_url}/launch", params={"iss": ehr.iss, "launch": "l"}, headers=BROWSER_NAV,
                        allow_redirects=False, timeout=10)
    assert resp.status_code == 200
    assert 'src="/static/launch.js"' in resp.text
    assert "<script>" not in resp.text  # CSP: no inline script, only the JSON data block
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Set-Cookie"].startswith("itl_launch=")


def test_a_cookieless_callback_of_a_browser_launch_gets_the_callback_page(app_url, ehr):
    resp = requests.get(f"{app_url}/launch", params={"iss": ehr.iss, "launch": "l"}, headers=BROWSER_NAV,
                        allow_redirects=False, timeout=10)
    authorize = html.unescape(resp.text.split('id="launch-continue" href="', 1)[1].split('"', 1)[0])
    state = parse_qs(urlsplit(authorize).query)["state"][0]
    page = requests.get(f"{app_url}/callback", params={"state": state, "code": "c"}, timeout=10)
    assert page.status_code == 200
    assert 'src="/static/callback.js"' in page.text
    assert ehr.token_requests == []  # nothing is exchanged before the binding is back
    # Posting it without the frame's binding (another window) is refused, and spends the state.
    post = requests.post(f"{app_url}/callback", data={"state": state, "code": "c", "binding": ""},
                         headers={"Sec-Fetch-Site": "same-origin"}, timeout=10)
    assert post.status_code == 400
    assert "cannot be tied" in html.unescape(post.text)
    assert ehr.token_requests == []


@pytest.mark.parametrize("headers", [
    {},
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
    {"Origin": "http://evil.example"},
    {"Origin": "null"},
])
def test_a_cross_site_post_to_the_callback_is_refused(app_url, ehr, headers):
    state = started_state(app_url, ehr)
    resp = requests.post(f"{app_url}/callback", data={"state": state, "code": "c", "binding": "x"},
                         headers=headers, timeout=10)
    assert resp.status_code == 403
    assert "cross-site-request" in resp.text
    assert ehr.token_requests == []


def test_error_description_is_not_shown_without_a_pending_launch(app_url):
    resp = requests.get(f"{app_url}/callback", params={"error": "invalid_request", "state": "forged",
                                                      "error_description": "Call 555-0100 to restore access"},
                        timeout=10)
    assert resp.status_code == 400
    assert "555-0100" not in resp.text
    assert "does not belong to a launch in progress" in resp.text


def test_the_cookie_binding_alone_still_completes_a_non_browser_launch(app_url, ehr):
    resp, browser = launch(app_url, ehr.iss)
    assert resp.status_code == 200
    assert resp.url == f"{app_url}/timeline"
    assert "itl_session" in browser.cookies


def test_an_older_session_cookie_never_stands_in_for_a_frame_bound_sign_in(app_url, ehr):
    _, older = launch(app_url, ehr.iss)  # this browser already has a session (patient pat-1)
    page = requests.get(f"{app_url}/launch", params={"iss": ehr.iss, "launch": "l2"}, headers=BROWSER_NAV,
                        allow_redirects=False, timeout=10)
    config = json.loads(html.unescape(page.text.split('id="launch-config">', 1)[1].split("</script>", 1)[0]))
    answer = requests.get(config["authorize"], allow_redirects=False, timeout=10).headers["Location"]
    code = parse_qs(urlsplit(answer).query)["code"][0]
    done = requests.post(f"{app_url}/callback", data={"state": config["state"], "code": code,
                                                      "binding": config["binding"]},
                         headers={"Sec-Fetch-Site": "same-origin"}, allow_redirects=False, timeout=10)
    assert done.status_code == 303  # the frame binding completed the sign-in...
    # ...but its new cookie was not kept: the older session's cookie must not pass for it.
    check = requests.get(f"{app_url}{done.headers['Location']}", cookies={"itl_session": older.cookies["itl_session"]},
                         allow_redirects=False, timeout=10)
    assert check.status_code == 400
    assert "cookies-blocked" in check.text


def test_error_text_on_an_attackers_own_pending_launch_is_not_shown_to_another_browser(app_url, ehr):
    state = started_state(app_url, ehr)  # the attacker's launch, pending on the server
    victim = requests.get(f"{app_url}/callback", timeout=10, params={
        "state": state, "error": "server_error<b>Call 555-0100</b>", "error_description": "Call 555-0100 now"})
    assert victim.status_code == 403
    assert "555-0100" not in victim.text
    assert "an unrecognised error" in victim.text
