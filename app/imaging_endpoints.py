"""Image endpoints outside the configured archives: SMART Imaging Access `requires-access-token` (Argonaut draft).

An ImagingStudy's WADO-RS Endpoint that lies under no configured archive is used only when it
says how it is authorised (extension `requires-access-token`):

* ``true``: the clinician's SMART token is presented, and only when the endpoint is on the origin
  of the FHIR server that returned it and that server itself is read with the clinician's token
  (the token never goes to a server it was not issued for; app/archives/auth.py binds it to the
  launch `iss` origin as well);
* ``false``: a capability URL; it is read with no credentials at all;
* absent: ignored, as before (no way to know what it needs).

A usable endpoint becomes a per-session image source for thumbnails (`/api/thumbnail/<id>/<uid>`),
remembered as its study is shown; it is never searched for studies.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from flask import current_app

from .archives.config import ArchiveConfig, AuthConfig
from .http import same_origin
from .models import Study, StudyEndpoint
from .session_store import store

REQUIRES_ACCESS_TOKEN = "http://fhir.org/argonaut/smart-imaging/StructureDefinition/requires-access-token"
PREFIX = "endpoint-"


def requires_access_token(endpoint: Any) -> bool | None:
    """The Endpoint's requires-access-token value, or None when absent (or not a boolean)."""
    for ext in endpoint.get("extension") or [] if isinstance(endpoint, dict) else []:
        if isinstance(ext, dict) and ext.get("url") == REQUIRES_ACCESS_TOKEN and isinstance(ext.get("valueBoolean"),
                                                                                             bool):
            return bool(ext["valueBoolean"])
    return None


def endpoint_id(address: str) -> str:
    return PREFIX + hashlib.sha256(address.encode()).hexdigest()[:12]


def usable(endpoint: Any, address: str, fhir_base: str, fhir_auth: str) -> StudyEndpoint | None:
    """The StudyEndpoint for an endpoint outside the configured archives, when its extension allows one."""
    token = requires_access_token(endpoint)
    if token is None:
        return None
    if token and not (fhir_auth == "ehr" and same_origin(address, fhir_base)):
        return None  # it wants the clinician's token on another origin: never sent there
    address = address.rstrip("/")
    name = endpoint.get("name") if isinstance(endpoint.get("name"), str) else None
    return StudyEndpoint(endpoint_id(address), address, token=token, name=name or urlsplit(address).hostname)


def archive_config(endpoint: StudyEndpoint) -> ArchiveConfig:
    """The endpoint as a DICOMweb image source (never searched): the EHR token, or no credentials."""
    return ArchiveConfig(id=endpoint.archive_id, name=endpoint.name or "Image endpoint", kind="dicomweb",
                         base_url=endpoint.address, auth=AuthConfig(kind="ehr" if endpoint.token else "none"),
                         source="discovered")


def _key(session_id: str) -> str:
    return f"endpoints:{session_id}"


def remember(session_id: str, studies: Iterable[Study]) -> None:
    """Keep this session's usable endpoints (address and token rule), so their thumbnails can be fetched."""
    found = {e.archive_id: {"address": e.address, "token": e.token, "name": e.name}
             for s in studies for e in s.endpoints if e.token is not None}
    if not found:
        return
    known = store().get(_key(session_id)) or {}
    if found.keys() - known.keys():
        store().put(_key(session_id), {**known, **found}, current_app.config["SESSION_TTL_S"])


def lookup(session_id: str, archive_id: str) -> ArchiveConfig | None:
    if not archive_id.startswith(PREFIX):
        return None
    rec = (store().get(_key(session_id)) or {}).get(archive_id)
    if not isinstance(rec, dict):
        return None
    return archive_config(StudyEndpoint(archive_id, rec["address"], token=bool(rec["token"]), name=rec.get("name")))
