"""The attacks the security review tried that held, kept as tests (those not already elsewhere).

Also here: id_tokens forged with `alg: none` and with HS256 keyed by the EHR's public key, a
tampered `state`, session fixation, a redirecting archive with credentials, and every POST
route of the app refusing a cross-site request. Hostile servers bind 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest
import requests
from werkzeug import Response

from app import create_app
from app.archives.config import ArchiveConfig, AuthConfig
from tests import launching
from tests.fake_ehr import EHR_KEY
from tests.launching import launch, running_app, started_state

ehr, app_url = launching.ehr, launching.app_url  # the shared fixtures (tests/launching.py)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forged(header: dict, claims: dict, key: bytes | None) -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = _b64(hmac.new(key, signing_input.encode(), hashlib.sha256).digest()) if key else ""
    return f"{signing_input}.{signature}"


@pytest.mark.parametrize("how", ["alg-none", "hs256-with-the-public-key"])
def test_a_forged_id_token_is_refused(ehr, tmp_path, how):
    public_pem = EHR_KEY.as_pem(private=False)
    if how == "alg-none":
        ehr.id_token_forger = lambda claims: _forged({"alg": "none", "typ": "JWT"}, claims, None)
    else:
        ehr.id_token_forger = lambda claims: _forged({"alg": "HS256", "kid": "ehr-1"}, claims, public_pem)
    with running_app(ehr, tmp_path) as url:
        resp, browser = launch(url, ehr.iss)
    assert resp.status_code == 401
    assert "id_token failed verification" in resp.text
    assert "itl_session" not in browser.cookies


def test_a_tampered_state_is_refused(app_url, ehr):
    browser = requests.Session()
    state = started_state(app_url, ehr, browser)
    tampered = state[:-1] + ("A" if state[-1] != "A" else "B")
    resp = browser.get(f"{app_url}/callback", params={"state": tampered, "code": "code-1"}, timeout=10)
    assert resp.status_code == 400
    assert "unknown or has expired" in resp.text
    assert ehr.token_requests == []


def test_session_fixation_a_planted_session_id_is_never_adopted(app_url, ehr):
    browser = requests.Session()
    browser.cookies.set("itl_session", "attacker-chosen-id", domain="127.0.0.1", path="/")
    resp, browser = launch(app_url, ehr.iss, browser=browser)
    assert resp.status_code == 200
    assert browser.cookies.get("itl_session") not in (None, "attacker-chosen-id")
    planted = requests.get(f"{app_url}/api/context", cookies={"itl_session": "attacker-chosen-id"}, timeout=10)
    assert planted.status_code == 401


def test_a_redirecting_archive_never_gets_its_credentials_followed(httpserver, other_host, jane, monkeypatch):
    from app.federation import Federation
    from app.models import LaunchContext
    from tests.conftest import MRN_SYSTEM, StaticEhrToken

    monkeypatch.setenv("PACS_TOKEN", "pacs-secret")
    other_host.expect_request("/dicom-web/studies").respond_with_json([])
    httpserver.expect_request("/dicom-web/studies").respond_with_response(
        Response("", status=307, headers={"Location": other_host.url_for("/dicom-web/studies")}))
    archive = ArchiveConfig(id="pacs", name="PACS", kind="dicomweb", base_url=httpserver.url_for("/dicom-web"),
                            identifier_system=MRN_SYSTEM, auth=AuthConfig(kind="bearer", token_env="PACS_TOKEN"))
    ctx = LaunchContext(iss="http://ehr.invalid/fhir", patient_id="pat-1", granted_scopes=frozenset())
    result = Federation([archive]).search(jane, ctx, StaticEhrToken())
    assert result.archives[0].status == "error"
    assert "redirect, not followed" in (result.archives[0].reason or "")
    assert httpserver.log[0][0].headers["Authorization"] == "Bearer pacs-secret"
    assert other_host.log == []


def test_every_post_route_refuses_a_cross_site_request(ehr, tmp_path):
    app = create_app({"LAUNCH_CONFIG": {"client_id": "c", "client_name": "c", "scope": "launch openid",
                                        "issuers": [{"iss": ehr.iss}]},
                      "SESSION_STORE": f"sqlite:///{tmp_path / 's.db'}", "ARCHIVES": ()})
    posts = sorted(r.rule for r in app.url_map.iter_rules() if "POST" in (r.methods or ()))
    # A new POST route needs a line here.
    assert posts == ["/api/access-log", "/api/attention/ack", "/api/timings", "/callback", "/cds-services/<service_id>",
                     "/cds-services/<service_id>/feedback", "/logout"]
    client = app.test_client()
    for rule in posts:
        rule = rule.replace("<service_id>", "imaging-timeline-patient-view")
        # A cross-site form post: what another site can make a clinician's browser send.
        resp = client.post(rule, data={"state": "s", "uid": "1.2", "archive": "pacs"},
                           headers={"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"})
        assert resp.status_code in {400, 401, 403}, rule
        assert resp.status_code != 204
