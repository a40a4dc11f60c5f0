"""The app's configuration for talking to this sandbox: its registration (launch.json) and archives.

The demo builds the app from these; `imaging-timeline sandbox --config-dir DIR` writes them as
files, so a separately installed `imaging-timeline serve` can be pointed at a running sandbox.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

DEMO_ARCHIVES = Path(__file__).parent / "demo_archives.toml"
APP_CLIENT_ID = "imaging-timeline"
BACKEND_CLIENT_ID = "imaging-timeline-backend"
SCOPES = ("openid fhirUser offline_access patient/Patient.rs patient/ImagingStudy.rs patient/DiagnosticReport.rs "
          "patient/ServiceRequest.rs patient/Endpoint.rs patient/DocumentReference.rs patient/Binary.r "
          "patient/Encounter.rs")


def app_registration(app_url: str, sandbox_url: str) -> dict[str, Any]:
    """launch.json for an app at `app_url` registered with the sandbox EHR at `sandbox_url`."""
    app_url, sandbox_url = app_url.rstrip("/"), sandbox_url.rstrip("/")
    return {
        "$comment": "Written by the Imaging Timeline sandbox: the app's registration with this sandbox EHR.",
        "client_id": APP_CLIENT_ID,
        "client_name": "Imaging Timeline",
        "launch_uri": f"{app_url}/launch",
        "redirect_uris": [f"{app_url}/callback"],
        "scope": f"launch {SCOPES}",
        "standalone_scope": f"launch/patient {SCOPES}",
        "token_endpoint_auth_method": "private_key_jwt",
        "signing_alg": "RS384",
        "jwks_uri": f"{app_url}/.well-known/jwks.json",
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "issuers": [{
            "name": "Sandbox EHR",
            "iss": f"{sandbox_url}/fhir",
            "match": "exact",
            "client_id": APP_CLIENT_ID,
            "token_endpoint_auth_method": "private_key_jwt",
        }],
    }


def archives_toml(sandbox_url: str) -> str:
    """The demo's archives TOML with the sandbox's address filled in."""
    return DEMO_ARCHIVES.read_text().replace("{sandbox}", sandbox_url.rstrip("/"))
