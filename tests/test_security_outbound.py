"""Attack: a token endpoint that redirects, floods or stalls (finding 5: one outbound-HTTP policy).

authlib makes the token and refresh calls itself; the app passes app/http.py's rules in, so a
307 is not followed (the code and PKCE verifier are never re-posted elsewhere), an oversized
answer is cut and a stalled one times out, each with a readable error.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from werkzeug import Response

from tests.fake_ehr import FakeEhr
from tests.launching import launch, running_app


@pytest.fixture
def ehr(httpserver) -> FakeEhr:
    return FakeEhr(httpserver).install()


def _token_endpoint(ehr: FakeEhr, path: str) -> None:
    ehr.well_known = {**ehr.default_well_known(), "token_endpoint": ehr.server.url_for(path)}


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirecting_token_endpoint_is_not_followed(ehr, tmp_path, status):
    catcher: list[dict] = []

    def caught(request):
        catcher.append(dict(request.form))
        return Response(json.dumps({"access_token": "stolen", "token_type": "Bearer", "patient": "pat-1"}),
                        content_type="application/json")

    ehr.server.expect_request("/elsewhere/token").respond_with_handler(caught)
    ehr.server.expect_request("/moved/token", method="POST").respond_with_data(
        "", status=status, headers={"Location": ehr.server.url_for("/elsewhere/token")})
    _token_endpoint(ehr, "/moved/token")
    with running_app(ehr, tmp_path) as url:
        resp, browser = launch(url, ehr.iss)
    assert catcher == []  # the code and code_verifier were not re-posted
    assert resp.status_code == 502
    assert f"answered with a redirect (HTTP {status})" in resp.text
    assert "itl_session" not in browser.cookies


def test_a_redirecting_refresh_is_not_followed(ehr, tmp_path):
    posted: list[str] = []
    ehr.server.expect_request("/elsewhere/token").respond_with_handler(
        lambda r: posted.append(r.form.get("refresh_token", "")) or Response("{}", status=500))
    ehr.token_extra = {"expires_in": 1}
    with running_app(ehr, tmp_path) as url:
        resp, browser = launch(url, ehr.iss)
        assert resp.status_code == 200
        ehr.token_status, ehr.token_body = 307, ""
        ehr.token_headers = {"Location": ehr.server.url_for("/elsewhere/token")}
        time.sleep(1.1)
        answer = browser.get(f"{url}/api/context", timeout=10)
    assert answer.status_code == 401
    assert posted == []
    assert ehr.token_requests[-1].form["grant_type"] == "refresh_token"


def test_an_oversized_token_answer_is_cut(ehr, tmp_path):
    ehr.token_extra = {"padding": "x" * (2 * 1024 * 1024)}
    with running_app(ehr, tmp_path) as url:
        resp, _ = launch(url, ehr.iss)
    assert resp.status_code == 502
    assert "larger than" in resp.text


def test_a_stalled_token_endpoint_times_out(ehr, tmp_path):
    release, answered = threading.Event(), threading.Event()

    def slow(request):
        release.wait(10)  # stalls until the app has given up
        answered.set()
        return Response("{}", content_type="application/json")

    ehr.server.expect_request("/slow/token", method="POST").respond_with_handler(slow)
    _token_endpoint(ehr, "/slow/token")
    with running_app(ehr, tmp_path, HTTP_TIMEOUT_S=0.3) as url:
        resp, _ = launch(url, ehr.iss)
    # The stalled answer is finished here, not during the next test: the shared test server would
    # log it into that test's request log.
    release.set()
    assert answered.wait(10)
    give_up = time.monotonic() + 10
    while not any(r.path == "/slow/token" for r, _ in ehr.server.log) and time.monotonic() < give_up:
        time.sleep(0.01)
    assert resp.status_code == 502
    assert "token endpoint (ReadTimeout)" in resp.text


def test_the_token_call_uses_the_apps_policy_session():
    from app.http import PolicySession
    from app.smart import TokenSession

    assert issubclass(TokenSession, PolicySession)
