"""The archives TOML: parsed once at start, every mistake named by archive id and key; SMART discovery."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.archives.config import ArchiveConfig, AuthConfig, ViewerConfig, discover_archives, load_archives
from app.errors import ConfigError

DEMO = Path(__file__).resolve().parent.parent / "sandbox" / "demo_archives.toml"

PACS = '''
[[archive]]
id = "pacs-east"
name = "East Campus PACS"
kind = "dicomweb"
base_url = "https://pacs.example.org/dicom-web/"
identifier_system = "urn:oid:1.2.3"
issuer_of_patient_id = "EAST"
timeout_s = 8
max_results = 200
auth = { kind = "basic", username = "timeline", password_env = "PACS_EAST_PASSWORD" }

[archive.viewer]
kind = "ohif"
url = "https://viewer.example.org"
'''


def test_a_dicomweb_archive_is_parsed_into_frozen_config():
    (archive,) = load_archives(PACS)

    assert archive == ArchiveConfig(
        id="pacs-east", name="East Campus PACS", kind="dicomweb", base_url="https://pacs.example.org/dicom-web",
        auth=AuthConfig(kind="basic", username="timeline", password_env="PACS_EAST_PASSWORD"), timeout_s=8.0,
        identifier_system="urn:oid:1.2.3", issuer_of_patient_id="EAST",
        viewer=ViewerConfig("ohif", "https://viewer.example.org"),
        max_results=200)
    with pytest.raises(AttributeError):
        archive.id = "other"  # type: ignore[misc]


def test_auth_may_be_an_archive_auth_table_and_defaults_apply():
    (archive,) = load_archives('''
[[archive]]
id = "outside"
name = "Outside"
kind = "fhir"
base_url = "https://outside.example.org/fhir"
identifier_system = "urn:oid:9"
[archive.auth]
kind = "smart-backend"
client_id = "imaging-timeline-backend"
''')

    assert archive.auth == AuthConfig(kind="smart-backend", client_id="imaging-timeline-backend")
    assert archive.auth.scope == "system/ImagingStudy.rs system/Patient.rs system/Endpoint.rs"
    assert (archive.timeout_s, archive.max_results, archive.viewer) == (10.0, 500, None)
    assert archive.page_size is None  # one request up to max_results


def test_the_ehr_archive_needs_no_identifier_system():
    (archive,) = load_archives('[[archive]]\nid = "ehr"\nname = "EHR"\nkind = "fhir"\nbase_url = "ehr"\n'
                               'auth = "ehr"\n')

    assert archive.is_ehr
    assert archive.resolved_base("https://ehr.example.org/fhir/") == "https://ehr.example.org/fhir"


def test_substitutions_fill_base_and_token_urls_but_leave_viewer_placeholders():
    archives = load_archives(DEMO, substitutions={"sandbox": "http://127.0.0.1:5000/"})

    ehr, outside, pacs = archives
    assert (ehr.id, ehr.base_url, ehr.auth.kind) == ("ehr", "ehr", "ehr")
    assert outside.base_url == "http://127.0.0.1:5000/outside/fhir"
    assert outside.auth.token_url == "http://127.0.0.1:5000/auth/token"
    assert (pacs.issuer_of_patient_id, pacs.auth.kind) == ("SANDBOX-PACS", "none")
    assert pacs.viewer == ViewerConfig("ohif", "http://127.0.0.1:5000/viewer/ohif", via="gateway")


def test_a_config_file_is_read_from_a_path(tmp_path):
    path = tmp_path / "archives.toml"
    path.write_text(PACS)

    assert [a.id for a in load_archives(str(path))] == ["pacs-east"]


def test_an_unreadable_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot read the archives file .*; check IMAGING_ARCHIVES"):
        load_archives(tmp_path / "missing.toml")


def archive(**keys) -> str:
    fields = {"id": '"pacs-east"', "name": '"East"', "kind": '"dicomweb"', "base_url": '"https://pacs.example.org"',
              "identifier_system": '"urn:oid:1"', **keys}
    return "[[archive]]\n" + "".join(f"{k} = {v}\n" for k, v in fields.items() if v is not None)


@pytest.mark.parametrize(("text", "message"), [
    (archive(timout_s="5"), 'archives.toml: archive "pacs-east": unknown key "timout_s" (did you mean "timeout_s"?)'),
    (archive(colour='"red"'), 'archives.toml: archive "pacs-east": unknown key "colour"'),
    (archive(auth='{ kind = "basic", username = "u", pasword_env = "X" }'),
     'archives.toml: archive "pacs-east": unknown key "auth.pasword_env" (did you mean "auth.password_env"?)'),
    (archive(auth='{ kind = "basic", username = "u" }'),
     'archives.toml: archive "pacs-east": missing key "auth.password_env"'),
    (archive(auth='{ kind = "oauth" }'),
     'archives.toml: archive "pacs-east": "auth.kind" must be one of none, basic, bearer, ehr, smart-backend '
     '(got "oauth")'),
    (archive(kind='"dimse"'), 'archives.toml: archive "pacs-east": "kind" must be one of fhir, dicomweb (got "dimse")'),
    (archive(base_url='"pacs.example.org"'),
     'archives.toml: archive "pacs-east": "base_url" must be an http(s) URL (got "pacs.example.org")'),
    (archive(base_url='"ehr"'), 'archives.toml: archive "pacs-east": "base_url" must be an http(s) URL (got "ehr")'),
    (archive(base_url='"{sandbox}/dicomweb"'),
     'archives.toml: archive "pacs-east": "base_url" uses {sandbox}, which is not defined here'),
    (archive(timeout_s='"fast"'),
     'archives.toml: archive "pacs-east": "timeout_s" must be a number from 0.1 to 300 (got \'fast\')'),
    (archive(max_results="0"),
     'archives.toml: archive "pacs-east": "max_results" must be an integer from 1 to 10000 (got 0)'),
    (archive(page_size="0"),
     'archives.toml: archive "pacs-east": "page_size" must be an integer from 1 to 10000 (got 0)'),
    (archive(page_size='"200"'),
     'archives.toml: archive "pacs-east": "page_size" must be an integer from 1 to 10000 (got \'200\')'),
    (archive(pagesize="200"),
     'archives.toml: archive "pacs-east": unknown key "pagesize" (did you mean "page_size"?)'),
    (archive(identifier_system=None),
     'archives.toml: archive "pacs-east": missing key "identifier_system" (the FHIR identifier system of this '
     "archive's patient ids)"),
    (archive(name=None), 'archives.toml: archive "pacs-east": missing key "name"'),
    (archive(id='"East PACS"'),
     'archives.toml: archive "East PACS": "id" must be 1-63 lowercase letters, digits, "-" or "_"'),
    (archive(id=None), 'archives.toml: archive: missing key "id"'),
    (archive(kind='"fhir"', issuer_of_patient_id='"X"'),
     'archives.toml: archive "pacs-east": "issuer_of_patient_id" is only valid for kind "dicomweb"'),
    (archive() + '[archive.viewer]\nkind = "osirix"\nurl = "x"\n',
     'archives.toml: archive "pacs-east": "viewer.kind" must be one of ohif, iid, weasis, url (got "osirix")'),
    (archive() + '[archive.viewer]\nkind = "ohif"\nurl = "https://v.example"\nvai = "gateway"\n',
     'archives.toml: archive "pacs-east": unknown key "viewer.vai" (did you mean "viewer.via"?)'),
    (archive() + '[archive.viewer]\nkind = "ohif"\nurl = "https://v.example"\nvia = "proxy"\n',
     'archives.toml: archive "pacs-east": "viewer.via" must be one of direct, gateway (got "proxy")'),
    (archive() + '[archive.viewer]\nkind = "iid"\nurl = "https://pacs.example/iid"\nvia = "gateway"\n',
     'archives.toml: archive "pacs-east": viewer.via "gateway" is not possible for viewer kind "iid" (it fetches '
     'images from its own PACS); use via = "direct", or a viewer of kind ohif, weasis, url'),
    (archive() + '[archive.viewer]\nkind = "url"\nurl = "https://v.example/?dicomweb={gateway}"\n',
     'archives.toml: archive "pacs-east": viewer.url uses {gateway}, which needs via = "gateway"'),
    (archive() + archive(), 'archives.toml: archive "pacs-east": duplicate id; each archive needs its own id'),
    ("[archives]\nid = 1\n", 'archives.toml: unknown top-level key "archives"; archives are [[archive]] tables'),
    ("[[archive]\n", "archives.toml: not valid TOML"),
], ids=["typo-with-hint", "unknown-key", "auth-typo", "auth-missing-secret-env", "auth-kind", "kind", "base-url",
        "ehr-on-dicomweb", "undefined-substitution", "timeout-type", "max-results-range",
        "page-size-range", "page-size-type", "page-size-typo",
        "no-identifier-system",
        "no-name", "bad-id", "no-id", "issuer-on-fhir", "viewer-kind", "viewer-via-typo", "viewer-via-value",
        "iid-via-gateway", "gateway-placeholder-direct", "duplicate-id", "top-level", "not-toml"])
def test_a_bad_config_fails_at_start_naming_archive_and_key(text, message):
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        load_archives(text)


def test_a_file_error_names_the_file(tmp_path):
    path = tmp_path / "site-archives.toml"
    path.write_text(archive(timout_s="5"))

    with pytest.raises(ConfigError, match=r'^site-archives\.toml: archive "pacs-east": unknown key "timout_s"'):
        load_archives(path)


# --- Discovery from the EHR's smart-configuration --------------------------------------------------------


def smart_config(*endpoints: dict) -> dict:
    return {"associated_endpoints": list(endpoints)}


def test_an_imaging_endpoint_on_the_ehr_origin_becomes_a_discovered_archive():
    found = discover_archives(
        smart_config({"url": "https://ehr.example.org/dicom-web/", "capabilities": ["smart-imaging-access"]}),
        "https://ehr.example.org/fhir", identifier_system="urn:mrn")

    assert found == (ArchiveConfig(id="discovered-ehr-example-org", name="ehr.example.org", kind="dicomweb",
                                   base_url="https://ehr.example.org/dicom-web", auth=AuthConfig(kind="ehr"),
                                   identifier_system="urn:mrn", source="discovered"),)


def test_an_imaging_endpoint_on_another_origin_is_skipped_with_a_logged_reason(caplog):
    caplog.set_level("INFO")
    found = discover_archives(
        smart_config({"url": "https://imaging.example.org/dicom-web", "capabilities": ["smart-imaging-access"]},
                     {"url": "https://ehr.example.org:8443/dicom-web", "capabilities": ["smart-imaging-access"]}),
        "https://ehr.example.org/fhir")

    assert found == ()
    assert "not on the EHR's origin" in caplog.text


@pytest.mark.parametrize("entry", [
    {"url": "https://ehr.example.org/other", "capabilities": ["launch-ehr"]},
    {"url": "https://ehr.example.org/dicom-web"},
    {"url": 42, "capabilities": ["smart-imaging-access"]},
    "https://ehr.example.org/dicom-web",
], ids=["other-capability", "no-capabilities", "url-not-string", "not-an-object"])
def test_other_associated_endpoints_are_ignored(entry):
    assert discover_archives(smart_config(entry), "https://ehr.example.org/fhir") == ()


def test_an_endpoint_already_configured_is_not_discovered_twice():
    configured = ArchiveConfig(id="pacs", name="PACS", kind="dicomweb", base_url="https://ehr.example.org/dicom-web",
                               identifier_system="urn:mrn")

    found = discover_archives(
        smart_config({"url": "https://ehr.example.org/dicom-web", "capabilities": ["smart-imaging-access"]}),
        "https://ehr.example.org/fhir", [configured])

    assert found == ()


def test_a_viewer_template_with_an_unknown_placeholder_fails_at_start():
    text = PACS.replace('kind = "ohif"\nurl = "https://viewer.example.org"',
                        'kind = "url"\nurl = "https://viewer.example.org/?s={study}"')
    with pytest.raises(ConfigError, match=r'archive "pacs-east": viewer\.url uses \{study\}, which is not a viewer'):
        load_archives(text)


def test_a_pixm_url_must_be_an_http_url():
    text = PACS.replace('max_results = 200', 'max_results = 200\npixm_url = "ftp://pix.example.org"')
    with pytest.raises(ConfigError, match=r'archive "pacs-east": "pixm_url" must be an http\(s\) URL'):
        load_archives(text)


def test_page_size_is_read_for_archives_that_cap_limit():
    (parsed,) = load_archives(archive(page_size="200"))
    assert parsed.page_size == 200


def test_a_viewer_goes_direct_unless_it_says_gateway():
    direct = load_archives(archive() + '[archive.viewer]\nkind = "ohif"\nurl = "https://v.example"\n')
    gateway = load_archives(archive() + '[archive.viewer]\nkind = "ohif"\nurl = "https://v.example"\nvia = "gateway"\n')
    assert (direct[0].viewer.via, gateway[0].viewer.via) == ("direct", "gateway")
