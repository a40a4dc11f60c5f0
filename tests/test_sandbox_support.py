"""Helpers the sandbox tests share (no tests here): serving the sandbox and driving its launches.

The flows use authlib's requests client, as a real SMART app would; the "browser" is requests
with redirects off, so each hop can be inspected.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from authlib.integrations.requests_client import OAuth2Session
from flask import Flask
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey
from werkzeug.exceptions import NotFound
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from sandbox import SandboxClient, SandboxConfig, create_sandbox_app
from tests.servers import serve

APP = "http://app.example"
TODAY = date(2026, 6, 15)
PUBLIC = "public-app"
CONFIDENTIAL = "confidential-app"
NARROW = "narrow-app"  # may not read DiagnosticReport
ASYMMETRIC = "asymmetric-app"  # authenticates with private_key_jwt, like the real app
BACKEND = "backend"
SECRET = "s3cret-for-tests"
EHR_SCOPE = "launch openid fhirUser offline_access patient/Patient.rs patient/ImagingStudy.rs " \
            "patient/DiagnosticReport.rs patient/ServiceRequest.rs patient/Endpoint.rs"
BACKEND_KEY = RSAKey.generate_key(2048, parameters={"kid": "backend-rs384", "alg": "RS384"}, private=True)
BACKEND_EC_KEY = ECKey.generate_key("P-384", parameters={"kid": "backend-es384", "alg": "ES384"}, private=True)


def backend_jwks() -> dict[str, Any]:
    return {"keys": [BACKEND_KEY.as_dict(private=False), BACKEND_EC_KEY.as_dict(private=False)]}


def clients(jwks_uri: str | None = None) -> tuple[SandboxClient, ...]:
    backend = SandboxClient(BACKEND, token_endpoint_auth_method="private_key_jwt", grant_types=("client_credentials",),
                            jwks_uri=jwks_uri, jwks=None if jwks_uri else backend_jwks(),
                            scope="system/*.rs system/ImagingStudy.rs system/Patient.rs")
    return (
        SandboxClient(PUBLIC, (f"{APP}/callback",)),
        SandboxClient(CONFIDENTIAL, (f"{APP}/callback",), "client_secret_basic", client_secret=SECRET),
        SandboxClient(NARROW, (f"{APP}/callback",),
                      scope="launch openid fhirUser patient/Patient.rs patient/ImagingStudy.rs"),
        SandboxClient(ASYMMETRIC, (f"{APP}/callback",), "private_key_jwt", jwks=backend_jwks()),
        backend,
    )


class Clock:
    """A clock tests move by hand, so expiry needs no sleeping."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Sandbox:
    """A sandbox served over real HTTP at ``{origin}/sandbox``."""

    origin: str
    app: Flask
    clock: Clock
    http: requests.Session = field(default_factory=requests.Session)

    @property
    def base(self) -> str:
        return f"{self.origin}/sandbox"

    @property
    def fhir(self) -> str:
        return f"{self.base}/fhir"

    @property
    def outside(self) -> str:
        return f"{self.base}/outside/fhir"

    @property
    def dicomweb(self) -> str:
        return f"{self.base}/dicomweb"

    @property
    def token_url(self) -> str:
        return f"{self.base}/auth/token"

    @property
    def runtime(self):
        return self.app.extensions["sandbox"]

    def get(self, url: str, token: str | None = None, **kwargs: Any) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return self.http.get(url, headers=headers, timeout=10, allow_redirects=False, **kwargs)


@contextmanager
def running_sandbox(**options: Any) -> Iterator[Sandbox]:
    """Serve a sandbox (mounted at /sandbox like the demo) with the test clients."""
    clock = Clock()
    options.setdefault("clients", clients())
    options.setdefault("fault_timeout_s", 2.0)
    app = create_sandbox_app(SandboxConfig(app_launch_url=f"{APP}/launch", today=TODAY, **options), clock=clock)
    with serve(DispatcherMiddleware(NotFound(), {"/sandbox": app})) as origin:
        yield Sandbox(origin, app, clock)


def launch(sb: Sandbox, patient: str = "pat-amy", **params: str) -> tuple[str, str]:
    """Open the app from the chart: the (iss, launch) the EHR sends to the app."""
    resp = sb.get(f"{sb.base}/launch", params={"patient": patient, **params})
    assert resp.status_code == 302, resp.text
    query = parse_qs(urlsplit(resp.headers["Location"]).query)
    return query["iss"][0], query["launch"][0]


def oauth_session(client_id: str = PUBLIC, scope: str = EHR_SCOPE, **kwargs: Any) -> OAuth2Session:
    if client_id == CONFIDENTIAL:
        kwargs.setdefault("client_secret", SECRET)
        kwargs.setdefault("token_endpoint_auth_method", "client_secret_basic")
    else:
        kwargs.setdefault("token_endpoint_auth_method", "none")
    return OAuth2Session(client_id, scope=scope, redirect_uri=f"{APP}/callback", code_challenge_method="S256",
                         **kwargs)


def authorize(sb: Sandbox, session: OAuth2Session, **params: str) -> tuple[requests.Response, str]:
    """Send the browser to the authorize endpoint; (response, code_verifier)."""
    verifier = secrets.token_urlsafe(48)
    params.setdefault("aud", sb.fhir)
    url, _state = session.create_authorization_url(f"{sb.base}/auth/authorize", code_verifier=verifier, **params)
    return sb.get(url), verifier


def redirect_params(resp: requests.Response) -> dict[str, str]:
    assert resp.status_code == 302, resp.text
    location = resp.headers["Location"]
    assert location.startswith(f"{APP}/callback"), location
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def ehr_launch(sb: Sandbox, patient: str = "pat-amy", client_id: str = PUBLIC, scope: str = EHR_SCOPE,
               launch_params: dict[str, str] | None = None, **auth_params: str) -> dict[str, Any]:
    """A complete EHR launch; the token response."""
    _iss, launch_id = launch(sb, patient, **(launch_params or {}))
    session = oauth_session(client_id, scope)
    resp, verifier = authorize(sb, session, launch=launch_id, **auth_params)
    return session.fetch_token(sb.token_url, authorization_response=resp.headers["Location"],
                               code_verifier=verifier)


def client_assertion(sb: Sandbox, key: RSAKey | ECKey = BACKEND_KEY, alg: str = "RS384",
                     **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": BACKEND, "sub": BACKEND, "aud": sb.token_url, "exp": now + 240, "iat": now,
            "jti": str(uuid.uuid4()), **claims}
    body = {k: v for k, v in body.items() if v is not None}  # None: leave the claim out
    return jwt.encode({"alg": alg, "kid": key.kid, "typ": "JWT"}, body, key, algorithms=[alg])


def backend_token_request(sb: Sandbox, scope: str = "system/*.rs", assertion: str | None = None) -> requests.Response:
    return sb.http.post(sb.token_url, timeout=10, data={
        "grant_type": "client_credentials", "scope": scope,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion or client_assertion(sb)})


def backend_token(sb: Sandbox, scope: str = "system/*.rs") -> str:
    resp = backend_token_request(sb, scope)
    assert resp.status_code == 200, resp.text
    return resp.json()["access_token"]
