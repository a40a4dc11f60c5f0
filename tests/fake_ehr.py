"""A scriptable misbehaving EHR on pytest-httpserver, for the launch refusal paths.

The sandbox is the well-behaved EHR; this one answers whatever a test tells it to, over real HTTP,
and records every request so tests can assert on what the app sent.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from joserfc import jwt
from joserfc.jwk import RSAKey
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

EHR_KEY = RSAKey.generate_key(2048, parameters={"kid": "ehr-1"}, private=True)
PATIENT = {
    "resourceType": "Patient", "id": "pat-1",
    "name": [{"use": "official", "given": ["Ada"], "family": "Lovelace"}],
    "birthDate": "1961-12-10", "gender": "female",
    "identifier": [{"system": "urn:oid:2.16.840.1.113883.3.7418.1.1", "value": "MRN-0001"}],
}


@dataclass
class FakeEhr:
    server: HTTPServer
    client_id: str = "imaging-timeline"
    key: RSAKey = field(default_factory=lambda: EHR_KEY)
    well_known: dict[str, Any] | None = None  # None: the default document
    token_status: int = 200
    token_body: Any = None  # None: a good token response; dict/str overrides
    token_extra: dict[str, Any] = field(default_factory=dict)
    token_headers: dict[str, str] = field(default_factory=dict)
    id_token_claims: dict[str, Any] = field(default_factory=dict)
    id_token_key: RSAKey | None = None
    id_token_forger: Any = None  # callable(claims) -> a hand-made id_token (forgery tests)
    patient_status: int = 200
    authorize_error: str | None = None
    authorizations: list[dict[str, str]] = field(default_factory=list)
    token_requests: list[Request] = field(default_factory=list)

    @property
    def iss(self) -> str:
        return self.server.url_for("/fhir")

    def install(self) -> FakeEhr:
        s = self.server
        s.expect_request("/fhir/.well-known/smart-configuration").respond_with_handler(self._well_known)
        s.expect_request("/fhir/metadata").respond_with_json({}, status=404)
        s.expect_request("/jwks").respond_with_handler(
            lambda r: Response(json.dumps({"keys": [self.key.as_dict(private=False)]}),
                               content_type="application/json"))
        s.expect_request("/authorize").respond_with_handler(self._authorize)
        s.expect_request("/token", method="POST").respond_with_handler(self._token)
        s.expect_request("/fhir/Patient/pat-1").respond_with_handler(self._patient)
        return self

    def default_well_known(self) -> dict[str, Any]:
        return {
            "issuer": self.iss, "jwks_uri": self.server.url_for("/jwks"),
            "authorization_endpoint": self.server.url_for("/authorize"),
            "token_endpoint": self.server.url_for("/token"),
            "capabilities": ["launch-ehr", "launch-standalone", "permission-v2", "sso-openid-connect"],
            "code_challenge_methods_supported": ["S256"],
        }

    def _well_known(self, request: Request) -> Response:
        doc = self.default_well_known() if self.well_known is None else self.well_known
        return Response(json.dumps(doc), content_type="application/json")

    def _authorize(self, request: Request) -> Response:
        args = dict(request.args)
        self.authorizations.append(args)
        params = {"state": args.get("state", "")}
        if self.authorize_error:
            params.update(error=self.authorize_error, error_description="The user said no")
        else:
            params["code"] = f"code-{len(self.authorizations)}"
        return Response(status=302, headers={"Location": f"{args['redirect_uri']}?{urlencode(params)}"})

    def id_token(self, **claims: Any) -> str:
        nonce = self.authorizations[-1].get("nonce") if self.authorizations else None
        now = int(time.time())
        payload = {"iss": self.iss, "aud": self.client_id, "sub": "dr-who", "iat": now, "exp": now + 300,
                   "fhirUser": "Practitioner/dr-who", **({"nonce": nonce} if nonce else {}), **claims}
        if self.id_token_forger is not None:
            return self.id_token_forger(payload)
        return jwt.encode({"alg": "RS256", "kid": "ehr-1"}, payload, self.id_token_key or self.key)

    def _token(self, request: Request) -> Response:
        self.token_requests.append(request)
        if isinstance(self.token_body, str):
            return Response(self.token_body, status=self.token_status, content_type="text/html",
                            headers=self.token_headers)
        body = self.token_body
        if body is None:
            scope = self.authorizations[-1].get("scope", "") if self.authorizations else ""
            body = {"access_token": "at-secret-123", "token_type": "Bearer", "expires_in": 300, "scope": scope,
                    "patient": "pat-1", "need_patient_banner": False, "refresh_token": "rt-secret-456"}
            if "openid" in scope.split():
                body["id_token"] = self.id_token(**self.id_token_claims)
            body.update(self.token_extra)
        return Response(json.dumps(body), status=self.token_status, content_type="application/json",
                        headers=self.token_headers)

    def _patient(self, request: Request) -> Response:
        if request.headers.get("Authorization") != "Bearer at-secret-123":
            return Response(json.dumps({"resourceType": "OperationOutcome"}), status=401)
        if self.patient_status != 200:
            return Response(json.dumps({"resourceType": "OperationOutcome"}), status=self.patient_status)
        return Response(json.dumps(PATIENT), content_type="application/fhir+json")
