"""Searches started with the page: the stream replays what a run found and waits for the rest."""

from __future__ import annotations

import threading

import pytest

from app.errors import AppError, SessionExpired
from app.federation import ArchiveOutcome
from app.models import ArchiveStatus
from app.prefetch import Prefetcher


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


def test_a_run_is_taken_once():
    prefetcher = Prefetcher()
    prefetcher.start("s:p", lambda: iter(()))
    assert prefetcher.take("s:p") is not None
    assert prefetcher.take("s:p") is None


def test_an_expired_run_is_not_handed_out():
    now = [0.0]
    prefetcher = Prefetcher(ttl_s=10, clock=lambda: now[0])
    prefetcher.start("s:p", lambda: iter(()))
    now[0] = 11
    assert prefetcher.take("s:p") is None


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
