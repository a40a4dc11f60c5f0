"""Archive credentials (none, basic, bearer, the EHR token, SMART Backend Services), each bound to one origin.

A token is only ever sent to the origin it was issued for: every request asks its credentials for
headers *for that URL*, and credentials refuse any other origin (scheme, host and port).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import requests
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from ..errors import ArchiveAuthError, ArchiveConfigError, ArchiveTimeout, ArchiveUnavailable, ResponseTooLarge
from ..http import Deadline, HttpAnswer, fetch, origin, same_origin
from .config import ArchiveConfig

log = logging.getLogger(__name__)

# SMART Backend Services (SMART App Launch 2.x, "Backend Services"): the client assertion SHALL
# expire within five minutes; jti must be unique per assertion.
ASSERTION_LIFETIME_S = 300
TOKEN_MARGIN_S = 60  # renew cached backend tokens this long before they expire
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_TOKEN_BYTES = 256 * 1024


class EhrTokenProvider(Protocol):
    """The clinician's SMART access token for the launch `iss` (refreshed by the provider if needed)."""

    def access_token(self) -> str: ...


class Credentials(Protocol):
    """Headers that authenticate one request; raises ArchiveAuthError for a URL they are not bound to."""

    def headers_for(self, url: str, deadline: Deadline) -> dict[str, str]: ...


def _show(url: str) -> str:
    scheme, host, port = origin(url)
    return f"{scheme}://{host}:{port}"


class NoAuth:
    """Anonymous access (a sandbox or an archive behind its own network controls)."""

    def headers_for(self, url: str, deadline: Deadline) -> dict[str, str]:
        return {}


class _OriginBound:
    """Credentials usable for one origin only."""

    def __init__(self, archive_id: str, base_url: str) -> None:
        self.archive_id, self.base_url = archive_id, base_url

    def _check(self, url: str) -> None:
        if not same_origin(url, self.base_url):
            log.warning("archive %s: refused to send credentials to %s", self.archive_id, _show(url))
            raise ArchiveAuthError(f"refused to send credentials for {_show(self.base_url)} to {_show(url)}")


class BasicAuth(_OriginBound):
    """HTTP Basic with a password read from an environment variable."""

    def __init__(self, archive_id: str, base_url: str, username: str, password: str) -> None:
        super().__init__(archive_id, base_url)
        self._value = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")

    def headers_for(self, url: str, deadline: Deadline) -> dict[str, str]:
        self._check(url)
        return {"Authorization": self._value}


class BearerAuth(_OriginBound):
    """A static bearer token read from an environment variable."""

    def __init__(self, archive_id: str, base_url: str, token: str) -> None:
        super().__init__(archive_id, base_url)
        self._token = token

    def headers_for(self, url: str, deadline: Deadline) -> dict[str, str]:
        self._check(url)
        return {"Authorization": f"Bearer {self._token}"}


class EhrAuth(_OriginBound):
    """The clinician's SMART token: valid only at the launch `iss` origin (SMART App Launch: `aud` = iss)."""

    def __init__(self, archive_id: str, iss: str, token: str) -> None:
        super().__init__(archive_id, iss)
        self._token = token

    def headers_for(self, url: str, deadline: Deadline) -> dict[str, str]:
        self._check(url)
        return {"Authorization": f"Bearer {self._token}"}


SigningKey = RSAKey | ECKey


def signing_key(key: SigningKey | str | bytes) -> SigningKey:
    """A joserfc private key from a key object or a PEM (RSA, else EC)."""
    if isinstance(key, RSAKey | ECKey):
        return key
    try:
        return RSAKey.import_key(key)
    except ValueError:
        return ECKey.import_key(key)


class SmartBackendAuth(_OriginBound):
    """SMART Backend Services: client_credentials with a private_key_jwt assertion; token cached, thread-safe.

    Hand-written on purpose (joserfc signs): the token request goes through app.http.fetch, so it
    has a size cap, a deadline and no redirects, which authlib's OAuth2Session does not enforce.
    """

    def __init__(self, archive_id: str, base_url: str, *, client_id: str, key: SigningKey | str | bytes,
                 http: requests.Session, scope: str, token_url: str | None = None, timeout: float = 10.0,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(archive_id, base_url)
        self.client_id, self.scope, self.http, self.timeout, self.clock = client_id, scope, http, timeout, clock
        self.key = signing_key(key)
        self.alg = "RS384" if isinstance(self.key, RSAKey) else "ES384"
        self._token_url = token_url
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = threading.Lock()

    def headers_for(self, url: str, deadline: Deadline) -> dict[str, str]:
        self._check(url)
        return {"Authorization": f"Bearer {self.token(deadline)}"}

    def token(self, deadline: Deadline) -> str:
        with self._lock:
            if self._token is None or self.clock() >= self._expires_at - TOKEN_MARGIN_S:
                self._token, self._expires_at = self._fetch(deadline)
            return self._token

    def assertion(self, token_url: str) -> str:
        """The signed client assertion (RS384/ES384, kid, unique jti, exp <= 5 min)."""
        now = int(self.clock())
        claims = {"iss": self.client_id, "sub": self.client_id, "aud": token_url, "iat": now,
                  "exp": now + ASSERTION_LIFETIME_S, "jti": secrets.token_urlsafe(24)}
        header = {"alg": self.alg, "typ": "JWT"}
        if self.key.kid:
            header["kid"] = self.key.kid
        return jwt.encode(header, claims, self.key, algorithms=[self.alg])

    def _fetch(self, deadline: Deadline) -> tuple[str, float]:
        token_url = self._token_url or self._discover(deadline)
        form = {"grant_type": "client_credentials", "scope": self.scope,
                "client_assertion_type": JWT_BEARER, "client_assertion": self.assertion(token_url)}
        answer = self._call("POST", token_url, deadline, data=form)
        body = _json_object(answer.body)
        if answer.status != 200:
            code = body.get("error")
            error = code if isinstance(code, str) else f"HTTP {answer.status}"
            detail = body.get("error_description")
            raise ArchiveAuthError(f"token endpoint refused the backend client: {error[:80]}"
                                   + (f" ({detail[:160]})" if isinstance(detail, str) else ""))
        token, expires_in = body.get("access_token"), body.get("expires_in", 300)
        if not isinstance(token, str) or not token or str(body.get("token_type", "")).lower() != "bearer":
            raise ArchiveAuthError("token endpoint answered without a bearer access_token")
        if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
            expires_in = 300
        log.info("archive %s: backend token obtained (expires in %s s)", self.archive_id, expires_in)
        return token, self.clock() + float(expires_in)

    def _discover(self, deadline: Deadline) -> str:
        # SMART App Launch 2.x §"SMART configuration": token_endpoint from /.well-known/smart-configuration.
        url = f"{self.base_url.rstrip('/')}/.well-known/smart-configuration"
        answer = self._call("GET", url, deadline)
        endpoint = _json_object(answer.body).get("token_endpoint") if answer.status == 200 else None
        if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
            raise ArchiveAuthError("no token_endpoint in the archive's .well-known/smart-configuration; "
                                   "set auth.token_url")
        self._token_url = endpoint
        return endpoint

    def _call(self, method: str, url: str, deadline: Deadline, data: Mapping[str, str] | None = None) -> HttpAnswer:
        try:
            return fetch(self.http, method, url, data=data, headers={"Accept": "application/json"},
                         deadline=deadline, timeout=self.timeout, max_bytes=MAX_TOKEN_BYTES)
        except ResponseTooLarge as exc:
            raise ArchiveAuthError(f"token endpoint {exc.message}") from exc
        except requests.Timeout as exc:
            raise ArchiveTimeout("token endpoint did not answer in time") from exc
        except requests.RequestException as exc:
            raise ArchiveUnavailable(f"token endpoint unreachable ({type(exc).__name__})") from exc


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


class AuthFactory:
    """Builds each archive's credentials per search; keeps backend-services tokens across searches."""

    def __init__(self, http: requests.Session, *, private_key: SigningKey | str | bytes | None = None,
                 env: Mapping[str, str] | None = None, clock: Callable[[], float] = time.time) -> None:
        self.http, self.private_key, self.clock = http, private_key, clock
        self.env = os.environ if env is None else env
        self._backend: dict[str, SmartBackendAuth] = {}
        self._lock = threading.Lock()

    def for_archive(self, archive: ArchiveConfig, *, iss: str, ehr_token: Callable[[], str]) -> Credentials:
        """Credentials for `archive` in a launch from `iss`; ArchiveConfigError/ArchiveAuthError if unusable."""
        auth, base = archive.auth, archive.resolved_base(iss)
        if auth.kind == "none":
            return NoAuth()
        if auth.kind == "basic":
            return BasicAuth(archive.id, base, auth.username or "", self._secret(auth.password_env, "password_env"))
        if auth.kind == "bearer":
            return BearerAuth(archive.id, base, self._secret(auth.token_env, "token_env"))
        if auth.kind == "ehr":
            if not same_origin(base, iss):
                raise ArchiveAuthError(f'auth "ehr" refused: {_show(base)} is not the EHR\'s origin '
                                       f"({_show(iss)}); the clinician's token only goes to the EHR")
            return EhrAuth(archive.id, iss, ehr_token())
        return self._backend_for(archive)

    def _secret(self, env_name: str | None, key: str) -> str:
        value = self.env.get(env_name or "")
        if not value:
            raise ArchiveConfigError(f"environment variable {env_name} (auth.{key}) is not set")
        return value

    def _backend_for(self, archive: ArchiveConfig) -> SmartBackendAuth:
        if self.private_key is None:
            raise ArchiveConfigError("auth smart-backend needs the app's signing key, and none is configured")
        with self._lock:
            cached = self._backend.get(archive.id)
            if cached is None:
                cached = SmartBackendAuth(
                    archive.id, archive.base_url, client_id=archive.auth.client_id or "", key=self.private_key,
                    http=self.http, scope=archive.auth.scope, token_url=archive.auth.token_url,
                    timeout=archive.timeout_s, clock=self.clock)
                self._backend[archive.id] = cached
            return cached
