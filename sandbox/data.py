"""The sandbox's synthetic patients, studies, reports and orders: deterministic typed dataclasses.

Identifier domains (all OIDs are under 2.999, the ISO/ITU-T arc reserved for examples, so they
can never collide with a real organisation's):

* ``MRN_SYSTEM`` - the sandbox EHR's medical record numbers (``SB1000nn``).
* ``OUTSIDE_SYSTEM`` - the outside facility's (Riverside Regional) MRNs (``RRH-5501nn``), listed
  on the EHR Patient too when the two records are linked.
* ``PACS_ISSUER`` - IssuerOfPatientID in the sandbox DICOMweb archive, whose PatientID is the MRN
  value: an archive configured with ``identifier_system = MRN_SYSTEM`` and
  ``issuer_of_patient_id = PACS_ISSUER`` maps one to the other.
* ``OUTSIDE_PACS_ISSUER`` - outside-facility studies shared through the same archive keep the
  outside identity (PatientID = outside MRN).

Patients (EHR ids): ``pat-amy`` (typical), ``pat-ben`` (outside record spells the name
"Benjamen": name-differs badge; STAT CT head with only a preliminary report), ``pat-carla`` (no
outside identifier: "not linked"), ``pat-dev`` (one archive study carries PatientBirthDate
1949-11-03 instead of 1949-11-30: the wrong-patient guard withholds it), ``pat-elena`` (an outside
study whose Endpoint is an unconfigured foreign host), ``pat-faye`` (one study per report source
and format: HTML, PDF and RTF ``presentedForm``, a ``DocumentReference``-only note, an empty
``conclusion``, a DICOM SR and an Encapsulated PDF in the PACS, and a hostile HTML report).

Wrong-patient traps in the DICOMweb archive (documented on ``TRAP_STUDY_KEYS``): another
patient's study whose PatientID is ``sb100001`` (Amy's MRN in lower case, from a legacy RIS) -
returned for Amy only when the archive matches PatientID case-insensitively, as Orthanc can - and
another clinic's patient with PatientID ``SB100001`` but IssuerOfPatientID ``NORTHGATE-CLINIC``,
returned whenever a query omits the issuer.

Dates are offsets from ``today`` so the demo always has a "recent" STAT study; everything else,
UIDs included, is fixed, so tests are stable.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

MRN_SYSTEM = "urn:oid:2.999.7418.1.1"
OUTSIDE_SYSTEM = "urn:oid:2.999.7418.2.1"
ACCESSION_SYSTEM = "urn:oid:2.999.7418.1.2"  # EHR (RIS) accession numbers
OUTSIDE_ACCESSION_SYSTEM = "urn:oid:2.999.7418.2.2"
PACS_ISSUER = "SANDBOX-PACS"
OUTSIDE_PACS_ISSUER = "RIVERSIDE-RRH"
OTHER_CLINIC_ISSUER = "NORTHGATE-CLINIC"
DICOM_UID_SYSTEM = "urn:dicom:uid"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
DICOM_DCM = "http://dicom.nema.org/resources/ontology/DCM"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"

EHR_INSTITUTION = "Sandbox General Hospital"
OUTSIDE_INSTITUTION = "Riverside Regional Hospital"

# Endpoint ids. The sandbox archive's address is only known per request (host:port), so the
# FHIR layer fills it in; the foreign one is deliberately a host no deployment configures.
EHR_PACS_ENDPOINT = "sandbox-pacs"
OUTSIDE_PACS_ENDPOINT = "riverside-dicomweb"
FOREIGN_PACS_ENDPOINT = "unknown-pacs"
FOREIGN_PACS_ADDRESS = "https://pacs.unknown-host.example/dicomweb"

PRACTITIONER_ID = "sandbox-dr-radiant"
UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:imaging-timeline:sandbox")

# "ehr" (EHR FHIR), "pacs" (sandbox DICOMweb), "outside" (outside FHIR), "ehr-report" (the EHR has
# the report and order but no ImagingStudy: linked to the PACS study by accession number only)
Location = str


@dataclass(frozen=True, slots=True)
class Code:
    """A coded concept (FHIR Coding)."""

    system: str
    code: str
    display: str


@dataclass(frozen=True, slots=True)
class BodySite:
    """Where a series was acquired: DICOM BodyPartExamined and its SNOMED concept."""

    dicom: str
    snomed: str
    display: str


@dataclass(frozen=True, slots=True)
class DicomPatient:
    """The patient as the DICOM header names them (may deliberately disagree with the EHR)."""

    patient_id: str
    issuer: str
    name: str  # DICOM PN, "Family^Given"
    birth_date: date
    sex: str  # M | F | O


@dataclass(frozen=True, slots=True)
class SandboxPatient:
    """An EHR patient, with their outside-facility record when linked."""

    id: str
    family: str
    given: tuple[str, ...]
    birth_date: date
    gender: str  # FHIR administrative gender
    mrn: str
    outside_mrn: str | None = None
    outside_id: str | None = None  # the outside facility's own Patient id
    outside_family: str | None = None  # spelling in the outside record, when it differs
    outside_given: tuple[str, ...] | None = None
    encounter_id: str | None = None  # a current encounter, for EHR launches
    # Whether the EHR's Patient lists the outside MRN; when not, only the sandbox PIXm manager
    # knows the cross-reference (identity not reconciled in the EHR itself).
    outside_mrn_in_ehr: bool = True

    @property
    def name(self) -> str:
        return " ".join((*self.given, self.family))

    @property
    def dicom_name(self) -> str:
        return f"{self.family.upper()}^{' '.join(self.given).upper()}"

    @property
    def dicom_sex(self) -> str:
        return {"female": "F", "male": "M"}.get(self.gender, "O")

    def dicom_patient(self) -> DicomPatient:
        return DicomPatient(self.mrn, PACS_ISSUER, self.dicom_name, self.birth_date, self.dicom_sex)


@dataclass(frozen=True, slots=True)
class SandboxSeries:
    """One series of a study."""

    number: int
    uid: str
    modality: str
    description: str
    body_site: BodySite
    instances: int


@dataclass(frozen=True, slots=True)
class SandboxReport:
    """The radiology report (DiagnosticReport) of a study.

    ``interpretation`` is a v3 ObservationInterpretation code carried in ``conclusionCode``:
    N normal, A abnormal, AA critical abnormal.
    """

    id: str
    status: str  # preliminary | final | amended
    issued: datetime
    conclusion: str
    interpretation: str = "N"
    finding: Code | None = None
    # The full report (issue 9). `form` is how the EHR presents it: "text" (inline text/plain
    # presentedForm), "html" / "pdf" / "rtf" (presentedForm.url -> Binary), "none" (conclusion
    # only). `resource` "DocumentReference" makes it a US Core note only; "dicom" keeps it in the
    # PACS only (as an SR or Encapsulated PDF, see SandboxStudy.dicom_report).
    findings: str | None = None
    form: str = "text"
    addendum: str | None = None
    resource: str = "DiagnosticReport"
    html: str | None = None  # a given HTML body (else one is made from findings + conclusion)
    comparison: str | None = None


@dataclass(frozen=True, slots=True)
class SandboxOrder:
    """The imaging order (ServiceRequest) behind a study."""

    id: str
    priority: str  # routine | urgent | asap | stat
    status: str  # active | completed
    authored: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class SandboxStudy:
    """One imaging study and where the sandbox holds it."""

    key: str
    uid: str
    patient_id: str | None  # EHR patient; None for a trap study of someone else
    started: datetime
    description: str
    procedure: Code
    reason: str
    accession: str
    referrer: str  # DICOM PN
    institution: str
    series: tuple[SandboxSeries, ...]
    locations: frozenset[Location]
    dicom_patient: DicomPatient
    report: SandboxReport | None = None
    order: SandboxOrder | None = None
    outside_patient_id: str | None = None  # subject at the outside facility
    outside_endpoint: str | None = None
    dicom_report: str | None = None  # "sr" (Basic Text SR) or "pdf" (Encapsulated PDF) series in the PACS

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.modality for s in self.series))

    @property
    def instance_count(self) -> int:
        return sum(s.instances for s in self.series)


@dataclass(frozen=True, slots=True)
class StandaloneOrder:
    """An order with no study yet (scheduled)."""

    order: SandboxOrder
    patient_id: str
    procedure: Code
    scheduled_for: datetime | None = None  # ServiceRequest.occurrenceDateTime
    location: str | None = None  # where it is scheduled (ServiceRequest.locationReference display)


@dataclass(frozen=True, slots=True)
class SandboxData:
    """Everything the sandbox serves."""

    patients: tuple[SandboxPatient, ...]
    studies: tuple[SandboxStudy, ...]
    orders: tuple[StandaloneOrder, ...] = ()
    _by_id: dict[str, SandboxPatient] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_id.update({p.id: p for p in self.patients})

    def patient(self, patient_id: str) -> SandboxPatient | None:
        return self._by_id.get(patient_id)

    def studies_in(self, location: Location) -> tuple[SandboxStudy, ...]:
        return tuple(s for s in self.studies if location in s.locations)

    def merged(self, other: SandboxData) -> SandboxData:
        return SandboxData(self.patients + other.patients, self.studies + other.studies,
                           self.orders + other.orders)


# --- vocabulary ---------------------------------------------------------------------------------

CHEST = BodySite("CHEST", "51185008", "Thoracic structure")
ABDOMEN = BodySite("ABDOMEN", "818983003", "Abdomen")
HEAD = BodySite("HEAD", "69536005", "Head structure")
BRAIN = BodySite("BRAIN", "12738006", "Brain structure")
KNEE = BodySite("KNEE", "72696002", "Knee region structure")
BREAST = BodySite("BREAST", "76752008", "Breast structure")
LSPINE = BodySite("LSPINE", "122496007", "Lumbar spine structure")
PELVIS = BodySite("PELVIS", "12921003", "Pelvis structure")
WHOLEBODY = BodySite("WHOLEBODY", "38266002", "Entire body as a whole")
HEART = BodySite("HEART", "80891009", "Heart structure")
KIDNEY = BodySite("KIDNEY", "64033007", "Kidney structure")
THYROID = BodySite("THYROID", "69748006", "Thyroid structure")
ABDPELVIS = BodySite("ABDOMENPELVIS", "818982008", "Abdomen and pelvis")


def _loinc(code: str, display: str) -> Code:
    return Code(LOINC, code, display)


CODES = {
    "xr-chest": _loinc("36643-5", "XR Chest 2 Views"),
    "mr-brain": _loinc("24590-2", "MR Brain WO contrast"),
    "us-abd": _loinc("24531-6", "US Abdomen"),
    "ct-abdpel": _loinc("36813-4", "CT Abdomen and Pelvis W contrast IV"),
    "mr-knee": _loinc("24743-7", "MR Knee WO contrast"),
    "ct-head": _loinc("30799-1", "CT Head WO contrast"),
    "ct-chest-ldct": _loinc("87856-1", "CT Chest WO contrast low dose for lung cancer screening"),
    "nm-mpi": _loinc("39632-0", "NM Heart perfusion at rest and stress"),
    "ct-chest": _loinc("29252-4", "CT Chest WO contrast"),
    "pet-ct": _loinc("44139-6", "PET+CT Whole body"),
    "xr-lspine": _loinc("37637-6", "XR Lumbar spine 2 or 3 Views"),
    "mg-screen": _loinc("24606-6", "MG Breast Screening"),
    "us-breast": _loinc("26291-5", "US Breast - left"),
    "mr-breast": _loinc("30794-2", "MR Breast bilateral W and WO contrast IV"),
    "ct-cap": _loinc("42274-1", "CT Chest and Abdomen and Pelvis W contrast IV"),
    "xr-pelvis": _loinc("37636-8", "XR Pelvis AP"),
    "mr-lspine": _loinc("24927-6", "MR Lumbar spine WO contrast"),
    "us-renal": _loinc("24558-9", "US Kidney"),
    "nm-bone": _loinc("39811-0", "NM Bone whole body"),
    "xr-knee": _loinc("24675-1", "XR Knee 3 Views"),
    "us-thyroid": _loinc("24842-7", "US Thyroid"),
    "ct-chest-ce": _loinc("24627-2", "CT Chest W contrast IV"),
    "mr-brain-ce": _loinc("30799-8", "MR Brain W and WO contrast IV"),
}

SERIES_PLAN: dict[str, tuple[tuple[str, str, BodySite, int], ...]] = {
    "xr-chest": (("CR", "PA", CHEST, 1), ("CR", "Lateral", CHEST, 1)),
    "mr-brain": (("MR", "Ax T2", BRAIN, 3), ("MR", "Sag T1", BRAIN, 2), ("MR", "Ax FLAIR", BRAIN, 3)),
    "us-abd": (("US", "RUQ", ABDOMEN, 4),),
    "ct-abdpel": (("CT", "Axial 5mm portal venous", ABDPELVIS, 4), ("CT", "Coronal reformat", ABDPELVIS, 2)),
    "mr-knee": (("MR", "Sag PD FS", KNEE, 3), ("MR", "Cor T1", KNEE, 2)),
    "ct-head": (("CT", "Axial 5mm brain", HEAD, 4),),
    "ct-chest-ldct": (("CT", "Axial 1mm lung", CHEST, 4),),
    "nm-mpi": (("NM", "Stress", HEART, 2), ("NM", "Rest", HEART, 2)),
    "ct-chest": (("CT", "Axial 2mm", CHEST, 4), ("CT", "Axial lung window", CHEST, 2)),
    "pet-ct": (("CT", "CT attenuation correction", WHOLEBODY, 3), ("PT", "PET AC", WHOLEBODY, 3)),
    "xr-lspine": (("DX", "AP", LSPINE, 1), ("DX", "Lateral", LSPINE, 1)),
    "mg-screen": (("MG", "R CC", BREAST, 1), ("MG", "L CC", BREAST, 1), ("MG", "R MLO", BREAST, 1),
                  ("MG", "L MLO", BREAST, 1)),
    "us-breast": (("US", "Left breast 2 o'clock", BREAST, 3),),
    "mr-breast": (("MR", "Ax T1 pre", BREAST, 2), ("MR", "Ax T1 post", BREAST, 2)),
    "ct-cap": (("CT", "Axial 5mm", ABDPELVIS, 4),),
    "xr-pelvis": (("DX", "AP pelvis", PELVIS, 1),),
    "mr-lspine": (("MR", "Sag T2", LSPINE, 3), ("MR", "Ax T2", LSPINE, 2)),
    "us-renal": (("US", "Kidneys", KIDNEY, 3),),
    "nm-bone": (("NM", "Whole body anterior/posterior", WHOLEBODY, 2),),
    "xr-knee": (("DX", "AP", KNEE, 1), ("DX", "Lateral", KNEE, 1), ("DX", "Sunrise", KNEE, 1)),
    "us-thyroid": (("US", "Thyroid", THYROID, 3),),
    "ct-chest-ce": (("CT", "Axial 3mm", CHEST, 4),),
    "mr-brain-ce": (("MR", "Ax T1 post", BRAIN, 3), ("MR", "Ax FLAIR", BRAIN, 2)),
}

# A few SNOMED findings for abnormal reports.
FINDINGS = {
    "gallstones": Code(SNOMED, "235919008", "Gallstone"),
    "acl": Code(SNOMED, "444448004", "Injury of anterior cruciate ligament"),
    "ischemia": Code(SNOMED, "414795007", "Myocardial ischemia"),
    "nodule": Code(SNOMED, "427359005", "Solitary nodule of lung"),
    "mass": Code(SNOMED, "126926005", "Neoplasm of breast"),
    "stone": Code(SNOMED, "95570007", "Kidney stone"),
    "thyroid": Code(SNOMED, "237495005", "Thyroid nodule"),
    "metastasis": Code(SNOMED, "94222008", "Secondary malignant neoplasm of bone"),
}

REFERRERS = ("RADIANT^JANE", "OKONKWO^CHIDI", "LINDQVIST^MARTA", "HARGREAVES^TOM")


def _uid(*parts: str) -> str:
    # PS3.5 B.2: a UID under 2.25 is the integer of a UUID; a name-based (v5) UUID keeps it stable.
    return f"2.25.{uuid.uuid5(UID_NAMESPACE, '/'.join(parts)).int}"


def study_uid(key: str) -> str:
    """The StudyInstanceUID of a study key: a 2.25 UUID-derived UID, stable across runs."""
    return _uid("study", key)


def series_uid(key: str, number: int) -> str:
    return _uid("series", key, str(number))


def instance_uid(key: str, series_number: int, instance_number: int) -> str:
    return _uid("sop", key, str(series_number), str(instance_number))


# --- the standard data set ------------------------------------------------------------------------

PATIENTS = (
    SandboxPatient("pat-amy", "Shaw", ("Amy", "V."), date(1987, 2, 20), "female", "SB100001",
                   outside_mrn="RRH-550101", outside_id="rrh-9001"),
    SandboxPatient("pat-ben", "Okafor", ("Benjamin",), date(1962, 9, 14), "male", "SB100002",
                   outside_mrn="RRH-550102", outside_id="rrh-9002", outside_given=("Benjamen",),
                   encounter_id="enc-ben-ed"),
    SandboxPatient("pat-carla", "Jiménez", ("Carla",), date(1975, 5, 3), "female", "SB100003"),
    SandboxPatient("pat-dev", "Patel", ("Devendra",), date(1949, 11, 30), "male", "SB100004",
                   outside_mrn="RRH-550104", outside_id="rrh-9004", outside_mrn_in_ehr=False),
    SandboxPatient("pat-elena", "Novak", ("Elena",), date(1958, 7, 22), "female", "SB100005",
                   outside_mrn="RRH-550105", outside_id="rrh-9005"),
)

# Faye: every way a radiology report reaches the chart (issue 9), one study each.
FAYE = SandboxPatient("pat-faye", "Lindqvist", ("Faye",), date(1968, 3, 9), "female", "SB100006",
                      outside_mrn="RRH-550106", outside_id="rrh-9006")

#: The hostile HTML report: every element must arrive inert (script, iframe, handlers, javascript:, remote image).
HOSTILE_REPORT_HTML = (
    '<h2>Findings</h2><p>Mild tricompartmental degenerative change.'
    '<img src="https://tracker.invalid/pixel.png" alt="">'
    '<img src="x" onerror="window.__hostileRan=true"></p>'
    '<script>window.__hostileRan = true; alert("x")</script>'
    '<iframe src="https://tracker.invalid/frame"></iframe>'
    '<style>body{display:none}</style>'
    '<form action="https://tracker.invalid/steal"><input name="q"><button>Send</button></form>'
    '<p onclick="window.__hostileRan=true" style="background:url(https://tracker.invalid/bg.png)">'
    'See <a href="javascript:window.__hostileRan=true">the prior</a>.</p>'
    '<h2>Impression</h2><p>Moderate osteoarthritis of the knee. No fracture.</p>')

EHR_PACS = frozenset({"ehr", "pacs"})
EHR_ONLY = frozenset({"ehr"})
PACS_ONLY = frozenset({"pacs"})
PACS_WITH_EHR_REPORT = frozenset({"pacs", "ehr-report"})
OUTSIDE_SHARED = frozenset({"outside", "pacs"})
OUTSIDE_ONLY = frozenset({"outside"})
EVERYWHERE = frozenset({"outside", "ehr", "pacs"})

# (key, patient, days ago, procedure, description, reason, locations, report, order)
# report: (status, interpretation, conclusion, finding key) or None;
# order: (priority, status) or None.
_PLAN: tuple[tuple, ...] = (
    ("amy-xr-chest", "pat-amy", 2200, "xr-chest", "XR CHEST 2 VIEWS", "Cough for 3 weeks", EHR_PACS,
     ("final", "N", "No acute cardiopulmonary abnormality.", None), ("routine", "completed")),
    ("amy-mr-brain", "pat-amy", 1500, "mr-brain", "MRI BRAIN WO CONTRAST", "Chronic headaches", EHR_PACS,
     ("final", "N", "Normal MRI of the brain.", None), ("routine", "completed")),
    ("amy-us-abd", "pat-amy", 1100, "us-abd", "US ABDOMEN COMPLETE", "Right upper quadrant pain", EHR_ONLY,
     ("final", "A", "Cholelithiasis without sonographic evidence of cholecystitis.", "gallstones"),
     ("routine", "completed")),
    ("amy-ct-abdpel", "pat-amy", 760, "ct-abdpel", "CT ABD/PELVIS W CONTRAST", "Abdominal pain",
     PACS_WITH_EHR_REPORT, ("final", "N", "No acute abdominal or pelvic abnormality. Cholelithiasis again noted.",
                            None), ("routine", "completed")),
    ("amy-mr-knee", "pat-amy", 380, "mr-knee", "MRI KNEE LEFT WO CONTRAST", "Twisting injury, instability",
     EHR_PACS, ("amended", "A", "Complete tear of the anterior cruciate ligament. Addendum: small joint "
                "effusion.", "acl"), ("routine", "completed")),
    ("amy-osh-ct-head", "pat-amy", 240, "ct-head", "CT HEAD WO CONTRAST", "Fall, head strike", OUTSIDE_SHARED,
     ("final", "N", "No acute intracranial abnormality.", None), None),
    ("ben-ldct", "pat-ben", 1800, "ct-chest-ldct", "CT CHEST LOW DOSE SCREENING", "Lung cancer screening",
     EHR_PACS, ("final", "N", "Lung-RADS 2: benign appearance.", None), ("routine", "completed")),
    ("ben-nm-mpi", "pat-ben", 1100, "nm-mpi", "NM MYOCARDIAL PERFUSION SPECT", "Exertional chest pain",
     EHR_PACS, ("final", "A", "Small reversible inferior perfusion defect.", "ischemia"),
     ("urgent", "completed")),
    ("ben-osh-ct-chest", "pat-ben", 550, "ct-chest", "CT CHEST WO CONTRAST", "Nodule follow-up", EVERYWHERE,
     ("final", "A", "Stable 6 mm right upper lobe nodule.", "nodule"), None),
    ("ben-pet-ct", "pat-ben", 300, "pet-ct", "PET/CT SKULL BASE TO MID THIGH", "Staging", EHR_PACS,
     ("final", "AA", "Multiple FDG-avid osseous lesions consistent with metastases. Critical result "
      "communicated to Dr. Radiant.", "metastasis"), ("urgent", "completed")),
    ("ben-xr-lspine", "pat-ben", 180, "xr-lspine", "XR LUMBAR SPINE 2-3 VIEWS", "Low back pain", EHR_ONLY,
     ("final", "N", "Mild degenerative change. No fracture.", None), ("routine", "completed")),
    ("ben-ct-head-stat", "pat-ben", 1, "ct-head", "CT HEAD WO CONTRAST", "Acute confusion", EHR_PACS,
     ("preliminary", "N", "Preliminary: no acute intracranial hemorrhage.", None), ("stat", "active")),
    ("carla-mg-1", "pat-carla", 1460, "mg-screen", "MAMMO SCREENING BILATERAL", "Screening", EHR_PACS,
     ("final", "N", "BI-RADS 1: negative.", None), ("routine", "completed")),
    ("carla-mg-2", "pat-carla", 730, "mg-screen", "MAMMO SCREENING BILATERAL", "Screening", EHR_PACS,
     ("final", "A", "BI-RADS 0: incomplete; left breast asymmetry, recall for diagnostic imaging.", None),
     ("routine", "completed")),
    ("carla-us-breast", "pat-carla", 710, "us-breast", "US BREAST LEFT LIMITED", "Recall from screening",
     EHR_PACS, ("final", "A", "BI-RADS 4: suspicious 9 mm mass, biopsy recommended.", "mass"),
     ("urgent", "completed")),
    ("carla-mr-breast", "pat-carla", 660, "mr-breast", "MRI BREAST BILATERAL W/WO", "Extent of disease",
     EHR_PACS, ("amended", "A", "Biopsy-proven malignancy left breast, 11 mm. Addendum: no contralateral "
                "disease.", "mass"), ("routine", "completed")),
    ("carla-ct-cap", "pat-carla", 365, "ct-cap", "CT CHEST/ABD/PELVIS W CONTRAST", "Staging", EHR_PACS,
     ("final", "N", "No evidence of metastatic disease.", None), ("routine", "completed")),
    ("carla-mg-3", "pat-carla", 90, "mg-screen", "MAMMO DIAGNOSTIC BILATERAL", "Post-treatment surveillance",
     PACS_ONLY, None, None),
    ("dev-xr-chest", "pat-dev", 2600, "xr-chest", "XR CHEST 2 VIEWS", "Dyspnea", EHR_PACS,
     ("final", "N", "No acute abnormality.", None), ("routine", "completed")),
    ("dev-ct-abdpel", "pat-dev", 1850, "ct-abdpel", "CT ABD/PELVIS W CONTRAST", "Hematuria", EHR_PACS,
     ("final", "A", "4 mm nonobstructing left renal calculus.", "stone"), ("routine", "completed")),
    ("dev-xr-pelvis", "pat-dev", 1100, "xr-pelvis", "XR PELVIS AP", "Hip pain", PACS_ONLY, None, None),
    ("dev-mr-lspine", "pat-dev", 700, "mr-lspine", "MRI LUMBAR SPINE WO CONTRAST", "Radiculopathy",
     EHR_PACS, ("final", "A", "L4-5 disc extrusion with left L5 nerve root compression.", None),
     ("routine", "completed")),
    ("dev-osh-nm-bone", "pat-dev", 420, "nm-bone", "NM BONE SCAN WHOLE BODY", "Elevated PSA",
     OUTSIDE_SHARED, ("final", "N", "No scintigraphic evidence of osseous metastases.", None), None),
    ("dev-us-renal", "pat-dev", 330, "us-renal", "US RENAL COMPLETE", "Flank pain", EHR_ONLY,
     ("final", "A", "Stable left renal calculus, no hydronephrosis.", "stone"), ("routine", "completed")),
    ("dev-ct-chest", "pat-dev", 14, "ct-chest-ce", "CT CHEST W CONTRAST", "Hemoptysis", EHR_PACS,
     ("final", "A", "New 2.1 cm spiculated left upper lobe mass.", "nodule"), ("urgent", "completed")),
    ("elena-mg", "pat-elena", 2100, "mg-screen", "MAMMO SCREENING BILATERAL", "Screening", EHR_PACS,
     ("final", "N", "BI-RADS 2: benign findings.", None), ("routine", "completed")),
    ("elena-xr-knee", "pat-elena", 1400, "xr-knee", "XR KNEE RIGHT 3 VIEWS", "Knee pain", EHR_PACS,
     ("final", "A", "Moderate medial compartment osteoarthritis.", None), ("routine", "completed")),
    ("elena-ct-head", "pat-elena", 1050, "ct-head", "CT HEAD WO CONTRAST", "Syncope", EHR_PACS,
     ("final", "N", "No acute intracranial abnormality.", None), ("urgent", "completed")),
    ("elena-pet-ct", "pat-elena", 700, "pet-ct", "PET/CT SKULL BASE TO MID THIGH", "Lymphoma staging",
     EHR_PACS, ("final", "A", "FDG-avid cervical lymphadenopathy.", None), ("routine", "completed")),
    ("elena-osh-mr-brain", "pat-elena", 365, "mr-brain-ce", "MRI BRAIN W/WO CONTRAST", "Headache",
     OUTSIDE_ONLY, ("final", "N", "No enhancing lesion.", None), None),
    ("elena-us-thyroid", "pat-elena", 150, "us-thyroid", "US THYROID", "Palpable neck nodule", EHR_PACS,
     ("preliminary", "A", "Preliminary: 1.4 cm TI-RADS 4 right thyroid nodule.", "thyroid"),
     ("urgent", "active")),
)

BIRTH_DATE_CONFLICT_KEY = "dev-xr-pelvis"
#: Studies of OTHER patients that a careless query for Amy would return (see module docstring).
TRAP_STUDY_KEYS = ("trap-case-mismatch", "trap-other-issuer")


def _at(today: date, days_ago: int, hour: int) -> datetime:
    day = today - timedelta(days=days_ago)
    return datetime.combine(day, time(hour, (days_ago * 7) % 60), tzinfo=UTC)


def _series(key: str, procedure: str) -> tuple[SandboxSeries, ...]:
    return tuple(SandboxSeries(n, series_uid(key, n), modality, desc, site, count)
                 for n, (modality, desc, site, count) in enumerate(SERIES_PLAN[procedure], start=1))


def _report(key: str, started: datetime, spec: tuple | None) -> SandboxReport | None:
    if spec is None:
        return None
    status, interpretation, conclusion, finding = spec
    issued = started + timedelta(hours=2 if status == "preliminary" else 20)
    # An amended report's conclusion ends "Addendum: ..." (the row's one line): the addendum is
    # also presented on its own, as the signed addition it is.
    addendum = conclusion.split("Addendum:", 1)[1].strip() if "Addendum:" in conclusion else None
    return SandboxReport(f"dr-{key}", status, issued, conclusion, interpretation,
                         FINDINGS.get(finding) if finding else None, addendum=addendum)


def _order(key: str, started: datetime, spec: tuple | None, reason: str) -> SandboxOrder | None:
    if spec is None:
        return None
    priority, status = spec
    lead = timedelta(minutes=40) if priority == "stat" else timedelta(days=3 if priority == "routine" else 1)
    return SandboxOrder(f"sr-{key}", priority, status, started - lead, reason)


def standard_data(today: date | None = None) -> SandboxData:
    """The five demo patients with their multi-year histories, plus the wrong-patient traps."""
    today = today or date.today()
    by_id = {p.id: p for p in PATIENTS}
    studies: list[SandboxStudy] = []
    for i, (key, pid, days_ago, proc, desc, reason, locs, report, order) in enumerate(_PLAN):
        patient = by_id[pid]
        started = _at(today, days_ago, 8 + i % 9)
        outside = "outside" in locs
        dicom_patient = patient.dicom_patient()
        if locs == OUTSIDE_SHARED:  # shared by Riverside: outside identity in the DICOM header
            dicom_patient = DicomPatient(patient.outside_mrn or "", OUTSIDE_PACS_ISSUER,
                                         (patient.outside_family or patient.family).upper() + "^"
                                         + " ".join(patient.outside_given or patient.given).upper(),
                                         patient.birth_date, patient.dicom_sex)
        if key == BIRTH_DATE_CONFLICT_KEY:  # day and month digits transposed at the modality
            dicom_patient = DicomPatient(patient.mrn, PACS_ISSUER, patient.dicom_name,
                                         date(1949, 11, 3), patient.dicom_sex)
        endpoint = None
        if outside:
            endpoint = FOREIGN_PACS_ENDPOINT if locs == OUTSIDE_ONLY else OUTSIDE_PACS_ENDPOINT
        studies.append(SandboxStudy(
            key=key, uid=study_uid(key), patient_id=pid, started=started, description=desc,
            procedure=CODES[proc], reason=reason,
            accession=("RRH" if outside else "SGH") + f"{24000 + i * 37:07d}",
            referrer=REFERRERS[i % len(REFERRERS)],
            institution=OUTSIDE_INSTITUTION if outside else EHR_INSTITUTION,
            series=_series(key, proc), locations=locs, dicom_patient=dicom_patient,
            report=_report(key, started, report), order=_order(key, started, order, reason),
            outside_patient_id=patient.outside_id if outside else None, outside_endpoint=endpoint,
        ))
    studies += _traps(today)
    studies += faye_studies(today)
    scheduled = StandaloneOrder(
        SandboxOrder("sr-amy-mr-knee-followup", "routine", "active", _at(today, 3, 10),
                     "Post-operative follow-up"), "pat-amy", CODES["mr-knee"],
        scheduled_for=_at(today, -2, 14), location="Riverside Imaging Center")
    return SandboxData((*PATIENTS, FAYE), tuple(studies), (scheduled,))


# (key, days ago, procedure, description, reason, locations, report fields, order priority, DICOM report)
_FAYE_PLAN: tuple[tuple, ...] = (
    ("faye-xr-chest", 1900, "xr-chest", "XR CHEST 2 VIEWS", "Persistent cough", EHR_PACS,
     {"form": "html", "findings": "The lungs are clear. Heart size is normal. No pleural effusion.",
      "conclusion": "No acute cardiopulmonary process."}, "routine", None),
    ("faye-ct-abdpel", 1200, "ct-abdpel", "CT ABD/PELVIS W CONTRAST", "Left lower quadrant pain", EHR_PACS,
     {"form": "pdf", "interpretation": "A", "findings": "Sigmoid diverticula with adjacent fat stranding. "
      "No abscess or free air.", "conclusion": "Acute uncomplicated sigmoid diverticulitis."}, "urgent", None),
    ("faye-us-thyroid", 800, "us-thyroid", "US THYROID", "Palpable neck nodule", EHR_ONLY,
     {"resource": "DocumentReference", "findings": "Right lobe 1.1 cm spongiform nodule (TI-RADS 1). Left "
      "lobe normal.", "conclusion": "Benign-appearing right thyroid nodule; no follow-up needed."}, "routine",
     None),
    ("faye-mr-brain", 500, "mr-brain", "MRI BRAIN WO CONTRAST", "Migraine with aura", EHR_PACS,
     {"conclusion": "", "findings": "No mass, hemorrhage or infarct. A few punctate T2 white matter "
      "hyperintensities, nonspecific.\nIMPRESSION: No acute intracranial abnormality; nonspecific white "
      "matter foci, common in migraine."}, "routine", None),
    ("faye-ct-chest", 300, "ct-chest", "CT CHEST WO CONTRAST", "Incidental nodule follow-up", PACS_ONLY,
     {"resource": "dicom", "interpretation": "N", "findings": "Stable 4 mm right lower lobe nodule.",
      "conclusion": "Stable 4 mm nodule over 12 months: benign, no further follow-up."}, None, "sr"),
    ("faye-mg", 200, "mg-screen", "MAMMO SCREENING BILATERAL", "Screening", PACS_ONLY,
     {"resource": "dicom", "form": "pdf", "findings": "Scattered fibroglandular densities. No suspicious "
      "mass or calcification.", "conclusion": "BI-RADS 1: negative."}, None, "pdf"),
    ("faye-xr-knee", 60, "xr-knee", "XR KNEE RIGHT 3 VIEWS", "Knee pain", EHR_PACS,
     {"form": "html", "html": HOSTILE_REPORT_HTML, "interpretation": "A",
      "conclusion": "Moderate osteoarthritis of the knee. No fracture."}, "routine", None),
    ("faye-xr-lspine", 20, "xr-lspine", "XR LUMBAR SPINE 2-3 VIEWS", "Low back pain after lifting", EHR_ONLY,
     {"form": "rtf", "findings": "Normal alignment. Disc heights preserved. No fracture.",
      "conclusion": "Normal lumbar spine radiographs."}, "routine", None),
)


def faye_studies(today: date) -> list[SandboxStudy]:
    """Faye's studies: one per report source and format (see _FAYE_PLAN)."""
    out = []
    for i, (key, days_ago, proc, desc, reason, locs, fields, priority, dicom_report) in enumerate(_FAYE_PLAN):
        started = _at(today, days_ago, 9 + i % 7)
        fields = dict(fields)
        conclusion = fields.pop("conclusion")
        interpretation = fields.pop("interpretation", "N")
        report = SandboxReport(f"dr-{key}", "final", started + timedelta(hours=6), conclusion, interpretation,
                               **fields)
        series = _series(key, proc)
        if dicom_report:
            modality = "SR" if dicom_report == "sr" else "DOC"
            series += (SandboxSeries(99, series_uid(key, 99), modality, "Radiology report", series[0].body_site, 1),)
        out.append(SandboxStudy(
            key=key, uid=study_uid(key), patient_id=FAYE.id, started=started, description=desc,
            procedure=CODES[proc], reason=reason, accession=f"SGH{25000 + i * 37:07d}",
            referrer=REFERRERS[i % len(REFERRERS)], institution=EHR_INSTITUTION, series=series, locations=locs,
            dicom_patient=FAYE.dicom_patient(), report=report,
            order=_order(key, started, (priority, "completed"), reason) if priority else None,
            dicom_report=dicom_report))
    return out


def _traps(today: date) -> list[SandboxStudy]:
    """Other patients' studies that a PatientID-only or case-insensitive query for Amy returns."""
    traps = [
        ("trap-case-mismatch", DicomPatient("sb100001", PACS_ISSUER, "WEBB^TOMAS", date(1971, 4, 2), "M"),
         "xr-chest", "XR CHEST 2 VIEWS", 500),
        ("trap-other-issuer", DicomPatient("SB100001", OTHER_CLINIC_ISSUER, "PRICE^DANIEL",
                                           date(1990, 8, 17), "M"), "ct-head", "CT HEAD WO CONTRAST", 200),
    ]
    return [SandboxStudy(
        key=key, uid=study_uid(key), patient_id=None, started=_at(today, days, 11), description=desc,
        procedure=CODES[proc], reason="", accession=f"NG{900000 + days}", referrer="NOBODY^KNOWN",
        institution="Northgate Clinic" if dp.issuer == OTHER_CLINIC_ISSUER else EHR_INSTITUTION,
        series=_series(key, proc), locations=PACS_ONLY, dicom_patient=dp,
    ) for key, dp, proc, desc, days in traps]


def big_patient(n_studies: int = 5000, today: date | None = None, seed: int = 7) -> SandboxData:
    """One patient (``pat-big``, MRN SB199999) with `n_studies` studies in the EHR and archive.

    For benchmarks: no images are generated until a study's instances are asked for.
    """
    today = today or date.today()
    rng = random.Random(seed)
    patient = SandboxPatient("pat-big", "Bigsby", ("Morgan",), date(1950, 1, 1), "other", "SB199999",
                             outside_mrn="RRH-559999", outside_id="rrh-9999")
    procs = sorted(SERIES_PLAN)
    studies = []
    for i in range(n_studies):
        key = f"big-{i:05d}"
        proc = rng.choice(procs)
        started = _at(today, rng.randrange(1, 365 * 30), 7 + i % 11)
        studies.append(SandboxStudy(
            key=key, uid=study_uid(key), patient_id=patient.id, started=started,
            description=CODES[proc].display.upper(), procedure=CODES[proc], reason="Benchmark",
            accession=f"BIG{i:07d}", referrer=REFERRERS[i % len(REFERRERS)], institution=EHR_INSTITUTION,
            series=_series(key, proc), locations=EHR_PACS, dicom_patient=patient.dicom_patient(),
            report=_report(key, started, ("final", "N", "Benchmark report.", None)),
        ))
    return SandboxData((patient,), tuple(studies))
