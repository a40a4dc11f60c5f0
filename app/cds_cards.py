"""What the CDS services say: the patient-view "outside imaging" card and the order-select repeat-imaging warning.

Pure functions of typed `Study` values (found by the federation, already tied to the patient by
the wrong-patient guard) and the draft orders; cards follow CDS Hooks 2.0 §"Card Attributes"
(summary <= 140 characters, indicator, source, links of type "smart", suggestions with actions).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from . import priors
from .models import Study

SOURCE = {"label": "Imaging Timeline"}
SUMMARY_MAX = 140

# Procedure codes (CPT, LOINC Radiology Playbook) -> modality, for draft orders naming only a code.
CODE_MODALITIES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("70450", "70460", "70470", "71250", "71260", "71270", "71271", "74150", "74160", "74170",
                     "74176", "74177", "74178", "71275", "30799-1", "24627-2", "29252-4", "36813-4", "42274-1",
                     "24531-6", "87856-1"), ("CT",)),
    **dict.fromkeys(("70551", "70552", "70553", "72148", "73721", "24590-2", "30799-8", "24558-9", "37637-6"),
                    ("MR",)),
    **dict.fromkeys(("76700", "76770", "76536", "76641", "76642", "24842-7"), ("US",)),
    **dict.fromkeys(("71045", "71046", "72100", "73560", "36643-5", "39632-0", "24743-7"), ("DX", "CR")),
    **dict.fromkeys(("77065", "77066", "77067", "24606-6", "26291-5"), ("MG",)),
    **dict.fromkeys(("78815", "78816", "44139-6"), ("PT", "CT")),
    **dict.fromkeys(("78306", "39811-0"), ("NM",)),
}
MODALITY_WORDS: tuple[tuple[re.Pattern[str], tuple[str, ...]], ...] = (
    (re.compile(r"\bPET\b"), ("PT", "CT")),
    (re.compile(r"\bCTA?\b|COMPUTED TOMOGRAPH"), ("CT",)),
    (re.compile(r"\bMRI?\b|\bMRA\b|MAGNETIC RESONANCE"), ("MR",)),
    (re.compile(r"\bUS\b|ULTRASOUND|SONOGRA|DOPPLER"), ("US",)),
    (re.compile(r"MAMMO"), ("MG",)),
    (re.compile(r"\bXR\b|X-RAY|XRAY|RADIOGRAPH"), ("DX", "CR")),
    (re.compile(r"\bNM\b|NUCLEAR|SCINTIGRA|BONE SCAN"), ("NM",)),
)
WITH_AND_WITHOUT = re.compile(r"\bW\s*/\s*WO\b|WITH AND WITHOUT|\bW\s*/\s*O\s+AND\s+W\b")
WITHOUT = re.compile(r"\bWO\b|\bW/O\b|WITHOUT|NON[- ]?CONTRAST|NONCONTRAST")
WITH = re.compile(r"\bW\b|\bWITH\b|\bC\+|CONTRAST[- ]ENHANCED")


@dataclass(frozen=True)
class DraftOrder:
    """An imaging ServiceRequest from `draftOrders`, reduced to what comparison needs."""

    id: str
    text: str
    codes: tuple[str, ...]  # "system|code"
    body_sites: tuple[str, ...] = ()

    @property
    def as_study(self) -> Study:
        """The order seen as the study it would produce (for the region and modality rules in priors.py)."""
        return Study(uid=f"draft:{self.id}", description=self.text, procedure_codes=self.codes,
                     body_sites=self.body_sites, modalities=self.modalities)

    @property
    def modalities(self) -> tuple[str, ...]:
        for code in self.codes:
            found = CODE_MODALITIES.get(code.rsplit("|", 1)[-1])
            if found:
                return found
        upper = self.text.upper()
        for pattern, modalities in MODALITY_WORDS:
            if pattern.search(upper):
                return modalities
        return ()


def draft_from_resource(resource: dict[str, Any]) -> DraftOrder | None:
    """A draft imaging order from a FHIR R4 ServiceRequest; None when it names no procedure."""
    if resource.get("resourceType") != "ServiceRequest" or not isinstance(resource.get("id"), str):
        return None
    raw_code = resource.get("code")
    code: dict[str, Any] = raw_code if isinstance(raw_code, dict) else {}
    codings = [c for c in code.get("coding", []) if isinstance(c, dict) and isinstance(c.get("code"), str)]
    text = code.get("text") if isinstance(code.get("text"), str) else None
    text = text or next((c["display"] for c in codings if isinstance(c.get("display"), str)), None)
    sites = [c.get("code") or c.get("display") for site in resource.get("bodySite", []) if isinstance(site, dict)
             for c in site.get("coding", []) if isinstance(c, dict)]
    if not text and not codings:
        return None
    return DraftOrder(resource["id"], text or codings[0]["code"],
                      tuple(f"{c.get('system', '')}|{c['code']}" for c in codings),
                      tuple(s for s in sites if isinstance(s, str)))


def contrast(description: str | None) -> str | None:
    """What the study description says about contrast ("with contrast", ...), or None if it says nothing."""
    if not description:
        return None
    upper = description.upper()
    if WITH_AND_WITHOUT.search(upper):
        return "with and without contrast"
    if WITHOUT.search(upper):
        return "without contrast"
    if (WITH.search(upper) and "CONTRAST" in upper) or re.search(r"\bC\+", upper):
        return "with contrast"
    return None


def ago(then: datetime | None, now: datetime) -> str:
    """"6 h ago", "3 days ago", "5 months ago", "2 years ago"."""
    if then is None:
        return "date unknown"
    then = then if then.tzinfo else then.replace(tzinfo=UTC)
    delta = now - then
    if delta < timedelta(hours=1):
        return "just now" if delta < timedelta(minutes=1) else f"{int(delta.total_seconds() // 60)} min ago"
    if delta < timedelta(hours=48):
        return f"{int(delta.total_seconds() // 3600)} h ago"
    if delta < timedelta(days=60):
        return f"{delta.days} days ago"
    if delta < timedelta(days=730):
        return f"{delta.days // 30} months ago"
    return f"{delta.days // 365} years ago"


def what(study: Study) -> str:
    """A short name for a study: "CT chest" (modality + region) where known, else its description."""
    region = priors.region_label(priors.body_region(study))
    modality = next((m for m in study.modalities if m not in priors.NON_IMAGE), None)
    if modality and region:
        return f"{modality} {region.lower()}"
    return study.description or (modality or "imaging study")


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _summary(text: str) -> str:
    return text if len(text) <= SUMMARY_MAX else text[: SUMMARY_MAX - 1].rstrip() + "…"


def smart_link(launch_url: str, label: str, study_uid: str | None = None) -> dict[str, Any]:
    """A SMART app link (CDS Hooks 2.0 §"Link"); appContext names the study to open the timeline on.

    The EHR passes `appContext` to the app at launch; it carries a SMART `fhirContext` reference,
    which the app already understands (the study the launch is about).
    """
    link: dict[str, Any] = {"label": label, "url": launch_url, "type": "smart"}
    if study_uid:
        link["appContext"] = json.dumps({"fhirContext": [f"ImagingStudy/{study_uid}"]})
    return link


def report_status(study: Study) -> str:
    statuses = [r.status for r in study.reports if r.status]
    if not statuses:
        return "no report yet"
    final = [s for s in statuses if s in priors.FINAL_REPORT]
    return f"report {final[0] if final else statuses[0]}"


def facility_of(study: Study, names: dict[str, str]) -> str:
    return study.facility or next((names[s] for s in study.sources if s in names), "another facility")


def patient_view_card(outside: Sequence[Study], *, names: dict[str, str], launch_url: str, now: datetime,
                      unanswered: Sequence[str] = ()) -> dict[str, Any] | None:
    """ "4 outside studies at 2 facilities — newest CT chest 3 days ago (Riverside); 1 needs attention"."""
    if not outside:
        return None
    facilities = list(dict.fromkeys(facility_of(s, names) for s in outside))
    dated = [s for s in outside if s.started is not None]
    newest = max(dated, key=lambda s: s.started or now) if dated else outside[0]
    attention = [s for s in outside if priors.attention(s, now=now)]
    text = (f"{_plural(len(outside), 'outside study', 'outside studies')} at "
            f"{_plural(len(facilities), 'facility', 'facilities')} — newest {what(newest)} "
            f"{ago(newest.started, now)} ({facility_of(newest, names)})")
    if attention:
        text += f"; {len(attention)} need{'s' if len(attention) == 1 else ''} attention"
    lines = [f"- {what(s)}, {ago(s.started, now)}, {facility_of(s, names)}: {report_status(s)}"
             + (f" (**{', '.join(priors.attention(s, now=now))}**)" if s in attention else "")
             for s in sorted(outside, key=lambda s: s.started or datetime.min.replace(tzinfo=UTC), reverse=True)[:8]]
    if unanswered:
        lines.append(f"\n{', '.join(unanswered)} did not answer in time; the timeline shows the complete list.")
    return {
        "uuid": str(uuid.uuid4()),
        "summary": _summary(text),
        "detail": "\n".join(lines),
        "indicator": "warning" if attention else "info",
        "source": SOURCE,
        "links": [smart_link(launch_url, "Open Imaging Timeline", newest.uid)],
    }


def comparable_recent(draft: DraftOrder, studies: Iterable[Study], *, now: datetime,
                      window: timedelta) -> Study | None:
    """The newest study of the draft's region and a comparable modality within `window`, else None."""
    planned = draft.as_study
    region = priors.body_region(planned)
    if region is None or not planned.modalities:
        return None
    matches = [s for s in studies if s.started is not None
               and now - (s.started if s.started.tzinfo else s.started.replace(tzinfo=UTC)) <= window
               and priors.comparable(planned.modalities, s.modalities, region, priors.body_region(s))]
    return max(matches, key=lambda s: s.started or now) if matches else None


def order_warning_card(draft: DraftOrder, study: Study, *, names: dict[str, str], launch_url: str,
                       now: datetime, slices: str | None = None) -> dict[str, Any]:
    """ "CT abdomen/pelvis with contrast at Riverside, 6 h ago, report final: view before repeating"."""
    said_contrast = contrast(study.description)
    name = what(study) + (f" {said_contrast}" if said_contrast else "")
    facility = facility_of(study, names)
    text = f"{name} at {facility}, {ago(study.started, now)}, {report_status(study)}: view before repeating"
    facts = [f"- Performed {study.started:%Y-%m-%d %H:%M} UTC at {facility}" if study.started else
             f"- Performed at {facility}"]
    if study.description:
        facts.append(f"- Study: {study.description}")
    if study.series_count is not None:
        facts.append(f"- {_plural(study.series_count, 'series', 'series')}"
                     + (f", {study.instance_count} images" if study.instance_count else ""))
    if slices:
        facts.append(f"- {slices[0].upper()}{slices[1:]} (from the images)")
    if said_contrast:
        facts.append(f"- Contrast: {said_contrast} (from the study description)")
    conclusion = next((r.conclusion for r in study.reports if r.conclusion), None)
    if conclusion:
        facts.append(f"- Report: {conclusion}")
    facts.append(f"\nThe draft order ({draft.text}) may repeat this study.")
    return {
        "uuid": str(uuid.uuid4()),
        "summary": _summary(text),
        "detail": "\n".join(facts),
        "indicator": "warning",
        "source": SOURCE,
        "links": [smart_link(launch_url, "View the study in Imaging Timeline", study.uid)],
        "selectionBehavior": "at-most-one",
        "suggestions": [{
            "label": f"Cancel the draft order ({draft.text})",
            "uuid": str(uuid.uuid4()),
            "isRecommended": True,
            # CDS Hooks 2.0 §"Action": a delete names the draft by relative reference.
            "actions": [{"type": "delete", "description": f"Cancel the draft order for {draft.text}",
                         "resourceId": [f"ServiceRequest/{draft.id}"]}],
        }],
    }
