"""The released OHIF v3 viewer, in Chromium, opened from the timeline's link through the gateway.

Real parts only: @ohif/app's prebuilt dist/ (fetched by .ci/test, served on loopback on its own
origin), the demo, and a real Orthanc holding Amy's CT beside another patient with the same
PatientID under another issuer (and one with the PatientID in lower case). OHIF's study browser
asks `studies?PatientID=…`, which Orthanc answers with the traps; through the gateway it lists
exactly the timeline's studies.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from gateway_env import gateway_env
from ohif import installed, ohif_app
from PIL import Image, ImageStat
from playwright.sync_api import expect

from app.serving import serve
from tests.conftest import need

pytestmark = pytest.mark.browser

SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "screenshots" / "ohif-gateway.png"
STUDY_ITEMS = '[data-cy="studyBrowser-panel"] button[data-radix-collection-item]'


@pytest.fixture(scope="module")
def ohif_env(tmp_path_factory, orthanc):  # `orthanc`: skips (or fails in CI) where Orthanc is not installed
    need("OHIF v3 (@ohif/app)", installed(), "bash .ci/test fetches it with `npm pack @ohif/app@3` into .ci/ohif")
    with serve(ohif_app()) as viewer, gateway_env(tmp_path_factory.mktemp("ohif"), viewer_url=viewer,
                                                  images=5) as env:
        yield env, viewer


@pytest.fixture
def opened(ohif_env, browser):
    """OHIF opened from the Orthanc study's timeline link; every request and gateway answer recorded."""
    env, _ = ohif_env
    session = env.launch("pat-amy")
    timeline = env.studies(session)["studies"]
    study = next(s for s in timeline if s["uid"] == env.amy)
    (link,) = [v for v in study["viewers"] if v["archive"] == "orthanc"]
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    requests_seen, answers = [], []
    page.on("request", lambda r: requests_seen.append(r))
    page.on("response", lambda r: answers.append(r) if r.url.startswith(link["gateway"]) else None)
    page.goto(link["url"])
    yield env, page, timeline, link, requests_seen, answers
    context.close()


def test_ohif_lists_exactly_the_guarded_studies_and_renders_the_image(opened):
    _, page, timeline, link, _, _ = opened
    guarded = [s for s in timeline if any(v.get("gateway") == link["gateway"] for v in s["viewers"])]
    items = page.locator(STUDY_ITEMS)
    expect(items).to_have_count(len(guarded), timeout=90_000)
    listed = page.locator('[data-cy="studyBrowser-panel"]').inner_text()
    assert "TRAP" not in listed
    assert {s["description"] for s in guarded if s.get("description")} <= set(listed.splitlines())
    # The image: the viewport's overlay names the series and the slice, and the canvas is not blank.
    pane = page.locator('[data-cy="viewport-pane"]').first
    expect(page.locator('[data-cy="viewport-overlay-top-left"]')).to_contain_text("CT ABDOMEN ORTHANC", timeout=60_000)
    expect(page.locator('[data-cy="viewport-overlay-bottom-right"]')).to_contain_text("/5", timeout=60_000)
    pixels = Image.open(io.BytesIO(pane.screenshot())).convert("L")
    low, high = pixels.getextrema()
    assert high - low > 100 and ImageStat.Stat(pixels).stddev[0] > 20, "the viewport shows a rendered image"
    if os.environ.get("SAVE_SCREENSHOTS") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT))


def test_ohif_never_reaches_the_archive_and_never_sees_the_trap(opened):
    env, page, _, _, requests_seen, answers = opened
    expect(page.locator(STUDY_ITEMS).first).to_be_visible(timeout=90_000)
    expect(page.locator('[data-cy="viewport-overlay-bottom-right"]')).to_contain_text("/5", timeout=60_000)
    assert answers, "the viewer fetched through the gateway"
    assert not [r.url for r in requests_seen if r.url.startswith(env.orthanc)]
    assert not [r for r in requests_seen if "authorization" in {h.lower() for h in r.headers}]
    for answer in answers:
        if "json" in (answer.headers.get("content-type") or ""):
            body = answer.text()
            assert env.other_issuer not in body and env.case_variant not in body
            assert env.orthanc not in body
    assert all(a.status in (200, 206) for a in answers), [(a.status, a.url) for a in answers if a.status >= 300]


def test_a_compare_across_archives_opens_in_one_ohif_session_through_one_gateway(ohif_env, browser):
    env, _ = ohif_env
    timeline = env.studies(env.launch("pat-amy"))["studies"]
    current = next(s for s in timeline if s["uid"] == env.amy)  # in Orthanc
    prior = next(s for s in timeline if s["sources"][-1:] == ["pacs"] and "CT" in s["modalities"])  # sandbox PACS
    (link,) = [v for v in current["viewers"] if v["archive"] == "orthanc"]
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    seen: list[tuple[int, str]] = []
    page.on("response", lambda r: seen.append((r.status, r.url)))
    try:
        page.goto(link["compare_url_template"].replace("{prior_uid}", prior["uid"]))
        # Both studies open in the study browser, each with its series thumbnails.
        expect(page.locator('[data-cy="study-browser-thumbnail"]')).to_have_count(1 + prior["series_count"],
                                                                                 timeout=90_000)
        metadata = {url.split("/studies/", 1)[1].split("/", 1)[0] for status, url in seen
                    if status == 200 and url.startswith(link["gateway"]) and url.endswith("/metadata")}
        assert {env.amy, prior["uid"]} <= metadata
        assert not [url for _, url in seen if "/sandbox/dicomweb" in url or url.startswith(env.orthanc)]
        if os.environ.get("SAVE_SCREENSHOTS") == "1":
            page.screenshot(path=str(SCREENSHOT.with_name("ohif-gateway-compare.png")))
    finally:
        context.close()
