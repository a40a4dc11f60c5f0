"""The DICOMweb gateway's overhead: every frame of a 200-image series via the gateway ÷ direct from Orthanc.

    python bench/gateway.py [--server serve|serve-sqlite|demo] [--quick] [--write]

A real Orthanc (tests/orthanc.py) holds one CT series of 200 slices, 512x512, 16-bit (about
100 MB of pixel data) for Amy Shaw, beside the other-issuer trap. The app (with Orthanc as an extra
archive whose OHIF viewer goes `via = "gateway"`) is launched for Amy from the sandbox chart, and
its /api/studies hands out the gateway base. Then, in the same run and interleaved round by
round, the 200 WADO-RS frame URLs (`…/frames/1`, Accept multipart/related; octet-stream; any
transfer syntax, as OHIF asks) are fetched:

* direct from Orthanc, and
* through `…/dicomweb/<capability>/…` (capability resolution, session and guard records, archive
  credentials, streaming relay),

by 6 concurrent connections (a browser's per-host HTTP/1.1 limit) and by 1, from a client process
of its own. The figure is the median over rounds of (time to all 200 frames via the gateway) ÷
(the same direct), with the best round of each side beside it. Goal ≤ 1.15.

`--server serve` (the default) measures what a hospital runs: `imaging-timeline serve` (gunicorn
gthread, 2 workers) on a real redis-server, the sandbox EHR (`imaging-timeline sandbox`) in a
process of its own; `--server serve-sqlite` the same on the one-host SQLite store (no Redis round
trip per capability read). `--server demo` measures the demo's single werkzeug process instead (app and
sandbox together), and splits a frame's time into the app's share and the HTTP server's. All
processes share the machine's cores with Orthanc and the client.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import requests
from _common import ROOT, WsgiTimer, machine, median, p90, table, timed, write_section
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

sys.path.insert(0, str(ROOT / "tests"))
from gateway_env import gateway_env, serve_gateway_env  # tests/ holds the Orthanc and demo wiring

from tests.processes import free_port, running

ACCEPT = {"Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"}
GOAL = 1.15


def frame_paths(base: str, study: str) -> list[str]:
    with requests.Session() as http:
        (series,) = http.get(f"{base}/studies/{study}/series", timeout=30).json()
        series_uid = series["0020000E"]["Value"][0]
        instances = http.get(f"{base}/studies/{study}/series/{series_uid}/instances", timeout=30).json()
    return [f"studies/{study}/series/{series_uid}/instances/{i['00080018']['Value'][0]}/frames/1" for i in instances]


def _session() -> requests.Session:
    """Keep-alive, with one retry of a GET on a connection the server closed while idle (as a browser does)."""
    http = requests.Session()
    http.mount("http://", HTTPAdapter(max_retries=Retry(total=1, read=1, allowed_methods={"GET"})))
    return http


def fetch_all(base: str, paths: list[str], workers: int) -> int:
    """Every frame, `workers` keep-alive connections at once; returns the bytes received."""
    sessions = [_session() for _ in range(workers)]

    def one(job: tuple[int, str]) -> int:
        n, path = job
        resp = sessions[n % workers].get(f"{base}/{path}", headers=ACCEPT, timeout=60)
        resp.raise_for_status()
        return len(resp.content)

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return sum(pool.map(one, enumerate(paths)))
    finally:
        for session in sessions:
            session.close()


def fetch_timed(base: str, paths: list[str], workers: int) -> tuple[float, int]:
    """`fetch_all` timed in a process of its own (see `main`): (seconds, bytes)."""
    return timed(lambda: fetch_all(base, paths, workers))


def per_frame(base: str, paths: list[str]) -> list[float]:
    """Each frame's round trip on one connection, in seconds."""
    out = []
    with _session() as http:
        for path in paths:
            seconds, _ = timed(lambda p=path: http.get(f"{base}/{p}", headers=ACCEPT, timeout=60).content)
            out.append(seconds)
    return out


def measure(client: ProcessPoolExecutor, bases: dict[str, str], paths: list[str],
            rounds: int) -> tuple[list[tuple[str, ...]], list[str], int]:
    """Interleaved rounds at 6 and 1 connections of `bases` ("direct" and "gateway", perhaps "floor").

    Returns (table rows, verdicts, bytes of the series)."""
    expected = fetch_all(bases["direct"], paths[:5], 1)
    for name, base in bases.items():
        assert fetch_all(base, paths[:5], 1) == expected, f"same bytes from {name}"
        client.submit(fetch_timed, base, paths, 6).result()  # warm Orthanc's caches and the pools
    rows, verdicts, size = [], [], 0
    names = list(bases)
    for workers in (6, 1):
        seconds: dict[str, list[float]] = {name: [] for name in names}
        ratios: dict[str, list[float]] = {name: [] for name in names if name != "direct"}
        for n in range(rounds):
            # Rotate which side goes first, so a burst of load elsewhere on the machine does not
            # always fall on the same side.
            order = names[n % len(names):] + names[:n % len(names)]
            timings = {name: client.submit(fetch_timed, bases[name], paths, workers).result() for name in order}
            size = timings["direct"][1]
            for name in names:
                seconds[name].append(timings[name][0])
            for name in ratios:
                ratios[name].append(timings[name][0] / timings["direct"][0])
        cells = [f"{median(seconds[name]) * 1000:.0f} / {min(seconds[name]) * 1000:.0f}" for name in names]
        extra = []
        if "floor" in bases:
            extra = [f"{median(ratios['floor']):.2f}x",
                     f"{median([g / f for g, f in zip(seconds['gateway'], seconds['floor'], strict=True)]):.2f}x"]
        rows.append((f"{workers} connection(s)", *cells, f"**{median(ratios['gateway']):.2f}** / "
                     f"{p90(ratios['gateway']):.2f}x", f"{min(seconds['gateway']) / min(seconds['direct']):.2f}x",
                     *extra, f"≤ {GOAL}x"))
        verdicts.append(f"{workers} connection(s): {'met' if median(ratios['gateway']) <= GOAL else 'MISSED'}")
    return rows, verdicts, size


def header(bases: dict[str, str]) -> tuple[str, ...]:
    names = {"direct": "direct", "floor": "bare relay (floor)", "gateway": "via gateway"}
    extra = ("bare relay ÷ direct", "gateway ÷ bare relay") if "floor" in bases else ()
    return ("fetch", *(f"{names[n]} ms median / best" for n in bases), "gateway ÷ direct, per round: median / p90",
            "best ÷ best", *extra, "goal")


@contextmanager
def relay_floor(workdir: Path, dicomweb: str) -> Iterator[str]:
    """bench/relay_floor.py under gunicorn, relaying to `dicomweb`; yields its base URL."""
    port = free_port()
    with running([sys.executable, str(ROOT / "bench" / "relay_floor.py"), str(port), dicomweb],
                 ready_url=f"http://127.0.0.1:{port}/studies", log=workdir / "relay-floor.log", cwd=workdir):
        yield f"http://127.0.0.1:{port}"


Run = tuple[list[tuple[str, ...]], list[str], int, str, tuple[str, ...]]  # rows, verdicts, bytes, split, columns


def serve_run(rounds: int, client: ProcessPoolExecutor, store: str = "redis") -> Run:
    """The production server: `imaging-timeline serve` (2 gunicorn workers, `store`), the sandbox apart."""
    with tempfile.TemporaryDirectory() as tmp, serve_gateway_env(Path(tmp), images=200, size=512,
                                                                 store=store) as env:
        gateway = env.gateway(env.launch("pat-amy"))
        paths = frame_paths(env.dicomweb, env.amy)
        assert len(paths) == 200, len(paths)
        with relay_floor(Path(tmp), env.dicomweb) as floor:
            bases = {"direct": env.dicomweb, "floor": floor, "gateway": gateway}
            rows, verdicts, size = measure(client, bases, paths, rounds)
            cpu = cpu_table(client, bases, paths)
        d = median(client.submit(per_frame, env.dicomweb, paths).result()) * 1000
        g = median(client.submit(per_frame, gateway, paths).result()) * 1000
    where = table(("one frame, 1 connection", "ms median"), [
        ("direct from Orthanc (round trip)", f"{d:.2f}"),
        ("via the gateway (round trip)", f"{g:.2f}"),
        ("the gateway's share (second hop, gunicorn, the app)", f"{g - d:.2f}"),
    ])
    return rows, verdicts, size, f"{where}\n\n{cpu}", header(bases)


def listening(url: str) -> list[int]:
    """The processes holding the listening socket of `url`'s port (a gunicorn master and its workers)."""
    port = int(url.split(":")[2].split("/")[0])
    inodes = set()
    for table_path in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table_path).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # 0A: LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of `pids` so far."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def cpu_table(client: ProcessPoolExecutor, bases: dict[str, str], paths: list[str]) -> str:
    """CPU per frame of every process involved, one 6-connection pass of each side (Linux /proc)."""
    archive = listening(bases["direct"])
    relays = {name: listening(base) for name, base in bases.items() if name != "direct"}
    client_pid = [client.submit(os.getpid).result()]
    rows, totals = [], {}
    for name, base in bases.items():
        groups = {"archive": archive, "relay": relays.get(name, []), "client": client_pid}
        before = {k: cpu_seconds(v) for k, v in groups.items()}
        client.submit(fetch_timed, base, paths, 6).result()
        used = {k: (cpu_seconds(v) - before[k]) * 1000 / len(paths) for k, v in groups.items()}
        totals[name] = sum(used.values())
        rows.append((name, f"{used['archive']:.2f}", f"{used['relay']:.2f}" if name != "direct" else "-",
                     f"{used['client']:.2f}", f"{totals[name]:.2f}", f"{totals[name] / totals['direct']:.2f}x"))
    return table(("6 connections, CPU ms per frame", "Orthanc", "relay processes (gunicorn master + workers)",
                  "client", "all", "all ÷ direct"), rows)


def demo_run(rounds: int, client: ProcessPoolExecutor) -> Run:
    """The demo's single werkzeug process, with the split of a frame's time inside and outside the app."""
    with tempfile.TemporaryDirectory() as tmp, gateway_env(Path(tmp), images=200, size=512) as env:
        gateway = env.gateway(env.launch("pat-amy"))
        paths = frame_paths(env.dicomweb, env.amy)
        assert len(paths) == 200, len(paths)
        bases = {"direct": env.dicomweb, "gateway": gateway}
        rows, verdicts, size = measure(client, bases, paths, rounds)
        # Where the time goes: the app's own share (inside its WSGI callable, upstream fetch included)
        # against the whole round trip, one connection. The timer buffers each answer, so this pass
        # is separate from the figures above.
        timer = WsgiTimer(env.demo.server.app)
        env.demo.server.app = timer
        split: dict[str, list[float]] = {"direct": [], "gateway": [], "app": []}
        for _ in range(max(1, rounds // 3)):
            split["direct"] += client.submit(per_frame, env.dicomweb, paths).result()
            timer.take()
            split["gateway"] += client.submit(per_frame, gateway, paths).result()
            split["app"] += [h.seconds for h in timer.take() if "/frames/" in h.path]
        env.demo.server.app = timer.app
    d_ms, g_ms, a_ms = (median(split[k]) * 1000 for k in ("direct", "gateway", "app"))
    where = table(("one frame, 1 connection", "ms median"), [
        ("direct from Orthanc (round trip)", f"{d_ms:.2f}"),
        ("via the gateway (round trip)", f"{g_ms:.2f}"),
        ("of which inside the app (capability, scope, credentials, upstream fetch, relay)", f"{a_ms:.2f}"),
        ("app share beyond Orthanc's own round trip", f"{a_ms - d_ms:.2f}"),
        ("HTTP server + second hop (round trip - app)", f"{g_ms - a_ms:.2f}"),
    ])
    return rows, verdicts, size, where, header(bases)


SERVERS = {
    "serve": ("`imaging-timeline serve` (2 gunicorn gthread workers, 16 threads each, Redis store; "
              "the sandbox EHR in its own process)", lambda rounds, client: serve_run(rounds, client, "redis")),
    "serve-sqlite": ("`imaging-timeline serve` (2 gunicorn gthread workers, 16 threads each, the one-host SQLite "
                     "store; the sandbox EHR in its own process)",
                     lambda rounds, client: serve_run(rounds, client, "sqlite")),
    "demo": ("the demo's single werkzeug process (app and sandbox EHR together, SQLite store)", demo_run),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=tuple(SERVERS), default="serve",
                        help="the production server on Redis (default) or on SQLite, or the demo's werkzeug process")
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 9")
    parser.add_argument("--write", action="store_true", help="write the section of docs/BENCHMARKS.md")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the demo's request log would dominate the output
    rounds = 3 if args.quick else 9
    what, run = SERVERS[args.server]
    # The client runs in a process of its own: in the app's process its threads would compete with
    # the app's for the GIL, a cost only the gateway side (Python) would pay, not Orthanc (C++).
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as client:
        rows, verdicts, size, where, columns = run(rounds, client)
    flags = "".join(f" {f}" for f, on in ((f"--server {args.server}", args.server != "serve"),
                                         ("--quick", args.quick)) if on)
    body = "\n".join([
        f"## DICOMweb gateway: 200 frames via the gateway ÷ direct from Orthanc (`bench/gateway.py`, {args.server})",
        "",
        f"Command: `python bench/gateway.py{flags} --write`. Machine: {machine()}. App server: {what}. "
        f"{rounds} rounds, direct and gateway interleaved; one CT series of 200 slices, 512x512, 16-bit "
        f"({size / 1e6:.0f} MB as Orthanc sends it), every frame fetched as OHIF asks for it.",
        "",
        table(columns, rows),
        "",
        "Verdicts (median of the per-round ratios): " + "; ".join(verdicts) + ". The machine is shared "
        f"(load average {os.getloadavg()[0]:.1f} at the end of this run, on {os.cpu_count()} CPUs): "
        "best ÷ best is the least disturbed comparison.",
        "",
        where,
    ])
    print(body)
    if args.write:
        write_section(f"gateway-{args.server}" if args.server != "serve" else "gateway", body)


if __name__ == "__main__":
    main()
