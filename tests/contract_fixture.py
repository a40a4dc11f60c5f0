"""Issue 10's JSON contract as a fixture: the real server's study views with the contract's decisions set.

For browser tests of the page's side of the contract while the server side is built separately:
the page is the real app's /timeline after a real sandbox launch; only its event stream is the
fixture, answered at the HTTP level by Playwright's router.
"""

from __future__ import annotations

import json


def sse(*events: tuple[str, object]) -> str:
    return "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events)


def real_views(page, demo, patient: str) -> dict:
    """Launch for real, then read the server's own /api/studies answer in that session."""
    page.goto(f"{demo.chart_url}launch?patient={patient}&embedded=1")
    page.locator('#study-list[aria-busy="false"]').wait_for(state="attached", timeout=20_000)
    return page.evaluate(f"async () => (await fetch('/api/studies?patient={patient}')).json()")


def contract_fixture(answer: dict) -> dict:
    """The real views, with the server's decisions as the contract has them."""
    studies = sorted(answer["studies"], key=lambda v: v["started"] or "", reverse=True)
    for view in studies:
        view.update(current=False, latest=False, prior=False, prior_rank=None, signals=[], attention=[])
    # The current study and its priors are ones the OHIF viewer holds, so "compare" can be offered.
    current, *rest = [v for v in studies if any(link["kind"] == "ohif" for link in v["viewers"])]
    current.update(current=True, latest=True, signals=[
        {"kind": "priority", "label": "STAT", "tone": "critical"},
        {"kind": "report", "label": "Preliminary report", "tone": "warning"},
    ], attention=[{"code": "critical-result", "label": "critical result", "acknowledged": None}])
    # Ranked priors: the server's order, not the page's (rank 1 is the OLDER one here).
    second, third = rest[0], rest[1]
    third.update(prior=True, prior_rank=1)
    second.update(prior=True, prior_rank=2)
    archives = [dict(a, message=None, detail=None, partial=False, retry=False) for a in answer["archives"]]
    outside = next(a for a in archives if a["id"] == "outside")
    outside.update(status="error", message="The outside imaging center did not answer.",
                   detail="HTTP 503 from /ImagingStudy (FHIR search)", retry=True)
    pacs = next(a for a in archives if a["id"] == "pacs")
    pacs.update(partial=True, reason="showing 2 of at least 5 — narrow by date")
    return {
        "studies": studies, "archives": archives, "current": current, "priors": [third, second],
        "pinned": {"uid": current["uid"], "priors": [third["uid"], second["uid"]]},
        "pending_orders": [{"id": "sr-mr-brain", "archive": "ehr", "stage": "scheduled",
                            "label": "Scheduled: MRI brain, Dec 3, Riverside", "priority": "urgent",
                            "date": "2026-12-03T09:00:00+00:00"}],
        "withheld": [{"archive": "pacs", "reason": "birth date differs",
                      "summary": "1 study withheld: birth date differs — XR pelvis, 2023",
                      "action": "Ask HIM to reconcile the records."}],
        "view": {"default_range": None, "encounter_class": "ambulatory"},
    }


def serve_fixture(page, fixture: dict, *, view: dict | None = None) -> list[str]:
    """Answer the page's stream (and retries) with the fixture; returns the stream URLs asked for."""
    asked: list[str] = []
    events = [("archive", a) for a in fixture["archives"]]
    events += [("studies", {"archive": "ehr", "studies": fixture["studies"]}),
               ("orders", {"orders": fixture["pending_orders"]}),
               ("done", {"archives": fixture["archives"], "count": len(fixture["studies"]),
                         "pinned": fixture["pinned"], "pending_orders": fixture["pending_orders"],
                         "withheld": fixture["withheld"], "view": view or fixture["view"]})]

    def answer(route):
        asked.append(route.request.url)
        route.fulfill(status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"},
                      body=sse(*events))

    page.route("**/api/studies/stream?**", answer)
    return asked


def show(page) -> None:
    page.reload()
    page.locator('#study-list[aria-busy="false"]').wait_for(state="attached", timeout=20_000)
