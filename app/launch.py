"""SMART EHR and standalone launch: /launch, /callback, and the start page.

SMART App Launch 2.x §"App Launch": discovery, authorize (PKCE S256, state, aud), token
exchange, id_token verification, then a server-side session behind an opaque cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from typing import Any
from urllib.parse import urlsplit

import requests
from flask import Blueprint, Flask, current_app, redirect, render_template, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from .csrf import require_same_origin
from .errors import (
    AppError,
    AuthorizationDenied,
    ConfigError,
    CookiesBlocked,
    LaunchError,
    SessionExpired,
    StateError,
    TokenError,
)
from .fhir import is_fhir_id, read_patient
from .http import OutboundSession, same_origin
from .keys import app_keys
from .models import LaunchContext
from .registration import registration
from .session import (
    COOKIE,
    SmartSession,
    current_session,
    earlier_sessions,
    end_session,
    new_session_id,
    token_record,
)
from .session_store import store
from .smart import (
    Discovery,
    IdTokenVerifier,
    SmartClient,
    SmartConfiguration,
    fhir_user_url,
    get_json,
    new_code_verifier,
    new_state,
    scopes_for,
)

log = logging.getLogger(__name__)
bp = Blueprint("launch", __name__)

BINDING_COOKIE = "itl_launch"
STYLE_KEYS = {
    "color_background", "color_error", "color_highlight", "color_modal_backdrop", "color_success",
    "color_text", "dim_border_radius", "dim_font_size", "dim_spacing_size", "font_family_body",
    "font_family_heading",
}
SAFE_STYLE = {
    "color": re.compile(r"^(#[0-9a-fA-F]{3,8}|rgba?\([0-9.,%\s]+\)|[a-zA-Z]{3,20})$"),
    "dim": re.compile(r"^[0-9.]{1,6}(px|rem|em|%)?$"),
    "font": re.compile(r"^[A-Za-z0-9 ,'\"-]{1,120}$"),
}


def _http() -> requests.Session:
    return current_app.extensions["http"]


def discovery() -> Discovery:
    return current_app.extensions["discovery"]


def redirect_uri() -> str:
    """The registered redirect_uri: launch.json's `redirect_uris` (the one under IMAGING_PUBLIC_URL).

    Never the request's Host header, which the client chooses; only a development app with
    neither `redirect_uris` nor a public URL falls back to its own address (`serve` refuses that).
    """
    uris = [u for u in registration().raw.get("redirect_uris") or () if isinstance(u, str)]
    public = current_app.config.get("PUBLIC_URL")
    if public:
        wanted = public.rstrip("/") + "/callback"
        return wanted if not uris or wanted in uris else next((u for u in uris if same_origin(u, public)), uris[0])
    if uris:
        return uris[0]
    return url_for("launch.callback", _external=True)


def registered_public_url(app: Flask) -> str | None:
    """The app's public address as launch.json registers it: one `redirect_uris` entry ending in /callback.

    With IMAGING_PUBLIC_URL unset, this is the address the EHR sends sign-in answers to, so it is
    the public address (and says whether cookies must be Secure); with several entries it is ambiguous.
    """
    with app.app_context():
        uris = [u for u in registration().raw.get("redirect_uris") or () if isinstance(u, str)]
    if len(uris) == 1 and uris[0].endswith("/callback") and _web_url(uris[0]):
        return uris[0].removesuffix("/callback")
    return None


def require_public_url(app: Flask) -> None:
    """`serve` refuses to start without a public URL (IMAGING_PUBLIC_URL, or launch.json's single
    redirect_uri), or with one launch.json does not register."""
    public = app.config.get("PUBLIC_URL")
    if not public:
        raise ConfigError("Set IMAGING_PUBLIC_URL to the address clinicians' browsers reach Imaging Timeline at "
                          "(e.g. https://timeline.example.org), or register exactly one `redirect_uris` entry in "
                          "launch.json: without either the request's Host header would decide where the EHR sends "
                          "sign-in answers.")
    with app.app_context():
        uris = registration().raw.get("redirect_uris") or []
    wanted = public.rstrip("/") + "/callback"
    if uris and wanted not in uris:
        raise ConfigError(f"IMAGING_PUBLIC_URL is {public}, but launch.json `redirect_uris` does not list "
                          f"{wanted}; add it there (and in the EHR's registration of the app).")


def smart_client_for(iss: str, config: SmartConfiguration | None = None) -> SmartClient:
    reg = registration().issuer(iss)
    return SmartClient(reg, config or discovery()(reg.iss), app_keys(), redirect_uri=redirect_uri(),
                       timeout=current_app.config["HTTP_TIMEOUT_S"], pool=current_app.extensions["http_pool"])


def _secure() -> bool:
    return request.is_secure or str(current_app.config.get("PUBLIC_URL") or "").startswith("https://")


def _cookie_args() -> dict[str, Any]:
    # Inside an EHR iframe on another site the cookie is third-party: it needs SameSite=None;
    # Secure, and Partitioned (CHIPS) to survive browsers that block unpartitioned ones.
    if _secure():
        return {"httponly": True, "secure": True, "samesite": "None", "partitioned": True, "path": "/"}
    return {"httponly": True, "secure": False, "samesite": "Lax", "path": "/"}


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@bp.get("/")
def start() -> str:
    """Standalone launch start page: pick a registered EHR (or type its FHIR address)."""
    issuers = [r for r in registration().issuers if r.match == "exact" and "standalone" in r.launch_types]
    return render_template("start.html", issuers=issuers)


@bp.get("/launch")
def launch() -> BaseResponse:
    iss = request.args.get("iss", "").strip()
    if not iss:
        raise LaunchError("The launch request has no `iss` (the EHR's FHIR address). Open Imaging Timeline "
                          "from the patient's chart, or choose your EHR on the start page.")
    reg = registration().issuer(iss)  # allow-list first: nothing is fetched from an unknown iss
    launch_token = request.args.get("launch")
    if launch_token is not None and not launch_token.strip():
        raise LaunchError("The launch request has an empty `launch` parameter. Relaunch from the chart.")
    kind = "ehr" if launch_token else "standalone"
    if kind not in reg.launch_types:
        if kind == "standalone":
            raise LaunchError(f"The EHR at {reg.iss} is registered for launch from the chart only, and this "
                              "request has no `launch` parameter. Open Imaging Timeline from the patient's "
                              "chart in the EHR.")
        raise LaunchError(f"The EHR at {reg.iss} is registered for standalone launch only.")
    config = discovery()(reg.iss)
    scope = reg.scope if kind == "ehr" else registration().standalone_scope
    if kind == "standalone":
        scope = " ".join(s for s in scope.split() if s != "launch")
        if "launch/patient" not in scope.split():
            scope = "launch/patient " + scope
    scope = scopes_for(scope, config)
    state, verifier, binding = new_state(), new_code_verifier(), secrets.token_urlsafe(24)
    nonce = secrets.token_urlsafe(16) if "openid" in scope.split() else None
    client = smart_client_for(reg.iss, config)
    url = client.authorize_url(scope=scope, state=state, code_verifier=verifier, launch=launch_token, nonce=nonce)
    # The pending launch is keyed by `state` server-side: it survives an iframe that drops cookies.
    # Two bindings tie the callback to this browser (login CSRF, finding 1): the HttpOnly cookie,
    # and, for a browser (a navigation, per Fetch Metadata), a value the launch page keeps in this
    # frame's sessionStorage, which survives where an embedded app's cookies do not.
    frame_binding = secrets.token_urlsafe(24) if request.headers.get("Sec-Fetch-Mode") == "navigate" else None
    store().put(f"pending:{state}", {
        "iss": reg.iss, "kind": kind, "scope": scope, "code_verifier": verifier, "nonce": nonce,
        "binding": _digest(binding), "frame_binding": _digest(frame_binding) if frame_binding else None,
        "created": time.time(),
    }, current_app.config["PENDING_LAUNCH_TTL_S"])
    log.info("launch: %s launch for %s, redirecting to authorize", kind, reg.iss)
    resp: BaseResponse
    if frame_binding:
        resp = current_app.make_response(render_template(
            "launch.html", authorize_url=url, launch_config={"state": state, "binding": frame_binding,
                                                             "authorize": url}))
    else:
        resp = redirect(url, code=302)
    resp.set_cookie(BINDING_COOKIE, binding, max_age=int(current_app.config["PENDING_LAUNCH_TTL_S"]),
                    **_cookie_args())
    return resp


NOT_BOUND = ("This sign-in answer cannot be tied to a launch started in this browser window: the app's launch "
             "cookie did not come back and this window holds no record of the launch. It was not accepted and no "
             "session was started. Relaunch Imaging Timeline from the patient's chart.")


def _pending(state: str | None, *, take: bool) -> dict[str, Any]:
    """The pending launch for `state` (taken atomically when `take`), or StateError saying why not."""
    if not state:
        raise StateError("The EHR's answer has no `state`, so it cannot be matched to a launch. Relaunch "
                         "Imaging Timeline from the patient's chart.")
    pending = store().take(f"pending:{state}") if take else store().get(f"pending:{state}")
    if pending is None:
        if store().get(f"used:{_digest(state)}"):
            raise StateError("This sign-in answer was already used. Relaunch Imaging Timeline from the "
                             "patient's chart.")
        raise StateError("This sign-in answer is unknown or has expired (a launch must finish within "
                         f"{int(current_app.config['PENDING_LAUNCH_TTL_S'] / 60)} minutes). Relaunch Imaging "
                         "Timeline from the patient's chart.")
    if take:
        store().put(f"used:{_digest(state)}", {"t": time.time()}, 3600)
    return pending


def _matches(value: str | None, digest: str | None) -> bool:
    return bool(value and digest) and hmac.compare_digest(_digest(value or ""), digest or "")


@bp.get("/callback")
def callback() -> BaseResponse:
    try:
        return _callback()
    except AppError as exc:
        if not request.args:
            raise
        return _clean_error(exc)


def _clean_error(exc: AppError) -> BaseResponse:
    """Show a failed callback at a clean address: the code, state and EHR text leave the address bar."""
    log.warning("%s %s -> %s: %s%s", request.method, request.path, exc.code, exc.message,
                f" ({exc.log_detail})" if exc.log_detail else "")
    ref = secrets.token_urlsafe(16)
    store().put(f"error:{ref}", {"status": exc.status, "title": exc.title, "message": exc.message,
                                 "code": exc.code}, 600)
    return redirect(url_for("launch.sign_in_failed", ref=ref), code=303)


@bp.get("/sign-in-failed/<ref>")
def sign_in_failed(ref: str) -> tuple[str, int]:
    failed = store().get(f"error:{ref[:64]}")
    if failed is None:
        raise StateError("This sign-in failed earlier; the details are no longer kept. Relaunch Imaging Timeline "
                         "from the patient's chart.")
    return render_template("error.html", status=failed["status"], title=failed["title"], message=failed["message"],
                           code=failed["code"]), int(failed["status"])


def _callback() -> BaseResponse:
    error = request.args.get("error")
    state = request.args.get("state")
    if error:
        _ehr_error(error, state)
    pending = _pending(state, take=False)
    cookie = request.cookies.get(BINDING_COOKIE)
    if _matches(cookie, pending["binding"]):
        return _complete(_pending(state, take=True), request.args.get("code"))
    if pending.get("frame_binding"):
        # The cookie did not survive (an embedded app over http, or cookies blocked in frames): the
        # callback page returns the value the launch page left in this frame's sessionStorage.
        resp = current_app.make_response(render_template(
            "callback.html", state=state, code=request.args.get("code") or ""))
        return resp
    _pending(state, take=True)  # refused answers are not retried
    if cookie:
        raise StateError("This sign-in answer belongs to a launch started in another browser window. "
                         "Relaunch Imaging Timeline from the patient's chart.")
    raise StateError(NOT_BOUND)


@bp.post("/callback")
def callback_from_frame() -> BaseResponse:
    """The callback page's answer: state, code and the frame's sessionStorage binding."""
    require_same_origin()
    state = request.form.get("state")
    pending = _pending(state, take=True)
    if not _matches(request.form.get("binding"), pending.get("frame_binding")):
        if request.form.get("storage") == "blocked":
            raise _cookies_blocked(storage_too=True)
        raise StateError(NOT_BOUND)
    return _complete(pending, request.form.get("code"), via_frame=True)


def _ehr_error(error: str, state: str | None) -> None:
    """The authorization server's error answer (RFC 6749 §4.1.2.1), shown only for this browser's launch."""
    pending = store().take(f"pending:{state}") if state else None
    if pending is None:
        # Anyone can link to /callback?error=...: without a launch of ours, show none of its text.
        raise StateError("This sign-in answer does not belong to a launch in progress. Relaunch Imaging Timeline "
                         "from the patient's chart.", log_detail=f"error={error[:80]} without a pending launch")
    # The EHR's words only where the answer is bound to this browser's launch (its launch cookie):
    # an attacker's own pending launch must not carry their text onto the app's origin.
    ours = _matches(request.cookies.get(BINDING_COOKIE), pending["binding"])
    code = error if ERROR_CODE.fullmatch(error) else "an unrecognised error"
    description = request.args.get("error_description", "")[:300] if ours else ""
    if error == "access_denied":
        message = "Access to this patient's imaging was declined at sign-in. Relaunch from the chart and " \
                  "approve access to continue."
    else:
        message = f"The EHR's sign-in answered `{code}`. Ask your administrator to check the app's " \
                  "registration."
    if description:
        message += f" The EHR's own words (not checked by Imaging Timeline): \u201c{description}\u201d"
    raise AuthorizationDenied(message, log_detail=f"error={code}" + ("" if ours else " (not this browser's launch)"))


ERROR_CODE = re.compile(r"[a-z_]{1,40}")  # RFC 6749 §4.1.2.1 error codes


def _complete(pending: dict[str, Any], code: str | None, *, via_frame: bool = False) -> BaseResponse:
    """Exchange the code, verify the answer, read the patient and start the session."""
    if not code:
        raise StateError("The EHR's answer has no authorization `code`. Relaunch from the chart.")
    iss = pending["iss"]
    config = discovery()(iss)
    client = smart_client_for(iss, config)
    answer = client.exchange_code(code, pending["code_verifier"])
    requested = set(pending["scope"].split())
    granted = set(str(answer.get("scope") or pending["scope"]).split())  # RFC 6749 §5.1: absent = as asked

    patient_id = answer.get("patient")
    wants_patient = bool(requested & {"launch", "launch/patient"})
    if wants_patient and not patient_id:
        raise TokenError("The EHR did not say which patient this launch is for (no `patient` in its token "
                         "response). Open Imaging Timeline from a patient's chart.")
    if patient_id is not None and not is_fhir_id(patient_id):
        raise TokenError("The EHR's launch context names a patient with an invalid id. Tell your administrator.")

    claims: dict[str, Any] = {}
    if "openid" in requested and answer.get("id_token"):
        claims = current_app.extensions["id_tokens"].verify(
            answer["id_token"], config, client.reg.client_id, pending.get("nonce"))
    elif "openid" in granted and not answer.get("id_token"):
        log.info("callback: openid granted but no id_token; fhirUser unknown")

    context = LaunchContext(
        iss=iss, patient_id=patient_id, granted_scopes=frozenset(granted),
        encounter_id=answer.get("encounter") if isinstance(answer.get("encounter"), str) else None,
        fhir_context=_fhir_context(answer.get("fhirContext")),
        # Absent need_patient_banner: show the banner (the safe default).
        need_patient_banner=answer.get("need_patient_banner", True) is not False,
        smart_style_url=answer["smart_style_url"] if _style_url_allowed(answer.get("smart_style_url"), iss) else None,
        intent=answer.get("intent") if isinstance(answer.get("intent"), str) else None,
        tenant=answer.get("tenant") if isinstance(answer.get("tenant"), str) else None,
        fhir_user=fhir_user_url(claims.get("fhirUser"), iss),
        launch_kind=pending["kind"],
    )
    token = token_record(answer)
    if patient_id is None:
        raise LaunchError("This launch has no patient in context; Imaging Timeline shows one patient's imaging. "
                          "Open it from a patient's chart.")
    patient = read_patient(_http(), iss, patient_id, token["access_token"],
                           timeout=current_app.config["HTTP_TIMEOUT_S"])
    session = SmartSession(id=new_session_id(), context=context, patient=patient, token=token,
                           style=_load_style(context.smart_style_url), earlier=earlier_sessions())
    session.save()
    log.info("callback: session started (%s launch, %d scopes granted)", context.launch_kind, len(granted))
    # After the frame binding, check that the session cookie came back before showing the timeline.
    target = url_for("launch.signed_in", check=_digest(session.id)[:24]) if via_frame else url_for("timeline.timeline")
    resp = redirect(target, code=303)
    resp.set_cookie(COOKIE, session.id, max_age=int(current_app.config["SESSION_TTL_S"]) + 60, **_cookie_args())
    resp.delete_cookie(BINDING_COOKIE, path="/")
    return resp


@bp.post("/logout")
def logout() -> BaseResponse:
    """End this browser's session: the record (tokens) is deleted server-side, the cookie cleared."""
    require_same_origin()
    sid = request.cookies.get(COOKIE)
    if sid:
        end_session(sid)
    resp = current_app.make_response(render_template("signed_out.html"))
    resp.delete_cookie(COOKIE, path="/")
    return resp


@bp.get("/signed-in/<check>")
def signed_in(check: str) -> BaseResponse:
    """After a frame-bound sign-in: the timeline if *that* session's cookie came back, else why not.

    `check` names the session just started (a digest, not the id): an older session cookie this
    browser still sends must not show its patient in place of the one just launched.
    """
    try:
        session = current_session()
    except SessionExpired:
        raise _cookies_blocked(storage_too=False) from None
    if not hmac.compare_digest(_digest(session.id)[:24], check[:24]):
        raise _cookies_blocked(storage_too=False)
    return redirect(url_for("timeline.timeline"), code=303)


def _cookies_blocked(*, storage_too: bool) -> CookiesBlocked:
    """Why an embedded app cannot keep a session here, and what to do: relaunching cannot help."""
    over_http = not _secure()
    return CookiesBlocked(
        ("The browser keeps neither cookies nor storage for Imaging Timeline inside the EHR's page, so the "
         "sign-in cannot finish here and no session was started. " if storage_too else
         "Imaging Timeline signed in, but the browser did not keep its session cookie, so it cannot show the "
         "patient's imaging here. ")
        + ("The EHR shows the app inside its own page over plain http, and browsers keep an embedded app's "
           "cookies only over https. " if over_http else
           "This browser blocks cookies for apps embedded in another site's page. ")
        + "Open Imaging Timeline in a new window from the chart, or ask your administrator to serve it over "
          "https" + (" (IMAGING_PUBLIC_URL=https://…)." if over_http else "."),
        log_detail="no cookie (and no frame storage)" if storage_too else "session cookie absent after sign-in")


def _web_url(value: Any) -> bool:
    return isinstance(value, str) and urlsplit(value).scheme in {"http", "https"} and bool(urlsplit(value).hostname)


def _style_url_allowed(value: Any, iss: str) -> bool:
    """smart_style_url is fetched only from the issuer's origin or an IMAGING_STYLE_ORIGINS origin."""
    if not _web_url(value):
        return False
    allowed = [iss, *(o.strip() for o in str(current_app.config.get("STYLE_ORIGINS") or "").split(",") if o.strip())]
    if any(same_origin(value, origin) for origin in allowed):
        return True
    log.info("smart_style_url on another origin than the EHR's; not fetched (IMAGING_STYLE_ORIGINS allows more)")
    return False


def _fhir_context(value: Any) -> tuple[str, ...]:
    """SMART 2.0 `fhirContext`: a list of {"reference": ...} (2.0 also allowed plain strings).

    SMART 2.1 also allows `{"type": "ImagingStudy", "identifier": {"system": "urn:dicom:uid",
    "value": "urn:oid:<UID>"}}`: kept as `ImagingStudy/<UID>` (the timeline matches it by UID).
    """
    refs = []
    for item in value if isinstance(value, list) else ():
        ref = item.get("reference") if isinstance(item, dict) else item
        ident = item.get("identifier") if isinstance(item, dict) else None
        if ref is None and item.get("type") == "ImagingStudy" and isinstance(ident, dict) \
                and ident.get("system") == "urn:dicom:uid" and isinstance(ident.get("value"), str):
            ref = "ImagingStudy/" + ident["value"].removeprefix("urn:oid:")
        if isinstance(ref, str) and re.fullmatch(r"[A-Za-z]+/[A-Za-z0-9\-.]{1,64}", ref):
            refs.append(ref)
    return tuple(refs)


def _load_style(url: str | None) -> dict[str, str] | None:
    """Fetch the EHR's smart_style_url; keep only values that are plainly colours, sizes or fonts."""
    if not url:
        return None
    try:
        status, doc = get_json(_http(), url, timeout=min(3.0, current_app.config["HTTP_TIMEOUT_S"]),
                               max_bytes=64 * 1024)
    except (requests.RequestException, ValueError):
        log.info("smart_style_url could not be fetched; using the default style")
        return None
    if status != 200 or not isinstance(doc, dict):
        return None
    style = {}
    for key in STYLE_KEYS & doc.keys():
        value = doc[key]
        kind = "color" if key.startswith("color") else "dim" if key.startswith("dim") else "font"
        if isinstance(value, str | int | float) and SAFE_STYLE[kind].match(str(value)):
            style[key] = str(value) + ("px" if kind == "dim" and str(value).replace(".", "").isdigit() else "")
    return style or None


def init_app(app: Flask) -> None:
    if not app.config.get("PUBLIC_URL"):
        app.config["PUBLIC_URL"] = registered_public_url(app)
    http = OutboundSession()
    http.headers["User-Agent"] = "imaging-timeline/0.1"
    pool = requests.adapters.HTTPAdapter(pool_connections=16, pool_maxsize=32)
    http.mount("https://", pool)
    http.mount("http://", pool)
    app.extensions["http"] = http
    app.extensions["http_pool"] = pool
    app.extensions["discovery"] = Discovery(http, timeout=app.config["HTTP_TIMEOUT_S"],
                                            ttl_s=app.config["DISCOVERY_TTL_S"])
    app.extensions["id_tokens"] = IdTokenVerifier(http, timeout=app.config["HTTP_TIMEOUT_S"])

