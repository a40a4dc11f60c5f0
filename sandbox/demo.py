"""The demo: the app plus the sandbox EHR and sandbox archives, served together on 127.0.0.1."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from flask import Flask
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.serving import BaseWSGIServer

from app import create_app
from app.errors import ConfigError
from app.serving import background_server, serve_in_foreground

from .app_config import BACKEND_CLIENT_ID, DEMO_ARCHIVES, app_registration
from .standalone import make_sandbox

log = logging.getLogger(__name__)


@dataclass
class Demo:
    """A running demo: where it is and its two apps (tests reach into `sandbox` to add faults)."""

    base_url: str
    app: Flask
    sandbox: Flask
    server: BaseWSGIServer

    @property
    def chart_url(self) -> str:
        return f"{self.base_url}/sandbox/"

    @property
    def iss(self) -> str:
        return f"{self.base_url}/sandbox/fhir"


def build_demo(base_url: str, *, extra_archives: str | None = None,
               sandbox_options: Mapping[str, Any] | None = None,
               app_options: Mapping[str, Any] | None = None, app_url: str | None = None) -> tuple[Flask, Flask]:
    """The app (registered with the sandbox EHR) and the sandbox (with the app as its client).

    `app_url` puts the app on another origin than the sandbox (e.g. http://localhost:PORT beside
    http://127.0.0.1:PORT): a cross-site EHR frame, as a hospital's EHR and app servers are.
    """
    from app.archives.config import load_archives

    sandbox_url = f"{base_url}/sandbox"
    base_url = app_url.rstrip("/") if app_url else base_url  # where the app is reached from here on
    archives = load_archives(DEMO_ARCHIVES, substitutions={"sandbox": sandbox_url})
    if extra_archives:
        extra = load_archives(extra_archives, substitutions={"sandbox": sandbox_url})
        taken = {a.id for a in archives} & {a.id for a in extra}
        if taken:
            raise ConfigError(f'{extra_archives}: archive id "{sorted(taken)[0]}" is already used by the demo\'s '
                              f'own archives ({", ".join(a.id for a in archives)}); choose another id.')
        archives = (*archives, *extra)
    app = create_app({
        "LAUNCH_CONFIG": app_registration(base_url, sandbox_url),
        "ARCHIVES": archives,
        "BACKEND_CLIENT_ID": BACKEND_CLIENT_ID,
        # The sandbox EHR is also the audit repository: the demo forwards every AuditEvent to it.
        "AUDIT_FHIR_URL": f"{sandbox_url}/fhir",
        "AUDIT_FHIR_CLIENT_ID": BACKEND_CLIENT_ID,
        # The sandbox EHR calls the app's CDS services, signing with the keys of its own JWKS.
        "CDS_CLIENTS": [{"iss": sandbox_url, "jwks_url": f"{sandbox_url}/auth/jwks",
                         "fhir_servers": [f"{sandbox_url}/fhir"]}],
        "CDS_LOCAL_ARCHIVES": ("ehr", "pacs"),  # the sandbox hospital's own; "outside" is another facility
        **(app_options or {}),
    })
    sandbox = make_sandbox(base_url, **(sandbox_options or {}))
    return app, sandbox


@contextmanager
def serve_demo(port: int = 0, *, app_host: str | None = None, **options: Any) -> Iterator[Demo]:
    """Serve the demo in a background thread (tests, benchmarks); port 0 picks a free port.

    `app_host` (e.g. "localhost") serves the app under that name and the sandbox under 127.0.0.1:
    the chart then frames the app cross-site.
    """
    with background_server(port=port) as server:  # the real app is set once the port is known
        base_url = f"http://127.0.0.1:{server.server_port}"
        app_url = f"http://{app_host}:{server.server_port}" if app_host else None
        app, sandbox = build_demo(base_url, app_url=app_url, **options)
        server.app = DispatcherMiddleware(app, {"/sandbox": sandbox})
        yield Demo(base_url, app, sandbox, server)


def run_demo(port: int, extra_archives: str | None = None) -> None:
    """Serve the demo in the foreground until interrupted."""

    def build(server: BaseWSGIServer) -> DispatcherMiddleware:  # the URLs name the port, known once bound
        base_url = f"http://127.0.0.1:{server.server_port}"
        app, sandbox = build_demo(base_url, extra_archives=extra_archives)
        log.warning("Imaging Timeline demo: open the sandbox chart at %s/sandbox/ (Ctrl-C to stop)", base_url)
        return DispatcherMiddleware(app, {"/sandbox": sandbox})

    serve_in_foreground(port, build)
