"""FHIR archives (the EHR, another facility): ImagingStudy search, Endpoint resolution, reports and orders.

Resources are parsed leniently with fhirclient models (`strict=False`): real servers send
resources that miss required elements, and one bad field must not hide a patient's study.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

from fhirclient.models.diagnosticreport import DiagnosticReport
from fhirclient.models.documentreference import DocumentReference
from fhirclient.models.imagingstudy import ImagingStudy
from fhirclient.models.patient import Patient
from fhirclient.models.servicerequest import ServiceRequest

from .. import imaging_endpoints
from ..errors import ArchiveError, ArchiveResponseError, ArchiveTimeout
from ..fhir import human_name  # the EHR reader's name rendering, so names compare like for like
from ..http import Deadline, same_origin, under
from ..models import Identifier, LaunchContext, Order, Report, Study, StudyEndpoint
from ..viewers import is_dicom_uid
from . import fhir_reports
from .base import ArchiveAnswer, ArchiveClient, Candidate, LinkedOrder, LinkedReport, PatientRef, Subject
from .config import ArchiveConfig

log = logging.getLogger(__name__)

ACCEPT = "application/fhir+json, application/json;q=0.9"
DICOM_UID = "urn:dicom:uid"  # FHIR R4 ImagingStudy.identifier: the StudyInstanceUID as urn:oid:...
ACSN = "ACSN"  # v2-0203 identifier type "Accession ID"
ABNORMAL = {"A", "AA", "H", "HH", "L", "LL", "HU", "LU", "abnormal"}  # v3 ObservationInterpretation
CRITICAL = {"AA", "HH", "LL", "critical"}
MAX_PAGES = 50
MAX_LOOKUPS = 50  # Patient/Endpoint reads per search when the server did not _include them
PAGE = 100


def token(system: str, value: str) -> str:
    """A FHIR token search value `system|value`, escaping `\\ | , $` (FHIR R4 §3.1.1.5.7)."""
    def esc(s: str) -> str:
        return s.replace("\\", "\\\\").replace("|", "\\|").replace(",", "\\,").replace("$", "\\$")
    return f"{esc(system)}|{esc(value)}"


class FhirArchive:
    """Searches one FHIR server for a patient's ImagingStudy resources (and, on the EHR, reports and orders)."""

    def __init__(self, config: ArchiveConfig, client: ArchiveClient, *, base: str, ctx: LaunchContext,
                 archive_bases: Sequence[tuple[str, str]] = ()) -> None:
        self.config, self.client, self.ctx = config, client, ctx
        self.base = base.rstrip("/")
        self.archive_bases = archive_bases  # (archive id, base URL) of every DICOMweb archive
        self._lookups = 0
        self._report_urls: set[str] = set()  # DiagnosticReport.presentedForm URLs (to de-duplicate notes)

    # --- search ---------------------------------------------------------------------------------

    def search(self, ref: PatientRef, deadline: Deadline) -> ArchiveAnswer:
        answer = ArchiveAnswer()
        count = min(self.config.page_size or PAGE, self.config.max_results)
        if ref.patient_id is not None:
            variants = [{"patient": ref.patient_id}]
        elif ref.identifier is not None:
            # Chained search on the subject's identifier; some servers only know the explicit
            # `subject:Patient.identifier` form (FHIR R4 §3.1.1.5.6 chaining).
            value = token(ref.identifier.system, ref.identifier.value)
            variants = [{"patient.identifier": value}, {"subject:Patient.identifier": value}]
        else:
            raise ArchiveError("a FHIR archive is searched by patient id or identifier only")

        def forms(rtype: str, includes: list[str]) -> list[dict[str, Any]]:
            # A server that rejects (rather than ignores) an unsupported _include gets one plain retry.
            with_include = [{**v, "_include": includes, "_count": count} for v in variants] if includes else []
            return [*with_include, {**variants[-1], "_count": count}] if includes else \
                [{**v, "_count": count} for v in variants]

        elsewhere = ref.patient_id is None  # subjects must be read to check their identifiers
        searches = {"ImagingStudy": forms("ImagingStudy", ["ImagingStudy:endpoint"]
                                          + (["ImagingStudy:subject"] if elsewhere else []))}
        for rtype in ("DiagnosticReport", "ServiceRequest"):
            # On the EHR the clinician's granted scopes decide; elsewhere the archive's own
            # credentials do. Records found by identifier are guarded one by one, like studies.
            if not self.config.is_ehr or self.ctx.can_read(rtype):
                searches[rtype] = forms(rtype, [f"{rtype}:subject"] if elsewhere else [])
        if self._reads_documents():
            searches["DocumentReference"] = forms("DocumentReference",
                                                  ["DocumentReference:subject"] if elsewhere else [])
        # The searches are independent (FHIR R4 search): run them at once, so an archive costs one
        # round trip rather than three. Credentials first, once: a backend token is fetched (or
        # refused) a single time, not by each parallel search.
        self.client.credentials.headers_for(f"{self.base}/ImagingStudy", deadline)
        with ThreadPoolExecutor(max_workers=len(searches), thread_name_prefix="fhir") as pool:
            futures = {rtype: pool.submit(self._collect, rtype, params, deadline)
                       for rtype, params in searches.items()}
            studies, included, partial = futures.pop("ImagingStudy").result()  # its failure is the archive's
            answer.cut = partial.cut
            if ref.patient_id is not None and self.config.is_ehr:
                studies += self._context_studies(studies, ref.patient_id, deadline, included, partial)
            others = {}
            for rtype, future in futures.items():
                try:
                    others[rtype] = future.result()
                except ArchiveError as exc:
                    # Studies are still worth showing without their reports; say what is missing.
                    if self.config.is_ehr:
                        answer.notes.append(f"{rtype} unavailable ({exc.message})")
                    log.info("archive %s: %s unavailable (%s)", self.config.id, rtype, exc.code)
        for part in (partial, *(o[2] for o in others.values())):
            answer.skipped.update(part.skipped)
            answer.notes.extend(part.notes)
        for _, extra_included, _ in others.values():
            included.update(extra_included)
        for full_url, resource in studies:
            cand = self._candidate(resource, full_url, included, answer, deadline)
            if cand is not None:
                answer.candidates.append(cand)
        for rtype, build in (("DiagnosticReport", self._report), ("ServiceRequest", self._order),
                             ("DocumentReference", self._document)):
            for full_url, raw in others.get(rtype, ([], {}, None))[0]:
                build(raw, full_url, answer, included, deadline)
        return answer

    def complete(self, studies: list[Study], deadline: Deadline) -> None:
        """Nothing to add: ImagingStudy already carries series-level detail."""

    def _context_studies(self, studies: list[tuple[str | None, dict[str, Any]]], patient_id: str,
                         deadline: Deadline, included: dict[str, dict[str, Any]], part: ArchiveAnswer
                         ) -> list[tuple[str | None, dict[str, Any]]]:
        """The launch's fhirContext study when the patient's search did not return it (SMART Imaging Access).

        `ImagingStudy?patient=…&identifier=urn:oid:<StudyInstanceUID>` for a context naming a UID,
        `ImagingStudy?patient=…&_id=<id>` for one naming a FHIR id; still guarded like every study.
        """
        have: set[str] = set()
        for _, raw in studies:
            have.add(str(raw.get("id")))
            have.update(_strip_oid(str(i.get("value"))) for i in _list(raw.get("identifier"))
                        if isinstance(i, dict) and i.get("system") == DICOM_UID)
        found: list[tuple[str | None, dict[str, Any]]] = []
        for item in self.ctx.fhir_context[:5]:
            rtype, _, rid = item.partition("/")
            if rtype != "ImagingStudy" or rid in have:
                continue
            wanted = {"identifier": f"urn:oid:{rid}"} if is_dicom_uid(rid) else {"_id": rid}
            params = {"patient": patient_id, **wanted, "_include": ["ImagingStudy:endpoint"]}
            try:
                found += list(self._search("ImagingStudy", [params], deadline, part, included))
            except ArchiveError as exc:
                log.info("archive %s: fhirContext study lookup failed (%s)", self.config.id, exc.code)
        return found

    def subject_of(self, res: Any, deadline: Deadline) -> Subject:
        """Whose record `res` (a parsed resource with `subject`) is, as the wrong-patient guard reads it."""
        return self._subject(res, {}, deadline)

    def _reads_documents(self) -> bool:
        """US Core radiology notes: on the EHR when granted; elsewhere when the backend scope names them."""
        if self.config.is_ehr:
            return self.ctx.can_read("DocumentReference")
        return self.config.auth.kind == "smart-backend" and "DocumentReference" in self.config.auth.scope

    def _collect(self, rtype: str, params: list[dict[str, Any]], deadline: Deadline
                 ) -> tuple[list[tuple[str | None, dict[str, Any]]], dict[str, dict[str, Any]], ArchiveAnswer]:
        """One search run to the end (capped): matches, included resources, and what was skipped."""
        part, included = ArchiveAnswer(), dict[str, dict[str, Any]]()
        found: list[tuple[str | None, dict[str, Any]]] = []
        try:
            for match in self._search(rtype, params, deadline, part, included):
                if len(found) >= self.config.max_results:
                    part.cut = "max_results"  # one more than the cap exists: the answer is cut
                    break
                found.append(match)
        except ArchiveTimeout:
            if not found:
                raise
            part.cut = "deadline"  # keep the pages that arrived; the status says the answer is partial
        return found, included, part

    def _search(self, rtype: str, variants: list[dict[str, Any]], deadline: Deadline, answer: ArchiveAnswer,
                included: dict[str, dict[str, Any]]) -> Iterator[tuple[str | None, dict[str, Any]]]:
        """Matches of a search across pages; `_include`d resources go to `included` (by reference)."""
        search_url = f"{self.base}/{rtype}"
        for n, params in enumerate(variants):
            http_answer = self.client.get(search_url, params=params, accept=ACCEPT, deadline=deadline)
            if http_answer.status == 400 and n + 1 < len(variants):
                continue
            bundle = self._bundle(self.client.json(http_answer, empty=None))
            break
        else:
            raise ValueError('Argument "variants" must list at least one set of search parameters.')
        for _ in range(MAX_PAGES):
            for entry in bundle["entry"]:
                resource = entry.get("resource") if isinstance(entry, dict) else None
                if not isinstance(resource, dict):
                    answer.skip("bundle entry without a resource")
                    continue
                full_url = entry.get("fullUrl") if isinstance(entry.get("fullUrl"), str) else None
                mode = (entry.get("search") or {}).get("mode", "match") if isinstance(entry.get("search"), dict) \
                    else "match"
                if resource.get("resourceType") == rtype and mode == "match":
                    yield full_url, resource
                else:
                    for key in _keys(resource, full_url):
                        included[key] = resource
            next_url = self._next(bundle, answer)
            if next_url is None:
                return
            bundle = self._bundle(self.client.json(self.client.get(next_url, accept=ACCEPT, deadline=deadline),
                                                   empty=None))
        answer.notes.append(f"stopped after {MAX_PAGES} pages")

    def _bundle(self, body: Any) -> dict[str, Any]:
        if body is None:  # 204 No Content: nothing found
            return {"resourceType": "Bundle", "entry": []}
        if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
            raise ArchiveResponseError("answer was not a FHIR Bundle")
        entries = body.get("entry", [])
        if not isinstance(entries, list):
            raise ArchiveResponseError("answer was not a FHIR Bundle (entry is not a list)")
        return {**body, "entry": entries}

    def _next(self, bundle: dict[str, Any], answer: ArchiveAnswer) -> str | None:
        link = bundle.get("link")
        links = link if isinstance(link, list) else []
        nxt = next((lk.get("url") for lk in links if isinstance(lk, dict) and lk.get("relation") == "next"), None)
        if not isinstance(nxt, str) or not nxt:
            return None
        nxt = urljoin(self.base + "/", nxt)
        # FHIR R4 §3.1.1.6 paging: next links are opaque, but our credentials are bound to this
        # server's origin, so a next link elsewhere ends the search (it is never requested).
        if not same_origin(nxt, self.base):
            log.warning("archive %s: next page on another host (%s) not followed", self.config.id,
                        urlsplit(nxt).hostname)
            answer.notes.append("next page on another host not followed")
            return None
        return nxt

    # --- ImagingStudy -> Candidate --------------------------------------------------------------

    def _candidate(self, raw: dict[str, Any], full_url: str | None, included: dict[str, dict[str, Any]],
                   answer: ArchiveAnswer, deadline: Deadline) -> Candidate | None:
        res = ImagingStudy(raw, strict=False)
        uid = next((_strip_oid(i.value) for i in res.identifier or [] if i.system == DICOM_UID and i.value), None)
        if not uid:
            answer.skip("no StudyInstanceUID")
            return None
        started: datetime | None = res.started.datetime if res.started is not None else None
        if raw.get("started") is not None and started is None:
            answer.skip("invalid date")
            return None
        series = res.series or []
        modalities = [c.code for c in res.modality or [] if c.code]
        modalities += [s.modality.code for s in series if s.modality and s.modality.code]
        sites = [s.bodySite.display or s.bodySite.code for s in series if s.bodySite]
        elsewhere: list[str] = []
        endpoints = self._endpoints(raw, included, answer, deadline, elsewhere)
        study = Study(
            uid=uid,
            started=started,
            modalities=tuple(dict.fromkeys(modalities)),
            description=res.description,
            body_sites=tuple(dict.fromkeys(s for s in sites if s)),
            procedure_codes=_procedure_codes(res.procedureCode or []),
            accession=_accession(res.identifier),
            series_count=res.numberOfSeries if isinstance(res.numberOfSeries, int) else None,
            instance_count=res.numberOfInstances if isinstance(res.numberOfInstances, int) else None,
            referrer=res.referrer.display if res.referrer else None,
            facility=(res.location.display if res.location and res.location.display else self.config.name),
            sources=[self.config.id],
            endpoints=endpoints,
            elsewhere=elsewhere,
            # fhirContext names ImagingStudy/<id> on the launching EHR only (SMART App Launch 2.x).
            ids=[res.id] if self.config.is_ehr and res.id else [],
        )
        return Candidate(study=study, subject=self._subject(res, included, deadline),
                         refs=tuple(_keys(raw, full_url)),
                         based_on=tuple(r.reference for r in res.basedOn or [] if r.reference))

    def _subject(self, res: ImagingStudy, included: dict[str, dict[str, Any]], deadline: Deadline) -> Subject:
        ref = res.subject
        if ref is None:
            return Subject()
        idents = []
        if ref.identifier is not None and ref.identifier.system and ref.identifier.value:
            idents.append(Identifier(ref.identifier.system, ref.identifier.value))
        if self.config.is_ehr or not ref.reference:  # the EHR is checked by reference alone
            return Subject(reference=ref.reference, identifiers=tuple(idents))
        # Elsewhere the identifier decides: an _include'd Patient adds demographics; without one,
        # the Patient is only read when the reference carries no identifier of its own.
        key = urljoin(self.base + "/", ref.reference)
        patient_raw = included.get(ref.reference) or included.get(key)
        if patient_raw is None and not idents:
            patient_raw = self._resolve(ref.reference, "Patient", included, deadline)
        if patient_raw is None:
            return Subject(reference=ref.reference, identifiers=tuple(idents))
        patient = Patient(patient_raw, strict=False)
        idents += [Identifier(i.system, i.value) for i in patient.identifier or [] if i.system and i.value]
        return Subject(reference=ref.reference, identifiers=tuple(idents), name=human_name(patient),
                       birth_date=patient.birthDate.date if patient.birthDate else None, sex=patient.gender)

    def _resolve(self, reference: str, rtype: str, included: dict[str, dict[str, Any]],
                 deadline: Deadline) -> dict[str, Any] | None:
        """An included resource, else one read from this server (never from another host)."""
        if reference in included:
            return included[reference]
        url = urljoin(self.base + "/", reference)
        if url in included:
            return included[url]
        if not under(url, self.base) or self._lookups >= MAX_LOOKUPS:
            return None
        self._lookups += 1
        try:
            body = self.client.json(self.client.get(url, accept=ACCEPT, deadline=deadline), empty=None)
        except ArchiveError as exc:
            log.info("archive %s: %s lookup failed (%s)", self.config.id, rtype, exc.code)
            return None
        if not isinstance(body, dict) or body.get("resourceType") != rtype:
            return None
        included[reference] = body
        return body

    def _endpoints(self, raw: dict[str, Any], included: dict[str, dict[str, Any]], answer: ArchiveAnswer,
                   deadline: Deadline, elsewhere: list[str] | None = None) -> list[StudyEndpoint]:
        """ImagingStudy.endpoint (study and series level) that lie under a configured archive; others ignored."""
        refs = list(_list(raw.get("endpoint")))
        for series in _list(raw.get("series")):
            refs += _list(series.get("endpoint")) if isinstance(series, dict) else []
        contained = {f"#{c.get('id')}": c for c in _list(raw.get("contained")) if isinstance(c, dict)}
        found: list[StudyEndpoint] = []
        for ref in refs:
            reference = ref.get("reference") if isinstance(ref, dict) else None
            if not isinstance(reference, str):
                continue
            endpoint = contained.get(reference) or self._resolve(reference, "Endpoint", included, deadline)
            address = endpoint.get("address") if isinstance(endpoint, dict) else None
            if not isinstance(address, str):
                continue
            archive_id = next((aid for aid, base in self.archive_bases if under(address, base)), None)
            if archive_id is None and (usable := imaging_endpoints.usable(endpoint, address, self.base,
                                                                           self.config.auth.kind)) is not None:
                if all(e.address != usable.address for e in found):
                    found.append(usable)
                continue
            if archive_id is None:
                if elsewhere is not None:
                    name = endpoint.get("name") if isinstance(endpoint, dict) else None
                    label = name if isinstance(name, str) and name else urlsplit(address).hostname or "another server"
                    if label not in elsewhere:
                        elsewhere.append(label[:120])
                answer.ignored_endpoints += 1
                log.info("archive %s: endpoint at unconfigured host %s ignored", self.config.id,
                         urlsplit(address).hostname)
                continue
            address = address.rstrip("/")
            if all(e.address != address for e in found):
                found.append(StudyEndpoint(archive_id, address))
        return found

    # --- DiagnosticReport and ServiceRequest ------------------------------------------------------

    def _report(self, raw: dict[str, Any], full_url: str | None, answer: ArchiveAnswer,
                included: dict[str, dict[str, Any]], deadline: Deadline) -> None:
        res = DiagnosticReport(raw, strict=False)
        self._report_urls |= fhir_reports.attachment_urls(raw, self.base, "presentedForm")
        codes = {c.code for cc in res.conclusionCode or [] for c in cc.coding or [] if c.code}
        report = Report(id=res.id or "", status=res.status or "unknown", conclusion=res.conclusion,
                        issued=res.issued.datetime if res.issued else None, abnormal=bool(codes & ABNORMAL),
                        critical=bool(codes & CRITICAL), source=self.config.id)
        answer.reports.append(LinkedReport(
            report=report, subject=self._subject(res, included, deadline),
            study_refs=tuple(r.reference for r in res.imagingStudy or [] if r.reference),
            accession=_accession(res.identifier)))

    def _order(self, raw: dict[str, Any], full_url: str | None, answer: ArchiveAnswer,
               included: dict[str, dict[str, Any]], deadline: Deadline) -> None:
        res = ServiceRequest(raw, strict=False)
        when = res.occurrenceDateTime or (res.occurrencePeriod.start if res.occurrencePeriod else None)
        places = [r.display for r in res.locationReference or [] if r.display]
        order = Order(id=res.id or "", priority=res.priority, status=res.status,
                      code_text=_text(res.code) if res.code else None,
                      accession=_accession(res.identifier),
                      source=self.config.id,
                      occurrence=when.datetime if when is not None and isinstance(when.datetime, datetime) else None,
                      location=places[0] if places else None,
                      encounter=_local_id(res.encounter.reference, "Encounter") if res.encounter else None)
        answer.orders.append(LinkedOrder(order=order, subject=self._subject(res, included, deadline),
                                         refs=tuple(_keys(raw, full_url))))


    def _document(self, raw: dict[str, Any], full_url: str | None, answer: ArchiveAnswer,
                  included: dict[str, dict[str, Any]], deadline: Deadline) -> None:
        """A US Core radiology note, unless it is a DiagnosticReport's own attachment (same URL)."""
        if not fhir_reports.is_radiology_note(raw):
            return
        if fhir_reports.attachment_urls(raw, self.base, "content") & self._report_urls:
            return  # the same report, already listed as the DiagnosticReport that presents it
        report, refs, day, modalities = fhir_reports.document_listing(raw, self.config.id)
        res = DocumentReference(raw, strict=False)
        answer.reports.append(LinkedReport(
            report=report, subject=self._subject(res, included, deadline), study_refs=refs,
            accession=fhir_reports.accession_of(raw), day=day, modalities=modalities))


def _local_id(reference: str | None, rtype: str) -> str | None:
    """The id in a `Type/id` (or absolute `.../Type/id`) reference of type `rtype`."""
    if not reference:
        return None
    parts = reference.rstrip("/").split("/")
    return parts[-1] if len(parts) >= 2 and parts[-2] == rtype else None


def _keys(resource: dict[str, Any], full_url: str | None) -> list[str]:
    """The references that may name `resource`: `Type/id` and its fullUrl."""
    keys = []
    if isinstance(resource.get("resourceType"), str) and isinstance(resource.get("id"), str):
        keys.append(f"{resource['resourceType']}/{resource['id']}")
    if full_url:
        keys.append(full_url)
    return keys


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _strip_oid(value: str) -> str:
    return value.removeprefix("urn:oid:")


def _procedure_codes(concepts: list[Any]) -> tuple[str, ...]:
    """Each coding as `system|code` (LOINC/RSNA Playbook, CPT: app/priors.py maps them to anatomy), then the text."""
    out: list[str] = []
    for concept in concepts:
        out += [f"{c.system}|{c.code}" if c.system else c.code for c in concept.coding or [] if c.code]
        text = _text(concept)
        if text and text not in out:
            out.append(text)
    return tuple(dict.fromkeys(out))


def _text(concept: Any) -> str | None:
    if concept.text:
        return concept.text
    coding = next(iter(concept.coding or []), None)
    return (coding.display or coding.code) if coding else None


def _accession(identifiers: Any) -> str | None:
    for ident in identifiers or []:
        codes = {c.code for c in (ident.type.coding or [])} if ident.type else set()
        if ACSN in codes and ident.value:
            return ident.value
    return None
