"""Run the app under real gunicorn workers (`gunicorn 'app:create_app()'`) against a sandbox EHR in this process.

The sandbox is served from the test process (so tests can inspect it); the app runs in gunicorn's
worker processes configured only through IMAGING_* environment variables and files, as a hospital
deploys it. The key files are shared, so every worker signs and decrypts alike.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from werkzeug.exceptions import NotFound
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from app.serving import background_server
from sandbox import SandboxClient, SandboxConfig, create_sandbox_app
from sandbox.app_config import APP_CLIENT_ID, BACKEND_CLIENT_ID, app_registration, archives_toml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Gunicorn:
    """A running gunicorn master with its workers, and the sandbox EHR it is registered with."""

    url: str
    sandbox_url: str
    process: subprocess.Popen[bytes]
    sandbox: object

    def workers(self) -> list[int]:
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in path.read_text().split()]

    def kill_workers(self) -> list[int]:
        """SIGKILL every worker at once (no cleanup, no atexit, no flush): the master starts new ones."""
        killed = self.workers()
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        end = time.monotonic() + 60
        while time.monotonic() < end and (len(set(self.workers()) - set(killed)) < len(killed)):
            time.sleep(0.05)
        return killed

    def launch(self, patient: str) -> requests.Session:
        browser = requests.Session()
        resp = browser.get(f"{self.sandbox_url}/launch", params={"patient": patient, "embedded": "1"}, timeout=60)
        if resp.status_code != 200 or not resp.url.endswith("/timeline"):
            raise AssertionError(f"launch ended at {resp.url} with {resp.status_code}: {resp.text[:300]}")
        return browser


@contextmanager
def running_gunicorn(root: Path, env: Mapping[str, str] | None = None, workers: int = 2,
                     threads: int = 4) -> Iterator[Gunicorn]:
    port = free_port()
    app_url = f"http://127.0.0.1:{port}"
    with background_server() as server:
        sandbox_url = f"http://127.0.0.1:{server.server_port}/sandbox"
        sandbox = create_sandbox_app(SandboxConfig(
            app_launch_url=f"{app_url}/launch",
            clients=(
                SandboxClient(client_id=APP_CLIENT_ID, redirect_uris=(f"{app_url}/callback",),
                              token_endpoint_auth_method="private_key_jwt",
                              jwks_uri=f"{app_url}/.well-known/jwks.json",
                              grant_types=("authorization_code", "refresh_token")),
                SandboxClient(client_id=BACKEND_CLIENT_ID, token_endpoint_auth_method="private_key_jwt",
                              jwks_uri=f"{app_url}/.well-known/jwks.json", grant_types=("client_credentials",)),
            )))
        server.app = DispatcherMiddleware(NotFound(), {"/sandbox": sandbox})
        (root / "launch.json").write_text(json.dumps(app_registration(app_url, sandbox_url)))
        (root / "archives.toml").write_text(archives_toml(sandbox_url))
        (root / "session.key").write_bytes(Fernet.generate_key())
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (root / "app-key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                             serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))
        # The test process's own metrics folder is not the server's: the app makes one per gunicorn master.
        inherited = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        full_env = {
            **inherited,
            "IMAGING_LAUNCH_CONFIG": str(root / "launch.json"), "IMAGING_ARCHIVES": str(root / "archives.toml"),
            "IMAGING_SESSION_STORE": f"sqlite:///{root / 'sessions.db'}",
            "IMAGING_SESSION_KEY_FILE": str(root / "session.key"),
            "IMAGING_TIMELINE_KEY_FILE": str(root / "app-key.pem"),
            **(env or {}),
        }
        log = open(root / "gunicorn.log", "wb")  # closed below, after the process
        proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "--workers", str(workers), "--threads", str(threads),
                                 "--bind", f"127.0.0.1:{port}", "--graceful-timeout", "5", "app:create_app()"],
                                env=full_env, stdout=log, stderr=subprocess.STDOUT)
        try:
            running = Gunicorn(app_url, sandbox_url, proc, sandbox)
            _wait_ready(running, root)
            yield running
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            log.close()


def _wait_ready(running: Gunicorn, root: Path) -> None:
    end = time.monotonic() + 60
    while time.monotonic() < end:
        if running.process.poll() is not None:
            raise RuntimeError("gunicorn exited:\n" + (root / "gunicorn.log").read_text()[-3000:])
        try:
            if requests.get(f"{running.url}/health", timeout=2).status_code == 200 and len(running.workers()) >= 2:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError("gunicorn did not start:\n" + (root / "gunicorn.log").read_text()[-3000:])

