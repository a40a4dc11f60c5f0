"""The wrong-patient guard: query by identifier only, keep only exact matches, withhold demographic conflicts."""

from __future__ import annotations

from datetime import date

import pytest
from conftest import MRN_SYSTEM, OUTSIDE_SYSTEM

from app import identity
from app.archives.base import Candidate, PatientRef, Subject
from app.archives.config import ArchiveConfig, AuthConfig
from app.errors import ArchiveNotLinked
from app.models import Identifier, Study

ISS = "https://ehr.example.org/fhir"
EHR_REF = PatientRef("ehr", ISS, patient_id="pat-1")
PACS_REF = PatientRef("pacs", "https://pacs", identifier=Identifier(MRN_SYSTEM, "MRN-1001"), issuer="EAST")
PACS_NO_ISSUER = PatientRef("pacs", "https://pacs", identifier=Identifier(MRN_SYSTEM, "MRN-1001"))
OUTSIDE_REF = PatientRef("outside", "https://out", identifier=Identifier(OUTSIDE_SYSTEM, "OUT-77"))


def archive(**changes) -> ArchiveConfig:
    fields = {"id": "pacs", "name": "PACS", "kind": "dicomweb", "base_url": "https://pacs",
              "identifier_system": MRN_SYSTEM, "issuer_of_patient_id": "EAST"}
    return ArchiveConfig(**{**fields, **changes})


def test_the_ehr_is_linked_by_the_launched_patient_id(jane):
    ehr = ArchiveConfig(id="ehr", name="EHR", kind="fhir", base_url="ehr", auth=AuthConfig(kind="ehr"))

    assert identity.link(jane, ehr, ISS) == EHR_REF


def test_an_archive_is_linked_by_the_identifier_in_its_domain_and_its_issuer(jane):
    assert identity.link(jane, archive(), ISS) == PACS_REF


def test_an_archive_without_an_identifier_for_the_patient_is_not_linked(jane):
    with pytest.raises(ArchiveNotLinked, match=r"^not linked \(no identifier in domain urn:oid:9\.9\)$"):
        identity.link(jane, archive(identifier_system="urn:oid:9.9"), ISS)


def test_an_archive_without_an_identifier_domain_is_not_linked(jane):
    with pytest.raises(ArchiveNotLinked, match=r"^not linked \(no identifier domain configured for this archive\)$"):
        identity.link(jane, archive(identifier_system=None), ISS)


def dicom(patient_id: str, issuer: str | None) -> Subject:
    return Subject(identifiers=(Identifier(issuer or "", patient_id),), dicom=True, issuer_present=issuer is not None)


@pytest.mark.parametrize(("subject", "ref", "same"), [
    (dicom("MRN-1001", "EAST"), PACS_REF, True),
    (dicom("MRN-1001 ", "EAST"), PACS_REF, True),  # DICOM LO padding is not significant
    (dicom("mrn-1001", "EAST"), PACS_REF, False),  # Orthanc matches case-insensitively; we do not
    (dicom("MRN-1001", "WEST"), PACS_REF, False),
    (dicom("MRN-1001", "east"), PACS_REF, False),
    (dicom("MRN-1001", None), PACS_REF, False),  # asked for an issuer, none came back: unprovable
    (dicom("MRN-10011", "EAST"), PACS_REF, False),
    (dicom("MRN-1001", None), PACS_NO_ISSUER, True),
    (dicom("MRN-1001", "WEST"), PACS_NO_ISSUER, True),  # no issuer configured: PatientID alone decides
    (Subject(reference="Patient/pat-1"), EHR_REF, True),
    (Subject(reference=f"{ISS}/Patient/pat-1"), EHR_REF, True),
    (Subject(reference="https://other.example.org/fhir/Patient/pat-1"), EHR_REF, False),
    (Subject(reference="Patient/pat-10"), EHR_REF, False),
    (Subject(reference=None), EHR_REF, False),
    (Subject(reference="Patient/o-1", identifiers=(Identifier(OUTSIDE_SYSTEM, "OUT-77"),)), OUTSIDE_REF, True),
    (Subject(reference="Patient/o-1", identifiers=(Identifier(MRN_SYSTEM, "OUT-77"),)), OUTSIDE_REF, False),
    (Subject(reference="Patient/o-1", identifiers=(Identifier(OUTSIDE_SYSTEM, "out-77"),)), OUTSIDE_REF, False),
    (Subject(reference="Patient/o-1"), OUTSIDE_REF, False),
    (Subject(identifiers=(Identifier(MRN_SYSTEM, "OUT-77"),)), OUTSIDE_REF, False),  # FHIR: the system counts too
    (Subject(identifiers=(Identifier(OUTSIDE_SYSTEM, "OUT-77"),)), OUTSIDE_REF, True),
])
def test_same_patient_is_an_exact_comparison(subject, ref, same):
    assert identity.same_patient(subject, ref) is same


@pytest.mark.parametrize(("subject", "found"), [
    (Subject(birth_date=date(1970, 1, 1), sex="female"), []),
    (Subject(), []),  # nothing to compare: no conflict
    (Subject(birth_date=date(1970, 1, 2)), ["birth date differs"]),
    (Subject(sex="male"), ["sex differs"]),
    (Subject(sex="other"), []),  # only a definite male/female contradiction counts
    (Subject(birth_date=date(1971, 1, 1), sex="male"), ["birth date differs", "sex differs"]),
])
def test_demographic_conflicts(jane, subject, found):
    assert identity.conflicts(subject, jane) == found


@pytest.mark.parametrize(("theirs", "differs"), [
    ("Jane Doe", False), ("JANE DOE", False), ("Doe Jane", False), ("Jane Q Doe", False), ("Doe", False),
    ("Janet Doe", True), ("Jane Smith", True), (None, False),
])
def test_name_difference_ignores_case_order_and_extra_words(theirs, differs):
    assert identity.name_differs(theirs, "Jane Doe") is differs


def candidate(uid: str, subject: Subject) -> Candidate:
    return Candidate(study=Study(uid=uid, sources=["pacs"]), subject=subject)


def test_guard_keeps_matches_drops_mismatches_and_counts_them(jane, caplog):
    caplog.set_level("WARNING")
    east = (Identifier("EAST", "MRN-1001"),)
    ok = Subject(identifiers=east, dicom=True, name="Jane Doe", birth_date=date(1970, 1, 1))
    renamed = Subject(identifiers=east, dicom=True, name="Janet Doe")
    older = Subject(identifiers=east, dicom=True, name="Jane Doe", birth_date=date(1950, 5, 5))

    result = identity.guard([candidate("1", ok), candidate("2", dicom("mrn-1001", "EAST")), candidate("3", renamed),
                             candidate("4", older)], PACS_REF, jane)

    assert [s.uid for s in result.studies] == ["1", "3"]
    assert [s.badges for s in result.studies] == [[], [identity.NAME_DIFFERS]]
    assert result.studies[0].matched_ids == {"pacs": Identifier(MRN_SYSTEM, "MRN-1001")}
    assert result.dropped == 2
    assert result.reason_text() == ("1 withheld: another patient's identifier; "
                                    "1 withheld: birth date differs from the EHR")
    # The log names the archive and counts, never the patient's id, name or birth date.
    assert "archive pacs: wrong-patient guard withheld 2 of 4 studies" in caplog.text
    assert not any(phi in caplog.text for phi in ("MRN-1001", "mrn-1001", "Jane", "Janet", "1950", "1970"))


def test_guard_never_matches_on_name_and_birth_date_alone(jane):
    lookalike = Subject(identifiers=(Identifier("EAST", "MRN-2002"),), dicom=True, name="Jane Doe",
                        birth_date=date(1970, 1, 1), sex="female")

    result = identity.guard([candidate("1", lookalike)], PACS_REF, jane)

    assert (result.studies, result.dropped) == ([], 1)
