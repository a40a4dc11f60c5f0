"""CDS Hooks 2.0 services over real HTTP: discovery, the sandbox as CDS client, JWT checks, patient coverage."""

from __future__ import annotations

import json
import re
import secrets
import socket
import time
import uuid

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from app.keys import generate_keys
from sandbox.data import study_uid
from sandbox.demo import Demo, serve_demo
from sandbox.store import GrantUser, Token

KEYS = generate_keys()
CLIENT_KEY = RSAKey.generate_key(2048, parameters={"kid": "ehr-test-1", "alg": "RS384"}, private=True)
OTHER_KEY = RSAKey.generate_key(2048, parameters={"kid": "ehr-test-1", "alg": "RS384"}, private=True)
CLIENT_ISS = "https://ehr.test.example/cds-client"
BEN_CT_HEAD = f"ImagingStudy/{study_uid('ben-ct-head-stat')}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def jwks_server():
    from pytest_httpserver import HTTPServer

    server = HTTPServer()
    server.start()
    server.expect_request("/jwks.json").respond_with_json(KeySet([CLIENT_KEY]).as_dict(private=False))
    yield server
    server.clear()
    server.stop()


@pytest.fixture(scope="module")
def demo(tmp_path_factory, jwks_server):
    root = tmp_path_factory.mktemp("cds")
    port = _free_port()
    sandbox_url = f"http://127.0.0.1:{port}/sandbox"
    clients = [{"iss": sandbox_url, "jwks_url": f"{sandbox_url}/auth/jwks", "fhir_servers": [f"{sandbox_url}/fhir"]},
               {"iss": CLIENT_ISS, "jwks_url": jwks_server.url_for("/jwks.json"),
                "fhir_servers": [f"{sandbox_url}/fhir"]}]
    options = {"APP_KEYS": KEYS, "AUDIT_STORE": f"sqlite:///{root / 'audit.db'}", "AUDIT_FHIR_URL": None,
               # A roomy deadline: these tests are about the answers; the deadline has its own test below.
               "CDS_CLIENTS": clients, "CDS_DEADLINE_S": 5.0}
    with serve_demo(port=port, app_options=options) as running:
        yield running


def sandbox_cds(demo: Demo, **params) -> requests.Response:
    return requests.get(f"{demo.base_url}/sandbox/cds", params=params, timeout=30)


# --- discovery -----------------------------------------------------------------------------------


def test_discovery_lists_the_patient_view_and_order_select_services(demo):
    services = requests.get(f"{demo.base_url}/cds-services", timeout=10).json()["services"]
    hooks = {s["id"]: s["hook"] for s in services}
    assert hooks["imaging-timeline-patient-view"] == "patient-view"
    assert hooks["imaging-timeline-order-select"] == "order-select"
    assert hooks["imaging-timeline-order-sign"] == "order-sign"
    assert all(s["prefetch"] == {"patient": "Patient/{{context.patientId}}"} for s in services)


# --- the sandbox as CDS client -------------------------------------------------------------------


def test_patient_view_card_for_a_patient_with_outside_imaging(demo):
    resp = sandbox_cds(demo, hook="patient-view", patient="pat-amy")
    assert resp.status_code == 200, resp.text
    (card,) = resp.json()["cards"]
    assert card["summary"].startswith("1 outside study at 1 facility — newest CT head ")
    assert card["summary"].endswith("(Riverside Regional Hospital)")
    assert card["indicator"] in {"info", "warning"}
    (link,) = card["links"]
    assert link["type"] == "smart" and link["url"] == f"{demo.base_url}/launch"
    assert json.loads(link["appContext"]) == {"fhirContext": [f"ImagingStudy/{study_uid('amy-osh-ct-head')}"]}


@pytest.mark.parametrize("patient", ["pat-carla", "pat-ben"])
def test_no_patient_view_card_when_nothing_is_new(demo, patient):
    # Carla has no outside imaging; Ben's outside CT is already listed by the EHR.
    resp = sandbox_cds(demo, hook="patient-view", patient=patient)
    assert resp.status_code == 200 and resp.json() == {"cards": []}


def test_order_select_warns_about_a_recent_comparable_study(demo):
    resp = sandbox_cds(demo, hook="order-select", patient="pat-ben", code="CT head")
    assert resp.status_code == 200, resp.text
    (card,) = resp.json()["cards"]
    assert card["indicator"] == "warning"
    assert card["summary"].startswith("CT head without contrast at Sandbox General Hospital, ")
    assert card["summary"].endswith(" ago, report preliminary: view before repeating")
    assert "- 1 series, 4 images" in card["detail"]
    assert "- 5 mm slices (from the images)" in card["detail"]  # SliceThickness of the CT series' instances
    assert "Contrast: without contrast (from the study description)" in card["detail"]
    assert json.loads(card["links"][0]["appContext"]) == {"fhirContext": [BEN_CT_HEAD]}
    (suggestion,) = card["suggestions"]
    (action,) = suggestion["actions"]
    assert action["type"] == "delete" and action["resourceId"][0].startswith("ServiceRequest/draft-")
    assert card["selectionBehavior"] == "at-most-one"


def test_order_select_by_cpt_code_finds_the_same_study(demo):
    (card,) = sandbox_cds(demo, hook="order-select", patient="pat-ben", code="70450").json()["cards"]
    assert json.loads(card["links"][0]["appContext"])["fhirContext"] == [BEN_CT_HEAD]


def test_order_select_says_contrast_when_the_study_had_it(demo):
    (card,) = sandbox_cds(demo, hook="order-select", patient="pat-dev", code="CT chest with contrast").json()["cards"]
    assert card["summary"].startswith("CT chest with contrast at ")


@pytest.mark.parametrize(("patient", "code"), [
    ("pat-ben", "MRI knee"),          # no knee imaging at all
    ("pat-amy", "MRI knee left"),     # a knee MRI, but a year ago: not recent
    ("pat-ben", "US abdomen"),        # other region and modality
    ("pat-ben", "please advise"),     # no modality: nothing to compare
])
def test_no_order_warning_without_a_recent_comparable_study(demo, patient, code):
    resp = sandbox_cds(demo, hook="order-select", patient=patient, code=code)
    assert resp.status_code == 200 and resp.json() == {"cards": []}


def test_order_select_needs_a_code(demo):
    resp = sandbox_cds(demo, hook="order-select", patient="pat-ben")
    assert resp.status_code == 400
    assert resp.json()["error"] == "order-select needs code=<procedure code or text> for the draft order."


# --- calling the services directly, as another EHR ----------------------------------------------


def service_url(demo: Demo, service: str = "imaging-timeline-order-select") -> str:
    return f"{demo.base_url}/cds-services/{service}"


def sign(claims: dict, key: RSAKey = CLIENT_KEY, header: dict | None = None) -> str:
    return jwt.encode({"alg": "RS384", "typ": "JWT", "kid": key.kid, **(header or {})}, claims, key,
                      algorithms=["RS384"])


def claims_for(url: str, **overrides) -> dict:
    now = int(time.time())
    return {"iss": CLIENT_ISS, "aud": url, "exp": now + 300, "iat": now, "jti": secrets.token_urlsafe(16),
            **overrides}


def patient_token(demo: Demo, patient: str) -> str:
    rt = demo.sandbox.extensions["sandbox"]
    token = Token(secrets.token_urlsafe(24), client_id="imaging-timeline", scope="patient/ImagingStudy.rs "
                  "patient/Patient.rs patient/DiagnosticReport.rs patient/ServiceRequest.rs patient/Endpoint.rs",
                  grant_type="cds-hooks", issued_at=rt.clock(), expires_in=300, clock=rt.clock,
                  user=GrantUser(practitioner_id="sandbox-dr-radiant", patient_id=patient))
    rt.store.add_token(token)
    return token.access_token


def order_body(demo: Demo, patient: str = "pat-ben", hook: str = "order-select", **overrides) -> dict:
    draft = {"resourceType": "ServiceRequest", "id": "d1", "status": "draft", "intent": "proposal",
             "code": {"text": "CT head"}, "subject": {"reference": f"Patient/{patient}"}}
    body = {"hook": hook, "hookInstance": str(uuid.uuid4()), "fhirServer": demo.iss,
            "fhirAuthorization": {"access_token": patient_token(demo, patient), "token_type": "Bearer",
                                  "expires_in": 300, "scope": "patient/ImagingStudy.rs patient/Patient.rs",
                                  "subject": "imaging-timeline", "patient": patient},
            "context": {"userId": "Practitioner/sandbox-dr-radiant", "patientId": patient,
                        "selections": ["ServiceRequest/d1"],
                        "draftOrders": {"resourceType": "Bundle", "type": "collection",
                                        "entry": [{"resource": draft}]}}}
    body.update(overrides)
    return body


def post(demo: Demo, body: dict, token: str | None, service: str = "imaging-timeline-order-select"):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.post(service_url(demo, service), json=body, headers=headers, timeout=30)


def test_a_signed_call_from_an_allow_listed_client_is_answered(demo):
    resp = post(demo, order_body(demo), sign(claims_for(service_url(demo))))
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["cards"]) == 1


def test_the_order_select_service_also_answers_order_sign(demo):
    body = order_body(demo, hook="order-sign")
    del body["context"]["selections"]
    resp = post(demo, body, sign(claims_for(service_url(demo))))
    assert resp.status_code == 200 and len(resp.json()["cards"]) == 1


def test_fhir_authorization_alone_is_enough_without_prefetch(demo):
    resp = post(demo, order_body(demo), sign(claims_for(service_url(demo))))
    assert resp.status_code == 200 and resp.json()["cards"]


def test_prefetch_alone_is_enough_without_fhir_authorization(demo):
    body = order_body(demo)
    del body["fhirAuthorization"]
    body["prefetch"] = {"patient": demo.sandbox.extensions["sandbox"].ehr.get("Patient", "pat-ben")}
    resp = post(demo, body, sign(claims_for(service_url(demo))))
    assert resp.status_code == 200, resp.text  # the EHR archive is skipped without a token; others answer


def test_neither_prefetch_nor_fhir_authorization_is_412(demo):
    body = order_body(demo)
    del body["fhirAuthorization"]
    resp = post(demo, body, sign(claims_for(service_url(demo))))
    assert resp.status_code == 412
    assert resp.json()["message"] == ("Send prefetch.patient, or fhirServer with fhirAuthorization, so the service "
                                      "can read the patient.")


def test_a_replayed_jti_is_refused(demo):
    token = sign(claims_for(service_url(demo)))
    assert post(demo, order_body(demo), token).status_code == 200
    again = post(demo, order_body(demo), token)
    assert again.status_code == 401
    assert again.json()["message"] == ("This JWT (jti) was already used; CDS clients must sign a new one for "
                                       "every call.")


@pytest.mark.parametrize(("make", "message"), [
    (lambda url: None, "A CDS Hooks call needs `Authorization: Bearer <JWT>`"),
    (lambda url: "not-a-jwt", "The CDS client's bearer token is not a JWT."),
    (lambda url: sign(claims_for(url, iss="https://stranger.example")),
     "CDS client 'https://stranger.example' is not allow-listed"),
    (lambda url: sign(claims_for(url, aud=url.replace("order-select", "patient-view"))),
     "The CDS client's JWT was refused (.*aud.*). Its aud must be"),
    (lambda url: sign(claims_for(url, exp=int(time.time()) - 3600)), r"The CDS client's JWT was refused \(.*exp"),
    (lambda url: sign({k: v for k, v in claims_for(url).items() if k != "jti"}), r"refused \(.*jti"),
    (lambda url: sign(claims_for(url), key=OTHER_KEY), "The CDS client's JWT was refused"),
])
def test_calls_without_a_valid_client_jwt_are_refused(demo, make, message):
    resp = post(demo, order_body(demo), make(service_url(demo)))
    assert resp.status_code == 401
    assert resp.json()["error"] == "cds-unauthenticated"
    assert re.search(message, resp.json()["message"]), resp.json()["message"]


def test_a_jku_other_than_the_registered_jwks_is_refused_and_never_fetched(demo, other_host):
    other_host.expect_request("/keys").respond_with_json(KeySet([OTHER_KEY]).as_dict(private=False))
    token = sign(claims_for(service_url(demo)), key=OTHER_KEY, header={"jku": other_host.url_for("/keys")})
    resp = post(demo, order_body(demo), token)
    assert resp.status_code == 401
    assert "is not the JWKS URL registered for" in resp.json()["message"]
    assert other_host.log == []


@pytest.mark.parametrize(("change", "message"), [
    (lambda b: b["fhirAuthorization"].update(patient="pat-amy"),
     "The access token is for another patient than context.patientId"),
    (lambda b: b["fhirAuthorization"].pop("patient"),
     "The access token has patient-level scopes but does not say which patient"),
    (lambda b: b.update(prefetch={"patient": {"resourceType": "Patient", "id": "pat-amy"}}),
     "The prefetched Patient is not context.patientId"),
    (lambda b: b.update(fhirServer="https://elsewhere.example/fhir"),
     "is not allowed to name the FHIR server https://elsewhere.example/fhir"),
])
def test_never_answers_for_a_patient_the_credentials_do_not_cover(demo, change, message):
    body = order_body(demo)
    change(body)
    resp = post(demo, body, sign(claims_for(service_url(demo))))
    assert resp.status_code == 403
    assert message in resp.json()["message"]


def test_a_draft_for_another_patient_gets_no_card(demo):
    body = order_body(demo)
    body["context"]["draftOrders"]["entry"][0]["resource"]["subject"] = {"reference": "Patient/pat-amy"}
    resp = post(demo, body, sign(claims_for(service_url(demo))))
    assert resp.status_code == 200 and resp.json() == {"cards": []}


def test_a_token_for_another_patient_is_refused_by_the_ehr_even_if_it_claims_this_one(demo):
    body = order_body(demo)
    body["fhirAuthorization"]["access_token"] = patient_token(demo, "pat-amy")  # says Ben, covers Amy
    resp = post(demo, body, sign(claims_for(service_url(demo))))
    assert resp.status_code == 403


@pytest.mark.parametrize(("change", "status"), [
    (lambda b: b.update(hook="patient-view"), 400),
    (lambda b: b.update(context={"patientId": "../x"}), 400),
    (lambda b: b["context"].update(draftOrders="nope"), 400),
])
def test_malformed_requests_are_400(demo, change, status):
    body = order_body(demo)
    change(body)
    assert post(demo, body, sign(claims_for(service_url(demo)))).status_code == status


def test_unknown_service_is_404(demo):
    url = f"{demo.base_url}/cds-services/nope"
    assert requests.post(url, json={}, timeout=10).status_code == 404


def test_a_slow_archive_gives_a_partial_answer_naming_it(demo):
    rt, cds = demo.sandbox.extensions["sandbox"], demo.app.extensions["cds"]
    # A shorter deadline than the fixture's, still roomy enough for the other archives on a loaded
    # machine; the archive's delay is well beyond it.
    rt.delays["dicomweb"], cds.deadline_s = 8.0, 3.0
    try:
        resp = sandbox_cds(demo, hook="patient-view", patient="pat-amy")
    finally:
        del rt.delays["dicomweb"]
        cds.deadline_s = 5.0
    (card,) = resp.json()["cards"]
    assert "Sandbox Hospital PACS did not answer in time; the timeline shows the complete list." in card["detail"]


# --- the sandbox chart -----------------------------------------------------------------------------


def test_the_chart_opens_its_decision_support_panel_with_the_patient(demo):
    chart = requests.get(f"{demo.base_url}/sandbox/", params={"patient": "pat-amy"}, timeout=30).text
    assert 'src="/sandbox/cds/panel?patient=pat-amy"' in chart
    panel = requests.get(f"{demo.base_url}/sandbox/cds/panel", params={"patient": "pat-amy"}, timeout=30).text
    assert 'class="box cds-card"' in panel
    assert "1 outside study at 1 facility" in panel
    assert 'id="draft-order"' in panel


def test_the_panel_says_so_when_there_is_no_imaging_news(demo):
    panel = requests.get(f"{demo.base_url}/sandbox/cds/panel", params={"patient": "pat-carla"}, timeout=30).text
    assert 'id="cds-none"' in panel and "cds-card" not in panel


def test_the_panel_refuses_an_unknown_patient(demo):
    assert requests.get(f"{demo.base_url}/sandbox/cds/panel", params={"patient": "nobody"}, timeout=30
                        ).status_code == 404


def test_the_chart_draft_order_form_shows_the_warning_and_cancelling_counts_as_followed(demo):
    page = requests.get(f"{demo.base_url}/sandbox/cds/panel", params={"patient": "pat-ben", "draft": "CT head"},
                        timeout=30)
    assert "view before repeating" in page.text
    from html.parser import HTMLParser

    fields: dict[str, str] = {}

    class Form(HTMLParser):
        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "input" and a.get("type") == "hidden" and a.get("name"):
                fields[a["name"]] = a.get("value") or ""

    parser = Form()  # the suggestion's form: its hidden fields, as the browser would post them
    start = page.text.index('class="cds-suggestion"')
    parser.feed(page.text[start:page.text.index("</form>", start)])
    before = requests.get(f"{demo.base_url}/metrics", timeout=10).text
    resp = requests.post(f"{demo.base_url}/sandbox/cds/feedback", data=fields, timeout=30)
    assert resp.status_code == 200 and 'id="draft-cancelled"' in resp.text
    after = requests.get(f"{demo.base_url}/metrics", timeout=10).text

    def followed(text: str) -> float:
        line = next((ln for ln in text.splitlines() if ln.startswith("imaging_timeline_order_warning_feedback_total")
                     and 'outcome="followed"' in ln), None)
        return float(line.rsplit(" ", 1)[1]) if line else 0.0

    assert followed(after) == followed(before) + 1


# --- in a real browser: the chart, its decision-support frame, and the card's link -------------------


@pytest.mark.browser
def test_a_warning_card_link_opens_the_timeline_on_that_study(demo, browser):
    from tests.conftest import CHROMIUM, need

    need("Chromium", CHROMIUM.exists(), "apt-get install chromium")
    context = browser.new_context(viewport={"width": 1500, "height": 1000})
    page = context.new_page()
    try:
        page.goto(f"{demo.chart_url}?patient=pat-ben")
        panel = page.frame_locator("#cds-panel")
        panel.locator("#draft-code").fill("CT head")
        panel.locator("#draft-order button").click()
        card = panel.locator('.cds-card[data-indicator="warning"]')
        card.wait_for(timeout=20_000)
        assert "view before repeating" in card.locator(".cds-summary").text_content()
        link = card.locator("a.cds-link")
        assert "fhir_context=ImagingStudy" in link.get_attribute("href")
        with page.expect_response(re.compile(r"/timeline$"), timeout=20_000):
            link.click()
        app = page.frame_locator("#app-frame")
        # The launch carried the study as fhirContext (the card's appContext), and the page shows it as current.
        app.locator("#study-list").wait_for(state="attached", timeout=20_000)
        assert json.loads(app.locator("#timeline-config").text_content())["fhirContext"] == [BEN_CT_HEAD]
        current = app.locator("li.is-current[data-study-uid]")
        current.wait_for(timeout=20_000)
        assert current.get_attribute("data-study-uid") == study_uid("ben-ct-head-stat")
    finally:
        context.close()


def test_a_hook_call_is_audited_as_the_ehr_users_study_list(demo):
    store = demo.app.extensions["audit"].store
    before = len(store.query("pat-ben"))
    assert post(demo, order_body(demo), sign(claims_for(service_url(demo)))).status_code == 200
    new = store.query("pat-ben")[before:]
    assert {e.action for e in new} == {"list-studies"}
    assert {e.archive for e in new} == {"ehr", "outside", "pacs"}
    assert {(e.user, e.client_id) for e in new} == {(f"{demo.iss}/Practitioner/sandbox-dr-radiant", CLIENT_ISS)}


def test_browser_based_cds_clients_get_cors_answers(demo):
    pre = requests.options(service_url(demo), headers={"Origin": "https://ehr.example",
                                                       "Access-Control-Request-Method": "POST",
                                                       "Access-Control-Request-Headers": "authorization,content-type"},
                           timeout=10)
    assert pre.ok and pre.headers["Access-Control-Allow-Origin"] == "*"
    assert "Authorization" in pre.headers["Access-Control-Allow-Headers"]
    assert requests.get(f"{demo.base_url}/cds-services", timeout=10).headers["Access-Control-Allow-Origin"] == "*"
