"""FHIR reports: DocumentReference radiology notes for the list, and the full report read when one is opened.

On open, a `DiagnosticReport` is read with its `presentedForm` (inline `data`, or `url` read as
`Binary` with the attachment's content type in Accept, FHIR R4 §2.40 "Binary": a server returns
the raw content for a non-FHIR Accept), its `resultsInterpreter`/`performer`, and the reason for
the exam from `basedOn` → `ServiceRequest.reasonCode`/`reasonReference`. A US Core clinical note
(`DocumentReference`, category LP29684-5 "Radiology" or type 18748-4 "Diagnostic imaging study")
is read the same way from `content.attachment`. Attachment URLs are only fetched from the
archive's own base URL (the credentials are bound to it; another host is named, never called).
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime
from typing import Any
from urllib.parse import urljoin

from fhirclient.models.diagnosticreport import DiagnosticReport
from fhirclient.models.documentreference import DocumentReference
from fhirclient.models.practitioner import Practitioner
from fhirclient.models.servicerequest import ServiceRequest

from .. import report_formats
from ..errors import ArchiveError, ReportNotFound, ReportUnavailable, ReportWrongPatient
from ..fhir import human_name
from ..http import Deadline, HttpAnswer, under
from ..models import Report
from ..report_view import Addendum, AttachmentSource, FetchedReport, ReportView, Section, SourceNote
from .base import Subject, patient_mismatch, raise_for_status
from .retry import get_with_retry

log = logging.getLogger(__name__)

ACCEPT = "application/fhir+json, application/json;q=0.9"
FHIR_JSON = {"application/fhir+json", "application/json", "application/json+fhir"}
LOINC = "http://loinc.org"
RADIOLOGY_CATEGORY = "LP29684-5"  # LOINC part "Radiology" (US Core DiagnosticReport/clinical-note category)
IMAGING_NOTE_TYPE = "18748-4"  # LOINC "Diagnostic imaging study"
DICOM_DCM = "http://dicom.nema.org/resources/ontology/DCM"  # IHE XDS-I.b: modality codes in context.event
DOC_PREFIX = "DocumentReference:"
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")  # FHIR R4 §2.24.0.1 id
ADDENDUM = re.compile(r"addend", re.IGNORECASE)
EARLIER = re.compile(r"original|previous|earlier|superseded|prior version|replaced", re.IGNORECASE)
MAX_FORMS = 8
MAX_ORDERS = 3
Verify = Callable[[Subject], bool]


# --- DocumentReference radiology notes in the list --------------------------------------------------


def is_radiology_note(raw: dict[str, Any]) -> bool:
    """US Core clinical note of radiology: category LP29684-5 or type 18748-4 (LOINC)."""
    concepts = [raw.get("type"), *(raw.get("category") or [])]
    for concept in concepts:
        for coding in (concept or {}).get("coding") or [] if isinstance(concept, dict) else []:
            if isinstance(coding, dict) and coding.get("code") in {RADIOLOGY_CATEGORY, IMAGING_NOTE_TYPE}:
                return True
    return False


def attachment_urls(raw: dict[str, Any], base: str, key: str) -> set[str]:
    """Absolute attachment URLs of a DiagnosticReport (`presentedForm`) or DocumentReference (`content`)."""
    urls = set()
    for item in raw.get(key) or []:
        att = item.get("attachment") if key == "content" and isinstance(item, dict) else item
        if isinstance(att, dict) and isinstance(att.get("url"), str):
            urls.add(urljoin(base + "/", att["url"]))
    return urls


def document_listing(raw: dict[str, Any], archive_id: str) -> tuple[Report, tuple[str, ...], date | None,
                                                                   tuple[str, ...]]:
    """A radiology note as a row's Report: (report, context.related references, day, DICOM modalities)."""
    res = DocumentReference(raw, strict=False)
    status = res.docStatus or ("final" if res.status == "current" else res.status or "unknown")
    issued = res.date.datetime if res.date else None
    context = res.context
    refs = tuple(r.reference for r in (context.related or []) if r.reference) if context else ()
    period = context.period.start.datetime if context and context.period and context.period.start else None
    modalities = tuple(c.code for e in (context.event or []) if context for c in (e.coding or [])
                       if c.system == DICOM_DCM and c.code) if context else ()
    when = period or issued
    report = Report(id=f"{DOC_PREFIX}{res.id or ''}", status=status, conclusion=res.description, issued=issued,
                    source=archive_id, kind="DocumentReference")
    return report, refs, when.date() if when else None, modalities


def accession_of(raw: dict[str, Any]) -> str | None:
    """An accession (v2-0203 ACSN) on the note's identifiers or its context.related identifiers."""
    idents = list(raw.get("identifier") or [])
    for related in (raw.get("context") or {}).get("related") or []:
        if isinstance(related, dict) and isinstance(related.get("identifier"), dict):
            idents.append(related["identifier"])
    for ident in idents:
        codes = {c.get("code") for c in ((ident.get("type") or {}).get("coding") or []) if isinstance(c, dict)}
        if "ACSN" in codes and isinstance(ident.get("value"), str):
            return ident["value"]
    return None


# --- reading one report in full ---------------------------------------------------------------------


class FhirReportReader:
    """Reads one report from a FHIR archive; `subject_of` is the archive adapter's subject reading."""

    def __init__(self, archive_id: str, name: str, base: str, client: Any,
                 subject_of: Callable[[Any, Deadline], Subject]) -> None:
        self.archive_id, self.name, self.base = archive_id, name, base.rstrip("/")
        self.client, self.subject_of = client, subject_of

    def read(self, report_id: str, deadline: Deadline, verify: Verify) -> FetchedReport:
        doc = report_id.startswith(DOC_PREFIX)
        rid = report_id.removeprefix(DOC_PREFIX)
        if not FHIR_ID.match(rid):
            raise ReportNotFound(f'"{report_id[:80]}" is not a FHIR report id.')
        rtype = "DocumentReference" if doc else "DiagnosticReport"
        raw = self._resource(f"{self.base}/{rtype}/{rid}", rtype, deadline)
        res = DocumentReference(raw, strict=False) if doc else DiagnosticReport(raw, strict=False)
        subject = self.subject_of(res, deadline)
        if not verify(subject):
            log.warning("archive %s: %s withheld by the wrong-patient guard", self.archive_id, rtype)
            raise ReportWrongPatient(f"{self.name} returned this report for another patient; it is not shown.")
        view = ReportView(id=report_id, archive=self.archive_id, status="unknown",
                          sources=[SourceNote(self.archive_id, self.name, f"{rtype}/{rid}")])
        if isinstance(res, DiagnosticReport):
            self._diagnostic_report(res, view, deadline, verify)
        else:
            self._document(res, view, deadline)
        return FetchedReport(view, subject)

    def attachment(self, source: AttachmentSource, deadline: Deadline) -> tuple[bytes, str]:
        """The bytes of an attachment this reader listed (inline data or a Binary on this archive)."""
        if source.kind == "inline":
            return _b64(source.ref), source.content_type
        body, ctype, _ = self._binary(source.ref, source.content_type, deadline)
        return body, ctype

    # --- internals --------------------------------------------------------------------------------

    def _get(self, url: str, deadline: Deadline, accept: str, what: str) -> HttpAnswer:
        answer = get_with_retry(self.client, url, deadline=deadline, accept=accept, what=what)
        if answer.status in (404, 410):
            raise ReportNotFound(f"{self.name} no longer has this report ({what}: HTTP {answer.status}).")
        if answer.status == 403 and patient_mismatch(answer):
            # SMART Imaging Access: a 403 whose OperationOutcome says the patient does not match.
            raise ReportWrongPatient(f"{self.name} refused: it says this {what} is not the launched patient's.")
        raise_for_status(answer)
        return answer

    def _resource(self, url: str, rtype: str, deadline: Deadline) -> dict[str, Any]:
        answer = self._get(url, deadline, ACCEPT, rtype)
        try:
            body = answer.json()
        except ValueError as exc:
            raise ReportUnavailable(f"{self.name} answered with something that is not FHIR JSON ({rtype}).") from exc
        if not isinstance(body, dict) or body.get("resourceType") != rtype:
            raise ReportUnavailable(f"{self.name} answered with something that is not a {rtype}.")
        return body

    def _optional(self, reference: str, rtype: str, deadline: Deadline) -> dict[str, Any] | None:
        """A referenced resource on this server, or None (elsewhere, missing or failed: the report still shows)."""
        url = urljoin(self.base + "/", reference)
        if not under(url, self.base) or not reference.startswith((f"{rtype}/", self.base)):
            return None
        try:
            return self._resource(url, rtype, deadline)
        except (ArchiveError, ReportNotFound, ReportUnavailable, ReportWrongPatient) as exc:
            log.info("archive %s: %s for a report unavailable (%s)", self.archive_id, rtype, exc.code)
            return None

    def _binary(self, url: str, content_type: str, deadline: Deadline) -> tuple[bytes, str, str | None]:
        answer = self._get(url, deadline, content_type or "*/*", "attachment")
        ctype, charset = report_formats.content_type_of(answer.headers.get("Content-Type"))
        if ctype in FHIR_JSON and content_type not in FHIR_JSON:
            # The server sent the Binary resource itself (FHIR R4 Binary: `contentType` + base64 `data`).
            try:
                body = answer.json()
            except ValueError as exc:
                raise ReportUnavailable(f"{self.name} sent an unreadable Binary.") from exc
            if not isinstance(body, dict) or body.get("resourceType") != "Binary":
                raise ReportUnavailable(f"{self.name} sent something other than a Binary for an attachment.")
            return _b64(str(body.get("data") or "")), content_type or str(body.get("contentType") or ""), None
        if ctype == "application/octet-stream" and content_type:
            ctype = content_type
        return answer.body, ctype, charset

    def _forms(self, attachments: list[Any], view: ReportView, deadline: Deadline,
               created_default: datetime | None) -> list[tuple[str, str, report_formats.Rendered, datetime | None]]:
        """Render textual attachments; list the others. Returns (title, media type, rendered, created)."""
        rendered = []
        seen: set[str] = set()
        for n, att in enumerate(attachments[:MAX_FORMS]):
            ctype, charset = report_formats.content_type_of(att.contentType)
            title = att.title or ("Report" if n == 0 else f"Attachment {n + 1}")
            created = att.creation.datetime if att.creation else created_default
            body: bytes | None = None
            if att.data:
                source = AttachmentSource("inline", ctype, title, att.data)
                body = _b64(att.data)
            elif att.url:
                url = urljoin(self.base + "/", att.url)
                if url in seen:
                    continue
                seen.add(url)
                if not under(url, self.base):
                    view.sources.append(SourceNote(self.archive_id, self.name,
                                                   f"{title}: held at another server, not fetched"))
                    continue
                source = AttachmentSource("url", ctype, title, url)
                if report_formats.is_textual(ctype):
                    body, ctype, got_charset = self._binary(url, ctype, deadline)
                    charset = got_charset or charset
                    view.sources.append(SourceNote(self.archive_id, self.name, _short(url, self.base)))
            else:
                continue
            out = report_formats.render(ctype, body, charset) if body is not None else None
            if out is None:
                view.attachments.append(source)
            else:
                rendered.append((title, ctype, out, created))
        return rendered

    def _apply(self, view: ReportView, rendered: list[tuple[str, str, report_formats.Rendered, datetime | None]],
               conclusion: str | None) -> None:
        main: list[tuple[str, report_formats.Rendered]] = []
        for title, ctype, out, created in rendered:
            if ADDENDUM.search(title):
                view.addenda.append(Addendum("addendum", title, out.text, created))
            elif EARLIER.search(title) and main:
                view.addenda.append(Addendum("earlier", title, out.text, created))
            else:
                main.append((ctype, out))
        html = next((out for ctype, out in main if out.html is not None), None)
        plain = next((out for ctype, out in main if out.html is None), None)
        chosen = plain or html
        if html is not None:
            view.html = html.html
        view.impression = conclusion or None
        if chosen is not None:
            view.text, view.sections = chosen.text, list(chosen.sections)
            if conclusion and not _covered(conclusion, [view.text, *(a.text for a in view.addenda)]):
                view.text += f"\n\nConclusion: {conclusion}"
                view.sections.append(Section("Conclusion", conclusion))
        elif conclusion:
            view.text = conclusion
            view.sections = [Section("Impression", conclusion)]
        view.comparison = next((s.text for s in view.sections if s.title.lower() == "comparison"), None)

    def _diagnostic_report(self, res: DiagnosticReport, view: ReportView, deadline: Deadline, verify: Verify) -> None:
        view.status = res.status or "unknown"
        view.issued = res.issued.datetime if res.issued else None
        view.title = _text(res.code) if res.code else None
        view.codes = [t for t in (_text(c) for c in res.conclusionCode or []) if t]
        view.author = self._who(res.resultsInterpreter or [], deadline) or self._who(res.performer or [], deadline)
        # The order's reason is read while the report's attachments are (one round trip, not two).
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="report") as pool:
            reasons = pool.submit(self._reasons, list(res.basedOn or []), deadline, verify)
            rendered = self._forms(list(res.presentedForm or []), view, deadline, view.issued)
            texts, notes = reasons.result()
        self._apply(view, rendered, res.conclusion)
        view.reason = "; ".join(dict.fromkeys(texts)) or None
        view.sources += notes

    def _reasons(self, based_on: list[Any], deadline: Deadline, verify: Verify) -> tuple[list[str], list[SourceNote]]:
        """Reason for exam from `basedOn` ServiceRequests of the same patient (reasonCode, reasonReference)."""
        texts: list[str] = []
        notes: list[SourceNote] = []
        for ref in based_on[:MAX_ORDERS]:
            raw = self._optional(ref.reference or "", "ServiceRequest", deadline) if ref.reference else None
            if raw is None:
                continue
            order = ServiceRequest(raw, strict=False)
            if not verify(self.subject_of(order, deadline)):
                log.warning("archive %s: an order of another patient behind a report was ignored", self.archive_id)
                continue
            texts += [t for t in (_text(c) for c in order.reasonCode or []) if t]
            texts += [r.display for r in order.reasonReference or [] if r.display]
            notes.append(SourceNote(self.archive_id, self.name, f"ServiceRequest/{order.id}"))
        return texts, notes

    def _document(self, res: DocumentReference, view: ReportView, deadline: Deadline) -> None:
        view.status = res.docStatus or ("final" if res.status == "current" else res.status or "unknown")
        view.issued = res.date.datetime if res.date else None
        view.title = (_text(res.type) if res.type else None) or res.description
        signer = [res.authenticator] if res.authenticator else []
        view.author = self._who(signer, deadline) or self._who(res.author or [], deadline)
        attachments = [c.attachment for c in res.content or [] if c.attachment]
        self._apply(view, self._forms(attachments, view, deadline, view.issued), res.description)

    def _who(self, refs: list[Any], deadline: Deadline) -> str | None:
        names = []
        for ref in refs[:3]:
            if ref.display:
                names.append(ref.display)
            elif ref.reference:
                raw = self._optional(ref.reference, "Practitioner", deadline)
                if raw is not None and (name := human_name(Practitioner(raw, strict=False))):
                    names.append(name)
        return ", ".join(names) or None


def _covered(conclusion: str, texts: list[str]) -> bool:
    """Whether every sentence of the conclusion is already in the report's text or addenda (case and spacing aside)."""
    have = " ".join(" ".join(texts).lower().split())
    parts = re.split(r"[.;]\s*", re.sub(r"\baddendum:\s*", "", conclusion.lower()))
    return all(" ".join(p.split()) in have for p in parts if len(p.strip()) > 3)


def _b64(data: str) -> bytes:
    try:
        return base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise ReportUnavailable("The report's inline attachment is not valid base64.") from exc


def _short(url: str, base: str) -> str:
    return url.removeprefix(base + "/") if url.startswith(base + "/") else url


def _text(concept: Any) -> str | None:
    if concept.text:
        return concept.text
    coding = next(iter(concept.coding or []), None)
    return (coding.display or coding.code) if coding else None
