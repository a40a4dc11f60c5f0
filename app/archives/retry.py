"""One retry for `503 Service Unavailable` + `Retry-After` when the wait fits inside the deadline, else "busy".

SMART Imaging Access (Argonaut draft) lets an imaging server answer 503 with Retry-After while it
fetches a study from cold storage; RFC 9110 §10.2.3 gives the header as delay-seconds (the
HTTP-date form is treated as "not known", so no retry). One retry only: a second 503 is shown.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..errors import ReportUnavailable
from ..http import Deadline, HttpAnswer
from .base import ArchiveClient

log = logging.getLogger(__name__)

MAX_WAIT_S = 10.0  # never hold a clinician's click longer than this for one retry
MARGIN_S = 1.0  # time left after the wait for the retried request itself


def retry_after(answer: HttpAnswer) -> int | None:
    value = (answer.headers.get("Retry-After") or "").strip()
    return int(value) if value.isdigit() else None


def get_with_retry(client: ArchiveClient, url: str, *, deadline: Deadline, accept: str, what: str,
                   sleep: Callable[[float], None] = time.sleep) -> HttpAnswer:
    """GET `url`; a 503 with a Retry-After that fits is retried once, else ReportUnavailable("busy, retry in N s")."""
    answer = client.get(url, deadline=deadline, accept=accept)
    if answer.status != 503:
        return answer
    wait = retry_after(answer)
    if wait is not None and wait <= MAX_WAIT_S and wait + MARGIN_S < deadline.remaining():
        log.info("archive %s busy (503, Retry-After %d s): retrying once", client.config.id, wait)
        sleep(wait)
        answer = client.get(url, deadline=deadline, accept=accept)
        if answer.status != 503:
            return answer
        wait = retry_after(answer)
    name = client.config.name
    if wait is not None:
        raise ReportUnavailable(f"{name} is busy; retry in {wait} s ({what}).", retry_after_s=wait)
    raise ReportUnavailable(f"{name} is busy (HTTP 503) and did not say for how long; try again shortly ({what}).")
