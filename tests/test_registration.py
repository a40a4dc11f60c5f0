"""launch.json validation and the issuer allow-list."""

from __future__ import annotations

import pytest

from app.errors import ConfigError, LaunchError, UnknownIssuer
from app.registration import load_registration, parse_registration

BASE = {"client_id": "imaging-timeline", "client_name": "Imaging Timeline", "scope": "launch openid",
        "issuers": [{"iss": "https://ehr.example.org/fhir"}]}


def with_(**changes):
    return {**BASE, **changes}


def test_the_shipped_launch_json_is_valid():
    reg = load_registration("launch.json")
    assert reg.client_id == "imaging-timeline"
    assert reg.issuer("https://launch.smarthealthit.org/v/r4/sim/eyJhIjoiMSJ9/fhir").auth_method == "none"


@pytest.mark.parametrize("data, message", [
    ([], "the top level must be a JSON object"),
    (with_(clientid="x"), "top level: unknown key 'clientid'"),
    (with_(client_id=""), "`client_id` must be a non-empty string"),
    (with_(issuers=[]), "`issuers` must list at least one EHR"),
    (with_(issuers=[{"iss": "http://ehr.example.org/fhir"}]), "issuers[0]: The EHR address (iss)"),
    (with_(issuers=[{"iss": "https://ehr.example.org/fhir", "tokn": 1}]), "issuers[0]: unknown key 'tokn'"),
    (with_(issuers=[{"iss": "https://e.example/fhir", "token_endpoint_auth_method": "client_secret_basic"}]),
     "client_secret_basic needs `client_secret_env`"),
    (with_(issuers=[{"iss": "https://e.example/fhir", "signing_alg": "RS256"}]), "must be RS384 or ES384"),
    (with_(issuers=[{"iss": "https://e.example", "match": "prefix"}]), 'a prefix `iss` must end with "/"'),
    (with_(issuers=[{"iss": "https://e.example/", "launch_types": ["portal"]}]), "`launch_types` must be"),
    (with_(issuers=[{"iss": "https://e.example/fhir", "client_id": None}]),
     "issuers[0]: `client_id` must be a non-empty string"),
    (with_(issuers=[{"iss": "https://e.example/fhir", "scope": ["launch"]}]),
     "issuers[0]: `scope` must be a non-empty string"),
])
def test_bad_launch_json_names_the_key(data, message):
    with pytest.raises(ConfigError) as err:
        parse_registration(data, "launch.json")
    assert message in err.value.message


def test_unreadable_file_says_which_file(tmp_path):
    path = tmp_path / "launch.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=r"launch\.json: not valid JSON \(line 1"):
        load_registration(str(path))
    with pytest.raises(ConfigError, match=r"file not found"):
        load_registration(str(tmp_path / "missing.json"))


def test_exact_issuer_ignores_a_trailing_slash_only():
    reg = parse_registration(BASE)
    assert reg.issuer("https://ehr.example.org/fhir/").iss == "https://ehr.example.org/fhir"
    with pytest.raises(UnknownIssuer, match=r"is not in launch\.json `issuers`"):
        reg.issuer("https://ehr.example.org/fhir2")


def test_prefix_issuer_does_not_match_a_lookalike_host():
    reg = parse_registration(with_(issuers=[{"iss": "https://ehr.example.org/", "match": "prefix"}]))
    assert reg.issuer("https://ehr.example.org/tenant/fhir").iss == "https://ehr.example.org/tenant/fhir"
    with pytest.raises(UnknownIssuer):
        reg.issuer("https://ehr.example.org.evil.example/fhir")


@pytest.mark.parametrize("iss", ["https://ehr.example.org/fhir#x", "https://ehr.example.org:99999/fhir", "//x/y"])
def test_malformed_iss_is_a_launch_error(iss):
    with pytest.raises(LaunchError, match="is not a valid https URL"):
        parse_registration(BASE).issuer(iss)


def test_client_secret_comes_from_the_named_environment_variable(monkeypatch):
    reg = parse_registration(with_(issuers=[{"iss": "https://e.example/fhir", "client_secret_env": "X_SECRET",
                                              "token_endpoint_auth_method": "client_secret_basic"}]))
    monkeypatch.delenv("X_SECRET", raising=False)
    with pytest.raises(ConfigError, match="export the environment variable X_SECRET"):
        reg.issuer("https://e.example/fhir").client_secret()
    monkeypatch.setenv("X_SECRET", "s")
    assert reg.issuer("https://e.example/fhir").client_secret() == "s"
