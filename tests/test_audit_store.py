"""The audit stores: SQLite (WAL, embedded default) and PostgreSQL (real server), same behaviour."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone

import pytest

from app.audit_event import AuditEvent
from app.audit_store import PostgresAuditStore, SQLiteAuditStore, open_audit_store
from app.errors import ConfigError

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def event(patient: str = "pat-1", minutes: int = 0, **fields) -> AuditEvent:
    return AuditEvent(**{"action": "view-timeline", "patient": patient, "user": "Practitioner/dr-1",
                         "recorded": T0 + timedelta(minutes=minutes), **fields})


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        return SQLiteAuditStore(tmp_path / "audit.db")
    return PostgresAuditStore(request.getfixturevalue("postgres_url"))


def test_appended_events_are_read_back_for_their_patient_only(store):
    store.append([event(studies=("1.2.3",), archive="pacs", action="list-studies"), event("pat-2")])
    found = store.query("pat-1")
    assert [(e.action, e.patient, e.studies, e.archive) for e in found] == [("list-studies", "pat-1", ("1.2.3",),
                                                                             "pacs")]
    assert found[0].id is not None


def test_events_come_back_oldest_first(store):
    store.append([event(minutes=5, action="thumbnail"), event(minutes=1, action="list-studies")])
    assert [e.action for e in store.query("pat-1")] == ["list-studies", "thumbnail"]


def test_since_keeps_events_at_or_after_the_moment(store):
    store.append([event(minutes=0), event(minutes=10, action="open-viewer"), event(minutes=20, action="thumbnail")])
    assert [e.action for e in store.query("pat-1", since=T0 + timedelta(minutes=10))] == ["open-viewer", "thumbnail"]


def test_since_compares_instants_across_time_zones(store):
    store.append([event(minutes=0), event(minutes=30, action="open-viewer")])
    plus_two = T0.astimezone(timezone(timedelta(hours=2))) + timedelta(minutes=15)
    assert [e.action for e in store.query("pat-1", since=plus_two)] == ["open-viewer"]


def test_every_field_survives_the_round_trip(store):
    original = event(action="open-viewer", client_id="imaging-timeline", address="10.0.0.7", iss="https://ehr/fhir",
                     studies=("1.2.3", "1.2.4"), reports=("rep-1",), archive="pacs", outcome="minor-failure")
    store.append([original])
    (back,) = store.query("pat-1")
    assert back.to_json() == {**original.to_json(), "id": back.id}


def test_an_event_is_queued_for_forwarding_only_when_asked(store):
    store.append([event()], forward=False)
    store.append([event(action="thumbnail")], forward=True)
    assert store.outbox_size() == 1
    (pending,) = store.claim(now=1000.0, lease_s=30, limit=10)
    assert pending.event.action == "thumbnail" and pending.attempts == 0


def test_a_claimed_event_is_hidden_until_its_lease_ends(store):
    store.append([event()], forward=True)
    assert len(store.claim(now=1000.0, lease_s=30, limit=10)) == 1
    assert store.claim(now=1010.0, lease_s=30, limit=10) == []
    assert len(store.claim(now=1031.0, lease_s=30, limit=10)) == 1


def test_a_forwarded_event_leaves_the_outbox_but_stays_in_the_trail(store):
    store.append([event()], forward=True)
    (pending,) = store.claim(now=1000.0, lease_s=30, limit=10)
    store.forwarded(pending.event.id)
    assert store.outbox_size() == 0
    assert len(store.query("pat-1")) == 1


def test_a_failed_forward_is_retried_later_with_its_attempt_counted(store):
    store.append([event()], forward=True)
    (pending,) = store.claim(now=1000.0, lease_s=30, limit=10)
    store.retry_at(pending.event.id, 2000.0)
    assert store.claim(now=1999.0, lease_s=30, limit=10) == []
    (again,) = store.claim(now=2000.0, lease_s=30, limit=10)
    assert again.attempts == 1


def test_concurrent_claimers_never_get_the_same_event(store, request, tmp_path):
    store.append([event(minutes=n) for n in range(40)], forward=True)
    # A second store object on the same database: another worker process's connection.
    other = (SQLiteAuditStore(tmp_path / "audit.db") if isinstance(store, SQLiteAuditStore)
             else PostgresAuditStore(store.url))
    with ThreadPoolExecutor(8) as pool:
        batches = list(pool.map(lambda s: s.claim(now=1000.0, lease_s=60, limit=3), [store, other] * 10))
    ids = [p.event.id for batch in batches for p in batch]
    assert len(ids) == 40 and len(set(ids)) == 40


def test_sqlite_store_runs_in_wal_mode(tmp_path):
    SQLiteAuditStore(tmp_path / "audit.db")
    with sqlite3.connect(tmp_path / "audit.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_default_store_is_an_sqlite_file_in_the_instance_folder(tmp_path):
    store = open_audit_store(None, str(tmp_path / "instance"))
    assert isinstance(store, SQLiteAuditStore)
    assert store.path == str(tmp_path / "instance" / "audit.sqlite3")


def test_postgresql_url_opens_the_postgresql_store(postgres_url):
    assert isinstance(open_audit_store(postgres_url, "/nonexistent"), PostgresAuditStore)


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "mysql://x", "audit.db"])
def test_other_store_urls_are_refused_with_what_to_use(url):
    with pytest.raises(ConfigError, match=r"IMAGING_AUDIT_STORE .* must start with sqlite:/// or postgresql://"):
        open_audit_store(url, "/tmp")


def test_unreachable_postgresql_says_so_without_the_password():
    with pytest.raises(ConfigError, match=r"postgresql://audit:\*\*\*@127.0.0.1:1/x \(IMAGING_AUDIT_STORE\) "
                                          r"cannot be reached") as caught:
        PostgresAuditStore("postgresql://audit:s3cret@127.0.0.1:1/x", connect_timeout_s=2)
    assert "s3cret" not in caught.value.message


@pytest.mark.parametrize(("fields", "message"), [
    ({"action": "delete-everything"}, 'Audit action "delete-everything" must be one of view-timeline, list-studies'),
    ({"outcome": "meh"}, 'Audit outcome "meh" must be one of success'),
    ({"patient": ""}, "An audit event must name the patient."),
])
def test_an_event_refuses_unknown_values(fields, message):
    with pytest.raises(ValueError, match=message):
        event(**fields)


def test_a_key_is_used_once_only(store):
    assert store.first_use("cds-jti:ehr:abc", until=4_000_000_000.0) is True
    assert store.first_use("cds-jti:ehr:abc", until=4_000_000_000.0) is False
    assert store.first_use("cds-jti:ehr:other", until=4_000_000_000.0) is True


def test_a_used_key_is_forgotten_after_it_expires(store):
    assert store.first_use("k", until=1.0) is True  # long expired: pruned at the next use
    assert store.first_use("k", until=4_000_000_000.0) is True


def test_racing_first_uses_have_exactly_one_winner(store, tmp_path):
    other = (SQLiteAuditStore(tmp_path / "audit.db") if isinstance(store, SQLiteAuditStore)
             else PostgresAuditStore(store.url))
    with ThreadPoolExecutor(8) as pool:
        wins = list(pool.map(lambda s: s.first_use("jti-1", 4_000_000_000.0), [store, other] * 8))
    assert wins.count(True) == 1
