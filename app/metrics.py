"""Time-to-image, measured: Prometheus metrics (multiprocess-safe), the browser's timing beacon, and who may read them.

Metrics (prometheus_client, multiprocess mode so every gunicorn worker's observations add up):

* `imaging_timeline_time_to_first_study_seconds`, `imaging_timeline_time_to_complete_seconds`:
  the browser's clock from the click that launched the app (Navigation Timing's time origin: the
  start of the navigation that went through /launch and /callback) until the first study, and
  the complete list, were on screen;
* `imaging_timeline_archive_seconds{archive,status}`: how long each archive took to answer, and how
  (ok, timeout, error), as the server saw it;
* `imaging_timeline_browser_archive_seconds{archive,status}`: when each archive's answer was on screen;
* `imaging_timeline_launch_seconds`: the server's handling of /callback (token, id_token, patient);
* `imaging_timeline_order_warnings_total{hook}` and `imaging_timeline_order_warning_feedback_total
  {service,outcome}`: repeat-imaging warnings shown, and what the clinician did (CDS feedback).

PROMETHEUS_MULTIPROC_DIR: used as given (the deployment then owns wiping it when the server
starts); otherwise the app makes one under its instance folder per server run: under gunicorn
one per master process (workers share it), else one per process.

`GET /metrics` and the operations page answer only a request with `Authorization: Bearer
<IMAGING_METRICS_TOKEN>`, or one made directly from loopback (a request relayed by a proxy, i.e.
carrying X-Forwarded-For, must present the token even when the proxy is local).
"""

from __future__ import annotations

import hmac
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request

from .audit_store import STORE_ERRORS, Sample
from .errors import FhirNotFound, ForbiddenMetrics, LaunchError
from .models import ArchiveStatus

log = logging.getLogger(__name__)
bp = Blueprint("metrics", __name__)

# Buckets for seconds on screen: a timeline in the EHR should be there in 1-3 s; 30 s is the federation deadline.
SCREEN_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0, 60.0)
ARCHIVE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 20.0, 30.0)
MAX_SECONDS = 600.0  # a beacon claiming longer is a stale tab, not a measurement
STATUSES = frozenset({"ok", "timeout", "error", "not-linked"})
LOOPBACK = frozenset({"127.0.0.1", "::1"})


class _Metrics:
    """The metric objects (created once per process, after PROMETHEUS_MULTIPROC_DIR is set)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram, values

        # prometheus_client picks its value class when it is first imported; if anything imported it
        # before PROMETHEUS_MULTIPROC_DIR was set, pick again, so these metrics are written to the
        # shared files (metric objects read `values.ValueClass` when they are created).
        values.ValueClass = values.get_value_class()

        self.first_study = Histogram("imaging_timeline_time_to_first_study_seconds",
                                     "From the launch click until the first study was on screen (browser clock).",
                                     buckets=SCREEN_BUCKETS)
        self.complete = Histogram("imaging_timeline_time_to_complete_seconds",
                                  "From the launch click until every archive had answered on screen (browser clock).",
                                  buckets=SCREEN_BUCKETS)
        self.archive = Histogram("imaging_timeline_archive_seconds", "Archive answer time as the server saw it.",
                                 ["archive", "status"], buckets=ARCHIVE_BUCKETS)
        self.browser_archive = Histogram("imaging_timeline_browser_archive_seconds",
                                         "From the launch click until an archive's answer was on screen.",
                                         ["archive", "status"], buckets=SCREEN_BUCKETS)
        self.launch = Histogram("imaging_timeline_launch_seconds", "Server time handling the SMART callback.",
                                buckets=ARCHIVE_BUCKETS)
        self.warnings = Counter("imaging_timeline_order_warnings", "Repeat-imaging warnings returned.", ["hook"])
        self.feedback = Counter("imaging_timeline_order_warning_feedback", "What clinicians did with a warning.",
                                ["service", "outcome"])


_lock = threading.Lock()
_metrics: _Metrics | None = None


def _the_metrics() -> _Metrics:
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = _Metrics()
        return _metrics


def multiproc_dir(instance_path: str) -> Path:
    """PROMETHEUS_MULTIPROC_DIR, set (and made) here when the deployment has not set it."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        Path(given).mkdir(parents=True, exist_ok=True)
        return Path(given)
    root = Path(instance_path) / "metrics"
    under_gunicorn = "gunicorn.arbiter" in sys.modules
    owner = _gunicorn_master() if under_gunicorn else os.getpid()
    path = root / f"{'gunicorn' if under_gunicorn else 'pid'}-{owner}"
    if not under_gunicorn and path.exists():
        shutil.rmtree(path, ignore_errors=True)  # a recycled pid's leftovers: this process owns the name now
    path.mkdir(parents=True, exist_ok=True)
    _prune(root, keep=path)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return path


def _gunicorn_master() -> int:
    """The gunicorn master's pid: our parent in a worker, ourselves when the app is preloaded in the master."""
    parent = os.getppid()
    try:
        command = Path(f"/proc/{parent}/cmdline").read_bytes()
    except OSError:
        return parent
    return parent if b"gunicorn" in command else os.getpid()


def _prune(root: Path, keep: Path) -> None:
    """Remove the folders of server runs whose process is gone."""
    for folder in root.iterdir():
        if folder == keep or "-" not in folder.name:
            continue
        pid = folder.name.rpartition("-")[2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(folder, ignore_errors=True)


# --- recording (the federation's archive answers, the CDS services and the beacon) --------------


def _samples(samples: list[Sample], app: Flask | None = None) -> None:
    """Keep samples for the operations page; a store hiccup loses them (operations data), never the answer."""
    extensions = (app or current_app).extensions
    if "audit" not in extensions:
        return
    try:
        extensions["audit"].store.add_samples(samples)
    except STORE_ERRORS as exc:
        log.warning("time-to-image samples not kept (%s)", type(exc).__name__)


def archive_observer(app: Flask) -> Callable[[ArchiveStatus], None]:
    """Records each archive answer the federation got from the archive itself (ok / timeout / error).

    Called by the Federation where an archive was asked, in whatever thread asked it (a search
    runs in the background, without a request), so a cached or replayed answer is never counted
    again and not-linked archives, never asked, are not timed.
    """
    def observe(status: ArchiveStatus) -> None:
        if status.status == "not-linked" or status.status not in STATUSES:
            return
        seconds = max(0.0, (status.ms or 0) / 1000)
        _the_metrics().archive.labels(archive=status.id, status=status.status).observe(seconds)
        _samples([Sample("archive", seconds, time.time(), status.id, status.status)], app)

    return observe


def order_warning_shown(hook: str) -> None:
    _the_metrics().warnings.labels(hook=hook).inc()
    _samples([Sample("order-warning", 0.0, time.time(), "", hook)])


def order_warning_feedback(service: str, outcome: str) -> None:
    _the_metrics().feedback.labels(service=service, outcome=outcome).inc()
    _samples([Sample("order-followed" if outcome == "followed" else "order-overridden", 0.0, time.time(), "",
                     service)])


# --- access ----------------------------------------------------------------------------------------


def check_access() -> None:
    """Bearer IMAGING_METRICS_TOKEN, or a direct (not proxied) request from loopback; else 403."""
    token = current_app.config.get("METRICS_TOKEN") or os.environ.get("IMAGING_METRICS_TOKEN")
    given = request.headers.get("Authorization", "")
    if token and given.startswith("Bearer ") and hmac.compare_digest(given.removeprefix("Bearer ").encode(),
                                                                     str(token).encode()):
        return
    direct = "X-Forwarded-For" not in request.headers and "Forwarded" not in request.headers
    if direct and request.remote_addr in LOOPBACK:
        return
    raise ForbiddenMetrics("Metrics are available from this host, or with the bearer token set in "
                           "IMAGING_METRICS_TOKEN.")


@bp.get("/metrics")
def metrics() -> Response:
    check_access()
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    _the_metrics()
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=os.environ["PROMETHEUS_MULTIPROC_DIR"])
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"})


def _seconds(data: dict[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= MAX_SECONDS * 1000:
        raise LaunchError(f'Timing "{key}" must be milliseconds between 0 and {int(MAX_SECONDS * 1000)}.')
    return float(value) / 1000


@bp.post("/api/timings")
def timings() -> Response:
    """The page's time-to-image beacon (static/ttfi.js): JSON only, for the live session's own page."""
    from .session import current_session

    session = current_session()
    # JSON only: a cross-site form cannot send application/json without a CORS preflight, which this
    # app never grants, so another site cannot feed numbers into the metrics from a clinician's browser.
    if not request.is_json:
        raise LaunchError("Timings must be sent as application/json.")
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise LaunchError("Timings must be a JSON object.")
    first, complete = _seconds(data, "first_study_ms"), _seconds(data, "complete_ms")
    known = {a.id for a in current_app.extensions["federation"].archives}
    from .api import archives_for

    known |= set(archives_for(session))
    raw_archives = data.get("archives")
    archives: list[Any] = raw_archives if isinstance(raw_archives, list) else []
    m, now, samples = _the_metrics(), time.time(), []
    if first is not None:
        m.first_study.observe(first)
        samples.append(Sample("first-study", first, now))
    if complete is not None:
        m.complete.observe(complete)
        samples.append(Sample("complete", complete, now))
    for item in archives[:32]:
        if not isinstance(item, dict) or item.get("id") not in known or item.get("status") not in STATUSES:
            continue  # only this app's archives: label values stay a small fixed set
        seconds = _seconds(item, "ms")
        if seconds is None or item["status"] == "not-linked":
            continue
        m.browser_archive.labels(archive=item["id"], status=item["status"]).observe(seconds)
        samples.append(Sample("archive-browser", seconds, now, item["id"], item["status"]))
    if not samples:
        raise FhirNotFound("No timings in the beacon.")
    _samples(samples)
    return jsonify({"recorded": len(samples)})


def init_app(app: Flask) -> None:
    """Set up the metrics (after federation.init_app: every configured archive's series exists from the start)."""
    multiproc_dir(app.instance_path)
    m = _the_metrics()
    fed = app.extensions.get("federation")
    for archive in fed.archives if fed is not None else ():
        for status in ("ok", "timeout", "error"):
            m.archive.labels(archive=archive.id, status=status)
    if fed is not None:
        fed.observe = archive_observer(app)

    @app.before_request
    def _start() -> None:
        if request.endpoint == "launch.callback":
            request.environ["imaging_timeline.started"] = time.monotonic()

    @app.after_request
    def _launched(resp: Response) -> Response:
        started = request.environ.get("imaging_timeline.started")
        if started is not None and resp.status_code in (301, 302, 303):
            seconds = time.monotonic() - started
            _the_metrics().launch.observe(seconds)
            _samples([Sample("launch", seconds, time.time())])
        return resp

    app.register_blueprint(bp)
