"""`imaging-timeline serve`: the app under gunicorn (gthread workers), configured for a hospital network."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import gunicorn.http.wsgi
from cryptography.fernet import Fernet
from flask import Flask
from gunicorn.app.base import BaseApplication

from . import create_app
from .config import load_settings
from .keys import generate_keys

log = logging.getLogger(__name__)

# One line per request, without the query string (%(U)s is the path alone: a launch's `iss` and
# `launch`, a callback's `code` and `state` never reach the log) and without the Referer (which
# carries the EHR's launch URL).
# Behind a reverse proxy %(h)s is the proxy; the client's address is its X-Forwarded-For.
ACCESS_LOG_FORMAT = '%(t)s %(h)s %({x-forwarded-for}i)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms'

# gunicorn has no setting for its `Server` response header ("gunicorn" by default); the value is
# the module constant its Response reads for every answer. Name the product, not the server.
gunicorn.http.wsgi.SERVER = "imaging-timeline"


def server_options(host: str, port: int, workers: int, threads: int) -> dict[str, Any]:
    """gunicorn settings: bounded requests, worker timeout, graceful shutdown, access log to stdout."""
    return {
        "bind": f"{host}:{port}",
        "workers": workers,
        "worker_class": "gthread",
        "threads": threads,
        # Request line and headers: a launch URL fits in 4 KiB; a bigger one is an attack or a bug.
        "limit_request_line": 4094,
        "limit_request_fields": 100,
        "limit_request_field_size": 8190,
        # A worker silent for 30 s is restarted; on SIGTERM, requests in flight get 30 s to finish
        # (a federated search is bounded by FEDERATION_DEADLINE_S, 30 s by default).
        "timeout": 30,
        "graceful_timeout": 30,
        "keepalive": 5,
        "accesslog": "-",
        "access_log_format": ACCESS_LOG_FORMAT,
        "errorlog": "-",
        "loglevel": "info",
        # No control socket: two servers on one machine would fight over $HOME/.gunicorn/gunicorn.ctl.
        "control_socket_disable": True,
    }


def shared_overrides(settings: Mapping[str, Any]) -> dict[str, Any]:
    """What every worker must share when nothing is configured: signing keys and the session key.

    Without IMAGING_TIMELINE_KEY_FILE each worker would generate its own signing keys (the EHR
    would see a client whose JWKS changes with the worker that answers); without
    IMAGING_SESSION_KEY_FILE each worker would encrypt sessions with its own key (a session
    launched on one worker unreadable on the next; with Redis the file is required anyway). The
    master generates them once, in memory, and the forked workers inherit them.
    """
    overrides: dict[str, Any] = {}
    if not settings.get("PRIVATE_KEY_FILE"):
        overrides["APP_KEYS"] = generate_keys()
    store = str(settings.get("SESSION_STORE") or "")
    # A Redis store is shared with other servers: it needs IMAGING_SESSION_KEY_FILE (create_app says so).
    if not settings.get("SESSION_KEY_FILE") and not store.startswith(("redis://", "rediss://", "unix://")):
        overrides["SESSION_KEY"] = Fernet.generate_key()
    return overrides


class ProductionServer(BaseApplication):
    """gunicorn run programmatically: options set here, the app built in each worker after the fork."""

    def __init__(self, factory: Callable[[], Flask], options: Mapping[str, Any]) -> None:
        self.factory, self.options = factory, dict(options)
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return self.factory()


def serve(host: str = "127.0.0.1", port: int = 8000, workers: int = 2, threads: int = 16) -> int:
    """Run until SIGTERM/SIGINT; a configuration error is raised here, before any worker starts."""
    overrides = shared_overrides(load_settings())
    from .launch import require_public_url

    # Fail fast (ConfigError) in the master, with the CLI's clear message; without a public URL the
    # request's Host header would decide where the EHR sends sign-in answers (security finding 9).
    require_public_url(create_app(overrides))
    # Each worker builds its own app (own SQLite connection, Redis pool, HTTP sessions: none of
    # them survive a fork safely), from the same settings.
    ProductionServer(lambda: create_app(overrides), server_options(host, port, workers, threads)).run()
    return 0
