"""A session-store outage: a readable 503 (page, JSON, stream event), /ready says so, and service resumes by itself."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator

import pytest
import requests

from sandbox.standalone import serve_sandbox
from tests.conftest import need
from tests.processes import RedisServer, fernet_key_file, free_port, serve_process

MESSAGE = "The session service is unavailable; retry in a moment."


@pytest.fixture
def outage(tmp_path) -> Iterator[tuple[str, str, RedisServer, object]]:
    need("redis-server", shutil.which("redis-server") is not None, "apt-get install redis-server")
    redis = RedisServer(tmp_path).start()
    port = free_port()
    app_url = f"http://127.0.0.1:{port}"
    try:
        with serve_sandbox(app_url, config_dir=tmp_path / "config") as (sandbox_url, _), \
                serve_process(port, tmp_path / "config", tmp_path, workers=1, threads=4,
                              env={"IMAGING_SESSION_STORE": redis.url,
                                   "IMAGING_SESSION_KEY_FILE": str(fernet_key_file(tmp_path / "k"))}):
            yield app_url, sandbox_url, redis, tmp_path / f"serve-{port}.log"
    finally:
        redis.stop()


def test_a_store_outage_is_a_readable_503_and_service_resumes_when_it_returns(outage):
    app_url, sandbox_url, redis, log = outage
    browser = requests.Session()
    assert browser.get(f"{sandbox_url}/launch", params={"patient": "pat-ben"}, timeout=30).status_code == 200

    redis.stop()
    page = browser.get(f"{app_url}/timeline", timeout=30)
    assert page.status_code == 503
    assert page.headers["Retry-After"] == "5"
    assert MESSAGE in page.text
    assert "Traceback" not in page.text
    api = browser.get(f"{app_url}/api/studies", timeout=30)
    assert api.status_code == 503
    assert api.json()["error"] == "store-unavailable"
    assert api.json()["message"] == MESSAGE
    stream = browser.get(f"{app_url}/api/studies/stream", timeout=30).text
    fatal = json.loads(re.search(r"^event: fatal\ndata: (.+)$", stream, re.M).group(1))
    assert fatal["status"] == 503 and fatal["message"] == MESSAGE
    relaunch = requests.get(f"{sandbox_url}/launch", params={"patient": "pat-ben"}, timeout=30)
    assert relaunch.status_code == 503 and MESSAGE in relaunch.text
    ready = requests.get(f"{app_url}/ready", timeout=30)
    assert ready.status_code == 503
    assert ready.json()["status"] == "unavailable"
    assert requests.get(f"{app_url}/health", timeout=30).status_code == 200  # alive: do not restart it

    redis.start()  # same port, empty: sessions of before are gone, the service is back
    for _ in range(50):
        if requests.get(f"{app_url}/ready", timeout=30).status_code == 200:
            break
        time.sleep(0.1)
    assert requests.get(f"{app_url}/ready", timeout=30).json() == {"status": "ok"}
    again = requests.Session()
    resp = again.get(f"{sandbox_url}/launch", params={"patient": "pat-ben"}, timeout=30)
    assert resp.status_code == 200 and resp.url == f"{app_url}/timeline"
    assert again.get(f"{app_url}/api/studies", timeout=30).status_code == 200
    assert "Traceback" not in log.read_text()
