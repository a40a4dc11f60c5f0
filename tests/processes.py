"""Real servers in child processes for tests: `imaging-timeline sandbox|serve` and redis-server, on free ports."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import requests

CLI = [sys.executable, "-m", "app.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    """Poll `url` until it answers (any status below 500), or fail with the process's output."""
    give_up = time.monotonic() + timeout_s
    while time.monotonic() < give_up:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            if requests.get(url, timeout=2).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout_s:g} s")


@contextmanager
def running(args: Sequence[str], *, ready_url: str, log: Path, env: Mapping[str, str] | None = None,
            cwd: str | Path | None = None) -> Iterator[subprocess.Popen]:
    """A child process (stdout+stderr to `log`), ready once `ready_url` answers; stopped on exit."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(list(args), stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                env={**os.environ, **(env or {})}, start_new_session=True)
    try:
        wait_for(ready_url, proc)
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process (and its gunicorn workers, same session), then SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


class RedisServer:
    """A real redis-server on a fixed free port that a test can stop and start again."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server")
        self.binary, self.workdir, self.port = binary, workdir, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.workdir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=1)
        for _ in range(100):
            try:
                client.ping()
                return self
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


@contextmanager
def redis_server(workdir: Path) -> Iterator[RedisServer]:
    server = RedisServer(workdir).start()
    try:
        yield server
    finally:
        server.stop()


def fernet_key_file(path: Path) -> Path:
    from cryptography.fernet import Fernet

    path.write_bytes(Fernet.generate_key())
    path.chmod(0o600)
    return path


def rsa_key_file(path: Path) -> Path:
    """A PEM RSA signing key (IMAGING_TIMELINE_KEY_FILE) that several serve processes share."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return path


@contextmanager
def sandbox_process(app_url: str, workdir: Path, cli: Sequence[str] = CLI) -> Iterator[tuple[str, Path]]:
    """`imaging-timeline sandbox --config-dir`; yields (its …/sandbox URL, the config dir)."""
    port, config = free_port(), workdir / "config"
    url = f"http://127.0.0.1:{port}/sandbox"
    with running([*cli, "sandbox", "--port", str(port), "--app-url", app_url, "--config-dir", str(config)],
                 ready_url=f"{url}/patients", log=workdir / f"sandbox-{port}.log", cwd=workdir):
        yield url, config


@contextmanager
def serve_process(port: int, config: Path, workdir: Path, *, workers: int = 2, threads: int = 8,
                  env: Mapping[str, str] | None = None, cli: Sequence[str] = CLI) -> Iterator[subprocess.Popen]:
    """`imaging-timeline serve` with the sandbox's launch.json and archives.toml."""
    with running([*cli, "serve", "--port", str(port), "--workers", str(workers), "--threads", str(threads)],
                 ready_url=f"http://127.0.0.1:{port}/health", log=workdir / f"serve-{port}.log", cwd=workdir,
                 env={"IMAGING_LAUNCH_CONFIG": str(config / "launch.json"),
                      "IMAGING_ARCHIVES": str(config / "archives.toml"), **(env or {})}) as proc:
        yield proc
