"""Report-open latency in a real browser, as a ratio to the archive's own answer time for the same report.

    python bench/reports.py [--quick] [--write]

Debian's Chromium, driven by Playwright, launches the demo's timeline full window (a new browser
context and a new SMART launch per run, so neither the app's per-session report cache nor the
page's memory cache hides the archive), waits for the study stream to finish, then clicks the
row's "Read full report" control and times, in the page, from the click to the panel holding the
report's text (a MutationObserver on the row; `performance.now()` both ends).

Baseline, taken in the same run right after each open: the archive's own answer time for the
same report. A WSGI wrapper in front of the sandbox records every request the app made to an
archive while the report opened (path, query, Accept, Authorization); the bench replays them in
the same order over plain HTTP with `requests` and sums their times. The ratio is
click-to-text / archive time: what the app, the network hop and the browser add on top of what the
archive itself needs. The sandbox answers every archive request after a fixed delay (`--delay-ms`,
default 100 ms, a typical archive round trip on a hospital network).
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import requests
from _common import machine, median, p90, table, write_section

from sandbox.data import study_uid
from sandbox.demo import Demo, serve_demo

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync"]
# (label, patient, study key): one report per source and format.
REPORTS = (
    ("FHIR DiagnosticReport, HTML via Binary", "pat-faye", "faye-xr-chest"),
    ("FHIR DiagnosticReport, PDF via Binary", "pat-faye", "faye-ct-abdpel"),
    ("FHIR DocumentReference note", "pat-faye", "faye-us-thyroid"),
    ("FHIR DiagnosticReport, text + addendum", "pat-amy", "amy-mr-knee"),
    ("DICOM Basic Text SR (WADO-RS)", "pat-faye", "faye-ct-chest"),
)
OPEN_AND_WAIT = """async (uid) => {
  const row = document.querySelector(`[data-study-uid="${uid}"]`);
  const control = row.querySelector('[data-action="open-report"]');
  const shown = () => {
    const panel = row.querySelector('[data-report-panel].is-loaded .report-content');
    return panel && panel.textContent.trim().length > 20;
  };
  const done = new Promise((resolve) => {
    const observer = new MutationObserver(() => {
      if (shown()) { observer.disconnect(); resolve(performance.now()); }
    });
    observer.observe(row, { childList: true, subtree: true, characterData: true, attributes: true });
  });
  const start = performance.now();
  control.click();
  return (await done) - start;
}"""


@dataclass
class Seen:
    path: str
    query: str
    accept: str
    authorization: str


@dataclass
class Recorder:
    """WSGI middleware: records the app's own requests to the sandbox archives while `on`."""

    app: Callable[..., Any]
    on: bool = False
    seen: list[Seen] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        archive = path.startswith(("/sandbox/fhir/", "/sandbox/outside/fhir/", "/sandbox/dicomweb/"))
        thumbnail = path.endswith(("/rendered", "/thumbnail"))  # the row thumbnails, not the report
        # GETs only: the audit trail's forwarding (POST AuditEvent, from its outbox) is not the read.
        reads = environ.get("REQUEST_METHOD") == "GET"
        if self.on and archive and reads and not thumbnail and "python-requests" in environ.get("HTTP_USER_AGENT", ""):
            with self._lock:
                self.seen.append(Seen(path, environ.get("QUERY_STRING", ""), environ.get("HTTP_ACCEPT", ""),
                                      environ.get("HTTP_AUTHORIZATION", "")))
        return self.app(environ, start_response)

    def take(self) -> list[Seen]:
        with self._lock:
            seen, self.seen, self.on = self.seen, [], False
        return seen


def replay(demo: Demo, seen: list[Seen]) -> float:
    """Seconds for the archive to answer the same requests, in order, over plain HTTP."""
    http = requests.Session()
    total = 0.0
    for req in seen:
        headers = {"Accept": req.accept}
        if req.authorization:
            headers["Authorization"] = req.authorization
        url = demo.base_url + req.path + (f"?{req.query}" if req.query else "")
        start = time.perf_counter()
        resp = http.get(url, headers=headers, timeout=30)
        _ = resp.content
        total += time.perf_counter() - start
        if resp.status_code != 200:
            raise RuntimeError(f"replay of {req.path} answered {resp.status_code}")
    return total


def run(runs: int, delay_ms: float) -> tuple[list[list[Any]], float, float, int]:
    from playwright.sync_api import sync_playwright

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    rows: list[list[Any]] = []
    ratios: list[float] = []
    with serve_demo() as demo, sync_playwright() as pw:
        recorder = Recorder(demo.server.app)
        demo.server.app = recorder
        state = demo.sandbox.extensions["sandbox"]
        for key in ("ehr", "outside", "dicomweb"):
            state.delays[key] = delay_ms / 1000
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            for label, patient, study in REPORTS:
                opens, archive, per = [], [], []
                for _ in range(runs):
                    context = browser.new_context(viewport={"width": 1000, "height": 900})
                    page = context.new_page()
                    page.goto(f"{demo.chart_url}launch?patient={patient}")
                    page.locator('#study-list[aria-busy="false"]').wait_for(timeout=30_000)
                    # Thumbnails loaded, so the click is all that runs. Not "networkidle": the page's
                    # time-to-image beacon is a keepalive fetch, which Playwright never sees finish.
                    page.wait_for_timeout(800)  # rows that stay in view start their thumbnails
                    page.wait_for_function("[...document.querySelectorAll('img.thumb-img[src]')]"
                                           ".every((img) => img.complete)", timeout=30_000)
                    recorder.on = True
                    ms = page.evaluate(OPEN_AND_WAIT, study_uid(study))
                    seen = recorder.take()
                    context.close()
                    base_ms = replay(demo, seen) * 1000
                    opens.append(ms)
                    archive.append(base_ms)
                    per.append(ms / base_ms)
                ratios += per
                rows.append([label, f"{median(opens):.0f}", f"{p90(opens):.0f}", f"{median(archive):.0f}",
                             len(seen), f"{median(per):.2f}x", f"{p90(per):.2f}x"])
        finally:
            browser.close()
    return rows, median(ratios), p90(ratios), runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 runs per report instead of 7")
    parser.add_argument("--write", action="store_true", help="write the section of docs/BENCHMARKS.md")
    parser.add_argument("--delay-ms", type=float, default=100.0, help="sandbox delay per archive request")
    args = parser.parse_args()
    rows, med, high, n = run(3 if args.quick else 7, args.delay_ms)
    header = ["report", "click to text, median ms", "p90 ms", "archive alone, median ms", "archive requests",
              "ratio median", "ratio p90"]
    body = "\n".join([
        "## Report panel: click to text — `bench/reports.py`",
        "",
        f"`python bench/reports.py{' --quick' if args.quick else ''}` — {machine()}; Chromium headless, "
        f"full-window launch at 1000 px, n={n} per report (a new browser context and SMART launch each), "
        f"sandbox delay {args.delay_ms:g} ms per archive request.",
        "",
        "Click to text: from the click on \"Read full report\" to the panel holding the text, timed in the page. "
        "Archive alone: the same archive requests the app made for that report, replayed in order over plain "
        "HTTP (same URL, Accept, Authorization) right after each open, summed. A ratio under 1 means the app "
        "overlapped requests that the replay runs one after another (an order's reason read while the report's "
        "Binary is; the SR and DOC series queries together). p90 on this shared 2-CPU machine is noisy.",
        "",
        table(header, rows),
        "",
        f"All reports: ratio median **{med:.2f}x**, p90 {high:.2f}x.",
    ])
    print(body)
    if args.write:
        write_section("reports", body)


if __name__ == "__main__":
    main()
