"""Body regions, relevant priors and "needs attention" rules for the timeline.

Three questions about a study, each answered from typed `Study` fields only:

* **Which body region?** (`body_region`) From, in order of trust: the series' body sites (SNOMED CT
  codes, DICOM BodyPartExamined values or their display text), the procedure codes (LOINC, CPT),
  then keywords in the study description. The tables below are the whole mapping; anything they
  do not name has no region (None) rather than a guess.
* **Is it a relevant prior of the current study?** (`is_relevant_prior`, `relevant_priors`) Earlier
  than the current study, overlapping anatomy, and a comparable modality (`COMPARABLE`). The
  browser applies the same rule to studies as they stream in; it reads the tables from
  `rules_json()`, emitted into the page, so Python and JavaScript cannot drift apart.
* **Does it need attention?** (`attention`) An open stat/urgent order, a critical result, a recent
  abnormal result, or a report that is not final yet.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any

from .models import LaunchContext, Report, Study

# --- regions ------------------------------------------------------------------------------------

#: Region id -> (label, the anatomical parts it covers). Two regions overlap when their parts
#: intersect: a CT of the abdomen and pelvis is a relevant prior of an abdominal ultrasound.
REGIONS: dict[str, tuple[str, frozenset[str]]] = {
    "head": ("Head", frozenset({"head"})),
    "neck": ("Neck", frozenset({"neck"})),
    "chest": ("Chest", frozenset({"chest"})),
    "breast": ("Breast", frozenset({"breast"})),
    "abdomen": ("Abdomen", frozenset({"abdomen"})),
    "pelvis": ("Pelvis", frozenset({"pelvis"})),
    "abdomen-pelvis": ("Abdomen + pelvis", frozenset({"abdomen", "pelvis"})),
    "chest-abdomen-pelvis": ("Chest + abdomen + pelvis", frozenset({"chest", "abdomen", "pelvis"})),
    "spine": ("Spine", frozenset({"spine"})),
    "upper-limb": ("Upper limb", frozenset({"upper-limb"})),
    "lower-limb": ("Lower limb", frozenset({"lower-limb"})),
    # Oncologic "whole body" (PET/CT skull base to mid thigh, bone scan): the trunk, not the brain.
    "whole-body": ("Whole body", frozenset({"neck", "chest", "abdomen", "pelvis"})),
}

#: SNOMED CT body structure concept -> region.
SNOMED_REGIONS: dict[str, str] = {
    "69536005": "head", "12738006": "head", "89545001": "head", "774007": "head",  # head, brain, face, head+neck
    "45048000": "neck", "69748006": "neck",  # neck, thyroid
    "51185008": "chest", "43799004": "chest", "39607008": "chest", "80891009": "chest",  # thorax, lung, heart
    "76752008": "breast", "80248007": "breast", "73056007": "breast",  # breast, left, right
    "818983003": "abdomen", "113345001": "abdomen", "10200004": "abdomen", "64033007": "abdomen",
    "28231008": "abdomen", "15776009": "abdomen", "78961009": "abdomen",  # liver, kidney, GB, pancreas, spleen
    "12921003": "pelvis", "89837001": "pelvis", "41216001": "pelvis", "35039007": "pelvis",  # bladder, prostate, uterus
    "24136001": "pelvis",  # hip joint: compared with pelvis radiographs
    "818982008": "abdomen-pelvis",
    "421060004": "spine", "122494005": "spine", "122495006": "spine", "122496007": "spine", "54735007": "spine",
    "53120007": "upper-limb", "16982005": "upper-limb", "127949000": "upper-limb", "74670003": "upper-limb",
    "85562004": "upper-limb", "40983000": "upper-limb",  # arm, shoulder, elbow, wrist, hand
    "61685007": "lower-limb", "72696002": "lower-limb", "49076000": "lower-limb", "70258002": "lower-limb",
    "56459004": "lower-limb", "68367000": "lower-limb", "30021000": "lower-limb",  # knee, ankle, foot, thigh, leg
    "38266002": "whole-body",
}

#: DICOM Body Part Examined (0018,0015) defined terms (PS3.16 Annex L) -> region.
DICOM_REGIONS: dict[str, str] = {
    **dict.fromkeys(("HEAD", "BRAIN", "SKULL", "FACE", "IAC", "ORBIT", "SINUS", "HEADNECK", "TMJ", "JAW"), "head"),
    **dict.fromkeys(("NECK", "THYROID", "LARYNX", "CAROTID"), "neck"),
    **dict.fromkeys(("CHEST", "THORAX", "LUNG", "HEART", "RIB", "STERNUM", "CHESTABDOMEN"), "chest"),
    "BREAST": "breast",
    **dict.fromkeys(("ABDOMEN", "LIVER", "KIDNEY", "PANCREAS", "GALLBLADDER", "SPLEEN", "STOMACH"), "abdomen"),
    **dict.fromkeys(("PELVIS", "HIP", "BLADDER", "PROSTATE", "UTERUS", "SIJOINT"), "pelvis"),
    "ABDOMENPELVIS": "abdomen-pelvis", "ABDPELVIS": "abdomen-pelvis",
    "CHESTABDPELVIS": "chest-abdomen-pelvis", "CHESTABDOMENPELVIS": "chest-abdomen-pelvis",
    **dict.fromkeys(("SPINE", "CSPINE", "TSPINE", "LSPINE", "SSPINE", "WHOLESPINE", "COCCYX", "SACRUM"), "spine"),
    **dict.fromkeys(("SHOULDER", "ELBOW", "WRIST", "HAND", "FINGER", "ARM", "FOREARM", "HUMERUS", "CLAVICLE",
                     "SCAPULA", "UPRXTREMITY", "UPPEREXTREMITY"), "upper-limb"),
    **dict.fromkeys(("KNEE", "ANKLE", "FOOT", "TOE", "HEEL", "LEG", "FEMUR", "TIBIA", "FIBULA", "THIGH",
                     "LOWREXTREMITY", "LOWEREXTREMITY"), "lower-limb"),
    "WHOLEBODY": "whole-body",
}

#: LOINC (Radiology Playbook) and CPT procedure codes -> region; descriptions cover the rest.
PROCEDURE_REGIONS: dict[str, str] = {
    # LOINC
    "36643-5": "chest", "29252-4": "chest", "24627-2": "chest", "87856-1": "chest", "39632-0": "chest",
    "24590-2": "head", "30799-1": "head", "30799-8": "head",
    "24531-6": "abdomen", "24558-9": "abdomen",
    "36813-4": "abdomen-pelvis", "42274-1": "chest-abdomen-pelvis", "37636-8": "pelvis",
    "24743-7": "lower-limb", "24675-1": "lower-limb",
    "37637-6": "spine", "24927-6": "spine",
    "24606-6": "breast", "26291-5": "breast", "30794-2": "breast",
    "24842-7": "neck",
    "44139-6": "whole-body", "39811-0": "whole-body",
    # CPT
    "71045": "chest", "71046": "chest", "71250": "chest", "71260": "chest", "71271": "chest",
    "70450": "head", "70551": "head", "70553": "head",
    "74176": "abdomen-pelvis", "74177": "abdomen-pelvis", "76700": "abdomen", "76770": "abdomen",
    "71275": "chest", "74178": "abdomen-pelvis",
    "77067": "breast", "77065": "breast", "77066": "breast", "76641": "breast", "76642": "breast",
    "73721": "lower-limb", "73560": "lower-limb", "72148": "spine", "72100": "spine", "76536": "neck",
    "78815": "whole-body", "78816": "whole-body", "78306": "whole-body",
}

#: Description keywords (whole words, upper case) -> region. A description naming several trunk
#: regions ("CT CHEST/ABD/PELVIS") resolves to the combined region (see `_resolve`).
KEYWORDS: dict[str, tuple[str, ...]] = {
    "whole-body": ("WHOLE BODY", "WHOLEBODY", "TOTAL BODY", "SKULL BASE TO", "VERTEX TO", "EYES TO THIGH"),
    "spine": ("SPINE", "C-SPINE", "T-SPINE", "L-SPINE", "CSPINE", "TSPINE", "LSPINE", "LUMBAR", "SACRUM",
              "COCCYX", "MYELOGRAM", "CERVICAL SPINE", "THORACIC SPINE"),
    "breast": ("BREAST", "BREASTS", "MAMMO", "MAMMOGRAM", "MAMMOGRAPHY", "TOMOSYNTHESIS"),
    "head": ("HEAD", "BRAIN", "SKULL", "FACE", "FACIAL", "ORBIT", "ORBITS", "SINUS", "SINUSES", "IAC",
             "PITUITARY", "TMJ", "MANDIBLE"),
    "neck": ("NECK", "THYROID", "CAROTID", "CAROTIDS", "LARYNX", "PAROTID", "SOFT TISSUE NECK"),
    "chest": ("CHEST", "THORAX", "LUNG", "LUNGS", "CARDIAC", "HEART", "MYOCARDIAL", "CORONARY", "PULMONARY",
              "RIBS", "CTA CHEST"),
    "abdomen": ("ABDOMEN", "ABD", "ABDOMINAL", "LIVER", "RENAL", "KIDNEY", "KIDNEYS", "PANCREAS", "GALLBLADDER",
                "RUQ", "SPLEEN", "HEPATIC", "BILIARY", "MRCP", "ENTEROGRAPHY"),
    "pelvis": ("PELVIS", "PELVIC", "HIP", "HIPS", "BLADDER", "PROSTATE", "UTERUS", "OVARY", "OVARIES",
               "TRANSVAGINAL", "SACROILIAC"),
    "upper-limb": ("SHOULDER", "ELBOW", "WRIST", "HAND", "FINGER", "THUMB", "HUMERUS", "FOREARM", "CLAVICLE",
                   "SCAPULA", "ARM", "UPPER EXTREMITY", "UPPER LIMB"),
    "lower-limb": ("KNEE", "ANKLE", "FOOT", "FEET", "TOE", "HEEL", "CALCANEUS", "FEMUR", "TIBIA", "FIBULA",
                   "LEG", "THIGH", "LOWER EXTREMITY", "LOWER LIMB"),
}
_KEYWORD_RE = {region: re.compile(r"(?<![A-Z0-9])(" + "|".join(re.escape(w) for w in words) + r")(?![A-Z0-9])")
               for region, words in KEYWORDS.items()}

# --- modality comparability ---------------------------------------------------------------------

#: Modalities that are not images of the patient (reports, key objects, presentation states...).
NON_IMAGE = frozenset({"SR", "KO", "PR", "DOC", "SEG", "REG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD",
                       "PLAN", "FID", "AU", "ECG"})

#: Which modalities a reader compares, beyond "the same modality" (always comparable). `parts`
#: limits a group to studies whose shared anatomy includes one of those parts (None: anywhere).
#:
#: | group          | modalities      | where          | why                                           |
#: |----------------|-----------------|----------------|-----------------------------------------------|
#: | radiography    | CR, DX, RF      | anywhere       | the same projection images, digitised differently |
#: | chest          | CR, DX, CT      | chest          | a new nodule on CT is checked against old radiographs |
#: | musculoskeletal| CR, DX, CT, MR  | spine, pelvis, limbs | a joint, hip or spine MR/CT is read with radiographs |
#: | cross-section  | CT, MR, PT      | anywhere       | cross-sectional anatomy of the same region    |
#: | nuclear        | NM, PT          | anywhere       | functional imaging (bone scan vs PET)         |
#: | ultrasound     | US, CT, MR      | neck, abdomen, pelvis | organ follow-up (liver, kidney, thyroid)  |
#: | breast         | MG, US, MR      | breast         | BI-RADS work-up compares all three            |
#:
#: Everything else is comparable with itself only: MG outside the breast group, XA, OT.
COMPARABLE: tuple[dict[str, Any], ...] = (
    {"id": "radiography", "modalities": ("CR", "DX", "RF"), "parts": None},
    {"id": "chest-radiograph-ct", "modalities": ("CR", "DX", "CT"), "parts": ("chest",)},
    {"id": "musculoskeletal", "modalities": ("CR", "DX", "CT", "MR"), "parts": ("spine", "pelvis", "upper-limb",
                                                                                "lower-limb")},
    {"id": "cross-section", "modalities": ("CT", "MR", "PT"), "parts": None},
    {"id": "nuclear", "modalities": ("NM", "PT"), "parts": None},
    {"id": "ultrasound", "modalities": ("US", "CT", "MR"), "parts": ("neck", "abdomen", "pelvis")},
    {"id": "breast", "modalities": ("MG", "US", "MR"), "parts": ("breast",)},
)


def _image_modalities(modalities: Iterable[str]) -> set[str]:
    return {m.strip().upper() for m in modalities if m and m.strip().upper() not in NON_IMAGE}


def _resolve(found: Sequence[str]) -> str | None:
    """One region from the regions named, in order of appearance."""
    if not found:
        return None
    named = set(found)
    if "whole-body" in named:
        return "whole-body"
    if len(named) == 1:
        return found[0]
    parts = frozenset().union(*(REGIONS[r][1] for r in named))
    if {"chest", "abdomen", "pelvis"} <= parts:
        return "chest-abdomen-pelvis"
    if {"abdomen", "pelvis"} <= parts and not parts - {"abdomen", "pelvis"}:
        return "abdomen-pelvis"
    return found[0]


def _code(value: str) -> str:
    """`system|code` or a bare code -> the code, stripped."""
    return value.rsplit("|", 1)[-1].strip()


def _from_text(text: str) -> list[str]:
    upper = " ".join(text.upper().split())
    hits = []
    for region, pattern in _KEYWORD_RE.items():
        match = pattern.search(upper)
        if match:
            hits.append((match.start(), region))
    found = [region for _, region in sorted(hits)]
    # "SKULL BASE TO MID THIGH" names the extent of a whole-body scan, not the head as well.
    return ["whole-body"] if "whole-body" in found else found


def _from_body_site(value: str) -> list[str]:
    code = _code(value)
    if code in SNOMED_REGIONS:
        return [SNOMED_REGIONS[code]]
    compact = re.sub(r"[^A-Z]", "", code.upper())
    if compact in DICOM_REGIONS:
        return [DICOM_REGIONS[compact]]
    return _from_text(value)  # a display text such as "Knee region structure"


def _named(study: Study) -> list[str]:
    """Every region the study names, most trusted source first (see `body_region`)."""
    return list(_named_from(tuple(study.body_sites), tuple(study.procedure_codes), study.description))


@lru_cache(maxsize=8192)
def _named_from(body_sites: tuple[str, ...], procedure_codes: tuple[str, ...], description: str | None
                ) -> tuple[str, ...]:
    """`_named` on the fields themselves, memoised: a long history repeats the same few procedures."""
    return tuple(_named_uncached(body_sites, procedure_codes, description))


def _named_uncached(body_sites: tuple[str, ...], procedure_codes: tuple[str, ...], description: str | None
                    ) -> list[str]:
    found: list[str] = []
    for site in body_sites:
        found += [r for r in _from_body_site(site) if r not in found]
    ordered: list[str] = []
    for code in procedure_codes:
        region = PROCEDURE_REGIONS.get(_code(code))
        if region and region not in ordered:
            ordered.append(region)
    if not ordered:  # no known code: the procedure's own words ("CT CHEST W CONTRAST"), then the description
        for text in procedure_codes:
            ordered += [r for r in _from_text(text) if r not in ordered]
    if not ordered and description:
        ordered = _from_text(description)
    if not found:
        return ordered
    # The procedure (code or description) names what was examined as a whole; series body sites
    # are often partial (a CT chest/abdomen/pelvis whose only tagged series says ABDOMEN). When
    # the procedure covers every part the sites name, the procedure's fuller anatomy counts.
    site_parts = frozenset().union(*(REGIONS[r][1] for r in found))
    proc_parts = frozenset().union(*(REGIONS[r][1] for r in ordered)) if ordered else frozenset()
    if ordered and site_parts < proc_parts:
        return ordered
    return found


def body_region(study: Study) -> str | None:
    """The study's body region id (a key of `REGIONS`), or None when nothing names one.

    From the series' body sites, unless the procedure code or description names a larger
    anatomy that includes them (CT CHEST/ABD/PELVIS whose series say ABDOMEN is chest + abdomen
    + pelvis); then the procedure codes; then the description.
    """
    return _region_from(tuple(study.body_sites), tuple(study.procedure_codes), study.description)


@lru_cache(maxsize=8192)
def _region_from(body_sites: tuple[str, ...], procedure_codes: tuple[str, ...], description: str | None
                 ) -> str | None:
    return _resolve(_named_from(body_sites, procedure_codes, description))


#: The canonical order of anatomical parts in `regions` (head to toe).
PART_ORDER = ("head", "neck", "chest", "breast", "abdomen", "pelvis", "spine", "upper-limb", "lower-limb")


def parts_of(study: Study) -> frozenset[str]:
    """Every anatomical part the study covers (a multi-region study covers several)."""
    named = _named_from(tuple(study.body_sites), tuple(study.procedure_codes), study.description)
    return frozenset().union(*(REGIONS[r][1] for r in named)) if named else frozenset()


def regions(study: Study) -> list[str]:
    """The parts covered, head to toe: CT chest/abdomen/pelvis -> ["chest", "abdomen", "pelvis"]."""
    parts = parts_of(study)
    return [p for p in PART_ORDER if p in parts]


def region_label(region: str | None) -> str | None:
    return REGIONS[region][0] if region in REGIONS else None


def comparable(a: Iterable[str], b: Iterable[str], region_a: str | None, region_b: str | None) -> bool:
    """Whether two studies (modalities, regions) are worth comparing: overlapping anatomy, comparable modality."""
    if region_a not in REGIONS or region_b not in REGIONS:
        return False
    return comparable_parts(a, b, REGIONS[region_a][1], REGIONS[region_b][1])


def comparable_parts(a: Iterable[str], b: Iterable[str], parts_a: frozenset[str], parts_b: frozenset[str]) -> bool:
    """`comparable` on the anatomical parts each study covers (multi-region studies cover several)."""
    shared = parts_a & parts_b
    if not shared:
        return False
    mods_a, mods_b = _image_modalities(a), _image_modalities(b)
    if mods_a & mods_b:
        return True
    for group in COMPARABLE:
        if group["parts"] is not None and not shared & set(group["parts"]):
            continue
        members = set(group["modalities"])
        if mods_a & members and mods_b & members:
            return True
    return False


def is_relevant_prior(current: Study, candidate: Study, *,
                      parts: dict[str, frozenset[str]] | None = None) -> bool:
    """Earlier than `current`, overlapping anatomy, comparable modality (see `COMPARABLE`)."""
    if candidate.uid == current.uid or candidate.started is None or current.started is None:
        return False
    if _sort_key(candidate) >= _sort_key(current):
        return False
    parts_cur = parts[current.uid] if parts and current.uid in parts else parts_of(current)
    parts_cand = parts[candidate.uid] if parts and candidate.uid in parts else parts_of(candidate)
    return comparable_parts(current.modalities, candidate.modalities, parts_cur, parts_cand)


def relevant_priors(current: Study, studies: Iterable[Study]) -> set[str]:
    """UIDs of the relevant priors of `current` among `studies`."""
    studies = list(studies)
    parts = {s.uid: parts_of(s) for s in [current, *studies]}
    return {s.uid for s in studies if is_relevant_prior(current, s, parts=parts)}


#: How many of the most recent relevant priors are pinned under the current study (plus the oldest).
PINNED_RECENT = 3


def ranked_priors(current: Study, studies: Iterable[Study], *,
                  parts: dict[str, frozenset[str]] | None = None) -> list[Study]:
    """The relevant priors of `current`, best first.

    A reader compares with the most recent comparable study first, and with the oldest one to see
    slow change (a nodule stable for years): the first `PINNED_RECENT` are the most recent (the
    same modality and the same anatomy before merely comparable ones), then the oldest relevant
    prior, then the rest by recency.
    """
    parts = parts if parts is not None else {s.uid: parts_of(s) for s in [current, *studies]}
    found = [s for s in studies if is_relevant_prior(current, s, parts=parts)]
    if not found:
        return []
    mods = _image_modalities(current.modalities)
    mine = parts.get(current.uid) or parts_of(current)

    def closeness(s: Study) -> tuple[bool, datetime]:
        same = bool(mods & _image_modalities(s.modalities)) and (parts.get(s.uid) or frozenset()) == mine
        return same, _sort_key(s)

    by_recency = sorted(found, key=_sort_key, reverse=True)
    best = sorted(by_recency[:PINNED_RECENT * 2], key=closeness, reverse=True)[:PINNED_RECENT]
    oldest = by_recency[-1]
    head = best + ([oldest] if oldest not in best else [])
    return head + [s for s in by_recency if s not in head]


def _sort_key(study: Study) -> datetime:
    started = study.started
    if started is None:
        return datetime.min.replace(tzinfo=UTC)
    return started if started.tzinfo else started.replace(tzinfo=UTC)


IN_PROGRESS_ORDER = frozenset({"in-progress", "active"})


def context_study(studies: Iterable[Study], ctx: LaunchContext | None) -> Study | None:
    """The study the launch names: SMART App Launch 2.x `fhirContext` ImagingStudy or ServiceRequest.

    `ImagingStudy/<id>` names a study whose FHIR id (`ids`) or StudyInstanceUID equals `<id>`;
    `ServiceRequest/<id>` names the study fulfilling that order.
    """
    studies = list(studies)
    for ref in ctx.fhir_context if ctx else ():
        rtype, _, rid = ref.partition("/")
        for study in studies:
            if rtype == "ImagingStudy" and (study.uid == rid or rid in (getattr(study, "ids", None) or ())):
                return study
            if rtype == "ServiceRequest" and any(order.id == rid for order in study.orders):
                return study
    return None


def current_study(studies: Iterable[Study], ctx: LaunchContext | None, *, today: date | None = None
                  ) -> Study | None:
    """The study this visit is about, or None; never merely the newest old study (that is `latest_study`).

    1. The `fhirContext` study or order (`context_study`).
    2. Else a study of today (the clinician's local date `today`), one ordered in the launch
       encounter (ServiceRequest.encounter), or one whose order is still in progress: the newest
       such. A 7-month-old outside CT is not "current" because it is newest.
    """
    studies = list(studies)
    named = context_study(studies, ctx)
    if named is not None:
        return named
    if today is None:
        return None
    encounter = ctx.encounter_id if ctx else None
    live = [s for s in studies if s.started is not None and (
        _local_day(s.started) == today
        or any((o.status or "").lower() == "in-progress" or (encounter and o.encounter == encounter)
               for o in s.orders))]
    return max(live, key=_sort_key) if live else None


def latest_study(studies: Iterable[Study]) -> Study | None:
    """The newest dated study (the first undated one when none is dated)."""
    studies = list(studies)
    dated = [s for s in studies if s.started is not None]
    return max(dated, key=_sort_key) if dated else (studies[0] if studies else None)


def _local_day(moment: datetime) -> date:
    """The calendar day of a study: DICOM times are local (naive); FHIR instants are converted to local."""
    return moment.astimezone().date() if moment.tzinfo else moment.date()


# --- needs attention ----------------------------------------------------------------------------

STAT_ORDER = "stat order"
URGENT_ORDER = "urgent order"
CRITICAL_RESULT = "critical result"
ABNORMAL_RESULT = "abnormal result"
NO_FINAL_REPORT = "no final report"

FINAL_REPORT = frozenset({"final", "amended", "corrected", "appended"})
PENDING_REPORT = frozenset({"registered", "partial", "preliminary"})
CLOSED_ORDER = frozenset({"completed", "revoked", "entered-in-error", "cancelled"})
RECENT = timedelta(days=30)


#: How long a final (signed, hence communicated) critical result stays in "Needs attention".
CRITICAL_WINDOW = timedelta(days=7)


def attention(study: Study, *, now: datetime | None = None, recent: timedelta = RECENT,
              critical_window: timedelta = CRITICAL_WINDOW) -> list[str]:
    """Why a study needs attention, most serious first; empty when it does not.

    * "stat order" / "urgent order": a stat (or urgent/asap) order that is still open, or any stat
      or urgent order on a study from the last `recent` days. A completed urgent order from years
      ago is history, not a to-do.
    * "critical result": a report flagged critical that is not final yet, or a final one issued
      (else the study started) within `critical_window`. A final critical report has been
      communicated to the ordering clinician (ACR Practice Parameter for Communication of
      Diagnostic Imaging Findings: critical findings are called before or as the report is
      signed); a 9-month-old one is history.
    * "abnormal result": an abnormal report on a study from the last `recent` days.
    * "no final report": a report still registered/partial/preliminary, or a recent study with
      no report at all. Old studies without a known report (archive-only) are not flagged.
    """
    now = now or datetime.now(UTC)
    started = _sort_key(study) if study.started else None
    is_recent = started is not None and now - started <= recent
    reasons: list[str] = []
    open_or_recent = [o for o in study.orders if is_recent or (o.status or "").lower() not in CLOSED_ORDER]
    priorities = {(o.priority or "").lower() for o in open_or_recent}
    if "stat" in priorities:
        reasons.append(STAT_ORDER)
    elif priorities & {"urgent", "asap"}:
        reasons.append(URGENT_ORDER)
    if any(_critical_open(r, started, now, critical_window) for r in study.reports):
        reasons.append(CRITICAL_RESULT)
    elif is_recent and any(r.abnormal for r in study.reports):
        reasons.append(ABNORMAL_RESULT)
    statuses = {(r.status or "").lower() for r in study.reports}
    if not statuses & FINAL_REPORT and (statuses & PENDING_REPORT or (is_recent and not study.reports)):
        reasons.append(NO_FINAL_REPORT)
    return reasons


def _critical_open(report: Report, started: datetime | None, now: datetime, window: timedelta) -> bool:
    if not report.critical:
        return False
    if (report.status or "").lower() not in FINAL_REPORT:
        return True
    when = report.issued or started
    if when is None:
        return False
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    return now - when <= window


# --- the browser's copy of the rules ------------------------------------------------------------


def rules_json() -> dict[str, Any]:
    """The region and comparability tables for timeline.js (rendered into the page as JSON data)."""
    return {
        "version": 1,
        "regions": {rid: {"label": label, "parts": sorted(parts)} for rid, (label, parts) in REGIONS.items()},
        "nonImage": sorted(NON_IMAGE),
        "comparable": [{"id": g["id"], "modalities": list(g["modalities"]),
                        "parts": list(g["parts"]) if g["parts"] is not None else None} for g in COMPARABLE],
    }
