"""Which CDS clients may call the CDS services, and the check of each call's JWT (CDS Hooks 2.0 "Trusting CDS Clients").

Every request carries `Authorization: Bearer <JWT>` signed by the CDS client (the EHR). The
service accepts it only when:

* `iss` names an allow-listed client (IMAGING_CDS_CLIENTS), whose JWKS URL is configured here:
  the key is fetched from that URL only; a `jku` header naming any other URL is refused (never
  fetched: it would let a caller choose the key that verifies it);
* the signature verifies (RS384 / ES384, the algorithms CDS Hooks 2.0 requires clients to offer,
  plus RS256/ES256) with the JWKS's key named by `kid`;
* `aud` is this service's own URL (`{public url}/cds-services/<id>`), `exp` is in the future
  (60 s leeway), `iat` is present, and `jti` has not been seen before (noted in the shared audit
  store, so a token replayed against another worker or machine is refused too);
* the request's `fhirServer` is one the client is allowed to send (its `fhir_servers`).

Client list file (JSON)::

    {"clients": [{"iss": "https://ehr.example.org", "jwks_url": "https://ehr.example.org/jwks.json",
                  "fhir_servers": ["https://ehr.example.org/fhir"]}]}
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import requests
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jws import extract_compact

from .audit_store import STORE_ERRORS
from .errors import AuditUnavailable, CdsAuthError, CdsForbidden, ConfigError
from .http import Deadline, fetch
from .keys import as_key_set

log = logging.getLogger(__name__)

ALGS = ["RS384", "ES384", "RS256", "ES256"]
JWKS_TTL_S = 300
MAX_JWKS_BYTES = 256 * 1024
LEEWAY_S = 60


class ReplayGuard(Protocol):
    def first_use(self, key: str, until: float) -> bool:
        """True the first time `key` is seen (remembered until `until`), False afterwards."""
        ...


@dataclass(frozen=True)
class CdsClient:
    """One allow-listed CDS client (an EHR): its issuer, where its keys are, which FHIR servers it may name."""

    iss: str
    jwks_url: str
    fhir_servers: tuple[str, ...] = ()

    def allows(self, fhir_server: str) -> bool:
        return fhir_server.rstrip("/") in {s.rstrip("/") for s in self.fhir_servers}


def parse_clients(data: Any, where: str = "IMAGING_CDS_CLIENTS") -> tuple[CdsClient, ...]:
    """The client list from its JSON form (a file's content, or the list given directly)."""
    items = data.get("clients") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ConfigError(f'{where}: expected {{"clients": [...]}}, a list of CDS clients.')
    clients = []
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: clients[{n}] must be an object with iss and jwks_url.")
        for key in ("iss", "jwks_url"):
            if not isinstance(item.get(key), str) or not item[key].startswith(("https://", "http://")):
                raise ConfigError(f"{where}: clients[{n}].{key} must be an http(s) URL.")
        unknown = set(item) - {"iss", "jwks_url", "fhir_servers"}
        if unknown:
            raise ConfigError(f"{where}: clients[{n}] has unknown key {sorted(unknown)[0]!r} "
                              "(allowed: iss, jwks_url, fhir_servers).")
        servers = item.get("fhir_servers", [])
        if not isinstance(servers, list) or not all(isinstance(s, str) for s in servers):
            raise ConfigError(f"{where}: clients[{n}].fhir_servers must be a list of FHIR base URLs.")
        clients.append(CdsClient(item["iss"], item["jwks_url"], tuple(servers)))
    return tuple(clients)


def load_clients(source: str | Sequence[dict[str, Any]] | None) -> tuple[CdsClient, ...]:
    if source is None:
        return ()
    if isinstance(source, str):
        try:
            data = json.loads(Path(source).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"IMAGING_CDS_CLIENTS {source}: not a readable JSON file "
                              f"({type(exc).__name__}).") from exc
        return parse_clients(data, f"IMAGING_CDS_CLIENTS {source}")
    return parse_clients(list(source))


@dataclass(frozen=True)
class VerifiedCall:
    """Who called (the client) and the token's claims."""

    client: CdsClient
    claims: dict[str, Any]


class CdsAuthenticator:
    """Verifies CDS client JWTs against each allow-listed client's JWKS (cached `JWKS_TTL_S`)."""

    def __init__(self, clients: Sequence[CdsClient], http: requests.Session, replay: ReplayGuard, *,
                 timeout_s: float = 5.0, clock: Callable[[], float] = time.time) -> None:
        self.clients = {c.iss: c for c in clients}
        self.http, self.replay, self.timeout_s, self.clock = http, replay, timeout_s, clock
        self._keys: dict[str, tuple[float, KeySet]] = {}
        self._lock = threading.Lock()

    def _keyset(self, client: CdsClient, refresh: bool = False) -> KeySet:
        with self._lock:
            hit = self._keys.get(client.iss)
        if hit and hit[0] > self.clock() and not refresh:
            return hit[1]
        try:
            answer = fetch(self.http, "GET", client.jwks_url, deadline=Deadline.after(self.timeout_s),
                           timeout=self.timeout_s, max_bytes=MAX_JWKS_BYTES, headers={"Accept": "application/json"})
            if answer.status != 200:
                raise ValueError(f"HTTP {answer.status}")
            keyset = KeySet.import_key_set(as_key_set(answer.json()))
        except (requests.RequestException, ValueError, JoseError) as exc:
            log.warning("CDS client JWKS unusable: %s", type(exc).__name__)
            raise CdsAuthError(f"The signing keys of CDS client {client.iss} could not be loaded from "
                               f"{client.jwks_url}; the call was refused.") from exc
        with self._lock:
            self._keys[client.iss] = (self.clock() + JWKS_TTL_S, keyset)
        return keyset

    def verify(self, authorization: str | None, audience: str) -> VerifiedCall:
        """The verified call, or CdsAuthError saying what was wrong (never echoing the token)."""
        if not authorization or not authorization.startswith("Bearer "):
            raise CdsAuthError("A CDS Hooks call needs `Authorization: Bearer <JWT>` signed by an allow-listed "
                               "CDS client (CDS Hooks 2.0, Trusting CDS Clients).")
        token = authorization.removeprefix("Bearer ").strip()
        try:
            header, claims = _peek(token)
        except (ValueError, JoseError) as exc:
            raise CdsAuthError("The CDS client's bearer token is not a JWT.") from exc
        client = self.clients.get(str(claims.get("iss")))
        if client is None:
            raise CdsAuthError(f"CDS client {str(claims.get('iss'))[:200]!r} is not allow-listed "
                               "(IMAGING_CDS_CLIENTS); ask your administrator to register it.")
        jku = header.get("jku")
        if jku is not None and jku != client.jwks_url:
            raise CdsAuthError(f"The JWT's jku {str(jku)[:200]} is not the JWKS URL registered for {client.iss}; "
                               "it was not fetched and the call was refused.")
        try:
            try:
                decoded = jwt.decode(token, self._keyset(client), algorithms=ALGS)
            except JoseError:
                decoded = jwt.decode(token, self._keyset(client, refresh=True), algorithms=ALGS)  # keys rotated
            jwt.JWTClaimsRegistry(now=int(self.clock()), leeway=LEEWAY_S, iss={"essential": True, "value": client.iss},
                                  aud={"essential": True, "value": audience}, exp={"essential": True},
                                  iat={"essential": True}, jti={"essential": True}).validate(decoded.claims)
        except (JoseError, ValueError) as exc:
            reason = getattr(exc, "description", None) or getattr(exc, "error", None) or type(exc).__name__
            raise CdsAuthError(f"The CDS client's JWT was refused ({reason}). Its aud must be {audience}.") from exc
        try:
            first = self.replay.first_use(f"cds-jti:{client.iss}:{decoded.claims['jti']}",
                                          float(decoded.claims["exp"]) + LEEWAY_S)
        except STORE_ERRORS as exc:
            raise AuditUnavailable("The single-use check of the CDS client's JWT could not be made (the audit "
                                   "store is unreachable); the call was refused.") from exc
        if not first:
            raise CdsAuthError("This JWT (jti) was already used; CDS clients must sign a new one for every call.")
        return VerifiedCall(client, dict(decoded.claims))

    def check_fhir_server(self, call: VerifiedCall, fhir_server: str) -> None:
        if not call.client.allows(fhir_server):
            raise CdsForbidden(f"CDS client {call.client.iss} is not allowed to name the FHIR server "
                               f"{fhir_server[:200]}; add it to the client's fhir_servers.")


def _peek(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The JWT's header and claims before verification (only to pick the client; verified after)."""
    compact = extract_compact(token.encode())
    claims = json.loads(compact.payload)
    if not isinstance(claims, dict):
        raise ValueError("the JWT's payload is not a JSON object")
    return dict(compact.headers()), claims
