"""SMART discovery documents: ``.well-known/smart-configuration``, OpenID configuration, style."""

from __future__ import annotations

from typing import Any

from flask import url_for

from .runtime import SandboxRuntime, dicomweb_base, fhir_base, outside_base, token_url

# SMART App Launch 2.x, section "Capability sets".
CAPABILITIES = ("launch-ehr", "launch-standalone", "client-public", "client-confidential-symmetric",
                "client-confidential-asymmetric", "context-ehr-patient", "context-ehr-encounter",
                "context-standalone-patient", "sso-openid-connect", "permission-patient", "permission-user",
                "permission-offline", "permission-online", "context-banner", "context-style", "authorize-post")
IMAGING_CAPABILITY = "smart-imaging-access"  # Argonaut SMART Imaging Access (draft)

STYLE = {
    "color_background": "#edeae3",
    "color_error": "#9e2d2d",
    "color_highlight": "#69b5ce",
    "color_modal_backdrop": "",
    "color_success": "#498e49",
    "color_text": "#303030",
    "dim_border_radius": "6px",
    "dim_font_size": "13px",
    "dim_spacing_size": "20px",
    "font_family_body": "Georgia, Times, 'Times New Roman', serif",
    "font_family_heading": "'HelveticaNeue-Light', Helvetica, Arial, 'Lucida Grande', sans-serif",
}


def smart_configuration(rt: SandboxRuntime, kind: str) -> dict[str, Any]:
    """The EHR's full document, or the outside facility's backend-services-only one."""
    jwks_uri = url_for("auth.jwks", _external=True)
    if kind == "outside":
        return {
            "issuer": outside_base(), "jwks_uri": jwks_uri, "token_endpoint": token_url(),
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
            "scopes_supported": [s for s in rt.scopes_supported if s.startswith("system/")],
            "capabilities": ["client-confidential-asymmetric",
                             "permission-v1" if rt.config.smart_versions == "v1" else "permission-v2"],
        }
    version = "permission-v1" if rt.config.smart_versions == "v1" else "permission-v2"
    doc: dict[str, Any] = {
        "issuer": fhir_base(),
        "jwks_uri": jwks_uri,
        "authorization_endpoint": url_for("auth.authorize", _external=True),
        "token_endpoint": token_url(),
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "scopes_supported": list(rt.scopes_supported),
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": [*CAPABILITIES, version],
    }
    if rt.config.advertise_imaging_endpoints:
        doc["associated_endpoints"] = [{"url": dicomweb_base(), "capabilities": [IMAGING_CAPABILITY]}]
    return doc


def openid_configuration(rt: SandboxRuntime) -> dict[str, Any]:
    """OpenID Connect discovery at the FHIR base, since the id_token `iss` is the FHIR base."""
    return {
        "issuer": fhir_base(),
        "jwks_uri": url_for("auth.jwks", _external=True),
        "authorization_endpoint": url_for("auth.authorize", _external=True),
        "token_endpoint": token_url(),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "fhirUser", "profile"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nonce", "fhirUser"],
    }
