"""Viewer links: where "Open images" goes for a study, per archive and viewer kind.

An archive's `[archive.viewer]` table names one viewer:

* ``ohif``: OHIF v3, ``{url}/viewer?StudyInstanceUIDs=<uid>``. OHIF v3 also accepts a
  comma-separated list, so the timeline can open the current study beside a prior.
* ``iid``: IHE Invoke Image Display (RAD-106), study-based: ``{url}?requestType=STUDY&studyUID=<uid>``
  plus ``patientID`` when known, encoded as an HL7 v2 CX value with its assigning authority
  (``value^^^&<oid>&ISO`` for an OID, ``value^^^<namespace>`` otherwise). IID has no separate issuer
  parameter; the authority travels inside ``patientID``.
* ``weasis``: the Weasis URI scheme (Weasis >= 3.6): ``weasis://`` + the URL-encoded command
  ``$dicom:rs --url "<DICOMweb base>" -r "studyUID=<uid>"``. The base is ``dicomweb_url``, else the
  archive's own DICOMweb address.
* ``url``: a template with ``{study_uid}``, ``{accession}``, ``{patient_id}`` and ``{issuer}``; each
  value is percent-encoded. Any other placeholder is a configuration error (`validate_viewer`).

Per archive, ``via`` chooses where the viewer fetches images (`[archive.viewer] via`):

* ``direct`` (the default): from the archive itself, as above.
* ``gateway``: from the app's patient-scoped DICOMweb gateway (app/gateway.py), whose absolute base
  ``…/dicomweb/<capability>`` the link carries as ``gateway``. OHIF v3 opens it with its released
  ``dicomwebproxy`` data source, which reads a DICOMweb configuration from a URL:
  ``{url}/viewer/dicomwebproxy?url=<gateway>/ohif-config.json&studyInstanceUIDs=<uid>[;<prior>]`` (verified
  with @ohif/app 3.12 in tests/test_ohif.py); Weasis gets the gateway as its ``--url``; a ``url``
  template may use ``{gateway}``. IID has no DICOMweb parameter (the IID viewer fetches from its
  own PACS), so ``via = "gateway"`` is refused for it. Without a gateway base no link is made: a
  gateway viewer never falls back to the archive's address.

A StudyInstanceUID that is not a DICOM UID (digits and dots, at most 64 characters) gets no link:
a hostile archive could otherwise smuggle arguments into a viewer command line.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

from .errors import ConfigError
from .models import Study

log = logging.getLogger(__name__)

KINDS = ("ohif", "iid", "weasis", "url")
PLACEHOLDERS = ("study_uid", "accession", "patient_id", "issuer")
GATEWAY_PLACEHOLDERS = ("gateway",)  # only with via = "gateway"
GATEWAY_KINDS = ("ohif", "weasis", "url")
OHIF_GATEWAY_CONFIG = "/ohif-config.json"  # app/gateway.py serves it below each capability
LABELS = {"ohif": "Web viewer", "iid": "PACS viewer", "weasis": "Weasis", "url": "Viewer"}
PRIOR_PLACEHOLDER = "{prior_uid}"  # in compare_url_template; the browser fills it in
DICOM_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_TOKEN = re.compile(r"\{([^{}]*)\}")


def _get(viewer: Mapping[str, Any] | Any, key: str) -> Any:
    if isinstance(viewer, Mapping):
        return viewer.get(key)
    return getattr(viewer, key, None)


def _q(value: str | None) -> str:
    return quote(value or "", safe="")


def is_dicom_uid(uid: str) -> bool:
    """PS3.5 §9.1: components of digits without leading zeros, separated by dots, at most 64 chars."""
    return len(uid) <= 64 and bool(DICOM_UID.match(uid))


def validate_viewer(viewer: Mapping[str, Any] | Any, archive_id: str) -> None:
    """Check one archive's viewer table at start-up; ConfigError naming the archive and key if unusable."""
    where = f'archive "{archive_id}": viewer'
    kind = _get(viewer, "kind")
    if kind not in KINDS:
        raise ConfigError(f'{where}.kind must be one of {", ".join(KINDS)} (got "{kind}")')
    url = _get(viewer, "url")
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f'{where}.url is missing; give the address of the {LABELS[kind].lower()}')
    via = _get(viewer, "via") or "direct"
    if via == "gateway" and kind not in GATEWAY_KINDS:
        raise ConfigError(f'{where}.via "gateway" is not possible for viewer kind "{kind}" (it fetches images '
                          f'from its own PACS); use via = "direct", or a viewer of kind {", ".join(GATEWAY_KINDS)}')
    names = PLACEHOLDERS + (GATEWAY_PLACEHOLDERS if via == "gateway" else ())
    unknown = [name for name in _TOKEN.findall(url) if name not in names]
    if kind == "url" and unknown:
        if unknown[0] in GATEWAY_PLACEHOLDERS:
            raise ConfigError(f'{where}.url uses {{{unknown[0]}}}, which needs via = "gateway"')
        allowed = ", ".join("{" + p + "}" for p in names)
        raise ConfigError(f"{where}.url uses {{{unknown[0]}}}, which is not a viewer placeholder; use {allowed}")
    if kind != "url" and _TOKEN.search(url):
        raise ConfigError(f'{where}.url has a {{placeholder}}, but only viewer kind "url" takes a template')
    probe = _TOKEN.sub("x", url) if kind == "url" else url
    _http_url(probe, f"{where}.url")
    dicomweb = _get(viewer, "dicomweb_url")
    if dicomweb is not None:
        if kind != "weasis":
            raise ConfigError(f'{where}.dicomweb_url is only used by viewer kind "weasis"')
        _http_url(dicomweb, f"{where}.dicomweb_url")
        if re.search(r'[\s"]', dicomweb):
            raise ConfigError(f"{where}.dicomweb_url must not contain spaces or quotes")


def _http_url(value: Any, key: str) -> None:
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ConfigError(f'{key} must be an http(s) URL (got "{value}")')


def cx_patient_id(value: str, issuer: str | None) -> str:
    """HL7 v2 CX for IID `patientID`: `value^^^&<oid>&ISO` (urn:oid: issuer) or `value^^^<issuer>`."""
    if not issuer:
        return value
    if issuer.startswith("urn:oid:"):
        return f"{value}^^^&{issuer.removeprefix('urn:oid:')}&ISO"
    return f"{value}^^^{issuer}"


def _join_query(url: str, query: str) -> str:
    return url + ("&" if "?" in url else "?") + query


def viewer_link(study: Study, archive_id: str, viewer: Mapping[str, Any] | Any, *, patient_id: str | None,
                issuer: str | None = None, dicomweb_url: str | None = None,
                gateway: str | None = None) -> dict[str, Any] | None:
    """The link that opens `study` in one archive's viewer, or None when it cannot be built.

    `gateway`: the session's gateway base, used (and carried as `gateway`) when the viewer's
    `via` is "gateway"; such a viewer gets no link without one.
    """
    kind, url = _get(viewer, "kind"), str(_get(viewer, "url") or "")
    uid = study.uid
    if not is_dicom_uid(uid):
        log.warning("viewers: archive %s sent a study whose UID is not a DICOM UID; no viewer link", archive_id)
        return None
    link: dict[str, Any] = {"archive": archive_id, "kind": kind, "label": _get(viewer, "label") or LABELS[kind]}
    if _get(viewer, "via") == "gateway":
        if not gateway or re.search(r'[\s"]', gateway):
            log.warning("viewers: archive %s goes through the gateway, but none is available; no viewer link",
                        archive_id)
            return None
        link["gateway"] = gateway
        if kind == "ohif":
            # OHIF v3 `dicomwebproxy` data source: `url` names a JSON {"servers": {"dicomWeb": [...]}}.
            # Verified with @ohif/app 3.12.10: that data source reads `studyInstanceUIDs` (lower-case
            # s; `StudyInstanceUIDs` is refused), a list separated by ";" (not ",").
            base = (url.rstrip("/") + "/viewer/dicomwebproxy?url=" + _q(gateway + OHIF_GATEWAY_CONFIG)
                    + "&studyInstanceUIDs=")
            link["url"] = base + _q(uid)
            link["compare_url_template"] = base + _q(uid) + ";" + PRIOR_PLACEHOLDER
            return link
        if kind == "weasis":
            dicomweb_url = gateway
        elif kind == "url":
            values = {"study_uid": uid, "accession": study.accession, "patient_id": patient_id, "issuer": issuer,
                      "gateway": gateway}
            link["url"] = _TOKEN.sub(lambda m: _q(values.get(m.group(1))), url)
            return link
    if kind == "ohif":
        base = url.rstrip("/") + "/viewer?StudyInstanceUIDs="
        link["url"] = base + _q(uid)
        # OHIF v3 opens a comma-separated list side by side: current first, then the prior.
        link["compare_url_template"] = base + _q(uid) + "," + PRIOR_PLACEHOLDER
    elif kind == "iid":
        query = f"requestType=STUDY&studyUID={_q(uid)}"
        if patient_id:
            query += f"&patientID={_q(cx_patient_id(patient_id, issuer))}"
        link["url"] = _join_query(url, query)
    elif kind == "weasis":
        archive_url: str | None = dicomweb_url if link.get("gateway") else (_get(viewer, "dicomweb_url")
                                                                             or dicomweb_url)
        if not archive_url or re.search(r'[\s"]', archive_url):
            log.warning("viewers: archive %s has a Weasis viewer but no usable DICOMweb address", archive_id)
            return None
        link["url"] = "weasis://" + _q(f'$dicom:rs --url "{archive_url.rstrip("/")}" -r "studyUID={uid}"')
    elif kind == "url":
        values = {"study_uid": uid, "accession": study.accession, "patient_id": patient_id, "issuer": issuer}
        link["url"] = _TOKEN.sub(lambda m: _q(values.get(m.group(1))), url)
    else:
        return None
    return link


def images_note(study: Study, links: list[dict[str, Any]], names: Mapping[str, str],
                with_viewer: set[str]) -> str | None:
    """Why a study has no viewer link, in words a clinician understands; None when it has one."""
    if links:
        return None
    if study.elsewhere:
        return f"Images are held at {' and '.join(study.elsewhere[:2])}, which is not connected."
    direct = next((e for e in study.endpoints if e.token is not None), None)
    if direct is not None:
        return f"Images are at {direct.name or 'an image endpoint'}, for which no viewer is configured."
    holders = [a for a in dict.fromkeys([*study.sources, *(e.archive_id for e in study.endpoints)])
               if a in names and a not in with_viewer]
    imaging = [a for a in holders if any(e.archive_id == a for e in study.endpoints)]
    if imaging:
        return f"Images are in {names[imaging[0]]}, which has no viewer configured."
    return "No connected image archive holds this study's images."


def viewer_links(study: Study, archive_viewers: Mapping[str, Mapping[str, Any] | Any] | None, *,
                 patient_id: str | None, issuer: str | None = None, gateway: str | None = None
                 ) -> list[dict[str, Any]]:
    """Links for every archive holding `study` (in `study.sources` order) that has a viewer.

    `archive_viewers` maps archive id -> viewer table (`kind`, `url`, optional `dicomweb_url`,
    `issuer_of_patient_id`, `label`) or an object with those attributes. The patient id sent is
    the one the archive matched on (`study.matched_ids`) when known, else `patient_id`; the
    issuer is the viewer's `issuer_of_patient_id`, else the matched identifier's system, else
    `issuer`. A Weasis viewer without `dicomweb_url` uses the study's endpoint in that archive.
    A gateway viewer also opens a study only reachable through a vetted Endpoint in its archive
    (the EHR's record, the PACS's images): the gateway serves it from that archive.
    """
    links: list[dict[str, Any]] = []
    # Every configured archive that holds the study: those that returned it, then those its
    # ImagingStudy.endpoint points at (an EHR-only study, an outside study shared into the PACS).
    for archive_id in dict.fromkeys([*study.sources, *(e.archive_id for e in study.endpoints)]):
        viewer = (archive_viewers or {}).get(archive_id)
        if viewer is None or (archive_id not in study.sources and _get(viewer, "via") != "gateway"):
            continue
        matched = study.matched_ids.get(archive_id)
        pid = matched.value if matched else patient_id
        iss = _get(viewer, "issuer_of_patient_id") or (matched.system if matched else None) or issuer
        endpoint = next((e.address for e in study.endpoints if e.archive_id == archive_id), None)
        link = viewer_link(study, archive_id, viewer, patient_id=pid, issuer=iss, dicomweb_url=endpoint,
                           gateway=gateway)
        if link is not None:
            links.append(link)
    return links
