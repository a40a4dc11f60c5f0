"""Sandbox settings: registered OAuth clients, token lifetimes, archive latency and faults, scope style."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

from .data import SandboxData

AuthMethod = Literal["none", "client_secret_basic", "private_key_jwt"]
ARCHIVE_IDS = ("ehr", "outside", "dicomweb", "auth")
FAULTS = ("500", "503", "401", "timeout", "garbage")
RESOURCE_TYPES = ("Patient", "Practitioner", "Encounter", "ImagingStudy", "DiagnosticReport",
                  "ServiceRequest", "Endpoint", "DocumentReference", "Binary")
CONTEXT_SCOPES = ("openid", "fhirUser", "profile", "launch", "launch/patient", "launch/encounter",
                  "offline_access", "online_access")


def supported_scopes(smart_versions: str) -> tuple[str, ...]:
    """Every scope the sandbox grants: v2 (`.rs`, `.r`, `.s`) and v1 (`.read`), or v1 only."""
    kinds = ("read",) if smart_versions == "v1" else ("rs", "r", "s", "read")
    clinical = tuple(f"{level}/{rtype}.{perm}"
                     for level in ("patient", "user", "system")
                     for rtype in ("*", *RESOURCE_TYPES)
                     for perm in kinds)
    # The EHR doubles as an audit repository (FHIR R4 AuditEvent create/search, IHE BALP): apps
    # forward their audit events with a backend-services token.
    audit = ("system/AuditEvent.read", "system/AuditEvent.write") if smart_versions == "v1" else (
        "system/AuditEvent.c", "system/AuditEvent.rs")
    return CONTEXT_SCOPES + clinical + audit


@dataclass(frozen=True, slots=True)
class SandboxClient:
    """One registered OAuth client (SMART App Launch 2.x "Client registration")."""

    client_id: str
    redirect_uris: tuple[str, ...] = ()
    token_endpoint_auth_method: AuthMethod = "none"
    client_secret: str | None = None
    jwks_uri: str | None = None
    jwks: Mapping[str, Any] | None = None
    scope: str | None = None  # allowed scopes, space separated; None: every supported scope
    grant_types: tuple[str, ...] = ("authorization_code", "refresh_token")

    def __post_init__(self) -> None:
        method = self.token_endpoint_auth_method
        if method == "client_secret_basic" and not self.client_secret:
            raise ValueError(f'Client "{self.client_id}": client_secret_basic needs a client_secret.')
        if method == "private_key_jwt" and not (self.jwks_uri or self.jwks):
            raise ValueError(f'Client "{self.client_id}": private_key_jwt needs jwks_uri or jwks.')
        if method not in ("none", "client_secret_basic", "private_key_jwt"):
            raise ValueError(f'Client "{self.client_id}": unknown token_endpoint_auth_method "{method}".')
        if "client_credentials" in self.grant_types and method != "private_key_jwt":
            raise ValueError(f'Client "{self.client_id}": client_credentials needs private_key_jwt '
                             "(SMART Backend Services).")


@dataclass(frozen=True)
class SandboxConfig:
    """Everything the sandbox needs; the signing key is generated at start, never configured."""

    app_launch_url: str
    clients: tuple[SandboxClient, ...] = ()
    access_token_lifetime_s: int = 300
    refresh_token_lifetime_s: int = 3600
    launch_lifetime_s: int = 300
    code_lifetime_s: int = 120
    delays: Mapping[str, float] = field(default_factory=dict)  # archive id -> seconds
    faults: Mapping[str, str] = field(default_factory=dict)  # archive id -> one of FAULTS
    fault_timeout_s: float = 30.0  # how long a "timeout" fault stalls before answering 504
    smart_versions: Literal["v2", "v1"] = "v2"
    advertise_imaging_endpoints: bool = False
    dicomweb_patient_id_case_insensitive: bool = False  # Orthanc-like matching (a trap)
    dicomweb_basic_auth: tuple[str, str] | None = None  # (username, password); None: no auth
    today: date | None = None  # "now" for the synthetic dates; None: date.today()
    data: SandboxData | None = None  # None: data.standard_data(today)
    page_size: int = 50
    max_page_size: int = 200
    jwks_timeout_s: float = 5.0
    cds_services_url: str | None = None  # the app's CDS Hooks base (…/cds-services): the chart calls it

    def __post_init__(self) -> None:
        for key, fault in self.faults.items():
            if key not in ARCHIVE_IDS or fault not in FAULTS:
                raise ValueError(f'faults["{key}"] = "{fault}": archive must be one of {ARCHIVE_IDS}, '
                                 f"fault one of {FAULTS}.")
        for key in self.delays:
            if key not in ARCHIVE_IDS:
                raise ValueError(f'delays["{key}"]: archive must be one of {ARCHIVE_IDS}.')
        if self.smart_versions not in ("v1", "v2"):
            raise ValueError(f'smart_versions must be "v1" or "v2" (got "{self.smart_versions}").')
