"""Start a real, loopback-only Orthanc with the DICOMweb plugin and fill it with pydicom-made studies."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


@dataclass(frozen=True)
class FakeStudy:
    """One single-instance study of one patient, as a PACS would hold it."""

    patient_id: str
    issuer: str | None
    name: str = "DOE^JANE"
    birth_date: str = "19700101"
    sex: str = "F"
    study_date: str = "20240301"
    study_time: str = "101500"
    modality: str = "CT"
    body_part: str = "CHEST"
    description: str = "CT CHEST"
    accession: str = "ACC1"
    uid: str = ""

    def with_uid(self) -> FakeStudy:
        return self if self.uid else FakeStudy(**{**self.__dict__, "uid": generate_uid()})


def part10(study: FakeStudy) -> bytes:
    """A minimal Part-10 secondary-capture instance for `study` (one series, one 1x1 image)."""
    ds = Dataset()
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study.uid
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = study.patient_id
    if study.issuer is not None:
        ds.IssuerOfPatientID = study.issuer
    ds.PatientName = study.name
    ds.PatientBirthDate = study.birth_date
    ds.PatientSex = study.sex
    ds.StudyDate = study.study_date
    ds.StudyTime = study.study_time
    ds.AccessionNumber = study.accession
    ds.StudyDescription = study.description
    ds.ReferringPhysicianName = "HOUSE^GREGORY"
    ds.Modality = study.modality
    ds.BodyPartExamined = study.body_part
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 1
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = b"\x00\x00"  # even length
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def image_series(study: FakeStudy, count: int, size: int = 256) -> list[bytes]:
    """`count` CT slices (16-bit MONOCHROME2, `size`x`size`) of one series in `study`: real pixel
    data a viewer can render, a ring whose radius changes from slice to slice."""
    from array import array

    series_uid = generate_uid()
    # A gradient with a ring (computed once), and a bright band that moves from slice to slice
    # (slice assignment: no per-pixel Python work per slice).
    centre, ring_r, width = size / 2, size / 4, max(2, size // 40)
    base = array("H", (
        x * 4 + y * 2 + (1500 if abs(((x - centre) ** 2 + (y - centre) ** 2) ** 0.5 - ring_r) < width else 0)
        for y in range(size) for x in range(size)))
    band = array("H", [3000]) * (size * width)
    out = []
    for n in range(count):
        pixels = array("H", base)
        row = (n * (size - width)) // max(count - 1, 1)
        pixels[row * size:(row + width) * size] = band
        ds = Dataset()
        ds.SOPClassUID = CT_IMAGE
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study.uid, series_uid
        ds.PatientID = study.patient_id
        if study.issuer is not None:
            ds.IssuerOfPatientID = study.issuer
        ds.PatientName, ds.PatientBirthDate, ds.PatientSex = study.name, study.birth_date, study.sex
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber = study.study_date, study.study_time, study.accession
        ds.StudyDescription, ds.SeriesDescription = study.description, f"{study.description} AXIAL"
        ds.Modality, ds.BodyPartExamined = study.modality, study.body_part
        ds.SeriesNumber, ds.InstanceNumber = 1, n + 1
        ds.ImagePositionPatient = [0, 0, float(n)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [1, 1], 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.WindowCenter, ds.WindowWidth = 1200, 2400
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        if sys.byteorder == "big":
            pixels.byteswap()  # Explicit VR Little Endian
        ds.PixelData = pixels.tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


def upload_files(root: str, files: list[bytes]) -> None:
    """POST Part-10 instances to Orthanc's REST API."""
    with requests.Session() as http:
        for data in files:
            http.post(f"{root}/instances", data=data, timeout=30,
                      headers={"Content-Type": "application/dicom"}).raise_for_status()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def installed() -> bool:
    return Path(ORTHANC).exists() and Path(DICOMWEB_PLUGIN).exists()


@contextmanager
def running_orthanc(workdir: Path, *, startup_s: float = 30.0) -> Iterator[str]:
    """Run Orthanc on a free loopback port with storage under `workdir`; yields its HTTP root."""
    port = free_port()
    config = {
        "Name": "imaging-timeline-tests",
        "HttpPort": port,
        # Orthanc 1.10 has no bind-address option: refuse remote clients instead.
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": False,
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "Plugins": [DICOMWEB_PLUGIN],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "StableAge": 1,
    }
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(config))
    log = (workdir / "orthanc.log").open("wb")
    proc = subprocess.Popen([ORTHANC, str(config_path)], stdout=log, stderr=subprocess.STDOUT)
    root = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(root, proc, startup_s, workdir / "orthanc.log")
        yield root
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def _wait_ready(root: str, proc: subprocess.Popen, startup_s: float, log_path: Path) -> None:
    until = time.monotonic() + startup_s
    while time.monotonic() < until:
        if proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {proc.returncode}:\n{log_path.read_text()[-2000:]}")
        try:
            if requests.get(f"{root}/system", timeout=1).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"Orthanc did not answer /system within {startup_s} s")


def upload(root: str, studies: list[FakeStudy]) -> None:
    """POST one Part-10 instance per study to Orthanc's REST API."""
    for study in studies:
        resp = requests.post(f"{root}/instances", data=part10(study), timeout=10,
                             headers={"Content-Type": "application/dicom"})
        resp.raise_for_status()


ISSUER = "SANDBOX-PACS"

# What the seeded PACS holds. Jane Doe (MRN-1001 at SANDBOX-PACS, born 1970-01-01, F) has two
# studies; the others are traps for the wrong-patient guard.
SEED: dict[str, FakeStudy] = {
    "jane_ct": FakeStudy("MRN-1001", ISSUER, study_date="20240301", accession="ACC-CT-1").with_uid(),
    "jane_mr": FakeStudy("MRN-1001", ISSUER, study_date="20230510", study_time="", modality="MR",
                         body_part="HEAD", description="MR BRAIN", accession="ACC-MR-1").with_uid(),
    # Orthanc matches PatientID case-insensitively: this one comes back for "MRN-1001".
    "case_variant": FakeStudy("mrn-1001", ISSUER, name="ROE^RICHARD", birth_date="19800202", sex="M",
                              accession="ACC-X-1").with_uid(),
    # Same PatientID in another issuer's domain: a different person.
    "other_issuer": FakeStudy("MRN-1001", "OTHER-HOSPITAL", name="SMITH^ANNA", birth_date="19500505",
                              accession="ACC-X-2").with_uid(),
    # Same PatientID, no issuer recorded (same demographics as Jane).
    "no_issuer": FakeStudy("MRN-1001", None, study_date="20200101", accession="ACC-NI-1").with_uid(),
    # Right identifier, name spelled differently: kept with a badge.
    "name_variant": FakeStudy("MRN-3003", ISSUER, name="DOE^JANET").with_uid(),
    # Right identifier, different birth date: withheld.
    "birth_conflict": FakeStudy("MRN-4004", ISSUER, birth_date="19991231").with_uid(),
}


def upload_zip(root: str, studies: list[FakeStudy], *, timeout: float = 600.0) -> None:
    """POST many studies at once as one ZIP of Part-10 files (Orthanc >= 1.8.2 accepts a ZIP at /instances)."""
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for n, study in enumerate(studies):
            archive.writestr(f"{n:05d}.dcm", part10(study))
    resp = requests.post(f"{root}/instances", data=buf.getvalue(), timeout=timeout,
                         headers={"Content-Type": "application/zip"})
    resp.raise_for_status()
