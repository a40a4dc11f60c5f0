"""The timeline for a long history, in a real browser: windowing, search, presets, years, keys, fit.

Debian's Chromium (Playwright) against the demo, launched from the sandbox EHR as a clinician
would. The long history is the sandbox's `big_patient` ("pat-big", BIG_N studies in the EHR and
the sandbox PACS) served by the demo with one more DICOMweb archive on the same sandbox PACS whose
`max_results` lets every study through, so the page really receives BIG_N studies over the stream.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from tests import demo_fixtures
from tests.browser_pages import browser_demo

pytestmark = pytest.mark.browser

BIG_N = 2000
BIG_ARCHIVE = """
[[archive]]
id = "bigpacs"
name = "Long-history PACS"
kind = "dicomweb"
base_url = "{sandbox}/dicomweb"
auth = { kind = "none" }
identifier_system = "urn:oid:2.999.7418.1.1"
issuer_of_patient_id = "SANDBOX-PACS"
timeout_s = 60
max_results = 10000
"""


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from sandbox.data import big_patient, standard_data

    toml = tmp_path_factory.mktemp("archives") / "big.toml"
    toml.write_text(BIG_ARCHIVE, encoding="utf-8")
    data = standard_data().merged(big_patient(BIG_N))
    with browser_demo(sandbox_options={"data": data}, extra_archives=str(toml)) as running:
        running.data = data
        yield running


sandbox_state = demo_fixtures.sandbox_state  # cleared after each test (tests/demo_fixtures.py)


def new_page(browser, width: int = 1000, height: int = 900, **options) -> Iterator:
    context = browser.new_context(viewport={"width": width, "height": height}, **options)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.errors = errors
    return context, page


@pytest.fixture
def page(browser):
    context, page = new_page(browser)
    yield page
    assert page.errors == []
    context.close()


def launch(page, demo, patient: str, *, style: bool = False, timeout: int = 90_000) -> None:
    """The chart frame's own launch (embedded=1: no patient banner), full window, until done."""
    page.goto(f"{demo.chart_url}launch?patient={patient}&embedded=1{'&style=1' if style else ''}")
    page.locator('#study-list[aria-busy="false"]').wait_for(state="attached", timeout=timeout)
    assert page.locator("#fatal").is_hidden(), page.locator("#fatal").text_content()


@pytest.fixture(scope="module")
def big(browser, demo):
    """One launched page on pat-big, shared by the tests that only read or reset it."""
    context, page = new_page(browser)
    launch(page, demo, "pat-big")
    yield page
    context.close()


def rendered_uids(page) -> list[str]:
    return page.locator("[data-study-uid]").evaluate_all("rows => rows.map(r => r.dataset.studyUid)")


def dom_nodes(page) -> int:
    return page.evaluate("document.getElementsByTagName('*').length")


def big_studies(demo) -> list:
    """pat-big's studies, newest first (the page's order)."""
    studies = [s for s in demo.data.studies if s.patient_id == "pat-big"]
    return sorted(studies, key=lambda s: (-s.started.timestamp(), s.uid))


def reset(page) -> None:
    page.evaluate("() => { location.hash = ''; window.scrollTo(0, 0); }")
    search = page.locator("#f-search")
    if search.input_value():
        search.fill("")
    page.locator('#f-range button[data-value=""]').click()


# --- windowing ----------------------------------------------------------------------------------

def test_a_long_history_keeps_only_the_rows_in_view_in_the_dom(big, demo):
    assert big.locator("#summary").text_content().startswith(f"{BIG_N} studies")
    newest = big_studies(demo)
    rows = rendered_uids(big)
    assert 5 <= len(rows) <= 120
    assert rows[:3] == [s.uid for s in newest[:3]]
    assert dom_nodes(big) <= 5000
    # Assistive technology hears the whole list's size (rows and month headings), not the rendered part's.
    setsize = int(big.locator("#years > li").first.get_attribute("aria-setsize"))
    assert setsize > BIG_N - 2
    # The list is as tall as all of it: scrolled to the end, the oldest study is there.
    big.evaluate("window.scrollTo(0, document.documentElement.scrollHeight)")
    big.wait_for_function("uid => !!document.querySelector(`[data-study-uid=\"${uid}\"]`)", arg=newest[-1].uid,
                          timeout=5_000)
    assert len(rendered_uids(big)) <= 120
    assert dom_nodes(big) <= 5000
    assert big.locator("#years > li").last.get_attribute("aria-posinset") == str(setsize)
    big.evaluate("window.scrollTo(0, 0)")


def test_rows_are_updated_in_place_not_rebuilt(big, demo):
    reset(big)
    first = big_studies(demo)[0].uid
    big.evaluate("uid => { window.__row = document.querySelector(`[data-study-uid=\"${uid}\"]`); }", first)
    if big.locator("#f-toggle").get_attribute("aria-expanded") == "false":
        big.locator("#f-toggle").click()
    modality = big.locator("#f-modality button").first
    modality.click()
    modality.click()
    assert big.evaluate("uid => document.querySelector(`[data-study-uid=\"${uid}\"]`) === window.__row", first)


# --- search, presets, years -------------------------------------------------------------------

def test_search_finds_a_study_by_accession_among_thousands(big, demo):
    reset(big)
    target = big_studies(demo)[1234]
    big.locator("#f-search").fill(target.accession.lower())
    big.wait_for_function("() => document.querySelectorAll('[data-study-uid]').length === 1")
    assert rendered_uids(big) == [target.uid]
    assert big.locator("#summary").text_content() == f"1 of {BIG_N} studies"
    big.locator("#f-search").fill("")
    big.wait_for_function("n => document.getElementById('summary').textContent.startsWith(`${n} studies`)", arg=BIG_N)


def test_search_matches_report_text_already_loaded(page, demo):
    launch(page, demo, "pat-amy")
    knee = [s.uid for s in demo.data.studies if s.patient_id == "pat-amy" and s.report
            and "cruciate" in s.report.conclusion.lower()]
    assert knee
    page.locator("#f-search").fill("Cruciate  ligament")
    assert sorted(rendered_uids(page)) == sorted(knee)
    assert "cruciate" not in page.evaluate("location.href").lower()  # search text never goes into the URL


@pytest.mark.parametrize(("preset", "years"), [("1y", 1), ("5y", 5)])
def test_date_presets_keep_the_recent_years(big, demo, preset, years):
    reset(big)
    big.locator(f'#f-range button[data-value="{preset}"]').click()
    assert big.locator(f'#f-range button[data-value="{preset}"]').get_attribute("aria-pressed") == "true"
    now_ms = big.evaluate("Date.now()")
    now = datetime.fromtimestamp(now_ms / 1000, UTC)
    since = now.replace(year=now.year - years)
    expected = [s for s in big_studies(demo) if s.started >= since]
    assert big.locator("#summary").text_content() == f"{len(expected)} of {BIG_N} studies"
    assert rendered_uids(big)[:3] == [s.uid for s in expected[:3]]
    assert f"range={preset}" in big.evaluate("location.hash")


def test_last_72_hours_preset(page, demo):
    launch(page, demo, "pat-ben")  # the STAT CT head from yesterday
    now = datetime.fromtimestamp(page.evaluate("Date.now()") / 1000, UTC)
    recent = {s.uid for s in demo.data.studies if s.patient_id == "pat-ben" and (now - s.started).days < 3}
    everything = {s.uid for s in demo.data.studies if s.patient_id == "pat-ben"}
    preset = page.locator('#f-range button[data-value="72h"]')
    # Ben's launch is an emergency encounter: the server's view.default_range opens the last 72 h.
    assert preset.get_attribute("aria-pressed") == "true"
    assert recent and set(rendered_uids(page)) == recent
    preset.click()  # off again: the whole history
    assert set(rendered_uids(page)) >= everything - recent
    preset.click()
    assert set(rendered_uids(page)) == recent


def test_jump_to_year_shows_and_focuses_that_years_newest_study(big, demo):
    reset(big)
    studies = big_studies(demo)
    year = studies[len(studies) // 2].started.year
    first_of_year = next(s for s in studies if s.started.year == year)
    big.locator("#jump-year").select_option(str(year))
    focused = big.evaluate("document.activeElement.dataset.studyUid")
    assert focused == first_of_year.uid
    box = big.locator(f'[data-study-uid="{first_of_year.uid}"]').bounding_box()
    assert 0 <= box["y"] < 900
    assert dom_nodes(big) <= 5000


# --- keyboard ---------------------------------------------------------------------------------

def test_arrow_keys_move_between_rows_and_the_list_is_one_tab_stop(big, demo):
    reset(big)
    studies = big_studies(demo)
    big.locator(f'[data-study-uid="{studies[0].uid}"]').focus()
    assert big.evaluate("document.querySelectorAll('li.study[tabindex=\"0\"]').length") == 1
    big.keyboard.press("ArrowDown")
    big.keyboard.press("ArrowDown")
    assert big.evaluate("document.activeElement.dataset.studyUid") == studies[2].uid
    big.keyboard.press("ArrowUp")
    assert big.evaluate("document.activeElement.dataset.studyUid") == studies[1].uid
    big.keyboard.press("End")
    assert big.evaluate("document.activeElement.dataset.studyUid") == studies[-1].uid
    big.keyboard.press("Home")
    assert big.evaluate("document.activeElement.dataset.studyUid") == studies[0].uid
    assert big.evaluate("document.querySelectorAll('li.study[tabindex=\"0\"]').length") == 1


def test_study_titles_are_headings_and_link_names_say_which_study(page, demo):
    launch(page, demo, "pat-amy")
    row = page.locator("#years li.study").first
    title = row.locator("h4.study-desc")
    assert title.count() == 1
    assert row.get_attribute("aria-labelledby") == title.get_attribute("id")
    link = row.locator("a.viewer-link").first
    name = link.evaluate("a => a.textContent")
    assert title.text_content() in name and "opens in a new tab" in name


# --- fits the chart ---------------------------------------------------------------------------


@pytest.mark.parametrize("patient", ["pat-amy", "pat-ben"])
def test_nothing_is_clipped_at_200_percent_zoom(browser, demo, patient):
    # 200% zoom of a 600 px frame: a 300 CSS px viewport (WCAG 1.4.10 reflow).
    context, page = new_page(browser, 300, 380, device_scale_factor=2)
    try:
        launch(page, demo, patient)
        page.locator("#f-toggle").click()
        assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
        clipped = page.evaluate("""() => [...document.querySelectorAll(
            '.chip-name, .study-desc, .study-facts > li, .fbtn-label, .attention-desc, .btn, .tag')]
          .filter(e => e.getClientRects().length && e.scrollWidth > e.clientWidth + 1)
          .map(e => e.className + ': ' + e.textContent.slice(0, 40))""")
        assert clipped == []
    finally:
        context.close()


def luminance_of(page, selector: str, prop: str = "backgroundColor") -> float:
    return page.evaluate("""([sel, prop]) => {
      const [r, g, b] = getComputedStyle(document.querySelector(sel))[prop].match(/[\\d.]+/g).map(Number);
      const c = [r, g, b].map(v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
      return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2];
    }""", [selector, prop])


def test_dark_mode_follows_prefers_color_scheme(browser, demo):
    context, page = new_page(browser, color_scheme="dark")
    try:
        launch(page, demo, "pat-amy")
        assert luminance_of(page, "body") < 0.05
        assert luminance_of(page, "body", "color") > 0.6
        assert luminance_of(page, ".chip") < 0.1  # the surfaces too, not only the page
        assert luminance_of(page, ".btn-view") < 0.1
    finally:
        context.close()




def test_filters_work_from_the_keyboard(page, demo):
    launch(page, demo, "pat-amy")
    page.locator("#f-toggle").focus()
    if page.locator("#f-toggle").get_attribute("aria-expanded") == "false":
        page.keyboard.press("Enter")
    button = page.locator('#f-modality button[data-value="MR"]')
    button.focus()
    page.keyboard.press("Enter")
    assert button.get_attribute("aria-pressed") == "true"
    mr = {s.uid for s in demo.data.studies if s.patient_id == "pat-amy" and "MR" in s.modalities}
    assert set(rendered_uids(page)) == mr
    page.keyboard.press("Space")
    assert button.get_attribute("aria-pressed") == "false"
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "f-search"


def test_stylesheet_and_modules_are_same_origin_files(page, demo):
    launch(page, demo, "pat-amy")
    scripts = page.locator("script[src]").evaluate_all("s => s.map(e => [e.type, new URL(e.src).pathname])")
    assert scripts == [["module", "/static/timeline/main.js"], ["module", "/static/report-panel.js"],
                       ["", "/static/ttfi.js"]]
    assert re.search(r"script-src 'self'", page.evaluate("""async () =>
        (await fetch(location.href)).headers.get('content-security-policy')"""))
