"""Attack: an `iss` that passes the allow-list but means another path once normalised (finding 3)."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from app import create_app
from app.errors import LaunchError
from app.keys import generate_keys
from app.registration import load_registration, parse_registration
from tests.servers import serve

ROOT = Path(__file__).resolve().parent.parent
PREFIX = {"client_id": "imaging-timeline", "client_name": "Imaging Timeline", "scope": "launch openid",
          "issuers": [{"iss": "http://localhost:9009/v/r4/", "match": "prefix"}]}


@pytest.mark.parametrize("iss", [
    "http://localhost:9009/v/r4/../../../admin",
    "http://localhost:9009/v/r4/sim/../../admin",
    "http://localhost:9009/v/r4/./fhir",
    "http://localhost:9009/v/r4/sim/..",
    "http://localhost:9009/v/r4/%2e%2e/%2e%2e/admin",
    "http://localhost:9009/v/r4/%2E%2E/admin",
    "http://localhost:9009/v/r4/.%2e/admin",
    "http://localhost:9009/v/r4/sim%2f..%2f..%2fadmin",
    "http://localhost:9009/v/r4/sim%2Fx",
    "http://localhost:9009/v/r4/sim%5c..%5cadmin",
    "http://localhost:9009/v/r4/sim\\..\\admin",
    "http://localhost:9009/v/r4/%7Esim",
    "http://localhost:9009/v/r4/sim fhir",
    "http://LOCALHOST:9009/v/r4/fhir",
])
def test_an_iss_that_changes_under_normalisation_is_refused(iss):
    with pytest.raises(LaunchError, match="changes when normalised"):
        parse_registration(PREFIX).issuer(iss)


@pytest.mark.parametrize("iss", [
    "http://localhost:9009/v/r4/sim/eyJhIjoiMSJ9/fhir",
    "http://localhost:9009/v/r4/fhir",
    "http://localhost:9009/v/r4/fhir.v2/x-y_z",
])
def test_an_ordinary_prefix_iss_still_matches(iss):
    assert parse_registration(PREFIX).issuer(iss).iss == iss


def test_launch_with_a_dot_segment_iss_fetches_nothing(httpserver, tmp_path):
    base = httpserver.url_for("/v/r4/")
    app = create_app({"LAUNCH_CONFIG": {**PREFIX, "issuers": [{"iss": base, "match": "prefix"}]},
                      "APP_KEYS": generate_keys(), "SESSION_STORE": f"sqlite:///{tmp_path / 's.db'}", "ARCHIVES": ()})
    with serve(app) as url:
        # Sent raw: requests would normalise the dots away before the app saw them.
        resp = requests.get(f"{url}/launch?iss={base}..%2F..%2Fadmin&launch=x", timeout=10)
        resp2 = requests.get(f"{url}/launch", params={"iss": f"{base}../../admin", "launch": "x"}, timeout=10)
    for answer in (resp, resp2):
        assert answer.status_code == 400
        assert "changes when normalised" in answer.text
    assert httpserver.log == []


def test_the_shipped_launch_json_allow_lists_no_loopback_launcher():
    reg = load_registration(str(ROOT / "launch.json"))
    hosts = {urlsplit(r.iss).hostname for r in reg.issuers}
    assert not hosts & {"localhost", "127.0.0.1", "::1"}
    assert all(urlsplit(r.iss).scheme == "https" for r in reg.issuers)


def test_the_local_launcher_example_is_a_valid_registration():
    path = ROOT / "docs" / "examples" / "launch.local-launcher.json"
    reg = load_registration(str(path))
    assert any(urlsplit(r.iss).hostname == "localhost" for r in reg.issuers)
    assert json.loads(path.read_text())["$comment"]
