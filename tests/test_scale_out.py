"""Scale-out on one Redis: two `serve` processes (real gunicorn workers) serve one session interchangeably.

The sandbox runs in this test process (its own server thread), so tests can slow its archives
and count the requests they receive; the apps are real `imaging-timeline serve` processes.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from sandbox.standalone import serve_sandbox
from tests.conftest import need
from tests.processes import fernet_key_file, free_port, redis_server, rsa_key_file, serve_process


@dataclass
class Cluster:
    a: str  # the process the sandbox launches (2 workers)
    b: str  # the other process (1 worker)
    a_pid: int
    sandbox_url: str
    sandbox: object
    hits: Counter

    @property
    def runtime(self):
        return self.sandbox.extensions["sandbox"]

    def launch(self, patient: str = "pat-ben") -> requests.Session:
        browser = requests.Session()
        resp = browser.get(f"{self.sandbox_url}/launch", params={"patient": patient}, timeout=30)
        assert resp.status_code == 200 and resp.url == f"{self.a}/timeline", resp.text[:300]
        return browser


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    need("redis-server", shutil.which("redis-server") is not None, "apt-get install redis-server")
    workdir = tmp_path_factory.mktemp("scale-out")
    port_a, port_b = free_port(), free_port()
    a, b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
    hits: Counter = Counter()
    # A 4 s access token is due for refresh (margin min(60 s, lifetime / 2) = 2 s) two seconds after
    # the launch, and still valid for two more.
    with redis_server(workdir) as redis, \
            serve_sandbox(a, config_dir=workdir / "config", options={"access_token_lifetime_s": 4}) as (url, sandbox):
        @sandbox.before_request
        def count() -> None:
            from flask import request

            hits[request.path] += 1

        env = {"IMAGING_SESSION_STORE": redis.url,
               "IMAGING_SESSION_KEY_FILE": str(fernet_key_file(workdir / "session.key")),
               "IMAGING_TIMELINE_KEY_FILE": str(rsa_key_file(workdir / "signing.pem"))}
        config = workdir / "config"
        with serve_process(port_a, config, workdir, workers=2, threads=8, env=env) as proc_a, \
                serve_process(port_b, config, workdir, workers=1, threads=8, env=env):
            yield Cluster(a, b, proc_a.pid, url, sandbox, hits)


def events(text: str) -> list[str]:
    return re.findall(r"^event: (\w+)$", text, re.M)


def test_a_session_launched_on_one_process_is_served_by_the_other(cluster):
    browser = cluster.launch()
    page = browser.get(f"{cluster.b}/timeline", timeout=30)
    assert page.status_code == 200
    assert "Ben" in page.text
    studies = browser.get(f"{cluster.b}/api/studies", timeout=30).json()
    assert studies["studies"]
    stream = browser.get(f"{cluster.b}/api/studies/stream", timeout=60).text
    assert events(stream)[-1] == "done"
    streamed = set(re.findall(r'"uid":"([0-9.]+)"', stream))
    assert streamed == {s["uid"] for s in studies["studies"]}


def test_no_two_processes_spend_the_same_refresh_token(cluster):
    browser = cluster.launch("pat-amy")
    issued = len(cluster.runtime.store.refresh)
    time.sleep(2.2)  # the access token is now due for refresh on every process
    urls = [f"{base}/api/context" for base in (cluster.a, cluster.b) for _ in range(8)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda u: browser.get(u, timeout=30).status_code, urls))
    assert answers == [200] * 16
    assert len(cluster.runtime.store.refresh) == issued + 1  # one refresh, one new refresh token


def test_reloads_on_both_processes_join_one_archive_search(cluster):
    cluster.runtime.delays["dicomweb"] = 1.0  # the search still runs while the reloads arrive
    try:
        before = cluster.hits["/dicomweb/studies"]
        browser = cluster.launch("pat-ben")  # /timeline on A starts the search
        urls = [f"{base}/timeline" for base in (cluster.a, cluster.b) for _ in range(10)]
        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(lambda u: browser.get(u, timeout=30).status_code, urls)) == {200}
        stream = browser.get(f"{cluster.b}/api/studies/stream", timeout=60).text
        assert events(stream)[-1] == "done"
        assert browser.get(f"{cluster.a}/api/studies", timeout=30).status_code == 200
    finally:
        cluster.runtime.delays.pop("dicomweb", None)
    assert cluster.hits["/dicomweb/studies"] - before == 1


def _workers(master: int) -> list[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [int(c) for c in children]


def _worker_holding(master: int, server_port: int, client_port: int) -> int:
    """The gunicorn worker whose socket is the server side of this client's connection."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == client_port:
            inode = fields[9]
    assert inode is not None, "connection not found in /proc/net/tcp"
    for pid in _workers(master):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    raise AssertionError("no worker holds the connection")


def test_a_worker_killed_mid_stream_the_stream_reconnects_and_completes(cluster):
    cluster.runtime.delays["dicomweb"] = 3.0
    try:
        browser = cluster.launch("pat-ben")
        port = int(cluster.a.rsplit(":", 1)[1])
        first = browser.get(f"{cluster.a}/api/studies/stream", stream=True, timeout=60)
        sock = first.raw._fp.fp.raw._sock  # the client's end of this connection
        lines = first.iter_lines(decode_unicode=True)
        while next(lines) != "event: archive":
            pass
        victim = _worker_holding(cluster.a_pid, port, sock.getsockname()[1])
        os.kill(victim, signal.SIGKILL)
        seen = []
        with pytest.raises(requests.exceptions.RequestException):
            seen.extend(lines)  # the connection dies before "done"
        assert "event: done" not in seen
        # What the browser's EventSource does next: reconnect, here landing on a live worker.
        again = browser.get(f"{cluster.a}/api/studies/stream", timeout=60).text
    finally:
        cluster.runtime.delays.pop("dicomweb", None)
    assert events(again)[-1] == "done"
    done = again.rsplit("event: done", 1)[1]
    assert done.count('"status":"ok"') == 3
    assert victim not in _workers(cluster.a_pid)


def test_the_stream_tells_the_browser_to_reconnect_quickly(cluster):
    browser = cluster.launch("pat-amy")
    stream = browser.get(f"{cluster.b}/api/studies/stream", timeout=60).text
    assert stream.startswith("retry: 1000\n")




@pytest.mark.browser
def test_chromium_reconnects_its_stream_when_the_workers_die_and_completes_the_timeline(cluster, browser):
    cluster.runtime.delays["dicomweb"] = 3.0
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    try:
        page = context.new_page()
        page.goto(f"{cluster.sandbox_url}/launch?patient=pat-ben", timeout=30000)
        page.wait_for_selector('[data-archive-id="ehr"][data-status="ok"]', timeout=30000)
        assert page.get_attribute('[data-archive-id="pacs"]', "data-status") == "searching"
        for worker in _workers(cluster.a_pid):  # every worker, so the stream's one dies too
            os.kill(worker, signal.SIGKILL)
        cluster.runtime.delays.pop("dicomweb", None)
        page.wait_for_selector('[data-archive-id="pacs"][data-status="ok"]', timeout=45000)
        assert page.is_hidden("#fatal")
        assert page.locator("[data-study-uid]").count() > 0
    finally:
        cluster.runtime.delays.pop("dicomweb", None)
        context.close()
