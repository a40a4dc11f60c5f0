"""The page shows what the server decided (issue 10's JSON contract), and decides none of it.

The page is the real app's /timeline in Debian's Chromium after a real sandbox launch. Its
event stream is the contract fixture: the real server's own study views for the patient (read
from /api/studies in the same session) with the contract's decisions set on them (pinned study,
ranked priors, signals, attention items, pending orders, withheld stubs, archive messages), sent
as server-sent events at the HTTP level (Playwright's router), since the server side of those
fields is built separately. The acknowledgement POST is answered the same way and its request
body checked.
"""

from __future__ import annotations

import json

import pytest

from tests import browser_pages
from tests.contract_fixture import contract_fixture, real_views, serve_fixture, show, sse

pytestmark = pytest.mark.browser

ACK = {"by": "Dr. Riley Radiant", "at": "2026-12-01T09:30:00+00:00"}


demo, page = browser_pages.demo, browser_pages.page  # one demo per module, a checked page per test


def test_the_pinned_current_study_leads_with_its_priors_in_the_servers_rank(page, demo):
    fixture = contract_fixture(real_views(page, demo, "pat-amy"))
    serve_fixture(page, fixture)
    show(page)
    current = fixture["current"]["uid"]
    assert page.locator("#pinned [data-study-uid]").evaluate_all("r => r.map(e => e.dataset.studyUid)") == [current]
    assert page.locator("#pinned-title").text_content() == "Current study"
    assert page.locator(f'[data-study-uid="{current}"]').count() == 1  # pinned, not listed twice
    ranked = page.locator("#pinned-priors li").evaluate_all("r => r.map(e => e.dataset.priorUid)")
    assert ranked == fixture["pinned"]["priors"]
    # "compare" beside each prior the viewer can put side by side with the current study.
    for uid in ranked:
        compare = page.locator(f'#pinned-priors li[data-prior-uid="{uid}"] a.viewer-link[data-kind="compare"]')
        assert compare.count() == 1
        assert uid in compare.get_attribute("href") and current in compare.get_attribute("href")
        assert compare.get_attribute("data-compare-uid") == current
    tags = page.locator(f'#years [data-study-uid="{ranked[0]}"] .tag-prior').text_content()
    assert tags == "Prior 1"
    # The first study row a clinician sees is the current one.
    assert page.locator("[data-study-uid]").first.get_attribute("data-study-uid") == current


def test_signals_are_shown_as_sent_in_their_order_and_nothing_is_added(page, demo):
    fixture = contract_fixture(real_views(page, demo, "pat-amy"))
    serve_fixture(page, fixture)
    show(page)
    current = page.locator(f'[data-study-uid="{fixture["current"]["uid"]}"]')
    chips = current.locator(".tag-signal").evaluate_all("t => t.map(e => [e.textContent, e.className])")
    assert chips == [["STAT", "tag tag-signal tone-critical"], ["Preliminary report", "tag tag-signal tone-warning"]]
    # A study whose `signals` is empty shows no chips, whatever its reports say.
    other = fixture["priors"][0]["uid"]
    assert page.locator(f'[data-study-uid="{other}"] .tag-signal').count() == 0
    assert page.locator(f'[data-study-uid="{other}"] .badge-attention').count() == 0


def test_pending_orders_and_withheld_studies_get_rows_of_their_own(page, demo):
    fixture = contract_fixture(real_views(page, demo, "pat-amy"))
    serve_fixture(page, fixture)
    show(page)
    order = page.locator('li[data-order-id="sr-mr-brain"]')
    assert order.locator(".order-label").text_content() == "Scheduled: MRI brain, Dec 3, Riverside"
    assert order.locator(".tag").text_content() == "URGENT"
    order_box, first_study = order.bounding_box(), page.locator("[data-study-uid]").first.bounding_box()
    assert order_box["y"] < first_study["y"]  # at the top
    stub = page.locator(".withheld-item")
    assert stub.count() == 1
    assert "1 study withheld: birth date differs — XR pelvis, 2023" in stub.text_content()
    assert "Ask HIM to reconcile" in stub.text_content()
    assert page.locator('.withheld-item[data-study-uid]').count() == 0  # a stub, not a study


def test_archive_messages_in_plain_words_with_details_and_try_again(page, demo):
    fixture = contract_fixture(real_views(page, demo, "pat-amy"))
    asked = serve_fixture(page, fixture)
    show(page)
    chip = page.locator('[data-archive-id="outside"]')
    assert chip.get_attribute("data-status") == "error"
    assert chip.get_attribute("title") == "The outside imaging center did not answer."
    chip.locator(".chip-reason > summary").click()
    assert chip.locator(".chip-reason > p").text_content() == "The outside imaging center did not answer."
    detail = chip.locator(".chip-detail")
    assert detail.locator("pre").is_hidden()
    detail.locator("summary").click()
    assert detail.locator("pre").text_content() == "HTTP 503 from /ImagingStudy (FHIR search)"
    partial = page.locator('[data-archive-id="pacs"]')
    assert "is-partial" in partial.get_attribute("class")
    assert partial.get_attribute("title") == "showing 2 of at least 5 — narrow by date"
    assert len(asked) == 1
    chip.locator("button.chip-retry").click()
    page.wait_for_function("() => true")
    page.wait_for_timeout(300)
    assert len(asked) == 2 and asked[1].endswith("&retry=outside")
    assert "patient=pat-amy" in asked[1]


def test_acknowledge_posts_the_item_and_shows_who_and_when(page, demo):
    fixture = contract_fixture(real_views(page, demo, "pat-amy"))
    serve_fixture(page, fixture)
    posted: list[dict] = []

    def ack(route):
        posted.append(json.loads(route.request.post_data or "{}"))
        route.fulfill(status=200, json=ACK)

    page.route("**/api/attention/ack", ack)
    show(page)
    item = page.locator(f'.attention-item[data-uid="{fixture["current"]["uid"]}"]')
    button = item.locator("button.btn-ack")
    assert "critical result" in button.get_attribute("aria-label")
    button.click()
    item = page.locator(f'.attention-item[data-uid="{fixture["current"]["uid"]}"]')
    item.locator(".ack-note").wait_for(timeout=5_000)
    assert posted == [{"patient": "pat-amy", "uid": fixture["current"]["uid"], "code": "critical-result"}]
    note = item.locator(".ack-note").text_content()
    assert note.startswith("Acknowledged by Dr. Riley Radiant at ")
    assert item.locator("button.btn-ack").count() == 0
    assert page.locator("#attention-count").text_content() == "(0)"


def test_an_acknowledgement_that_fails_says_so_and_can_be_retried(page, demo):
    fixture = contract_fixture(real_views(page, demo, "pat-amy"))
    serve_fixture(page, fixture)
    page.route("**/api/attention/ack", lambda route: route.fulfill(status=503, body="busy"))
    show(page)
    button = page.locator("button.btn-ack")
    button.click()
    page.locator(".ack-error").wait_for(timeout=5_000)
    assert button.is_enabled() and button.text_content() == "Acknowledge"


def test_the_servers_default_range_is_applied_once(page, demo):
    fixture = contract_fixture(real_views(page, demo, "pat-ben"))
    serve_fixture(page, fixture, view={"default_range": "72h", "encounter_class": "emergency"})
    show(page)
    assert page.locator('#f-range button[data-value="72h"]').get_attribute("aria-pressed") == "true"
    now = page.evaluate("Date.now()") / 1000
    from datetime import datetime

    shown = page.locator("[data-study-uid] time").evaluate_all("t => t.map(e => e.dateTime)")
    assert shown and all(now - datetime.fromisoformat(t).timestamp() <= 3 * 86400 for t in shown)
    page.locator('#f-range button[data-value=""]').click()  # the clinician's choice then stands
    assert page.locator("[data-study-uid]").count() == len(fixture["studies"])


# Records, at the moment the list stops saying it is busy, how many study rows it shows.
RECORD_ROWS_WHEN_NOT_BUSY = """
document.addEventListener('DOMContentLoaded', () => {
  const list = document.getElementById('study-list');
  window.__rowsWhenDone = [];
  new MutationObserver(() => {
    if (list.getAttribute('aria-busy') === 'false') {
      window.__rowsWhenDone.push(document.querySelectorAll('[data-study-uid]').length);
    }
  }).observe(list, { attributes: true, attributeFilter: ['aria-busy'] });
});
"""


def test_the_list_is_not_busy_before_its_rows_are_shown(page, demo):
    """aria-busy="false" means the list is complete: tests, screen readers and people can rely on it.

    It was set on the last event and the rows drawn a frame later, so a reader (or a check) could
    find a finished list with no rows in it.
    """
    fixture = contract_fixture(real_views(page, demo, "pat-amy"))
    serve_fixture(page, fixture)
    page.add_init_script(RECORD_ROWS_WHEN_NOT_BUSY)
    show(page)
    shown = page.locator("[data-study-uid]").count()
    assert shown == len(fixture["studies"])  # the pinned study is not listed twice
    assert page.evaluate("window.__rowsWhenDone") == [shown]


def test_without_the_contract_fields_the_page_adds_nothing(page, demo):
    """An older server's views (no pinned, prior, signals, orders, stubs, retry): nothing extra is shown."""
    answer = real_views(page, demo, "pat-amy")
    contract = {"current", "latest", "prior", "prior_rank", "signals", "regions", "search_text"}
    studies = [{k: v for k, v in view.items() if k not in contract} | {"attention": []} for view in answer["studies"]]
    archives = [{k: v for k, v in a.items() if k not in {"message", "detail", "partial", "retry"}}
                for a in answer["archives"]]
    body = sse(*[("archive", a) for a in archives], ("studies", {"archive": "ehr", "studies": studies}),
               ("done", {"archives": archives, "count": len(studies)}))
    page.route("**/api/studies/stream?**", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream"}, body=body))
    show(page)
    assert page.locator("[data-study-uid]").count() == len(studies)
    assert page.locator("#pinned").is_hidden()  # no study is current unless the server says so
    assert page.locator(".tag-prior, .tag-current, .tag-latest").count() == 0
    assert page.locator("#orders").is_hidden() and page.locator("#withheld").is_hidden()
    assert page.locator("#attention").is_hidden()
    assert page.locator("button.chip-retry, .chip-detail").count() == 0


def test_today_is_the_clinicians_local_day_with_the_time_of_day(browser, demo):
    """Ages count local calendar days: 30 min before local midnight is "yesterday", even if < 24 h ago."""
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo

    zone = "Pacific/Auckland"
    context = browser.new_context(viewport={"width": 1000, "height": 900}, timezone_id=zone, locale="en-GB")
    try:
        page = context.new_page()
        fixture = contract_fixture(real_views(page, demo, "pat-amy"))
        now = datetime.now(ZoneInfo(zone))
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        earlier_today = max(midnight, now - timedelta(minutes=5))
        late_yesterday = midnight - timedelta(minutes=30)
        first, second = fixture["studies"][0], fixture["studies"][1]
        first["started"] = earlier_today.isoformat()
        second["started"] = late_yesterday.isoformat()
        serve_fixture(page, fixture)
        show(page)
        age = page.locator(f'[data-study-uid="{first["uid"]}"] .study-age').text_content()
        assert age == f"today {earlier_today:%H:%M}"
        assert page.locator(f'[data-study-uid="{second["uid"]}"] .study-age').text_content() == "yesterday"
    finally:
        context.close()


def test_search_uses_the_servers_search_text(page, demo):
    fixture = contract_fixture(real_views(page, demo, "pat-amy"))
    target = fixture["studies"][-1]
    target["search_text"] = "xr chest · riverside · zebra-sign impression"
    serve_fixture(page, fixture)
    show(page)
    page.locator("#f-search").fill("Zebra-Sign")
    assert page.locator("[data-study-uid]").evaluate_all("r => r.map(e => e.dataset.studyUid)") == [target["uid"]]
