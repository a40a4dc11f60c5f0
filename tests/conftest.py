"""Shared fixtures. Real servers on 127.0.0.1: the demo (app + sandbox), Orthanc, Redis, Chromium."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

# Debian's Chromium, driven by Playwright; the flags keep it off this machine's closed network.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def need(component: str, available: bool, how: str) -> None:
    """Skip when a real component is missing here; in CI a missing component is a failure."""
    if available:
        return
    message = f"{component} is not installed: {how}"
    if IN_CI:
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # In CI a skipped test means a component did not run: that must not pass silently.
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if IN_CI and skipped and exitstatus == 0:
        session.exitstatus = 1
        if reporter:
            reporter.write_line(f"CI=true: {skipped} test(s) skipped; every component must run in CI.", red=True)


# --- Archives and federation (tests/test_archive_*.py, test_identity.py, test_federation.py) ------


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory):
    """A real Orthanc + DICOMweb plugin on a free loopback port, seeded with tests/orthanc.py SEED.

    Yields the DICOMweb base URL (http://127.0.0.1:PORT/dicom-web).
    """
    from orthanc import SEED, installed, running_orthanc, upload

    if not installed():
        message = "Orthanc not installed: apt-get install orthanc orthanc-dicomweb"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as root:
        upload(root, list(SEED.values()))
        yield f"{root}/dicom-web"


@pytest.fixture
def threaded_httpserver():
    """A pytest-httpserver that serves requests concurrently (for slow-archive tests)."""
    from pytest_httpserver import HTTPServer

    server = HTTPServer(threaded=True)
    server.start()
    yield server
    server.clear()
    if server.is_running():
        server.stop()


@pytest.fixture
def other_host():
    """A second HTTP server: a different origin that must never receive a request or a token."""
    from pytest_httpserver import HTTPServer

    server = HTTPServer()
    server.start()
    yield server
    server.clear()
    if server.is_running():
        server.stop()


MRN_SYSTEM = "urn:oid:2.16.840.1.113883.3.7418.1.1"
OUTSIDE_SYSTEM = "urn:oid:2.16.840.1.113883.3.7418.2.1"
EHR_TOKEN = "ehr-token"


@pytest.fixture
def jane():
    """The launched patient: Jane Doe, MRN-1001 in the EHR's MRN domain, OUT-77 at the outside facility."""
    from datetime import date

    from app.models import Identifier, PatientSummary

    return PatientSummary(id="pat-1", name="Jane Doe", birth_date=date(1970, 1, 1), sex="female",
                          identifiers=(Identifier(MRN_SYSTEM, "MRN-1001"), Identifier(OUTSIDE_SYSTEM, "OUT-77")))


class StaticEhrToken:
    """An EhrTokenProvider double that counts how often it was asked."""

    def __init__(self, token: str = EHR_TOKEN) -> None:
        self.token, self.calls = token, 0

    def access_token(self) -> str:
        self.calls += 1
        return self.token


@pytest.fixture
def ehr_token() -> StaticEhrToken:
    return StaticEhrToken()



class ConcurrencyProbe:
    """Slow JSON handlers for a threaded httpserver that record how many requests overlapped."""

    def __init__(self, hold_s: float = 0.2) -> None:
        import threading

        self.hold_s, self.most, self._in_flight, self._lock = hold_s, 0, 0, threading.Lock()

    def answer(self, body, content_type: str = "application/fhir+json"):
        import json
        import time

        from werkzeug import Response

        def handler(request):
            with self._lock:
                self._in_flight += 1
                self.most = max(self.most, self._in_flight)
            time.sleep(self.hold_s)
            with self._lock:
                self._in_flight -= 1
            return Response(json.dumps(body), content_type=content_type)
        return handler


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium per test module."""
    need("Chromium", CHROMIUM.exists(), "apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A real PostgreSQL (Debian `postgresql`) on a free loopback port, for the PostgreSQL audit store."""
    from postgres import binaries, running_postgres

    need("PostgreSQL", binaries() is not None, "apt-get install postgresql")
    with running_postgres() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """An empty database of its own on the shared server."""
    from postgres import fresh_database

    return fresh_database(postgres_server)
