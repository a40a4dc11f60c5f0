"""The archives TOML (env IMAGING_ARCHIVES): parsed, validated and frozen at start; plus SMART discovery."""

from __future__ import annotations

import difflib
import logging
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from ..errors import ConfigError
from ..http import same_origin

log = logging.getLogger(__name__)

Kind = Literal["fhir", "dicomweb"]
AuthKind = Literal["none", "basic", "bearer", "ehr", "smart-backend"]
ViewerKind = Literal["ohif", "iid", "weasis", "url"]
ViewerVia = Literal["direct", "gateway"]

EHR = "ehr"  # base_url of a fhir archive that is the launching EHR itself (the launch `iss`)
IMAGING_CAPABILITY = "smart-imaging-access"
DEFAULT_BACKEND_SCOPE = "system/ImagingStudy.rs system/Patient.rs system/Endpoint.rs"
ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
TOKEN = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """How requests to one archive authenticate; secrets are named by env var, never written here."""

    kind: AuthKind = "none"
    username: str | None = None
    password_env: str | None = None
    token_env: str | None = None
    client_id: str | None = None
    token_url: str | None = None  # smart-backend: else from {base_url}/.well-known/smart-configuration
    scope: str = DEFAULT_BACKEND_SCOPE


@dataclass(frozen=True, slots=True)
class ViewerConfig:
    """Which viewer opens this archive's studies (used by the timeline, stored here)."""

    kind: ViewerKind
    url: str
    # "gateway": the viewer is given the app's patient-scoped DICOMweb gateway (app/gateway.py)
    # instead of the archive; "direct": the archive's own address, as before.
    via: ViewerVia = "direct"


@dataclass(frozen=True, slots=True)
class ArchiveConfig:
    """One configured (or discovered) archive."""

    id: str
    name: str
    kind: Kind
    base_url: str  # for fhir, "ehr" means the launch iss
    auth: AuthConfig = field(default_factory=AuthConfig)
    timeout_s: float = 10.0
    identifier_system: str | None = None
    issuer_of_patient_id: str | None = None
    viewer: ViewerConfig | None = None
    max_results: int = 500
    # Studies per QIDO/FHIR page; None: as many as the archive allows in one request (up to
    # max_results). Set it for archives that cap `limit` (Azure DICOM service: 200).
    page_size: int | None = None
    source: Literal["config", "discovered"] = "config"
    # IHE PIXm manager (FHIR base) asked for the patient's identifier in `identifier_system` when
    # the EHR's Patient carries none; None: such a patient is simply "not linked".
    pixm_url: str | None = None

    @property
    def is_ehr(self) -> bool:
        return self.kind == "fhir" and self.base_url == EHR

    def resolved_base(self, iss: str) -> str:
        """The base URL to query, with "ehr" resolved to the launch `iss`; no trailing slash."""
        return (iss if self.is_ehr else self.base_url).rstrip("/")


ARCHIVE_KEYS = {"id", "name", "kind", "base_url", "auth", "timeout_s", "identifier_system",
                "issuer_of_patient_id", "viewer", "max_results", "page_size", "pixm_url"}
AUTH_KEYS = {"kind", "username", "password_env", "token_env", "client_id", "token_url", "scope"}
VIEWER_KEYS = {"kind", "url", "via"}
AUTH_NEEDS = {"basic": ("username", "password_env"), "bearer": ("token_env",), "smart-backend": ("client_id",)}


class _Checker:
    """Builds ConfigError messages that name the file, the archive and the key."""

    def __init__(self, label: str, archive_id: str | None) -> None:
        self.label, self.archive_id = label, archive_id

    def fail(self, message: str) -> ConfigError:
        where = f'archive "{self.archive_id}"' if self.archive_id else "archive"
        return ConfigError(f"{self.label}: {where}: {message}")

    def keys(self, table: Mapping[str, Any], allowed: set[str], prefix: str = "") -> None:
        for key in table:
            if key not in allowed:
                close = difflib.get_close_matches(key, sorted(allowed), n=1)
                hint = f' (did you mean "{prefix}{close[0]}"?)' if close else ""
                raise self.fail(f'unknown key "{prefix}{key}"{hint}')

    def string(self, table: Mapping[str, Any], key: str, prefix: str = "", *, required: bool = False) -> str | None:
        value = table.get(key)
        if value is None:
            if required:
                raise self.fail(f'missing key "{prefix}{key}"')
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(f'"{prefix}{key}" must be a non-empty string')
        return value

    def choice(self, table: Mapping[str, Any], key: str, options: tuple[str, ...], prefix: str = "",
               default: str | None = None) -> str:
        value = self.string(table, key, prefix, required=default is None) or default
        if value not in options:
            raise self.fail(f'"{prefix}{key}" must be one of {", ".join(options)} (got "{value}")')
        return value

    def url(self, value: str, key: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise self.fail(f'"{key}" must be an http(s) URL (got "{value}")')
        return value


def _substitute(value: str | None, subs: Mapping[str, str], check: _Checker, key: str, *,
                strict: bool = True) -> str | None:
    """Replace `{name}` tokens; unknown ones are errors, except in viewer URLs (the viewer fills its own)."""
    if value is None:
        return None

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in subs:
            if not strict:
                return match.group(0)
            raise check.fail(f'"{key}" uses {{{name}}}, which is not defined here')
        return subs[name].rstrip("/")

    return TOKEN.sub(one, value)


def load_archives(path_or_text: str | Path, *, substitutions: Mapping[str, str] | None = None
                  ) -> tuple[ArchiveConfig, ...]:
    """Parse an archives TOML file (a Path, or a str that is a path or TOML text); ConfigError if invalid."""
    subs = substitutions or {}
    if isinstance(path_or_text, Path) or ("\n" not in path_or_text and Path(path_or_text).is_file()):
        path = Path(path_or_text)
        label = path.name
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the archives file ({exc.strerror}); check IMAGING_ARCHIVES.") \
                from exc
    else:
        label, text = "archives.toml", str(path_or_text)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{label}: not valid TOML ({exc})") from exc
    extra = set(doc) - {"archive"}
    if extra:
        raise ConfigError(f'{label}: unknown top-level key "{sorted(extra)[0]}"; archives are [[archive]] tables')
    tables = doc.get("archive", [])
    if not isinstance(tables, list):
        raise ConfigError(f"{label}: archives must be written as [[archive]] tables")
    archives = tuple(_archive(table, label, subs, n) for n, table in enumerate(tables, 1))
    seen: set[str] = set()
    for archive in archives:
        if archive.id in seen:
            raise ConfigError(f'{label}: archive "{archive.id}": duplicate id; each archive needs its own id')
        seen.add(archive.id)
    return archives


def _archive(table: Any, label: str, subs: Mapping[str, str], n: int) -> ArchiveConfig:
    raw_id = table.get("id") if isinstance(table, dict) else None
    check = _Checker(label, raw_id if isinstance(raw_id, str) else None)
    if not isinstance(table, dict):
        raise ConfigError(f"{label}: archive #{n} is not a table")
    archive_id = check.string(table, "id", required=True) or ""
    if not ID.match(archive_id):
        raise check.fail('"id" must be 1-63 lowercase letters, digits, "-" or "_"')
    check.keys(table, ARCHIVE_KEYS)
    kind = check.choice(table, "kind", ("fhir", "dicomweb"))
    base_url = _substitute(check.string(table, "base_url", required=True), subs, check, "base_url") or ""
    if not (kind == "fhir" and base_url == EHR):
        check.url(base_url, "base_url")
    auth = _auth(table.get("auth", {}), check, subs)
    if auth.kind == "ehr" and kind == "dicomweb" and base_url == EHR:
        raise check.fail('"base_url" "ehr" is only valid for kind "fhir"')
    identifier_system = check.string(table, "identifier_system")
    if identifier_system is None and not (kind == "fhir" and base_url == EHR):
        raise check.fail('missing key "identifier_system" (the FHIR identifier system of this archive\'s '
                         "patient ids)")
    issuer = check.string(table, "issuer_of_patient_id")
    if issuer is not None and kind != "dicomweb":
        raise check.fail('"issuer_of_patient_id" is only valid for kind "dicomweb"')
    pixm_url = _substitute(check.string(table, "pixm_url"), subs, check, "pixm_url")
    if pixm_url is not None:
        check.url(pixm_url, "pixm_url")
    return ArchiveConfig(
        id=archive_id,
        name=check.string(table, "name", required=True) or archive_id,
        kind=kind,  # type: ignore[arg-type]
        base_url=base_url.rstrip("/") if base_url != EHR else EHR,
        auth=auth,
        timeout_s=_number(table, "timeout_s", check, default=10.0, low=0.1, high=300.0),
        identifier_system=identifier_system,
        issuer_of_patient_id=issuer,
        viewer=_viewer(table.get("viewer"), check, subs),
        max_results=int(_number(table, "max_results", check, default=500, low=1, high=10_000, integer=True)),
        page_size=int(_number(table, "page_size", check, default=0, low=1, high=10_000, integer=True))
        if "page_size" in table else None,
        pixm_url=pixm_url.rstrip("/") if pixm_url else None,
    )


def _number(table: Mapping[str, Any], key: str, check: _Checker, *, default: float, low: float, high: float,
            integer: bool = False) -> float:
    value = table.get(key, default)
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise check.fail(f'"{key}" must be {kind} from {low:g} to {high:g} (got {value!r})')
    return float(value)


def _auth(table: Any, check: _Checker, subs: Mapping[str, str]) -> AuthConfig:
    if isinstance(table, str):  # shorthand: auth = "none" / "ehr"
        table = {"kind": table}
    if not isinstance(table, dict):
        raise check.fail('"auth" must be a table or one of none, ehr')
    check.keys(table, AUTH_KEYS, "auth.")
    kind = check.choice(table, "kind", ("none", "basic", "bearer", "ehr", "smart-backend"), "auth.",
                        default="none")
    for key in AUTH_NEEDS.get(kind, ()):
        check.string(table, key, "auth.", required=True)
    token_url = _substitute(check.string(table, "token_url", "auth."), subs, check, "auth.token_url")
    if token_url is not None:
        check.url(token_url, "auth.token_url")
    return AuthConfig(
        kind=kind,  # type: ignore[arg-type]
        username=check.string(table, "username", "auth."),
        password_env=check.string(table, "password_env", "auth."),
        token_env=check.string(table, "token_env", "auth."),
        client_id=check.string(table, "client_id", "auth."),
        token_url=token_url,
        scope=check.string(table, "scope", "auth.") or DEFAULT_BACKEND_SCOPE,
    )


def _viewer(table: Any, check: _Checker, subs: Mapping[str, str]) -> ViewerConfig | None:
    if table is None:
        return None
    if not isinstance(table, dict):
        raise check.fail('"viewer" must be a table with "kind" and "url"')
    check.keys(table, VIEWER_KEYS, "viewer.")
    kind = check.choice(table, "kind", ("ohif", "iid", "weasis", "url"), "viewer.")
    url = _substitute(check.string(table, "url", "viewer.", required=True), subs, check, "viewer.url",
                      strict=False) or ""
    via = check.choice(table, "via", ("direct", "gateway"), "viewer.", default="direct")
    from ..viewers import validate_viewer  # the viewer module owns its URL rules

    try:
        validate_viewer({"kind": kind, "url": url, "via": via}, check.archive_id or "?")
    except ConfigError as exc:
        raise ConfigError(f"{check.label}: {exc.message}") from None
    return ViewerConfig(kind=kind, url=url, via=via)  # type: ignore[arg-type]


# --- Discovery ------------------------------------------------------------------------------------


def discover_archives(smart_configuration: Mapping[str, Any], iss: str, configured: Iterable[ArchiveConfig] = (),
                      *, identifier_system: str | None = None) -> tuple[ArchiveConfig, ...]:
    """Extra DICOMweb archives the EHR advertises in `associated_endpoints` (SMART Imaging Access).

    Each entry with capability "smart-imaging-access" becomes a dicomweb archive that reuses the
    clinician's EHR token. Because that token may only go to the EHR's own origin, an endpoint on
    another origin is skipped (with a logged reason) rather than queried without or with credentials.
    Patients are looked up by their identifier in `identifier_system` (usually the EHR's MRN system);
    without one, the discovered archive reports "not linked".
    """
    known = {a.base_url for a in configured}
    ids = {a.id for a in configured}
    found: list[ArchiveConfig] = []
    endpoints = smart_configuration.get("associated_endpoints")
    for entry in endpoints if isinstance(endpoints, list) else ():
        if not isinstance(entry, dict):
            continue
        caps, url = entry.get("capabilities"), entry.get("url")
        if not isinstance(caps, list) or IMAGING_CAPABILITY not in caps:
            continue
        if not isinstance(url, str) or urlsplit(url).scheme not in {"http", "https"} or not urlsplit(url).hostname:
            log.info("associated endpoint skipped: url is not an http(s) URL")
            continue
        url = url.rstrip("/")
        if not same_origin(url, iss):
            log.info("associated endpoint %s skipped: not on the EHR's origin, so the EHR token may not be "
                     "sent there and no other credentials are configured", url)
            continue
        if url in known:
            continue
        host = urlsplit(url).hostname or "archive"
        base_id = "discovered-" + re.sub(r"[^a-z0-9-]", "-", host.lower())[:40]
        archive_id, n = base_id, 1
        while archive_id in ids:
            n += 1
            archive_id = f"{base_id}-{n}"
        ids.add(archive_id)
        known.add(url)
        found.append(ArchiveConfig(id=archive_id, name=host, kind="dicomweb", base_url=url,
                                   auth=AuthConfig(kind="ehr"), identifier_system=identifier_system,
                                   source="discovered"))
    return tuple(found)

