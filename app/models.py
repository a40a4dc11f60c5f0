"""Typed domain objects shared by the launch, federation and timeline code.

Templates and the JSON API read these fields; nothing outside the archive adapters reads raw
FHIR or DICOM JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class Identifier:
    """A patient identifier in one identifier domain (FHIR `system`, DICOM issuer)."""

    system: str
    value: str


@dataclass(frozen=True, slots=True)
class PatientSummary:
    """The launched patient as the EHR knows them."""

    id: str
    name: str
    birth_date: date | None = None
    sex: str | None = None  # FHIR administrative gender: male | female | other | unknown
    identifiers: tuple[Identifier, ...] = ()

    def identifier_in(self, system: str) -> str | None:
        """The patient's identifier value in `system` (exact match), or None."""
        for ident in self.identifiers:
            if ident.system == system:
                return ident.value
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "birthDate": self.birth_date.isoformat() if self.birth_date else None,
            "gender": self.sex,
            "identifiers": [{"system": i.system, "value": i.value} for i in self.identifiers],
        }


@dataclass(frozen=True, slots=True)
class LaunchContext:
    """What the EHR told us at launch: who, for which patient, with which grants."""

    iss: str
    patient_id: str | None
    granted_scopes: frozenset[str]
    encounter_id: str | None = None
    fhir_context: tuple[str, ...] = ()  # references such as "ImagingStudy/123"
    need_patient_banner: bool = False
    smart_style_url: str | None = None
    intent: str | None = None
    tenant: str | None = None
    fhir_user: str | None = None  # absolute URL of the user resource
    launch_kind: Literal["ehr", "standalone"] = "ehr"

    def can_read(self, resource_type: str) -> bool:
        """Whether the granted scopes allow reading `resource_type` for the patient.

        Accepts SMART v2 (`patient/X.rs`, `.r`, `.cruds`) and v1 (`patient/X.read`, `.*`)
        forms, and wildcards (`patient/*.rs`); `user/` scopes count too (SMART App Launch
        2.x, section "Scopes for requesting clinical data").
        """
        for scope in self.granted_scopes:
            level, _, rest = scope.partition("/")
            if level not in {"patient", "user", "system"} or not rest:
                continue
            rtype, _, perms = rest.partition(".")
            perms = perms.split("?", 1)[0]
            if rtype not in {resource_type, "*"}:
                continue
            if perms in {"read", "*"} or ("r" in perms and perms.isalpha() and perms != "write"):
                return True
        return False


@dataclass(frozen=True, slots=True)
class Report:
    """A DiagnosticReport linked to a study."""

    id: str
    status: str  # registered | partial | preliminary | final | amended | corrected | ...
    conclusion: str | None = None
    issued: datetime | None = None
    abnormal: bool = False  # an abnormal interpretation or conclusion code
    critical: bool = False  # a critical result flag
    source: str | None = None  # archive id
    # What /api/reports/<source>/<id> reads: "DiagnosticReport", "DocumentReference" (id prefixed
    # "DocumentReference:"), or "dicom" (id = StudyInstanceUID: the study's SR / Encapsulated PDF).
    kind: str = "DiagnosticReport"


@dataclass(frozen=True, slots=True)
class Order:
    """A ServiceRequest (imaging order) linked to a study."""

    id: str
    priority: str | None = None  # routine | urgent | asap | stat
    status: str | None = None
    code_text: str | None = None
    accession: str | None = None
    source: str | None = None
    occurrence: datetime | None = None  # ServiceRequest.occurrence[x]: when it is scheduled
    location: str | None = None  # where (ServiceRequest.locationReference display)
    encounter: str | None = None  # the Encounter id it was placed in (ServiceRequest.encounter)


@dataclass(frozen=True, slots=True)
class StudyEndpoint:
    """Where a study's images can be fetched (a configured archive only)."""

    archive_id: str
    address: str  # DICOMweb base URL
    # SMART Imaging Access `requires-access-token` on an Endpoint outside every configured archive:
    # True = the clinician's token (EHR origin only), False = a capability URL (no token); None =
    # the endpoint lies under a configured archive, whose own credentials apply.
    token: bool | None = None
    name: str | None = None


@dataclass(slots=True)
class Study:
    """One imaging study, merged across every archive that holds it."""

    uid: str  # StudyInstanceUID
    started: datetime | None = None
    modalities: tuple[str, ...] = ()
    description: str | None = None
    body_sites: tuple[str, ...] = ()
    procedure_codes: tuple[str, ...] = ()
    accession: str | None = None
    series_count: int | None = None
    instance_count: int | None = None
    referrer: str | None = None
    facility: str | None = None
    sources: list[str] = field(default_factory=list)  # archive ids
    reports: list[Report] = field(default_factory=list)
    orders: list[Order] = field(default_factory=list)
    endpoints: list[StudyEndpoint] = field(default_factory=list)
    badges: list[str] = field(default_factory=list)  # e.g. "identity: name differs"
    ids: list[str] = field(default_factory=list)  # the launching EHR's ImagingStudy ids (for fhirContext)
    # Where images are held that no configured archive can show (ImagingStudy.endpoint names elsewhere).
    elsewhere: list[str] = field(default_factory=list)
    # The identifier each source matched on: {archive_id: Identifier}
    matched_ids: dict[str, Identifier] = field(default_factory=dict)
    # How an archive spells the patient's name where it differs from the EHR: {archive_id: name}
    other_names: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The study as JSON-ready dicts, built field by field (`asdict` deep-copies: 10x slower)."""
        return {
            "uid": self.uid,
            "started": self.started.isoformat() if self.started else None,
            "modalities": list(self.modalities),
            "description": self.description,
            "body_sites": list(self.body_sites),
            "procedure_codes": list(self.procedure_codes),
            "accession": self.accession,
            "series_count": self.series_count,
            "instance_count": self.instance_count,
            "referrer": self.referrer,
            "facility": self.facility,
            "sources": list(self.sources),
            "reports": [{"id": r.id, "status": r.status, "conclusion": r.conclusion,
                         "issued": r.issued.isoformat() if r.issued else None, "abnormal": r.abnormal,
                         "critical": r.critical, "source": r.source, "kind": r.kind} for r in self.reports],
            "orders": [{"id": o.id, "priority": o.priority, "status": o.status, "code_text": o.code_text,
                        "accession": o.accession, "source": o.source,
                        "occurrence": o.occurrence.isoformat() if o.occurrence else None, "location": o.location,
                        "encounter": o.encounter} for o in self.orders],
            "endpoints": [{"archive_id": e.archive_id, "address": e.address, "token": e.token, "name": e.name}
                          for e in self.endpoints],
            "badges": list(self.badges),
            "ids": list(self.ids),
            "elsewhere": list(self.elsewhere),
            "matched_ids": {k: {"system": v.system, "value": v.value} for k, v in self.matched_ids.items()},
            "other_names": dict(self.other_names),
        }


ArchiveState = Literal["searching", "ok", "not-linked", "timeout", "error"]


@dataclass(frozen=True, slots=True)
class ArchiveStatus:
    """How one archive answered for this patient."""

    id: str
    name: str
    status: ArchiveState
    count: int = 0
    ms: int | None = None
    dropped: int = 0  # studies withheld by the wrong-patient guard
    reason: str | None = None
    source: str = "config"  # "config" or "discovered"
    skipped: int = 0  # unusable records (no StudyInstanceUID, invalid date), not identity problems
    error: str | None = None  # the ArchiveError code when status is "error"/"timeout"
    message: str | None = None  # plain words for clinicians (no OIDs, no protocol names)
    detail: str | None = None  # the technical detail for integrators (behind a "details" disclosure)
    partial: bool = False  # the answer was cut (deadline, max_results, page cap); `reason` says so
    retry: bool = False  # "try again" makes sense (a timeout or a failure that may pass)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
