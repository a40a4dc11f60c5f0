"""SMART App Launch 2.x client mechanics: discovery, authorize URL, code exchange, id_token, refresh.

authlib does the OAuth 2 work (PKCE S256, client authentication, refresh); joserfc verifies the
id_token. This module only adds what SMART specifies on top and turns every failure into an
error an integrator can act on.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from authlib.common.security import generate_token
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.requests_client import OAuth2Session
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from .errors import DiscoveryError, IdTokenError, TokenError
from .http import AnswerTooLarge, PolicySession, RedirectRefused
from .keys import AppKeys, FreshPrivateKeyJWT, as_key_set
from .registration import IssuerRegistration

log = logging.getLogger(__name__)

OAUTH_URIS_EXT = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
MAX_DOC_BYTES = 1024 * 1024
MAX_CACHED = 256  # discovery documents / JWKS kept at once


@dataclass(frozen=True)
class SmartConfiguration:
    """The parts of an EHR's `.well-known/smart-configuration` the app uses."""

    iss: str
    authorization_endpoint: str
    token_endpoint: str
    issuer: str | None = None
    jwks_uri: str | None = None
    capabilities: frozenset[str] = frozenset()
    scopes_supported: tuple[str, ...] = ()
    associated_endpoints: tuple[dict[str, Any], ...] = ()
    source: str = "smart-configuration"  # or "capability-statement"
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def scope_version(self) -> int:
        """2 for SMART v2 scopes (`.rs`), 1 for servers that only advertise v1 (`.read`)."""
        if "permission-v2" in self.capabilities:
            return 2
        if "permission-v1" in self.capabilities:
            return 1
        scopes = self.scopes_supported
        if any(s.endswith(".read") for s in scopes) and not any("." in s and not s.endswith(".read")
                                                               for s in scopes if "/" in s):
            return 1
        return 2


def _is_web_url(url: Any) -> bool:
    if not isinstance(url, str):
        return False
    parts = urlsplit(url)
    loopback = parts.hostname in {"127.0.0.1", "localhost", "::1"}
    return bool(parts.hostname) and (parts.scheme == "https" or (parts.scheme == "http" and loopback))


def get_json(http: requests.Session, url: str, *, timeout: float, accept: str = "application/json",
             max_bytes: int = MAX_DOC_BYTES, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """GET a JSON document with a timeout and a size cap: (status, parsed body or None)."""
    resp = http.get(url, headers={"Accept": accept, **(headers or {})}, timeout=timeout, stream=True,
                    allow_redirects=False)
    try:
        body = resp.raw.read(max_bytes + 1, decode_content=True)
    finally:
        resp.close()
    if len(body) > max_bytes:
        raise ValueError(f"answer larger than {max_bytes // 1024} kB")
    if not body:
        return resp.status_code, None
    try:
        return resp.status_code, json.loads(body)
    except ValueError:
        return resp.status_code, None


class Discovery:
    """Finds an EHR's OAuth endpoints; caches each answer for `ttl_s`."""

    def __init__(self, http: requests.Session, *, timeout: float = 10.0, ttl_s: float = 3600,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.http, self.timeout, self.ttl_s, self.clock = http, timeout, ttl_s, clock
        self._cache: dict[str, tuple[float, SmartConfiguration]] = {}
        self._lock = threading.Lock()

    def __call__(self, iss: str) -> SmartConfiguration:
        with self._lock:
            hit = self._cache.get(iss)
            if hit and hit[0] > self.clock():
                return hit[1]
        config = self._discover(iss)
        with self._lock:
            now = self.clock()
            # Bounded: prefix-registered issuers (the public launcher) put a new iss in every launch.
            for stale in [k for k, (until, _) in self._cache.items() if until <= now]:
                del self._cache[stale]
            while len(self._cache) >= MAX_CACHED:
                del self._cache[next(iter(self._cache))]  # the oldest entry
            self._cache[iss] = (now + self.ttl_s, config)
        return config

    def _discover(self, iss: str) -> SmartConfiguration:
        base = iss.rstrip("/")
        problems = []
        # SMART App Launch 2.x §"SMART configuration": /.well-known/smart-configuration is primary.
        try:
            status, doc = get_json(self.http, f"{base}/.well-known/smart-configuration", timeout=self.timeout)
        except (requests.RequestException, ValueError) as exc:
            status, doc = None, None
            problems.append(f"{base}/.well-known/smart-configuration could not be read ({type(exc).__name__})")
        if status == 200 and isinstance(doc, dict):
            if _is_web_url(doc.get("authorization_endpoint")) and _is_web_url(doc.get("token_endpoint")):
                return _from_well_known(iss, doc)
            problems.append("its .well-known/smart-configuration has no valid authorization_endpoint "
                            "and token_endpoint")
        elif status is not None:
            problems.append(f".well-known/smart-configuration answered HTTP {status}"
                            + ("" if status != 200 else " without a JSON object"))
        # Fallback: the CapabilityStatement's oauth-uris extension (SMART 1.0, still common).
        try:
            status, doc = get_json(self.http, f"{base}/metadata", timeout=self.timeout,
                                   accept="application/fhir+json")
        except (requests.RequestException, ValueError) as exc:
            status, doc = None, None
            problems.append(f"{base}/metadata could not be read ({type(exc).__name__})")
        if status == 200 and isinstance(doc, dict):
            uris = _oauth_uris(doc)
            if _is_web_url(uris.get("authorize")) and _is_web_url(uris.get("token")):
                return SmartConfiguration(iss=iss, authorization_endpoint=uris["authorize"],
                                          token_endpoint=uris["token"], source="capability-statement", raw=doc)
            problems.append("its CapabilityStatement has no oauth-uris authorize and token URLs")
        elif status is not None:
            problems.append(f"/metadata answered HTTP {status}")
        raise DiscoveryError(
            f"Could not find the sign-in endpoints of the EHR at {iss}: " + "; ".join(problems)
            + ". Ask the EHR administrator to check that SMART on FHIR is enabled for this server."
        )


def _from_well_known(iss: str, doc: dict[str, Any]) -> SmartConfiguration:
    def strs(key: str) -> tuple[str, ...]:
        value = doc.get(key)
        return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()

    endpoints = doc.get("associated_endpoints")
    return SmartConfiguration(
        iss=iss,
        authorization_endpoint=doc["authorization_endpoint"],
        token_endpoint=doc["token_endpoint"],
        issuer=doc["issuer"] if isinstance(doc.get("issuer"), str) else None,
        jwks_uri=doc["jwks_uri"] if _is_web_url(doc.get("jwks_uri")) else None,
        capabilities=frozenset(strs("capabilities")),
        scopes_supported=strs("scopes_supported"),
        associated_endpoints=tuple(e for e in endpoints if isinstance(e, dict)) if isinstance(endpoints, list) else (),
        raw=doc,
    )


def _oauth_uris(capability: dict[str, Any]) -> dict[str, str]:
    for rest in capability.get("rest") or ():
        if not isinstance(rest, dict):
            continue
        for ext in (rest.get("security") or {}).get("extension") or ():
            if isinstance(ext, dict) and ext.get("url") == OAUTH_URIS_EXT:
                return {e["url"]: e["valueUri"] for e in ext.get("extension") or ()
                        if isinstance(e, dict) and isinstance(e.get("url"), str) and isinstance(e.get("valueUri"), str)}
    return {}


def scopes_for(requested: str, config: SmartConfiguration) -> str:
    """Rewrite SMART v2 resource scopes (`patient/X.rs`) as v1 (`.read`) for v1-only servers."""
    if config.scope_version == 2:
        return requested
    out = []
    for scope in requested.split():
        head, dot, perms = scope.rpartition(".")
        if dot and "/" in head and perms and set(perms) <= set("cruds"):
            scope = f"{head}.read" if set(perms) <= set("rs") else f"{head}.*"
        out.append(scope)
    return " ".join(out)


class TokenSession(PolicySession, OAuth2Session):
    """authlib's OAuth2Session with app/http.py's rules: no redirects, a timeout, a size cap."""


MAX_TOKEN_BYTES = 256 * 1024


class SmartClient:
    """OAuth 2 client for one registered EHR (authlib underneath)."""

    def __init__(self, reg: IssuerRegistration, config: SmartConfiguration, keys: AppKeys, *,
                 redirect_uri: str, timeout: float = 10.0, pool: requests.adapters.HTTPAdapter | None = None) -> None:
        self.reg, self.config, self.redirect_uri, self.timeout = reg, config, redirect_uri, timeout
        secret: Any = None
        if reg.auth_method == "client_secret_basic":
            secret = reg.client_secret()
        elif reg.auth_method == "private_key_jwt":
            secret = keys.key(reg.signing_alg)
        self.session = TokenSession(
            timeout=timeout, max_bytes=MAX_TOKEN_BYTES,
            client_id=reg.client_id, client_secret=secret, redirect_uri=redirect_uri,
            token_endpoint_auth_method=reg.auth_method, code_challenge_method="S256",
        )
        if pool is not None:  # reuse the app's connection pool: no new TCP/TLS handshake per launch
            self.session.mount("https://", pool)
            self.session.mount("http://", pool)
        if reg.auth_method == "private_key_jwt":
            self.session.register_client_auth_method(
                FreshPrivateKeyJWT(keys.key(reg.signing_alg), reg.signing_alg, config.token_endpoint))

    def authorize_url(self, *, scope: str, state: str, code_verifier: str, launch: str | None,
                      nonce: str | None) -> str:
        extra: dict[str, str] = {"aud": self.reg.iss}  # SMART: aud = the FHIR base the token is for
        if launch:
            extra["launch"] = launch
        if nonce:
            extra["nonce"] = nonce
        url, _ = self.session.create_authorization_url(
            self.config.authorization_endpoint, state=state, code_verifier=code_verifier, scope=scope, **extra)
        return url

    def exchange_code(self, code: str, code_verifier: str) -> dict[str, Any]:
        return self._token_call(lambda: self.session.fetch_token(
            self.config.token_endpoint, grant_type="authorization_code", code=code,
            code_verifier=code_verifier, redirect_uri=self.redirect_uri, timeout=self.timeout))

    def refresh(self, refresh_token: str) -> dict[str, Any]:
        return self._token_call(lambda: self.session.refresh_token(
            self.config.token_endpoint, refresh_token=refresh_token, timeout=self.timeout))

    def _token_call(self, call: Callable[[], Any]) -> dict[str, Any]:
        endpoint = self.config.token_endpoint
        try:
            token = dict(call())
        except OAuthError as exc:
            raise TokenError(
                f"The EHR's token endpoint refused the request: {exc.error}"
                + (f" ({exc.description})" if exc.description else "")
                + ". Relaunch the app from the chart; if it fails again, ask your administrator to check "
                  "the app's registration (client id, redirect URI, keys).",
                log_detail=f"token endpoint {endpoint}") from exc
        except RedirectRefused as exc:
            raise TokenError(
                f"The EHR's token endpoint answered with a redirect (HTTP {exc.status}); Imaging Timeline never "
                "follows a redirect with an authorization code or refresh token. Ask your administrator to "
                "publish the token endpoint's final address in the EHR's SMART configuration.",
                log_detail=f"token endpoint {endpoint} redirected") from exc
        except AnswerTooLarge as exc:
            raise TokenError(
                f"The EHR's token endpoint answered with something larger than {MAX_TOKEN_BYTES // 1024} kB; "
                "it was not used. Tell your administrator.", log_detail=endpoint) from exc
        except requests.HTTPError as exc:
            raise TokenError(
                f"The EHR's token endpoint failed with HTTP {exc.response.status_code}. Try again in a "
                "moment; if it persists, tell your administrator.", log_detail=endpoint) from exc
        except requests.RequestException as exc:
            raise TokenError(
                f"Could not reach the EHR's token endpoint ({type(exc).__name__}). Check the network and "
                "relaunch.", log_detail=endpoint) from exc
        except ValueError as exc:
            raise TokenError(
                "The EHR's token endpoint answered with something that is not a JSON token response. "
                "Tell your administrator; the EHR may be misconfigured.", log_detail=endpoint) from exc
        if not isinstance(token.get("access_token"), str) or not token["access_token"]:
            raise TokenError("The EHR's token response has no access_token. Tell your administrator.",
                             log_detail=endpoint)
        if str(token.get("token_type", "")).lower() != "bearer":
            raise TokenError(f"The EHR issued a {token.get('token_type')!r} token; Imaging Timeline needs a "
                             "Bearer token. Tell your administrator.", log_detail=endpoint)
        return token


class IdTokenVerifier:
    """Verifies OpenID Connect id_tokens against the issuer's JWKS (fetched and cached)."""

    ALGS = ["RS256", "RS384", "ES384", "ES256"]

    def __init__(self, http: requests.Session, *, timeout: float = 10.0, ttl_s: float = 3600,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.http, self.timeout, self.ttl_s, self.clock = http, timeout, ttl_s, clock
        self._cache: dict[str, tuple[float, KeySet]] = {}
        self._lock = threading.Lock()

    def _keys(self, jwks_uri: str, refresh: bool = False) -> KeySet:
        with self._lock:
            hit = self._cache.get(jwks_uri)
        if hit and hit[0] > self.clock() and not refresh:
            return hit[1]
        try:
            status, doc = get_json(self.http, jwks_uri, timeout=self.timeout)
            if status != 200:
                raise ValueError(f"HTTP {status}")
            keyset = KeySet.import_key_set(as_key_set(doc))
        except (requests.RequestException, ValueError, JoseError) as exc:
            raise IdTokenError(f"Could not load the EHR's signing keys from {jwks_uri} ({exc}). Tell your "
                               "administrator.") from exc
        with self._lock:
            while len(self._cache) >= MAX_CACHED:
                del self._cache[next(iter(self._cache))]
            self._cache[jwks_uri] = (self.clock() + self.ttl_s, keyset)
        return keyset

    def verify(self, id_token: str, config: SmartConfiguration, client_id: str,
               nonce: str | None) -> dict[str, Any]:
        if not config.jwks_uri:
            raise IdTokenError(f"The EHR at {config.iss} issued an id_token but publishes no jwks_uri to "
                               "verify it. Tell your administrator.")
        try:
            try:
                token = jwt.decode(id_token, self._keys(config.jwks_uri), algorithms=self.ALGS)
            except JoseError:
                # The EHR may have rotated its keys: refetch once before giving up.
                token = jwt.decode(id_token, self._keys(config.jwks_uri, refresh=True), algorithms=self.ALGS)
            claims: dict[str, jwt.ClaimsOption] = {
                "iss": {"essential": True, "value": config.issuer or config.iss},
                "aud": {"essential": True, "value": client_id},
                "exp": {"essential": True},
                "sub": {"essential": True},
            }
            if nonce:
                claims["nonce"] = {"essential": True, "value": nonce}
            # now=None is the default clock; naming it tells mypy that **claims are all claim options.
            jwt.JWTClaimsRegistry(now=None, leeway=60, **claims).validate(token.claims)
        except (JoseError, ValueError) as exc:
            reason = getattr(exc, "description", None) or getattr(exc, "error", None) or type(exc).__name__
            raise IdTokenError(
                f"The EHR's id_token failed verification ({reason}). The sign-in was not accepted; relaunch "
                "from the chart, and tell your administrator if it happens again.") from exc
        return token.claims


def fhir_user_url(claim: Any, iss: str) -> str | None:
    """`fhirUser` may be absolute or relative to `iss` (SMART App Launch 2.x §"fhirUser")."""
    if not isinstance(claim, str) or not claim:
        return None
    return urljoin(iss.rstrip("/") + "/", claim)


def new_state() -> str:
    return generate_token(43)


def new_code_verifier() -> str:
    # RFC 7636 §4.1: 43-128 characters of [A-Z a-z 0-9 - . _ ~].
    return generate_token(64)
