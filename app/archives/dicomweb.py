"""DICOMweb archives: QIDO-RS study search by PatientID (+ IssuerOfPatientID), series details, DICOM JSON parsing.

Verified against Orthanc 1.10 + DICOMweb plugin 1.7 (tests/test_archive_dicomweb.py runs a real one):
  * `includefield` must be repeated, one keyword each: the comma-separated list PS3.18 §8.3.4.3
    also allows is silently ignored, and so is `includefield=all`.
  * IssuerOfPatientID is honoured as a filter; PatientID matches case-insensitively and patients
    with one PatientID are merged across issuers, hence the exact re-check in app/identity.py.
  * `limit`/`offset` page; results are unordered and there is no total, so we page until a short
    page (with a page cap against servers that ignore `limit`). Orthanc re-scans the patient for
    every `offset` (quadratic: 5,000 studies by 100 took 37 s), and has no `limit` cap of its own
    unless `LimitFindResults` is set, so the default is one request up to `max_results`.
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

from pydicom import config as pydicom_config

from .. import dicomjson
from ..errors import ArchiveError, ArchiveResponseError, ArchiveTimeout
from ..http import Deadline
from ..identity import BIRTH_DATE_UNREADABLE
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
# Series and instance counts are computed by the archive for every study it returns. Verified on
# Orthanc 1.10: for one patient with 5,000 studies in one request they cost 8 s of 11.7 s (3.5 s
# without), more than the default timeout, so an archive allowed more than this many studies is
# not asked for them (the rows then show no counts).
COUNT_FIELDS = ("NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")
COUNTS_UP_TO = 1000
dicomjson.preload(*STUDY_FIELDS, *SERIES_FIELDS)
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
        """Pages of `page_size` (default: one request for everything up to `max_results`).

        One more study than `max_results` is asked for, so a cut answer is known to be cut. Paging
        by a small `limit` is quadratic on Orthanc (each `offset` re-scans the patient's studies:
        offset 4,900 took 2 s a page), so a single large request is the default; `page_size` is
        for archives that cap `limit` (Azure: 200). A deadline reached after the first page keeps
        what arrived and marks the answer cut.
        """
        if ref.identifier is None:
            raise ArchiveError("a DICOMweb archive is only searched by PatientID")
        answer = ArchiveAnswer()
        seen: set[str] = set()
        params: list[tuple[str, str | int]] = [("PatientID", ref.identifier.value)]
        if ref.issuer:
            params.append(("IssuerOfPatientID", ref.issuer))
        fields = STUDY_FIELDS if self.config.max_results <= COUNTS_UP_TO else \
            tuple(f for f in STUDY_FIELDS if f not in COUNT_FIELDS)
        params += [("includefield", name) for name in fields]
        wanted = self.config.max_results + 1
        page_size = self.config.page_size or wanted
        offset = 0
        for n in range(MAX_PAGES):
            limit = min(page_size, wanted - offset)
            try:
                page = self._qido(f"{self.base}/studies", [*params, ("limit", limit), ("offset", offset)], deadline)
            except ArchiveTimeout:
                if not answer.candidates:
                    raise
                answer.cut = "deadline"
                return answer
            offset += len(page)
            for item in page[:max(0, self.config.max_results - (offset - len(page)))]:
                cand = self._candidate(item, answer)
                if cand is not None and cand.study.uid not in seen:
                    seen.add(cand.study.uid)
                    answer.candidates.append(cand)
            if offset > self.config.max_results:
                answer.cut = "max_results"
                break
            if len(page) < limit or len(page) > limit:
                break  # short page = last page; a longer one means the server ignores `limit`
            if n == MAX_PAGES - 1:
                answer.cut = "pages"
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
                    if not isinstance(item, dict):
                        continue
                    for keyword, into in (("Modality", modalities), ("BodyPartExamined", parts)):
                        into.extend(v for v in dicomjson.strings(item, keyword) if v not in into)
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
        """One study-level result read straight from its DICOM JSON (app/dicomjson.py).

        A malformed demographic value never hides a study whose identifier matched: it is
        shown with a badge naming the field, and the guard simply has nothing to compare.
        """
        if not isinstance(item, dict):
            answer.skip("unreadable DICOM JSON")
            return None
        uid = dicomjson.string(item, "StudyInstanceUID")
        if not uid:
            answer.skip("no StudyInstanceUID")
            return None
        try:
            started = _started(dicomjson.day(item, "StudyDate"), item)
        except (ValueError, TypeError):
            answer.skip("unreadable StudyDate")
            return None
        badges: list[str] = []
        try:
            birth = dicomjson.day(item, "PatientBirthDate")
        except (ValueError, TypeError):
            birth = None
            badges.append(BIRTH_DATE_UNREADABLE)
        study = Study(
            uid=uid,
            started=started,
            modalities=dicomjson.strings(item, "ModalitiesInStudy"),
            description=dicomjson.string(item, "StudyDescription"),
            accession=dicomjson.string(item, "AccessionNumber"),
            series_count=dicomjson.integer(item, "NumberOfStudyRelatedSeries"),
            instance_count=dicomjson.integer(item, "NumberOfStudyRelatedInstances"),
            referrer=dicomjson.person(item, "ReferringPhysicianName"),
            facility=self.config.name,
            sources=[self.config.id],
            endpoints=[StudyEndpoint(self.config.id, self.base)],
            badges=badges,
        )
        dicomweb_reports.listing_report(study, self.config.id)
        issuer = dicomjson.string(item, "IssuerOfPatientID")
        subject = Subject(
            identifiers=(Identifier(issuer or "", _raw_string(item, "PatientID")),),
            dicom=True,
            issuer_present=dicomjson.has(item, "IssuerOfPatientID") and bool(issuer),
            name=dicomjson.person(item, "PatientName"),
            birth_date=birth,
            sex=DICOM_SEX.get((dicomjson.string(item, "PatientSex") or "").upper()),
        )
        return Candidate(study=study, subject=subject)


def _raw_string(item: dict, keyword: str) -> str:
    """A value exactly as sent (the guard compares PatientID exactly, trailing padding aside)."""
    found = dicomjson.values(item, keyword)
    return str(found[0]) if found and found[0] is not None else ""


def _started(day: date | None, item: dict) -> datetime | None:
    """StudyDate (+ StudyTime) as a naive datetime: DICOM local time, no zone (PS3.3 C.7.2.1)."""
    if day is None:
        return None
    moment = dicomjson.time_of_day(item, "StudyTime")
    if moment is None:
        return datetime(day.year, day.month, day.day)
    return datetime(day.year, day.month, day.day, moment.hour, moment.minute, moment.second)
