"""The JSON form of one archive's outcome (status, guarded studies, reports, orders) for the shared store.

The per-session study cache and a search run's progress live in the session store, so that any
process can read what another process's search found. Only outcomes that already passed the
wrong-patient guard are written; reading one back re-creates the same typed objects.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from .archives.base import LinkedOrder, LinkedReport, Subject
from .models import ArchiveStatus, Identifier, Order, Report, Study, StudyEndpoint

if TYPE_CHECKING:
    from .federation import ArchiveOutcome

OutcomeParts = tuple[ArchiveStatus, list[Study], list[LinkedReport], list[LinkedOrder]]


def _ident(data: dict[str, Any]) -> Identifier:
    return Identifier(data["system"], data["value"])


def _subject_json(subject: Subject) -> dict[str, Any]:
    return {"reference": subject.reference, "identifiers": [[i.system, i.value] for i in subject.identifiers],
            "dicom": subject.dicom, "issuer_present": subject.issuer_present, "name": subject.name,
            "birth_date": subject.birth_date.isoformat() if subject.birth_date else None, "sex": subject.sex}


def _subject(data: dict[str, Any]) -> Subject:
    return Subject(reference=data["reference"], identifiers=tuple(Identifier(s, v) for s, v in data["identifiers"]),
                   dicom=data["dicom"], issuer_present=data["issuer_present"], name=data["name"],
                   birth_date=date.fromisoformat(data["birth_date"]) if data["birth_date"] else None,
                   sex=data["sex"])


def _report(data: dict[str, Any]) -> Report:
    return Report(**{**data, "issued": datetime.fromisoformat(data["issued"]) if data["issued"] else None})


def _report_json(report: Report) -> dict[str, Any]:
    return {"id": report.id, "status": report.status, "conclusion": report.conclusion,
            "issued": report.issued.isoformat() if report.issued else None, "abnormal": report.abnormal,
            "critical": report.critical, "source": report.source}


def study_from_json(data: dict[str, Any]) -> Study:
    """The inverse of Study.to_json."""
    return Study(
        uid=data["uid"], started=datetime.fromisoformat(data["started"]) if data["started"] else None,
        modalities=tuple(data["modalities"]), description=data["description"], body_sites=tuple(data["body_sites"]),
        procedure_codes=tuple(data["procedure_codes"]), accession=data["accession"],
        series_count=data["series_count"], instance_count=data["instance_count"], referrer=data["referrer"],
        facility=data["facility"], sources=list(data["sources"]), reports=[_report(r) for r in data["reports"]],
        orders=[Order(**o) for o in data["orders"]], endpoints=[StudyEndpoint(**e) for e in data["endpoints"]],
        badges=list(data["badges"]), ids=list(data["ids"]),
        matched_ids={k: _ident(v) for k, v in data["matched_ids"].items()},
    )


def outcome_to_json(outcome: ArchiveOutcome) -> dict[str, Any]:
    return {
        "status": outcome.status.to_json(),
        "studies": [s.to_json() for s in outcome.studies],
        "reports": [{"report": _report_json(r.report), "subject": _subject_json(r.subject),
                     "study_refs": list(r.study_refs), "accession": r.accession,
                     "study_uids": sorted(r.study_uids)} for r in outcome.reports],
        "orders": [{"order": {"id": o.order.id, "priority": o.order.priority, "status": o.order.status,
                              "code_text": o.order.code_text, "accession": o.order.accession,
                              "source": o.order.source},
                    "subject": _subject_json(o.subject), "refs": list(o.refs),
                    "study_uids": sorted(o.study_uids)} for o in outcome.orders],
    }


def outcome_parts(data: dict[str, Any]) -> OutcomeParts:
    """(status, studies, reports, orders) of an outcome_to_json record."""
    status = ArchiveStatus(**data["status"])
    studies = [study_from_json(s) for s in data["studies"]]
    reports = [LinkedReport(report=_report(r["report"]), subject=_subject(r["subject"]),
                            study_refs=tuple(r["study_refs"]), accession=r["accession"],
                            study_uids=set(r["study_uids"])) for r in data["reports"]]
    orders = [LinkedOrder(order=Order(**o["order"]), subject=_subject(o["subject"]), refs=tuple(o["refs"]),
                          study_uids=set(o["study_uids"])) for o in data["orders"]]
    return status, studies, reports, orders
