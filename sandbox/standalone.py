"""`imaging-timeline sandbox`: the sandbox EHR and archives alone, for an app served by another process."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flask import Flask
from werkzeug.exceptions import NotFound
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.serving import BaseWSGIServer

from app.serving import background_server, serve_in_foreground

from .app_config import APP_CLIENT_ID, BACKEND_CLIENT_ID, app_registration, archives_toml

log = logging.getLogger(__name__)


def make_sandbox(app_url: str, **options: Any) -> Flask:
    """The sandbox with the app at `app_url` registered as its client (EHR launch and backend services)."""
    from . import SandboxClient, SandboxConfig, create_sandbox_app

    app_url = app_url.rstrip("/")
    jwks_uri = f"{app_url}/.well-known/jwks.json"
    return create_sandbox_app(SandboxConfig(
        app_launch_url=f"{app_url}/launch",
        clients=(
            SandboxClient(client_id=APP_CLIENT_ID, redirect_uris=(f"{app_url}/callback",),
                          token_endpoint_auth_method="private_key_jwt", jwks_uri=jwks_uri,
                          grant_types=("authorization_code", "refresh_token")),
            SandboxClient(client_id=BACKEND_CLIENT_ID, redirect_uris=(),
                          token_endpoint_auth_method="private_key_jwt", jwks_uri=jwks_uri,
                          grant_types=("client_credentials",)),
        ),
        # The sandbox is also the EHR calling the app's CDS Hooks services (sandbox/cds_client.py).
        **{"cds_services_url": f"{app_url}/cds-services", **options},
    ))


def mounted(sandbox: Flask) -> DispatcherMiddleware:
    """The sandbox at /sandbox, as in the demo; every other path is a plain 404."""
    return DispatcherMiddleware(NotFound(), {"/sandbox": sandbox})


def write_config_dir(directory: str | Path, app_url: str, sandbox_url: str) -> tuple[Path, Path]:
    """DIR/launch.json and DIR/archives.toml: the app's registration with this sandbox, and its archives."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    launch, archives = folder / "launch.json", folder / "archives.toml"
    launch.write_text(json.dumps(app_registration(app_url, sandbox_url), indent=2) + "\n")
    archives.write_text(archives_toml(sandbox_url))
    return launch, archives


@contextmanager
def serve_sandbox(app_url: str, port: int = 0, config_dir: str | Path | None = None,
                  options: Mapping[str, Any] | None = None) -> Iterator[tuple[str, Flask]]:
    """Serve the sandbox alone in a background thread; yields (its base URL …/sandbox, the sandbox app)."""
    with background_server(port=port) as server:
        sandbox_url = f"http://127.0.0.1:{server.server_port}/sandbox"
        sandbox = make_sandbox(app_url, **(options or {}))
        if config_dir is not None:
            write_config_dir(config_dir, app_url, sandbox_url)
        server.app = mounted(sandbox)
        yield sandbox_url, sandbox


def run_sandbox(port: int, app_url: str, config_dir: str | None = None) -> None:
    """Serve the sandbox in the foreground until interrupted (writing the app's config files first)."""

    def build(server: BaseWSGIServer) -> DispatcherMiddleware:
        sandbox_url = f"http://127.0.0.1:{server.server_port}/sandbox"
        sandbox = make_sandbox(app_url)
        if config_dir is not None:
            launch, archives = write_config_dir(config_dir, app_url, sandbox_url)
            log.warning("wrote %s and %s (IMAGING_LAUNCH_CONFIG, IMAGING_ARCHIVES for the app)", launch, archives)
        log.warning("Imaging Timeline sandbox: chart at %s/ launching %s/launch (Ctrl-C to stop)",
                    sandbox_url, app_url.rstrip("/"))
        return mounted(sandbox)

    serve_in_foreground(port, build)
