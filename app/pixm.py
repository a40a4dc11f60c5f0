"""IHE PIXm (ITI-83, `$ihe-pix`): the patient's identifier in an archive's domain, from a cross-reference manager.

Used only when the EHR's Patient carries no identifier in the archive's `identifier_system`. The
answer is a lead, not a verdict: every study the archive then returns is still re-verified
exactly against that identifier and against the EHR's birth date and sex (app/identity.py).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import requests

from .errors import ArchiveError, ArchiveNotLinked, ArchiveTimeout
from .http import Deadline, fetch
from .models import Identifier, PatientSummary

log = logging.getLogger(__name__)

MAX_ANSWER_BYTES = 256 * 1024


def cross_reference(http: requests.Session, pixm_url: str, patient: PatientSummary, target_system: str, *,
                    deadline: Deadline, timeout: float, headers: dict[str, str] | None = None) -> Identifier | None:
    """The patient's single identifier in `target_system` per the manager, None if it knows none.

    Each of the patient's identifiers is tried as the source until the manager knows one (404 and
    400 mean "not this one"). Several different identifiers in the target domain are ambiguous:
    the archive is then not linked rather than guessed.
    """
    url = f"{pixm_url.rstrip('/')}/Patient/$ihe-pix"
    for source in patient.identifiers:
        params = {"sourceIdentifier": f"{source.system}|{source.value}", "targetSystem": target_system}
        try:
            answer = fetch(http, "GET", url, params=params, deadline=deadline, timeout=timeout,
                           max_bytes=MAX_ANSWER_BYTES, headers={"Accept": "application/fhir+json", **(headers or {})})
        except requests.Timeout as exc:
            raise ArchiveTimeout("the PIXm cross-reference manager did not answer in time") from exc
        except requests.RequestException as exc:
            raise ArchiveError(f"the PIXm cross-reference manager is unreachable ({type(exc).__name__})") from exc
        if answer.status in (400, 404):
            continue  # ITI-83: this source identifier is unknown to the manager; try the next one
        if answer.status != 200:
            raise ArchiveError(f"the PIXm cross-reference manager answered HTTP {answer.status}")
        return _target(_parameters(answer.body), target_system)
    return None


def _parameters(body: bytes) -> list[dict[str, Any]]:
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise ArchiveError("the PIXm cross-reference manager's answer was not JSON") from exc
    if not isinstance(doc, dict) or doc.get("resourceType") != "Parameters":
        raise ArchiveError("the PIXm cross-reference manager's answer was not a FHIR Parameters resource")
    params = doc.get("parameter", [])
    return [p for p in params if isinstance(p, dict)] if isinstance(params, list) else []


def _target(params: list[dict[str, Any]], target_system: str) -> Identifier | None:
    values = {
        ident["value"] for p in params
        if p.get("name") == "targetIdentifier" and isinstance(ident := p.get("valueIdentifier"), dict)
        and ident.get("system") == target_system and isinstance(ident.get("value"), str) and ident["value"]
    }
    if len(values) > 1:
        raise ArchiveNotLinked(f"not linked (the PIXm manager returned {len(values)} identifiers in domain "
                               f"{target_system}; ambiguous)")
    return Identifier(target_system, values.pop()) if values else None
