"""In-memory, thread-safe storage of launches, authorization codes, tokens and used assertion ids."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from authlib.oauth2.rfc6749 import ClientMixin, TokenMixin
from authlib.oidc.core import AuthorizationCodeMixin

from .config import SandboxClient


@dataclass(frozen=True, slots=True)
class LaunchRecord:
    """What the EHR stored when the clinician opened the app (SMART EHR launch `launch` id)."""

    id: str
    patient_id: str
    practitioner_id: str
    created_at: float
    encounter_id: str | None = None
    need_patient_banner: bool = True
    style: bool = False
    intent: str | None = None
    fhir_context: tuple[str, ...] = ()
    tenant: str | None = None


@dataclass(frozen=True, slots=True)
class GrantUser:
    """The user who authorised the app, and the launch context the token response carries."""

    practitioner_id: str
    patient_id: str | None = None
    encounter_id: str | None = None
    need_patient_banner: bool = True
    style: bool = False
    intent: str | None = None
    fhir_context: tuple[str, ...] = ()
    tenant: str | None = None
    launch_id: str | None = None
    auth_time: int = 0

    def get_user_id(self) -> str:
        return self.practitioner_id

    @classmethod
    def from_launch(cls, launch: LaunchRecord, auth_time: int) -> GrantUser:
        return cls(launch.practitioner_id, launch.patient_id, launch.encounter_id, launch.need_patient_banner,
                   launch.style, launch.intent, launch.fhir_context, launch.tenant, launch.id, auth_time)


class Client(ClientMixin):
    """authlib's view of a SandboxClient; grants requested ∩ allowed ∩ supported scopes."""

    def __init__(self, registration: SandboxClient, supported: tuple[str, ...]) -> None:
        self.registration = registration
        self.client_id = registration.client_id
        allowed = set(registration.scope.split()) if registration.scope is not None else set(supported)
        self._grantable = allowed & set(supported)

    @property
    def jwks(self):
        return self.registration.jwks

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> None:
        # SMART App Launch requires redirect_uri on every authorize request: no default.
        return None

    def get_allowed_scope(self, scope: str | None) -> str | None:
        granted = [s for s in dict.fromkeys((scope or "").split()) if s in self._grantable]
        return " ".join(granted) if granted else None

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.registration.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        expected = self.registration.client_secret
        if not expected:
            return False
        return secrets.compare_digest(expected.encode(), client_secret.encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if endpoint == "token":
            return method == self.registration.token_endpoint_auth_method
        return True

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.registration.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.registration.grant_types


@dataclass(slots=True)
class AuthorizationCode(AuthorizationCodeMixin):
    """One issued authorization code, bound to client, redirect_uri and PKCE challenge."""

    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user: GrantUser
    code_challenge: str
    code_challenge_method: str
    expires_at: float
    nonce: str | None = None

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.user.auth_time

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> None:
        return None


@dataclass(slots=True)
class Token(TokenMixin):
    """One issued access token (and its refresh token, if any)."""

    access_token: str
    client_id: str
    scope: str
    grant_type: str
    issued_at: float
    expires_in: int
    clock: Callable[[], float]
    user: GrantUser | None = None
    refresh_token: str | None = None
    refresh_expires_at: float | None = None
    revoked: bool = False
    refresh_revoked: bool = False

    def check_client(self, client: Client) -> bool:
        return self.client_id == client.get_client_id()

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return self.expires_in

    def is_expired(self) -> bool:
        return self.clock() >= self.issued_at + self.expires_in

    def is_revoked(self) -> bool:
        return self.revoked

    def get_user(self) -> GrantUser | None:
        return self.user

    @property
    def is_backend(self) -> bool:
        return self.grant_type == "client_credentials"


@dataclass
class Store:
    """Everything the auth server remembers; every method takes the one lock."""

    clock: Callable[[], float]
    launches: dict[str, LaunchRecord] = field(default_factory=dict)
    used_launches: set[str] = field(default_factory=set)
    codes: dict[str, AuthorizationCode] = field(default_factory=dict)
    used_nonces: set[tuple[str, str]] = field(default_factory=set)
    tokens: dict[str, Token] = field(default_factory=dict)
    refresh: dict[str, Token] = field(default_factory=dict)
    jtis: dict[tuple[str, str], float] = field(default_factory=dict)
    pickers: dict[str, tuple[str, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add_launch(self, launch: LaunchRecord) -> None:
        with self._lock:
            self.launches[launch.id] = launch

    def launch(self, launch_id: str, lifetime_s: float) -> LaunchRecord | None:
        """The launch if it exists, is unused and younger than `lifetime_s`."""
        with self._lock:
            rec = self.launches.get(launch_id)
            if rec is None or launch_id in self.used_launches or self.clock() > rec.created_at + lifetime_s:
                return None
            return rec

    def add_code(self, code: AuthorizationCode) -> None:
        with self._lock:
            self.codes[code.code] = code
            if code.user.launch_id:
                self.used_launches.add(code.user.launch_id)
            if code.nonce:
                self.used_nonces.add((code.client_id, code.nonce))

    def code(self, code: str, client_id: str) -> AuthorizationCode | None:
        with self._lock:
            found = self.codes.get(code)
            if found is None or found.client_id != client_id or self.clock() > found.expires_at:
                return None
            return found

    def delete_code(self, code: str) -> None:
        with self._lock:
            self.codes.pop(code, None)

    def nonce_used(self, client_id: str, nonce: str) -> bool:
        with self._lock:
            return (client_id, nonce) in self.used_nonces

    def add_token(self, token: Token) -> None:
        with self._lock:
            self.tokens[token.access_token] = token
            if token.refresh_token:
                self.refresh[token.refresh_token] = token

    def token(self, access_token: str) -> Token | None:
        with self._lock:
            return self.tokens.get(access_token)

    def refresh_token(self, refresh_token: str) -> Token | None:
        """The token a refresh token belongs to, if neither revoked nor expired."""
        with self._lock:
            token = self.refresh.get(refresh_token)
            if token is None or token.refresh_revoked:
                return None
            if token.refresh_expires_at is not None and self.clock() > token.refresh_expires_at:
                return None
            return token

    def revoke_refresh(self, token: Token) -> None:
        with self._lock:
            token.refresh_revoked = True

    def use_jti(self, client_id: str, jti: str, exp: float) -> bool:
        """Record an assertion id; False if it was seen before (replay)."""
        now = self.clock()
        with self._lock:
            for key in [k for k, until in self.jtis.items() if until < now - 600]:
                del self.jtis[key]
            if (client_id, jti) in self.jtis:
                return False
            self.jtis[(client_id, jti)] = exp
            return True

    def new_picker(self, client_id: str) -> str:
        nonce = secrets.token_urlsafe(24)
        with self._lock:
            self.pickers[nonce] = (client_id, self.clock())
        return nonce

    def use_picker(self, nonce: str, client_id: str, lifetime_s: float) -> bool:
        with self._lock:
            found = self.pickers.pop(nonce, None)
        return found is not None and found[0] == client_id and self.clock() <= found[1] + lifetime_s
