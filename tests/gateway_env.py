"""A gateway test environment: the demo (sandbox EHR, archives) plus a real Orthanc with the other-issuer trap.

Amy Shaw (pat-amy, PatientID SB100001 at SANDBOX-PACS) has a CT in Orthanc; beside it Orthanc
holds the traps the viewer must never list: the same PatientID under another issuer (a different
person, whom Orthanc returns for a PatientID-only query) and the PatientID in lower case (Orthanc
matches PatientID case-insensitively).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from orthanc import FakeStudy, image_series, running_orthanc, upload_files

from app.keys import generate_keys
from sandbox.demo import Demo, serve_demo
from tests.processes import fernet_key_file, free_port, redis_server, sandbox_process, serve_process

KEYS = generate_keys()
AMY_CT = FakeStudy("SB100001", "SANDBOX-PACS", name="SHAW^AMY", birth_date="19870220", sex="F",
                   study_date="20250102", study_time="093000", modality="CT", body_part="ABDOMEN",
                   description="CT ABDOMEN ORTHANC", accession="ORTH-1")
OTHER_ISSUER = FakeStudy("SB100001", "OTHER-HOSPITAL", name="SMITH^ANNA", birth_date="19500505", sex="F",
                         study_date="20240202", modality="MR", body_part="HEAD", description="MR TRAP OTHER ISSUER",
                         accession="ORTH-X1")
CASE_VARIANT = FakeStudy("sb100001", "SANDBOX-PACS", name="ROE^RICHARD", birth_date="19800202", sex="M",
                         study_date="20230303", modality="CT", body_part="CHEST", description="CT TRAP CASE VARIANT",
                         accession="ORTH-X2")


def orthanc_archive(dicomweb: str, viewer_url: str, *, via: str = "gateway") -> str:
    """The archives TOML entry for the Orthanc PACS, its OHIF viewer going `via` the gateway."""
    return f'''
[[archive]]
id = "orthanc"
name = "Orthanc PACS"
kind = "dicomweb"
base_url = "{dicomweb}"
identifier_system = "urn:oid:2.999.7418.1.1"
issuer_of_patient_id = "SANDBOX-PACS"

[archive.viewer]
kind = "ohif"
url = "{viewer_url}"
via = "{via}"
'''


def series_of(base: str, study: str) -> list[str]:
    """SeriesInstanceUIDs of `study` as a DICOMweb base (Orthanc or the gateway) lists them."""
    listed = requests.get(f"{base}/studies/{study}/series", headers={"Accept": "application/dicom+json"}, timeout=10)
    return [item["0020000E"]["Value"][0] for item in listed.json()]


def instances_of(base: str, study: str, series: str) -> list[str]:
    """SOPInstanceUIDs of one series as a DICOMweb base lists them."""
    listed = requests.get(f"{base}/studies/{study}/series/{series}/instances",
                          headers={"Accept": "application/dicom+json"}, timeout=10)
    return [item["00080018"]["Value"][0] for item in listed.json()]


@dataclass
class GatewayEnv:
    """A running demo + Orthanc, and the UIDs of what Orthanc holds."""

    demo: Demo
    orthanc: str  # Orthanc's HTTP root
    amy: str
    other_issuer: str
    case_variant: str
    audit: list[tuple[str, dict[str, Any]]]

    @property
    def dicomweb(self) -> str:
        return f"{self.orthanc}/dicom-web"

    def launch(self, patient: str = "pat-amy") -> requests.Session:
        """A browser session launched from the sandbox chart for `patient` (embedded launch)."""
        browser = requests.Session()
        resp = browser.get(f"{self.demo.base_url}/sandbox/launch", params={"patient": patient, "embedded": "1"},
                           timeout=30)
        resp.raise_for_status()
        return browser

    def studies(self, browser: requests.Session) -> dict[str, Any]:
        resp = browser.get(f"{self.demo.base_url}/api/studies", timeout=60)
        resp.raise_for_status()
        return resp.json()

    def gateway(self, browser: requests.Session) -> str:
        """The session's gateway base, as /api/studies hands it to viewers."""
        bases = {v["gateway"] for s in self.studies(browser)["studies"] for v in s["viewers"] if "gateway" in v}
        (base,) = bases
        return base


@contextmanager
def gateway_env(workdir: Path, *, viewer_url: str = "https://viewer.example", images: int = 3, size: int = 256,
                app_options: dict[str, Any] | None = None) -> Iterator[GatewayEnv]:
    """Orthanc (Amy's CT: `images` slices of `size`², and the traps) plus the demo with Orthanc as an extra archive."""
    amy, other, variant = AMY_CT.with_uid(), OTHER_ISSUER.with_uid(), CASE_VARIANT.with_uid()
    events: list[tuple[str, dict[str, Any]]] = []
    (workdir / "orthanc").mkdir()
    with running_orthanc(workdir / "orthanc") as root:
        upload_files(root, image_series(amy, images, size) + image_series(other, 2) + image_series(variant, 2))
        options = {"APP_KEYS": KEYS, "SESSION_STORE": f"sqlite:///{workdir / 'sessions.db'}",
                   "GATEWAY_AUDIT": lambda event, fields: events.append((event, fields)), **(app_options or {})}
        with serve_demo(app_options=options, extra_archives=orthanc_archive(f"{root}/dicom-web", viewer_url)) as demo:
            yield GatewayEnv(demo, root, amy.uid, other.uid, variant.uid, events)


@dataclass
class ServeGatewayEnv:
    """`imaging-timeline serve` (gunicorn, Redis) and `imaging-timeline sandbox` as processes, plus Orthanc."""

    app_url: str
    sandbox_url: str
    orthanc: str
    amy: str

    @property
    def dicomweb(self) -> str:
        return f"{self.orthanc}/dicom-web"

    def launch(self, patient: str = "pat-amy") -> requests.Session:
        browser = requests.Session()
        resp = browser.get(f"{self.sandbox_url}/launch", params={"patient": patient, "embedded": "1"}, timeout=60)
        if resp.status_code != 200 or not resp.url.endswith("/timeline"):
            raise AssertionError(f"launch ended at {resp.url} with {resp.status_code}: {resp.text[:300]}")
        return browser

    def gateway(self, browser: requests.Session) -> str:
        studies = browser.get(f"{self.app_url}/api/studies", timeout=60).json()["studies"]
        (base,) = {v["gateway"] for s in studies for v in s["viewers"] if "gateway" in v}
        return base


@contextmanager
def serve_gateway_env(workdir: Path, *, images: int = 3, size: int = 256, workers: int = 2,
                      threads: int = 16, store: str = "redis") -> Iterator[ServeGatewayEnv]:
    """Orthanc (Amy's CT and the traps) behind the production server: the sandbox's archives plus Orthanc.

    `store`: "redis" (a real redis-server, as a scale-out install) or "sqlite" (one host's file).
    """
    amy = AMY_CT.with_uid()
    (workdir / "orthanc").mkdir()
    port = free_port()
    app_url = f"http://127.0.0.1:{port}"
    with ExitStack() as stack:
        root = stack.enter_context(running_orthanc(workdir / "orthanc"))
        url = stack.enter_context(redis_server(workdir)).url if store == "redis" else \
            f"sqlite:///{workdir / 'sessions.db'}"
        sandbox_url, config = stack.enter_context(sandbox_process(app_url, workdir))
        upload_files(root, image_series(amy, images, size) + image_series(OTHER_ISSUER.with_uid(), 2)
                     + image_series(CASE_VARIANT.with_uid(), 2))
        archives = config / "archives.toml"
        archives.write_text(archives.read_text() + orthanc_archive(f"{root}/dicom-web", "https://viewer.example"))
        env = {"IMAGING_SESSION_STORE": url,
               "IMAGING_SESSION_KEY_FILE": str(fernet_key_file(workdir / "session.key"))}
        with serve_process(port, config, workdir, workers=workers, threads=threads, env=env):
            yield ServeGatewayEnv(app_url, sandbox_url, root, amy.uid)
