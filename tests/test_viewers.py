"""Viewer link builders and viewer configuration checks (app/viewers.py)."""

from __future__ import annotations

from urllib.parse import unquote

import pytest

from app import viewers
from app.errors import ConfigError
from app.models import Identifier, Study, StudyEndpoint

UID = "1.2.840.113619.2.55.3.604688119"
PRIOR = "1.2.840.113619.2.55.3.100"


def study(uid: str = UID, **kwargs) -> Study:
    kwargs.setdefault("sources", ["pacs"])
    return Study(uid=uid, accession=kwargs.pop("accession", "SGH0024000"), **kwargs)


def one(viewer: dict, s: Study | None = None, **kwargs) -> dict:
    kwargs.setdefault("patient_id", "SB100001")
    links = viewers.viewer_links(s or study(), {"pacs": viewer}, **kwargs)
    assert len(links) == 1
    return links[0]


# --- each kind -----------------------------------------------------------------------------------

def test_ohif_link_and_compare_template():
    link = one({"kind": "ohif", "url": "https://viewer.example/ohif/"})
    assert link == {
        "archive": "pacs", "kind": "ohif", "label": "Web viewer",
        "url": f"https://viewer.example/ohif/viewer?StudyInstanceUIDs={UID}",
        "compare_url_template": f"https://viewer.example/ohif/viewer?StudyInstanceUIDs={UID},{{prior_uid}}",
    }
    compare = link["compare_url_template"].replace("{prior_uid}", PRIOR)
    assert compare.endswith(f"StudyInstanceUIDs={UID},{PRIOR}")


@pytest.mark.parametrize(("issuer", "patient_param"), [
    (None, "SB100001"),
    ("SANDBOX-PACS", "SB100001%5E%5E%5ESANDBOX-PACS"),
    ("urn:oid:2.999.7418.1.1", "SB100001%5E%5E%5E%262.999.7418.1.1%26ISO"),
])
def test_iid_link_carries_patient_id_as_cx(issuer, patient_param):
    link = one({"kind": "iid", "url": "https://pacs.example/IHEInvokeImageDisplay"}, issuer=issuer)
    assert link["url"] == (f"https://pacs.example/IHEInvokeImageDisplay?requestType=STUDY&studyUID={UID}"
                           f"&patientID={patient_param}")
    assert "compare_url_template" not in link


def test_iid_link_appends_to_an_existing_query_and_omits_an_unknown_patient():
    link = one({"kind": "iid", "url": "https://pacs.example/iid?site=1"}, patient_id=None)
    assert link["url"] == f"https://pacs.example/iid?site=1&requestType=STUDY&studyUID={UID}"


def test_iid_prefers_the_identifier_the_archive_matched_on_and_the_viewer_issuer():
    s = study(matched_ids={"pacs": Identifier("urn:oid:2.999.7418.1.1", "SB100001")})
    link = one({"kind": "iid", "url": "https://pacs.example/iid", "issuer_of_patient_id": "SANDBOX-PACS"}, s,
               patient_id="pat-amy")
    assert link["url"].endswith("&patientID=SB100001%5E%5E%5ESANDBOX-PACS")


def test_weasis_link_uses_the_dicomweb_rs_command():
    link = one({"kind": "weasis", "url": "https://weasis.example/", "dicomweb_url": "https://pacs.example/dicom-web/"})
    assert link["url"] == ("weasis://%24dicom%3Ars%20--url%20%22https%3A%2F%2Fpacs.example%2Fdicom-web%22%20-r%20"
                           f"%22studyUID%3D{UID}%22")
    assert unquote(link["url"].removeprefix("weasis://")) == (
        f'$dicom:rs --url "https://pacs.example/dicom-web" -r "studyUID={UID}"')


def test_weasis_link_defaults_to_the_study_endpoint_of_that_archive():
    s = study(endpoints=[StudyEndpoint("other", "https://other.example/rs"),
                         StudyEndpoint("pacs", "https://pacs.example/rs")])
    link = one({"kind": "weasis", "url": "https://weasis.example/"}, s)
    assert unquote(link["url"]) == f'weasis://$dicom:rs --url "https://pacs.example/rs" -r "studyUID={UID}"'


def test_weasis_without_a_dicomweb_address_gets_no_link():
    assert viewers.viewer_links(study(), {"pacs": {"kind": "weasis", "url": "https://w.example/"}},
                                patient_id="p") == []


def test_url_template_fills_and_encodes_each_placeholder():
    template = "https://portal.example/show?uid={study_uid}&acc={accession}&pid={patient_id}&iss={issuer}"
    link = one({"kind": "url", "url": template}, issuer="A&B")
    assert link["url"] == (f"https://portal.example/show?uid={UID}&acc=SGH0024000&pid=SB100001&iss=A%26B")


@pytest.mark.parametrize(("accession", "encoded"), [
    ('"><img src=x onerror=alert(1)>', "%22%3E%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E"),
    ("a/b?c#d&e=f", "a%2Fb%3Fc%23d%26e%3Df"),
    ("\u202eevil", "%E2%80%AEevil"),
    ("javascript:alert(1)", "javascript%3Aalert%281%29"),
    (None, ""),
])
def test_url_template_encodes_hostile_values(accession, encoded):
    link = one({"kind": "url", "url": "https://portal.example/a/{accession}"}, study(accession=accession))
    assert link["url"] == f"https://portal.example/a/{encoded}"


@pytest.mark.parametrize("uid", ['1.2.3" --evil "x', "1.2.03", "1..2", "", "1.2.3 ", "1" * 65, "abc"])
def test_a_uid_that_is_not_a_dicom_uid_gets_no_link(uid):
    for viewer in ({"kind": "ohif", "url": "https://v.example"},
                   {"kind": "weasis", "url": "https://w.example", "dicomweb_url": "https://p.example/rs"}):
        assert viewers.viewer_links(study(uid), {"pacs": viewer}, patient_id="p") == []


def test_links_follow_the_study_sources_and_skip_archives_without_a_viewer():
    s = study(sources=["ehr", "pacs", "outside"])
    links = viewers.viewer_links(s, {"pacs": {"kind": "ohif", "url": "https://v.example"},
                                     "outside": {"kind": "iid", "url": "https://o.example/iid", "label": "Riverside"}},
                                 patient_id="p")
    assert [(x["archive"], x["kind"], x["label"]) for x in links] == [("pacs", "ohif", "Web viewer"),
                                                                     ("outside", "iid", "Riverside")]
    assert viewers.viewer_links(s, None, patient_id="p") == []


def test_viewer_config_objects_work_like_tables():
    from app.archives.config import ViewerConfig

    link = one(ViewerConfig(kind="ohif", url="https://v.example"))  # type: ignore[arg-type]
    assert link["url"] == f"https://v.example/viewer?StudyInstanceUIDs={UID}"


# --- configuration checks -------------------------------------------------------------------------

@pytest.mark.parametrize("viewer", [
    {"kind": "ohif", "url": "https://v.example/ohif"},
    {"kind": "iid", "url": "https://pacs.example/iid?x=1"},
    {"kind": "weasis", "url": "https://weasis.example", "dicomweb_url": "https://pacs.example/rs"},
    {"kind": "url", "url": "https://p.example/{study_uid}?a={accession}&p={patient_id}&i={issuer}"},
])
def test_valid_viewers_pass(viewer):
    viewers.validate_viewer(viewer, "pacs")


@pytest.mark.parametrize(("viewer", "message"), [
    ({"kind": "url", "url": "https://p.example/{study}"},
     'archive "pacs": viewer.url uses {study}, which is not a viewer placeholder; use {study_uid}, '
     "{accession}, {patient_id}, {issuer}"),
    ({"kind": "url", "url": "https://p.example/?q={}"},
     'archive "pacs": viewer.url uses {}, which is not a viewer placeholder; use {study_uid}, '
     "{accession}, {patient_id}, {issuer}"),
    ({"kind": "dicom", "url": "https://p.example"},
     'archive "pacs": viewer.kind must be one of ohif, iid, weasis, url (got "dicom")'),
    ({"kind": "ohif"}, 'archive "pacs": viewer.url is missing; give the address of the web viewer'),
    ({"kind": "ohif", "url": "javascript:alert(1)"},
     'archive "pacs": viewer.url must be an http(s) URL (got "javascript:alert(1)")'),
    ({"kind": "ohif", "url": "https://v.example/{study_uid}"},
     'archive "pacs": viewer.url has a {placeholder}, but only viewer kind "url" takes a template'),
    ({"kind": "url", "url": "file:///{study_uid}"},
     'archive "pacs": viewer.url must be an http(s) URL (got "file:///x")'),
    ({"kind": "ohif", "url": "https://v.example", "dicomweb_url": "https://p.example/rs"},
     'archive "pacs": viewer.dicomweb_url is only used by viewer kind "weasis"'),
    ({"kind": "weasis", "url": "https://w.example", "dicomweb_url": 'https://p.example/rs" -x "'},
     'archive "pacs": viewer.dicomweb_url must not contain spaces or quotes'),
])
def test_invalid_viewers_are_config_errors(viewer, message):
    with pytest.raises(ConfigError) as raised:
        viewers.validate_viewer(viewer, "pacs")
    assert raised.value.message == message


# --- through the gateway (via = "gateway") ----------------------------------------------------------

GATEWAY = "https://timeline.example/dicomweb/cap-abc"


def test_ohif_through_the_gateway_uses_the_released_dicomwebproxy_data_source():
    link = one({"kind": "ohif", "url": "https://viewer.example/ohif/", "via": "gateway"}, gateway=GATEWAY)
    config = "https%3A%2F%2Ftimeline.example%2Fdicomweb%2Fcap-abc%2Fohif-config.json"
    assert link["url"] == f"https://viewer.example/ohif/viewer/dicomwebproxy?url={config}&studyInstanceUIDs={UID}"
    assert link["compare_url_template"].replace("{prior_uid}", PRIOR).endswith(f"studyInstanceUIDs={UID};{PRIOR}")
    assert link["gateway"] == GATEWAY


def test_weasis_through_the_gateway_is_given_the_gateway_not_the_archive():
    link = one({"kind": "weasis", "url": "https://w.example", "dicomweb_url": "https://pacs.example/rs",
                "via": "gateway"}, gateway=GATEWAY)
    assert unquote(link["url"]) == f'weasis://$dicom:rs --url "{GATEWAY}" -r "studyUID={UID}"'


def test_a_url_template_through_the_gateway_fills_gateway():
    link = one({"kind": "url", "url": "https://v.example/open?dw={gateway}&s={study_uid}", "via": "gateway"},
               gateway=GATEWAY)
    assert link["url"] == f"https://v.example/open?dw=https%3A%2F%2Ftimeline.example%2Fdicomweb%2Fcap-abc&s={UID}"


def test_a_gateway_viewer_without_a_gateway_gets_no_link_rather_than_a_direct_one():
    links = viewers.viewer_links(study(), {"pacs": {"kind": "ohif", "url": "https://v.example", "via": "gateway"}},
                                 patient_id="SB100001")
    assert links == []


def test_a_direct_viewer_ignores_the_gateway():
    link = one({"kind": "ohif", "url": "https://v.example"}, gateway=GATEWAY)
    assert "gateway" not in link
    assert link["url"] == f"https://v.example/viewer?StudyInstanceUIDs={UID}"


def test_a_gateway_viewer_opens_a_study_reached_only_through_an_endpoint_in_its_archive():
    record = study(sources=["ehr"], endpoints=[StudyEndpoint("pacs", "https://pacs.example/rs")])
    table = {"kind": "ohif", "url": "https://v.example", "via": "gateway"}
    (link,) = viewers.viewer_links(record, {"pacs": table}, patient_id=None, gateway=GATEWAY)
    assert link["archive"] == "pacs" and link["gateway"] == GATEWAY
    assert viewers.viewer_links(record, {"pacs": {"kind": "ohif", "url": "https://v.example"}}, patient_id=None) == []
