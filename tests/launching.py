"""Helpers for launch tests: the app registered with a scriptable FakeEhr, served on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from app import create_app
from app.keys import generate_keys
from tests.fake_ehr import FakeEhr
from tests.servers import serve

APP_KEYS = generate_keys()
SCOPE = "launch openid fhirUser patient/Patient.rs patient/ImagingStudy.rs patient/DiagnosticReport.rs"


@contextmanager
def running_app(ehr: FakeEhr, tmp_path, issuer: dict | None = None, **config) -> Iterator[str]:
    launch_config = {
        "client_id": "imaging-timeline", "client_name": "Imaging Timeline", "scope": SCOPE,
        "issuers": [{"iss": ehr.iss, "token_endpoint_auth_method": "none", **(issuer or {})}],
    }
    app = create_app({"LAUNCH_CONFIG": launch_config, "APP_KEYS": APP_KEYS,
                      "SESSION_STORE": f"sqlite:///{tmp_path / 's.db'}", "ARCHIVES": (), **config})
    with serve(app) as url:
        yield url


# Fixtures for the modules that take them by name: `ehr, app_url = launching.ehr, launching.app_url` (assigned,
# not imported: ruff would read an imported fixture as unused and each test's argument as redefining it).
@pytest.fixture
def ehr(httpserver) -> FakeEhr:
    """The scriptable FakeEhr on pytest-httpserver, its endpoints installed."""
    return FakeEhr(httpserver).install()


@pytest.fixture
def app_url(ehr, tmp_path):
    """The app registered with `ehr` (running_app's defaults), served on 127.0.0.1."""
    with running_app(ehr, tmp_path) as url:
        yield url


def launch(app_url: str, iss: str, launch: str | None = "lx-1", browser: requests.Session | None = None):
    """A non-browser client's launch: /launch answers 302 and binds the callback with the cookie."""
    browser = browser or requests.Session()
    params = {"iss": iss, **({"launch": launch} if launch is not None else {})}
    return browser.get(f"{app_url}/launch", params=params, timeout=10), browser


def started_state(app_url: str, ehr: FakeEhr, browser: requests.Session | None = None) -> str:
    """Run /launch up to the authorize redirect; the `state` it carries."""
    browser = browser or requests.Session()
    resp = browser.get(f"{app_url}/launch", params={"iss": ehr.iss, "launch": "l"}, allow_redirects=False,
                       timeout=10)
    return parse_qs(urlsplit(resp.headers["Location"]).query)["state"][0]
