"""The archive seam: the Archive Protocol, what an archive answers, and the bounded HTTP client they share."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Protocol

import requests
from urllib3.exceptions import ReadTimeoutError

from ..errors import (
    ArchiveAuthError,
    ArchiveError,
    ArchiveResponseError,
    ArchiveTimeout,
    ArchiveUnavailable,
    ResponseTooLarge,
)
from ..http import Deadline, HttpAnswer, fetch
from ..models import Identifier, Order, Report, Study
from .auth import Credentials
from .config import ArchiveConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PatientRef:
    """Whom to look for in one archive: the EHR's patient id, or the patient's identifier in the archive's domain."""

    archive_id: str
    base: str  # the archive's resolved base URL
    patient_id: str | None = None  # FHIR id, on the EHR archive only
    identifier: Identifier | None = None  # value in the archive's identifier_system
    issuer: str | None = None  # DICOM IssuerOfPatientID the archive files the identifier under


@dataclass(frozen=True, slots=True)
class Subject:
    """What an archive says about whose record this is: the evidence the wrong-patient guard checks."""

    reference: str | None = None  # FHIR subject reference as given
    identifiers: tuple[Identifier, ...] = ()  # DICOM: (IssuerOfPatientID or "", PatientID)
    dicom: bool = False  # identifiers are DICOM PatientID/IssuerOfPatientID, not FHIR system|value
    issuer_present: bool = True  # DICOM: whether IssuerOfPatientID was in the answer at all
    name: str | None = None  # display form, compared loosely (badge only)
    birth_date: date | None = None
    sex: str | None = None  # FHIR administrative gender


@dataclass(slots=True)
class Candidate:
    """A study as one archive returned it, not yet checked against the launched patient."""

    study: Study
    subject: Subject
    refs: tuple[str, ...] = ()  # FHIR references naming this ImagingStudy ("ImagingStudy/1", full URL)
    based_on: tuple[str, ...] = ()  # ImagingStudy.basedOn references ("ServiceRequest/9")


@dataclass(slots=True)
class LinkedReport:
    """A DiagnosticReport with what links it to studies."""

    report: Report
    subject: Subject
    study_refs: tuple[str, ...] = ()  # DiagnosticReport.imagingStudy references
    accession: str | None = None
    study_uids: set[str] = field(default_factory=set)  # resolved from study_refs
    # A note with neither reference nor accession links by day + DICOM modality (IHE XDS-I.b eventCodeList).
    day: date | None = None
    modalities: tuple[str, ...] = ()


@dataclass(slots=True)
class LinkedOrder:
    """A ServiceRequest with what links it to studies."""

    order: Order
    subject: Subject
    refs: tuple[str, ...] = ()  # references naming this ServiceRequest
    study_uids: set[str] = field(default_factory=set)  # studies whose basedOn names it


@dataclass(slots=True)
class ArchiveAnswer:
    """Raw candidates from one archive, plus what it had to skip and why (no PHI in `notes`)."""

    candidates: list[Candidate] = field(default_factory=list)
    reports: list[LinkedReport] = field(default_factory=list)
    orders: list[LinkedOrder] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)  # unusable records, by reason
    notes: list[str] = field(default_factory=list)
    ignored_endpoints: int = 0  # ImagingStudy.endpoint addresses outside every configured archive
    # Why the answer is incomplete: "max_results" (more studies than the cap), "pages" (the page
    # cap), "deadline" (the archive's time ran out after some pages arrived); None when whole.
    cut: str | None = None

    def skip(self, reason: str) -> None:
        self.skipped[reason] += 1


class Archive(Protocol):
    """One searchable archive kind (FHIR server, DICOMweb QIDO-RS); tests and the sandbox fit the same slot."""

    config: ArchiveConfig

    def search(self, ref: PatientRef, deadline: Deadline) -> ArchiveAnswer:
        """Every candidate study (and report/order) the archive files under `ref`."""
        ...

    def complete(self, studies: list[Study], deadline: Deadline) -> None:
        """Fill details that need extra requests, for studies that passed the guard only."""
        ...


BUSY_RETRY_MAX_S = 10.0  # the longest Retry-After waited for (once) before saying "busy"
BUSY_RETRY_MARGIN_S = 1.0  # time that must remain after the wait for the retried request


class ArchiveClient:
    """GETs against one archive: credentials per target URL, a timeout, a deadline and a size cap."""

    def __init__(self, config: ArchiveConfig, http: requests.Session, credentials: Credentials, *,
                 max_bytes: int, sleep: Callable[[float], None] = time.sleep) -> None:
        self.config, self.http, self.credentials, self.max_bytes = config, http, credentials, max_bytes
        self.sleep = sleep

    def get(self, url: str, *, deadline: Deadline, accept: str, params: Any = None) -> HttpAnswer:
        """One GET; a 503 with a Retry-After that fits the deadline is retried once (SMART Imaging Access).

        The Argonaut SMART Imaging Access draft lets a server answer 503 + Retry-After (RFC 9110
        §10.2.3, delay-seconds) while it brings a study online; a longer wait, or a second 503,
        goes back to the caller, whose raise_for_status says "busy, retry in N s".
        """
        answer = self._get(url, deadline=deadline, accept=accept, params=params)
        wait = retry_after_s(answer) if answer.status == 503 else None
        if wait is not None and wait <= BUSY_RETRY_MAX_S and wait + BUSY_RETRY_MARGIN_S < deadline.remaining():
            log.info("archive %s busy (503, Retry-After %d s): retrying once", self.config.id, wait)
            self.sleep(wait)
            answer = self._get(url, deadline=deadline, accept=accept, params=params)
        return answer

    def _get(self, url: str, *, deadline: Deadline, accept: str, params: Any = None) -> HttpAnswer:
        headers = {"Accept": accept, **self.credentials.headers_for(url, deadline)}
        try:
            return fetch(self.http, "GET", url, params=params, headers=headers, deadline=deadline,
                         timeout=self.config.timeout_s, max_bytes=self.max_bytes)
        except ResponseTooLarge as exc:
            raise ArchiveResponseError(exc.message) from exc
        except requests.Timeout as exc:
            raise ArchiveTimeout(f"no answer within {self.config.timeout_s:g} s") from exc
        except requests.ConnectionError as exc:
            if any(isinstance(arg, ReadTimeoutError) for arg in exc.args):
                raise ArchiveTimeout(f"no answer within {self.config.timeout_s:g} s") from exc
            # str(exc) holds the URL (with the patient's id in the query): never put it in a reason.
            what = "connection refused" if "refused" in str(exc).lower() else "could not connect"
            raise ArchiveUnavailable(f"archive unreachable ({what})") from exc
        except requests.RequestException as exc:
            raise ArchiveUnavailable(f"request failed ({type(exc).__name__})") from exc

    def json(self, answer: HttpAnswer, *, empty: Any) -> Any:
        """The parsed body of a successful answer (`empty` for 204 No Content), else an ArchiveError."""
        raise_for_status(answer)
        if answer.status == 204 or not answer.body.strip():
            return empty
        try:
            return answer.json()
        except ValueError as exc:
            raise ArchiveResponseError("answer was not JSON") from exc


def raise_for_status(answer: HttpAnswer) -> None:
    """Turn an unusable HTTP status into the ArchiveError that says what to do about it."""
    status = answer.status
    if status in (200, 204):
        return
    if status == 403 and patient_mismatch(answer):
        # SMART Imaging Access: 403 when the token's patient is not the one the request names.
        raise ArchiveAuthError("HTTP 403 (patient mismatch: the archive says this is not the token's patient)")
    if status in (401, 403):
        what = "credentials not accepted" if status == 401 else "access refused"
        raise ArchiveAuthError(f"HTTP {status} ({what})")
    if status in (429, 503):
        wait = retry_after_s(answer)
        if wait is not None:
            raise ArchiveUnavailable(f"HTTP {status}: busy, retry in {wait} s")
        raise ArchiveUnavailable(f"HTTP {status}{_retry_after(answer.headers)}")
    if status >= 500:
        raise ArchiveUnavailable(f"HTTP {status}")
    if 300 <= status < 400:
        raise ArchiveResponseError(f"HTTP {status} redirect, not followed")
    raise ArchiveResponseError(f"HTTP {status}")


def retry_after_s(answer: HttpAnswer) -> int | None:
    """Retry-After as delay-seconds; None when absent or an HTTP-date (then no retry is timed)."""
    value = (answer.headers.get("Retry-After") or "").strip()
    return int(value) if value.isdigit() else None


def patient_mismatch(answer: HttpAnswer) -> bool:
    """Whether a refusal's OperationOutcome says the patient does not match (SMART Imaging Access)."""
    try:
        body = answer.json()
    except ValueError:
        return False
    issues = body.get("issue") if isinstance(body, dict) else None
    text = " ".join(f"{i.get('code') or ''} {i.get('diagnostics') or ''} {(i.get('details') or {}).get('text') or ''}"
                    for i in issues or [] if isinstance(i, dict))
    return "patient" in text.lower()


def _retry_after(headers: Mapping[str, str]) -> str:
    value = (headers.get("Retry-After") or "").strip()
    if not value:
        return ""
    return f" (Retry-After {value} s)" if value.isdigit() else f" (Retry-After {value[:40]})"


def error_reason(exc: ArchiveError) -> str:
    """The status reason shown for a failed archive (already PHI- and secret-free by construction)."""
    return exc.message
