"""The sandbox authorization server: authlib grants plus the SMART rules, and the /auth routes.

* Authorization code + PKCE (S256 only, required for every client; SMART App Launch 2.x
  "Authorization code flow") + OpenID Connect ``id_token`` (RS256, ``fhirUser``).
* Refresh tokens (rotated on use), issued whenever the client may use the refresh_token grant.
* Client credentials with private_key_jwt only (SMART Backend Services), ``system/`` scopes only.

An EHR launch (``launch`` parameter) is authorised without a form: the clinician is already in
the chart. Without ``launch`` (a standalone launch) a patient picker stands in for login.
"""

from __future__ import annotations

import logging
import secrets

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import (
    AuthorizationCodeGrant,
    ClientCredentialsGrant,
    InvalidRequestError,
    InvalidScopeError,
    RefreshTokenGrant,
)
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import OpenIDCode
from flask import Blueprint, Flask, current_app, jsonify, render_template, request, url_for

from .client_auth import PrivateKeyJwt
from .data import PRACTITIONER_ID
from .runtime import SandboxRuntime, fhir_base, runtime
from .store import AuthorizationCode, GrantUser, Token

log = logging.getLogger(__name__)

bp = Blueprint("auth", __name__, url_prefix="/auth")
AUTH_METHODS = ["none", "client_secret_basic", "private_key_jwt"]


class SmartCodeChallenge(CodeChallenge):
    """PKCE is required of every client and only S256 is accepted (SMART App Launch 2.x)."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"

    def validate_code_challenge(self, grant, redirect_uri):
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("Missing 'code_challenge': PKCE with S256 is required.")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("'code_challenge_method' must be S256; plain is not accepted.")
        super().validate_code_challenge(grant, redirect_uri)


class SmartLaunchChecks:
    """`state`, `aud` and `launch` as SMART App Launch 2.x section "Obtain authorization code" asks."""

    def __call__(self, grant) -> None:
        grant.register_hook("after_validate_authorization_request_payload", self.validate)

    def validate(self, grant, _result) -> None:
        rt = runtime()
        data = grant.request.payload.data
        if not data.get("state"):
            raise InvalidRequestError("Missing 'state'.")
        aud = data.get("aud")
        if not aud:
            raise InvalidRequestError("Missing 'aud': send the FHIR base URL of this server.")
        if aud.rstrip("/") != fhir_base():
            raise InvalidRequestError("'aud' is not the FHIR base URL of this server.")
        scopes = (data.get("scope") or "").split()
        launch = data.get("launch")
        if launch:
            if "launch" not in scopes:
                raise InvalidScopeError("An EHR launch needs the 'launch' scope.")
            if rt.store.launch(launch, rt.config.launch_lifetime_s) is None:
                raise InvalidRequestError("The 'launch' value is unknown, already used or expired.")
        elif "launch" in scopes:
            raise InvalidRequestError("The 'launch' scope needs the 'launch' parameter of an EHR launch.")


class SmartOpenIDCode(OpenIDCode):
    """id_token signed RS256 by the sandbox key; iss is the FHIR base, fhirUser the Practitioner."""

    def exists_nonce(self, nonce, request) -> bool:
        return runtime().store.nonce_used(request.payload.client_id, nonce)

    def resolve_client_private_key(self, client):
        return runtime().id_token_key

    def get_client_algorithm(self, client) -> str:
        return "RS256"

    def get_encode_header(self, client) -> dict[str, str]:
        return {"alg": "RS256", "typ": "JWT", "kid": runtime().id_token_key.kid or ""}

    def get_client_claims(self, client) -> dict[str, str]:
        return {"iss": fhir_base(), "aud": client.get_client_id()}

    def generate_user_info(self, user: GrantUser, scope: str) -> dict[str, str]:
        info = {"sub": user.practitioner_id}
        if {"fhirUser", "profile"} & set(scope.split()):
            info["fhirUser"] = f"{fhir_base()}/Practitioner/{user.practitioner_id}"
        return info


class SmartTokenContext:
    """Adds the launch context to token responses (SMART App Launch 2.x "Launch context arrives")."""

    def __call__(self, grant) -> None:
        grant.register_hook("after_create_token_response", self.add_context)

    def add_context(self, grant, response) -> None:
        _status, token, _headers = response
        user = grant.request.user
        if not isinstance(user, GrantUser) or not isinstance(token, dict):
            return
        scopes = set(token.get("scope", "").split())
        if user.patient_id and scopes & {"launch", "launch/patient"}:
            token["patient"] = user.patient_id
        if user.encounter_id and scopes & {"launch", "launch/encounter"}:
            token["encounter"] = user.encounter_id
        token["need_patient_banner"] = user.need_patient_banner
        if user.style:
            token["smart_style_url"] = url_for("chart.smart_style", _external=True)
        if user.intent:
            token["intent"] = user.intent
        if user.fhir_context:
            token["fhirContext"] = [{"reference": ref} for ref in user.fhir_context]
        if user.tenant:
            token["tenant"] = user.tenant


class SmartAuthorizationCodeGrant(AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS

    def save_authorization_code(self, code, request) -> None:
        rt = runtime()
        data = request.payload.data
        rt.store.add_code(AuthorizationCode(
            code=code, client_id=request.client.get_client_id(), redirect_uri=request.payload.redirect_uri,
            scope=request.scope, user=request.user, code_challenge=data["code_challenge"],
            code_challenge_method=data["code_challenge_method"],
            expires_at=rt.clock() + rt.config.code_lifetime_s, nonce=data.get("nonce")))

    def query_authorization_code(self, code, client):
        return runtime().store.code(code, client.get_client_id())

    def delete_authorization_code(self, authorization_code) -> None:
        runtime().store.delete_code(authorization_code.code)

    def authenticate_user(self, authorization_code) -> GrantUser:
        return authorization_code.user


class SmartRefreshTokenGrant(RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True  # rotate: the old refresh token stops working

    def authenticate_refresh_token(self, refresh_token):
        return runtime().store.refresh_token(refresh_token)

    def authenticate_user(self, refresh_token) -> GrantUser | None:
        return refresh_token.user

    def revoke_old_credential(self, refresh_token) -> None:
        runtime().store.revoke_refresh(refresh_token)


class BackendServicesGrant(ClientCredentialsGrant):
    """SMART Backend Services: private_key_jwt only, system/ scopes only."""

    TOKEN_ENDPOINT_AUTH_METHODS = ["private_key_jwt"]

    def validate_token_request(self) -> None:
        super().validate_token_request()
        scopes = (self.request.payload.scope or "").split()
        if not scopes:
            raise InvalidScopeError("Backend services must request system/ scopes.")
        if any(not s.startswith("system/") for s in scopes):
            raise InvalidScopeError("Backend services may only request system/ scopes.")


def _save_token(token: dict, request) -> None:
    rt = runtime()
    now = rt.clock()
    refresh = token.get("refresh_token")
    issued = token["access_token"]
    rt.store.add_token(Token(
        issued, client_id=request.client.get_client_id(),
        scope=token.get("scope", ""), grant_type=request.payload.grant_type or "",
        issued_at=now, expires_in=int(token["expires_in"]), clock=rt.clock,
        user=request.user if isinstance(request.user, GrantUser) else None,
        refresh_token=refresh, refresh_expires_at=now + rt.config.refresh_token_lifetime_s if refresh else None))


def _random_token(**_kwargs) -> str:
    return secrets.token_urlsafe(32)


def init_app(app: Flask, rt: SandboxRuntime) -> AuthorizationServer:
    """Build the authlib server for `app` and register the /auth routes."""
    server = AuthorizationServer()
    server.init_app(app, query_client=rt.query_client, save_token=_save_token)
    server.register_token_generator("default", BearerTokenGenerator(
        _random_token, _random_token, rt.config.access_token_lifetime_s))
    server.register_client_auth_method("private_key_jwt", PrivateKeyJwt())
    server.register_grant(SmartAuthorizationCodeGrant, [
        SmartCodeChallenge(required=True), SmartOpenIDCode(require_nonce=False), SmartLaunchChecks(),
        SmartTokenContext()])
    server.register_grant(SmartRefreshTokenGrant, [SmartTokenContext()])
    server.register_grant(BackendServicesGrant)
    app.extensions["sandbox_oauth"] = server
    app.register_blueprint(bp)
    return server


def _server() -> AuthorizationServer:
    return current_app.extensions["sandbox_oauth"]


def _refuse(error: OAuth2Error):
    """Redirect the error to a registered redirect_uri (RFC 6749 4.1.2.1), else show a 400 page."""
    if error.redirect_uri:
        return _server().handle_error_response(None, error)
    return render_template("sandbox/error.html", status=400, title="Authorization request refused",
                           message=error.description or error.error), 400


@bp.route("/authorize", methods=["GET", "POST"])
def authorize():
    """Authorization endpoint (GET, and POST for SMART `authorize-post`)."""
    if request.method == "POST" and "picker_nonce" in request.form:
        return _picker_decision()
    server, rt = _server(), runtime()
    try:
        grant = server.get_consent_grant(end_user=None)
    except OAuth2Error as error:
        return _refuse(error)
    launch_id = grant.request.payload.data.get("launch")
    if launch_id:  # EHR launch: the clinician is already signed in to the chart
        launch = rt.store.launch(launch_id, rt.config.launch_lifetime_s)
        user = GrantUser.from_launch(launch, int(rt.clock())) if launch else None
        return server.create_authorization_response(grant_user=user, grant=grant)
    params = {k: v for k, v in request.values.items() if k != "picker_nonce"}
    return render_template("sandbox/picker.html", patients=rt.data.patients, params=params,
                           nonce=rt.store.new_picker(grant.client.get_client_id()),
                           client_id=grant.client.get_client_id(),
                           scopes=(grant.request.scope or "").split())


def _picker_decision():
    """The standalone-launch patient picker was submitted: approve with a patient, or deny."""
    server, rt = _server(), runtime()
    if not rt.store.use_picker(request.form["picker_nonce"], request.form.get("client_id", ""),
                               rt.config.launch_lifetime_s):
        return render_template("sandbox/error.html", status=400, title="This sign-in form has expired",
                               message="Start the launch again from the app."), 400
    try:
        grant = server.get_consent_grant(end_user=None)
    except OAuth2Error as error:
        return _refuse(error)
    if request.form.get("decision") != "approve":
        return server.create_authorization_response(grant_user=None, grant=grant)
    patient = rt.data.patient(request.form.get("patient", ""))
    if patient is None:
        return render_template("sandbox/error.html", status=400, title="No patient chosen",
                               message="Choose a patient, then press Approve."), 400
    user = GrantUser(PRACTITIONER_ID, patient.id, need_patient_banner=True, auth_time=int(rt.clock()))
    return server.create_authorization_response(grant_user=user, grant=grant)


@bp.post("/token")
def token():
    """Token endpoint: RFC 6749 JSON answers and errors."""
    disturbed = runtime().disturb("auth")
    return disturbed or _server().create_token_response()


@bp.get("/jwks")
def jwks():
    """The public key that verifies id_tokens."""
    key = runtime().id_token_key
    return jsonify({"keys": [{**key.as_dict(private=False), "alg": "RS256", "use": "sig"}]})
