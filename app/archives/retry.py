"""A report read that meets a busy archive: "busy, retry in N s" in words, after the client's one retry.

ArchiveClient.get (app/archives/base.py) already retries a `503` + `Retry-After` once when the
wait fits inside the deadline (SMART Imaging Access); what is still 503 after that is said here.
"""

from __future__ import annotations

from ..errors import ReportUnavailable
from ..http import Deadline, HttpAnswer
from .base import ArchiveClient, retry_after_s


def get_with_retry(client: ArchiveClient, url: str, *, deadline: Deadline, accept: str, what: str) -> HttpAnswer:
    """GET `url` (retried once by the client when busy); a 503 that remains is ReportUnavailable."""
    answer = client.get(url, deadline=deadline, accept=accept)
    if answer.status != 503:
        return answer
    wait = retry_after_s(answer)
    name = client.config.name
    if wait is not None:
        raise ReportUnavailable(f"{name} is busy; retry in {wait} s ({what}).", retry_after_s=wait)
    raise ReportUnavailable(f"{name} is busy (HTTP 503) and did not say for how long; try again shortly ({what}).")
