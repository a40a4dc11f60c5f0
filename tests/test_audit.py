"""The audit trail over real HTTP: what the demo records, what `imaging-timeline audit` prints, forwarding."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from app.audit_store import SQLiteAuditStore
from app.keys import generate_keys
from sandbox.demo import Demo, serve_demo

KEYS = generate_keys()
CONTRACT_FIELDS = {"action", "patient", "user", "studies", "archive", "outcome", "recorded"}


def launch(demo: Demo, patient: str) -> requests.Session:
    browser = requests.Session()
    resp = browser.get(f"{demo.base_url}/sandbox/launch", params={"patient": patient, "embedded": "1"}, timeout=30)
    assert resp.status_code == 200 and resp.url == f"{demo.base_url}/timeline", resp.text[:300]
    return browser


def studies(demo: Demo, browser: requests.Session) -> list[dict]:
    resp = browser.get(f"{demo.base_url}/api/studies", timeout=60)
    assert resp.status_code == 200, resp.text
    return resp.json()["studies"]


def audit_cli(store_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "IMAGING_AUDIT_STORE": store_url}
    return subprocess.run([sys.executable, "-m", "app.cli", "audit", *args], capture_output=True, text=True,
                          env=env, timeout=60, check=False)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit-demo")
    options = {"APP_KEYS": KEYS, "SESSION_STORE": f"sqlite:///{root / 'sessions.db'}",
               "AUDIT_STORE": f"sqlite:///{root / 'audit.db'}", "AUDIT_FHIR_BACKOFF_S": (0.2,)}
    with serve_demo(app_options=options) as running:
        yield running


@pytest.fixture(scope="module")
def session_of_ben(demo):
    """One clinician session on Benjamin: timeline, study list, a thumbnail, a viewer opening with compare."""
    browser = launch(demo, "pat-ben")
    found = studies(demo, browser)
    with_thumb = next(s for s in found if s["thumbnail"])
    assert browser.get(demo.base_url + with_thumb["thumbnail"], timeout=30).status_code == 200
    viewable = [s for s in found if s["viewers"]]
    first = viewable[0]
    archive = first["viewers"][0]["archive"]
    second = next(s for s in viewable[1:] if archive in s["sources"])
    resp = browser.post(f"{demo.base_url}/api/access-log", json={
        "uid": first["uid"], "archive": archive, "kind": first["viewers"][0]["kind"], "compare_uid": second["uid"]},
        timeout=10)
    assert resp.status_code == 204
    return {"studies": found, "thumbnail": with_thumb, "opened": (first["uid"], second["uid"]), "archive": archive}


def store_url(demo: Demo) -> str:
    return demo.app.config["AUDIT_STORE"]


def test_cli_lists_every_kind_of_access_in_json(demo, session_of_ben):
    result = audit_cli(store_url(demo), "--patient", "pat-ben", "--format", "json")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert {e["action"] for e in events} >= {"view-timeline", "list-studies", "thumbnail", "open-viewer"}
    for e in events:
        assert CONTRACT_FIELDS <= set(e)
        assert e["patient"] == "pat-ben"
        assert e["user"].endswith("/Practitioner/sandbox-dr-radiant")
        assert isinstance(e["studies"], list)


def test_a_viewer_opening_of_a_compare_records_both_studies(demo, session_of_ben):
    events = SQLiteAuditStore(store_url(demo).removeprefix("sqlite:///")).query("pat-ben")
    opened = [e for e in events if e.action == "open-viewer"]
    assert [(e.studies, e.archive) for e in opened] == [(session_of_ben["opened"], session_of_ben["archive"])]


def test_the_study_list_is_recorded_per_archive_with_the_studies_it_returned(demo, session_of_ben):
    events = SQLiteAuditStore(store_url(demo).removeprefix("sqlite:///")).query("pat-ben")
    listed: dict[str, set[str]] = {}
    for e in events:
        if e.action == "list-studies":
            listed.setdefault(e.archive, set()).update(e.studies)
    for study in session_of_ben["studies"]:
        for source in study["sources"]:
            assert study["uid"] in listed[source]


def test_a_thumbnail_fetch_is_recorded_with_its_archive(demo, session_of_ben):
    events = SQLiteAuditStore(store_url(demo).removeprefix("sqlite:///")).query("pat-ben")
    thumb = session_of_ben["thumbnail"]
    assert any(e.action == "thumbnail" and e.studies == (thumb["uid"],) and e.outcome == "success"
               and thumb["thumbnail"].startswith(f"/api/thumbnail/{e.archive}/") for e in events)


def test_events_name_the_client_and_the_clinicians_address(demo, session_of_ben):
    events = SQLiteAuditStore(store_url(demo).removeprefix("sqlite:///")).query("pat-ben")
    assert {(e.client_id, e.address) for e in events} == {("imaging-timeline", "127.0.0.1")}


def test_cli_table_names_each_action(demo, session_of_ben):
    result = audit_cli(store_url(demo), "--patient", "pat-ben")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].split() == ["recorded", "action", "user", "client", "archive", "outcome",
                                                     "studies"]
    for action in ("view-timeline", "list-studies", "thumbnail", "open-viewer"):
        assert action in result.stdout


def test_cli_fhir_format_prints_balp_audit_events(demo, session_of_ben):
    result = audit_cli(store_url(demo), "--patient", "pat-ben", "--format", "fhir")
    resources = [json.loads(line) for line in result.stdout.splitlines()]
    assert resources and all(r["resourceType"] == "AuditEvent" for r in resources)
    assert all(r["type"]["code"] == "rest" for r in resources)
    assert all({"reference": "Patient/pat-ben"} == r["entity"][0]["what"] for r in resources)


def test_cli_since_leaves_out_earlier_events(demo, session_of_ben):
    result = audit_cli(store_url(demo), "--patient", "pat-ben", "--since", "2999-01-01", "--format", "json")
    assert result.returncode == 0 and result.stdout == ""


def test_cli_refuses_a_since_that_is_not_iso_8601(demo):
    result = audit_cli(store_url(demo), "--patient", "pat-ben", "--since", "yesterday")
    assert result.returncode == 2
    assert 'imaging-timeline: --since "yesterday" is not an ISO-8601 date or date-time' in result.stderr


def test_cli_for_a_patient_nobody_looked_at_says_so(demo):
    result = audit_cli(store_url(demo), "--patient", "pat-nobody")
    assert result.stdout == "no audit events for this patient\n"


def test_a_viewer_opening_of_a_study_outside_the_timeline_records_nothing(demo):
    browser = launch(demo, "pat-amy")
    studies(demo, browser)
    before = len(SQLiteAuditStore(store_url(demo).removeprefix("sqlite:///")).query("pat-amy"))
    resp = browser.post(f"{demo.base_url}/api/access-log", json={"uid": "1.2.3", "archive": "pacs"}, timeout=10)
    assert resp.status_code == 404
    events = SQLiteAuditStore(store_url(demo).removeprefix("sqlite:///")).query("pat-amy")
    assert len(events) == before and "open-viewer" not in {e.action for e in events}


def test_a_compare_with_a_study_not_shown_is_refused_and_records_nothing(demo):
    # The page offers "compare" only between studies it showed: another UID is forged input.
    browser = launch(demo, "pat-amy")
    study = next(s for s in studies(demo, browser) if s["viewers"])
    archive = study["viewers"][0]["archive"]
    before = SQLiteAuditStore(store_url(demo).removeprefix("sqlite:///")).query("pat-amy")
    resp = browser.post(f"{demo.base_url}/api/access-log",
                        json={"uid": study["uid"], "archive": archive, "compare_uid": "1.2.3.4", "patient": "pat-amy"},
                        timeout=10)
    assert resp.status_code == 404
    after = SQLiteAuditStore(store_url(demo).removeprefix("sqlite:///")).query("pat-amy")
    assert [e for e in after if e.action == "open-viewer"] == [e for e in before if e.action == "open-viewer"]


def test_the_general_log_gets_no_patient_or_study_identifiers(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    options = {"APP_KEYS": KEYS, "AUDIT_STORE": f"sqlite:///{tmp_path / 'audit.db'}"}
    with serve_demo(app_options=options) as demo:
        browser = launch(demo, "pat-ben")
        found = studies(demo, browser)
        study = next(s for s in found if s["viewers"])
        browser.post(f"{demo.base_url}/api/access-log",
                     json={"uid": study["uid"], "archive": study["viewers"][0]["archive"]}, timeout=10)
    app_records = [r for r in caplog.records if r.name == "app" or r.name.startswith("app.")]
    assert app_records
    text = "\n".join(r.getMessage() for r in app_records)
    assert "pat-ben" not in text
    assert study["uid"] not in text


def test_audit_stdout_writes_one_json_line_per_event(tmp_path, capsys):
    options = {"APP_KEYS": KEYS, "AUDIT_STORE": f"sqlite:///{tmp_path / 'audit.db'}", "AUDIT_STDOUT": "1",
               "AUDIT_FHIR_URL": None}
    with serve_demo(app_options=options) as demo:
        launch(demo, "pat-amy")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"audit"')]
    assert [line["audit"]["action"] for line in lines] == ["view-timeline"]
    assert lines[0]["audit"]["patient"] == "pat-amy"


# --- forwarding to a FHIR AuditEvent endpoint (the sandbox EHR) ---------------------------------


def forwarded(demo: Demo, patient: str) -> list[dict]:
    """The AuditEvents the sandbox EHR holds for `patient` (read as a backend client would)."""
    return [e for e in demo.sandbox.extensions["sandbox"].audit_events
            if any((ent.get("what") or {}).get("reference") == f"Patient/{patient}" for ent in e["entity"])]


def wait_for(predicate, timeout_s: float = 20.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_events_are_forwarded_to_the_sandbox_ehr_as_balp_audit_events(demo, session_of_ben):
    assert wait_for(lambda: {"R", "E"} <= {e["action"] for e in forwarded(demo, "pat-ben")})
    events = forwarded(demo, "pat-ben")
    query = next(e for e in events if e["action"] == "E")
    assert query["subtype"] == [{"system": "http://hl7.org/fhir/restful-interaction", "code": "search-type"}]
    assert query["meta"]["profile"] == ["https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit."
                                        "PatientQuery"]
    user = query["agent"][0]
    assert user["requestor"] is True and user["type"]["coding"][0]["code"] == "IRCP"
    assert user["network"] == {"address": "127.0.0.1", "type": "2"}
    assert [a["type"]["coding"][0]["code"] for a in query["agent"][1:]] == ["110153", "110152"]


def test_the_sandbox_lists_forwarded_events_to_a_backend_client(demo, session_of_ben):
    from app.archives.auth import SmartBackendAuth
    from app.http import Deadline
    from sandbox.app_config import BACKEND_CLIENT_ID

    assert wait_for(lambda: forwarded(demo, "pat-ben"))
    auth = SmartBackendAuth("t", demo.iss, client_id=BACKEND_CLIENT_ID, key=KEYS.key("RS384"),
                            http=requests.Session(), scope="system/AuditEvent.rs")
    headers = auth.headers_for(f"{demo.iss}/AuditEvent", Deadline.after(10))
    bundle = requests.get(f"{demo.iss}/AuditEvent", params={"patient": "pat-ben"}, headers=headers, timeout=10).json()
    assert bundle["resourceType"] == "Bundle" and bundle["total"] >= 1
    assert requests.get(f"{demo.iss}/AuditEvent", timeout=10).status_code == 401


def test_a_failing_audit_repository_keeps_events_in_the_outbox_until_it_recovers(demo):
    rt = demo.sandbox.extensions["sandbox"]
    outbox = demo.app.extensions["audit"].store
    browser = launch(demo, "pat-dev")
    rt.faults["ehr"] = "503"
    try:
        browser.get(f"{demo.base_url}/timeline", timeout=30)
        assert wait_for(lambda: outbox.outbox_size() > 0)
        time.sleep(0.5)  # several retries against the failing repository
        assert outbox.outbox_size() > 0
    finally:
        del rt.faults["ehr"]
    assert wait_for(lambda: outbox.outbox_size() == 0)
    assert len([e for e in forwarded(demo, "pat-dev") if e["subtype"][0]["code"] == "read"]) >= 2


def test_the_store_folder_is_created_for_an_sqlite_url(tmp_path):
    path = Path(tmp_path / "new" / "dir" / "audit.db")
    result = audit_cli(f"sqlite:///{path}", "--patient", "x")
    assert result.returncode == 0 and path.exists()


def test_cli_reads_a_postgresql_store(postgres_url):
    from datetime import UTC, datetime

    from app.audit_event import AuditEvent
    from app.audit_store import PostgresAuditStore

    PostgresAuditStore(postgres_url).append([AuditEvent("thumbnail", "pat-pg", "Practitioner/x", studies=("1.2.9",),
                                                        archive="pacs", recorded=datetime(2026, 12, 1, tzinfo=UTC))])
    result = audit_cli(postgres_url, "--patient", "pat-pg", "--format", "json")
    assert result.returncode == 0, result.stderr
    (event,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert {k: event[k] for k in CONTRACT_FIELDS} == {
        "action": "thumbnail", "patient": "pat-pg", "user": "Practitioner/x", "studies": ["1.2.9"],
        "archive": "pacs", "outcome": "success", "recorded": "2026-12-01T00:00:00.000000Z"}


def test_the_demo_honours_imaging_audit_store(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'from-env.db'}"
    monkeypatch.setenv("IMAGING_AUDIT_STORE", url)
    with serve_demo(app_options={"APP_KEYS": KEYS, "AUDIT_FHIR_URL": None}) as demo:
        launch(demo, "pat-carla")
    assert [e.action for e in SQLiteAuditStore(tmp_path / "from-env.db").query("pat-carla")] == ["view-timeline"]


# --- when the audit store fails: reconnect once, else refuse the access (fail closed) -----------------


def _drop_connections(url: str, allow_new: bool) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    admin = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as db:
        db.execute(f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS {'true' if allow_new else 'false'}")
        db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))


@pytest.fixture
def pg_demo(postgres_url):
    with serve_demo(app_options={"APP_KEYS": KEYS, "AUDIT_STORE": postgres_url, "AUDIT_FHIR_URL": None}) as demo:
        yield demo, postgres_url
    _drop_connections(postgres_url, allow_new=True)


def test_a_dropped_database_connection_is_reopened_and_the_event_kept(pg_demo):
    demo, url = pg_demo
    browser = launch(demo, "pat-amy")
    _drop_connections(url, allow_new=True)  # e.g. PostgreSQL restarted
    assert browser.get(f"{demo.base_url}/timeline", timeout=30).status_code == 200
    from app.audit_store import PostgresAuditStore

    assert [e.action for e in PostgresAuditStore(url).query("pat-amy")] == ["view-timeline", "view-timeline"]


def test_nothing_is_shown_when_the_access_cannot_be_recorded(pg_demo):
    demo, url = pg_demo
    browser = launch(demo, "pat-amy")
    _drop_connections(url, allow_new=False)  # the audit database is unreachable
    page = browser.get(f"{demo.base_url}/timeline", timeout=30)
    assert page.status_code == 503
    assert "could not record this access in its audit trail, so nothing was shown" in page.text
    api = browser.get(f"{demo.base_url}/api/studies", timeout=60)
    assert api.status_code == 503 and api.json()["error"] == "audit-unavailable"
    assert "studies" not in api.json()


def test_a_report_read_is_recorded_with_its_report_study_and_archive(demo):
    browser = launch(demo, "pat-faye")
    study = next(s for s in studies(demo, browser) if s["reports"])
    report = study["reports"][0]
    resp = browser.get(f"{demo.base_url}/api/reports/{report['source']}/{report['id']}", timeout=30)
    assert resp.status_code == 200
    events = SQLiteAuditStore(store_url(demo).removeprefix("sqlite:///")).query("pat-faye")
    reads = [e for e in events if e.action == "read-report"]
    assert [(e.reports, e.studies, e.archive, e.outcome) for e in reads] == [
        ((report["id"],), (study["uid"],), report["source"], "success")]


def test_a_refused_report_read_is_recorded_as_a_failure(demo):
    browser = launch(demo, "pat-carla")
    studies(demo, browser)
    resp = browser.get(f"{demo.base_url}/api/reports/ehr/not-a-listed-report", timeout=30)
    assert resp.status_code == 404
    events = SQLiteAuditStore(store_url(demo).removeprefix("sqlite:///")).query("pat-carla")
    assert [(e.action, e.reports, e.outcome) for e in events if e.action == "read-report"] == [
        ("read-report", ("not-a-listed-report",), "minor-failure")]
