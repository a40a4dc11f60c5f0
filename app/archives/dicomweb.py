"""DICOMweb archives: QIDO-RS study search by PatientID (+ IssuerOfPatientID), series details, DICOM JSON parsing.

Verified against Orthanc 1.10 + DICOMweb plugin 1.7 (tests/test_archive_dicomweb.py runs a real one):
  * `includefield` must be repeated, one keyword each: the comma-separated list PS3.18 §8.3.4.3
    also allows is silently ignored, and so is `includefield=all`.
  * IssuerOfPatientID is honoured as a filter; PatientID matches case-insensitively and patients
    with one PatientID are merged across issuers, hence the exact re-check in app/identity.py.
  * `limit`/`offset` page; results are unordered and there is no total, so we page until a short
    page (with a page cap against servers that ignore `limit`).
  * Answers are `application/dicom+json`; BodyPartExamined is only at series level, so it comes
    from a series-level QIDO per kept study (as does Modality where ModalitiesInStudy is absent).
Documented, not verified here:
  * Azure DICOM service answers 204 No Content for an empty result (handled: zero studies).
  * Some servers (older dcm4chee, proxies) answer `application/json`; both are accepted.
  * Google Cloud Healthcare caps `limit` at 5000 (studies); dcm4chee-arc matches IssuerOfPatientID
    against its patient-identifier domains and may answer `application/json`.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime

from pydicom import Dataset
from pydicom import config as pydicom_config
from pydicom.valuerep import DA, TM

from ..errors import ArchiveError, ArchiveResponseError
from ..http import Deadline
from ..models import Identifier, Study, StudyEndpoint
from ..priors import body_region
from . import dicomweb_reports
from .base import ArchiveAnswer, ArchiveClient, Candidate, PatientRef, Subject
from .config import ArchiveConfig

log = logging.getLogger(__name__)

# Set once, when the reader is first imported (at start-up, before any worker thread): pydicom's
# read-time validation warns and logs every odd value *quoting it* (birth dates, names, hostile
# markup) into the app log. Values this module cannot use are counted as skipped instead
# (ArchiveStatus.skipped), never quoted. A `warnings` filter per call is not thread-safe.
pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE

ACCEPT = "application/dicom+json, application/json;q=0.9"
STUDY_FIELDS = (
    "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy", "StudyDescription",
    "ReferringPhysicianName", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
    "PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate", "PatientSex",
)
SERIES_FIELDS = ("SeriesInstanceUID", "Modality", "BodyPartExamined")
PAGE = 100
MAX_PAGES = 100
MAX_SERIES_LOOKUPS = 200  # newest studies whose series are looked up; older ones keep study-level data
SERIES_WORKERS = 6  # concurrent series lookups per archive
DICOM_SEX = {"M": "male", "F": "female", "O": "other"}


class DicomWebArchive:
    """QIDO-RS search of one DICOMweb archive (PS3.18 §10.6)."""

    def __init__(self, config: ArchiveConfig, client: ArchiveClient) -> None:
        self.config, self.client = config, client
        self.base = config.base_url.rstrip("/")

    def search(self, ref: PatientRef, deadline: Deadline) -> ArchiveAnswer:
        if ref.identifier is None:
            raise ArchiveError("a DICOMweb archive is only searched by PatientID")
        answer = ArchiveAnswer()
        seen: set[str] = set()
        params: list[tuple[str, str | int]] = [("PatientID", ref.identifier.value)]
        if ref.issuer:
            params.append(("IssuerOfPatientID", ref.issuer))
        params += [("includefield", name) for name in STUDY_FIELDS]
        offset = 0
        for _ in range(MAX_PAGES):
            limit = min(PAGE, self.config.max_results - offset)
            page = self._qido(f"{self.base}/studies", [*params, ("limit", limit), ("offset", offset)], deadline)
            for item in page:
                cand = self._candidate(item, answer)
                if cand is not None and cand.study.uid not in seen:
                    seen.add(cand.study.uid)
                    answer.candidates.append(cand)
            offset += len(page)
            if len(page) < limit or len(page) > limit or offset >= self.config.max_results:
                break  # short page = last page; a longer one means the server ignores `limit`
        return answer

    def complete(self, studies: list[Study], deadline: Deadline) -> None:
        """Series-level QIDO where the study level cannot tell the modality or the body region.

        BodyPartExamined is a series attribute (PS3.18 §10.6.3.3.2 has no study-level body part),
        so each lookup costs a round trip. It is skipped when ModalitiesInStudy came back and the
        study's description or codes already name the region; the rest run in parallel (bounded),
        newest first and capped, so a large archive is not serialised behind its own latency.
        """
        need = [s for s in studies if not s.modalities or body_region(s) is None]
        need.sort(key=lambda s: (s.started is not None, s.started.isoformat() if s.started else ""), reverse=True)
        if len(need) > MAX_SERIES_LOOKUPS:
            log.info("archive %s: series details for the newest %d of %d studies only", self.config.id,
                     MAX_SERIES_LOOKUPS, len(need))
            need = need[:MAX_SERIES_LOOKUPS]
        if not need:
            return
        with ThreadPoolExecutor(max_workers=min(SERIES_WORKERS, len(need)), thread_name_prefix="series") as pool:
            for study, series in zip(need, pool.map(lambda s: self._series(s, deadline), need), strict=True):
                modalities, parts = list(study.modalities), list(study.body_sites)
                for item in series:
                    ds = _dataset(item)
                    if ds is None:
                        continue
                    for value, into in ((ds.get("Modality"), modalities), (ds.get("BodyPartExamined"), parts)):
                        into.extend(v for v in _values(value) if v not in into)
                study.modalities, study.body_sites = tuple(modalities), tuple(parts)
                dicomweb_reports.listing_report(study, self.config.id)

    def _series(self, study: Study, deadline: Deadline) -> list:
        """One study's series (empty when unavailable: the study is still shown without them)."""
        if deadline.remaining() < 0.25:
            return []
        try:
            return self._qido(f"{self.base}/studies/{study.uid}/series",
                              [("includefield", name) for name in SERIES_FIELDS], deadline)
        except ArchiveError as exc:
            log.info("archive %s: series details unavailable (%s)", self.config.id, exc.code)
            return []

    def _qido(self, url: str, params: list[tuple[str, str | int]], deadline: Deadline) -> list:
        answer = self.client.get(url, params=params, accept=ACCEPT, deadline=deadline)
        body = self.client.json(answer, empty=[])
        if not isinstance(body, list):
            raise ArchiveResponseError("answer was not a DICOM JSON array")
        return body

    def _candidate(self, item: object, answer: ArchiveAnswer) -> Candidate | None:
        ds = _dataset(item)
        if ds is None:
            answer.skip("unreadable DICOM JSON")
            return None
        uid = ds.get("StudyInstanceUID")
        if not isinstance(uid, str) or not uid:
            answer.skip("no StudyInstanceUID")
            return None
        try:
            started = _started(ds.get("StudyDate"), ds.get("StudyTime"))
            birth = DA(ds.PatientBirthDate) if ds.get("PatientBirthDate") else None
        except (ValueError, TypeError):
            answer.skip("invalid date")
            return None
        study = Study(
            uid=uid,
            started=started,
            modalities=_values(ds.get("ModalitiesInStudy")),
            description=ds.get("StudyDescription") or None,
            accession=ds.get("AccessionNumber") or None,
            series_count=_int(ds.get("NumberOfStudyRelatedSeries")),
            instance_count=_int(ds.get("NumberOfStudyRelatedInstances")),
            referrer=_person(ds.get("ReferringPhysicianName")),
            facility=self.config.name,
            sources=[self.config.id],
            endpoints=[StudyEndpoint(self.config.id, self.base)],
        )
        dicomweb_reports.listing_report(study, self.config.id)
        issuer = ds.get("IssuerOfPatientID")
        subject = Subject(
            identifiers=(Identifier(issuer or "", str(ds.get("PatientID") or "")),),
            dicom=True,
            issuer_present="IssuerOfPatientID" in ds and bool(issuer),
            name=_person(ds.get("PatientName")),
            birth_date=date(birth.year, birth.month, birth.day) if birth else None,
            sex=DICOM_SEX.get(str(ds.get("PatientSex") or "").strip().upper()),
        )
        return Candidate(study=study, subject=subject)


def _dataset(item: object) -> Dataset | None:
    """DICOM JSON (PS3.18 Annex F) parsed once, at the edge; None if it is not a usable object."""
    if not isinstance(item, dict):
        return None
    try:
        return Dataset.from_json(item)  # read-time validation is off (see above): odd values are kept
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def _started(study_date: object, study_time: object) -> datetime | None:
    """StudyDate (+ StudyTime) as a naive datetime: DICOM local time, no zone (PS3.3 C.7.2.1)."""
    if not study_date:
        return None
    day = DA(str(study_date))
    moment = TM(str(study_time)) if study_time else None
    return datetime(day.year, day.month, day.day, moment.hour if moment else 0, moment.minute if moment else 0,
                    moment.second if moment else 0)


def _values(value: object) -> tuple[str, ...]:
    """A possibly multi-valued string element (pydicom gives str for one value, MultiValue for more)."""
    if not value:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value if v)  # type: ignore[attr-defined]


def _int(value: object) -> int | None:
    try:
        return int(str(value)) if value not in (None, "") else None
    except ValueError:
        return None


def _person(value: object) -> str | None:
    """A PersonName as "Given Family" (pydicom PersonName components)."""
    if not value:
        return None
    family, given = getattr(value, "family_name", ""), getattr(value, "given_name", "")
    return " ".join(p for p in (given, family) if p) or str(value)
