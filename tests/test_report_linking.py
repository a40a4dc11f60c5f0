"""Reading SR content trees, and linking a radiology note to its study when it has no reference."""

from __future__ import annotations

from datetime import date, datetime

from pydicom import Dataset

from app.archives.base import LinkedReport, Subject
from app.archives.dicomweb_reports import sr_content, sr_status
from app.federation import link
from app.models import Report, Study


def code(value: str, meaning: str, scheme: str = "DCM") -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def item(value_type: str, name: str, **values) -> Dataset:
    ds = Dataset()
    ds.RelationshipType, ds.ValueType = "CONTAINS", value_type
    ds.ConceptNameCodeSequence = [code("x", name)]
    for key, value in values.items():
        setattr(ds, key, value)
    return ds


def test_a_comprehensive_sr_tree_reads_as_sections_with_codes_and_measurements():
    measured = Dataset()
    measured.NumericValue = "12"
    measured.MeasurementUnitsCodeSequence = [code("mm", "millimeter", "UCUM")]
    nodule = item("CONTAINER", "Nodule 1", ContinuityOfContent="SEPARATE", ContentSequence=[
        item("CODE", "Finding site", ConceptCodeSequence=[code("45653009", "Upper lobe of left lung", "SCT")]),
        item("NUM", "Diameter", MeasuredValueSequence=[measured]),
    ])
    findings = item("CONTAINER", "Findings", ContinuityOfContent="SEPARATE", ContentSequence=[
        item("TEXT", "Finding", TextValue="One solid nodule."), nodule])
    impression = item("CONTAINER", "Impressions", ContinuityOfContent="SEPARATE", ContentSequence=[
        item("TEXT", "Impression", TextValue="Lung-RADS 4A.")])
    ds = Dataset()
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [code("18748-4", "Diagnostic Imaging Report", "LN")]
    ds.ContentSequence = [findings, impression]
    ds.CompletionFlag, ds.VerificationFlag = "PARTIAL", "UNVERIFIED"

    title, sections, text = sr_content(ds)

    assert title == "Diagnostic Imaging Report"
    assert [(s.title, s.text) for s in sections] == [
        ("Findings", "One solid nodule.\nNodule 1\nFinding site: Upper lobe of left lung\nDiameter: 12 mm"),
        ("Impressions", "Lung-RADS 4A.")]
    assert text.startswith("Findings\nOne solid nodule.")
    assert sr_status(ds) == "preliminary"


def study(uid: str, day: datetime, modality: str) -> Study:
    return Study(uid=uid, started=day, modalities=(modality,))


def note(day: date | None, modalities: tuple[str, ...], accession: str | None = None) -> LinkedReport:
    return LinkedReport(report=Report(id="DocumentReference:n1", status="final", kind="DocumentReference"),
                        subject=Subject(), accession=accession, day=day, modalities=modalities)


def test_a_note_without_reference_or_accession_links_by_day_and_modality():
    ct, us = study("1.1", datetime(2024, 3, 1, 9), "CT"), study("1.2", datetime(2024, 3, 1, 11), "US")
    assert link([ct, us], [note(date(2024, 3, 1), ("US",))], []) == {"1.2"}
    assert [r.id for r in us.reports] == ["DocumentReference:n1"] and ct.reports == []


def test_day_and_modality_never_guess_between_two_studies():
    a, b = study("1.1", datetime(2024, 3, 1, 9), "CT"), study("1.2", datetime(2024, 3, 1, 15), "CT")
    assert link([a, b], [note(date(2024, 3, 1), ("CT",))], []) == set()


def test_an_accession_wins_over_day_and_modality():
    a, b = study("1.1", datetime(2024, 3, 1, 9), "CT"), study("1.2", datetime(2024, 3, 2, 9), "CT")
    b.accession = "ACC-9"
    assert link([a, b], [note(date(2024, 3, 1), ("CT",), accession="ACC-9")], []) == {"1.2"}
