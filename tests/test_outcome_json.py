"""An archive's outcome survives the trip through the shared store unchanged (the study cache, search runs)."""

from __future__ import annotations

from datetime import UTC, date, datetime

from app.archives.base import LinkedOrder, LinkedReport, Subject
from app.federation import ArchiveOutcome, outcome_from_json
from app.models import ArchiveStatus, Identifier, Order, Report, Study, StudyEndpoint
from app.outcome_json import outcome_to_json

SUBJECT = Subject(reference="Patient/pat-1", identifiers=(Identifier("urn:oid:1.2", "MRN-1"),), dicom=False,
                  issuer_present=True, name="Jane Doe", birth_date=date(1970, 1, 1), sex="female")


def full_outcome() -> ArchiveOutcome:
    report = Report(id="dr-1", status="final", conclusion="No acute findings.",
                    issued=datetime(2024, 5, 1, 12, 30, tzinfo=UTC), abnormal=True, critical=False, source="ehr")
    order = Order(id="sr-1", priority="stat", status="active", code_text="CT head", accession="ACC-1", source="ehr")
    study = Study(uid="1.2.3", started=datetime(2024, 5, 1, 10, 0, tzinfo=UTC), modalities=("CT", "SR"),
                  description="CT head", body_sites=("head",), procedure_codes=("24725-4",), accession="ACC-1",
                  series_count=3, instance_count=120, referrer="Dr A", facility="Main", sources=["ehr", "pacs"],
                  reports=[report], orders=[order], endpoints=[StudyEndpoint("pacs", "https://pacs/dicom-web")],
                  badges=["identity: name differs"], ids=["is-1"],
                  matched_ids={"pacs": Identifier("SANDBOX-PACS", "MRN-1")})
    return ArchiveOutcome(
        status=ArchiveStatus("ehr", "EHR", "ok", count=1, ms=12, dropped=1, reason="1 withheld", skipped=2),
        studies=[study],
        reports=[LinkedReport(report=report, subject=SUBJECT, study_refs=("ImagingStudy/is-1",), accession="ACC-1",
                              study_uids={"1.2.3"})],
        orders=[LinkedOrder(order=order, subject=SUBJECT, refs=("ServiceRequest/sr-1",), study_uids={"1.2.3"})],
    )


def test_an_outcome_reads_back_equal_to_what_was_written():
    outcome = full_outcome()
    assert outcome_from_json(outcome_to_json(outcome)) == outcome


def test_an_outcome_with_empty_optional_fields_reads_back_equal():
    outcome = ArchiveOutcome(ArchiveStatus("pacs", "PACS", "not-linked", reason="no identifier"),
                             studies=[Study(uid="1.2")])
    assert outcome_from_json(outcome_to_json(outcome)) == outcome


def test_the_json_form_is_plain_json():
    import json

    assert json.loads(json.dumps(outcome_to_json(full_outcome())))["studies"][0]["uid"] == "1.2.3"
