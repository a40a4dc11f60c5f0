"""SMART EHR launch against a scriptable EHR: the happy path, what goes over the wire, every refusal."""

from __future__ import annotations

import base64
import html
import logging
import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from tests.fake_ehr import FakeEhr
from tests.launching import SCOPE, launch, running_app, started_state


@pytest.fixture
def ehr(httpserver) -> FakeEhr:
    return FakeEhr(httpserver).install()


@pytest.fixture
def app_url(ehr, tmp_path) -> Iterator[str]:
    with running_app(ehr, tmp_path) as url:
        yield url


# --- The happy path --------------------------------------------------------------------------------


def test_authorize_redirect_carries_pkce_s256_state_aud_launch_and_scope(app_url, ehr):
    resp = requests.get(f"{app_url}/launch", params={"iss": ehr.iss, "launch": "lx-1"}, allow_redirects=False,
                        timeout=10)
    assert resp.status_code == 302
    target = urlsplit(resp.headers["Location"])
    assert f"{target.scheme}://{target.netloc}{target.path}" == ehr.server.url_for("/authorize")
    q = {k: v[0] for k, v in parse_qs(target.query).items()}
    assert q["response_type"] == "code"
    assert q["client_id"] == "imaging-timeline"
    assert q["redirect_uri"] == f"{app_url}/callback"
    assert q["launch"] == "lx-1"
    assert q["aud"] == ehr.iss
    assert q["scope"] == SCOPE
    assert q["code_challenge_method"] == "S256"
    assert len(q["code_challenge"]) == 43  # base64url(SHA-256), unpadded
    assert len(q["state"]) >= 32
    assert q["nonce"]


def test_each_launch_gets_a_fresh_state_and_challenge(app_url, ehr):
    first = [requests.get(f"{app_url}/launch", params={"iss": ehr.iss, "launch": "l"}, allow_redirects=False,
                          timeout=10).headers["Location"] for _ in range(2)]
    a, b = (parse_qs(urlsplit(u).query) for u in first)
    assert a["state"] != b["state"]
    assert a["code_challenge"] != b["code_challenge"]


def test_ehr_launch_ends_on_the_timeline_with_the_patient(app_url, ehr):
    resp, _ = launch(app_url, ehr.iss)
    assert resp.status_code == 200
    assert resp.url == f"{app_url}/timeline"
    assert 'data-patient-id="pat-1"' in resp.text


def test_code_exchange_sends_the_pkce_verifier_matching_the_challenge(app_url, ehr):
    launch(app_url, ehr.iss)
    form = ehr.token_requests[-1].form
    challenge = ehr.authorizations[-1]["code_challenge"]
    import hashlib

    digest = base64.urlsafe_b64encode(hashlib.sha256(form["code_verifier"].encode()).digest()).rstrip(b"=")
    assert digest.decode() == challenge
    assert form["grant_type"] == "authorization_code"
    assert form["code"] == "code-1"
    assert form["redirect_uri"] == f"{app_url}/callback"


def test_tokens_never_reach_the_browser_or_the_log(app_url, ehr, caplog):
    caplog.set_level(logging.DEBUG)
    resp, browser = launch(app_url, ehr.iss)
    for secret in ("at-secret-123", "rt-secret-456"):
        assert secret not in resp.text
        assert all(secret not in (c.value or "") for c in browser.cookies)
        assert all(secret not in h.url for h in resp.history)
        assert secret not in caplog.text
    session_cookie = next(c for c in browser.cookies if c.name == "itl_session")
    assert session_cookie.has_nonstandard_attr("HttpOnly")


def test_need_patient_banner_false_hides_the_banner_and_true_shows_it(app_url, ehr):
    resp, _ = launch(app_url, ehr.iss)
    assert "patient-banner" not in resp.text
    ehr.token_extra = {"need_patient_banner": True}
    resp, _ = launch(app_url, ehr.iss)
    assert 'class="patient-banner"' in resp.text
    assert "Ada Lovelace" in resp.text


def test_granted_scopes_and_context_are_read_from_the_token_response(app_url, ehr):
    ehr.token_extra = {"scope": "launch openid patient/Patient.rs patient/ImagingStudy.rs",
                       "fhirContext": [{"reference": "ImagingStudy/st-9"}, {"reference": "bad ref!"}],
                       "intent": "compare", "tenant": "t1"}
    resp, _ = launch(app_url, ehr.iss)
    assert resp.status_code == 200
    assert 'data-patient-id="pat-1"' in resp.text


def test_smart_style_url_colours_are_applied_and_unsafe_values_dropped(app_url, ehr, httpserver):
    httpserver.expect_request("/style.json").respond_with_json(
        {"color_background": "#fafafa", "color_text": "red; } body { display:none", "font_family_body": "Inter"})
    ehr.token_extra = {"smart_style_url": httpserver.url_for("/style.json")}
    resp, _ = launch(app_url, ehr.iss)
    assert "--smart-color-background: #fafafa" in resp.text
    assert "display:none" not in resp.text
    assert "--smart-font-family-body: Inter" in resp.text


def test_v1_only_server_gets_read_scopes(app_url, ehr):
    ehr.well_known = {**ehr.default_well_known(), "capabilities": ["launch-ehr", "permission-v1"]}
    requests.get(f"{app_url}/launch", params={"iss": ehr.iss, "launch": "l"}, allow_redirects=False, timeout=10)
    # Discovery is cached per app; this app discovered for the first time in this test.
    resp = requests.get(f"{app_url}/launch", params={"iss": ehr.iss, "launch": "l"}, allow_redirects=False,
                        timeout=10)
    scope = parse_qs(urlsplit(resp.headers["Location"]).query)["scope"][0]
    assert "patient/ImagingStudy.read" in scope.split()
    assert not any(s.endswith(".rs") for s in scope.split())


def test_capability_statement_oauth_uris_are_the_fallback(ehr, tmp_path, httpserver):
    httpserver.clear_all_handlers()
    ehr.server = httpserver
    httpserver.expect_request("/fhir/.well-known/smart-configuration").respond_with_data("nope", status=404)
    ext = {"url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris", "extension": [
        {"url": "authorize", "valueUri": httpserver.url_for("/authorize")},
        {"url": "token", "valueUri": httpserver.url_for("/token")}]}
    httpserver.expect_request("/fhir/metadata").respond_with_json(
        {"resourceType": "CapabilityStatement", "rest": [{"mode": "server", "security": {"extension": [ext]}}]})
    with running_app(ehr, tmp_path) as url:
        resp = requests.get(f"{url}/launch", params={"iss": ehr.iss, "launch": "l"}, allow_redirects=False,
                            timeout=10)
    assert resp.status_code == 302
    assert resp.headers["Location"].startswith(httpserver.url_for("/authorize"))


# --- Client authentication -----------------------------------------------------------------------


def test_private_key_jwt_assertion_is_rs384_with_kid_unique_jti_and_short_exp(ehr, tmp_path):
    with running_app(ehr, tmp_path, issuer={"token_endpoint_auth_method": "private_key_jwt"}) as url:
        launch(url, ehr.iss)
        launch(url, ehr.iss)
        jwks = KeySet.import_key_set(requests.get(f"{url}/.well-known/jwks.json", timeout=10).json())
    claims = []
    for req in ehr.token_requests:
        assert req.form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        token = jwt.decode(req.form["client_assertion"], jwks, algorithms=["RS384"])
        assert token.header["alg"] == "RS384"
        assert token.header["kid"]
        assert token.claims["iss"] == token.claims["sub"] == "imaging-timeline"
        assert token.claims["aud"] == ehr.server.url_for("/token")
        assert token.claims["exp"] - time.time() <= 300
        claims.append(token.claims)
    assert claims[0]["jti"] != claims[1]["jti"]


def test_es384_assertion_when_registered_for_es384(ehr, tmp_path):
    issuer = {"token_endpoint_auth_method": "private_key_jwt", "signing_alg": "ES384"}
    with running_app(ehr, tmp_path, issuer=issuer) as url:
        launch(url, ehr.iss)
        jwks = KeySet.import_key_set(requests.get(f"{url}/.well-known/jwks.json", timeout=10).json())
    token = jwt.decode(ehr.token_requests[-1].form["client_assertion"], jwks, algorithms=["ES384"])
    assert token.header["alg"] == "ES384"


def test_client_secret_basic_sends_the_secret_from_the_environment(ehr, tmp_path, monkeypatch):
    monkeypatch.setenv("EHR_SECRET", "s3cr3t")
    issuer = {"token_endpoint_auth_method": "client_secret_basic", "client_secret_env": "EHR_SECRET"}
    with running_app(ehr, tmp_path, issuer=issuer) as url:
        resp, _ = launch(url, ehr.iss)
    assert resp.status_code == 200
    expected = base64.b64encode(b"imaging-timeline:s3cr3t").decode()
    assert ehr.token_requests[-1].headers["Authorization"] == f"Basic {expected}"


def test_jwks_publishes_only_public_keys(app_url):
    keys = requests.get(f"{app_url}/.well-known/jwks.json", timeout=10).json()["keys"]
    assert {k["alg"] for k in keys} == {"RS384", "ES384"}
    assert all("d" not in k for k in keys)


def test_health_answers_json(app_url):
    resp = requests.get(f"{app_url}/health", timeout=10)
    assert resp.status_code == 200
    assert resp.json()["status"] == "ok"


# --- Refusals --------------------------------------------------------------------------------------


def test_unknown_iss_is_refused_with_400_and_never_contacted(app_url, ehr, httpserver):
    other = httpserver.url_for("/other/fhir")
    resp = requests.get(f"{app_url}/launch", params={"iss": other, "launch": "l"}, allow_redirects=False,
                        timeout=10)
    assert resp.status_code == 400
    assert "not in launch.json `issuers`" in resp.text
    assert "Location" not in resp.headers
    assert not any(req.path.startswith("/other") for req, _ in httpserver.log)


@pytest.mark.parametrize("iss", [
    "", "not a url", "ftp://ehr.example/fhir", "http://ehr.example/fhir", "https://ehr.example/fhir?x=1",
    "https://user@ehr.example/fhir", "javascript:alert(1)",
])
def test_malformed_iss_is_refused_with_400(app_url, iss):
    resp = requests.get(f"{app_url}/launch", params={"iss": iss, "launch": "l"}, allow_redirects=False,
                        timeout=10)
    assert resp.status_code == 400
    assert "Traceback" not in resp.text


def test_missing_launch_with_ehr_only_registration_is_refused(ehr, tmp_path):
    with running_app(ehr, tmp_path, issuer={"launch_types": ["ehr"]}) as url:
        resp = requests.get(f"{url}/launch", params={"iss": ehr.iss}, allow_redirects=False, timeout=10)
    assert resp.status_code == 400
    assert "registered for launch from the chart only" in resp.text


def test_standalone_launch_asks_for_launch_patient(app_url, ehr):
    resp = requests.get(f"{app_url}/launch", params={"iss": ehr.iss}, allow_redirects=False, timeout=10)
    q = parse_qs(urlsplit(resp.headers["Location"]).query)
    assert "launch" not in q
    assert "launch/patient" in q["scope"][0].split()
    assert "launch" not in q["scope"][0].split()


@pytest.mark.parametrize("doc, words", [
    (None, "HTTP 404"),
    ({"issuer": "x"}, "no valid authorization_endpoint"),
    ({"authorization_endpoint": "javascript:x", "token_endpoint": "https://t.example/token"},
     "no valid authorization_endpoint"),
])
def test_unusable_discovery_is_a_502_naming_the_problem(ehr, tmp_path, httpserver, doc, words):
    httpserver.clear_all_handlers()
    if doc is None:
        httpserver.expect_request("/fhir/.well-known/smart-configuration").respond_with_data("", status=404)
    else:
        httpserver.expect_request("/fhir/.well-known/smart-configuration").respond_with_json(doc)
    httpserver.expect_request("/fhir/metadata").respond_with_data("", status=404)
    with running_app(ehr, tmp_path) as url:
        resp = requests.get(f"{url}/launch", params={"iss": ehr.iss, "launch": "l"}, allow_redirects=False,
                            timeout=10)
    assert resp.status_code == 502
    assert words in resp.text
    assert "SMART on FHIR is enabled" in resp.text


def _callback(app_url: str, **params) -> requests.Response:
    """The callback as a browser follows it: a refusal is shown at a clean address (303 first)."""
    return requests.get(f"{app_url}/callback", params=params, timeout=10)


def test_callback_without_state_is_refused(app_url):
    resp = _callback(app_url, code="c")
    assert resp.status_code == 400
    assert "has no `state`" in resp.text


def test_callback_with_unknown_state_is_refused(app_url):
    resp = _callback(app_url, code="c", state="made-up")
    assert resp.status_code == 400
    assert "unknown or has expired" in resp.text


def test_replayed_state_is_refused(app_url, ehr):
    launch(app_url, ehr.iss)
    state = ehr.authorizations[-1]["state"]
    replay = _callback(app_url, code="code-1", state=state)
    assert replay.status_code == 400
    assert "already used" in replay.text
    assert len(ehr.token_requests) == 1


def test_expired_state_is_refused(ehr, tmp_path):
    with running_app(ehr, tmp_path, PENDING_LAUNCH_TTL_S=0.3) as url:
        state = started_state(url, ehr)
        time.sleep(0.6)
        resp = _callback(url, code="c", state=state)
    assert resp.status_code == 400
    assert "unknown or has expired" in resp.text


def test_state_from_another_browser_is_refused(app_url, ehr):
    started_in = requests.Session()
    state = started_state(app_url, ehr, started_in)
    other = requests.Session()
    other.cookies.set("itl_launch", "someone-elses-binding")
    resp = other.get(f"{app_url}/callback", params={"code": "c", "state": state}, timeout=10)
    assert resp.status_code == 400
    assert "another browser window" in resp.text


def test_access_denied_is_a_readable_403(app_url, ehr):
    ehr.authorize_error = "access_denied"
    resp, _ = launch(app_url, ehr.iss)
    assert resp.status_code == 403
    assert "declined" in resp.text
    assert "The user said no" in resp.text


def test_ehr_error_description_is_escaped_and_quoted(app_url, ehr):
    browser = requests.Session()
    state = started_state(app_url, ehr, browser)  # this browser's launch: its launch cookie binds the answer
    resp = browser.get(f"{app_url}/callback", timeout=10, params={
        "state": state, "error": "invalid_scope", "error_description": "<script>alert(1)</script>"})
    assert resp.status_code == 403
    assert "<script>alert(1)" not in resp.text
    assert "The EHR&#39;s own words (not checked by Imaging Timeline): \u201c&lt;script&gt;" in resp.text


@pytest.mark.parametrize("status, body, words", [
    (400, {"error": "invalid_grant", "error_description": "code expired"}, "invalid_grant (code expired)"),
    (401, {"error": "invalid_client"}, "invalid_client"),
    (500, "<html>Internal error</html>", "HTTP 500"),
    (503, {"error": "temporarily_unavailable"}, "HTTP 503"),
    (200, "<html>not json</html>", "not a JSON token response"),
    (200, {"token_type": "Bearer"}, "no access_token"),
    (200, {"access_token": "x", "token_type": "mac"}, "Bearer token"),
])
def test_token_endpoint_failures_are_readable(app_url, ehr, status, body, words):
    ehr.token_status, ehr.token_body = status, body
    resp, _ = launch(app_url, ehr.iss)
    assert resp.status_code == 502
    assert words in resp.text
    assert "Traceback" not in resp.text


def test_token_response_without_patient_is_refused(app_url, ehr):
    ehr.token_extra = {"patient": None}
    resp, _ = launch(app_url, ehr.iss)
    assert resp.status_code == 502
    assert "did not say which patient" in resp.text


@pytest.mark.parametrize("claims, use_other_key", [
    ({}, True),  # signed by a key the EHR does not publish
    ({"aud": "someone-else"}, False),
    ({"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200}, False),
    ({"iss": "https://impostor.example/fhir"}, False),
    ({"nonce": "not-the-nonce"}, False),
])
def test_bad_id_token_is_refused(app_url, ehr, claims, use_other_key):
    ehr.id_token_claims = claims
    if use_other_key:
        ehr.id_token_key = RSAKey.generate_key(2048, parameters={"kid": "ehr-1"}, private=True)
    resp, browser = launch(app_url, ehr.iss)
    assert resp.status_code == 401
    assert "id_token failed verification" in resp.text
    assert "itl_session" not in browser.cookies


def test_jwks_without_a_keys_list_refuses_the_sign_in_readably(app_url, ehr):
    ehr.server.expect_request("/jwks-not-a-set").respond_with_json({"kty": "RSA"})
    ehr.well_known = {**ehr.default_well_known(), "jwks_uri": ehr.server.url_for("/jwks-not-a-set")}
    resp, browser = launch(app_url, ehr.iss)
    assert resp.status_code == 401
    assert "signing keys from" in resp.text
    assert "Traceback" not in resp.text
    assert "itl_session" not in browser.cookies


@pytest.mark.parametrize("status, words", [
    (401, "did not accept the app's access token"),
    (403, "refused access to this patient's record"),
    (404, "has no patient with id pat-1"),
])
def test_patient_read_failures_have_their_own_page(app_url, ehr, status, words):
    ehr.patient_status = status
    resp, _ = launch(app_url, ehr.iss)
    assert resp.status_code == status
    assert words in html.unescape(resp.text)


def test_timeline_without_a_session_says_relaunch(app_url):
    resp = requests.get(f"{app_url}/timeline", timeout=10)
    assert resp.status_code == 401
    assert "Relaunch" in resp.text


def test_errors_answer_json_when_asked(app_url):
    resp = requests.get(f"{app_url}/launch", headers={"Accept": "application/json"}, timeout=10)
    assert resp.status_code == 400
    assert resp.json()["error"] == "launch-error"


def test_pages_forbid_framing_by_unlisted_origins(app_url, ehr):
    csp = requests.get(f"{app_url}/", timeout=10).headers["Content-Security-Policy"]
    origin = ehr.server.url_for("/").rstrip("/")
    assert f"frame-ancestors 'self' {origin}" in csp


def test_over_https_cookies_survive_a_cross_site_ehr_iframe(ehr, tmp_path):
    with running_app(ehr, tmp_path, PUBLIC_URL="https://timeline.example.org") as url:
        resp = requests.get(f"{url}/launch", params={"iss": ehr.iss, "launch": "l"}, allow_redirects=False,
                            timeout=10)
    cookie = resp.headers["Set-Cookie"]
    assert cookie.startswith("itl_launch=")
    for attribute in ("HttpOnly", "Secure", "SameSite=None", "Partitioned"):
        assert attribute in cookie
    assert parse_qs(urlsplit(resp.headers["Location"]).query)["redirect_uri"] == [
        "https://timeline.example.org/callback"]


def test_the_discovery_cache_is_bounded_and_expires(httpserver):
    from app.smart import MAX_CACHED, Discovery

    httpserver.expect_request("/fhir/.well-known/smart-configuration").respond_with_json(
        {"authorization_endpoint": httpserver.url_for("/a"), "token_endpoint": httpserver.url_for("/t")})
    now = [0.0]
    discovery = Discovery(requests.Session(), ttl_s=10, clock=lambda: now[0])
    iss = httpserver.url_for("/fhir")
    discovery(iss)
    discovery(iss)
    assert len(httpserver.log) == 1  # cached
    now[0] = 11
    discovery(iss)
    assert len(httpserver.log) == 2  # expired, fetched again
    for n in range(MAX_CACHED + 5):
        discovery._cache[f"https://ehr{n}.example/fhir"] = (1e9, discovery._cache[iss][1])
    discovery(iss + "/")  # another iss string: a fetch and an insert
    assert len(discovery._cache) <= MAX_CACHED
