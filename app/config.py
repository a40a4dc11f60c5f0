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
    "IMAGING_GATEWAY_CAPABILITY_TTL_S": "GATEWAY_CAPABILITY_TTL_S",  # viewer links' lifetime (seconds)
    "IMAGING_GATEWAY_CORS_ORIGINS": "GATEWAY_CORS_ORIGINS",  # extra viewer origins, comma-separated
}

DEFAULTS: dict[str, Any] = {
    "LAUNCH_CONFIG": "launch.json",  # relative to the working directory
    "ARCHIVES_FILE": None,
    "ARCHIVES": None,  # parsed archive list may be given directly (demo, tests)
    "SESSION_STORE": None,  # None: an SQLite file in the instance folder
    "SESSION_KEY_FILE": None,  # None: a key per process (SQLite only; Redis needs a shared key)
    "SESSION_TTL_S": 8 * 3600,
    "PENDING_LAUNCH_TTL_S": 600,
    "DISCOVERY_TTL_S": 3600,
    "HTTP_TIMEOUT_S": 10.0,
    "MAX_RESPONSE_BYTES": 20 * 1024 * 1024,
    "PUBLIC_URL": None,
    "PRIVATE_KEY_FILE": None,
    "ACCESS_LOG_FILE": None,
    "STUDY_CACHE_TTL_S": 120,
    "FEDERATION_DEADLINE_S": 30.0,
    "PREFETCH_SEARCH": True,  # start the archive searches when /timeline is served
    "FRAME_ANCESTORS": None,  # extra CSP frame-ancestors origins beyond the allow-listed issuers
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
            settings[key] = os.environ[env]
    if overrides:
        settings.update(overrides)
    return settings
