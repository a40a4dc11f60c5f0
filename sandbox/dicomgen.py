"""Real DICOM instances (pydicom Datasets, Part-10 bytes) for the sandbox studies, with synthetic pixels.

The instances are small (64x64 cross-sectional, 128x128 projection) 8-bit MONOCHROME2 images drawn
with Pillow, with the proper Storage SOP Class per modality, so the same studies load into a real
Orthanc. Query-level datasets (study, series) are built from the dataclasses without pixels, so a
5000-study benchmark patient costs nothing until one study's instances are asked for.
"""

from __future__ import annotations

import copy
import random
from functools import lru_cache
from io import BytesIO

from PIL import Image, ImageDraw
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    BasicTextSRStorage,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalXRayImageStorageForPresentation,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    NuclearMedicineImageStorage,
    PositronEmissionTomographyImageStorage,
    UltrasoundImageStorage,
)

from .data import SandboxSeries, SandboxStudy, instance_uid

SOP_CLASS = {
    "CT": CTImageStorage,
    "MR": MRImageStorage,
    "CR": ComputedRadiographyImageStorage,
    "DX": DigitalXRayImageStorageForPresentation,
    "MG": DigitalMammographyXRayImageStorageForPresentation,
    "US": UltrasoundImageStorage,
    "NM": NuclearMedicineImageStorage,
    "PT": PositronEmissionTomographyImageStorage,
}
PROJECTION = {"CR", "DX", "MG"}


def _da(value) -> str:
    return value.strftime("%Y%m%d")


def _tm(value) -> str:
    return value.strftime("%H%M%S")


def patient_module(study: SandboxStudy, ds: Dataset) -> Dataset:
    """Patient attributes as the archive holds them (from `study.dicom_patient`, never the EHR)."""
    p = study.dicom_patient
    ds.PatientName = p.name
    ds.PatientID = p.patient_id
    ds.IssuerOfPatientID = p.issuer
    ds.PatientBirthDate = _da(p.birth_date)
    ds.PatientSex = p.sex
    return ds


@lru_cache(maxsize=20_000)
def study_level_dataset(study: SandboxStudy) -> Dataset:
    """Every study-level attribute the archive can return for a QIDO-RS study query (cached: do not change)."""
    ds = patient_module(study, Dataset())
    ds.StudyInstanceUID = study.uid
    ds.StudyDate = _da(study.started)
    ds.StudyTime = _tm(study.started)
    ds.AccessionNumber = study.accession
    ds.StudyID = study.accession[-6:]
    ds.StudyDescription = study.description
    ds.ReferringPhysicianName = study.referrer
    ds.InstitutionName = study.institution
    ds.ModalitiesInStudy = list(study.modalities)
    ds.NumberOfStudyRelatedSeries = len(study.series)
    ds.NumberOfStudyRelatedInstances = study.instance_count
    ds.InstanceAvailability = "ONLINE"
    return ds


def series_level_dataset(study: SandboxStudy, series: SandboxSeries) -> Dataset:
    """Every series-level attribute the archive can return for a QIDO-RS series query."""
    ds = Dataset()
    ds.StudyInstanceUID = study.uid
    ds.SeriesInstanceUID = series.uid
    ds.Modality = series.modality
    ds.SeriesNumber = series.number
    ds.SeriesDescription = series.description
    ds.BodyPartExamined = series.body_site.dicom
    ds.PerformedProcedureStepStartDate = _da(study.started)
    ds.NumberOfSeriesRelatedInstances = series.instances
    ds.InstanceAvailability = "ONLINE"
    return ds


def _pixels(study: SandboxStudy, series: SandboxSeries, number: int, size: int) -> bytes:
    """A deterministic grey-scale picture: a body outline, an organ and some noise."""
    rng = random.Random(f"{study.key}/{series.number}/{number}")
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    m = size // 8
    body = 90 if series.modality in {"CT", "MR", "PT", "NM"} else 140
    draw.ellipse((m, m + number, size - m, size - m - number), fill=body)
    organ = rng.randrange(size // 6, size // 3)
    cx, cy = rng.randrange(size // 3, 2 * size // 3), rng.randrange(size // 3, 2 * size // 3)
    draw.ellipse((cx - organ // 2, cy - organ // 2, cx + organ // 2, cy + organ // 2), fill=200)
    draw.text((2, 2), series.modality, fill=255)
    noise = bytes(rng.randrange(0, 24) for _ in range(size * size))
    return bytes(min(255, a + b) for a, b in zip(img.tobytes(), noise, strict=True))


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _container(value: str, meaning: str, text_code: tuple[str, str], text: str) -> Dataset:
    """A CONTAINER holding one TEXT item (PS3.3 C.17.3, TID 2000 Basic Diagnostic Imaging Report)."""
    leaf = Dataset()
    leaf.RelationshipType, leaf.ValueType = "CONTAINS", "TEXT"
    leaf.ConceptNameCodeSequence = [_code(text_code[0], "DCM", text_code[1])]
    leaf.TextValue = text
    box = Dataset()
    box.RelationshipType, box.ValueType, box.ContinuityOfContent = "CONTAINS", "CONTAINER", "SEPARATE"
    box.ConceptNameCodeSequence = [_code(value, "DCM", meaning)]
    box.ContentSequence = [leaf]
    return box


_NOT_PER_INSTANCE = {"ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
                     "InstanceAvailability"}


def _instance_base(study: SandboxStudy, series: SandboxSeries, sop_class: UID, number: int) -> Dataset:
    """An instance's study attributes (without the study-level counts), file meta, SOP and series identity."""
    ds = Dataset()
    for elem in study_level_dataset(study):
        if elem.keyword not in _NOT_PER_INSTANCE:
            ds.add(copy.deepcopy(elem))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = UID(instance_uid(study.key, series.number, number))
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = series.uid
    ds.SeriesNumber = series.number
    ds.SeriesDescription = series.description
    ds.Modality = series.modality
    ds.InstanceNumber = number
    ds.Manufacturer = "Imaging Timeline Sandbox"
    return ds


def document_dataset(study: SandboxStudy, series: SandboxSeries) -> Dataset:
    """The study's report in the PACS: a Basic Text SR (series "SR") or an Encapsulated PDF (series "DOC")."""
    from .report_docs import impression, report_pdf

    report = study.report
    if report is None:
        raise ValueError(f"study {study.key} has no report to store in the PACS")
    sr = series.modality == "SR"
    ds = _instance_base(study, series, UID(BasicTextSRStorage if sr else EncapsulatedPDFStorage), 1)
    ds.ContentDate = _da(report.issued)
    ds.ContentTime = _tm(report.issued)
    if sr:
        ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "VERIFIED"
        observer = Dataset()
        observer.VerifyingObserverName = "RADIANT^JANE^^DR."
        observer.VerifyingOrganization = study.institution
        observer.VerificationDateTime = report.issued.strftime("%Y%m%d%H%M%S")
        observer.VerifyingObserverIdentificationCodeSequence = []
        ds.VerifyingObserverSequence = [observer]
        ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
        ds.ConceptNameCodeSequence = [_code("18748-4", "LN", "Diagnostic Imaging Report")]
        ds.ReferencedPerformedProcedureStepSequence = []
        ds.PerformedProcedureCodeSequence = []
        ds.ContentSequence = [
            _container("121070", "Findings", ("121071", "Finding"), report.findings or ""),
            _container("121072", "Impressions", ("121073", "Impression"), impression(study)),
        ]
    else:
        pdf = report_pdf(study)
        ds.DocumentTitle = f"{study.description} report"
        ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
        ds.BurnedInAnnotation = "YES"
        ds.ConceptNameCodeSequence = []
        ds.AcquisitionDateTime = report.issued.strftime("%Y%m%d%H%M%S")
        ds.EncapsulatedDocumentLength = len(pdf)
        ds.EncapsulatedDocument = pdf + (b"\x00" if len(pdf) % 2 else b"")
    return ds


def instance_dataset(study: SandboxStudy, series: SandboxSeries, number: int) -> Dataset:
    """One complete Part-10-ready instance of `series` (1-based `number`)."""
    if series.modality in {"SR", "DOC"}:
        return document_dataset(study, series)
    size = 128 if series.modality in PROJECTION else 64
    ds = _instance_base(study, series, SOP_CLASS[series.modality], number)
    ds.SeriesDate = ds.StudyDate
    ds.SeriesTime = ds.StudyTime
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime
    ds.BodyPartExamined = series.body_site.dicom
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL" if series.modality in {"CT", "PT"} else "OTHER"]
    if series.modality in {"CT", "MR", "PT"}:
        ds.FrameOfReferenceUID = instance_uid(study.key, series.number, 0)
        ds.ImagePositionPatient = [0, 0, float(number * 5)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [2.0, 2.0]
        ds.SliceThickness = 5.0
    if series.modality == "CT":
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 4
        ds.KVP = 120
    if series.modality in PROJECTION:
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImagerPixelSpacing = [0.5, 0.5]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = size
    ds.Columns = size
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = _pixels(study, series, number, size)
    return ds


@lru_cache(maxsize=64)
def _cached_datasets(study: SandboxStudy) -> tuple[Dataset, ...]:
    return tuple(instance_dataset(study, series, n)
                 for series in study.series for n in range(1, series.instances + 1))


def study_datasets(study: SandboxStudy) -> list[Dataset]:
    """Every instance of `study` as a Dataset with file_meta (Explicit VR Little Endian).

    The datasets are cached and shared: copy one before changing it.
    """
    return list(_cached_datasets(study))


def to_part10(ds: Dataset) -> bytes:
    """DICOM Part-10 bytes (preamble, file meta, dataset) of one instance."""
    buffer = BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def study_files_bytes(study: SandboxStudy) -> list[bytes]:
    """Every instance of `study` as Part-10 bytes, ready for STOW-RS or Orthanc's REST upload."""
    return [to_part10(ds) for ds in study_datasets(study)]


def render(ds: Dataset, viewport: tuple[int, int] | None, fmt: str) -> bytes:
    """The instance's pixels as a PNG or JPEG fitted into `viewport` (aspect ratio kept)."""
    img = Image.frombytes("L", (int(ds.Columns), int(ds.Rows)), bytes(ds.PixelData))
    if viewport:
        scale = min(viewport[0] / img.width, viewport[1] / img.height)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))))
    out = BytesIO()
    img.save(out, format="JPEG" if fmt == "jpeg" else "PNG")
    return out.getvalue()
