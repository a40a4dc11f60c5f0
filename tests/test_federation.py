"""Federation: concurrent, isolated archives; merged by StudyInstanceUID; streamed; cached per session."""

from __future__ import annotations

import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
from conftest import MRN_SYSTEM
from flask import Flask
from orthanc import ISSUER, SEED

from app import federation as federation_module
from app.archives.base import ArchiveAnswer, Candidate, LinkedReport, Subject
from app.archives.config import ArchiveConfig, AuthConfig
from app.errors import ArchiveUnavailable, ConfigError
from app.federation import Federation, link, merge_studies
from app.models import Identifier, LaunchContext, Report, Study

CTX = LaunchContext(iss="https://ehr.example.org/fhir", patient_id="pat-1", granted_scopes=frozenset())
JANE_DICOM = Subject(identifiers=(Identifier("", "MRN-1001"),), dicom=True)
DEMO = Path(__file__).resolve().parent.parent / "sandbox" / "demo_archives.toml"


def config(archive_id: str, **changes) -> ArchiveConfig:
    fields = {"id": archive_id, "name": archive_id.upper(), "kind": "dicomweb",
              "base_url": f"https://{archive_id}.example.org/dicom-web", "identifier_system": MRN_SYSTEM,
              "timeout_s": 5.0}
    return ArchiveConfig(**{**fields, **changes})


def study(uid: str, started: str | None = None, **fields) -> Study:
    return Study(uid=uid, started=datetime.fromisoformat(started) if started else None, **fields)


class FakeArchive:
    """An Archive double: answers with `studies` (all Jane's) after `delay` seconds, or raises `error`."""

    def __init__(self, config: ArchiveConfig, studies=(), *, delay: float = 0.0, error: Exception | None = None,
                 reports=()) -> None:
        self.config, self.studies, self.delay, self.error, self.reports = config, studies, delay, error, reports
        self.calls = 0

    def search(self, ref, deadline) -> ArchiveAnswer:
        self.calls += 1
        time.sleep(self.delay)
        if self.error is not None:
            raise self.error
        cands = [Candidate(study=_copy(s, self.config.id), subject=JANE_DICOM) for s in self.studies]
        return ArchiveAnswer(candidates=cands, reports=list(self.reports))

    def complete(self, studies, deadline) -> None:
        pass


def _copy(s: Study, source: str) -> Study:
    return Study(uid=s.uid, started=s.started, modalities=s.modalities, accession=s.accession, sources=[source])


def federation(*fakes: FakeArchive, **kw) -> Federation:
    by_id = {f.config.id: f for f in fakes}
    return Federation([f.config for f in fakes], adapter_factory=lambda cfg, client, ctx, every: by_id[cfg.id], **kw)


def test_studies_from_several_archives_merge_by_uid_newest_first(jane, ehr_token):
    a = FakeArchive(config("a"), [study("1.1", "2024-03-01T10:00", modalities=("CT",)), study("2.2", "2020-01-01")])
    b = FakeArchive(config("b"), [study("1.1", "2024-03-01T10:00", modalities=("PT",)), study("3.3", "2022-06-01")])

    result = federation(a, b).search(jane, CTX, ehr_token)

    assert [s.uid for s in result.studies] == ["1.1", "3.3", "2.2"]
    merged = result.studies[0]
    assert (merged.sources, merged.modalities) == (["a", "b"], ("CT", "PT"))
    assert merged.matched_ids == {"a": Identifier(MRN_SYSTEM, "MRN-1001"), "b": Identifier(MRN_SYSTEM, "MRN-1001")}
    assert [(s.id, s.status, s.count) for s in result.archives] == [("a", "ok", 2), ("b", "ok", 2)]


def test_merge_studies_puts_undated_last_and_leaves_its_inputs_alone():
    first = study("1.1", "2024-01-01", sources=["a"])
    again = study("1.1", "2024-01-01", sources=["b"], description="CT")
    inputs = [study("0.0", sources=["a"]), first, again, study("2.2", "2024-02-01T00:00+01:00", sources=["b"])]

    merged = merge_studies(inputs)

    assert [s.uid for s in merged] == ["2.2", "1.1", "0.0"]
    assert (merged[1].sources, merged[1].description) == (["a", "b"], "CT")
    assert first.sources == ["a"]


def test_archives_are_searched_concurrently(jane, ehr_token):
    fakes = [FakeArchive(config(n), [study(f"{n}.1")], delay=0.4) for n in ("a", "b", "c")]
    started = time.monotonic()

    federation(*fakes).search(jane, CTX, ehr_token)

    assert time.monotonic() - started < 1.0


def test_a_slow_archive_does_not_delay_the_others_and_times_out(jane, ehr_token):
    fast = FakeArchive(config("fast"), [study("1.1")])
    slow = FakeArchive(config("slow", timeout_s=0.3), [study("2.2")], delay=3)
    started = time.monotonic()

    stream = federation(fast, slow).iter_search(jane, CTX, ehr_token)
    first_status, first_studies = next(stream)
    first_after = time.monotonic() - started
    last_status, last_studies = next(stream)

    assert (first_status.id, [s.uid for s in first_studies], first_after < 0.25) == ("fast", ["1.1"], True)
    assert (last_status.id, last_status.status, last_status.reason, last_studies) == (
        "slow", "timeout", "no answer within 0.3 s", [])
    assert time.monotonic() - started < 1.5


def test_the_overall_deadline_bounds_every_archive(jane, ehr_token):
    slow = FakeArchive(config("slow", timeout_s=30), delay=3)

    (status,) = federation(slow, deadline_s=0.3).search(jane, CTX, ehr_token).archives

    assert (status.status, status.error, status.reason) == ("timeout", "archive-timeout", "no answer within 0.3 s")


@pytest.mark.parametrize(("error", "reason", "code"), [
    (ArchiveUnavailable("HTTP 503 (Retry-After 30 s)"), "HTTP 503 (Retry-After 30 s)", "archive-unavailable"),
    (KeyError("resourceType"), "unexpected failure (KeyError)", "archive-error"),
], ids=["archive-error", "adapter-bug"])
def test_a_failing_archive_does_not_break_the_others(jane, ehr_token, error, reason, code):
    good = FakeArchive(config("good"), [study("1.1")])
    bad = FakeArchive(config("bad"), error=error)

    result = federation(good, bad).search(jane, CTX, ehr_token)

    assert [s.uid for s in result.studies] == ["1.1"]
    assert [(s.id, s.status, s.reason, s.error) for s in result.archives] == [
        ("good", "ok", None, None), ("bad", "error", reason, code)]


def test_an_unlinked_archive_is_never_searched(jane, ehr_token):
    unlinked = FakeArchive(config("far", identifier_system="urn:oid:7.7"), [study("1.1")])

    (status,) = federation(unlinked).search(jane, CTX, ehr_token).archives

    assert (status.status, status.reason, unlinked.calls) == ("not-linked", "not linked (no identifier in domain "
                                                                            "urn:oid:7.7)", 0)


def test_status_json_has_the_fields_the_timeline_streams(jane, ehr_token):
    (status,) = federation(FakeArchive(config("a"), [study("1.1")])).search(jane, CTX, ehr_token).archives

    data = status.to_json()
    assert {k: data[k] for k in ("id", "name", "status", "count", "dropped", "reason")} == {
        "id": "a", "name": "A", "status": "ok", "count": 1, "dropped": 0, "reason": None}
    assert isinstance(data["ms"], int)


def test_the_ehr_token_is_read_once_in_the_callers_thread_and_only_when_needed(jane, ehr_token):
    ehr = FakeArchive(ArchiveConfig(id="ehr", name="EHR", kind="fhir", base_url="ehr", auth=AuthConfig(kind="ehr")))
    threads = []
    ehr_token.access_token = lambda: threads.append(threading.current_thread()) or "t"  # type: ignore[method-assign]

    federation(FakeArchive(config("a"))).search(jane, CTX, ehr_token)
    federation(ehr, FakeArchive(config("a"))).search(jane, CTX, ehr_token)

    assert threads == [threading.current_thread()]


def test_reports_link_across_archives_by_accession(jane, ehr_token):
    report = LinkedReport(report=Report(id="dr-1", status="final", source="ehr"),
                          subject=Subject(reference="Patient/pat-1"), accession="ACC-9")
    ehr = FakeArchive(ArchiveConfig(id="ehr", name="EHR", kind="fhir", base_url="ehr", auth=AuthConfig(kind="ehr")),
                      reports=[report])
    pacs = FakeArchive(config("pacs"), [study("1.1", accession="ACC-9")])

    result = federation(ehr, pacs).search(jane, CTX, ehr_token)

    assert [r.id for r in result.studies[0].reports] == ["dr-1"]


# --- The per-session cache ------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_reload_in_the_same_session_is_served_from_the_cache(jane, ehr_token):
    a = FakeArchive(config("a"), [study("1.1")])
    fed = federation(a, cache_ttl_s=60)

    fed.search(jane, CTX, ehr_token, session_id="s1")
    again = fed.search(jane, CTX, ehr_token, session_id="s1")

    assert (a.calls, [s.uid for s in again.studies]) == (1, ["1.1"])


def test_the_cache_is_per_session_and_expires(jane, ehr_token):
    a = FakeArchive(config("a"), [study("1.1")])
    clock = Clock()
    fed = federation(a, cache_ttl_s=60, clock=clock)

    fed.search(jane, CTX, ehr_token, session_id="s1")
    fed.search(jane, CTX, ehr_token, session_id="s2")
    clock.now += 61
    fed.search(jane, CTX, ehr_token, session_id="s1")

    assert a.calls == 3


def test_a_failed_archive_is_retried_on_reload_while_the_others_come_from_the_cache(jane, ehr_token):
    good = FakeArchive(config("good"), [study("1.1")])
    bad = FakeArchive(config("bad"), error=ArchiveUnavailable("HTTP 500"))
    fed = federation(good, bad, cache_ttl_s=60)

    fed.search(jane, CTX, ehr_token, session_id="s1")
    fed.search(jane, CTX, ehr_token, session_id="s1")

    assert (good.calls, bad.calls) == (1, 2)


def test_cached_studies_are_copies(jane, ehr_token):
    fed = federation(FakeArchive(config("a"), [study("1.1")]), cache_ttl_s=60)

    fed.search(jane, CTX, ehr_token, session_id="s1").studies[0].badges.append("scribbled")
    again = fed.search(jane, CTX, ehr_token, session_id="s1")

    assert again.studies[0].badges == []


def test_a_second_process_reads_the_study_cache_from_the_shared_store(jane, ehr_token, tmp_path):
    from app.session_store import SQLiteStore

    shared = SQLiteStore(tmp_path / "shared.db")
    a = FakeArchive(config("a"), [study("1.1", "2024-05-01T10:00:00", modalities=("CT",), accession="ACC-1")])
    here = federation(a, cache_ttl_s=60, shared_cache=shared)
    there = federation(a, cache_ttl_s=60, shared_cache=shared)  # another worker, same store

    first = here.search(jane, CTX, ehr_token, session_id="s1")
    again = there.search(jane, CTX, ehr_token, session_id="s1")

    assert a.calls == 1
    assert again.studies == first.studies
    assert again.archives == first.archives


def test_the_shared_study_cache_names_no_session_id(jane, ehr_token, tmp_path):
    import sqlite3

    from app.session_store import SQLiteStore

    fed = federation(FakeArchive(config("a"), [study("1.1")]), cache_ttl_s=60,
                     shared_cache=SQLiteStore(tmp_path / "shared.db"))
    fed.search(jane, CTX, ehr_token, session_id="secret-session-id")
    keys = [k for (k,) in sqlite3.connect(tmp_path / "shared.db").execute("SELECT k FROM kv")]
    assert keys and not any("secret-session-id" in k for k in keys)


# --- Flask wiring ------------------------------------------------------------------------------------


def test_init_app_loads_the_archives_file_with_substitutions():
    app = Flask(__name__)
    app.config.update(ARCHIVES_FILE=str(DEMO), ARCHIVE_SUBSTITUTIONS={"sandbox": "http://127.0.0.1:5000"},
                      STUDY_CACHE_TTL_S=5, FEDERATION_DEADLINE_S=12)

    federation_module.init_app(app)

    fed = app.extensions["federation"]
    assert [a.id for a in fed.archives] == ["ehr", "outside", "pacs"]
    assert (fed.cache_ttl_s, fed.deadline_s) == (5.0, 12.0)
    with app.app_context():
        assert federation_module.federation() is fed


def test_init_app_prefers_already_parsed_archives():
    app = Flask(__name__)
    app.config.update(ARCHIVES=(config("a"),), ARCHIVES_FILE="/nonexistent.toml")

    federation_module.init_app(app)

    assert [a.id for a in app.extensions["federation"].archives] == ["a"]


def test_init_app_refuses_to_start_with_a_bad_archives_file(tmp_path):
    path = tmp_path / "archives.toml"
    path.write_text('[[archive]]\nid = "pacs"\nname = "P"\nkind = "dicomweb"\nbase_url = "http://p"\n'
                    'identifier_system = "urn:x"\ntimout_s = 3\n')
    app = Flask(__name__)
    app.config.update(ARCHIVES_FILE=str(path))

    with pytest.raises(ConfigError, match=r'^archives\.toml: archive "pacs": unknown key "timout_s" '
                                          r'\(did you mean "timeout_s"\?\)$'):
        federation_module.init_app(app)


# --- End to end: the EHR over HTTP and a real Orthanc ------------------------------------------------------


@pytest.mark.orthanc
def test_ehr_and_pacs_studies_merge_and_no_foreign_study_appears(orthanc, httpserver, jane, ehr_token):
    ct = SEED["jane_ct"]
    httpserver.expect_request("/fhir/ImagingStudy").respond_with_json({"resourceType": "Bundle", "entry": [
        {"resource": {"resourceType": "ImagingStudy", "id": "is-1", "status": "available",
                      "subject": {"reference": "Patient/pat-1"}, "started": "2024-03-01T10:15:00Z",
                      "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{ct.uid}"}]}},
        {"resource": {"resourceType": "ImagingStudy", "id": "is-x", "status": "available",
                      "subject": {"reference": "Patient/pat-2"},
                      "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:9.9.9"}]}}]})
    httpserver.expect_request("/fhir/DiagnosticReport").respond_with_json({"resourceType": "Bundle", "entry": [
        {"resource": {"resourceType": "DiagnosticReport", "id": "dr-1", "status": "final", "code": {"text": "CT"},
                      "subject": {"reference": "Patient/pat-1"},
                      "identifier": [{"type": {"coding": [{"code": "ACSN"}]}, "value": "ACC-MR-1"}]}}]})
    ehr = ArchiveConfig(id="ehr", name="EHR", kind="fhir", base_url="ehr", auth=AuthConfig(kind="ehr"))
    pacs = config("pacs", base_url=orthanc, issuer_of_patient_id=ISSUER)
    ctx = LaunchContext(iss=httpserver.url_for("/fhir"), patient_id="pat-1",
                        granted_scopes=frozenset({"patient/ImagingStudy.rs", "patient/DiagnosticReport.rs"}))

    result = Federation([ehr, pacs]).search(jane, ctx, ehr_token)

    assert [(s.uid, s.sources) for s in result.studies] == [
        (ct.uid, ["ehr", "pacs"]), (SEED["jane_mr"].uid, ["pacs"])]
    assert [r.id for r in result.studies[1].reports] == ["dr-1"]  # linked by accession across archives
    assert [(s.id, s.status, s.count, s.dropped) for s in result.archives] == [
        ("ehr", "ok", 1, 1), ("pacs", "ok", 2, 1)]
    assert sorted(r.path for r, _ in httpserver.log) == ["/fhir/DiagnosticReport", "/fhir/ImagingStudy"]


def test_streaming_can_stop_early_without_waiting_for_slow_archives(jane, ehr_token):
    fast = FakeArchive(config("fast"), [study("1.1")])
    slow = FakeArchive(config("slow"), delay=2)
    started = time.monotonic()

    stream = federation(fast, slow).iter_search(jane, CTX, ehr_token)
    next(stream)
    stream.close()

    assert time.monotonic() - started < 0.5


def test_link_attaches_a_report_by_accession_to_a_study_from_another_archive_and_says_which():
    pacs_only = study("9.9", "2024-05-01", accession="ACC-9", sources=["pacs"])
    other = study("8.8", "2024-04-01", accession="ACC-8", sources=["pacs"])
    report = LinkedReport(report=Report(id="dr-9", status="final", source="ehr"), subject=Subject(),
                          accession="ACC-9")

    assert link([pacs_only, other], [report], []) == {"9.9"}
    assert [r.id for r in pacs_only.reports] == ["dr-9"]
    assert other.reports == []


def test_link_is_idempotent():
    target = study("9.9", "2024-05-01", accession="ACC-9")
    report = LinkedReport(report=Report(id="dr-9", status="final", source="ehr"), subject=Subject(),
                          study_uids={"9.9"})
    link([target], [report], [])

    assert link([target], [report], []) == set()
    assert len(target.reports) == 1
