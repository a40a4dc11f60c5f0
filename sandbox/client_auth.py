"""private_key_jwt client authentication (SMART App Launch 2.x "Asymmetric client authentication").

authlib's RFC 7523 client assertion does the JWT work; this adds what SMART demands on top:
RS384/ES384 only, ``aud`` = the token endpoint, ``exp`` at most five minutes ahead, ``jti`` never
reused, and the client's JWKS fetched from its registered ``jwks_uri`` with a timeout.

The fetched JWKS is cached per ``jwks_uri`` for a short time (``JWKS_TTL_S``), and fetched again
when an assertion names a ``kid`` the cached set lacks (the client rotated its keys; SMART App
Launch 2.x, "Asymmetric client authentication": the server may cache the JWKS and must re-fetch
on an unknown ``kid``). Without the cache every token request waited on a request back to the
app, and an app whose threads were all waiting on this token endpoint could not answer it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, cast

import requests
from authlib.oauth2.rfc6749 import InvalidClientError
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, KeySetSerialization

from .runtime import runtime, token_url
from .store import Client

log = logging.getLogger(__name__)

ALGORITHMS = ("RS384", "ES384")
MAX_ASSERTION_LIFETIME_S = 300
MAX_JWKS_BYTES = 256 * 1024
JWKS_TTL_S = 300.0
JWKS_REFETCH_MIN_S = 1.0  # an unknown kid refetches at most this often per jwks_uri (no fetch amplifier)
JWKS_CACHE_SIZE = 64


class JwksCache:
    """Client JWKS by jwks_uri: (fetched at, key set); bounded, shared by the sandbox's request threads."""

    def __init__(self) -> None:
        self._sets: dict[str, tuple[float, KeySet]] = {}
        self._lock = threading.Lock()

    def get(self, uri: str, now: float, ttl_s: float) -> tuple[float, KeySet] | None:
        with self._lock:
            hit = self._sets.get(uri)
        return hit if hit is not None and now - hit[0] < ttl_s else None

    def put(self, uri: str, now: float, keys: KeySet) -> None:
        with self._lock:
            if uri not in self._sets and len(self._sets) >= JWKS_CACHE_SIZE:
                del self._sets[next(iter(self._sets))]
            self._sets[uri] = (now, keys)



class PrivateKeyJwt(JWTBearerClientAssertion):
    """Authenticates a client by a JWT signed with a key from its registered JWKS."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self) -> None:
        super().__init__(validate_jti=True, leeway=30)
        self.jwks_cache = JwksCache()
        self._request = threading.local()  # the jwks_uri of the client this thread is authenticating

    def get_audiences(self) -> list[str]:
        return [token_url()]

    def validate_jti(self, claims: Any, jti: str) -> bool:
        return runtime().store.use_jti(str(claims["iss"]), str(jti), float(claims["exp"]))

    def process_assertion_claims(self, assertion: str, resolve_key: Any) -> Any:
        resolve_key = self._with_kid_of(assertion, resolve_key)
        try:
            token = jwt.decode(assertion, resolve_key, algorithms=list(ALGORITHMS))
        except JoseError as exc:
            raise InvalidClientError(
                description="The client assertion signature or algorithm is not acceptable "
                            "(RS384 or ES384 with a key from the registered JWKS).") from exc
        self._check_lifetime(token.claims)
        self.verify_claims(token.claims)
        return token.claims

    def _check_lifetime(self, claims: dict[str, Any]) -> None:
        exp, now = claims.get("exp"), runtime().clock()
        if isinstance(exp, int | float) and exp > now + MAX_ASSERTION_LIFETIME_S + self.leeway:
            raise InvalidClientError(description="The client assertion 'exp' is more than five minutes ahead.")

    def resolve_client_public_key(self, client: Client) -> KeySet:
        registration = client.registration
        self._request.jwks_uri = None
        if registration.jwks is not None:
            # joserfc types the argument as its KeySetSerialization TypedDict; SandboxConfig holds a Mapping.
            return KeySet.import_key_set(cast(KeySetSerialization, dict(registration.jwks)))
        uri = registration.jwks_uri or ""
        self._request.jwks_uri = uri
        hit = self.jwks_cache.get(uri, time.monotonic(), JWKS_TTL_S)
        if hit is not None:
            return hit[1]
        return self._fetch_and_cache(uri)

    def _with_kid_of(self, assertion: str, keys: Any) -> Any:
        """The cached key set, fetched again once if the assertion names a kid it lacks."""
        uri = getattr(self._request, "jwks_uri", None)
        if not uri or not isinstance(keys, KeySet):
            return keys
        try:
            kid = jws.extract_compact(assertion.encode()).headers().get("kid")
        except (JoseError, ValueError):
            return keys  # jwt.decode reports the malformed assertion
        if not kid or any(k.kid == kid for k in keys.keys):
            return keys
        hit = self.jwks_cache.get(uri, time.monotonic(), JWKS_REFETCH_MIN_S)
        if hit is not None:  # fetched a moment ago: the kid is really unknown
            return hit[1]
        return self._fetch_and_cache(uri)

    def _fetch_and_cache(self, uri: str) -> KeySet:
        keys = self._fetch_jwks(uri)
        self.jwks_cache.put(uri, time.monotonic(), keys)
        return keys

    def _fetch_jwks(self, uri: str) -> KeySet:
        rt = runtime()
        try:
            with rt.http.get(uri, timeout=rt.config.jwks_timeout_s, stream=True,
                             headers={"Accept": "application/json"}) as resp:
                resp.raise_for_status()
                body = resp.raw.read(MAX_JWKS_BYTES + 1, decode_content=True)
            if len(body) > MAX_JWKS_BYTES:
                raise ValueError("JWKS larger than 256 KiB")
            return KeySet.import_key_set(json.loads(body))
        except (requests.RequestException, ValueError, TypeError, KeyError, JoseError) as exc:
            log.warning("could not use the JWKS of a client at %s: %s", uri, exc)
            raise InvalidClientError(description="The client's jwks_uri could not be fetched or parsed.") from exc
