"""Identity reconciliation and the wrong-patient guard: which id to ask each archive for, and which answers to keep.

Rules (each one a test in tests/test_identity.py):

* An archive is only ever queried by an identifier: the EHR's patient id on the EHR itself, or the
  patient's identifier in the archive's `identifier_system` elsewhere. No identifier in that domain
  means "not linked"; the archive is never searched by name or birth date.
* Every returned record is re-verified with exact, case-sensitive comparison, because archives
  match loosely (Orthanc matches PatientID case-insensitively and merges patients across issuers;
  FHIR servers may ignore an unsupported search parameter and return everything):
  - EHR FHIR: `subject.reference` is `Patient/{id}` or `{iss}/Patient/{id}`.
  - Other FHIR: the subject's identifier (on the reference, or on the fetched Patient) includes
    exactly `{system}|{value}`.
  - DICOMweb: PatientID equals the value (trailing DICOM padding spaces aside). When the archive
    has an `issuer_of_patient_id`, IssuerOfPatientID must be present and equal: an answer without
    the issuer is dropped, because "same PatientID, unknown issuer" is exactly the collision the
    issuer exists to prevent.
* Then demographics, where the archive returns them: a birth date or sex that differs from the
  EHR withholds the study (counted as dropped, with a reason); a name that differs keeps it with
  the badge "identity: name differs" (names are spelled, transliterated and married differently).
* Logs carry archive ids and counts only, never names, ids or dates.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

from .archives.base import Candidate, PatientRef, Subject
from .archives.config import ArchiveConfig
from .errors import ArchiveNotLinked
from .models import Identifier, PatientSummary, Study

log = logging.getLogger(__name__)

NAME_DIFFERS = "identity: name differs"
VIA_PIXM = "identity: linked via PIXm"
BIRTH_DATE_UNREADABLE = "identity: birth date unreadable"  # shown, not withheld: nothing to compare


def ref_for(archive: ArchiveConfig, identifier: Identifier, iss: str) -> PatientRef:
    """Whom to ask `archive` for, given the patient's identifier in its domain (e.g. from PIXm)."""
    return PatientRef(archive.id, archive.resolved_base(iss), identifier=identifier,
                      issuer=archive.issuer_of_patient_id)


def link(patient: PatientSummary, archive: ArchiveConfig, iss: str) -> PatientRef:
    """The id to ask `archive` for; ArchiveNotLinked when the patient has none in its domain."""
    base = archive.resolved_base(iss)
    if archive.is_ehr:
        return PatientRef(archive.id, base, patient_id=patient.id)
    system = archive.identifier_system
    if not system:
        raise ArchiveNotLinked("not linked (no identifier domain configured for this archive)")
    value = patient.identifier_in(system)
    if not value:
        raise ArchiveNotLinked(f"not linked (no identifier in domain {system})")
    return PatientRef(archive.id, base, identifier=Identifier(system, value), issuer=archive.issuer_of_patient_id)


def same_patient(subject: Subject, ref: PatientRef) -> bool:
    """Whether `subject` is exactly the patient `ref` names (no normalisation beyond DICOM padding)."""
    if ref.patient_id is not None:
        local = f"Patient/{ref.patient_id}"
        return subject.reference in {local, f"{ref.base}/{local}"}
    if ref.identifier is None:
        return False
    if not subject.dicom:
        return ref.identifier in subject.identifiers
    values = {i.value.rstrip(" ") for i in subject.identifiers if ref.issuer is None or i.system == ref.issuer}
    if ref.issuer is not None and not subject.issuer_present:
        return False
    # Without a configured issuer, PatientID alone decides, whatever issuer the archive reports.
    return ref.identifier.value in values


def conflicts(subject: Subject, patient: PatientSummary) -> list[str]:
    """Demographic conflicts that withhold a study (birth date, sex); empty when none are known."""
    found = []
    if subject.birth_date and patient.birth_date and subject.birth_date != patient.birth_date:
        found.append("birth date differs")
    known = {"male", "female"}
    if subject.sex in known and patient.sex in known and subject.sex != patient.sex:
        found.append("sex differs")
    return found


def name_differs(subject_name: str | None, patient_name: str) -> bool:
    """Names differ when neither one's words are all contained in the other's (order and case ignored)."""
    ours, theirs = _words(patient_name), _words(subject_name or "")
    if not ours or not theirs:
        return False
    return not (ours <= theirs or theirs <= ours)


@lru_cache(maxsize=1024)
def _words(name: str) -> frozenset[str]:
    return frozenset(w for w in re.split(r"[^\w]+", name.casefold()) if w)


@dataclass
class GuardResult:
    """What survived the guard, and how much was withheld and why (reasons are PHI-free)."""

    studies: list[Study] = field(default_factory=list)
    dropped: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    # Studies whose identifier matched but whose demographics conflict: (reason, study). Their
    # description and year may be shown as a stub row ("ask HIM to reconcile"); a study filed
    # under another patient's identifier never is (that would show another patient's data).
    withheld: list[tuple[str, Study]] = field(default_factory=list)

    def reason_text(self) -> str | None:
        if not self.reasons:
            return None
        return "; ".join(f"{n} withheld: {why}" for why, n in sorted(self.reasons.items()))


def guard(candidates: list[Candidate], ref: PatientRef, patient: PatientSummary) -> GuardResult:
    """Keep only the studies that are provably this patient's; badge name differences."""
    result = GuardResult()
    for cand in candidates:
        if not same_patient(cand.subject, ref):
            result.dropped += 1
            result.reasons["another patient's identifier"] += 1
            continue
        problems = conflicts(cand.subject, patient)
        if problems:
            result.dropped += 1
            result.reasons[" and ".join(problems) + " from the EHR"] += 1
            result.withheld.append((" and ".join(problems), cand.study))
            continue
        study = cand.study
        if name_differs(cand.subject.name, patient.name):
            if NAME_DIFFERS not in study.badges:
                study.badges.append(NAME_DIFFERS)
            study.other_names[ref.archive_id] = cand.subject.name or ""
        if ref.identifier is not None:
            study.matched_ids[ref.archive_id] = ref.identifier
        elif ref.patient_id is not None:
            study.matched_ids[ref.archive_id] = Identifier("Patient", ref.patient_id)
        result.studies.append(study)
    if result.dropped:
        log.warning("archive %s: wrong-patient guard withheld %d of %d studies (%s)", ref.archive_id,
                    result.dropped, len(candidates), ", ".join(sorted(result.reasons)))
    return result


def verified(subject: Subject, ref: PatientRef, patient: PatientSummary) -> bool:
    """The same check for a report or order: exact identity and no demographic conflict."""
    return same_patient(subject, ref) and not conflicts(subject, patient)
