"""Searches started with the page: the stream replays what a run found and waits for the rest."""

from __future__ import annotations

import json
import shutil
import threading
import time

import pytest

from app.errors import AppError, SessionExpired
from app.federation import ArchiveOutcome
from app.models import ArchiveStatus
from app.outcome_json import outcome_to_json
from app.prefetch import Prefetcher, part_key, run_key
from app.session_store import RedisStore, SQLiteStore
from tests.conftest import need
from tests.processes import redis_server


def status(aid: str) -> ArchiveStatus:
    return ArchiveStatus(aid, aid.upper(), "ok")


def test_a_run_replays_earlier_events_then_waits_for_later_ones():
    gate = threading.Event()

    def search():
        yield ArchiveOutcome(status("ehr"))
        gate.wait(5)
        yield ArchiveOutcome(status("pacs"))

    run = Prefetcher().start("s:p", search)
    feed = run.feed()
    assert next(feed).status.id == "ehr"
    gate.set()
    assert [event.status.id for event in feed] == ["pacs"]


def counting(events=("ehr", "pacs"), gate: threading.Event | None = None):
    """A search that yields one outcome per archive id (after `gate`), and counts its runs."""
    calls = []

    def search():
        calls.append(1)
        for aid in events:
            if gate is not None:
                gate.wait(5)
            yield ArchiveOutcome(status(aid))
    return search, calls


def test_a_second_reader_joins_the_running_search():
    gate = threading.Event()
    search, calls = counting(gate=gate)
    prefetcher = Prefetcher()
    first = prefetcher.begin("s:p", search)
    second = prefetcher.begin("s:p", search)
    gate.set()
    assert first is second
    assert [e.status.id for e in prefetcher.feed("s:p", search)] == ["ehr", "pacs"]
    assert len(calls) == 1


def test_a_finished_run_is_replayed_for_a_moment_then_searched_afresh():
    now = [0.0]
    search, calls = counting()
    prefetcher = Prefetcher(clock=lambda: now[0], replay_s=10)
    assert [e.status.id for e in prefetcher.feed("s:p", search)] == ["ehr", "pacs"]
    now[0] = 5
    assert [e.status.id for e in prefetcher.feed("s:p", search)] == ["ehr", "pacs"]
    assert len(calls) == 1
    now[0] = 16
    assert [e.status.id for e in prefetcher.feed("s:p", search)] == ["ehr", "pacs"]
    assert len(calls) == 2


def test_an_expired_run_is_not_joined():
    now = [0.0]
    gate = threading.Event()
    search, calls = counting(gate=gate)
    prefetcher = Prefetcher(ttl_s=10, clock=lambda: now[0])
    prefetcher.begin("s:p", search)
    now[0] = 11
    prefetcher.begin("s:p", search)
    gate.set()
    assert len(calls) == 2


@pytest.fixture(params=["sqlite", "redis"])
def shared_store(request, tmp_path):
    """One store two Prefetchers share, as two processes would (SQLite file or real Redis)."""
    if request.param == "sqlite":
        yield SQLiteStore(tmp_path / "shared.db")
        return
    need("redis-server", shutil.which("redis-server") is not None, "apt-get install redis-server")
    with redis_server(tmp_path) as redis:
        yield RedisStore(redis.url)


def test_a_reader_in_another_process_reads_the_running_search_instead_of_searching(shared_store):
    gate = threading.Event()
    search, calls = counting(gate=gate)
    here, there = Prefetcher(store=shared_store, poll_s=0.02), Prefetcher(store=shared_store, poll_s=0.02)
    assert here.begin("s:p", search) is not None
    assert there.begin("s:p", search) is None  # the other process's run
    gate.set()
    assert [e.status.id for e in there.feed("s:p", search)] == ["ehr", "pacs"]
    assert len(calls) == 1


def test_a_reader_takes_the_search_over_when_its_owner_stops_renewing(shared_store):
    # An owner that died after one archive answered: its lease lapses, its record stays unfinished.
    from app.locks import lock_name

    shared_store.acquire(lock_name("search", "s:p"), "dead-owner", 0.3)
    shared_store.put(part_key("s:p", "dead-owner", 0), outcome_to_json(ArchiveOutcome(status("ehr"))), 60)
    shared_store.put(run_key("s:p"), {"run": "dead-owner", "parts": 1, "finished": False}, 60)
    search, calls = counting(events=("ehr", "pacs", "outside"))
    reader = Prefetcher(store=shared_store, poll_s=0.02)
    assert [e.status.id for e in reader.feed("s:p", search)] == ["ehr", "pacs", "outside"]
    assert len(calls) == 1


def test_a_reader_elsewhere_gets_the_outcomes_of_the_owner_that_took_over_not_the_dead_ones_count(shared_store):
    """The dead owner had published ehr; the new owner publishes pacs first, then ehr: nothing is skipped."""
    from app.locks import lock_name

    shared_store.acquire(lock_name("search", "s:p"), "dead-owner", 0.3)
    shared_store.put(part_key("s:p", "dead-owner", 0), outcome_to_json(ArchiveOutcome(status("ehr"))), 60)
    shared_store.put(run_key("s:p"), {"run": "dead-owner", "parts": 1, "finished": False}, 60)
    gate = threading.Event()
    search, calls = counting(events=("pacs", "ehr", "outside"), gate=gate)
    reader = Prefetcher(store=shared_store, poll_s=0.02)
    feed = reader.feed("s:p", search)
    assert next(feed).status.id == "ehr"  # the dead owner's outcome, read from the store
    owner = Prefetcher(store=shared_store, poll_s=0.02, lease_s=5)
    time.sleep(0.35)  # the dead owner's lease lapses
    assert owner.begin("s:p", search) is not None  # another process takes the search over first
    gate.set()
    assert [e.status.id for e in feed] == ["pacs", "outside"]  # ehr once, nothing lost
    assert len(calls) == 1


def test_a_published_outcome_missing_from_the_store_fails_the_reader_in_words(shared_store):
    from app.locks import lock_name

    shared_store.acquire(lock_name("search", "s:p"), "owner", 30)
    shared_store.put(part_key("s:p", "owner", 0), outcome_to_json(ArchiveOutcome(status("ehr"))), 60)
    shared_store.put(run_key("s:p"), {"run": "owner", "parts": 2, "finished": True}, 60)  # part 1 is gone
    feed = Prefetcher(store=shared_store, poll_s=0.02).feed("s:p", counting()[0], wait_s=5)
    assert next(feed).status.id == "ehr"
    with pytest.raises(AppError, match="reload to try again"):
        next(feed)


def test_each_outcome_is_written_to_the_store_once(tmp_path):
    """A long history's answer is not re-encrypted and re-sent with every later archive's (real Redis)."""
    import redis

    from app.models import Study

    need("redis-server", shutil.which("redis-server") is not None, "apt-get install redis-server")
    big = [Study(uid=f"2.25.{n}", modalities=("CT",), description="CT CHEST", sources=["pacs"]) for n in range(2000)]
    outcomes = [ArchiveOutcome(ArchiveStatus(aid, aid, "ok", count=len(big)), list(big)) for aid in ("a", "b", "c")]
    one = len(json.dumps(outcome_to_json(outcomes[0])))
    with redis_server(tmp_path) as server:
        client = redis.Redis.from_url(server.url)
        before = client.info("stats")["total_net_input_bytes"]
        store = RedisStore(server.url)
        run = Prefetcher(store=store).begin("s:p", lambda: iter(outcomes))
        assert [e.status.id for e in run.feed()] == ["a", "b", "c"]
        give_up = time.monotonic() + 10
        while not (store.get(run_key("s:p")) or {}).get("finished"):  # the final header follows the last event
            assert time.monotonic() < give_up
            time.sleep(0.01)
        written = client.info("stats")["total_net_input_bytes"] - before
    assert 3 * one <= written < 4 * one, (written, one)  # each of three once (it was 1 + 2 + 3 + 3 = 9 times)


def test_a_failed_search_reaches_the_reader_as_its_error():
    def search():
        yield ArchiveOutcome(status("ehr"))
        raise SessionExpired("Relaunch from the chart.")

    run = Prefetcher().start("s:p", search)
    feed = run.feed()
    assert next(feed).status.id == "ehr"
    with pytest.raises(SessionExpired, match="Relaunch from the chart"):
        next(feed)


def test_an_unexpected_failure_still_releases_the_reader():
    def search():
        raise RuntimeError("bug")
        yield  # pragma: no cover

    run = Prefetcher().start("s:p", search)
    with pytest.raises(AppError, match="reload to try again"):
        list(run.feed())
