"""Archive credentials: each bound to one origin; SMART Backend Services tokens signed, cached, never sent elsewhere."""

from __future__ import annotations

import threading
import time
from urllib.parse import parse_qs

import pytest
import requests
from conftest import MRN_SYSTEM, OUTSIDE_SYSTEM
from joserfc import jwt
from joserfc.jwk import RSAKey
from werkzeug import Response

from app.archives.auth import AuthFactory, BasicAuth, BearerAuth, EhrAuth, SmartBackendAuth
from app.archives.config import ArchiveConfig, AuthConfig
from app.errors import ArchiveAuthError, ArchiveConfigError
from app.federation import Federation
from app.http import Deadline
from app.models import LaunchContext

KEY = RSAKey.generate_key(2048, parameters={"kid": "timeline-1"}, private=True)


def soon() -> Deadline:
    """Five seconds from now. Not a module constant: modules are imported at collection, so a
    deadline made then would already have passed after a few seconds of earlier tests."""
    return Deadline.after(5)


@pytest.mark.parametrize("credentials", [
    BasicAuth("pacs", "https://pacs.example.org/dicom-web", "u", "p"),
    BearerAuth("pacs", "https://pacs.example.org/dicom-web", "t"),
    EhrAuth("ehr", "https://pacs.example.org/fhir", "t"),
], ids=["basic", "bearer", "ehr"])
@pytest.mark.parametrize("url", [
    "https://evil.example.org/dicom-web/studies",
    "http://pacs.example.org/dicom-web/studies",
    "https://pacs.example.org:8443/dicom-web/studies",
], ids=["other-host", "other-scheme", "other-port"])
def test_credentials_refuse_any_other_origin(credentials, url):
    with pytest.raises(ArchiveAuthError, match=r"^refused to send credentials for https://pacs\.example\.org:443 to "):
        credentials.headers_for(url, soon())


def test_credentials_accept_any_path_on_their_origin():
    auth = BearerAuth("pacs", "https://pacs.example.org/dicom-web", "t")

    assert auth.headers_for("https://PACS.example.org:443/other/path", soon()) == {"Authorization": "Bearer t"}


def dicomweb(base: str, auth: AuthConfig) -> ArchiveConfig:
    return ArchiveConfig(id="pacs", name="PACS", kind="dicomweb", base_url=base, auth=auth,
                         identifier_system=MRN_SYSTEM, timeout_s=5)


def test_a_missing_secret_env_var_is_an_error_status_not_a_crash(httpserver, jane, ehr_token):
    archive = dicomweb(httpserver.url_for("/dicom-web"), AuthConfig(kind="bearer", token_env="PACS_TOKEN"))
    ctx = LaunchContext(iss="https://ehr.example.org/fhir", patient_id="pat-1", granted_scopes=frozenset())

    (status,) = Federation([archive], env={}).search(jane, ctx, ehr_token).archives

    assert (status.status, status.error) == ("error", "archive-config")
    assert status.reason == "environment variable PACS_TOKEN (auth.token_env) is not set"
    assert httpserver.log == []


def test_ehr_auth_to_another_origin_is_refused_before_any_request(httpserver, other_host, jane, ehr_token):
    archive = dicomweb(other_host.url_for("/dicom-web"), AuthConfig(kind="ehr"))
    ctx = LaunchContext(iss=httpserver.url_for("/fhir"), patient_id="pat-1", granted_scopes=frozenset())

    (status,) = Federation([archive]).search(jane, ctx, ehr_token).archives

    assert (status.status, status.error) == ("error", "archive-auth")
    assert status.reason.startswith('auth "ehr" refused: http://localhost:')
    assert other_host.log == []


def test_ehr_auth_on_the_ehr_origin_sends_the_clinicians_token(httpserver, jane, ehr_token):
    httpserver.expect_request("/dicom-web/studies").respond_with_json([])
    archive = dicomweb(httpserver.url_for("/dicom-web"), AuthConfig(kind="ehr"))
    ctx = LaunchContext(iss=httpserver.url_for("/fhir"), patient_id="pat-1", granted_scopes=frozenset())

    Federation([archive]).search(jane, ctx, ehr_token)

    assert httpserver.log[0][0].headers["Authorization"] == "Bearer ehr-token"


# --- SMART Backend Services ----------------------------------------------------------------------------


def outside(base: str, **auth) -> ArchiveConfig:
    return ArchiveConfig(id="outside", name="Outside", kind="fhir", base_url=base, identifier_system=OUTSIDE_SYSTEM,
                         auth=AuthConfig(kind="smart-backend", client_id="imaging-timeline-backend", **auth),
                         timeout_s=5)


def serve_token(server, expires_in: int = 300) -> None:
    server.expect_request("/auth/token", method="POST").respond_with_json(
        {"access_token": "backend-token", "token_type": "bearer", "expires_in": expires_in})


def form(request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(request.get_data(as_text=True)).items()}


def test_backend_services_assertion_follows_smart(httpserver):
    serve_token(httpserver)
    token_url = httpserver.url_for("/auth/token")
    auth = SmartBackendAuth("outside", httpserver.url_for("/fhir"), client_id="imaging-timeline-backend", key=KEY,
                            http=requests.Session(), scope="system/ImagingStudy.rs",
                            token_url=token_url)

    headers = auth.headers_for(httpserver.url_for("/fhir/ImagingStudy"), soon())

    assert headers == {"Authorization": "Bearer backend-token"}

    sent = form(httpserver.log[0][0])
    assert sent["grant_type"] == "client_credentials"
    assert sent["scope"] == "system/ImagingStudy.rs"
    assert sent["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    token = jwt.decode(sent["client_assertion"], KEY, algorithms=["RS384"])
    assert token.header == {"alg": "RS384", "kid": "timeline-1", "typ": "JWT"}
    claims = token.claims
    assert (claims["iss"], claims["sub"], claims["aud"]) == ("imaging-timeline-backend", "imaging-timeline-backend",
                                                            token_url)
    assert 0 < claims["exp"] - time.time() <= 300
    assert len(claims["jti"]) >= 16


def test_backend_token_is_cached_across_searches_and_sent_only_to_the_archive(httpserver, jane, ehr_token):
    serve_token(httpserver)
    httpserver.expect_request("/out/fhir/ImagingStudy").respond_with_json({"resourceType": "Bundle", "entry": []})
    archive = outside(httpserver.url_for("/out/fhir"), token_url=httpserver.url_for("/auth/token"))
    federation = Federation([archive], private_key=KEY, cache_ttl_s=0)
    ctx = LaunchContext(iss="https://ehr.example.org/fhir", patient_id="pat-1", granted_scopes=frozenset())

    for _ in range(2):
        (status,) = federation.search(jane, ctx, ehr_token).archives
        assert status.status == "ok"

    paths = [r.path for r, _ in httpserver.log]
    assert paths[0] == "/auth/token"
    assert paths.count("/auth/token") == 1  # cached across both searches and their parallel requests
    assert paths.count("/out/fhir/ImagingStudy") == 2
    assert "Authorization" not in httpserver.log[0][0].headers
    assert {r.headers["Authorization"] for r, _ in httpserver.log[1:]} == {"Bearer backend-token"}
    assert ehr_token.calls == 0


def test_an_expiring_backend_token_is_renewed_with_a_fresh_jti(httpserver):
    serve_token(httpserver, expires_in=30)  # inside the renewal margin: every use renews
    auth = SmartBackendAuth("outside", httpserver.url_for("/fhir"), client_id="c", key=KEY,
                            http=requests.Session(), scope="system/*.rs",
                            token_url=httpserver.url_for("/auth/token"))

    auth.token(soon())
    auth.token(soon())

    jtis = [jwt.decode(form(r)["client_assertion"], KEY, algorithms=["RS384"]).claims["jti"] for r, _ in httpserver.log]
    assert len(jtis) == 2 and jtis[0] != jtis[1]


def test_backend_token_is_fetched_once_under_concurrency(threaded_httpserver):
    threaded_httpserver.expect_request("/auth/token", method="POST").respond_with_handler(
        lambda request: (time.sleep(0.2), Response(
            '{"access_token": "t", "token_type": "Bearer", "expires_in": 300}', content_type="application/json"))[1])
    auth = SmartBackendAuth("outside", threaded_httpserver.url_for("/fhir"), client_id="c", key=KEY,
                            http=requests.Session(), scope="system/*.rs",
                            token_url=threaded_httpserver.url_for("/auth/token"))

    threads = [threading.Thread(target=auth.token, args=(soon(),)) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(threaded_httpserver.log) == 1


def test_the_token_endpoint_is_discovered_from_smart_configuration(httpserver, jane, ehr_token):
    httpserver.expect_request("/out/fhir/.well-known/smart-configuration").respond_with_json(
        {"token_endpoint": httpserver.url_for("/auth/token")})
    serve_token(httpserver)
    httpserver.expect_request("/out/fhir/ImagingStudy").respond_with_json({"resourceType": "Bundle", "entry": []})
    ctx = LaunchContext(iss="https://ehr.example.org/fhir", patient_id="pat-1", granted_scopes=frozenset())

    (status,) = Federation([outside(httpserver.url_for("/out/fhir"))], private_key=KEY.as_pem(private=True)
                           ).search(jane, ctx, ehr_token).archives

    assert status.status == "ok"
    assert [r.path for r, _ in httpserver.log][:2] == ["/out/fhir/.well-known/smart-configuration", "/auth/token"]
    assert "/out/fhir/ImagingStudy" in [r.path for r, _ in httpserver.log[2:]]


@pytest.mark.parametrize(("answer", "status_code", "reason"), [
    ({"error": "invalid_client", "error_description": "unknown key"}, 401,
     "token endpoint refused the backend client: invalid_client (unknown key)"),
    ({"access_token": "t", "token_type": "mac"}, 200, "token endpoint answered without a bearer access_token"),
    ("<html>", 502, "token endpoint refused the backend client: HTTP 502"),
], ids=["invalid-client", "not-bearer", "gateway-error"])
def test_a_token_endpoint_failure_is_an_auth_error_status(httpserver, jane, ehr_token, answer, status_code, reason):
    if isinstance(answer, dict):
        httpserver.expect_request("/auth/token").respond_with_json(answer, status=status_code)
    else:
        httpserver.expect_request("/auth/token").respond_with_data(answer, status=status_code)
    archive = outside(httpserver.url_for("/out/fhir"), token_url=httpserver.url_for("/auth/token"))
    ctx = LaunchContext(iss="https://ehr.example.org/fhir", patient_id="pat-1", granted_scopes=frozenset())

    (status,) = Federation([archive], private_key=KEY).search(jane, ctx, ehr_token).archives

    assert (status.status, status.error, status.reason) == ("error", "archive-auth", reason)
    assert [r.path for r, _ in httpserver.log] == ["/auth/token"]


def test_smart_backend_without_a_signing_key_is_a_config_error():
    factory = AuthFactory(requests.Session())

    with pytest.raises(ArchiveConfigError, match=r"^auth smart-backend needs the app's signing key"):
        factory.for_archive(outside("https://out.example.org/fhir"), iss="https://ehr.example.org/fhir",
                            ehr_token=lambda: "t")
