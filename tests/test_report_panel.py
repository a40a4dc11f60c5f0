"""The report panel in a real browser (Debian Chromium via Playwright) against the demo.

Each test launches the app full-window from the sandbox EHR, waits for the stream to finish and
opens reports the way a clinician does: a click, or Tab to the control and Enter.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sandbox.data import standard_data, study_uid
from tests import browser_pages
from tests.test_browser import wait_done

pytestmark = pytest.mark.browser


demo = browser_pages.demo  # the plain demo, one per module (tests/browser_pages.py)


@pytest.fixture
def dialogs() -> list[str]:
    return []


@pytest.fixture
def requests_seen() -> list[str]:
    return []


@pytest.fixture
def page(browser, dialogs, requests_seen) -> Iterator:
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    page = context.new_page()
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("request", lambda r: requests_seen.append(r.url))
    yield page
    context.close()


def timeline(page, demo, patient: str):
    page.goto(f"{demo.chart_url}launch?patient={patient}")
    wait_done(page)
    return page


def row(page, key: str):
    return page.locator(f'[data-study-uid="{study_uid(key)}"]')


def open_by_click(page, key: str):
    r = row(page, key)
    r.locator('[data-action="open-report"]').click()
    panel = r.locator("[data-report-panel]")
    panel.locator(".report-body[aria-busy='false']").wait_for(timeout=15_000)
    return panel


def test_a_click_opens_the_full_report_under_the_row(page, demo):
    timeline(page, demo, "pat-faye")
    panel = open_by_click(page, "faye-xr-chest")
    assert panel.get_attribute("data-report-id") == "dr-faye-xr-chest"
    text = panel.text_content()
    for expected in ("The lungs are clear.", "No acute cardiopulmonary process.", "Dr. Jane Radiant",
                     "Persistent cough", "Sandbox Hospital (EHR)"):
        assert expected in text, expected
    assert panel.locator("h4", has_text="Findings").count() == 1
    # The one-line impression stays in the row.
    assert row(page, "faye-xr-chest").locator(".conclusion").text_content() == "No acute cardiopulmonary process."
    assert row(page, "faye-xr-chest").locator('[data-action="open-report"]').get_attribute("aria-expanded") == "true"


def test_enter_opens_and_escape_closes_returning_focus(page, demo):
    timeline(page, demo, "pat-faye")
    control = row(page, "faye-us-thyroid").locator('[data-action="open-report"]')
    control.focus()
    page.keyboard.press("Enter")
    panel = page.locator("[data-report-panel]")
    panel.locator(".report-body[aria-busy='false']").wait_for(timeout=15_000)
    assert "Right lobe 1.1 cm spongiform nodule" in panel.text_content()
    assert page.evaluate("document.activeElement.closest('[data-report-panel]') !== null")  # focus moved in
    assert panel.get_attribute("aria-labelledby")
    page.keyboard.press("Escape")
    assert page.locator("[data-report-panel]").count() == 0
    assert page.evaluate("document.activeElement.dataset.action") == "open-report"
    assert control.get_attribute("aria-expanded") == "false"


def test_the_panel_fits_a_600_px_chart(page, demo):
    page.set_viewport_size({"width": 600, "height": 900})
    timeline(page, demo, "pat-amy")
    panel = open_by_click(page, "amy-mr-knee")
    assert "Addendum" in panel.text_content() and "small joint effusion" in panel.text_content()
    box = panel.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 600
    assert page.evaluate("document.documentElement.scrollWidth") <= 600


def test_the_hostile_report_renders_inert(page, demo, dialogs, requests_seen):
    timeline(page, demo, "pat-faye")
    panel = open_by_click(page, "faye-xr-knee")
    page.wait_for_timeout(500)
    assert "Moderate osteoarthritis of the knee." in panel.text_content()
    assert dialogs == []
    assert page.evaluate("window.__hostileRan === undefined")
    assert panel.locator("script, iframe, img, style, form, input, [onclick], [onerror], [style]").count() == 0
    # The javascript: link is left as its text, not a link to anywhere (not even this page).
    assert panel.locator(".report-html a").count() == 0
    assert "See the prior." in panel.locator(".report-html").text_content()
    assert [u for u in requests_seen if "tracker.invalid" in u] == []
    assert all(u.startswith(demo.base_url) or u.startswith("data:") for u in requests_seen)


def test_a_pdf_report_is_offered_in_a_new_tab(page, demo):
    timeline(page, demo, "pat-faye")
    panel = open_by_click(page, "faye-ct-abdpel")
    link = panel.locator("a.report-attachment")
    assert link.count() == 1
    assert link.get_attribute("target") == "_blank"
    assert link.get_attribute("href") == f"{demo.base_url}/api/reports/ehr/dr-faye-ct-abdpel/attachments/0"


def test_a_dicom_sr_report_opens_from_a_pacs_only_row(page, demo):
    timeline(page, demo, "pat-faye")
    panel = open_by_click(page, "faye-ct-chest")
    assert panel.get_attribute("data-report-id") == study_uid("faye-ct-chest")
    assert "Stable 4 mm right lower lobe nodule." in panel.text_content()


@pytest.mark.parametrize("patient", [p.id for p in standard_data().patients])
def test_every_report_of_the_demo_patients_opens_in_full(page, demo, patient):
    # Amy has a report joined to a PACS study by accession; Ben and Dev outside-facility copies.
    timeline(page, demo, patient)
    controls = page.locator('[data-action="open-report"]')
    assert controls.count() >= 1
    for n in range(controls.count()):
        controls.nth(n).click()
        panel = page.locator("[data-report-panel]")
        panel.locator(".report-body[aria-busy='false']").wait_for(timeout=15_000)
        assert panel.locator(".report-error").count() == 0, panel.text_content()
        content = panel.locator(".report-content, .report-attachments").all_text_contents()
        assert "".join(content).strip(), f"report {n} of {patient} is empty"
        page.keyboard.press("Escape")


def test_images_held_elsewhere_say_why_and_shared_studies_get_a_viewer(page, demo):
    timeline(page, demo, "pat-elena")
    note = row(page, "elena-osh-mr-brain").locator(".images-note")
    assert note.text_content() == "Images are held at Riverside legacy PACS, which is not connected."
    timeline(page, demo, "pat-amy")
    # Shared into the PACS under the outside identity: the outside ImagingStudy.endpoint names the PACS.
    shared = row(page, "amy-osh-ct-head")
    assert shared.locator('a[data-kind="ohif"][data-archive="pacs"]').count() == 1


def test_a_second_archives_report_of_the_same_study_opens_on_its_own(page, demo):
    timeline(page, demo, "pat-ben")
    # Ben's launch is an emergency encounter, so the page opens on the last 72 h: show everything.
    preset = page.locator('#f-range button[aria-pressed="true"]')
    if preset.count():
        preset.click()
    controls = row(page, "ben-osh-ct-chest").locator('[data-action="open-report"]')
    assert controls.count() == 2
    second = controls.nth(1)
    assert second.text_content() == "Report from Outside Imaging Center"
    second.click()
    panel = page.locator("[data-report-panel]")
    panel.locator(".report-body[aria-busy='false']").wait_for(timeout=15_000)
    assert panel.get_attribute("data-report-id") == "osh-dr-ben-osh-ct-chest"
    page.keyboard.press("Escape")
    assert page.evaluate("document.activeElement.dataset.reportId") == "osh-dr-ben-osh-ct-chest"


def test_printing_shows_the_open_report_alone(page, demo):
    timeline(page, demo, "pat-faye")
    panel = open_by_click(page, "faye-xr-chest")
    page.evaluate("document.body.classList.add('printing-report')")  # what the Print button sets
    page.emulate_media(media="print")
    assert panel.is_visible()
    assert panel.locator(".report-tools").is_hidden()
    assert row(page, "faye-ct-abdpel").is_hidden()
    assert page.locator("#filters").is_hidden()
