"""Attacks in a real browser (Debian Chromium): login CSRF, the cross-site http frame (findings 1, 2).

The demo serves the sandbox EHR and the app on one loopback port; with `app_host="localhost"` the
app is reached as http://localhost:PORT and the chart as http://127.0.0.1:PORT, two sites, so the
chart frames the app cross-site over plain http, where the browser keeps none of its cookies.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import browser_pages

pytestmark = pytest.mark.browser


demo = browser_pages.demo  # the plain demo, one per module (tests/browser_pages.py)


@pytest.fixture(scope="module")
def cross_site_demo():
    with browser_pages.browser_demo(app_host="localhost") as running:
        yield running


@pytest.fixture
def context(browser) -> Iterator:
    ctx = browser.new_context(viewport={"width": 1200, "height": 900})
    yield ctx
    ctx.close()


def _capture_callback(context) -> list[str]:
    """Stop this browser at its callback: the attacker keeps the URL instead of finishing.

    Playwright does not route a redirect's target, so the EHR's authorize request is routed: its
    answer is fetched here without following it, and the callback URL it points to is kept.
    """
    caught: list[str] = []

    def stop(route):
        answer = route.fetch(max_redirects=0)
        caught.append(answer.headers["location"])
        route.abort()

    context.route(lambda url: "/auth/authorize?" in url, stop)
    return caught


def _attacker_callback_url(context, demo) -> str:
    caught = _capture_callback(context)
    page = context.new_page()
    page.goto(f"{demo.base_url}/sandbox/launch?patient=pat-amy", wait_until="commit")
    for _ in range(100):  # bounded: the launch page and the EHR's authorize redirect take a moment
        if caught:
            break
        page.wait_for_timeout(50)
    assert caught, "the launch never reached its callback"
    return caught[0]


def test_an_attackers_callback_opened_in_the_clinicians_browser_yields_no_session(browser, demo):
    attacker = browser.new_context()
    try:
        url = _attacker_callback_url(attacker, demo)
    finally:
        attacker.close()
    victim = browser.new_context()
    try:
        page = victim.new_page()
        page.goto(url)
        page.locator("[data-error-code]").wait_for(timeout=15_000)
        assert page.locator("[data-error-code]").get_attribute("data-error-code") == "state-error"
        assert "cannot be tied to a launch started in this browser window" in page.locator("main").inner_text()
        assert not [c for c in victim.cookies() if c["name"] == "itl_session"]
        assert "code=" not in page.url  # the callback page took the code out of the address bar
    finally:
        victim.close()


def test_the_frame_binding_completes_a_launch_whose_cookie_was_lost(context, demo):
    url = _attacker_callback_url(context, demo)  # this time the same browser finishes it...
    context.unroute_all()
    context.clear_cookies()  # ...after its launch cookie was dropped, as an embedded app's is
    page = context.pages[0]
    with page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/callback")) as posted:
        page.goto(url)
    # The page's own Origin (not "null"): browsers without Fetch Metadata pass the same-origin check.
    assert posted.value.all_headers().get("origin") == demo.base_url
    page.locator("#timeline").wait_for(timeout=15_000)
    assert page.url == f"{demo.base_url}/timeline"
    assert page.locator("#timeline").get_attribute("data-patient-id") == "pat-amy"


def test_a_cross_site_http_frame_is_explained_not_called_expired(context, cross_site_demo):
    # This Chromium, like Safari, denies a cross-site frame both cookies and sessionStorage: the
    # sign-in cannot finish there, and the frame says what will work instead of "relaunch".
    demo = cross_site_demo
    posts: list[int] = []
    context.on("response", lambda r: posts.append(r.status) if r.request.method == "POST"
               and r.url.endswith("/callback") else None)
    page = context.new_page()
    page.goto(f"{demo.base_url}/sandbox/?patient=pat-amy")
    frame = page.frame_locator("#app-frame")
    frame.locator("[data-error-code]").wait_for(timeout=15_000)
    assert posts  # the callback page answered (with the frame binding where the browser allows storage)
    assert frame.locator("[data-error-code]").get_attribute("data-error-code") == "cookies-blocked"
    text = frame.locator("main").inner_text()
    assert "over plain http" in text
    assert "new window" in text and "https" in text
    assert "Session expired" not in text


def test_sign_out_in_the_chart_frame_ends_the_session(context, demo):
    page = context.new_page()
    page.goto(f"{demo.base_url}/sandbox/?patient=pat-amy")
    frame = page.frame_locator("#app-frame")
    frame.locator("#timeline").wait_for(timeout=15_000)
    frame.get_by_role("button", name="Sign out").click()
    frame.locator('[data-error-code="signed-out"]').wait_for(timeout=15_000)
    status = page.frames[-1].evaluate("() => fetch('/api/context', {credentials: 'same-origin'}).then(r => r.status)")
    assert status == 401
