"""The sandbox's per-app state (config, data, store, signing key, live delays/faults) and its URLs."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import requests
from flask import Response, current_app, url_for
from joserfc.jwk import RSAKey

from .config import FAULTS, SandboxConfig, supported_scopes
from .data import SandboxData, SandboxStudy
from .fhir_resources import ResourceIndex
from .store import Client, Store

log = logging.getLogger(__name__)


@dataclass
class SandboxRuntime:
    """What `create_sandbox_app` attaches as ``app.extensions["sandbox"]``.

    ``delays`` and ``faults`` are live: tests and benchmarks change them on a running sandbox.
    """

    config: SandboxConfig
    data: SandboxData
    store: Store
    id_token_key: RSAKey
    http: requests.Session
    clock: Callable[[], float]
    delays: dict[str, float] = field(default_factory=dict)
    faults: dict[str, str] = field(default_factory=dict)
    clients: dict[str, Client] = field(default_factory=dict)
    ehr: ResourceIndex = field(default_factory=ResourceIndex)
    outside: ResourceIndex = field(default_factory=ResourceIndex)
    pacs_by_uid: dict[str, SandboxStudy] = field(default_factory=dict)
    audit_events: list[dict] = field(default_factory=list)  # AuditEvents apps forwarded (newest last)

    @property
    def scopes_supported(self) -> tuple[str, ...]:
        return supported_scopes(self.config.smart_versions)

    def query_client(self, client_id: str) -> Client | None:
        return self.clients.get(client_id)

    def disturb(self, archive_id: str) -> Response | None:
        """Apply the configured delay, then the fault, for one request to `archive_id`."""
        delay = self.delays.get(archive_id, 0.0)
        if delay > 0:
            time.sleep(delay)
        fault = self.faults.get(archive_id)
        if not fault:
            return None
        if fault not in FAULTS:
            log.warning("ignoring unknown fault %r for %s", fault, archive_id)
            return None
        log.info("sandbox fault %s on %s", fault, archive_id)
        if fault == "timeout":
            time.sleep(self.config.fault_timeout_s)
            return Response("gateway timeout (sandbox fault)", 504, mimetype="text/plain")
        if fault == "garbage":
            mimetype = {"dicomweb": "application/dicom+json", "auth": "application/json"}.get(
                archive_id, "application/fhir+json")
            return Response(b"\x00<html>not what you asked for{{", 200, mimetype=mimetype)
        return Response(f"sandbox fault {fault}", int(fault), mimetype="text/plain")


def runtime() -> SandboxRuntime:
    return current_app.extensions["sandbox"]


def _external(endpoint: str, suffix: str, **values: str) -> str:
    return url_for(endpoint, _external=True, **values).removesuffix(suffix)


def fhir_base() -> str:
    """The EHR FHIR base URL as this request reached the sandbox (``…/sandbox/fhir``)."""
    return _external("ehr_fhir.metadata", "/metadata")


def outside_base() -> str:
    return _external("outside_fhir.metadata", "/metadata")


def dicomweb_base() -> str:
    return _external("dicomweb.search_studies", "/studies")


def token_url() -> str:
    return url_for("auth.token", _external=True)
