"""DICOMweb reports: a study's SR documents and Encapsulated PDFs, found by series-level QIDO, read by WADO-RS.

The study's report series are found with QIDO-RS `SearchForSeries` on Modality SR and DOC
(PS3.18 §10.6), each series is retrieved as `multipart/related; type="application/dicom"`
(PS3.18 §10.4, parsed with the standard library's MIME parser) and read with pydicom. SR text
(Basic Text, Enhanced and Comprehensive SR: the same content-tree model, PS3.3 C.17.3) comes from
the content tree by keyword: neither pydicom nor highdicom renders an SR as prose, so the tree is
walked here, concept names becoming section headings. Every instance's PatientID and
IssuerOfPatientID are re-checked before any of its text is used.

Verified against Orthanc 1.10 + DICOMweb plugin 1.7 (tests/test_reports_orthanc.py): series
QIDO honours `Modality`, and series retrieve answers one part per instance.
"""

from __future__ import annotations

import email
import email.message
import logging
import warnings
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from io import BytesIO
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.valuerep import DA, DT, TM

from ..errors import ReportNotFound, ReportUnavailable, ReportWrongPatient
from ..http import Deadline
from ..models import Identifier, Study
from ..report_view import Addendum, AttachmentSource, FetchedReport, ReportView, Section, SourceNote
from ..viewers import is_dicom_uid
from .base import ArchiveClient, Subject, raise_for_status
from .retry import get_with_retry

log = logging.getLogger(__name__)

QIDO_ACCEPT = "application/dicom+json, application/json;q=0.9"
# Orthanc 1.10 refuses an Accept list with q-values on WADO-RS (HTTP 400): one type only.
WADO_ACCEPT = 'multipart/related; type="application/dicom"'
REPORT_MODALITIES = ("SR", "DOC")
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
SR_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.88.11": "Basic Text SR",
    "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR",
    "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR",
    "1.2.840.10008.5.1.4.1.1.88.34": "Comprehensive 3D SR",
    "1.2.840.10008.5.1.4.1.1.88.35": "Extensible SR",
}
MAX_SERIES = 4
MAX_DEPTH = 8


def has_report(modalities: tuple[str, ...]) -> bool:
    """Whether ModalitiesInStudy names a report series (SR document or encapsulated document)."""
    return any(m in REPORT_MODALITIES for m in modalities)


def listing_report(study: Study, archive_id: str) -> None:
    """Mark a study whose archive holds an SR/DOC series as having a report (read in full on open)."""
    from ..models import Report

    if has_report(study.modalities) and all(r.source != archive_id for r in study.reports):
        study.reports.append(Report(id=study.uid, status="available", source=archive_id, kind="dicom"))


class DicomReportReader:
    """Reads the report documents of one study from a DICOMweb archive."""

    def __init__(self, archive_id: str, name: str, base: str, client: ArchiveClient) -> None:
        self.archive_id, self.name, self.base, self.client = archive_id, name, base.rstrip("/"), client

    def read(self, study_uid: str, deadline: Deadline, verify: Any) -> FetchedReport:
        if not is_dicom_uid(study_uid):
            raise ReportNotFound(f'"{study_uid[:80]}" is not a StudyInstanceUID.')
        # One series query per modality (a list match "SR\\DOC" is not supported everywhere), at once.
        with ThreadPoolExecutor(max_workers=len(REPORT_MODALITIES), thread_name_prefix="report-qido") as pool:
            found = pool.map(lambda m: self._qido(f"{self.base}/studies/{study_uid}/series",
                                                  [("Modality", m), ("includefield", "SeriesInstanceUID")], deadline),
                             REPORT_MODALITIES)
            series = list(dict.fromkeys(uid for uids in found for uid in uids))
        if not series:
            raise ReportNotFound(f"{self.name} holds no report document (SR or PDF) for this study.")
        datasets: list[Dataset] = []
        withheld = 0
        for series_uid in series[:MAX_SERIES]:
            for ds in self._retrieve(f"{self.base}/studies/{study_uid}/series/{series_uid}", deadline):
                if ds.get("StudyInstanceUID") != study_uid:
                    continue
                if not verify(dicom_subject(ds)):
                    withheld += 1
                    continue
                datasets.append(ds)
        if withheld:
            log.warning("archive %s: wrong-patient guard withheld %d report instances", self.archive_id, withheld)
        if not datasets:
            if withheld:
                raise ReportWrongPatient(f"{self.name} holds this study's report under another patient; "
                                         "it is not shown.")
            raise ReportNotFound(f"{self.name} returned no readable report document for this study.")
        return FetchedReport(self._view(study_uid, datasets), dicom_subject(datasets[0]))

    def attachment(self, source: AttachmentSource, deadline: Deadline, verify: Any) -> tuple[bytes, str]:
        """An Encapsulated PDF's document, re-read and re-checked."""
        for ds in self._retrieve(f"{self.base}/{source.ref}", deadline):
            if not verify(dicom_subject(ds)):
                raise ReportWrongPatient(f"{self.name} holds this document under another patient; it is not shown.")
            document = ds.get("EncapsulatedDocument")
            if document:
                return _document_bytes(ds), source.content_type
        raise ReportNotFound(f"{self.name} no longer has this document.")

    # --- transport --------------------------------------------------------------------------------

    def _qido(self, url: str, params: list[tuple[str, str]], deadline: Deadline) -> list[str]:
        answer = self.client.get(url, params=params, accept=QIDO_ACCEPT, deadline=deadline)
        if answer.status == 404:
            raise ReportNotFound(f"{self.name} no longer has this study.")
        body = self.client.json(answer, empty=[])
        uids = []
        for item in body if isinstance(body, list) else []:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    value = Dataset.from_json(item).get("SeriesInstanceUID") if isinstance(item, dict) else None
            except (ValueError, TypeError, KeyError, AttributeError):
                continue
            if isinstance(value, str) and is_dicom_uid(value):
                uids.append(value)
        return uids

    def _retrieve(self, url: str, deadline: Deadline) -> list[Dataset]:
        answer = get_with_retry(self.client, url, deadline=deadline, accept=WADO_ACCEPT, what="report document")
        if answer.status == 404:
            raise ReportNotFound(f"{self.name} no longer has this report document.")
        raise_for_status(answer)
        message = email.message_from_bytes(
            b"Content-Type: " + answer.headers.get("Content-Type", "").encode("latin-1", "replace") + b"\r\n\r\n"
            + answer.body)
        if not message.is_multipart():
            raise ReportUnavailable(f"{self.name} did not answer WADO-RS with multipart/related DICOM.")
        out: list[Dataset] = []
        for part in message.get_payload():
            if not isinstance(part, email.message.Message):
                continue
            data = part.get_payload(decode=True)
            if not isinstance(data, bytes):
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # pydicom warns on odd values, then keeps them
                    out.append(dcmread(BytesIO(data)))
            except (InvalidDicomError, ValueError, TypeError, AttributeError, EOFError, KeyError) as exc:
                log.info("archive %s: an unreadable DICOM part skipped (%s)", self.archive_id, type(exc).__name__)
        return out

    # --- content ----------------------------------------------------------------------------------

    def _view(self, study_uid: str, datasets: list[Dataset]) -> ReportView:
        view = ReportView(id=study_uid, archive=self.archive_id, status="available")
        srs = [ds for ds in datasets if str(ds.get("SOPClassUID", "")) in SR_CLASSES]
        srs.sort(key=lambda d: _content_time(d) or datetime.min, reverse=True)
        for n, ds in enumerate(srs):
            kind = SR_CLASSES[str(ds.SOPClassUID)]
            view.sources.append(SourceNote(self.archive_id, self.name, f"DICOM {kind}"))
            title, sections, text = sr_content(ds)
            if n == 0:
                view.title, view.sections, view.text = title, sections, text
                view.status = sr_status(ds)
                view.author, view.issued = sr_author(ds)
                view.impression = next((s.text for s in sections if s.title.lower() in {"impression", "impressions",
                                                                                       "conclusion"}), None)
                view.comparison = next((s.text for s in sections if s.title.lower() == "comparison"), None)
            else:
                view.addenda.append(Addendum("earlier", title or "Earlier report", text, _content_time(ds)))
        for ds in datasets:
            if str(ds.get("SOPClassUID", "")) != ENCAPSULATED_PDF:
                continue
            title = str(ds.get("DocumentTitle") or "Report (PDF)")
            mime = str(ds.get("MIMETypeOfEncapsulatedDocument") or "application/pdf").lower()
            ref = f"studies/{study_uid}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
            view.attachments.append(AttachmentSource("dicom", mime, title, ref))
            view.sources.append(SourceNote(self.archive_id, self.name, "DICOM Encapsulated PDF"))
            if view.title is None:
                view.title = title
                view.issued = _content_time(ds)
        return view


def dicom_subject(ds: Dataset) -> Subject:
    issuer = ds.get("IssuerOfPatientID")
    return Subject(identifiers=(Identifier(str(issuer or ""), str(ds.get("PatientID") or "")),), dicom=True,
                   issuer_present="IssuerOfPatientID" in ds and bool(issuer))


def sr_content(ds: Dataset) -> tuple[str | None, list[Section], str]:
    """(document title, sections, full text) from an SR content tree (PS3.3 C.17.3)."""
    title = _meaning(ds, "ConceptNameCodeSequence")
    sections: list[Section] = []
    loose: list[str] = []
    for item in ds.get("ContentSequence") or []:
        name = _meaning(item, "ConceptNameCodeSequence")
        if item.get("ValueType") == "CONTAINER" or name:
            body = "\n".join(_lines(item, 0, heading=item.get("ValueType") != "CONTAINER"))
            if body:
                if sections and sections[-1].title == (name or "Report"):
                    sections[-1] = Section(sections[-1].title, sections[-1].text + "\n" + body)
                else:
                    sections.append(Section(name or "Report", body))
        else:
            loose += _lines(item, 0, heading=False)
    if loose:
        sections.insert(0, Section("Report", "\n".join(loose)))
    text = "\n\n".join(f"{s.title}\n{s.text}" for s in sections)
    return title, sections, text


def _lines(item: Dataset, depth: int, *, heading: bool) -> list[str]:
    if depth > MAX_DEPTH:
        return []
    kind = item.get("ValueType")
    if kind == "CONTAINER":
        out = []
        for child in item.get("ContentSequence") or []:
            name = _meaning(child, "ConceptNameCodeSequence")
            lines = _lines(child, depth + 1, heading=False)
            if child.get("ValueType") == "CONTAINER" and name and lines:
                out.append(name)
            out += lines
        return out
    value = _value(item)
    children = [line for child in item.get("ContentSequence") or [] for line in _lines(child, depth + 1,
                                                                                          heading=False)]
    if not value:
        return children
    name = _meaning(item, "ConceptNameCodeSequence")
    shown = f"{name}: {value}" if (name and kind != "TEXT" and not heading) else value
    return [shown, *children]


def _value(item: Dataset) -> str:
    kind = item.get("ValueType")
    if kind == "TEXT":
        return str(item.get("TextValue") or "").strip()
    if kind == "CODE":
        return _meaning(item, "ConceptCodeSequence") or ""
    if kind == "NUM":
        measured = (item.get("MeasuredValueSequence") or [None])[0]
        if measured is None:
            return ""
        units = (measured.get("MeasurementUnitsCodeSequence") or [None])[0]
        unit = str(units.get("CodeValue") or "") if units is not None else ""
        return f"{measured.get('NumericValue', '')} {unit if unit != '1' else ''}".strip()
    if kind == "PNAME":
        return str(item.get("PersonName") or "")
    if kind in {"DATE", "TIME", "DATETIME"}:
        return str(item.get({"DATE": "Date", "TIME": "Time", "DATETIME": "DateTime"}[kind]) or "")
    if kind == "UIDREF":
        return str(item.get("UID") or "")
    return ""


def _meaning(item: Dataset, keyword: str) -> str | None:
    seq = item.get(keyword)
    if not seq:
        return None
    meaning = seq[0].get("CodeMeaning")
    return str(meaning) if meaning else None


def sr_status(ds: Dataset) -> str:
    """final (complete + verified), amended (has a predecessor), else preliminary (PS3.3 C.17.2)."""
    if ds.get("PreliminaryFlag") == "PRELIMINARY":
        return "preliminary"
    if ds.get("CompletionFlag") == "COMPLETE" and ds.get("VerificationFlag") == "VERIFIED":
        return "amended" if ds.get("PredecessorDocumentsSequence") else "final"
    return "preliminary"


def sr_author(ds: Dataset) -> tuple[str | None, datetime | None]:
    """The verifying observer and verification time, else the content date and time."""
    for obs in ds.get("VerifyingObserverSequence") or []:
        name = _person(obs.get("VerifyingObserverName"))
        when = _datetime(obs.get("VerificationDateTime"))
        return name, when or _content_time(ds)
    for obs in ds.get("AuthorObserverSequence") or []:
        if obs.get("PersonName"):
            return _person(obs.get("PersonName")), _content_time(ds)
    return None, _content_time(ds)


def _person(value: Any) -> str | None:
    if not value:
        return None
    family, given = getattr(value, "family_name", ""), getattr(value, "given_name", "")
    prefix = getattr(value, "name_prefix", "")
    return " ".join(p for p in (prefix, given, family) if p) or str(value)


def _datetime(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        parsed = DT(str(value))
    except (ValueError, TypeError):
        return None
    return datetime(parsed.year, parsed.month, parsed.day, parsed.hour, parsed.minute, parsed.second)


def _content_time(ds: Dataset) -> datetime | None:
    try:
        day = DA(str(ds.ContentDate)) if ds.get("ContentDate") else None
        moment = TM(str(ds.ContentTime)) if ds.get("ContentTime") else None
    except (ValueError, TypeError):
        return None
    if day is None:
        return None
    return datetime(day.year, day.month, day.day, moment.hour if moment else 0, moment.minute if moment else 0,
                    moment.second if moment else 0)


def _document_bytes(ds: Dataset) -> bytes:
    data = bytes(ds.EncapsulatedDocument)
    length = ds.get("EncapsulatedDocumentLength")
    # PS3.3 C.24.2: the value is padded to even length; EncapsulatedDocumentLength gives the real size.
    return data[: int(length)] if isinstance(length, int) and 0 < length <= len(data) else data

