"""`imaging-timeline sandbox` and `imaging-timeline serve` (gunicorn) as a hospital runs them: real processes."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.processes import free_port, sandbox_process, serve_process


class Running:
    def __init__(self, app_url: str, sandbox_url: str, config: Path, log: Path) -> None:
        self.app_url, self.sandbox_url, self.config, self.log = app_url, sandbox_url, config, log

    def launch(self, patient: str = "pat-ben") -> tuple[requests.Response, requests.Session]:
        browser = requests.Session()
        resp = browser.get(f"{self.sandbox_url}/launch", params={"patient": patient}, timeout=30)
        return resp, browser


@pytest.fixture(scope="module")
def running(tmp_path_factory) -> Iterator[Running]:
    workdir = tmp_path_factory.mktemp("production")
    port = free_port()
    app_url = f"http://127.0.0.1:{port}"
    with sandbox_process(app_url, workdir) as (sandbox_url, config), \
            serve_process(port, config, workdir, env={"IMAGING_SESSION_STORE": f"sqlite:///{workdir / 's.db'}"}):
        yield Running(app_url, sandbox_url, config, workdir / f"serve-{port}.log")


def test_the_sandbox_command_writes_the_apps_registration_and_archives(running):
    registration = json.loads((running.config / "launch.json").read_text())
    assert registration["launch_uri"] == f"{running.app_url}/launch"
    assert registration["redirect_uris"] == [f"{running.app_url}/callback"]
    assert registration["issuers"][0]["iss"] == f"{running.sandbox_url}/fhir"
    archives = (running.config / "archives.toml").read_text()
    assert f'base_url = "{running.sandbox_url}/dicomweb"' in archives
    assert "{sandbox}" not in archives


def test_the_sandbox_alone_serves_its_chart_and_patients_and_launches_the_app_url(running):
    assert requests.get(f"{running.sandbox_url}/", timeout=10).status_code == 200
    patients = requests.get(f"{running.sandbox_url}/patients", timeout=10)
    assert patients.status_code == 200
    resp = requests.get(f"{running.sandbox_url}/launch", params={"patient": "pat-ben"}, timeout=10,
                        allow_redirects=False)
    assert resp.status_code in (302, 303)
    assert resp.headers["Location"].startswith(f"{running.app_url}/launch?")
    assert f"iss={requests.utils.quote(running.sandbox_url + '/fhir', safe='')}" in resp.headers["Location"]


def test_serve_launches_from_the_sandbox_and_renders_the_timeline(running):
    resp, browser = running.launch()
    assert resp.url == f"{running.app_url}/timeline"
    assert resp.status_code == 200
    assert "data-archive-id" in resp.text
    studies = browser.get(f"{running.app_url}/api/studies", timeout=30).json()
    assert studies["studies"]
    assert {a["status"] for a in studies["archives"]} == {"ok"}


def test_the_production_server_does_not_mount_the_sandbox(running):
    assert requests.get(f"{running.app_url}/sandbox/", timeout=10).status_code == 404
    assert requests.get(f"{running.app_url}/sandbox/fhir/metadata", timeout=10).status_code == 404


def test_no_server_header_names_python_werkzeug_or_gunicorn(running):
    for path in ("/", "/health", "/nothing-here"):
        server = requests.get(f"{running.app_url}{path}", timeout=10).headers.get("Server", "")
        assert not re.search(r"python|werkzeug|gunicorn", server, re.I), server


def test_the_access_log_has_one_line_per_request_and_no_query_strings(running):
    resp, _ = running.launch()
    assert resp.status_code == 200
    requests.get(f"{running.app_url}/health", params={"probe": "secret-value"}, timeout=10)
    log = running.log.read_text()
    assert re.search(r'"GET /launch" 302 ', log)
    assert re.search(r'"GET /callback" 303 ', log)
    assert re.search(r'"GET /health" 200 ', log)
    for leak in ("iss=", "launch=", "code=", "state=", "secret-value"):
        assert leak not in log


def test_ready_and_health_answer_ok_while_the_store_is_reachable(running):
    assert requests.get(f"{running.app_url}/ready", timeout=10).json() == {"status": "ok"}
    assert requests.get(f"{running.app_url}/health", timeout=10).json() == {"status": "ok"}


def test_an_oversized_request_line_is_refused_by_the_server(running):
    resp = requests.get(f"{running.app_url}/{'x' * 5000}", timeout=10)
    assert resp.status_code in (400, 414)


def test_serve_with_a_broken_configuration_exits_2_with_the_reason(tmp_path):
    import subprocess
    import sys

    (tmp_path / "launch.json").write_text("{}")
    done = subprocess.run([sys.executable, "-m", "app.cli", "serve", "--port", str(free_port())], cwd=tmp_path,
                          env={"PATH": "/usr/bin:/bin", "IMAGING_LAUNCH_CONFIG": str(tmp_path / "launch.json")},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("imaging-timeline: ")
    assert "Traceback" not in done.stderr


def test_idle_connections_are_closed_by_the_server(running):
    # Connected, nothing sent: the development server kept a thread blocked on each for ever;
    # gunicorn gives each up after its data and keep-alive timeouts (5 s). A client that sends
    # half a request is the reverse proxy's to time out (README, "The reverse proxy in front").
    import socket
    import time

    port = int(running.app_url.rsplit(":", 1)[1])
    idle = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(20)]
    try:
        give_up = time.monotonic() + 90  # bounded: a socket still open then counts as held
        assert sum(_hung_up(sock, give_up) for sock in idle) == len(idle)
        assert requests.get(f"{running.app_url}/health", timeout=30).status_code == 200
    finally:
        for sock in idle:
            sock.close()


def _hung_up(sock, give_up: float) -> bool:
    """Whether the server closed this connection (after an error answer or none) before `give_up`."""
    import time

    sock.settimeout(max(0.01, give_up - time.monotonic()))
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True
