"""An archive's outcome survives the trip through the shared store unchanged (the study cache, search runs)."""

from __future__ import annotations

from datetime import UTC, date, datetime

from app.archives.base import LinkedOrder, LinkedReport, Subject
from app.federation import ArchiveOutcome, outcome_from_json
from app.models import ArchiveStatus, Identifier, Order, Report, Study, StudyEndpoint
from app.outcome_json import outcome_to_json

SUBJECT = Subject(reference="Patient/pat-1", identifiers=(Identifier("urn:oid:1.2", "MRN-1"),), dicom=True,
                  issuer_present=False, name="Jane Doe", birth_date=date(1970, 1, 1), sex="female")


def full_outcome() -> ArchiveOutcome:
    report = Report(id="dr-1", status="final", conclusion="No acute findings.",
                    issued=datetime(2024, 5, 1, 12, 30, tzinfo=UTC), abnormal=True, critical=True, source="ehr",
                    kind="DocumentReference")
    order = Order(id="sr-1", priority="stat", status="active", code_text="CT head", accession="ACC-1", source="ehr",
                  occurrence=datetime(2024, 5, 2, 9, 0, tzinfo=UTC), location="Riverside", encounter="enc-1")
    study = Study(uid="1.2.3", started=datetime(2024, 5, 1, 10, 0, tzinfo=UTC), modalities=("CT", "SR"),
                  description="CT head", body_sites=("head",), procedure_codes=("24725-4",), accession="ACC-1",
                  series_count=3, instance_count=120, referrer="Dr A", facility="Main", sources=["ehr", "pacs"],
                  reports=[report], orders=[order],
                  endpoints=[StudyEndpoint("pacs", "https://pacs/dicom-web", token=False, name="PACS")],
                  badges=["identity: name differs"], ids=["is-1"], elsewhere=["Riverside legacy PACS"],
                  matched_ids={"pacs": Identifier("SANDBOX-PACS", "MRN-1")}, other_names={"pacs": "Jane Doh"})
    return ArchiveOutcome(
        status=ArchiveStatus("ehr", "EHR", "ok", count=1, ms=12, dropped=1, reason="1 withheld", source="discovered",
                             skipped=2, error="archive-timeout", message="Searched", detail="HTTP 200",
                             partial=True, retry=True),
        studies=[study],
        reports=[LinkedReport(report=report, subject=SUBJECT, study_refs=("ImagingStudy/is-1",), accession="ACC-1",
                              study_uids={"1.2.3"}, day=date(2024, 5, 1), modalities=("CT",))],
        orders=[LinkedOrder(order=order, subject=SUBJECT, refs=("ServiceRequest/sr-1",), study_uids={"1.2.3"})],
        withheld=[{"archive": "pacs", "reason": "birth date differs", "summary": "XR pelvis, 2023",
                   "action": "ask HIM to reconcile"}],
    )


def _non_defaults(obj, path="outcome"):
    """Every dataclass field in `obj`'s tree that still holds its default (the fixture must fill them all)."""
    import dataclasses

    found = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        if value == default:
            found.append(f"{path}.{f.name}")
        items = value if isinstance(value, list | tuple) else [value]
        for item in items:
            if dataclasses.is_dataclass(item):
                found += _non_defaults(item, f"{path}.{f.name}")
    return found


def test_the_round_trip_fixture_fills_every_field():
    # A field added to a model later must be added here too, so the round trip below covers it.
    assert _non_defaults(full_outcome()) == []


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
