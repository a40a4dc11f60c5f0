"""The in-chart timeline in a real browser: time to the first study and to the complete list.

    python bench/browser.py [--quick] [--write] [--long-history]

Debian's Chromium, driven by Playwright, launches the demo's timeline (a new browser context and
a new SMART launch per run, so the app's per-session study cache never hides the archives) while
the sandbox answers each archive's requests after a fixed delay (ehr 100 ms, dicomweb 300 ms,
outside 600 ms; "auth" is not delayed). For the issue "The in-chart timeline":

(a) time to the first study minus the fastest archive's latency (goal ≤ 50 ms), and
(b) time to the complete list over the slowest archive's latency (goal ≤ 1.10x).

Both are timed in the page from the moment timeline/main.js opens its EventSource (an init script wraps
the constructor; the page's modules are not changed). A MutationObserver records `performance.now()` of
the first `[data-study-uid]` row, and of the moment every archive chip has left "searching", the
list is no longer aria-busy and the row count stops changing ("complete").

Baselines, taken in the same run and interleaved with it: the configured delays, and each
archive's own answer time over plain HTTP: `requests.get` replaying the app's own first search
request of that archive (same URL, Accept and Authorization), with the delay in place.

(c) At 5,000 studies (`--long-history`; section `browser-long`): the sandbox's `big_patient` with
5,000 studies, served through one more DICOMweb archive on the sandbox PACS whose `max_results`
lets all of them through, so the page receives 5,000 study views over the stream. Measured in the
page: a filter click (a modality button, from the input event's timestamp to the first frame
painted after it: requestAnimationFrame then a task), the frame intervals while the page scrolls
120 px per frame (7,200 px/s, a fast wheel flick) through the list (requestAnimationFrame timestamps), and the DOM size
(`getElementsByTagName('*')`) after loading, while scrolling and after each click. Goals: click ≤
100 ms, scroll frame p95 ≤ 50 ms, ≤ 5,000 DOM nodes. The baseline, measured in the same run
and interleaved with it, is the same page for a 6-study patient (pat-amy): the ratios say what
5,000 studies cost over a short history.

Profile: a WSGI wrapper in front of the demo times every sandbox request the app makes (per archive:
how many, how long, when they end relative to the stream request) and when the stream yields its
first `studies` event and its `done`, so server time and client time can be told apart.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import requests
from _common import median, p90, table, write_section

from sandbox.demo import Demo, serve_demo

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync"]
PATIENT = "pat-amy"
DELAYS_S = {"ehr": 0.10, "dicomweb": 0.30, "outside": 0.60}  # sandbox delay keys
APP_ID = {"ehr": "ehr", "dicomweb": "pacs", "outside": "outside"}  # sandbox key -> the app's archive id
SEARCH_PATH = {  # the sandbox path of each archive's first (study-level) search
    "ehr": "/sandbox/fhir/ImagingStudy",
    "outside": "/sandbox/outside/fhir/ImagingStudy",
    "dicomweb": "/sandbox/dicomweb/studies",
}
GOAL_FIRST_MS = 50.0
GOAL_RATIO = 1.10
TIMEOUT_MS = 30_000
# perf_counter -> Unix time, so server instants compare with the page's timeOrigin + now() (one clock).
EPOCH_OFFSET_S = time.time() - time.perf_counter()

# Installed in every frame before any page script: wraps EventSource to note when timeline/main.js
# opens the stream and when events arrive, and watches the DOM for the first row and the end.
INIT_SCRIPT = r"""
(() => {
  const m = { timeOrigin: performance.timeOrigin, streamStart: null, firstArchiveEvent: null,
              firstStudiesEvent: null, doneEvent: null, firstRow: null, chipsFinal: null, busyFalse: null,
              lastRowChange: null, rows: 0 };
  Object.defineProperty(window, '__bench', { value: m });
  const Orig = window.EventSource;
  if (Orig) {
    const Wrapped = function (url, options) {
      const source = new Orig(url, options);
      if (String(url).includes('/api/studies/stream')) {
        m.streamStart = performance.now();
        source.addEventListener('archive', () => { m.firstArchiveEvent ??= performance.now(); });
        source.addEventListener('studies', () => { m.firstStudiesEvent ??= performance.now(); });
        source.addEventListener('done', () => { m.doneEvent = performance.now(); });
      }
      return source;
    };
    Wrapped.prototype = Orig.prototype;
    Object.assign(Wrapped, { CONNECTING: 0, OPEN: 1, CLOSED: 2 });
    window.EventSource = Wrapped;
  }
  const check = () => {
    const now = performance.now();
    const rows = document.querySelectorAll('[data-study-uid]').length;
    if (rows && m.firstRow === null) m.firstRow = now;
    if (rows !== m.rows) { m.rows = rows; m.lastRowChange = now; }
    if (m.streamStart === null) return;
    if (m.chipsFinal === null) {
      const chips = [...document.querySelectorAll('#archive-chips [data-archive-id]')];
      if (chips.length && chips.every((c) => c.getAttribute('data-status') !== 'searching')) m.chipsFinal = now;
    }
    const list = document.getElementById('study-list');
    if (m.busyFalse === null && list && list.getAttribute('aria-busy') === 'false') m.busyFalse = now;
  };
  new MutationObserver(check).observe(document, {
    childList: true, subtree: true, attributes: true, attributeFilter: ['data-status', 'aria-busy'],
  });
})();
"""

READ_MARKS = """() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const statuses = Object.fromEntries([...document.querySelectorAll('#archive-chips [data-archive-id]')]
    .map((c) => [c.dataset.archiveId, c.dataset.status]));
  const stream = performance.getEntriesByType('resource').find((e) => e.name.includes('/api/studies/stream'));
  return { ...window.__bench, fetchStart: nav ? nav.fetchStart : 0, statuses,
           requestStart: stream ? stream.requestStart : null,
           fatal: !document.getElementById('fatal')?.hidden };
}"""

DONE = "() => window.__bench && window.__bench.busyFalse !== null && window.__bench.chipsFinal !== null"


# --- server-side timing -------------------------------------------------------------------------


@dataclass
class Hit:
    """One request the demo served: what, when (perf_counter s), and the chunks of its body."""

    path: str
    query: str
    headers: dict[str, str]
    start: float
    end: float = 0.0
    events: list[tuple[str, float]] = field(default_factory=list)  # SSE event name, time yielded


class _Body:
    """The app's response iterable, passed through chunk by chunk (never buffered: SSE must stream)."""

    def __init__(self, result: Iterable[bytes], hit: Hit, done: Callable[[Hit], None]) -> None:
        self.result, self.hit, self.done = result, hit, done
        self.stream = hit.path.endswith("/api/studies/stream")

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.result:
            if self.stream:  # one chunk may carry several events (the app writes once per archive)
                now = time.perf_counter()
                for line in chunk.split(b"\n"):
                    if line.startswith(b"event: "):
                        self.hit.events.append((line[7:].decode(), now))
            yield chunk

    def close(self) -> None:
        try:
            close = getattr(self.result, "close", None)
            if close is not None:
                close()
        finally:
            self.hit.end = time.perf_counter()
            self.done(self.hit)


class Recorder:
    """WSGI middleware in front of the whole demo: records every request (thread-safe)."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app
        self.hits: list[Hit] = []
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        # Read before the dispatcher rewrites PATH_INFO for the mounted sandbox.
        hit = Hit(environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", ""),
                  {k: environ[f"HTTP_{k.upper()}"] for k in ("Authorization", "Accept")
                   if f"HTTP_{k.upper()}" in environ},
                  time.perf_counter())
        return _Body(self.app(environ, start_response), hit, self._finish)

    def _finish(self, hit: Hit) -> None:
        with self._lock:
            self.hits.append(hit)

    def take(self) -> list[Hit]:
        with self._lock:
            hits, self.hits = self.hits, []
        return hits


def archive_of(path: str) -> str | None:
    """The sandbox delay key a request to `path` pays, or None (app, auth, discovery…)."""
    if path.startswith("/sandbox/outside/fhir/"):
        return None if path.endswith(("/metadata", "smart-configuration")) else "outside"
    if path.startswith("/sandbox/fhir/"):
        return None if path.endswith(("/metadata", "smart-configuration")) else "ehr"
    if path.startswith("/sandbox/dicomweb/") and not path.endswith(("/rendered", "/thumbnail")):
        return "dicomweb"  # QIDO; the rendered images are the page's thumbnails, not the search
    return None


# --- one run ------------------------------------------------------------------------------------


@dataclass
class Run:
    first_ms: float  # stream opened -> first row in the DOM
    complete_ms: float  # stream opened -> every chip final, not busy, rows settled
    first_event_ms: float  # stream opened -> first `studies` event delivered to the page
    done_event_ms: float  # stream opened -> `done` event delivered
    nav_first_ms: float  # /timeline fetch start -> first row
    nav_complete_ms: float
    server_first_ms: float  # stream request arrived -> first `studies` event yielded
    server_done_ms: float  # stream request arrived -> `done` yielded
    open_to_request_ms: float  # EventSource constructed -> request sent (Resource Timing; one clock)
    request_to_server_ms: float  # request sent -> the request reached the demo's WSGI app
    wire_first_ms: float  # first `studies` yielded -> delivered to the page's listener
    render_first_ms: float  # first `studies` delivered -> first row in the DOM
    wire_done_ms: float  # `done` yielded -> delivered
    settle_ms: float  # `done` delivered -> complete
    requests: dict[str, int]  # per archive: sandbox requests the app made
    busy_ms: dict[str, float]  # per archive: stream arrival -> its last sandbox request answered
    rows: int


def measure(browser: Any, demo: Demo, recorder: Recorder, iframe: bool) -> tuple[Run, list[Hit]]:
    """One fresh launch (new context = new app session) until the timeline is complete."""
    width = 900 if iframe else 1400
    context = browser.new_context(viewport={"width": width, "height": 1000})
    context.add_init_script(INIT_SCRIPT)
    try:
        page = context.new_page()
        recorder.take()
        if iframe:
            page.goto(f"{demo.chart_url}?patient={PATIENT}")
            page.frame_locator("#app-frame").locator("#study-list").wait_for(state="attached", timeout=TIMEOUT_MS)
            frame = next(f for f in page.frames if f.url.split("?")[0].endswith("/timeline"))
        else:
            page.goto(f"{demo.chart_url}launch?patient={PATIENT}")
            frame = page.main_frame
        frame.wait_for_function(DONE, timeout=TIMEOUT_MS, polling=50)
        marks = frame.evaluate(READ_MARKS)
    finally:
        context.close()
    time.sleep(0.05)  # let the stream's close() land in the recorder
    hits = recorder.take()
    if marks["fatal"] or any(s != "ok" for s in marks["statuses"].values()):
        raise SystemExit(f"the timeline did not complete cleanly: {marks['statuses']} fatal={marks['fatal']}")
    stream = next(h for h in hits if h.path.endswith("/api/studies/stream"))
    events = dict(reversed(stream.events))  # the first time of each event name
    per: dict[str, list[Hit]] = {}
    for hit in hits:
        if hit.start >= stream.start and (key := archive_of(hit.path)) is not None:
            per.setdefault(key, []).append(hit)
    s0 = marks["streamStart"]
    complete = max(marks["chipsFinal"], marks["busyFalse"], marks["lastRowChange"])

    def page_ms(server_s: float) -> float:  # a server instant on the page's performance.now() scale
        return (server_s + EPOCH_OFFSET_S) * 1000 - marks["timeOrigin"]

    return Run(
        first_ms=marks["firstRow"] - s0, complete_ms=complete - s0,
        first_event_ms=marks["firstStudiesEvent"] - s0, done_event_ms=marks["doneEvent"] - s0,
        nav_first_ms=marks["firstRow"] - marks["fetchStart"], nav_complete_ms=complete - marks["fetchStart"],
        server_first_ms=(events["studies"] - stream.start) * 1000,
        server_done_ms=(events["done"] - stream.start) * 1000,
        open_to_request_ms=(marks["requestStart"] or s0) - s0,
        request_to_server_ms=page_ms(stream.start) - (marks["requestStart"] or s0),
        wire_first_ms=marks["firstStudiesEvent"] - page_ms(events["studies"]),
        render_first_ms=marks["firstRow"] - marks["firstStudiesEvent"],
        wire_done_ms=marks["doneEvent"] - page_ms(events["done"]),
        settle_ms=complete - marks["doneEvent"],
        requests={k: len(v) for k, v in per.items()},
        busy_ms={k: (max(h.end for h in v) - stream.start) * 1000 for k, v in per.items()},
        rows=marks["rows"],
    ), hits


def plain_get(http: requests.Session, demo: Demo, hit: Hit) -> float:
    """ms of one plain GET replaying the app's own request (same URL and headers)."""
    url = f"{demo.base_url}{hit.path}?{hit.query}"
    start = time.perf_counter()
    answer = http.get(url, headers=hit.headers, timeout=10)
    answer.content  # noqa: B018  # the whole body is part of the answer
    elapsed = (time.perf_counter() - start) * 1000
    answer.raise_for_status()
    return elapsed


# --- the report ---------------------------------------------------------------------------------


def fmt(values: list[float], digits: int = 0) -> str:
    return f"{median(values):.{digits}f} / {p90(values):.{digits}f}"


def section(title: str, runs: list[Run], plain: dict[str, list[float]]) -> tuple[str, bool, bool]:
    """The Markdown for one launch mode, and whether goals (a) and (b) are met (medians)."""
    fastest = min(DELAYS_S, key=DELAYS_S.__getitem__)
    slowest = max(DELAYS_S, key=DELAYS_S.__getitem__)
    fast_cfg, slow_cfg = DELAYS_S[fastest] * 1000, DELAYS_S[slowest] * 1000
    fast_plain, slow_plain = plain[fastest], plain[slowest]
    first = [r.first_ms for r in runs]
    complete = [r.complete_ms for r in runs]
    # Per run against the baseline taken right after it (interleaved), then median / p90.
    diff_plain = [r.first_ms - b for r, b in zip(runs, fast_plain, strict=True)]
    ratio_plain = [r.complete_ms / b for r, b in zip(runs, slow_plain, strict=True)]
    diff_cfg = [f - fast_cfg for f in first]
    ratio_cfg = [c / slow_cfg for c in complete]
    met_a = median(diff_plain) <= GOAL_FIRST_MS and median(diff_cfg) <= GOAL_FIRST_MS
    met_b = median(ratio_plain) <= GOAL_RATIO and median(ratio_cfg) <= GOAL_RATIO
    rows = [
        ("(a) first study in the DOM, ms", fmt(first), ""),
        (f"fastest archive ({APP_ID[fastest]}): configured delay, ms", f"{fast_cfg:.0f}", ""),
        (f"fastest archive ({APP_ID[fastest]}): plain GET of its search, ms", fmt(fast_plain), ""),
        ("**first study - fastest (configured)**, ms", f"**{fmt(diff_cfg)}**", f"≤ {GOAL_FIRST_MS:.0f}"),
        ("**first study - fastest (plain GET)**, ms", f"**{fmt(diff_plain)}**", f"≤ {GOAL_FIRST_MS:.0f}"),
        ("(b) complete list, ms", fmt(complete), ""),
        (f"slowest archive ({APP_ID[slowest]}): configured delay, ms", f"{slow_cfg:.0f}", ""),
        (f"slowest archive ({APP_ID[slowest]}): plain GET of its search, ms", fmt(slow_plain), ""),
        ("**complete ÷ slowest (configured)**", f"**{fmt(ratio_cfg, 2)}**x", f"≤ {GOAL_RATIO:.2f}x"),
        ("**complete ÷ slowest (plain GET)**", f"**{fmt(ratio_plain, 2)}**x", f"≤ {GOAL_RATIO:.2f}x"),
    ]
    text = (f"### {title} (n={len(runs)})\n\n" + table(("measure", "median / p90", "goal"), rows) + "\n\n"
            f"Goal (a) first study ≤ {GOAL_FIRST_MS:.0f} ms after the fastest archive: "
            f"{'met' if met_a else 'MISSED'}. Goal (b) complete ≤ {GOAL_RATIO:.2f}x the slowest archive: "
            f"{'met' if met_b else 'MISSED'}.\n\n" + profile(runs) + "\n")
    return text, met_a, met_b


def profile(runs: list[Run]) -> str:
    """Where the time goes: the server's stream and each archive's requests, then the page."""
    rows = [
        ("page: EventSource opened -> request sent (Resource Timing)", fmt([r.open_to_request_ms for r in runs], 1)),
        ("wire: request sent -> in the server's WSGI app", fmt([r.request_to_server_ms for r in runs], 1)),
        ("server: stream request in -> first `studies` event yielded", fmt([r.server_first_ms for r in runs])),
        ("wire: first `studies` yielded -> delivered to the page", fmt([r.wire_first_ms for r in runs], 1)),
        ("page: first `studies` delivered -> first row in the DOM", fmt([r.render_first_ms for r in runs], 1)),
        ("= page: stream opened -> first row", fmt([r.first_ms for r in runs])),
        ("(page: /timeline fetch start -> first row, page load included)", fmt([r.nav_first_ms for r in runs])),
        ("server: stream request in -> `done` yielded", fmt([r.server_done_ms for r in runs])),
        ("wire: `done` yielded -> delivered", fmt([r.wire_done_ms for r in runs], 1)),
        ("page: `done` delivered -> complete (chips final, rows settled)", fmt([r.settle_ms for r in runs], 1)),
        ("= page: stream opened -> complete", fmt([r.complete_ms for r in runs])),
        ("(page: /timeline fetch start -> complete)", fmt([r.nav_complete_ms for r in runs])),
    ]
    for key in sorted(DELAYS_S, key=DELAYS_S.__getitem__):
        counts = sorted({r.requests.get(key, 0) for r in runs})
        rows.append((f"server: archive {APP_ID[key]} ({DELAYS_S[key] * 1000:.0f} ms per request), "
                     f"{'/'.join(map(str, counts))} request(s) one after another: stream in -> last answered",
                     fmt([r.busy_ms.get(key, 0.0) for r in runs])))
    return table(("where", "ms median / p90"), rows)


def chromium_version(browser: Any) -> str:
    return browser.version


def notes(runs: list[Run]) -> str:
    """Where the time to the first study and to the complete list goes (from one launch mode's runs)."""
    def med(get: Callable[[Run], float]) -> float:
        return median([get(r) for r in runs])

    fastest = min(DELAYS_S, key=DELAYS_S.__getitem__)
    slowest = max(DELAYS_S, key=DELAYS_S.__getitem__)
    n_fast = median([r.requests.get(fastest, 0) for r in runs])
    n_slow = median([r.requests.get(slowest, 0) for r in runs])
    page_first = med(lambda r: r.open_to_request_ms + r.wire_first_ms + r.render_first_ms)
    return "\n".join([
        "Where the time goes (full-window medians):",
        f"- First study: the server yields the first `studies` event {med(lambda r: r.server_first_ms):.0f} ms "
        f"after the stream request arrives; the searches start when `/timeline` is requested, and "
        f"{n_fast:.0f} request(s) to the {APP_ID[fastest]} archive ({DELAYS_S[fastest] * 1000:.0f} ms each) "
        "were still to be answered when the stream came in. "
        f"The page adds {page_first:.0f} ms: {med(lambda r: r.open_to_request_ms):.0f} ms from `new EventSource` "
        f"to the request leaving, {med(lambda r: r.wire_first_ms):.1f} ms on the wire and "
        f"{med(lambda r: r.render_first_ms):.0f} ms from the event to the row (requestAnimationFrame render).",
        f"- Complete: `done` is yielded {med(lambda r: r.server_done_ms):.0f} ms after the stream request, when the "
        f"{APP_ID[slowest]} archive has answered ({n_slow:.0f} of its requests, {DELAYS_S[slowest] * 1000:.0f} ms "
        f"each, arrived after the stream opened); the page adds {med(lambda r: r.settle_ms):.0f} ms after `done`.",
    ])


# --- (c) a 5,000-study history ------------------------------------------------------------------

LONG_N = 5000
LONG_PATIENT = "pat-big"
SHORT_PATIENT = "pat-amy"
GOAL_CLICK_MS = 100.0
GOAL_FRAME_P95_MS = 50.0
GOAL_NODES = 5000
LONG_ARCHIVE = """
[[archive]]
id = "bigpacs"
name = "Long-history PACS"
kind = "dicomweb"
base_url = "{sandbox}/dicomweb"
auth = { kind = "none" }
identifier_system = "urn:oid:2.999.7418.1.1"
issuer_of_patient_id = "SANDBOX-PACS"
timeout_s = 300
max_results = 10000
"""

# One click on `selector`, timed from the input event to the first frame painted after it.
CLICK_SETUP = """() => {
  window.__clicks = [];
  document.addEventListener('click', (event) => {
    const t0 = event.timeStamp;
    requestAnimationFrame(() => setTimeout(() => {
      window.__clicks.push({ ms: performance.now() - t0, nodes: document.getElementsByTagName('*').length });
    }, 0));
  }, { capture: true });
}"""

SCROLL_STEP_PX = 120  # per frame: 7,200 px/s at 60 Hz, a fast wheel flick
SCROLL = """async ([frames, STEP]) => {
  window.scrollTo(0, 0);
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  const times = [];
  let nodes = 0;
  for (let i = 0; i < frames; i += 1) {
    const t = await new Promise((r) => requestAnimationFrame(r));
    times.push(t);
    window.scrollBy(0, STEP);
    if (i % 10 === 0) nodes = Math.max(nodes, document.getElementsByTagName('*').length);
  }
  const deltas = times.slice(1).map((t, i) => t - times[i]);
  return { deltas, nodes, rows: document.querySelectorAll('[data-study-uid]').length, y: window.scrollY };
}"""


class IncompleteLaunch(Exception):
    """The page did not receive every study (an archive timed out): the run measures nothing."""


@dataclass
class LongRun:
    load_nodes: int
    rows: int
    clicks_ms: list[float]
    click_nodes: int
    frames_ms: list[float]
    scroll_nodes: int
    click_main_ms: float  # per click: script + style + layout on the page's main thread (CDP metrics)
    frame_main_ms: float  # per scrolled frame: the same


MAIN_THREAD = ("ScriptDuration", "RecalcStyleDuration", "LayoutDuration")


def main_thread_s(cdp: Any) -> float:
    """Seconds the renderer's main thread spent in script, style and layout so far."""
    metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    return sum(metrics[k] for k in MAIN_THREAD)


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def long_run(browser: Any, demo: Demo, patient: str, clicks: int, frames: int) -> LongRun:
    """One launch of `patient`, then filter clicks and a scroll through the list."""
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    try:
        page = context.new_page()
        page.goto(f"{demo.chart_url}launch?patient={patient}&embedded=1")
        page.locator('#study-list[aria-busy="false"]').wait_for(state="attached", timeout=330_000)
        page.wait_for_timeout(300)
        load_nodes = page.evaluate("document.getElementsByTagName('*').length")
        rows = int(page.locator("#summary").text_content().split()[0])
        statuses = page.locator("#archive-chips [data-archive-id]").evaluate_all(
            "cs => cs.map(c => [c.dataset.archiveId, c.dataset.status, c.title])")
        if patient == LONG_PATIENT and rows != LONG_N:
            raise IncompleteLaunch(f"{rows} studies on the page, not {LONG_N}; archives: {statuses}")
        page.evaluate(CLICK_SETUP)
        if page.locator("#f-toggle").get_attribute("aria-expanded") == "false":
            page.locator("#f-toggle").click()
            page.wait_for_timeout(100)
            page.evaluate("window.__clicks = []")
        button = page.locator("#f-modality button").first
        cdp = context.new_cdp_session(page)
        cdp.send("Performance.enable")
        t0 = main_thread_s(cdp)
        for n in range(1, clicks + 1):
            button.click()
            page.wait_for_function("n => window.__clicks.length >= n", arg=n)
            page.wait_for_timeout(50)
        click_main = (main_thread_s(cdp) - t0) * 1000 / clicks
        measured = page.evaluate("window.__clicks")
        if len(measured) % 2:
            button.click()  # leave the filter off
        t0 = main_thread_s(cdp)
        scroll = page.evaluate(SCROLL, [frames, SCROLL_STEP_PX])
        frame_main = (main_thread_s(cdp) - t0) * 1000 / frames
        return LongRun(load_nodes, rows, [c["ms"] for c in measured], max(c["nodes"] for c in measured),
                       scroll["deltas"], scroll["nodes"], click_main, frame_main)
    finally:
        context.close()


def long_history(browser: Any, runs: int, quick: bool) -> str:
    """The 5,000-study measurements and their baseline, as the `browser-long` section."""
    import tempfile
    from pathlib import Path

    from sandbox.data import big_patient, standard_data

    clicks, frames = (6, 120) if quick else (12, 300)
    with tempfile.TemporaryDirectory() as tmp:
        toml = Path(tmp) / "long.toml"
        toml.write_text(LONG_ARCHIVE, encoding="utf-8")
        data = standard_data().merged(big_patient(LONG_N))
        with serve_demo(sandbox_options={"data": data}, extra_archives=str(toml)) as demo:
            long_run(browser, demo, SHORT_PATIENT, 2, 20)  # warm-up
            big: list[LongRun] = []
            small: list[LongRun] = []
            for i in range(runs):
                for attempt in range(3):  # on a loaded machine the sandbox PACS can time out paging 5,000
                    try:
                        big.append(long_run(browser, demo, LONG_PATIENT, clicks, frames))
                        break
                    except IncompleteLaunch as exc:
                        print(f"long history run {i + 1}: attempt {attempt + 1} incomplete ({exc})", file=sys.stderr)
                else:
                    raise SystemExit("the 5,000-study launch did not complete in 3 attempts")
                small.append(long_run(browser, demo, SHORT_PATIENT, clicks, frames))  # interleaved baseline
                print(f"long history run {i + 1}/{runs}: {big[-1].rows} studies, click median "
                      f"{median(big[-1].clicks_ms):.0f} ms, frame p95 {p95(big[-1].frames_ms):.0f} ms, "
                      f"nodes {max(big[-1].load_nodes, big[-1].scroll_nodes, big[-1].click_nodes)}", file=sys.stderr)

    def agg(rs: list[LongRun]) -> dict[str, float]:
        clicks_all = [c for r in rs for c in r.clicks_ms]
        frames_all = [f for r in rs for f in r.frames_ms]
        return {"rows": median([r.rows for r in rs]), "click": median(clicks_all), "click90": p90(clicks_all),
                "clickmax": max(clicks_all), "frame": median(frames_all), "frame95": p95(frames_all),
                "nodes": max(max(r.load_nodes, r.scroll_nodes, r.click_nodes) for r in rs),
                "click_main": median([r.click_main_ms for r in rs]),
                "frame_main": median([r.frame_main_ms for r in rs])}

    b, s = agg(big), agg(small)
    met = b["click"] <= GOAL_CLICK_MS and b["frame95"] <= GOAL_FRAME_P95_MS and b["nodes"] <= GOAL_NODES
    rows = [
        ("studies on the page", f"{b['rows']:.0f}", f"{s['rows']:.0f}", "", ""),
        ("**filter click → next painted frame**, ms median / p90 (max)",
         f"**{b['click']:.0f} / {b['click90']:.0f}** ({b['clickmax']:.0f})",
         f"{s['click']:.0f} / {s['click90']:.0f} ({s['clickmax']:.0f})", f"{b['click'] / s['click']:.2f}x",
         f"≤ {GOAL_CLICK_MS:.0f}"),
        ("**scroll frame interval**, ms median / **p95**", f"{b['frame']:.1f} / **{b['frame95']:.1f}**",
         f"{s['frame']:.1f} / {s['frame95']:.1f}", f"{b['frame95'] / s['frame95']:.2f}x (p95)",
         f"p95 ≤ {GOAL_FRAME_P95_MS:.0f}"),
        ("main thread per click (script + style + layout, CDP), ms", f"{b['click_main']:.1f}",
         f"{s['click_main']:.1f}", f"{b['click_main'] / s['click_main']:.2f}x", ""),
        ("main thread per scrolled frame (script + style + layout, CDP), ms", f"{b['frame_main']:.1f}",
         f"{s['frame_main']:.1f}", f"{b['frame_main'] / s['frame_main']:.2f}x" if s["frame_main"] >= 0.5 else "—", ""),
        ("**DOM nodes**, most seen (load, clicks, scroll)", f"**{b['nodes']:.0f}**", f"{s['nodes']:.0f}",
         f"{b['nodes'] / s['nodes']:.2f}x", f"≤ {GOAL_NODES}"),
    ]
    return "\n".join([
        "## The timeline at 5,000 studies — `bench/browser.py --long-history`",
        "",
        f"Measured {date.today().isoformat()} on {os.cpu_count()} CPUs ({platform.machine()}), Chromium "
        f"{browser.version} (headless, Playwright), viewport 1000 x 900, {runs} launches of each patient, "
        f"interleaved{' (--quick)' if quick else ''}; per launch {clicks} clicks on the first modality "
        f"filter (on, off, …) and {frames} frames of scrolling by {SCROLL_STEP_PX} px (a fast wheel flick). "
        "\"Next painted frame\": from the "
        "click event's timestamp to a task queued by the first requestAnimationFrame after it.",
        "",
        table(("measure", f"{LONG_PATIENT} ({LONG_N:,} studies)", f"{SHORT_PATIENT} (baseline)",
               "ratio", "goal"), rows),
        "",
        f"Goals (click ≤ {GOAL_CLICK_MS:.0f} ms, scroll p95 ≤ {GOAL_FRAME_P95_MS:.0f} ms, ≤ {GOAL_NODES} nodes): "
        f"{'met' if met else 'MISSED'}. The list renders only the rows within 800 px of the viewport "
        "(static/timeline/list.js); a row is built once and updated in place.",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 runs per launch mode instead of 7")
    parser.add_argument("--write", action="store_true", help="rewrite the bench:browser section of docs/BENCHMARKS.md")
    parser.add_argument("--runs", type=int, default=None, help="runs per launch mode (after one warm-up)")
    parser.add_argument("--long-history", action="store_true",
                        help="only (c): the page at 5,000 studies (section browser-long)")
    args = parser.parse_args()
    n = args.runs or (2 if args.quick else 7)
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log lines per request

    from playwright.sync_api import sync_playwright

    if args.long_history:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                body = long_history(browser, args.runs or (1 if args.quick else 3), args.quick)
            finally:
                browser.close()
        print(body)
        if args.write:
            write_section("browser-long", body)
        return

    wall = time.perf_counter()
    results: list[tuple[str, list[Run], dict[str, list[float]]]] = []
    with serve_demo() as demo, sync_playwright() as pw, requests.Session() as http:
        recorder = Recorder(demo.server.app)
        demo.server.app = recorder  # werkzeug reads server.app per request
        demo.sandbox.extensions["sandbox"].delays.update(DELAYS_S)
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        version = chromium_version(browser)
        try:
            for title, iframe in (("Full-window launch, 1400 px", False),
                                  ("In the sandbox chart's iframe, 900 px", True)):
                _, hits = measure(browser, demo, recorder, iframe)  # warm-up (also yields the requests to replay)
                replay = {k: next(h for h in hits if h.path == p) for k, p in SEARCH_PATH.items()}
                for hit in replay.values():
                    plain_get(http, demo, hit)
                runs: list[Run] = []
                plain: dict[str, list[float]] = {k: [] for k in DELAYS_S}
                for i in range(n):
                    run, _ = measure(browser, demo, recorder, iframe)
                    runs.append(run)
                    for key, hit in replay.items():  # interleaved: right after each measured run
                        plain[key].append(plain_get(http, demo, hit))
                    print(f"{title} run {i + 1}/{n}: first {run.first_ms:.0f} ms, complete {run.complete_ms:.0f} ms, "
                          f"rows {run.rows}", file=sys.stderr)
                results.append((title, runs, plain))
        finally:
            browser.close()
    elapsed = time.perf_counter() - wall

    parts, verdicts = [], []
    for title, runs, plain in results:
        text, met_a, met_b = section(title, runs, plain)
        parts.append(text)
        verdicts.append((title, met_a, met_b))
    delays = ", ".join(f"{APP_ID[k]} ({k}) {v * 1000:.0f} ms" for k, v in DELAYS_S.items())
    body = "\n".join([
        "## In-chart timeline in the browser — `bench/browser.py`",
        "",
        f"Measured {date.today().isoformat()} on {os.cpu_count()} CPUs ({platform.machine()}), "
        f"Python {platform.python_version()}, Chromium {version} (headless, Playwright); "
        f"{n} runs per launch mode after one warm-up, {elapsed:.0f} s in all{' (--quick)' if args.quick else ''}. "
        f"Patient {PATIENT}; sandbox delay on every request of an archive: {delays}; auth not delayed. "
        "Each run is a new browser context and a new SMART launch (a new app session, so the per-session "
        "study cache is cold). Times are from the moment timeline/main.js opens the EventSource; "
        "\"complete\" = every archive chip final, the list no longer aria-busy and the row count settled. "
        "\"Plain GET\" replays the app's own study-level search of that archive with `requests` "
        "(same URL and headers, delay in place), once right after each measured run.",
        "",
        *parts,
        notes(results[0][1]),
        "",
        "Verdicts (medians): " + "; ".join(
            f"{t}: (a) {'met' if a else 'MISSED'}, (b) {'met' if b else 'MISSED'}" for t, a, b in verdicts) + ".",
    ])
    print(body)
    if args.write:
        write_section("browser", body)


if __name__ == "__main__":
    main()
