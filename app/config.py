"""Settings: safe defaults, overridden by environment variables, overridden by create_app(config)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib.util import find_spec
from pathlib import Path
from typing import Any


def package_folder(name: str) -> Path:
    """Where a data folder shipped as a package (`app.templates`, `app.static`) is installed.

    pyproject.toml maps the repository's top-level `templates/` and `static/` into the
    distribution as these packages, so the installed app finds them through the import system
    (a wheel in site-packages, or an editable install pointing at the checkout), never through
    the checkout's path.
    """
    spec = find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{name} is not installed with the app; reinstall imaging-timeline.")
    return Path(next(iter(spec.submodule_search_locations)))


# Environment variable -> Flask config key. Secrets are never given as values here: only the
# *paths* of files that hold them, or the names of variables that do.
ENV_KEYS = {
    "IMAGING_LAUNCH_CONFIG": "LAUNCH_CONFIG",  # path of launch.json
    "IMAGING_ARCHIVES": "ARCHIVES_FILE",  # path of the archives TOML
    "IMAGING_SESSION_STORE": "SESSION_STORE",  # sqlite:///path or redis://host:port/db
    "IMAGING_PUBLIC_URL": "PUBLIC_URL",  # e.g. https://timeline.example.org (behind a proxy)
    "IMAGING_TIMELINE_KEY_FILE": "PRIVATE_KEY_FILE",  # PEM for private_key_jwt; else generated
    "IMAGING_ACCESS_LOG": "ACCESS_LOG_FILE",  # where viewer openings are recorded
    "IMAGING_SESSION_KEY_FILE": "SESSION_KEY_FILE",  # Fernet key encrypting session records at rest
    "IMAGING_SESSION_IDLE_S": "SESSION_IDLE_S",  # a session unused this long ends
    "IMAGING_SESSION_MAX_S": "SESSION_TTL_S",  # a session ends this long after sign-in, used or not
    "IMAGING_STYLE_ORIGINS": "STYLE_ORIGINS",  # comma-separated origins smart_style_url may name
    "IMAGING_TIMEZONE": "TIMEZONE",  # IANA zone of the clinicians ("today"); default: the server's
    "IMAGING_AUDIT_STORE": "AUDIT_STORE",  # sqlite:///path (default: the instance folder) or postgresql://...
    "IMAGING_AUDIT_STDOUT": "AUDIT_STDOUT",  # 1: also write each audit event as a JSON line on stdout
    "IMAGING_AUDIT_FHIR_URL": "AUDIT_FHIR_URL",  # FHIR base to forward AuditEvents to (durable outbox)
    "IMAGING_AUDIT_FHIR_CLIENT_ID": "AUDIT_FHIR_CLIENT_ID",  # SMART backend client id for that server
    "IMAGING_AUDIT_FHIR_TOKEN_URL": "AUDIT_FHIR_TOKEN_URL",  # its token endpoint (else discovered)
    "IMAGING_CDS_CLIENTS": "CDS_CLIENTS",  # path of the JSON list of allow-listed CDS clients (cds_auth.py)
    "IMAGING_CDS_DEADLINE_S": "CDS_DEADLINE_S",  # answer CDS hooks within this many seconds (default 1.5)
    "IMAGING_CDS_LOCAL_ARCHIVES": "CDS_LOCAL_ARCHIVES",  # comma-separated archive ids that are not "outside"
    "IMAGING_GATEWAY_CAPABILITY_TTL_S": "GATEWAY_CAPABILITY_TTL_S",  # viewer links' lifetime (seconds)
    "IMAGING_GATEWAY_CORS_ORIGINS": "GATEWAY_CORS_ORIGINS",  # extra viewer origins, comma-separated
}
NUMERIC = {"SESSION_IDLE_S", "SESSION_TTL_S"}

DEFAULTS: dict[str, Any] = {
    "LAUNCH_CONFIG": "launch.json",  # relative to the working directory
    "ARCHIVES_FILE": None,
    "ARCHIVES": None,  # parsed archive list may be given directly (demo, tests)
    "SESSION_STORE": None,  # None: an SQLite file in the instance folder
    "SESSION_KEY_FILE": None,  # None: a key per process (SQLite only; Redis needs a shared key)
    "SESSION_TTL_S": 8 * 3600,  # the absolute limit
    "SESSION_IDLE_S": 3600,
    "STYLE_ORIGINS": None,  # besides the issuer's own origin
    "PENDING_LAUNCH_TTL_S": 600,
    "DISCOVERY_TTL_S": 3600,
    "HTTP_TIMEOUT_S": 10.0,
    "MAX_RESPONSE_BYTES": 20 * 1024 * 1024,
    "PUBLIC_URL": None,
    "PRIVATE_KEY_FILE": None,
    "ACCESS_LOG_FILE": None,
    "STUDY_CACHE_TTL_S": 120,
    "SEARCH_REPLAY_S": 10.0,  # a finished search is replayed to a reload or second stream this long
    "FEDERATION_DEADLINE_S": 30.0,
    "PREFETCH_SEARCH": True,  # start the archive searches when /timeline is served
    "FRAME_ANCESTORS": None,  # extra CSP frame-ancestors origins beyond the allow-listed issuers
    "TIMEZONE": None,  # IANA zone deciding "today" for the current study; None: the server's local zone
    "CRITICAL_WINDOW_DAYS": 7,  # a final critical result leaves "Needs attention" after this many days
    "ACK_TTL_S": 90 * 86400,  # how long an acknowledgement of an attention item is kept
    "AUDIT_STORE": None,  # None: audit.sqlite3 in the instance folder; or a store object (tests)
    "AUDIT_STDOUT": None,
    "AUDIT_FHIR_URL": None,
    "AUDIT_FHIR_CLIENT_ID": None,
    "AUDIT_FHIR_TOKEN_URL": None,
    "CDS_CLIENTS": None,  # a path, or the list of clients given directly (the demo)
    "CDS_DEADLINE_S": 1.5,
    "CDS_REPEAT_WINDOW_DAYS": 30,
    "CDS_LOCAL_ARCHIVES": None,
    "METRICS_TOKEN": None,  # tests only; deployments set IMAGING_METRICS_TOKEN in the environment
    # The DICOMweb gateway (app/gateway.py): capability lifetime, extra CORS origins beyond the
    # gateway viewers' own, a per-answer cap for streamed pixel data, and a cap for metadata.
    "GATEWAY_CAPABILITY_TTL_S": 2 * 3600,
    "GATEWAY_CORS_ORIGINS": None,
    "GATEWAY_MAX_RESPONSE_BYTES": 4 * 1024**3,
    "GATEWAY_METADATA_MAX_BYTES": 256 * 1024**2,
    "GATEWAY_DEADLINE_S": 300.0,
    "GATEWAY_SCOPE_CACHE_S": 2.0,  # per process: how long a capability's session and studies are reused
    "GATEWAY_AUDIT": None,  # a callable(event, fields); None: JSON lines on the app.audit logger
    "GATEWAY_CLOCK": None,  # a callable returning epoch seconds (tests); None: time.time
}


def load_settings(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Defaults, then environment variables, then explicit overrides."""
    settings = dict(DEFAULTS)
    for env, key in ENV_KEYS.items():
        if os.environ.get(env):
            settings[key] = float(os.environ[env]) if key in NUMERIC else os.environ[env]
    if overrides:
        settings.update(overrides)
    return settings
