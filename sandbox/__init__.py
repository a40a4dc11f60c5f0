"""The sandbox (not part of the production install): a strict small SMART EHR, an outside facility
and a DICOMweb archive, as one Flask app.

Mount it at ``/sandbox`` next to the app::

    sandbox = create_sandbox_app(SandboxConfig(app_launch_url="http://127.0.0.1:8000/launch", clients=...))
    wsgi = DispatcherMiddleware(main_app, {"/sandbox": sandbox})

Routes (under the mount prefix): ``/`` chart, ``/launch``, ``/patients``, ``/smart-style.json``,
``/auth/authorize|token|jwks``, ``/fhir/...`` (EHR), ``/outside/fhir/...`` (outside facility,
backend-services tokens only), ``/dicomweb/...`` (QIDO-RS, WADO-RS, rendered, thumbnail),
``/viewer/ohif/viewer?StudyInstanceUIDs=...`` and ``/viewer/ohif/viewer/dicomwebproxy?url=...`` (a
stand-in for OHIF v3, the latter reading the app's DICOMweb gateway), ``/pixm/Patient/$ihe-pix``
(an IHE PIXm cross-reference manager), ``/cds`` (the sandbox as a CDS Hooks client of the app).

Latency and faults can be changed on a running sandbox, per archive id ("ehr", "outside",
"dicomweb", "auth")::

    state = sandbox.extensions["sandbox"]          # a SandboxRuntime
    state.delays["dicomweb"] = 2.5                 # seconds before every answer
    state.faults["outside"] = "timeout"            # or "500", "503", "401", "garbage"; del to clear

Discovery documents and ``metadata`` are never delayed or faulted, so a launch still works while
an archive misbehaves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import requests
from flask import Flask
from joserfc.jwk import RSAKey

from . import cds_client, chart, dicomweb, fhir_api, oauth, pixm, viewer
from .config import SandboxClient, SandboxConfig, supported_scopes
from .data import SandboxData, standard_data
from .fhir_resources import build_ehr, build_outside
from .runtime import SandboxRuntime
from .store import Client, Store

__all__ = ["SandboxClient", "SandboxConfig", "SandboxRuntime", "create_sandbox_app"]

log = logging.getLogger(__name__)


def create_sandbox_app(config: SandboxConfig, *, http: requests.Session | None = None,
                       clock: Callable[[], float] = time.time) -> Flask:
    """Build the sandbox app; `http` fetches clients' JWKS, `clock` drives every expiry."""
    app = Flask(__name__, template_folder=str(Path(__file__).parent / "templates"), static_folder=None)
    data: SandboxData = config.data or standard_data(config.today or date.today())
    supported = supported_scopes(config.smart_versions)
    rt = SandboxRuntime(
        config=config, data=data, store=Store(clock=clock),
        # Generated at every start, never stored: id_tokens from a previous run stop verifying.
        id_token_key=RSAKey.generate_key(2048, parameters={"kid": f"sandbox-{int(clock())}"}, private=True),
        http=http or requests.Session(), clock=clock,
        delays=dict(config.delays), faults=dict(config.faults),
        clients={c.client_id: Client(c, supported) for c in config.clients},
        ehr=build_ehr(data, validate=len(data.studies) < 1000),
        outside=build_outside(data, validate=len(data.studies) < 1000),
        pacs_by_uid={s.uid: s for s in data.studies_in("pacs")},
    )
    app.extensions["sandbox"] = rt
    oauth.init_app(app, rt)
    app.register_blueprint(chart.bp)
    app.register_blueprint(fhir_api.make_blueprint("ehr", lambda: rt.ehr))
    app.register_blueprint(fhir_api.make_blueprint("outside", lambda: rt.outside))
    app.register_blueprint(dicomweb.bp)
    app.register_blueprint(viewer.bp)
    app.register_blueprint(pixm.bp)
    app.register_blueprint(cds_client.bp)
    return app
