"""The sandbox EHR's own pages: the chart (patient list + app iframe), the EHR launch, patients JSON, style."""

from __future__ import annotations

import json
import re
import secrets
from urllib.parse import urlencode

import requests
from flask import Blueprint, jsonify, redirect, render_template, request, url_for

from . import cds_client
from .data import MRN_SYSTEM, OUTSIDE_SYSTEM, PRACTITIONER_ID
from .runtime import fhir_base, runtime
from .smart import STYLE
from .store import LaunchRecord

bp = Blueprint("chart", __name__)
FHIR_CONTEXT = re.compile(r"^[A-Z][A-Za-z]{1,40}/[A-Za-z0-9\-.]{1,64}$")
INTENTS = re.compile(r"^[a-z][a-z0-9\-_]{0,40}$")


def _page_error(status: int, title: str, message: str):
    return render_template("sandbox/error.html", status=status, title=title, message=message), status


@bp.get("/")
def chart():
    """The EHR chart: pick a patient and the app opens in the embedded frame (EHR launch)."""
    rt = runtime()
    selected = request.args.get("patient")
    if selected is not None and rt.data.patient(selected) is None:
        return _page_error(404, "No such patient", "That patient is not in this sandbox EHR.")
    standalone = f"{rt.config.app_launch_url}?{urlencode({'iss': fhir_base()})}"
    return render_template("sandbox/chart.html", patients=rt.data.patients, selected=selected,
                           standalone_url=standalone, cds_enabled=cds_client.services_url() is not None)


@bp.get("/cds/panel")
def cds_panel():
    """The chart's decision-support panel (its own frame, so the chart never waits for the CDS service).

    As an EHR does: patient-view when the chart opens, order-select when an order is drafted.
    """
    rt = runtime()
    selected = request.args.get("patient", "")
    if rt.data.patient(selected) is None:
        return _page_error(404, "No such patient", "That patient is not in this sandbox EHR.")
    draft = (request.args.get("draft") or "").strip()[:120] or None
    patient_cards = _cards("patient-view", selected)
    order_cards = _cards("order-select", selected, draft) if draft else None
    return render_template("sandbox/cds_panel.html", selected=selected, patient_cards=patient_cards,
                           order_cards=order_cards, draft=draft, cancelled=request.args.get("cancelled") == "1")


def _cards(hook: str, patient_id: str, code: str | None = None) -> dict:
    """{"cards": [...], "service": id} from the app's CDS service, or {"error": ...} (the chart still opens)."""
    try:
        status, answer, sent = cds_client.call(hook, patient_id, code)
    except cds_client.CdsCallError as exc:
        return {"error": exc.message, "cards": []}
    except requests.RequestException as exc:
        return {"error": f"The CDS service could not be reached ({type(exc).__name__}).", "cards": []}
    if status != 200 or not isinstance(answer, dict):
        return {"error": f"The CDS service answered HTTP {status}.", "cards": []}
    cards = [c for c in answer.get("cards", []) if isinstance(c, dict)]
    for card in cards:
        for link in card.get("links", []):
            link["href"] = _launch_href(patient_id, link)
    return {"cards": cards, "service": sent["service"]}


def _launch_href(patient_id: str, link: dict) -> str:
    """A SMART link opens the app through this EHR's launch; its appContext's fhirContext goes along."""
    if link.get("type") != "smart":
        return str(link.get("url", ""))
    refs: list[str] = []
    try:
        context = json.loads(link.get("appContext") or "{}")
        refs = [r for r in context.get("fhirContext", []) if isinstance(r, str) and FHIR_CONTEXT.match(r)]
    except (ValueError, AttributeError):
        refs = []
    return url_for("chart.launch", patient=patient_id, embedded=1, fhir_context=",".join(refs) or None)


@bp.get("/launch")
def launch():
    """EHR launch: remember the context under an opaque id and send the browser to the app."""
    rt = runtime()
    patient = rt.data.patient(request.args.get("patient", ""))
    if patient is None:
        return _page_error(404, "No such patient", "That patient is not in this sandbox EHR.")
    fhir_context = tuple(v for v in request.args.get("fhir_context", "").split(",") if v)
    if any(not FHIR_CONTEXT.match(ref) for ref in fhir_context):
        return _page_error(400, "Bad launch", "fhir_context must be references such as ImagingStudy/abc.")
    intent = request.args.get("intent") or None
    if intent is not None and not INTENTS.match(intent):
        return _page_error(400, "Bad launch", "intent must be a short lower-case word.")
    record = LaunchRecord(
        id=secrets.token_urlsafe(24), patient_id=patient.id, practitioner_id=PRACTITIONER_ID,
        created_at=rt.clock(), encounter_id=patient.encounter_id,
        need_patient_banner=request.args.get("embedded") != "1", style=request.args.get("style") == "1",
        intent=intent, fhir_context=fhir_context, tenant=request.args.get("tenant") or None)
    rt.store.add_launch(record)
    return redirect(f"{rt.config.app_launch_url}?{urlencode({'iss': fhir_base(), 'launch': record.id})}", 302)


@bp.get("/patients")
def patients():
    """The sandbox patients as JSON (for tests and the demo's own pickers)."""
    rows = []
    for p in runtime().data.patients:
        identifiers = [{"system": MRN_SYSTEM, "value": p.mrn}]
        if p.outside_mrn and p.outside_mrn_in_ehr:  # as the EHR's Patient lists them
            identifiers.append({"system": OUTSIDE_SYSTEM, "value": p.outside_mrn})
        rows.append({"id": p.id, "name": p.name, "birthDate": p.birth_date.isoformat(), "gender": p.gender,
                     "identifiers": identifiers, "launch_url": url_for("chart.launch", patient=p.id, _external=True)})
    return jsonify(rows)


@bp.get("/smart-style.json")
def smart_style():
    """The EHR's style document (SMART App Launch 2.x, "Styling")."""
    return jsonify(STYLE)
