"""/metrics under real gunicorn workers: every worker's observations add up, whichever worker answers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from flask import Flask
from prometheus_client.mmap_dict import MmapedDict

from tests.gunicorn_app import running_gunicorn

BEACONS = 40


def count(text: str, name: str) -> float:
    line = next(ln for ln in text.splitlines() if ln.startswith(f"{name}_count"))
    return float(line.rsplit(" ", 1)[1])


def first_study_observations(path: Path) -> float:
    """How many first-study observations one worker's file holds (the sum of its bucket increments)."""
    total = 0.0
    for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
        if '"imaging_timeline_time_to_first_study_seconds_bucket"' in key:
            total += value
    return total


def test_metrics_add_up_across_gunicorn_workers(tmp_path):
    # One thread per worker: a busy worker accepts no connection, so concurrent beacons reach both.
    with running_gunicorn(tmp_path, {"IMAGING_AUDIT_STORE": f"sqlite:///{tmp_path / 'audit.db'}"},
                          threads=1) as server:
        browser = server.launch("pat-amy")

        def beacon(n: int) -> int:
            # A new connection per beacon (Connection: close), several at once, so both workers take some.
            return requests.post(f"{server.url}/api/timings", json={"first_study_ms": 100 + n, "complete_ms": 900},
                                 cookies=browser.cookies, headers={"Connection": "close"}, timeout=30).status_code

        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(beacon, range(BEACONS))) == {200}
        instance = Path(Flask("app", instance_relative_config=True).instance_path)
        folder = instance / "metrics" / f"gunicorn-{server.process.pid}"
        per_worker = {p.name: first_study_observations(p) for p in folder.glob("histogram_*.db")}
        assert sum(per_worker.values()) == BEACONS
        assert sum(1 for v in per_worker.values() if v > 0) >= 2, per_worker
        answers = [requests.get(f"{server.url}/metrics", headers={"Connection": "close"}, timeout=30).text
                   for _ in range(6)]
    assert {count(a, "imaging_timeline_time_to_first_study_seconds") for a in answers} == {float(BEACONS)}
    assert {count(a, "imaging_timeline_time_to_complete_seconds") for a in answers} == {float(BEACONS)}
