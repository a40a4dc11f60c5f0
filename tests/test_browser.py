"""The in-chart timeline in a real browser: Debian's Chromium driven by Playwright, against the demo.

The demo serves the app and the sandbox (EHR chart, outside facility, DICOMweb archive) on one
loopback port. Each test launches from the sandbox chart, so the whole SMART launch, the
server-sent event stream and the page script run for real. Faults and delays are set on the
running sandbox (`sandbox.extensions["sandbox"]`) and cleared after each test.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import unquote

import pytest

from tests import demo_fixtures
from tests.conftest import CHROMIUM, need

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "docs" / "screenshots"


def save_screenshot(target, name: str) -> None:
    """With SAVE_SCREENSHOTS=1, keep what the test saw (for review; docs/ holds the demo's own shots)."""
    if os.environ.get("SAVE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        target.screenshot(path=str(SCREENSHOTS / name))
HOSTILE = '<script>alert("x")</script>"><img src=x onerror=alert(1)>'
RLO = "\u202e"
LONG = "LONG DESCRIPTION " * 700  # ~12 kB


def _demo_parts():
    try:
        from app import api  # noqa: F401  # the lead's JSON/SSE API
        from sandbox.data import PATIENTS, DicomPatient, SandboxReport, standard_data
        from sandbox.demo import serve_demo
    except ImportError as exc:
        need("the demo (app.api + sandbox)", False, f"cannot import it yet ({exc})")
        raise
    return serve_demo, PATIENTS, DicomPatient, SandboxReport, standard_data


def _hostile_data(PATIENTS, DicomPatient, SandboxReport, standard_data):
    """The standard data plus "pat-zed", whose EHR studies carry hostile and oversized strings."""
    from sandbox.data import SandboxData, study_uid

    data = standard_data()
    zed = replace(PATIENTS[0], id="pat-zed", family=f"{RLO}Zed{HOSTILE}", given=("Zoë",), mrn="SB100099",
                  outside_mrn=None, outside_id=None, encounter_id=None)
    dicom = DicomPatient(zed.mrn, "SANDBOX-PACS", "ZED^ZOE", zed.birth_date, "F")
    base = [s for s in data.studies if s.patient_id == "pat-amy" and s.locations == frozenset({"ehr", "pacs"})]
    hostile = []
    for n, (study, description) in enumerate(zip(base[:2], (HOSTILE + RLO + " right", LONG), strict=True)):
        key = f"zed-{n}"
        report = SandboxReport(f"dr-{key}", "final", study.started, f"{RLO}{HOSTILE}", "N")
        hostile.append(replace(study, key=key, uid=study_uid(key), patient_id="pat-zed", description=description,
                               accession=f"A{n}{HOSTILE}"[:40], locations=frozenset({"ehr"}), dicom_patient=dicom,
                               report=report, order=None))
    return data.merged(SandboxData((zed,), tuple(hostile)))


@pytest.fixture(scope="module")
def demo():
    need("Chromium", CHROMIUM.exists(), "apt-get install chromium")
    serve_demo, PATIENTS, DicomPatient, SandboxReport, standard_data = _demo_parts()
    data = _hostile_data(PATIENTS, DicomPatient, SandboxReport, standard_data)
    with serve_demo(sandbox_options={"data": data}) as running:
        running.data = data
        yield running


sandbox_state = demo_fixtures.sandbox_state  # cleared after each test (tests/demo_fixtures.py)


@pytest.fixture
def dialogs() -> list[str]:
    return []


@pytest.fixture
def page(browser, dialogs) -> Iterator:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    yield page
    context.close()


def uids_of(demo, patient_id: str) -> set[str]:
    return {s.uid for s in demo.data.studies if s.patient_id == patient_id}


def open_chart(page, demo, patient_id: str):
    """Open the sandbox chart with `patient_id` selected: the app launches inside its iframe."""
    page.goto(f"{demo.chart_url}?patient={patient_id}")
    frame = page.frame_locator("#app-frame")
    frame.locator("#study-list").wait_for(state="attached", timeout=15_000)
    return frame


def wait_done(frame, timeout: int = 20_000) -> None:
    """Until the stream has ended; fails with the page's own message if it ended in error."""
    frame.locator('#study-list[aria-busy="false"]').wait_for(state="attached", timeout=timeout)
    fatal = frame.locator("#fatal")
    assert fatal.is_hidden(), fatal.text_content()


def row_uids(frame) -> set[str]:
    return set(frame.locator("[data-study-uid]").evaluate_all("rows => rows.map(r => r.dataset.studyUid)"))


# --- the happy path ---------------------------------------------------------------------------------

def test_studies_from_every_archive_appear_in_the_chart_frame(page, demo):
    frame = open_chart(page, demo, "pat-amy")
    wait_done(frame)
    statuses = dict(frame.locator("[data-archive-id]").evaluate_all(
        "chips => chips.map(c => [c.dataset.archiveId, c.dataset.status])"))
    assert statuses == {"ehr": "ok", "outside": "ok", "pacs": "ok"}
    assert row_uids(frame) == uids_of(demo, "pat-amy")
    # One row per study even when several archives hold it; sources listed on the row.
    both = next(s for s in demo.data.studies if s.patient_id == "pat-amy" and s.locations == {"ehr", "pacs"})
    merged = frame.locator(f'[data-study-uid="{both.uid}"]')
    assert merged.count() == 1
    assert merged.locator(".badge-source").count() == 2
    assert frame.locator("#live-status").text_content().startswith("Search finished")
    # Embedded launch: the EHR shows the banner, so the app does not.
    assert frame.locator(".patient-banner").count() == 0
    frame.locator("img.thumb-img").first.wait_for(timeout=10_000)
    save_screenshot(page.locator("#app-frame"), "timeline-test.png")


def test_full_window_launch_shows_the_patient_banner(page, demo):
    page.set_viewport_size({"width": 1000, "height": 1000})
    page.goto(f"{demo.chart_url}launch?patient=pat-ben")
    page.locator(".patient-banner").wait_for(timeout=15_000)
    wait_done(page)
    assert "Okafor" in page.locator(".patient-banner").text_content()
    assert page.locator("#attention-list li").count() >= 1  # the STAT CT head with a preliminary report
    page.locator(".thumb.has-image").first.wait_for(timeout=10_000)
    save_screenshot(page, "timeline-full-test.png")
    stat = page.locator(".attention-link").filter(has_text="CT HEAD")
    stat.first.click()
    focused = page.evaluate("document.activeElement.dataset.studyUid")
    assert focused in uids_of(demo, "pat-ben")
    assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")


@pytest.mark.parametrize("width", [600, 1000])
def test_no_horizontal_scroll_from_600_to_1000_px(page, demo, width):
    page.set_viewport_size({"width": width, "height": 900})
    page.goto(f"{demo.chart_url}launch?patient=pat-ben")
    wait_done(page)
    assert page.evaluate("document.documentElement.scrollWidth") <= width


def test_filter_by_modality_without_reload(page, demo):
    frame = open_chart(page, demo, "pat-amy")
    wait_done(frame)
    everything = row_uids(frame)
    mr = {s.uid for s in demo.data.studies if s.patient_id == "pat-amy" and "MR" in s.modalities}
    button = frame.locator('#f-modality button[data-value="MR"]')
    assert button.get_attribute("aria-pressed") == "false"
    assert button.locator(".count").text_content() == str(len(mr))
    button.click()
    assert button.get_attribute("aria-pressed") == "true"
    assert row_uids(frame) == mr
    assert "modality=MR" in frame.locator("body").evaluate("() => location.hash")
    frame.locator("#f-clear").click()
    assert row_uids(frame) == everything


def test_viewer_link_opens_in_a_new_tab_and_is_logged(page, demo, caplog):
    caplog.set_level(logging.INFO, logger="app.access")
    access = logging.getLogger("app.access")  # it does not propagate to the root (the general log)
    access.addHandler(caplog.handler)
    try:
        _open_viewer_and_check_the_log(page, demo, caplog)
    finally:
        access.removeHandler(caplog.handler)


def _open_viewer_and_check_the_log(page, demo, caplog):
    frame = open_chart(page, demo, "pat-amy")
    wait_done(frame)
    link = frame.locator("a.viewer-link").first
    href, uid, archive = link.get_attribute("href"), link.get_attribute("data-uid"), link.get_attribute("data-archive")
    assert link.get_attribute("target") == "_blank" and link.get_attribute("rel") == "noopener"
    assert uid in unquote(href)
    if archive == "pacs":  # OHIF through the gateway: {viewer.url}/viewer/dicomwebproxy?url=…&studyInstanceUIDs=<uid>
        assert re.fullmatch(rf"{re.escape(demo.chart_url)}viewer/ohif/viewer/dicomwebproxy\?url=[^&]+"
                            rf"&studyInstanceUIDs={re.escape(uid)}", href)
    with page.context.expect_page() as opened, page.expect_response(re.compile(r"/api/access-log$")) as beacon:
        link.click()
    assert opened.value.url == href
    assert beacon.value.request.method == "POST" and beacon.value.status == 204
    # Recorded in the audit trail (committed before the 204); the general log gets no identifiers.
    opened_events = [e for e in demo.app.extensions["audit"].store.query("pat-amy") if e.action == "open-viewer"]
    assert (opened_events[-1].studies, opened_events[-1].archive) == ((uid,), archive)
    assert all(uid not in r.getMessage() for r in caplog.records if r.name == "app.access")


def test_thumbnails_load_lazily_with_an_icon_placeholder(page, demo):
    frame = open_chart(page, demo, "pat-amy")
    wait_done(frame)
    assert frame.locator(".thumb .thumb-icon").count() == len(uids_of(demo, "pat-amy"))
    thumbs = frame.locator("img.thumb-img")
    assert thumbs.count() >= 1
    assert thumbs.first.get_attribute("loading") == "lazy"
    frame.locator(".thumb.has-image").first.wait_for(timeout=10_000)
    assert thumbs.first.evaluate("img => img.complete && img.naturalWidth > 0")


# --- slow and failing archives ----------------------------------------------------------------------

def test_a_slow_archive_answers_after_the_others(page, demo, sandbox_state):
    sandbox_state.delays["dicomweb"] = 2.5
    frame = open_chart(page, demo, "pat-amy")
    frame.locator('[data-archive-id="ehr"][data-status="ok"]').wait_for(timeout=15_000)
    assert frame.locator('[data-archive-id="pacs"]').get_attribute("data-status") == "searching"
    early = row_uids(frame)
    assert early  # the EHR's studies are already on screen
    pacs_only = {s.uid for s in demo.data.studies if s.patient_id == "pat-amy" and s.locations == {"pacs"}}
    assert not early & pacs_only
    frame.locator('[data-archive-id="pacs"][data-status="ok"]').wait_for(timeout=20_000)
    wait_done(frame)
    assert pacs_only <= row_uids(frame)


def test_a_failed_archive_shows_its_reason_while_the_rest_work(page, demo, sandbox_state):
    sandbox_state.faults["outside"] = "503"
    frame = open_chart(page, demo, "pat-amy")
    wait_done(frame)
    chip = frame.locator('[data-archive-id="outside"]')
    assert chip.get_attribute("data-status") == "error"
    assert chip.get_attribute("title")
    chip.locator(".chip-reason > summary").click()
    assert chip.locator(".chip-reason > p").is_visible()
    assert chip.locator(".chip-reason > p").text_content() == chip.get_attribute("title")
    # Plain words for the clinician; the protocol detail for integrators behind its own disclosure.
    assert "HTTP" not in chip.get_attribute("title")
    chip.locator(".chip-detail > summary").click()
    assert "503" in chip.locator(".chip-detail pre").text_content()
    assert frame.locator('[data-archive-id="ehr"]').get_attribute("data-status") == "ok"
    assert len(row_uids(frame)) >= 1


# --- hostile data -----------------------------------------------------------------------------------

def test_hostile_strings_render_as_text(page, demo, dialogs):
    page.set_viewport_size({"width": 900, "height": 900})
    page.goto(f"{demo.chart_url}launch?patient=pat-zed")
    wait_done(page)
    assert page.locator("[data-study-uid]").count() == 2
    page.wait_for_timeout(300)
    assert dialogs == []
    assert page.evaluate("document.querySelectorAll('img[src=\"x\"], .study script').length") == 0
    text = page.locator("#years").text_content()
    assert HOSTILE in text
    assert HOSTILE in page.locator(".patient-banner").text_content()
    description = page.locator(".study-desc").filter(has_text="LONG DESCRIPTION").first
    assert description.get_attribute("dir") == "auto"
    assert description.evaluate("e => e.getBoundingClientRect().height < 80")  # clamped, not 12 kB of text
    assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")


# --- fits the chart -------------------------------------------------------------------------------

def own_page(browser, width: int = 1000, height: int = 900, **options):
    context = browser.new_context(viewport={"width": width, "height": height}, **options)
    return context, context.new_page()


def launch_embedded(page, demo, patient: str, *, style: bool = False) -> None:
    """The chart frame's own launch (embedded=1: no patient banner), full window, until done."""
    page.goto(f"{demo.chart_url}launch?patient={patient}&embedded=1{'&style=1' if style else ''}")
    wait_done(page)


def rendered_uids(page) -> list[str]:
    return page.locator("[data-study-uid]").evaluate_all("rows => rows.map(r => r.dataset.studyUid)")


def test_the_first_study_row_is_fully_visible_in_a_600_by_760_chart_frame(browser, demo):
    context, page = own_page(browser, 600, 760)
    try:
        launch_embedded(page, demo, "pat-amy")
        assert page.locator("#archive-chips [data-archive-id]").count() == 3
        assert page.evaluate("window.scrollY") == 0
        box = page.locator("[data-study-uid]").first.bounding_box()
        assert box["y"] >= 0 and box["y"] + box["height"] <= 760, box
        assert page.locator("#filters-more").is_hidden()  # the other filters fold away in a narrow frame
        page.locator("#f-toggle").click()
        assert page.locator("#f-modality button").first.is_visible()
    finally:
        context.close()



def test_the_ehr_style_wins_over_the_system_scheme_and_its_fonts_apply(browser, demo):
    from sandbox.smart import STYLE

    context, page = own_page(browser, color_scheme="dark")
    try:
        launch_embedded(page, demo, "pat-amy", style=True)
        assert page.evaluate("document.documentElement.dataset.theme") == "light"  # #edeae3 is light
        assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(237, 234, 227)"
        family = page.evaluate("getComputedStyle(document.body).fontFamily")
        assert family == STYLE["font_family_body"].replace("'", '"')  # the quotes arrive as quotes
        assert "&#39;" not in page.content()
        assert page.evaluate("getComputedStyle(document.documentElement).fontSize") == STYLE["dim_font_size"]
        heading = page.evaluate("getComputedStyle(document.querySelector('h1')).fontFamily")
        assert heading.startswith("HelveticaNeue-Light") and '"Lucida Grande"' in heading
    finally:
        context.close()



def test_a_late_study_never_moves_the_row_under_the_pointer(browser, demo, sandbox_state):
    sandbox_state.delays["dicomweb"] = 2.0
    context, page = own_page(browser, 1000, 400)
    try:
        page.goto(f"{demo.chart_url}launch?patient=pat-amy&embedded=1")
        page.locator('[data-archive-id="ehr"][data-status="ok"]').wait_for(timeout=15_000)
        page.locator('[data-archive-id="outside"][data-status="ok"]').wait_for(timeout=15_000)
        assert page.locator('[data-archive-id="pacs"]').get_attribute("data-status") == "searching"
        early = rendered_uids(page)
        # Only the PACS has these (the EHR may hold the report, not the study): they arrive last.
        late = {s.uid for s in demo.data.studies if s.patient_id == "pat-amy" and not s.locations & {"ehr", "outside"}}
        assert late and not late & set(early)
        target = page.locator(f'#years [data-study-uid="{early[-1]}"]')
        target.scroll_into_view_if_needed()
        box = target.bounding_box()
        page.mouse.move(box["x"] + 200, box["y"] + 10)
        page.locator('[data-archive-id="pacs"][data-status="ok"]').wait_for(timeout=15_000)
        page.wait_for_timeout(300)
        assert late <= set(rendered_uids(page))
        order = rendered_uids(page)
        assert any(order.index(u) < order.index(early[-1]) for u in late)  # something did arrive above it
        assert abs(target.bounding_box()["y"] - box["y"]) < 1
    finally:
        context.close()
