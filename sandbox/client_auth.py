"""private_key_jwt client authentication (SMART App Launch 2.x "Asymmetric client authentication").

authlib's RFC 7523 client assertion does the JWT work; this adds what SMART demands on top:
RS384/ES384 only, ``aud`` = the token endpoint, ``exp`` at most five minutes ahead, ``jti`` never
reused, and the client's JWKS fetched from its registered ``jwks_uri`` with a timeout.
"""

from __future__ import annotations

import json
import logging
from typing import Any, cast

import requests
from authlib.oauth2.rfc6749 import InvalidClientError
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, KeySetSerialization

from .runtime import runtime, token_url
from .store import Client

log = logging.getLogger(__name__)

ALGORITHMS = ("RS384", "ES384")
MAX_ASSERTION_LIFETIME_S = 300
MAX_JWKS_BYTES = 256 * 1024


class PrivateKeyJwt(JWTBearerClientAssertion):
    """Authenticates a client by a JWT signed with a key from its registered JWKS."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self) -> None:
        super().__init__(validate_jti=True, leeway=30)

    def get_audiences(self) -> list[str]:
        return [token_url()]

    def validate_jti(self, claims: Any, jti: str) -> bool:
        return runtime().store.use_jti(str(claims["iss"]), str(jti), float(claims["exp"]))

    def process_assertion_claims(self, assertion: str, resolve_key: Any) -> Any:
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
        if registration.jwks is not None:
            # joserfc types the argument as its KeySetSerialization TypedDict; SandboxConfig holds a Mapping.
            return KeySet.import_key_set(cast(KeySetSerialization, dict(registration.jwks)))
        return self._fetch_jwks(registration.jwks_uri or "")

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
