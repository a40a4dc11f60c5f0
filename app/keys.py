"""The app's own signing keys (private_key_jwt client authentication) and its public JWKS."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from authlib.oauth2.rfc7523 import PrivateKeyJWT
from authlib.oauth2.rfc7523.assertion import private_key_jwt_sign
from flask import Blueprint, Flask, Response, current_app, jsonify
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, KeySetSerialization, RSAKey

from .errors import ConfigError

log = logging.getLogger(__name__)

bp = Blueprint("keys", __name__)

# SMART App Launch 2.x, "Asymmetric (public key) client authentication": clients SHALL support
# RS384 and/or ES384, and the assertion's exp SHALL be no more than five minutes in the future.
ASSERTION_LIFETIME_S = 300
SUPPORTED_ALGS = ("RS384", "ES384")


@dataclass(frozen=True)
class AppKeys:
    """One signing key per supported algorithm; the public halves are published as a JWKS."""

    by_alg: dict[str, RSAKey | ECKey]

    def key(self, alg: str) -> RSAKey | ECKey:
        try:
            return self.by_alg[alg]
        except KeyError:
            raise ConfigError(
                f'Signing algorithm "{alg}" is not available; use one of {", ".join(sorted(self.by_alg))}.'
            ) from None

    def public_jwks(self) -> KeySetSerialization:
        return KeySet(list(self.by_alg.values())).as_dict(private=False)


def _with_kid(key: RSAKey | ECKey, alg: str) -> RSAKey | ECKey:
    data = key.as_dict(private=True)
    data.update({"alg": alg, "use": "sig", "kid": key.thumbprint()})
    return type(key).import_key(data)


def generate_keys() -> AppKeys:
    """Fresh keys for a run that has no key file (the demo, tests)."""
    return AppKeys({
        "RS384": _with_kid(RSAKey.generate_key(2048, private=True), "RS384"),
        "ES384": _with_kid(ECKey.generate_key("P-384", private=True), "ES384"),
    })


def as_key_set(doc: Any) -> KeySetSerialization:
    """A parsed JWKS document as joserfc's TypedDict, or ValueError (joserfc raises KeyError without "keys")."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError('a JWKS is a JSON object with a "keys" list')
    return cast(KeySetSerialization, doc)


def load_keys(path: str) -> AppKeys:
    """Keys from a PEM file (one RSA or EC P-384 private key) or a private JWKS JSON file."""
    text = Path(path).read_text()
    keys: dict[str, RSAKey | ECKey] = {}
    try:
        if text.lstrip().startswith("{"):
            for key in KeySet.import_key_set(as_key_set(json.loads(text))).keys:
                if not isinstance(key, RSAKey | ECKey):
                    raise ConfigError(f"The key file {path} (IMAGING_TIMELINE_KEY_FILE) holds a key of type "
                                      f"{key.key_type!r}; use RSA or EC P-384 keys ({' or '.join(SUPPORTED_ALGS)}).")
                alg = key.alg or ("RS384" if isinstance(key, RSAKey) else "ES384")
                keys[alg] = _with_kid(key, alg)
        else:
            try:
                keys["RS384"] = _with_kid(RSAKey.import_key(text), "RS384")
            except ValueError:
                keys["ES384"] = _with_kid(ECKey.import_key(text), "ES384")
    except (ValueError, JoseError) as exc:
        raise ConfigError(
            f"The key file {path} (IMAGING_TIMELINE_KEY_FILE) is not a PEM private key or a JWKS; "
            "generate one with `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048`."
        ) from exc
    return AppKeys(keys)


class FreshPrivateKeyJWT(PrivateKeyJWT):
    """authlib's private_key_jwt with a new `jti`, a `kid` header and a 5-minute `exp` per call.

    authlib's default mutates one claims dict (so a given `claims` would repeat its `jti`) and
    uses a one-hour lifetime; SMART requires exp <= 5 min and unique jti values.
    """

    def __init__(self, key: RSAKey | ECKey, alg: str, token_endpoint: str | None = None) -> None:
        super().__init__(token_endpoint, alg=alg)
        self.key = key

    def sign(self, auth: Any, token_endpoint: str) -> str:
        return private_key_jwt_sign(
            self.key, client_id=auth.client_id, token_endpoint=token_endpoint, alg=self.alg,
            header={"kid": self.key.kid, "typ": "JWT"}, expires_in=ASSERTION_LIFETIME_S,
        )


def app_keys() -> AppKeys:
    return current_app.extensions["app_keys"]


@bp.get("/.well-known/jwks.json")
def jwks() -> Response:
    resp = jsonify(app_keys().public_jwks())
    resp.headers["Cache-Control"] = "public, max-age=300"
    return resp


def init_app(app: Flask) -> None:
    path = app.config.get("PRIVATE_KEY_FILE")
    if isinstance(app.config.get("APP_KEYS"), AppKeys):  # shared by tests to save key generation
        app.extensions["app_keys"] = app.config["APP_KEYS"]
    elif path:
        app.extensions["app_keys"] = load_keys(path)
    else:
        log.info("no IMAGING_TIMELINE_KEY_FILE: generated signing keys for this run")
        app.extensions["app_keys"] = generate_keys()
    app.register_blueprint(bp)
