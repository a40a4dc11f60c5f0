"""WCAG 2.1 AA for every page a person sees, checked by axe-core in Debian's Chromium.

axe-core is a test tool only (never served by the app): `.ci/test` installs it from npm into
`.ci/axe/node_modules` (git-ignored). The app's CSP forbids injected scripts, so the browser
context bypasses CSP here and nowhere else. Pages: the start page, the 401 error page, and the
timeline after its stream finished (full window with the patient banner and the "Needs attention"
strip, with a filter applied, with a report panel open, in dark mode, in a 600 px chart frame with
the filters open and a search typed, and inside the sandbox chart's iframe, where only the app's frame
is audited: the chart stands in for a third-party EHR), and the operations page /admin/time-to-image.

Besides the WCAG 2.0/2.1 A and AA rules, axe's "best-practice" rules run too: they are where axe
checks semantic structure (one banner and one main landmark, content inside landmarks, heading levels).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CHROMIUM, need

pytestmark = pytest.mark.browser

AXE = Path(__file__).resolve().parent.parent / ".ci" / "axe" / "node_modules" / "axe-core" / "axe.min.js"
WCAG_21_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
TAGS = [*WCAG_21_AA, "best-practice"]
RUN_AXE = """async tags => {
  const result = await axe.run(document, {runOnly: {type: 'tag', values: tags}});
  return result.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
    targets: v.nodes.slice(0, 3).map(n => n.target.join(' '))}));
}"""


@pytest.fixture(scope="module")
def demo():
    need("Chromium", CHROMIUM.exists(), "apt-get install chromium")
    try:
        from sandbox.demo import serve_demo
    except ImportError as exc:
        need("the demo (sandbox.demo)", False, f"cannot import it yet ({exc})")
        raise
    with serve_demo() as running:
        yield running


@pytest.fixture
def page(browser) -> Iterator:
    # bypass_csp: only so axe can be injected; the app's own CSP is tested elsewhere.
    context = browser.new_context(viewport={"width": 1200, "height": 900}, bypass_csp=True)
    yield context.new_page()
    context.close()


def violations(frame) -> list[dict]:
    """axe's violations in one page or frame (axe is injected into that document only)."""
    need("axe-core", AXE.exists(), "npm install --prefix .ci/axe axe-core@4 (.ci/test does this when npm exists)")
    frame.add_script_tag(path=str(AXE))
    return frame.evaluate(RUN_AXE, TAGS)


def assert_accessible(frame) -> None:
    found = violations(frame)
    report = "\n".join(f"{v['id']} ({v['impact']}): {v['help']} at {v['targets']}" for v in found)
    assert not found, f"axe found {len(found)} violation(s):\n{report}"


def wait_finished(frame) -> None:
    frame.wait_for_function(
        "() => (document.getElementById('live-status')?.textContent || '').startsWith('Search finished')",
        timeout=20_000)


def launch_full_window(page, demo, patient_id: str = "pat-ben") -> None:
    page.goto(f"{demo.chart_url}launch?patient={patient_id}")
    wait_finished(page)


# --- pages ------------------------------------------------------------------------------------------

def test_start_page(page, demo):
    page.goto(f"{demo.base_url}/")
    page.locator("h1").wait_for()
    assert_accessible(page)


def test_error_page_without_a_session(page, demo):
    response = page.goto(f"{demo.base_url}/timeline")
    assert response.status == 401
    assert_accessible(page)


def test_timeline_full_window_with_needs_attention(page, demo):
    launch_full_window(page, demo)
    assert page.locator(".patient-banner").is_visible()
    assert page.locator("#attention-list li").count() >= 1
    assert_accessible(page)


def test_timeline_with_a_filter_applied(page, demo):
    launch_full_window(page, demo)
    button = page.locator("#f-modality button[aria-pressed]").first
    button.click()
    assert button.get_attribute("aria-pressed") == "true"
    assert_accessible(page)


def test_timeline_inside_the_chart_iframe(page, demo):
    page.goto(f"{demo.chart_url}?patient=pat-amy")
    page.frame_locator("#app-frame").locator("#study-list").wait_for(state="attached", timeout=15_000)
    # Only the app's own document: the chart around it is the (stand-in) EHR's.
    app_frame = page.locator("#app-frame").element_handle().content_frame()
    assert app_frame in page.frames and app_frame.url == f"{demo.base_url}/timeline"
    wait_finished(app_frame)
    assert app_frame.locator(".patient-banner").count() == 0
    assert_accessible(app_frame)


def test_timeline_in_dark_mode(browser, demo):
    context = browser.new_context(viewport={"width": 1200, "height": 900}, bypass_csp=True, color_scheme="dark")
    try:
        page = context.new_page()
        launch_full_window(page, demo)
        assert page.evaluate("matchMedia('(prefers-color-scheme: dark)').matches")
        assert_accessible(page)
    finally:
        context.close()


def test_timeline_in_a_narrow_chart_frame_with_the_filters_open(browser, demo):
    context = browser.new_context(viewport={"width": 600, "height": 760}, bypass_csp=True)
    try:
        page = context.new_page()
        page.goto(f"{demo.chart_url}launch?patient=pat-ben&embedded=1")
        wait_finished(page)
        page.locator("#f-toggle").click()
        page.locator("#f-search").fill("ct")
        assert_accessible(page)
    finally:
        context.close()


def test_timeline_with_every_contract_section_shown(page, demo):
    """Pinned study with priors, signals, attention with Acknowledge, orders, stubs, archive details."""
    from tests.contract_fixture import contract_fixture, real_views, serve_fixture, show

    fixture = contract_fixture(real_views(page, demo, "pat-amy"))
    serve_fixture(page, fixture)
    show(page)
    assert page.locator("#pinned-priors li").count() == 2 and page.locator("button.btn-ack").count() == 1
    assert page.locator("li[data-order-id]").count() == 1 and page.locator(".withheld-item").count() == 1
    page.locator('[data-archive-id="outside"] .chip-reason > summary').click()
    assert_accessible(page)


# --- keyboard ---------------------------------------------------------------------------------------

def focus_ring(page) -> dict:
    return page.evaluate("""() => {
      const s = getComputedStyle(document.activeElement);
      return {outline: s.outlineStyle, width: s.outlineWidth, shadow: s.boxShadow};
    }""")


def assert_focus_visible(page) -> None:
    ring = focus_ring(page)
    assert (ring["outline"] != "none" and ring["width"] != "0px") or ring["shadow"] != "none", ring


def test_keyboard_skip_link_first_then_visible_focus(page, demo):
    launch_full_window(page, demo)
    page.evaluate("() => { document.activeElement?.blur(); window.scrollTo(0, 0); }")
    page.keyboard.press("Tab")
    skip = page.locator(".skip-link")
    assert skip.evaluate("link => link === document.activeElement")
    assert skip.bounding_box()["y"] >= 0  # moved on screen when focused
    assert_focus_visible(page)
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "study-list"

    # Focus moved by script after keyboard use matches :focus-visible, as Tab would.
    for target in ("#f-modality button", "a.viewer-link"):
        page.locator(target).first.focus()
        assert page.locator(target).first.evaluate("e => e === document.activeElement")
        assert_focus_visible(page)


def test_timeline_with_a_report_panel_open(page, demo):
    launch_full_window(page, demo, "pat-faye")
    page.locator('[data-action="open-report"]').first.click()
    panel = page.locator("[data-report-panel]")
    panel.locator(".report-body[aria-busy='false']").wait_for(timeout=15_000)
    assert panel.get_attribute("role") == "region" and panel.get_attribute("aria-labelledby")

def test_operations_page(page, demo):
    launch_full_window(page, demo, "pat-amy")  # so there are measurements to plot
    page.goto(f"{demo.base_url}/admin/time-to-image")
    assert_accessible(page)
