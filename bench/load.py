"""N concurrent simulated clinicians against `serve` (2 gunicorn workers + Redis) and the single-process demo.

    python bench/load.py [--clients 50] [--journeys 4] [--max-seconds 300] [--write]

One clinician journey, as the browser does it: sandbox chart launch (GET /sandbox/launch, then the
redirects: app /launch → authorize → app /callback → /timeline), then the studies (the event
stream for even-numbered clinicians, /api/studies for odd ones), one thumbnail, one viewer-link
access record (POST /api/access-log). `--clients` clinicians run at once, each `--journeys` times;
the run is bounded by `--max-seconds` (a journey not finished by then is an error).

Two set-ups, started fresh in the same run, side by side:
- production: `imaging-timeline serve --workers 2` (gunicorn gthread) on a real `redis-server`
  (IMAGING_SESSION_STORE, one IMAGING_SESSION_KEY_FILE), with `imaging-timeline sandbox` in its own
  process;
- demo: `imaging-timeline demo` (the app and the sandbox in one Werkzeug process).

Reported: journeys/s, journey p50/p95/p99, request p99, errors, peak RSS (VmHWM) per process.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests
from _common import machine, table, write_section

from tests.processes import (
    CLI,
    fernet_key_file,
    free_port,
    redis_server,
    running,
    sandbox_process,
    serve_process,
)

PATIENTS = ("pat-ben", "pat-amy")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (a value that was measured)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * int(q * 100) // 100))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class Result:
    journeys: list[float] = field(default_factory=list)
    requests: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    rss_mib: dict[str, float] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def timed_get(browser: requests.Session, result: Result, url: str, **kw) -> requests.Response:
    start = time.perf_counter()
    resp = browser.request(kw.pop("method", "GET"), url, timeout=60, **kw)
    with result.lock:
        result.requests.append(time.perf_counter() - start)
    return resp


def studies_from_stream(text: str) -> list[dict]:
    found: dict[str, dict] = {}
    for block in text.split("\n\n"):
        name = re.search(r"^event: (.+)$", block, re.M)
        data = re.search(r"^data: (.+)$", block, re.M)
        if name and data and name.group(1) == "studies":
            for view in json.loads(data.group(1))["studies"]:
                found[view["uid"]] = view
        if name and name.group(1) in ("fatal",):
            raise RuntimeError(f"stream: {data.group(1) if data else 'fatal'}")
    if "event: done" not in text:
        raise RuntimeError("stream ended without done")
    return list(found.values())


def journey(n: int, app_url: str, sandbox_url: str, result: Result) -> None:
    browser = requests.Session()
    start = time.perf_counter()
    page = timed_get(browser, result, f"{sandbox_url}/launch", params={"patient": PATIENTS[n % len(PATIENTS)]})
    if page.status_code != 200 or not page.url.endswith("/timeline"):
        raise RuntimeError(f"launch: {page.status_code} at {page.url.split('?')[0]}")
    if n % 2 == 0:
        stream = timed_get(browser, result, f"{app_url}/api/studies/stream")
        studies = studies_from_stream(stream.text)
    else:
        answer = timed_get(browser, result, f"{app_url}/api/studies")
        if answer.status_code != 200:
            raise RuntimeError(f"/api/studies: {answer.status_code}")
        studies = answer.json()["studies"]
    with_thumb = next((s for s in studies if s.get("thumbnail")), None)
    if with_thumb is None:
        raise RuntimeError("no study with a thumbnail")
    thumb = timed_get(browser, result, f"{app_url}{with_thumb['thumbnail']}")
    if thumb.status_code != 200:
        raise RuntimeError(f"thumbnail: {thumb.status_code}")
    linked = next((s for s in studies if s.get("viewers")), None)
    if linked is None:
        raise RuntimeError("no study with a viewer link")
    link = linked["viewers"][0]
    record = timed_get(browser, result, f"{app_url}/api/access-log", method="POST",
                       json={"uid": linked["uid"], "archive": link["archive"], "kind": link["kind"]})
    if record.status_code != 204:
        raise RuntimeError(f"access-log: {record.status_code}")
    with result.lock:
        result.journeys.append(time.perf_counter() - start)


def drive(app_url: str, sandbox_url: str, clients: int, journeys: int, max_s: float) -> Result:
    result = Result()
    give_up = time.monotonic() + max_s

    def clinician(c: int) -> None:
        for j in range(journeys):
            if time.monotonic() > give_up:
                with result.lock:
                    result.errors.append("time limit")
                continue
            try:
                journey(c * journeys + j, app_url, sandbox_url, result)
            except (requests.RequestException, RuntimeError, ValueError, KeyError) as exc:
                with result.lock:
                    result.errors.append(f"{type(exc).__name__}: {str(exc)[:120]}")

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(clinician, range(clients)))
    result.wall_s = time.perf_counter() - started
    return result


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used (/proc/PID/stat utime, stime)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def warm_up(app_url: str, sandbox_url: str) -> None:
    scratch = Result()
    for n in range(2):
        journey(n, app_url, sandbox_url, scratch)


@contextmanager
def production(workdir: Path) -> Iterator[tuple[str, str, dict[str, int]]]:
    port = free_port()
    app_url = f"http://127.0.0.1:{port}"
    with redis_server(workdir) as redis, sandbox_process(app_url, workdir) as (sandbox_url, config):
        env = {"IMAGING_SESSION_STORE": redis.url,
               "IMAGING_SESSION_KEY_FILE": str(fernet_key_file(workdir / "session.key"))}
        with serve_process(port, config, workdir, workers=2, threads=16, env=env) as serve:
            sandbox_pid = next(p for p in _pids_of("sandbox", port) if p != serve.pid)
            yield app_url, sandbox_url, {"redis-server": redis.proc.pid, "sandbox": sandbox_pid,
                                         "serve master": serve.pid}


def _pids_of(command: str, app_port: int) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if command.encode() in cmdline and f"http://127.0.0.1:{app_port}".encode() in cmdline:
            found.append(int(proc.name))
    return found


@contextmanager
def demo(workdir: Path) -> Iterator[tuple[str, str, dict[str, int]]]:
    port = free_port()
    app_url = f"http://127.0.0.1:{port}"
    with running([*CLI, "demo", "--port", str(port)], ready_url=f"{app_url}/health", log=workdir / "demo.log",
                 cwd=workdir, env={"IMAGING_SESSION_STORE": f"sqlite:///{workdir / 'demo.db'}"}) as proc:
        yield app_url, f"{app_url}/sandbox", {"demo (app + sandbox)": proc.pid}


def run(setup, name: str, clients: int, journeys: int, max_s: float) -> Result:
    with tempfile.TemporaryDirectory(prefix=f"load-{name}-") as tmp, setup(Path(tmp)) as (app_url, sandbox_url, pids):
        warm_up(app_url, sandbox_url)
        before = {pid: cpu_s(pid) for pid in [*pids.values(), *children(pids.get("serve master", pids_any(pids)))]}
        result = drive(app_url, sandbox_url, clients, journeys, max_s)
        if "serve master" in pids:  # its workers, read now that every one has booted
            for n, worker in enumerate(children(pids["serve master"]), 1):
                pids[f"serve worker {n}"] = worker
        result.rss_mib = {label: peak_rss_mib(pid) for label, pid in pids.items()}
        result.cpu_s = {label: cpu_s(pid) - before.get(pid, 0.0) for label, pid in pids.items()}
    return result


def pids_any(pids: dict[str, int]) -> int:
    return next(iter(pids.values()))


def row(name: str, r: Result) -> list[str]:
    ok = r.journeys or [0.0]
    return [name, str(len(r.journeys)), f"{len(r.journeys) / r.wall_s:.1f}", f"{statistics.median(ok):.2f}",
            f"{percentile(ok, 0.95):.2f}", f"{percentile(ok, 0.99):.2f}",
            f"{percentile(r.requests or [0.0], 0.99):.2f}", str(len(r.errors))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--journeys", type=int, default=4, help="journeys per clinician")
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--write", action="store_true", help="write the figures into docs/BENCHMARKS.md")
    args = parser.parse_args()
    import os

    load_before = os.getloadavg()[0]
    results = {}
    for name, setup in (("serve, 2 workers + Redis", production), ("demo, 1 process", demo)):
        print(f"running {name}: {args.clients} clinicians x {args.journeys} journeys", file=sys.stderr)
        results[name] = run(setup, name, args.clients, args.journeys, args.max_seconds)
    header = ["set-up", "journeys", "journeys/s", "p50 s", "p95 s", "p99 s", "request p99 s", "errors"]
    serve_r, demo_r = results.values()
    ratio = (len(serve_r.journeys) / serve_r.wall_s) / max(1e-9, len(demo_r.journeys) / demo_r.wall_s)
    rss = table(["process", "peak RSS MiB", "CPU s during the load"],
                [[f"{name}: {label}", f"{mib:.0f}", f"{r.cpu_s.get(label, 0.0):.1f}"]
                 for name, r in results.items() for label, mib in r.rss_mib.items()])
    errors = sorted({e for r in results.values() for e in r.errors})
    body = "\n".join([
        "## Load: concurrent clinicians (`bench/load.py`)",
        "",
        f"`python bench/load.py --clients {args.clients} --journeys {args.journeys} --write` on {machine()}; "
        f"1-minute load average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after the run (the machine is "
        "shared: other jobs' load counts against both set-ups alike). The load generator runs on the same 2 cores.",
        "",
        "A journey: sandbox chart launch (redirects through /launch, authorize, /callback to /timeline), then the "
        "event stream (even clinicians) or /api/studies (odd ones), one thumbnail, one viewer-link access record. "
        "Journey times are from the launch click to the access record; request p99 is over every single request.",
        "",
        table(header, [row(name, r) for name, r in results.items()]),
        "",
        f"Throughput ratio serve / demo: **{ratio:.1f}x**.",
        "",
        rss,
        "",
        *(["Errors: " + "; ".join(errors[:5])] if errors else []),
    ])
    print(body)
    if args.write:
        write_section("load", body)
    return 0 if not serve_r.errors else 1


if __name__ == "__main__":
    sys.exit(main())
