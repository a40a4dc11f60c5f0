"""One audited access (who saw which patient's images, where, with what outcome) and its BALP AuditEvent.

The record is what `imaging-timeline audit` prints and what the store keeps; `to_fhir()` renders it
as a FHIR R4 AuditEvent following IHE Basic Audit Log Patterns (BALP 1.1, ITI TF Vol 1 §52):

- `type` audit-event-type#rest; `subtype` restful-interaction#read for a single resource (report,
  thumbnail, viewer opening, timeline page) and #search-type for a study list (BALP "Query"),
  with `action` R (read) or E (execute: BALP uses E for queries).
- agents (BALP "PatientRead"/"PatientQuery"): the user (v3-ParticipationType#IRCP, information
  recipient, `requestor` true, `who.identifier` fhirUser, `network.address` the clinician's IP),
  the client (DCM#110153 Source Role ID: the SMART client id), the server (DCM#110152
  Destination Role ID: this app).
- entities: the patient (audit-entity-type#1 Person, object-role#1 Patient, `what` Patient/<id>),
  each study (audit-entity-type#2 System Object, object-role#4 Domain Resource, `what.identifier`
  urn:dicom:uid), each report (object-role#3 Report, `what` DiagnosticReport/<id>) and, for a
  list, the query (object-role#24 Query).
- `outcome` 0 success, 4 minor failure (e.g. one archive failed), 8 serious failure.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

Action = Literal["view-timeline", "list-studies", "read-report", "thumbnail", "open-viewer"]
Outcome = Literal["success", "minor-failure", "serious-failure"]
ACTIONS: tuple[str, ...] = ("view-timeline", "list-studies", "read-report", "thumbnail", "open-viewer")
OUTCOMES: tuple[str, ...] = ("success", "minor-failure", "serious-failure")

DCM = "http://dicom.nema.org/resources/ontology/DCM"
BALP = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit"
FHIR_OUTCOME = {"success": "0", "minor-failure": "4", "serious-failure": "8"}
# Which BALP profile and REST interaction each action is (a list is a query, the rest are reads).
INTERACTION = {"view-timeline": "read", "list-studies": "search-type", "read-report": "read",
               "thumbnail": "read", "open-viewer": "read"}


def _utc(moment: datetime) -> str:
    """One fixed text form (UTC, microseconds) so stored times compare as strings in SQLite."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class AuditEvent:
    """Who (user, client, address) did what (action on patient, studies, reports) where (archive), and how it went."""

    action: Action
    patient: str
    user: str | None
    client_id: str | None = None
    address: str | None = None
    iss: str | None = None
    studies: tuple[str, ...] = ()
    reports: tuple[str, ...] = ()
    archive: str | None = None
    outcome: Outcome = "success"
    recorded: datetime = field(default_factory=lambda: datetime.now(UTC))
    id: str | None = None

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f'Audit action "{self.action}" must be one of {", ".join(ACTIONS)}.')
        if self.outcome not in OUTCOMES:
            raise ValueError(f'Audit outcome "{self.outcome}" must be one of {", ".join(OUTCOMES)}.')
        if not self.patient:
            raise ValueError("An audit event must name the patient.")

    @property
    def recorded_text(self) -> str:
        return _utc(self.recorded)

    def to_json(self) -> dict[str, Any]:
        """The `imaging-timeline audit --format json` object (and what the store keeps)."""
        return {"id": self.id, "action": self.action, "patient": self.patient, "user": self.user,
                "client_id": self.client_id, "address": self.address, "iss": self.iss,
                "studies": list(self.studies), "reports": list(self.reports), "archive": self.archive,
                "outcome": self.outcome, "recorded": self.recorded_text}

    @classmethod
    def from_json(cls, data: dict[str, Any], id: str | None = None) -> AuditEvent:
        return cls(action=data["action"], patient=data["patient"], user=data.get("user"),
                   client_id=data.get("client_id"), address=data.get("address"), iss=data.get("iss"),
                   studies=tuple(data.get("studies") or ()), reports=tuple(data.get("reports") or ()),
                   archive=data.get("archive"), outcome=data.get("outcome", "success"),
                   recorded=datetime.fromisoformat(data["recorded"].replace("Z", "+00:00")),
                   id=id if id is not None else data.get("id"))

    def to_fhir(self, observer: str = "imaging-timeline") -> dict[str, Any]:
        """The event as a FHIR R4 AuditEvent shaped by BALP PatientRead / PatientQuery."""
        interaction = INTERACTION[self.action]
        query = interaction == "search-type"
        profile = f"{BALP}.PatientQuery" if query else f"{BALP}.PatientRead"
        user_agent: dict[str, Any] = {
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                 "code": "IRCP", "display": "information recipient"}]},
            "requestor": True,
        }
        if self.user:
            user_agent["who"] = {"identifier": {"value": self.user}}
        if self.address:
            user_agent["network"] = {"address": self.address, "type": "2"}  # 2: IP address
        agents = [
            user_agent,
            {"type": {"coding": [{"system": DCM, "code": "110153", "display": "Source Role ID"}]},
             "who": {"display": self.client_id or "unknown client"}, "requestor": False},
            {"type": {"coding": [{"system": DCM, "code": "110152", "display": "Destination Role ID"}]},
             "who": {"display": observer}, "requestor": False},
        ]
        entities: list[dict[str, Any]] = [
            _entity("1", "Person", "1", "Patient", what={"reference": f"Patient/{self.patient}"})]
        for uid in self.studies:
            entities.append(_entity("2", "System Object", "4", "Domain Resource", what={
                "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}, "display": "ImagingStudy"}))
        for report in self.reports:
            entities.append(_entity("2", "System Object", "3", "Report",
                                    what={"reference": f"DiagnosticReport/{report}"}))
        if query:
            description = json.dumps({"patient": self.patient, "archive": self.archive}, separators=(",", ":"))
            entities.append(_entity("2", "System Object", "24", "Query",
                                    query=base64.b64encode(description.encode()).decode()))
        resource: dict[str, Any] = {
            "resourceType": "AuditEvent",
            "meta": {"profile": [profile]},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest",
                     "display": "Restful Operation"},
            "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": interaction}],
            "action": "E" if query else "R",
            "recorded": self.recorded_text,
            "outcome": FHIR_OUTCOME[self.outcome],
            "outcomeDesc": self.action if self.archive is None else f"{self.action} ({self.archive})",
            "agent": agents,
            "source": {"observer": {"display": observer},
                       "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                                 "code": "4", "display": "Application Server"}]},
            "entity": entities,
        }
        if self.archive:
            # Where: the archive the studies came from, as entity detail (FHIR R4 AuditEvent.entity.detail).
            for entity in entities[1:]:
                entity["detail"] = [{"type": "archive", "valueString": self.archive}]
        return resource


def _entity(type_code: str, type_display: str, role_code: str, role_display: str, **fields: Any) -> dict[str, Any]:
    """An AuditEvent.entity: its audit-entity-type and object-role codings, then `what` or `query`."""
    entity: dict[str, Any] = {k: v for k, v in fields.items() if k == "what"}
    entity["type"] = {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": type_code,
                      "display": type_display}
    entity["role"] = {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": role_code,
                      "display": role_display}
    entity.update({k: v for k, v in fields.items() if k != "what"})
    return entity
