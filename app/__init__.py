"""Imaging Timeline: a SMART on FHIR app showing every imaging study of the launched patient."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.datastructures import Headers

from .config import load_settings, package_folder
from .errors import register_error_handlers
from .http import install_header_parsing

log = logging.getLogger(__name__)


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app. `config` overrides environment settings (tests, the demo)."""
    app = Flask(
        __name__,
        template_folder=str(package_folder("app.templates")),
        static_folder=str(package_folder("app.static")),
        instance_relative_config=True,
    )
    app.config.update(load_settings(config))
    install_header_parsing()  # process-wide: every archive answer's headers (see app.http._parse_headers)

    from . import audit, keys, registration, session_store

    registration.init_app(app)
    keys.init_app(app)
    session_store.init_app(app)
    audit.init_app(app)

    from . import launch, timeline

    launch.init_app(app)
    app.register_blueprint(launch.bp)
    app.register_blueprint(timeline.bp)

    from . import api, federation, gateway

    federation.init_app(app)
    api.init_app(app)
    gateway.init_app(app)

    from . import admin, cds_hooks, metrics

    metrics.init_app(app)
    cds_hooks.init_app(app)
    admin.init_app(app)

    @app.get("/health")
    def health() -> Response:
        """Liveness: the process answers (restart it if not)."""
        return jsonify({"status": "ok"})

    @app.get("/ready")
    def ready() -> tuple[Response, int]:
        """Readiness: the session store answers (a load balancer sends no traffic here if not)."""
        from .errors import StoreUnavailable
        from .session_store import store

        try:
            store().get("ready-probe")
        except StoreUnavailable as exc:
            log.warning("not ready: %s", exc.log_detail)
            return jsonify({"status": "unavailable", "reason": "session store unreachable"}), 503
        return jsonify({"status": "ok"}), 200

    _security_headers(app)
    register_error_handlers(app)
    return app


def _security_headers(app: Flask) -> None:
    """CSP with a per-response nonce; frame-ancestors limited to the allow-listed EHR origins."""
    from urllib.parse import urlsplit

    from .registration import registration

    def csp_nonce() -> str:
        if "csp_nonce" not in g:
            g.csp_nonce = secrets.token_urlsafe(16)
        return g.csp_nonce

    app.jinja_env.globals["csp_nonce"] = csp_nonce

    with app.app_context():
        origins = {f"{urlsplit(r.iss).scheme}://{urlsplit(r.iss).netloc}" for r in registration().issuers}
    origins |= set(app.config.get("FRAME_ANCESTORS") or ())
    ancestors = " ".join(["'self'", *sorted(origins)])

    def security_headers(headers: Headers, *, path: str, nonce: str | None) -> None:
        """Set every answer's security headers (where the view set none itself)."""
        style_src = f"'self' 'nonce-{nonce}'" if nonce else "'self'"
        headers.setdefault(
            "Content-Security-Policy",
            f"default-src 'self'; img-src 'self' data:; style-src {style_src}; script-src 'self'; "
            f"object-src 'none'; base-uri 'none'; frame-ancestors {ancestors}",
        )
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("Referrer-Policy", "no-referrer")
        # Every page but the static files may hold PHI or a sign-in answer: never stored. Thumbnails
        # set their own (private) caching.
        if not path.startswith("/static/"):
            headers.setdefault("Cache-Control", "no-store")

    # The gateway's answers that bypass Flask (app.gateway.FastRetrieve) get them from here too.
    app.extensions["security_headers"] = security_headers

    @app.after_request
    def headers(resp: Response) -> Response:
        security_headers(resp.headers, path=request.path, nonce=g.get("csp_nonce"))
        return resp
