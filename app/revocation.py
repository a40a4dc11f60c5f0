"""A revoked session stops serving: a 401 from the launch `iss` means one refresh, else the session ends.

The EHR answers 401 when it has withdrawn the app's access (logout, a revoked grant). Studies the
app already holds, from the EHR or any PACS, must not keep flowing for that session (finding 6).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from .archives.config import ArchiveConfig
from .errors import ArchiveAuthError, ArchiveError
from .models import ArchiveStatus
from .session import SmartSession

log = logging.getLogger(__name__)


def rejected_by_iss(status: ArchiveStatus, archive: ArchiveConfig | None) -> bool:
    """Whether this archive answer is the launch `iss` refusing the clinician's token (HTTP 401)."""
    # auth "ehr" is only ever sent to the EHR's own origin (app/archives/auth.py): a 401 there is the
    # EHR refusing the clinician's token, whether from its FHIR API or its imaging service.
    return (archive is not None and archive.auth.kind == "ehr"
            and status.error == "archive-auth" and (status.reason or "").startswith("HTTP 401"))


def check_answers(session: SmartSession, statuses: Iterable[ArchiveStatus],
                  archives: Mapping[str, ArchiveConfig]) -> bool:
    """Refresh once if the `iss` refused the token; SessionExpired (session ended) if that fails.

    True when a refresh happened (the caller may search again with the new token).
    """
    for status in statuses:
        if rejected_by_iss(status, archives.get(status.id)):
            log.info("archive %s (the launch iss) answered 401", status.id)
            session.token_rejected(session.token["access_token"])
            return True
    return False


def check_error(session: SmartSession, archive: ArchiveConfig, exc: ArchiveError) -> None:
    """The same rule for a single request (a thumbnail from the EHR's own DICOMweb service)."""
    if isinstance(exc, ArchiveAuthError) and archive.auth.kind == "ehr" and exc.message.startswith("HTTP 401"):
        log.info("archive %s (the launch iss) answered 401 to a thumbnail", archive.id)
        session.token_rejected(session.token["access_token"])
