"""The operations page `/admin/time-to-image`: p50/p90 time-to-image per day and per archive, drawn as server-side SVG.

Reads the samples kept in the audit store (metrics.py writes them: the browser's beacon, each
archive answer, launches, CDS warnings and their feedback). No script and no CDN: the plots are
SVG elements whose coordinates are computed here and rendered by the (autoescaping) template.
Protected like /metrics (metrics.check_access).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from flask import Blueprint, Flask, current_app, render_template, request

from .audit_store import Sample
from .metrics import check_access

bp = Blueprint("admin", __name__, url_prefix="/admin")

DAY_S = 86400
WIDTH, HEIGHT, PAD = 640, 220, 40


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of a non-empty sequence."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


@dataclass(frozen=True)
class Row:
    label: str
    count: int
    p50: float
    p90: float


@dataclass(frozen=True)
class Series:
    label: str
    css: str
    points: str  # SVG polyline points, "x,y x,y"
    dots: tuple[tuple[float, float, str], ...]  # x, y, tooltip


@dataclass(frozen=True)
class Plot:
    title: str
    series: tuple[Series, ...]
    x_labels: tuple[tuple[float, str], ...]
    y_labels: tuple[tuple[float, str], ...]
    empty: bool


def rows_by(samples: Sequence[Sample], key: str) -> list[Row]:
    groups: dict[str, list[float]] = defaultdict(list)
    for sample in samples:
        groups[getattr(sample, key)].append(sample.seconds)
    return [Row(label, len(v), percentile(v, 0.5), percentile(v, 0.9)) for label, v in sorted(groups.items())]


def day_plot(title: str, samples: Sequence[Sample], days: int, now: float) -> Plot:
    """p50 and p90 per day over the last `days` days, as polylines."""
    first_day = int(now // DAY_S) - days + 1
    per_day: dict[int, list[float]] = defaultdict(list)
    for sample in samples:
        per_day[int(sample.at // DAY_S)].append(sample.seconds)
    top = max((percentile(v, 0.9) for v in per_day.values()), default=1.0)
    top = max(1.0, math.ceil(top))

    def x(day: int) -> float:
        return PAD + (WIDTH - 2 * PAD) * (day - first_day) / max(1, days - 1)

    def y(seconds: float) -> float:
        return HEIGHT - PAD + (2 * PAD - HEIGHT) * seconds / top

    series = []
    for label, q, css in (("p50", 0.5, "p50"), ("p90", 0.9, "p90")):
        pts = [(x(d), y(percentile(v, q)), f"{datetime.fromtimestamp(d * DAY_S, UTC):%Y-%m-%d} {label} "
                f"{percentile(v, q):.2f} s ({len(v)} runs)") for d, v in sorted(per_day.items()) if d >= first_day]
        series.append(Series(label, css, " ".join(f"{px:.1f},{py:.1f}" for px, py, _ in pts), tuple(pts)))
    x_labels = tuple((x(d), f"{datetime.fromtimestamp(d * DAY_S, UTC):%m-%d}")
                     for d in range(first_day, first_day + days, max(1, days // 6)))
    y_labels = tuple((y(top * f), f"{top * f:g} s") for f in (0, 0.5, 1))
    return Plot(title, tuple(series), x_labels, y_labels, empty=not per_day)


@dataclass(frozen=True)
class Bar:
    label: str
    y: float  # top of the row
    p50_width: float
    p90_width: float
    text: str


@dataclass(frozen=True)
class BarPlot:
    title: str
    bars: tuple[Bar, ...]
    height: float
    scale_label: str


def archive_plot(title: str, rows: Sequence[Row]) -> BarPlot:
    """Horizontal bars per archive: p90 (light) behind p50 (dark), scaled to the largest p90."""
    top = max((r.p90 for r in rows), default=1.0) or 1.0
    span = WIDTH - 2 * PAD - 120
    bars = tuple(Bar(r.label, PAD / 2 + n * 26, span * r.p50 / top, span * r.p90 / top,
                     f"p50 {r.p50:.2f} s · p90 {r.p90:.2f} s ({r.count})") for n, r in enumerate(rows))
    return BarPlot(title, bars, PAD + 26 * max(1, len(rows)), f"{top:.2f} s")


@bp.get("/time-to-image")
def time_to_image() -> str:
    check_access()
    try:
        days = min(90, max(2, int(request.args.get("days", "14"))))
    except ValueError:
        days = 14
    now = time.time()
    samples = current_app.extensions["audit"].store.samples(now - days * DAY_S)
    kinds: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        kinds[sample.kind].append(sample)
    archive_rows = rows_by([s for s in kinds["archive"] if s.status == "ok"], "archive")
    errors = []
    by_archive: dict[str, list[Sample]] = defaultdict(list)
    for sample in kinds["archive"]:
        by_archive[sample.archive].append(sample)
    for archive, items in sorted(by_archive.items()):
        failed = sum(1 for s in items if s.status != "ok")
        errors.append((archive, len(items), failed, failed / len(items)))
    warnings, followed = len(kinds["order-warning"]), len(kinds["order-followed"])
    return render_template(
        "admin_time_to_image.html", days=days, width=WIDTH, height=HEIGHT, pad=PAD,
        plots=[day_plot("Time to first study (browser, from the launch click)", kinds["first-study"], days, now),
               day_plot("Time to complete list (browser, from the launch click)", kinds["complete"], days, now)],
        archive_plots=[archive_plot("Archive answer time (server, answered), per archive", archive_rows),
                       archive_plot("Archive on screen (browser), per archive",
                                    rows_by(kinds["archive-browser"], "archive"))],
        first=rows_by(kinds["first-study"], "kind"), complete=rows_by(kinds["complete"], "kind"),
        launch=rows_by(kinds["launch"], "kind"), archives=archive_rows,
        browser_archives=rows_by(kinds["archive-browser"], "archive"), errors=errors,
        warnings=warnings, followed=followed, overridden=len(kinds["order-overridden"]),
    )


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
