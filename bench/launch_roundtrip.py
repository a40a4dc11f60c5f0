"""The app's share of an EHR launch round trip, as a ratio to a plain GET /health on the same server.

    python bench/launch_roundtrip.py [--quick] [--write] [--launches N] [--profile]

One launch = what a browser does when the clinician opens the app from the chart:
GET /sandbox/launch → app /launch (discovery) → sandbox authorize → app /callback (token
exchange with private_key_jwt, id_token check against the EHR's JWKS, Patient read, the EHR's
smart_style_url) → /timeline, all followed as redirects by one requests.Session.

Both WSGI apps are wrapped in a timer. The EHR's time is every request the sandbox served, minus
the app requests nested inside them (the sandbox fetches the app's JWKS at each token exchange).
App time = total - EHR time: the app's own handlers, its outbound HTTP client, and the browser
hops and loopback transport. The in-app share (server-side, EHR calls excluded) is shown too.
"""

from __future__ import annotations

import argparse
import logging
import pstats
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import requests
from _common import WsgiTimer, machine, median, p90, table, timed, write_section

from app.keys import generate_keys
from sandbox.demo import Demo, serve_demo

BROWSER = "bench-browser/1"  # tells the browser's requests from the servers' own calls
PATIENT = "pat-amy"


@dataclass
class Launch:
    total: float
    ehr: float  # time inside the sandbox, minus app requests nested in it
    app_server: float  # time inside the app's handlers, minus the sandbox calls nested in them
    browser_hops: int
    app_calls: int  # the app's outbound calls to the EHR


def launch_once(demo: Demo, app_timer: WsgiTimer, ehr_timer: WsgiTimer) -> Launch:
    app_timer.take()
    ehr_timer.take()
    browser = requests.Session()
    browser.headers["User-Agent"] = BROWSER
    with browser:
        seconds, resp = timed(lambda: browser.get(f"{demo.base_url}/sandbox/launch",
                                                  params={"patient": PATIENT, "embedded": "1"}, timeout=30))
    if resp.status_code != 200 or resp.url != f"{demo.base_url}/timeline":
        raise SystemExit(f"launch failed: HTTP {resp.status_code} at {resp.url}")
    app_hits, ehr_hits = app_timer.take(), ehr_timer.take()
    nested_in_ehr = sum(h.seconds for h in app_hits if h.user_agent != BROWSER)  # the client JWKS fetch
    ehr_for_app = [h for h in ehr_hits if h.user_agent != BROWSER]  # the app's calls (token, Patient, ...)
    ehr = sum(h.seconds for h in ehr_hits) - nested_in_ehr
    app_server = sum(h.seconds for h in app_hits) - sum(h.seconds for h in ehr_for_app)
    hops = sum(h.user_agent == BROWSER for h in (*app_hits, *ehr_hits))
    return Launch(seconds, ehr, app_server, hops, len(ehr_for_app))


def health_once(demo: Demo, session: requests.Session) -> float:
    seconds, resp = timed(lambda: session.get(f"{demo.base_url}/health", timeout=10))
    resp.raise_for_status()
    return seconds


def clear_app_caches(demo: Demo) -> None:
    """Forget the app's SMART discovery and EHR JWKS caches (private dicts; bench-only reach-in)."""
    for name in ("discovery", "id_tokens"):
        cache = getattr(demo.app.extensions[name], "_cache", None)
        if not isinstance(cache, dict):
            raise SystemExit(f"app.extensions[{name!r}] has no _cache dict any more; update the bench")
        cache.clear()


def row(label: str, runs: list[Launch], health: float) -> list[str]:
    total = [r.total * 1000 for r in runs]
    ehr = [r.ehr * 1000 for r in runs]
    app = [(r.total - r.ehr) * 1000 for r in runs]
    server = [r.app_server * 1000 for r in runs]
    if len(runs) == 1:
        return [label, "1", f"{total[0]:.1f}", f"{ehr[0]:.1f}", f"{app[0]:.1f}", f"{server[0]:.1f}",
                f"**{app[0] / health:.1f}x**"]
    return [label, str(len(runs)),
            f"{median(total):.1f} / {p90(total):.1f}", f"{median(ehr):.1f} / {p90(ehr):.1f}",
            f"{median(app):.1f} / {p90(app):.1f}", f"{median(server):.1f} / {p90(server):.1f}",
            f"**{median(app) / health:.1f}x** / {p90(app) / health:.1f}x"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few launches only (smoke run)")
    parser.add_argument("--write", action="store_true", help="update the launch section of docs/BENCHMARKS.md")
    parser.add_argument("--launches", type=int, help="warm launches to measure (default 300, quick 15)")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the app's handlers during the warm launches (top functions printed)")
    args = parser.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log lines in the output
    warm_n = args.launches or (15 if args.quick else 300)
    cold_n = 3 if args.quick else 30
    warmup = 3 if args.quick else 10

    with tempfile.TemporaryDirectory() as tmp:
        options = {"APP_KEYS": generate_keys(), "SESSION_STORE": f"sqlite:///{Path(tmp) / 'sessions.db'}",
                   "ACCESS_LOG_FILE": str(Path(tmp) / "access.jsonl"),
                   # The launch alone: /timeline would otherwise start the archive searches in the
                   # background, and hundreds of them would load the machine under the baseline.
                   "PREFETCH_SEARCH": False}
        with serve_demo(app_options=options) as demo:
            dispatcher = demo.server.app
            app_timer, ehr_timer = WsgiTimer(dispatcher.app), WsgiTimer(dispatcher.mounts["/sandbox"])
            dispatcher.app, dispatcher.mounts["/sandbox"] = app_timer, ehr_timer
            health_session = requests.Session()
            health_session.headers["User-Agent"] = BROWSER
            health: list[float] = []

            first = launch_once(demo, app_timer, ehr_timer)  # a fresh process: templates, caches, pools
            for _ in range(warmup):
                launch_once(demo, app_timer, ehr_timer)
                health_once(demo, health_session)
            cold: list[Launch] = []
            for _ in range(cold_n):
                clear_app_caches(demo)
                cold.append(launch_once(demo, app_timer, ehr_timer))
                health += [health_once(demo, health_session) for _ in range(3)]
            if args.profile:  # the browser's requests to the app, each in its own server thread
                app_timer.profile_if = lambda environ: environ.get("HTTP_USER_AGENT") == BROWSER
            warm: list[Launch] = []
            for _ in range(warm_n):
                warm.append(launch_once(demo, app_timer, ehr_timer))
                health += [health_once(demo, health_session) for _ in range(3)]
            health_session.close()

    health_ms = median(health) * 1000
    header = ["launch", "n", "total ms", "EHR ms", "app ms (total - EHR)", "of which in app handlers",
              "app ÷ /health"]
    rows = [row("first in process", [first], health_ms),
            row("discovery + JWKS caches cleared", cold, health_ms),
            row("warm (caches hit)", warm, health_ms)]
    result = table(header, rows)
    hops = f"{warm[-1].browser_hops} browser requests and {warm[-1].app_calls} app→EHR calls per launch"
    baseline = f"baseline: GET /health round trip median {health_ms:.2f} ms, p90 {p90(health) * 1000:.2f} ms " \
               f"(n={len(health)}, keep-alive)"
    print(machine())
    print(result)
    print(baseline)
    print(hops)
    if app_timer.profiles:  # includes the time the app waits on the EHR (token, Patient read)
        stats = pstats.Stats(app_timer.profiles[0])
        for extra in app_timer.profiles[1:]:
            stats.add(extra)
        stats.sort_stats("cumulative").print_stats(25)
        stats.sort_stats("tottime").print_stats(15)
    if args.write:
        write_section("launch", "\n\n".join([
            "## Launch round trip — `bench/launch_roundtrip.py`",
            f"Measured {machine()}; {'`--quick`' if args.quick else 'default settings'}. "
            "Cells are median / p90 per launch.",
            result,
            f"{baseline[0].upper()}{baseline[1:]}. {hops[0].upper()}{hops[1:]}.",
            "*EHR ms* is the time the sandbox spent serving (authorize, token, discovery, JWKS, Patient), "
            "minus the app's JWKS that the sandbox fetches inside its token endpoint. *App ms* = "
            "total - EHR: the app's handlers **including its outbound HTTP client overhead** (connection "
            "set-up, request building, reading answers), plus the browser's own hops over loopback. "
            "*Of which in app handlers* is the server-side part of that (app WSGI time minus the EHR calls "
            "nested in it); the rest is the browser client and transport.",
            "The first launch pays one-off costs (template compilation, connection pools, imports). "
            "\"Caches cleared\" empties the app's SMART discovery and id_token JWKS caches before each "
            "launch, so it costs two extra app→EHR GETs; warm launches hit both caches.",
        ]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
