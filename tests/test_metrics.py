"""Time-to-image: the browser beacon, /metrics (who may read it, what it exposes) and the operations page."""

from __future__ import annotations

import re

import pytest
import requests

from app.keys import generate_keys
from sandbox.demo import Demo, serve_demo
from tests.conftest import CHROMIUM, need

KEYS = generate_keys()
TOKEN = "metrics-test-token-0123456789"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("metrics")
    options = {"APP_KEYS": KEYS, "AUDIT_STORE": f"sqlite:///{root / 'audit.db'}", "AUDIT_FHIR_URL": None,
               "METRICS_TOKEN": TOKEN, "CDS_DEADLINE_S": 5.0}
    with serve_demo(app_options=options) as running:
        yield running


def launch(demo: Demo, patient: str = "pat-amy") -> requests.Session:
    browser = requests.Session()
    resp = browser.get(f"{demo.base_url}/sandbox/launch", params={"patient": patient, "embedded": "1"}, timeout=30)
    assert resp.url == f"{demo.base_url}/timeline"
    return browser


def sample_count(text: str, name: str, **labels: str) -> float:
    """The _count of histogram `name` (summed over series matching `labels`)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(f"{name}_count"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def metrics_text(demo: Demo) -> str:
    resp = requests.get(f"{demo.base_url}/metrics", timeout=10)
    assert resp.status_code == 200
    return resp.text


def test_metrics_expose_the_three_time_to_image_histograms(demo):
    text = metrics_text(demo)
    for name in ("imaging_timeline_time_to_first_study_seconds", "imaging_timeline_time_to_complete_seconds",
                 "imaging_timeline_archive_seconds"):
        assert f"# TYPE {name} histogram" in text


def test_the_server_records_each_archives_latency_and_status(demo):
    before = metrics_text(demo)
    launch(demo).get(f"{demo.base_url}/api/studies", timeout=60)
    after = metrics_text(demo)
    for archive in ("ehr", "outside", "pacs"):
        assert sample_count(after, "imaging_timeline_archive_seconds", archive=archive, status="ok") > sample_count(
            before, "imaging_timeline_archive_seconds", archive=archive, status="ok")


def test_each_archive_is_counted_once_per_search_however_often_its_answer_is_read(demo):
    """A reload, a second stream and the cached answers replay the one search: the archives were asked once."""
    before = metrics_text(demo)
    browser = launch(demo)  # /timeline starts the search
    for _ in range(2):
        assert browser.get(f"{demo.base_url}/api/studies", timeout=60).status_code == 200
    stream = browser.get(f"{demo.base_url}/api/studies/stream", timeout=60)
    assert "event: done" in stream.text
    after = metrics_text(demo)
    for archive in ("ehr", "outside", "pacs"):
        asked = (sample_count(after, "imaging_timeline_archive_seconds", archive=archive)
                 - sample_count(before, "imaging_timeline_archive_seconds", archive=archive))
        assert asked == 1, archive


def test_a_failing_archive_is_counted_with_its_status(demo):
    rt = demo.sandbox.extensions["sandbox"]
    before = metrics_text(demo)
    rt.faults["outside"] = "500"
    try:
        launch(demo).get(f"{demo.base_url}/api/studies", timeout=60)
    finally:
        del rt.faults["outside"]
    assert sample_count(metrics_text(demo), "imaging_timeline_archive_seconds", archive="outside",
                        status="error") > sample_count(before, "imaging_timeline_archive_seconds", archive="outside",
                                                       status="error")


def test_the_server_times_the_launch_callback(demo):
    before = sample_count(metrics_text(demo), "imaging_timeline_launch_seconds")
    launch(demo)
    assert sample_count(metrics_text(demo), "imaging_timeline_launch_seconds") == before + 1


def test_the_beacon_feeds_the_browser_histograms(demo):
    browser = launch(demo)
    before = metrics_text(demo)
    resp = browser.post(f"{demo.base_url}/api/timings", json={
        "first_study_ms": 820, "complete_ms": 1900,
        "archives": [{"id": "pacs", "status": "ok", "ms": 700}, {"id": "evil\"}", "status": "ok", "ms": 1}]},
        timeout=10)
    assert resp.status_code == 200 and resp.json() == {"recorded": 3}
    after = metrics_text(demo)
    assert sample_count(after, "imaging_timeline_time_to_first_study_seconds") == sample_count(
        before, "imaging_timeline_time_to_first_study_seconds") + 1
    assert sample_count(after, "imaging_timeline_time_to_complete_seconds") == sample_count(
        before, "imaging_timeline_time_to_complete_seconds") + 1
    assert "evil" not in after  # only the app's own archives become label values


@pytest.mark.parametrize(("send", "status"), [
    (lambda s, url: s.post(url, data={"first_study_ms": "1"}, timeout=10), 400),  # a form: cross-site capable
    (lambda s, url: s.post(url, json={"first_study_ms": -5}, timeout=10), 400),
    (lambda s, url: s.post(url, json={"first_study_ms": "fast"}, timeout=10), 400),
    (lambda s, url: s.post(url, json={"complete_ms": 10**9}, timeout=10), 400),
    (lambda s, url: s.post(url, json=[1, 2], timeout=10), 400),
    (lambda s, url: s.post(url, json={}, timeout=10), 404),
])
def test_bad_beacons_are_refused(demo, send, status):
    assert send(launch(demo), f"{demo.base_url}/api/timings").status_code == status


def test_a_beacon_without_a_session_is_refused(demo):
    assert requests.post(f"{demo.base_url}/api/timings", json={"first_study_ms": 5}, timeout=10).status_code == 401


@pytest.mark.parametrize("path", ["/metrics", "/admin/time-to-image"])
def test_a_proxied_request_needs_the_token(demo, path):
    url = f"{demo.base_url}{path}"
    assert requests.get(url, headers={"X-Forwarded-For": "203.0.113.9"}, timeout=10).status_code == 403
    assert requests.get(url, headers={"X-Forwarded-For": "203.0.113.9", "Authorization": "Bearer wrong"},
                        timeout=10).status_code == 403
    assert requests.get(url, headers={"X-Forwarded-For": "203.0.113.9", "Authorization": f"Bearer {TOKEN}"},
                        timeout=10).status_code == 200


def test_the_operations_page_plots_and_tabulates_the_runs_just_made(demo):
    browser = launch(demo)
    browser.post(f"{demo.base_url}/api/timings", json={"first_study_ms": 640, "complete_ms": 1500}, timeout=10)
    page = requests.get(f"{demo.base_url}/admin/time-to-image", timeout=10)
    assert page.status_code == 200
    html = page.text
    assert html.count("<svg") == 4  # p50/p90 per day (first study, complete), per archive (server, browser)
    assert 'data-archive-bar="pacs"' in html
    assert re.search(r'<polyline class="series-p50" data-series="p50" points="[0-9.]+,[0-9.]+', html)
    assert re.search(r'<polyline class="series-p90" data-series="p90" points="[0-9.]+,[0-9.]+', html)
    assert 'id="archive-errors"' in html and 'data-archive="pacs"' in html
    assert 'data-count="warnings"' in html


def test_the_operations_page_counts_warnings_and_how_often_they_were_followed(demo):
    before = requests.get(f"{demo.base_url}/admin/time-to-image", timeout=10).text
    warnings = int(re.search(r'data-count="warnings">(\d+)<', before).group(1))
    page = requests.get(f"{demo.base_url}/sandbox/cds/panel", params={"patient": "pat-ben", "draft": "CT head"},
                        timeout=30)
    start = page.text.index('class="cds-suggestion"')
    form = page.text[start:page.text.index("</form>", start)]
    fields = dict(re.findall(r'name="([a-z]+)" value="([^"]*)"', form))
    requests.post(f"{demo.base_url}/sandbox/cds/feedback", data=fields, timeout=30)
    after = requests.get(f"{demo.base_url}/admin/time-to-image", timeout=10).text
    assert int(re.search(r'data-count="warnings">(\d+)<', after).group(1)) == warnings + 1
    assert int(re.search(r'data-count="followed">(\d+)<', after).group(1)) >= 1


# --- the page's own measurement, in a real browser ---------------------------------------------------


@pytest.mark.browser
def test_the_timeline_page_reports_its_time_to_image(demo, browser):
    need("Chromium", CHROMIUM.exists(), "apt-get install chromium")
    before = metrics_text(demo)
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    try:
        with page.expect_response(re.compile(r"/api/timings$"), timeout=30_000) as beacon:
            page.goto(f"{demo.chart_url}launch?patient=pat-amy&embedded=1")
        resp = beacon.value
        assert resp.status == 200
        sent = resp.request.post_data_json
        assert sent["first_study_ms"] is not None and sent["first_study_ms"] <= sent["complete_ms"]
        assert {a["id"]: a["status"] for a in sent["archives"]} == {"ehr": "ok", "outside": "ok", "pacs": "ok"}
    finally:
        context.close()
    after = metrics_text(demo)
    assert sample_count(after, "imaging_timeline_time_to_complete_seconds") == sample_count(
        before, "imaging_timeline_time_to_complete_seconds") + 1
    assert sample_count(after, "imaging_timeline_browser_archive_seconds", archive="outside", status="ok") >= 1
