"""Searches started with the page: the stream replays what a run found and waits for the rest."""

from __future__ import annotations

import shutil
import threading

import pytest

from app.errors import AppError, SessionExpired
from app.federation import ArchiveOutcome
from app.models import ArchiveStatus
from app.outcome_json import outcome_to_json
from app.prefetch import Prefetcher
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
    from app.locks import hashed_key, lock_name

    shared_store.acquire(lock_name("search", "s:p"), "dead-owner", 0.3)
    shared_store.put(hashed_key("search", "s:p"), {"outcomes": [outcome_to_json(ArchiveOutcome(status("ehr")))],
                                                   "finished": False}, 60)
    search, calls = counting(events=("ehr", "pacs", "outside"))
    reader = Prefetcher(store=shared_store, poll_s=0.02)
    assert [e.status.id for e in reader.feed("s:p", search)] == ["ehr", "pacs", "outside"]
    assert len(calls) == 1


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
