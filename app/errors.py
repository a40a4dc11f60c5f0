"""The one exception hierarchy, and how each error is shown to a clinician or integrator.

Every subclass says what happened and what to do about it. The message is written for the
person in front of the screen; it must never contain a token, a secret or a stack trace.
"""

from __future__ import annotations

import logging

from flask import Flask, jsonify, make_response, render_template, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class AppError(Exception):
    """Base of every error the app raises on purpose."""

    status = 500
    title = "Something went wrong"
    code = "internal-error"

    def __init__(self, message: str, *, log_detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        # Extra detail for the log only (never shown); must already be free of secrets.
        self.log_detail = log_detail


class ConfigError(AppError):
    """A configuration file (launch.json, archives TOML) is invalid; the app refuses to start."""

    title = "Configuration error"
    code = "config-error"


# --- Launch -------------------------------------------------------------------------------------


class LaunchError(AppError):
    """The launch request from the EHR cannot be accepted."""

    status = 400
    title = "This launch cannot be accepted"
    code = "launch-error"


class UnknownIssuer(LaunchError):
    code = "unknown-issuer"


class DiscoveryError(AppError):
    """The EHR's SMART configuration could not be discovered or is unusable."""

    status = 502
    title = "The EHR's SMART configuration is unusable"
    code = "discovery-error"


class StateError(AppError):
    """The OAuth `state` is missing, unknown, replayed or expired."""

    status = 400
    title = "This sign-in link is no longer valid"
    code = "state-error"


class AuthorizationDenied(AppError):
    """The EHR's authorization server returned an error to the callback."""

    status = 403
    title = "The EHR did not authorise the app"
    code = "authorization-denied"


class TokenError(AppError):
    """The token endpoint refused the code or answered with something unusable."""

    status = 502
    title = "The EHR's token endpoint failed"
    code = "token-error"


class IdTokenError(AppError):
    """The OpenID Connect id_token failed verification."""

    status = 401
    title = "The EHR's identity token could not be verified"
    code = "id-token-error"


class SessionExpired(AppError):
    """No valid session: never launched, expired, or the token could not be refreshed."""

    status = 401
    title = "Session expired"
    code = "session-expired"


class CookiesBlocked(AppError):
    """The browser did not keep the session cookie (an embedded app over http, or cookies blocked)."""

    status = 400
    title = "The browser blocked the app's session"
    code = "cookies-blocked"


class CrossSiteRequest(AppError):
    """A state-changing request that did not come from the app's own pages."""

    status = 403
    title = "Request refused"
    code = "cross-site-request"


class PatientMismatch(AppError):
    """A request names a patient other than the one this session was launched for."""

    status = 409
    title = "This window belongs to another patient"
    code = "patient-mismatch"


class StoreUnavailable(AppError):
    """The session store (SQLite file, Redis) cannot be reached; nothing is lost, retry shortly."""

    status = 503
    title = "The session service is unavailable"
    code = "store-unavailable"


# --- FHIR and archives --------------------------------------------------------------------------


class FhirError(AppError):
    """A FHIR server answered with an error or an unusable resource."""

    status = 502
    title = "The EHR's FHIR server failed"
    code = "fhir-error"


class FhirUnauthorized(FhirError):
    status = 401
    title = "The EHR did not accept the app's access"
    code = "fhir-unauthorized"


class FhirAccessDenied(FhirError):
    status = 403
    title = "The EHR refused access"
    code = "fhir-forbidden"


class FhirNotFound(FhirError):
    status = 404
    title = "Not found in the EHR"
    code = "fhir-not-found"


class ArchiveError(AppError):
    """One archive failed; the federation reports it and carries on with the others."""

    status = 502
    title = "An archive failed"
    code = "archive-error"


class ArchiveTimeout(ArchiveError):
    status = 504
    code = "archive-timeout"


class ArchiveAuthError(ArchiveError):
    code = "archive-auth"


class ArchiveResponseError(ArchiveError):
    """The archive answered, but with something we cannot use (bad JSON, wrong shape, too big)."""

    code = "archive-bad-response"


class ArchiveUnavailable(ArchiveError):
    """The archive could not be reached or answered with a server error (5xx); try again later."""

    status = 503
    code = "archive-unavailable"


class ArchiveConfigError(ArchiveError):
    """This archive's configuration cannot be used at request time (e.g. a secret env var is unset)."""

    code = "archive-config"


class ArchiveNotLinked(ArchiveError):
    """The patient has no identifier in this archive's domain, so it is not queried at all."""

    status = 404
    code = "archive-not-linked"


class ResponseTooLarge(AppError):
    """An outbound HTTP answer exceeded its size cap; it was cut and not used."""

    status = 502
    code = "response-too-large"


# --- Reports (the report panel: app/reports.py) ---------------------------------------------------


class ReportNotFound(AppError):
    """No such report for this launch: unknown archive, a report never shown, or gone from the archive."""

    status = 404
    title = "Report not found"
    code = "report-not-found"


class ReportWrongPatient(AppError):
    """The archive's report (or its answer) names another patient: it is withheld, never shown."""

    status = 403
    title = "This report is not this patient's"
    code = "report-wrong-patient"


class ReportUnavailable(AppError):
    """The archive holding the report failed or is busy; `retry_after_s` when it said how long to wait."""

    status = 503
    title = "The report could not be fetched"
    code = "report-unavailable"

    def __init__(self, message: str, *, retry_after_s: int | None = None, log_detail: str | None = None) -> None:
        super().__init__(message, log_detail=log_detail)
        self.retry_after_s = retry_after_s


# --- CDS Hooks ----------------------------------------------------------------------------------


class CdsAuthError(AppError):
    """A CDS client's JWT is missing, unsigned by an allow-listed key, expired, replayed or for another service."""

    status = 401
    title = "CDS client not authenticated"
    code = "cds-unauthenticated"


class CdsForbidden(AppError):
    """The CDS request asks about a patient or FHIR server its credentials do not cover."""

    status = 403
    title = "Not allowed for this patient"
    code = "cds-forbidden"


class CdsRequestError(AppError):
    """The CDS Hooks request body is malformed (CDS Hooks 2.0 §"HTTP Request")."""

    status = 400
    title = "Malformed CDS Hooks request"
    code = "cds-bad-request"


class AuditUnavailable(AppError):
    """The audit trail could not be written, so the access it records is not given (fail closed)."""

    status = 503
    title = "Imaging Timeline cannot record this access"
    code = "audit-unavailable"


class ForbiddenMetrics(AppError):
    """/metrics or the operations page asked for without the token, and not directly from loopback."""

    status = 403
    title = "Not allowed"
    code = "metrics-forbidden"


def _wants_json() -> bool:
    if request.path.startswith(("/api/", "/cds-services")) or request.path in ("/health", "/ready"):
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json"


def _respond(status: int, title: str, message: str, code: str) -> ResponseReturnValue:
    if _wants_json():
        return jsonify({"error": code, "title": title, "message": message}), status
    return render_template("error.html", status=status, title=title, message=message, code=code), status


def register_error_handlers(app: Flask) -> None:
    """Map every AppError (and stray HTTP errors) to a readable page or JSON body."""

    @app.errorhandler(AppError)
    def handle_app_error(exc: AppError) -> ResponseReturnValue:
        log.warning("%s %s -> %s: %s%s", request.method, request.path, exc.code, exc.message,
                    f" ({exc.log_detail})" if exc.log_detail else "")
        resp = make_response(_respond(exc.status, exc.title, exc.message, exc.code))
        if isinstance(exc, StoreUnavailable):
            resp.headers["Retry-After"] = "5"  # RFC 9110 §10.2.3: a temporary outage, try again shortly
        return resp

    @app.errorhandler(HTTPException)
    def handle_http_error(exc: HTTPException) -> ResponseReturnValue:
        return _respond(exc.code or 500, exc.name, exc.description or exc.name, f"http-{exc.code}")

    @app.errorhandler(Exception)
    def handle_unexpected(exc: Exception) -> ResponseReturnValue:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return _respond(500, AppError.title,
                        "The app hit an unexpected problem. Relaunch it from the chart; if this "
                        "keeps happening, tell your administrator the time it happened.",
                        AppError.code)
