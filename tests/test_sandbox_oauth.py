"""The sandbox authorization server behaves like a strict SMART EHR (SMART App Launch 2.x)."""

from __future__ import annotations

import html
import re
import secrets
import time
from collections.abc import Iterator

import pytest
import requests
from authlib.common.security import generate_token
from authlib.integrations.base_client import OAuthError
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey
from pytest_httpserver import HTTPServer

from tests.test_sandbox_support import (
    APP,
    ASYMMETRIC,
    BACKEND_EC_KEY,
    BACKEND_KEY,
    CONFIDENTIAL,
    EHR_SCOPE,
    NARROW,
    PUBLIC,
    Sandbox,
    authorize,
    backend_jwks,
    backend_token_request,
    client_assertion,
    clients,
    ehr_launch,
    launch,
    oauth_session,
    redirect_params,
    running_sandbox,
)


@pytest.fixture(scope="module")
def sb() -> Iterator[Sandbox]:
    with running_sandbox(advertise_imaging_endpoints=True) as sandbox:
        yield sandbox


def _raw_authorize(sb: Sandbox, **overrides: str) -> requests.Response:
    """An authorize request built by hand, for the malformed ones authlib's client would not send."""
    _iss, launch_id = launch(sb)
    params = {"response_type": "code", "client_id": PUBLIC, "redirect_uri": f"{APP}/callback",
              "scope": EHR_SCOPE, "state": "st-1", "aud": sb.fhir, "launch": launch_id,
              "code_challenge": create_s256_code_challenge(generate_token(48)), "code_challenge_method": "S256"}
    params.update(overrides)
    return sb.get(f"{sb.base}/auth/authorize", params={k: v for k, v in params.items() if v is not None})


def test_ehr_launch_returns_context_id_token_and_refresh_token(sb: Sandbox) -> None:
    token = ehr_launch(sb, "pat-amy", nonce="n-123")
    assert token["patient"] == "pat-amy"
    assert token["need_patient_banner"] is True
    assert token["token_type"] == "Bearer"
    assert token["expires_in"] == 300
    assert set(token["scope"].split()) == set(EHR_SCOPE.split())
    assert token["refresh_token"] and token["id_token"]
    assert "smart_style_url" not in token and "fhirContext" not in token


def test_embedded_launch_carries_banner_style_intent_and_fhir_context(sb: Sandbox) -> None:
    token = ehr_launch(sb, "pat-ben", launch_params={
        "embedded": "1", "style": "1", "intent": "reconcile", "tenant": "t1",
        "fhir_context": "ImagingStudy/is-ben-ct-head-stat"})
    assert token["need_patient_banner"] is False
    assert token["encounter"] == "enc-ben-ed"
    assert token["intent"] == "reconcile"
    assert token["tenant"] == "t1"
    assert token["fhirContext"] == [{"reference": "ImagingStudy/is-ben-ct-head-stat"}]
    style = requests.get(token["smart_style_url"], timeout=10).json()
    assert style["color_background"] and style["color_highlight"]
    assert token["smart_style_url"].startswith(f"{sb.base}/")


def test_id_token_verifies_against_the_sandbox_jwks(sb: Sandbox) -> None:
    token = ehr_launch(sb, "pat-amy", nonce="nonce-42")
    keys = KeySet.import_key_set(requests.get(f"{sb.base}/auth/jwks", timeout=10).json())
    claims = jwt.decode(token["id_token"], keys, algorithms=["RS256"]).claims
    assert claims["iss"] == sb.fhir
    assert claims["aud"] == PUBLIC
    assert claims["nonce"] == "nonce-42"
    assert claims["fhirUser"] == f"{sb.fhir}/Practitioner/sandbox-dr-radiant"
    assert claims["sub"] == "sandbox-dr-radiant"
    assert claims["iat"] <= time.time() < claims["exp"]


@pytest.mark.parametrize(("overrides", "error", "description"), [
    ({"code_challenge": None, "code_challenge_method": None}, "invalid_request", "PKCE with S256 is required"),
    ({"code_challenge_method": "plain"}, "invalid_request", "plain is not accepted"),
    ({"code_challenge_method": None}, "invalid_request", "plain is not accepted"),
    ({"aud": "https://other.example/fhir"}, "invalid_request", "'aud' is not the FHIR base URL"),
    ({"aud": None}, "invalid_request", "Missing 'aud'"),
    ({"state": None}, "invalid_request", "Missing 'state'"),
    ({"launch": "not-a-launch"}, "invalid_request", "unknown, already used or expired"),
    ({"scope": "openid patient/ImagingStudy.rs"}, "invalid_scope", "An EHR launch needs the 'launch' scope."),
])
def test_bad_authorize_requests_redirect_with_an_error(sb: Sandbox, overrides, error, description) -> None:
    params = redirect_params(_raw_authorize(sb, **overrides))
    assert params["error"] == error
    assert description in params["error_description"]
    assert params.get("state") == overrides.get("state", "st-1")


def test_nothing_grantable_is_invalid_scope(sb: Sandbox) -> None:
    params = redirect_params(_raw_authorize(sb, scope="patient/Observation.write", launch=None))
    assert params["error"] == "invalid_scope"


@pytest.mark.parametrize("redirect_uri", ["https://evil.example/callback", f"{APP}/callback/../x", None])
def test_unregistered_redirect_uri_gets_an_error_page_not_a_redirect(sb: Sandbox, redirect_uri) -> None:
    resp = _raw_authorize(sb, redirect_uri=redirect_uri)
    assert resp.status_code == 400
    assert "Location" not in resp.headers
    assert "Authorization request refused" in resp.text


def test_unknown_client_gets_an_error_page(sb: Sandbox) -> None:
    resp = _raw_authorize(sb, client_id="nobody")
    assert resp.status_code == 400
    assert "does not exist" in html.unescape(resp.text)


def test_launch_id_works_once(sb: Sandbox) -> None:
    _iss, launch_id = launch(sb)
    first, _ = authorize(sb, oauth_session(), launch=launch_id)
    assert "code" in redirect_params(first)
    second, _ = authorize(sb, oauth_session(), launch=launch_id)
    assert redirect_params(second)["error"] == "invalid_request"


def test_launch_expires(sb: Sandbox) -> None:
    _iss, launch_id = launch(sb)
    sb.clock.advance(301)
    try:
        resp, _ = authorize(sb, oauth_session(), launch=launch_id)
    finally:
        sb.clock.advance(-301)
    assert "expired" in redirect_params(resp)["error_description"]


def _code(sb: Sandbox, session=None) -> tuple[str, str]:
    _iss, launch_id = launch(sb)
    session = session or oauth_session()
    resp, verifier = authorize(sb, session, launch=launch_id)
    return redirect_params(resp)["code"], verifier


def _exchange(sb: Sandbox, code: str, verifier: str | None, client_id: str = PUBLIC,
              redirect_uri: str = f"{APP}/callback") -> requests.Response:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri, "client_id": client_id}
    if verifier is not None:
        data["code_verifier"] = verifier
    return requests.post(sb.token_url, data=data, timeout=10)


def test_code_cannot_be_replayed(sb: Sandbox) -> None:
    code, verifier = _code(sb)
    assert _exchange(sb, code, verifier).status_code == 200
    replay = _exchange(sb, code, verifier)
    assert replay.status_code == 400
    assert replay.json()["error"] == "invalid_grant"


@pytest.mark.parametrize(("verifier", "error", "description"), [
    (None, "invalid_request", "Missing 'code_verifier'"),
    ("x" * 50, "invalid_grant", "Code challenge failed."),
])
def test_code_needs_the_matching_verifier(sb: Sandbox, verifier, error, description) -> None:
    code, _ = _code(sb)
    resp = _exchange(sb, code, verifier)
    assert resp.status_code in (400, 401)
    assert resp.json() == {"error": error, "error_description": description}


def test_code_is_bound_to_its_redirect_uri(sb: Sandbox) -> None:
    code, verifier = _code(sb)
    resp = _exchange(sb, code, verifier, redirect_uri=f"{APP}/other")
    assert resp.json()["error"] == "invalid_grant"


def test_refresh_token_rotates(sb: Sandbox) -> None:
    token = ehr_launch(sb)
    session = oauth_session()
    fresh = session.refresh_token(sb.token_url, refresh_token=token["refresh_token"])
    assert fresh["access_token"] != token["access_token"]
    assert fresh["patient"] == "pat-amy"
    assert fresh["refresh_token"] != token["refresh_token"]
    with pytest.raises(OAuthError, match="invalid_grant"):
        oauth_session().refresh_token(sb.token_url, refresh_token=token["refresh_token"])


def test_access_token_expires(sb: Sandbox) -> None:
    token = ehr_launch(sb)["access_token"]
    assert sb.get(f"{sb.fhir}/Patient/pat-amy", token).status_code == 200
    sb.clock.advance(301)
    try:
        resp = sb.get(f"{sb.fhir}/Patient/pat-amy", token)
    finally:
        sb.clock.advance(-301)
    assert resp.status_code == 401
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]


def test_granted_scopes_are_requested_and_allowed_and_supported(sb: Sandbox) -> None:
    token = ehr_launch(sb, client_id=NARROW, scope=f"{EHR_SCOPE} patient/Observation.rs made/up")
    assert set(token["scope"].split()) == {"launch", "openid", "fhirUser", "patient/Patient.rs",
                                           "patient/ImagingStudy.rs"}
    assert "refresh_token" in token  # the client may use the refresh_token grant


def test_confidential_client_authenticates_with_basic(sb: Sandbox) -> None:
    token = ehr_launch(sb, client_id=CONFIDENTIAL)
    assert token["patient"] == "pat-amy"


def test_confidential_client_with_a_wrong_secret_is_refused(sb: Sandbox) -> None:
    code, verifier = _code(sb, oauth_session(CONFIDENTIAL))
    resp = requests.post(sb.token_url, auth=(CONFIDENTIAL, "wrong"), timeout=10, data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": f"{APP}/callback",
        "code_verifier": verifier})
    assert resp.status_code == 401
    assert resp.json()["error"] == "invalid_client"


def test_confidential_client_cannot_pose_as_public(sb: Sandbox) -> None:
    code, verifier = _code(sb, oauth_session(CONFIDENTIAL))
    assert _exchange(sb, code, verifier, client_id=CONFIDENTIAL).json()["error"] == "invalid_client"


def _key_auth(sb: Sandbox) -> PrivateKeyJWT:
    # authlib's client defaults to exp = now + 1 hour, which SMART (and so the sandbox) refuses; and
    # it stores the generated jti in `claims`, so each token request needs a fresh instance.
    return PrivateKeyJWT(sb.token_url, alg="RS384", headers={"kid": BACKEND_KEY.kid},
                         claims={"exp": int(time.time()) + 240})


def test_asymmetric_client_authenticates_with_private_key_jwt(sb: Sandbox) -> None:
    _iss, launch_id = launch(sb, "pat-elena")
    session = oauth_session(ASYMMETRIC, client_secret=BACKEND_KEY, token_endpoint_auth_method=_key_auth(sb))
    resp, verifier = authorize(sb, session, launch=launch_id)
    token = session.fetch_token(sb.token_url, authorization_response=resp.headers["Location"],
                                code_verifier=verifier)
    assert token["patient"] == "pat-elena"
    session = oauth_session(ASYMMETRIC, client_secret=BACKEND_KEY, token_endpoint_auth_method=_key_auth(sb))
    fresh = session.refresh_token(sb.token_url, refresh_token=token["refresh_token"])
    assert fresh["patient"] == "pat-elena"


def _picker(sb: Sandbox, scope: str = "launch/patient openid fhirUser patient/ImagingStudy.rs"):
    session = oauth_session(scope=scope)
    resp, verifier = authorize(sb, session)
    assert resp.status_code == 200, resp.text
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', resp.text))
    return session, verifier, {k: html.unescape(v) for k, v in fields.items()}


def test_standalone_launch_shows_a_picker_and_grants_the_chosen_patient(sb: Sandbox) -> None:
    session, verifier, fields = _picker(sb)
    resp = sb.http.post(f"{sb.base}/auth/authorize", data={**fields, "patient": "pat-dev", "decision": "approve"},
                        allow_redirects=False, timeout=10)
    token = session.fetch_token(sb.token_url, authorization_response=resp.headers["Location"],
                                code_verifier=verifier)
    assert token["patient"] == "pat-dev"
    assert token["need_patient_banner"] is True


def test_standalone_picker_deny_redirects_access_denied(sb: Sandbox) -> None:
    _session, _verifier, fields = _picker(sb)
    resp = sb.http.post(f"{sb.base}/auth/authorize", data={**fields, "decision": "deny"},
                        allow_redirects=False, timeout=10)
    params = redirect_params(resp)
    assert params["error"] == "access_denied"
    assert params["state"] == fields["state"]


def test_standalone_picker_form_is_single_use(sb: Sandbox) -> None:
    _session, _verifier, fields = _picker(sb)
    data = {**fields, "patient": "pat-amy", "decision": "approve"}
    assert sb.http.post(f"{sb.base}/auth/authorize", data=data, allow_redirects=False, timeout=10).status_code == 302
    again = sb.http.post(f"{sb.base}/auth/authorize", data=data, allow_redirects=False, timeout=10)
    assert again.status_code == 400


# --- SMART Backend Services -----------------------------------------------------------------------


def test_backend_services_token_with_rs384_assertion(sb: Sandbox) -> None:
    resp = backend_token_request(sb, "system/ImagingStudy.rs system/Patient.rs")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["scope"] == "system/ImagingStudy.rs system/Patient.rs"
    assert "refresh_token" not in body and "patient" not in body


def test_backend_services_token_with_es384_assertion(sb: Sandbox) -> None:
    resp = backend_token_request(sb, assertion=client_assertion(sb, BACKEND_EC_KEY, "ES384"))
    assert resp.status_code == 200, resp.text


def test_backend_jwks_is_fetched_from_jwks_uri(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/jwks.json").respond_with_json(backend_jwks())
    with running_sandbox(clients=clients(jwks_uri=httpserver.url_for("/jwks.json"))) as sandbox:
        resp = backend_token_request(sandbox)
    assert resp.status_code == 200, resp.text
    assert [r.path for r, _ in httpserver.log] == ["/jwks.json"]


def test_the_client_jwks_is_cached_across_token_requests(httpserver: HTTPServer) -> None:
    # The token endpoint must not wait on the app's own server for every launch (the circular wait).
    httpserver.expect_request("/jwks.json").respond_with_json(backend_jwks())
    with running_sandbox(clients=clients(jwks_uri=httpserver.url_for("/jwks.json"))) as sandbox:
        answers = [backend_token_request(sandbox).status_code for _ in range(5)]
    assert answers == [200] * 5
    assert [r.path for r, _ in httpserver.log] == ["/jwks.json"]


def test_an_unknown_kid_fetches_the_client_jwks_again(httpserver: HTTPServer) -> None:
    rotated = RSAKey.generate_key(2048, parameters={"kid": "backend-rotated", "alg": "RS384"}, private=True)
    httpserver.expect_ordered_request("/jwks.json").respond_with_json(backend_jwks())
    httpserver.expect_ordered_request("/jwks.json").respond_with_json(
        {"keys": [rotated.as_dict(private=False)]})
    with running_sandbox(clients=clients(jwks_uri=httpserver.url_for("/jwks.json"))) as sandbox:
        assert backend_token_request(sandbox).status_code == 200
        time.sleep(1.1)  # past the refetch floor (JWKS_REFETCH_MIN_S)
        resp = backend_token_request(sandbox, assertion=client_assertion(sandbox, rotated))
    assert resp.status_code == 200, resp.text
    assert len(httpserver.log) == 2


def test_backend_jwks_uri_failure_is_invalid_client(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/jwks.json").respond_with_data("nope", status=500)
    with running_sandbox(clients=clients(jwks_uri=httpserver.url_for("/jwks.json"))) as sandbox:
        resp = backend_token_request(sandbox)
    assert resp.json() == {"error": "invalid_client",
                           "error_description": "The client's jwks_uri could not be fetched or parsed."}


def test_backend_assertion_jti_cannot_be_replayed(sb: Sandbox) -> None:
    assertion = client_assertion(sb)
    assert backend_token_request(sb, assertion=assertion).status_code == 200
    replay = backend_token_request(sb, assertion=assertion)
    assert replay.json() == {"error": "invalid_client", "error_description": "JWT ID is used before."}


OTHER_KEY = RSAKey.generate_key(2048, parameters={"kid": "backend-rs384"}, private=True)
# The registered key itself, minus its "alg", so the client side can sign with a forbidden algorithm.
SAME_KEY_ANY_ALG = RSAKey.import_key({k: v for k, v in BACKEND_KEY.as_dict(private=True).items() if k != "alg"})


@pytest.mark.parametrize(("make", "description"), [
    (lambda sb: client_assertion(sb, exp=int(time.time()) + 900), "more than five minutes ahead"),
    (lambda sb: client_assertion(sb, exp=int(time.time()) - 120), "expired"),
    (lambda sb: client_assertion(sb, aud="https://elsewhere.example/token"), "aud"),
    (lambda sb: client_assertion(sb, SAME_KEY_ANY_ALG, alg="RS256"), "RS384 or ES384"),
    (lambda sb: client_assertion(sb, OTHER_KEY), "signature"),
    (lambda sb: client_assertion(sb, jti=None), "Missing JWT ID"),
])
def test_bad_backend_assertions_are_invalid_client(sb: Sandbox, make, description) -> None:
    resp = backend_token_request(sb, assertion=make(sb))
    assert resp.status_code in (400, 401)
    body = resp.json()
    assert body["error"] == "invalid_client"
    assert description.lower() in body["error_description"].lower()


@pytest.mark.parametrize("scope", ["patient/ImagingStudy.rs", "", "system/*.rs launch"])
def test_backend_services_only_get_system_scopes(sb: Sandbox, scope: str) -> None:
    assert backend_token_request(sb, scope).json()["error"] == "invalid_scope"


def test_public_client_cannot_use_client_credentials(sb: Sandbox) -> None:
    resp = requests.post(sb.token_url, timeout=10, data={"grant_type": "client_credentials", "client_id": PUBLIC,
                                                         "scope": "system/*.rs"})
    assert resp.json()["error"] == "invalid_client"


def test_smart_configuration_advertises_the_contract(sb: Sandbox) -> None:
    doc = requests.get(f"{sb.fhir}/.well-known/smart-configuration", timeout=10).json()
    assert doc["issuer"] == sb.fhir
    assert doc["authorization_endpoint"] == f"{sb.base}/auth/authorize"
    assert doc["token_endpoint"] == sb.token_url
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["token_endpoint_auth_methods_supported"] == ["none", "client_secret_basic", "private_key_jwt"]
    assert doc["token_endpoint_auth_signing_alg_values_supported"] == ["RS384", "ES384"]
    for capability in ("launch-ehr", "launch-standalone", "permission-v2", "context-banner", "context-style",
                       "sso-openid-connect", "authorize-post", "client-confidential-asymmetric"):
        assert capability in doc["capabilities"]
    assert "patient/ImagingStudy.rs" in doc["scopes_supported"]
    assert doc["associated_endpoints"] == [{"url": f"{sb.base}/dicomweb", "capabilities": ["smart-imaging-access"]}]


def test_v1_mode_advertises_and_grants_only_read_scopes() -> None:
    with running_sandbox(smart_versions="v1") as sandbox:
        doc = requests.get(f"{sandbox.fhir}/.well-known/smart-configuration", timeout=10).json()
        token = ehr_launch(sandbox, scope=f"{EHR_SCOPE} patient/ImagingStudy.read")
    assert "permission-v1" in doc["capabilities"] and "permission-v2" not in doc["capabilities"]
    assert not [s for s in doc["scopes_supported"] if s.endswith((".rs", ".r", ".s"))]
    assert "associated_endpoints" not in doc
    assert set(token["scope"].split()) == {"launch", "openid", "fhirUser", "offline_access",
                                           "patient/ImagingStudy.read"}


def test_authorize_accepts_post(sb: Sandbox) -> None:
    _iss, launch_id = launch(sb)
    verifier = secrets.token_urlsafe(48)
    resp = sb.http.post(f"{sb.base}/auth/authorize", allow_redirects=False, timeout=10, data={
        "response_type": "code", "client_id": PUBLIC, "redirect_uri": f"{APP}/callback", "scope": EHR_SCOPE,
        "state": "post-state", "aud": sb.fhir, "launch": launch_id,
        "code_challenge": create_s256_code_challenge(verifier), "code_challenge_method": "S256"})
    assert redirect_params(resp)["state"] == "post-state"
