"""Audit durability under real gunicorn workers: an answer the browser received always has its event stored."""

from __future__ import annotations

import pytest

from app.audit_store import PostgresAuditStore, SQLiteAuditStore
from tests.gunicorn_app import running_gunicorn


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'audit.db'}"
    return request.getfixturevalue("postgres_url")


def open_store(url: str):
    return SQLiteAuditStore(url.removeprefix("sqlite:///")) if url.startswith("sqlite") else PostgresAuditStore(url)


def test_a_worker_killed_right_after_answering_keeps_the_event(tmp_path, store_url):
    with running_gunicorn(tmp_path, {"IMAGING_AUDIT_STORE": store_url}) as server:
        browser = server.launch("pat-ben")  # ends on /timeline: its view-timeline event was committed first
        server.kill_workers()
        assert [e.action for e in open_store(store_url).query("pat-ben")] == ["view-timeline"]

        # The master replaces the killed workers; the session (shared store and key) carries on.
        browser.close()  # the kept-alive connection was to a killed worker
        resp = browser.get(f"{server.url}/api/studies", timeout=60)
        assert resp.status_code == 200
        killed = server.kill_workers()
        assert killed
        events = open_store(store_url).query("pat-ben")
        listed = {uid for e in events if e.action == "list-studies" for uid in e.studies}
        assert listed == {s["uid"] for s in resp.json()["studies"]}
