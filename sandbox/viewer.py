"""A tiny stand-in for an OHIF viewer, so the demo's "open in viewer" shows real rendered images.

It answers OHIF v3's URL shapes and lays the studies side by side (current and prior), each
series as a rendered image. It is not a diagnostic viewer and says so.

* `/viewer/ohif/viewer?StudyInstanceUIDs=<uid>[,<uid>]`: straight from the sandbox archive.
* `/viewer/ohif/viewer/dicomwebproxy?url=<config>&studyInstanceUIDs=…`: like OHIF's `dicomwebproxy`
  data source, it reads `servers.dicomWeb[0]` from `url` (the app's gateway, same origin only)
  and asks that DICOMweb service for everything: QIDO-RS for the studies and series, WADO-RS
  rendered for the images, which the browser then fetches from the gateway too.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import requests
from flask import Blueprint, render_template, request, url_for

from .runtime import runtime

DICOM_JSON = "application/dicom+json"

bp = Blueprint("viewer", __name__, url_prefix="/viewer/ohif")


@bp.get("/viewer")
def viewer():
    rt = runtime()
    uids = [u for u in request.args.get("StudyInstanceUIDs", "").split(",") if u][:4]
    studies = [{
        "uid": study.uid, "description": study.description, "accession": study.accession,
        "date": study.started.date().isoformat(), "modalities": study.modalities,
        "series": [{"modality": series.modality, "description": series.description, "instances": series.instances,
                    "rendered": url_for("dicomweb.series_rendered", study_uid=study.uid, series_uid=series.uid)
                                + "?viewport=256,256"} for series in study.series],
    } for study in (rt.pacs_by_uid[u] for u in uids if u in rt.pacs_by_uid)]
    if not studies:
        return render_template("sandbox/error.html", status=404, title="No such study",
                               message="None of the requested studies is in the sandbox archive."), 404
    return render_template("sandbox/viewer.html", studies=studies, via=None)


def _first(item: dict[str, Any], tag: str) -> str:
    values = (item.get(tag) or {}).get("Value") or [""]
    value = values[0]
    return str(value.get("Alphabetic", "") if isinstance(value, dict) else value)


def _all(item: dict[str, Any], tag: str) -> list[str]:
    return [str(v) for v in (item.get(tag) or {}).get("Value") or []]


@bp.get("/viewer/dicomwebproxy")
def viewer_via_gateway():
    rt = runtime()
    config_url = request.args.get("url", "")
    asked = request.args.get("studyInstanceUIDs") or request.args.get("StudyInstanceUIDs") or ""
    uids = [u for u in re.split(r"[;,]", asked) if u][:4]  # OHIF's dicomwebproxy: ";"-separated
    here = urlsplit(request.host_url)
    if urlsplit(config_url).netloc != here.netloc or not uids:
        return render_template("sandbox/error.html", status=400, title="Not a gateway link",
                               message="The viewer needs url= naming a DICOMweb configuration on this host, "
                                       "and StudyInstanceUIDs."), 400
    try:
        config = rt.http.get(config_url, timeout=10).json()["servers"]["dicomWeb"][0]
        base = config["qidoRoot"]
        found = rt.http.get(f"{base}/studies", params={"StudyInstanceUID": ",".join(uids),
                                                       "includefield": "StudyDescription"},
                            headers={"Accept": DICOM_JSON}, timeout=10)
        found.raise_for_status()
        studies: list[dict[str, Any]] = []
        for item in found.json():
            uid = _first(item, "0020000D")
            series = rt.http.get(f"{base}/studies/{uid}/series", headers={"Accept": DICOM_JSON}, timeout=10)
            series.raise_for_status()
            date = _first(item, "00080020")
            studies.append({
                "uid": uid, "description": _first(item, "00081030"), "accession": _first(item, "00080050"),
                "date": f"{date[:4]}-{date[4:6]}-{date[6:]}" if len(date) == 8 else date,
                "modalities": _all(item, "00080061"),
                "series": [{"modality": _first(s, "00080060"), "description": _first(s, "0008103E"),
                            "instances": _first(s, "00201209"),
                            "rendered": f"{config['wadoRoot']}/studies/{uid}/series/{_first(s, '0020000E')}"
                                        "/rendered?viewport=256,256"} for s in series.json()],
            })
    except (requests.RequestException, ValueError, KeyError, IndexError, TypeError):
        return render_template("sandbox/error.html", status=502, title="The gateway did not answer",
                               message="The DICOMweb gateway refused or failed; open the study again from the "
                                       "timeline."), 502
    if not studies:
        return render_template("sandbox/error.html", status=404, title="No such study",
                               message="None of the requested studies is served by this gateway."), 404
    order = {u: n for n, u in enumerate(uids)}
    studies.sort(key=lambda s: order.get(str(s["uid"]), len(order)))
    return render_template("sandbox/viewer.html", studies=studies, via="gateway")
