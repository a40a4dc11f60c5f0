"""The server's decisions reach the page end to end: no routing, the real stream and the real POSTs.

tests/test_browser_contract.py feeds the page fixtures to cover every shape of the contract; this
file launches real sandbox patients in Debian's Chromium and checks what the clinician sees comes
from the server as it is: the pinned current study and its priors, an acknowledgement that is
stored server-side (a reload and /api/studies show it), and the scheduled order's own row.
"""

from __future__ import annotations

import pytest
import requests

from tests import browser_pages

pytestmark = pytest.mark.browser


demo, page = browser_pages.demo, browser_pages.page  # one demo per module, a checked page per test


def launch(page, demo, patient: str) -> None:
    page.goto(f"{demo.base_url}/sandbox/launch?patient={patient}")
    page.wait_for_url("**/timeline", timeout=60_000)
    # Attached, not visible: in the emergency view's last 72 h the only study may be the pinned one.
    page.locator('#study-list[aria-busy="false"]').wait_for(state="attached", timeout=60_000)
    page.wait_for_function("document.querySelectorAll('[data-study-uid]').length > 0", timeout=30_000)


def server_view(page, demo, patient: str) -> dict:
    """/api/studies in the page's own session (its cookie), as the server decides it."""
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    resp = requests.get(f"{demo.base_url}/api/studies", params={"patient": patient}, cookies=cookies, timeout=60)
    assert resp.status_code == 200
    return resp.json()


def test_the_pinned_study_and_its_priors_are_the_servers(page, demo):
    launch(page, demo, "pat-ben")
    body = server_view(page, demo, "pat-ben")
    pinned = body["pinned"]
    assert pinned["uid"] is not None
    assert page.locator("#pinned [data-study-uid]").evaluate_all("r => r.map(e => e.dataset.studyUid)") == [
        pinned["uid"]]
    shown = page.locator("#pinned-priors li").evaluate_all("r => r.map(e => e.dataset.priorUid)")
    assert shown == pinned["priors"]
    current = next(s for s in body["studies"] if s["uid"] == pinned["uid"])
    assert page.locator("#pinned-title").text_content() == ("Current study" if current["current"] else "Latest study")


def test_an_acknowledgement_is_stored_by_the_server_and_survives_a_reload(page, demo):
    launch(page, demo, "pat-ben")
    button = page.locator("button.btn-ack").first
    item = page.locator(".attention-item").filter(has=button).first
    uid = item.get_attribute("data-uid")
    button.click()
    page.locator(f'.attention-item[data-uid="{uid}"] .ack-note').first.wait_for(timeout=10_000)
    note = page.locator(f'.attention-item[data-uid="{uid}"] .ack-note').first.text_content()
    assert note.startswith("Acknowledged by ")
    acknowledged = [a for s in server_view(page, demo, "pat-ben")["studies"] if s["uid"] == uid
                    for a in s["attention"] if a["acknowledged"]]
    assert acknowledged and acknowledged[0]["acknowledged"]["by"]
    page.reload()
    page.locator('#study-list[aria-busy="false"]').wait_for(state="attached", timeout=60_000)
    page.locator(f'.attention-item[data-uid="{uid}"] .ack-note').first.wait_for(timeout=10_000)


def test_a_scheduled_order_without_images_has_its_own_row(page, demo):
    launch(page, demo, "pat-amy")
    orders = server_view(page, demo, "pat-amy")["pending_orders"]
    assert orders, "the sandbox schedules an MR knee for Amy"
    row = page.locator(f'[data-order-id="{orders[0]["id"]}"]')
    row.wait_for(timeout=10_000)
    assert orders[0]["label"] in row.text_content()
