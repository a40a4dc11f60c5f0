"""The app's SMART registration (launch.json): client metadata and the allow-list of EHR issuers."""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from flask import Flask, current_app

from .errors import ConfigError, LaunchError, UnknownIssuer

AUTH_METHODS = ("none", "client_secret_basic", "private_key_jwt")
LAUNCH_TYPES = ("ehr", "standalone")
TOP_KEYS = {
    "client_id", "client_name", "launch_uri", "redirect_uris", "scope", "token_endpoint_auth_method",
    "jwks_uri", "issuers", "grant_types", "response_types", "logo_uri", "contacts", "software_id",
    "software_version", "launch_types", "signing_alg", "standalone_scope", "$comment",
}
ISSUER_KEYS = {
    "iss", "match", "client_id", "token_endpoint_auth_method", "client_secret_env", "signing_alg",
    "scope", "launch_types", "name", "$comment",
}


@dataclass(frozen=True)
class IssuerRegistration:
    """How the app is registered with one EHR (one `issuers` entry)."""

    iss: str
    client_id: str
    auth_method: str  # none | client_secret_basic | private_key_jwt
    scope: str
    match: str = "exact"  # exact | prefix (the public SMART launcher puts launch options in the path)
    client_secret_env: str | None = None
    signing_alg: str = "RS384"
    launch_types: tuple[str, ...] = LAUNCH_TYPES
    name: str | None = None

    def matches(self, iss: str) -> bool:
        if self.match == "prefix":
            return iss.startswith(self.iss)
        return iss.rstrip("/") == self.iss.rstrip("/")

    def client_secret(self) -> str:
        value = os.environ.get(self.client_secret_env or "", "")
        if not value:
            raise ConfigError(
                f"The client secret for {self.iss} is not set: export the environment variable "
                f"{self.client_secret_env or '(client_secret_env not configured in launch.json)'}."
            )
        return value


@dataclass(frozen=True)
class Registration:
    """The whole of launch.json, validated."""

    client_id: str
    client_name: str
    scope: str
    standalone_scope: str
    issuers: tuple[IssuerRegistration, ...]
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    def issuer(self, iss: str) -> IssuerRegistration:
        """The registration for `iss`, or UnknownIssuer. Checked before anything is fetched from it."""
        validate_iss(iss)
        for reg in self.issuers:
            if reg.matches(iss):
                return replace(reg, iss=iss) if reg.match == "prefix" else replace(reg, iss=iss.rstrip("/"))
        raise UnknownIssuer(
            f"The EHR address (iss) {iss} is not in launch.json `issuers`; ask your administrator "
            "to register this EHR with Imaging Timeline."
        )

    def with_issuer(self, reg: IssuerRegistration) -> Registration:
        return replace(self, issuers=(*self.issuers, reg))


def validate_iss(iss: str) -> None:
    """An `iss` must be an absolute https URL (http only on loopback), with no query or fragment."""
    try:
        parts = urlsplit(iss)
        _ = parts.port
    except ValueError:
        parts = None
    loopback = parts is not None and parts.hostname in {"127.0.0.1", "localhost", "::1"}
    if (
        parts is None
        or not parts.hostname
        or parts.query
        or parts.fragment
        or parts.username
        or not (parts.scheme == "https" or (parts.scheme == "http" and loopback))
    ):
        raise LaunchError(
            f"The EHR address (iss) {iss!r} is not a valid https URL of a FHIR server; the EHR's "
            "launch link is misconfigured."
        )
    if not _normal(iss):
        # A prefix-registered issuer must not reach another path on its host: the HTTP client
        # would resolve "../" (RFC 3986 §5.2.4) after the allow-list check has passed.
        raise LaunchError(
            f"The EHR address (iss) {iss!r} changes when normalised (it has \".\" or \"..\" segments, "
            "percent-encoded dots, slashes or backslashes, or characters that are not URL-safe); the EHR's "
            "launch link is misconfigured or forged."
        )


_ENCODED_SEPARATOR = re.compile(r"%(2e|2f|5c)", re.IGNORECASE)


@functools.lru_cache(maxsize=1024)  # pure, and asked on every audited access (the client id)
def _normal(iss: str) -> bool:
    """Whether `iss` is exactly the URL an HTTP client would request (nothing to resolve or re-encode)."""
    path = urlsplit(iss).path
    if "\\" in iss or _ENCODED_SEPARATOR.search(iss) or any(seg in {".", ".."} for seg in path.split("/")):
        return False
    prepared = requests.Request("GET", iss).prepare().url or ""
    return prepared in {iss, iss + "/"} if not path else prepared == iss


def _err(path: str, where: str, msg: str) -> ConfigError:
    return ConfigError(f"{path}: {where}: {msg}")


def parse_registration(data: Any, path: str = "launch.json") -> Registration:
    """Validate launch.json; every error names the key and what to put there."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a JSON object.")
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise _err(path, "top level", f"unknown key {sorted(unknown)[0]!r}")
    for key in ("client_id", "client_name", "scope"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise _err(path, "top level", f"`{key}` must be a non-empty string")
    default_method = data.get("token_endpoint_auth_method", "none")
    default_types = tuple(data.get("launch_types", LAUNCH_TYPES))
    issuers = data.get("issuers")
    if not isinstance(issuers, list) or not issuers:
        raise _err(path, "top level", "`issuers` must list at least one EHR ({\"iss\": ..., ...})")
    regs = []
    for i, entry in enumerate(issuers):
        where = f"issuers[{i}]"
        if not isinstance(entry, dict):
            raise _err(path, where, "must be an object")
        unknown = set(entry) - ISSUER_KEYS
        if unknown:
            raise _err(path, where, f"unknown key {sorted(unknown)[0]!r}")
        iss = entry.get("iss")
        if not isinstance(iss, str):
            raise _err(path, where, "`iss` must be the EHR's FHIR base URL")
        try:
            validate_iss(iss)
        except LaunchError as exc:
            raise _err(path, where, exc.message) from None
        method = entry.get("token_endpoint_auth_method", default_method)
        if method not in AUTH_METHODS:
            raise _err(path, where, f"`token_endpoint_auth_method` {method!r} must be one of {AUTH_METHODS}")
        if method == "client_secret_basic" and not entry.get("client_secret_env"):
            raise _err(path, where, "client_secret_basic needs `client_secret_env` (the name of the "
                                    "environment variable holding the secret; never the secret itself)")
        alg = entry.get("signing_alg", data.get("signing_alg", "RS384"))
        if alg not in ("RS384", "ES384"):
            raise _err(path, where, f"`signing_alg` {alg!r} must be RS384 or ES384")
        match = entry.get("match", "exact")
        if match not in ("exact", "prefix"):
            raise _err(path, where, f"`match` {match!r} must be exact or prefix")
        if match == "prefix" and not iss.endswith("/"):
            # Without the slash, "https://ehr.example" would also match "https://ehr.example.evil".
            raise _err(path, where, "a prefix `iss` must end with \"/\"")
        client_id = entry.get("client_id", data["client_id"])
        if not isinstance(client_id, str) or not client_id.strip():
            raise _err(path, where, "`client_id` must be a non-empty string")
        scope = entry.get("scope", data["scope"])
        if not isinstance(scope, str) or not scope.strip():
            raise _err(path, where, "`scope` must be a non-empty string")
        types = tuple(entry.get("launch_types", default_types))
        if not types or set(types) - set(LAUNCH_TYPES):
            raise _err(path, where, f"`launch_types` must be a subset of {list(LAUNCH_TYPES)}")
        regs.append(IssuerRegistration(
            iss=iss, client_id=client_id, auth_method=method, scope=scope, match=match,
            client_secret_env=entry.get("client_secret_env"), signing_alg=alg, launch_types=types,
            name=entry.get("name"),
        ))
    return Registration(
        client_id=data["client_id"], client_name=data["client_name"], scope=data["scope"],
        standalone_scope=data.get("standalone_scope", data["scope"].replace("launch ", "launch/patient ")),
        issuers=tuple(regs), raw=data,
    )


def load_registration(source: str | dict[str, Any]) -> Registration:
    if isinstance(source, dict):
        return parse_registration(source, "launch config")
    try:
        data = json.loads(Path(source).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{source}: file not found (set IMAGING_LAUNCH_CONFIG to your launch.json)") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    return parse_registration(data, source)


def registration() -> Registration:
    return current_app.extensions["registration"]


def init_app(app: Flask) -> None:
    reg = load_registration(app.config["LAUNCH_CONFIG"])
    for extra in app.config.get("EXTRA_ISSUERS") or ():
        reg = reg.with_issuer(extra)
    app.extensions["registration"] = reg
