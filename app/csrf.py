"""Cross-site request refusal for every state-changing request (POST), by Fetch Metadata or Origin."""

from __future__ import annotations

from flask import current_app, request

from .errors import CrossSiteRequest
from .http import same_origin


def _own_origins() -> list[str]:
    public = current_app.config.get("PUBLIC_URL")
    return [public] if public else [request.host_url]


def require_same_origin() -> None:
    """Refuse a request another site could have made this browser send (CSRF).

    Browsers send `Sec-Fetch-Site` (Fetch Metadata) with every request; where it is absent, the
    `Origin` header every POST carries decides. A request with neither is refused: the app's own
    pages always send one.
    """
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        if site == "same-origin":
            return
        raise CrossSiteRequest(f"This request came from another site (Sec-Fetch-Site: {site[:20]}) and was "
                               "refused. Use Imaging Timeline's own page.")
    origin = request.headers.get("Origin")
    if origin and origin != "null" and any(same_origin(origin, own) for own in _own_origins()):
        return
    raise CrossSiteRequest("This request did not come from Imaging Timeline's own page (its Origin is "
                           f"{(origin or 'absent')[:80]}) and was refused.")
