"""Federated search over real local DICOMweb servers, as ratios to the slowest archive and to plain HTTP + JSON.

    python bench/federation.py [--quick] [--write] [--profile]

(a) Fan-out: 5 QIDO-RS archives answering after 50, 100, 200, 300 and 400 ms. Time to the full
    list from Federation.search, as a ratio to the slowest archive's latency (goal ≤ 1.10) and to
    one plain requests.get of the slowest archive measured in the same run.
(b) Processing: one archive holding 5,000 studies of the patient, no delay. Federation.search
    end to end in µs per study, as a ratio to fetching the same pages with requests + json.loads.
(c) GET /api/studies of the real app over HTTP for that patient (goal ≤ 3x the plain fetch + decode).
(d) A real Orthanc with 200 studies: Federation.search vs Orthanc's own QIDO request (goal ≤ 1.25x).

Each archive is a tiny WSGI app served by werkzeug (threaded) on 127.0.0.1. Its latency applies to
every request, study- and series-level alike, as a real archive's would. The study-level JSON
carries ModalitiesInStudy and a description naming the region, so DicomWebArchive.complete() needs
no series-level QIDO (it asks only where the study level cannot tell modality or region, in
parallel); each part is measured as shipped and with complete() switched off (an adapter_factory),
which isolates the study path.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import logging
import pstats
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any
from urllib.parse import parse_qs

import requests
from _common import ROOT, machine, median, p90, table, timed, write_section
from pydicom import Dataset
from pydicom.uid import generate_uid

from app.archives.base import ArchiveClient
from app.archives.config import ArchiveConfig, AuthConfig
from app.archives.dicomweb import ACCEPT, STUDY_FIELDS, DicomWebArchive
from app.federation import Federation, FederationResult
from app.http import Deadline
from app.models import Identifier, LaunchContext, PatientSummary
from app.serving import serve

SYSTEM = "urn:oid:2.999.1.1"  # the bench patient's identifier domain
ISSUER = "BENCH-PACS"  # IssuerOfPatientID every bench archive reports
PATIENT = PatientSummary(id="pat-bench", name="Morgan Bigsby", birth_date=date(1950, 1, 1), sex="other",
                         identifiers=(Identifier(SYSTEM, "BENCH0001"),))
CONTEXT = LaunchContext(iss="http://127.0.0.1:9/fhir", patient_id=PATIENT.id, granted_scopes=frozenset())
DELAYS_S = (0.05, 0.10, 0.20, 0.30, 0.40)
STUDIES_PER_ARCHIVE = 3  # part (a): a small patient, so the shipped path costs (1 + 3) x latency
BIG = 5000  # part (b)
MAX_RESULTS = 10_000
MODALITIES = ("CT", "MR", "CR", "US", "NM", "MG")
PARTS = ("CHEST", "HEAD", "ABDOMEN", "KNEE", "BREAST", "PELVIS")


class NoToken:
    """The EHR token provider: no bench archive uses the clinician's token."""

    def access_token(self) -> str:
        return ""


class StudyLevelOnly(DicomWebArchive):
    """The shipped adapter without its series-level QIDO per study, to time the study path alone."""

    def complete(self, studies: list, deadline: Deadline) -> None:
        return None


def study_level_only(config: ArchiveConfig, client: ArchiveClient, ctx: LaunchContext, every: Any) -> DicomWebArchive:
    return StudyLevelOnly(config, client)


# --- the archives ---------------------------------------------------------------------------------


def study_json(archive: str, n: int) -> dict[str, Any]:
    """One study-level QIDO result (PS3.18 Annex F DICOM JSON) of the bench patient, built by pydicom."""
    ds = Dataset()
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[archive, str(n)])
    ds.StudyDate = (date(2024, 6, 1) - timedelta(days=n)).strftime("%Y%m%d")
    ds.StudyTime = f"{8 + n % 10:02d}{n % 60:02d}00"
    ds.AccessionNumber = f"ACC{n:07d}"
    ds.ModalitiesInStudy = [MODALITIES[n % len(MODALITIES)], "SR"]
    ds.StudyDescription = f"{MODALITIES[n % len(MODALITIES)]} {PARTS[n % len(PARTS)]} W CONTRAST"
    ds.ReferringPhysicianName = "Okafor^Ada"
    ds.NumberOfStudyRelatedSeries = 3
    ds.NumberOfStudyRelatedInstances = 120 + n % 50
    ds.PatientID = "BENCH0001"
    ds.IssuerOfPatientID = ISSUER
    ds.PatientName = "Bigsby^Morgan"
    ds.PatientBirthDate = "19500101"
    ds.PatientSex = "O"
    return ds.to_json_dict()


def series_json(study: dict[str, Any], n: int) -> list[dict[str, Any]]:
    out = []
    for k in range(3):
        ds = Dataset()
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[study["0020000D"]["Value"][0], str(k)])
        ds.Modality = MODALITIES[n % len(MODALITIES)] if k < 2 else "SR"
        ds.BodyPartExamined = PARTS[n % len(PARTS)]
        out.append(ds.to_json_dict())
    return out


@dataclass
class QidoArchive:
    """A WSGI QIDO-RS archive of one patient: /studies (limit/offset) and /studies/{uid}/series."""

    delay_s: float
    studies: list[dict[str, Any]]
    requests: int = 0
    _pages: dict[tuple[int, int], bytes] = field(default_factory=dict)
    _series: dict[str, bytes] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._index = {study["0020000D"]["Value"][0]: n for n, study in enumerate(self.studies)}

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        time.sleep(self.delay_s)
        with self._lock:
            self.requests += 1
        path, query = environ.get("PATH_INFO", ""), parse_qs(environ.get("QUERY_STRING", ""))
        if path == "/studies":
            if query.get("PatientID") != ["BENCH0001"]:
                body = b"[]"
            else:
                offset = int(query.get("offset", ["0"])[0])
                limit = int(query.get("limit", [str(len(self.studies))])[0])
                body = self.page(offset, limit)
        elif path.startswith("/studies/") and path.endswith("/series"):
            body = self.series(path.split("/")[2])
        else:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found"]
        start_response("200 OK", [("Content-Type", "application/dicom+json"), ("Content-Length", str(len(body)))])
        return [body]

    def page(self, offset: int, limit: int) -> bytes:
        key = (offset, limit)
        with self._lock:
            if key not in self._pages:
                self._pages[key] = json.dumps(self.studies[offset:offset + limit]).encode()
            return self._pages[key]

    def series(self, uid: str) -> bytes:
        with self._lock:  # encoded once, on first ask: the server's own cost stays tiny
            if uid not in self._series:
                n = self._index.get(uid)
                self._series[uid] = b"[]" if n is None else json.dumps(series_json(self.studies[n], n)).encode()
            return self._series[uid]


def archive_config(n: int, url: str, delay_s: float) -> ArchiveConfig:
    return ArchiveConfig(id=f"bench-{n}", name=f"Bench archive {n} ({delay_s * 1000:g} ms)", kind="dicomweb",
                         base_url=url, auth=AuthConfig(kind="none"), timeout_s=120.0, identifier_system=SYSTEM,
                         issuer_of_patient_id=ISSUER, max_results=MAX_RESULTS)


def federation(archives: tuple[ArchiveConfig, ...], *, series: bool) -> Federation:
    kwargs: dict[str, Any] = {} if series else {"adapter_factory": study_level_only}
    return Federation(archives, http=requests.Session(), deadline_s=300.0, cache_ttl_s=0, **kwargs)


def search(fed: Federation, expected: int) -> float:
    seconds, result = timed(lambda: fed.search(PATIENT, CONTEXT, NoToken()))
    check(result, expected)
    return seconds


def check(result: FederationResult, expected: int) -> None:
    bad = [f"{a.id}: {a.status} {a.reason or ''}" for a in result.archives if a.status != "ok"]
    if bad or len(result.studies) != expected:
        raise SystemExit(f"federation answered {len(result.studies)} of {expected} studies; {bad}")


def qido_params(offset: int, limit: int) -> list[tuple[str, str | int]]:
    """The study-level query exactly as DicomWebArchive.search sends it."""
    return [("PatientID", "BENCH0001"), ("IssuerOfPatientID", ISSUER),
            *(("includefield", name) for name in STUDY_FIELDS), ("limit", limit), ("offset", offset)]


def plain_fetch(http: requests.Session, base: str, total: int, *, series: bool) -> int:
    """Baseline: the same request (one, up to max_results + 1) and series answers, with requests + json.loads."""
    resp = http.get(f"{base}/studies", params=qido_params(0, MAX_RESULTS + 1), headers={"Accept": ACCEPT},
                    timeout=60)
    page = json.loads(resp.content)
    count = len(page)
    uids = [item["0020000D"]["Value"][0] for item in page]
    if series:
        for uid in uids:
            json.loads(http.get(f"{base}/studies/{uid}/series", headers={"Accept": ACCEPT}, timeout=60).content)
    if count != total:
        raise SystemExit(f"baseline fetched {count} of {total} studies")
    return count


def spread(values: list[float], scale: float = 1000.0, fmt: str = "{:.0f}") -> str:
    return f"{fmt.format(median(values) * scale)} / {fmt.format(p90(values) * scale)}"


# --- (a) fan-out ------------------------------------------------------------------------------------


def fan_out(repeats: int, shipped_repeats: int, warmup: int) -> tuple[str, str]:
    with ExitStack() as stack:
        configs = []
        for n, delay in enumerate(DELAYS_S, 1):
            app = QidoArchive(delay, [study_json(f"a{n}", k) for k in range(STUDIES_PER_ARCHIVE)])
            configs.append(archive_config(n, stack.enter_context(serve(app)), delay))
        archives = tuple(configs)
        slowest, slowest_url = max(DELAYS_S), archives[-1].base_url
        expected = STUDIES_PER_ARCHIVE * len(archives)
        plain = requests.Session()
        study_path, shipped = federation(archives, series=False), federation(archives, series=True)
        for _ in range(warmup):
            search(study_path, expected)
            plain.get(f"{slowest_url}/studies", params=qido_params(0, MAX_RESULTS + 1), timeout=10)
        base, fast, full = [], [], []
        for n in range(repeats):  # interleaved, so drift on a shared machine hits all three alike
            base.append(timed(lambda: json.loads(plain.get(f"{slowest_url}/studies",
                                                           params=qido_params(0, MAX_RESULTS + 1),
                                                           headers={"Accept": ACCEPT}, timeout=10).content))[0])
            fast.append(search(study_path, expected))
            if n < shipped_repeats:
                full.append(search(shipped, expected))
    plain_ms = median(base) * 1000
    rows = [
        ["plain `requests.get` of the slowest archive (baseline)", len(base), spread(base),
         f"{median(base) / slowest:.2f}x", "1.00x"],
        ["Federation.search, study path only (series QIDO off)", len(fast), spread(fast),
         f"**{median(fast) / slowest:.2f}x**", f"{median(fast) * 1000 / plain_ms:.2f}x"],
        ["Federation.search as shipped", len(full), spread(full),
         f"**{median(full) / slowest:.2f}x**", f"{median(full) * 1000 / plain_ms:.2f}x"],
    ]
    result = table(["5 archives, 50-400 ms, 3 studies each", "n", "ms median / p90", "÷ slowest latency (400 ms)",
                    "÷ plain GET of slowest"], rows)
    verdict = "met" if median(fast) / slowest <= 1.10 else "MISSED"
    verdict_full = "met" if median(full) / slowest <= 1.10 else "MISSED"
    summary = (f"Goal ≤ 1.10x the slowest archive: study path {verdict} ({median(fast) / slowest:.2f}x); "
               f"as shipped {verdict_full} ({median(full) / slowest:.2f}x).")
    return result, summary


# --- (b) processing cost per study ------------------------------------------------------------------


def per_study(repeats: int, shipped_repeats: int, warmup: int, profile: bool) -> tuple[str, str | None]:
    studies = [study_json("big", k) for k in range(BIG)]
    app = QidoArchive(0.0, studies)
    with serve(app) as url:
        archives = (archive_config(1, url, 0.0),)
        plain = requests.Session()
        study_path, shipped = federation(archives, series=False), federation(archives, series=True)
        for _ in range(warmup):
            plain_fetch(plain, url, BIG, series=False)
            search(study_path, BIG)
        before = app.requests
        search(study_path, BIG)
        pages = app.requests - before
        base, fast, full = [], [], []
        for n in range(repeats):
            base.append(timed(lambda: plain_fetch(plain, url, BIG, series=False))[0])
            fast.append(search(study_path, BIG))
            if n < shipped_repeats:
                full.append(search(shipped, BIG))
        hotspots = profile_study_path(study_path) if profile else None

    def us(values: list[float]) -> str:
        return f"{median(values) / BIG * 1e6:.0f}"

    rows = [
        [f"baseline: {pages} study pages, requests + json.loads", len(base), spread(base), us(base), "1.00x"],
        ["Federation.search, study path only (series QIDO off)", len(fast), spread(fast), us(fast),
         f"**{median(fast) / median(base):.1f}x**"],
    ]
    if full:
        rows += [
            ["Federation.search as shipped", len(full), spread(full), us(full),
             f"**{median(full) / median(base):.1f}x**"],
        ]
    result = table([f"one archive, {BIG:,} studies, no latency", "n", "ms median / p90", "µs / study",
                    "÷ its baseline"], rows)
    return result, hotspots


# --- (c) /api/studies end to end -------------------------------------------------------------------


def app_with_session(archives: tuple[ArchiveConfig, ...], iss: str, store_dir: str) -> tuple[Any, str]:
    """The real app (create_app) with one launch session for the bench patient; (app, session id)."""
    from app import create_app
    from app.session import SmartSession

    app = create_app({"ARCHIVES": archives, "LAUNCH_CONFIG": str(ROOT / "launch.json"),
                      "SESSION_STORE": f"sqlite:///{store_dir}/sessions.db", "STUDY_CACHE_TTL_S": 0,
                      "FEDERATION_DEADLINE_S": 300.0, "PREFETCH_SEARCH": False})
    ctx = LaunchContext(iss=iss, patient_id=PATIENT.id, granted_scopes=frozenset({"patient/ImagingStudy.rs"}))
    sid = "bench-session"
    with app.app_context():
        SmartSession(id=sid, context=ctx, patient=PATIENT,
                     token={"access_token": "bench", "expires_at": time.time() + 86400}).save()
    return app, sid


@contextlib.contextmanager
def app_process(archive_url: str, store_dir: str) -> Iterator[str]:
    """`python bench/federation.py --serve-app ARCHIVE STORE` in a subprocess; yields its base URL."""
    proc = subprocess.Popen([sys.executable, __file__, "--serve-app", archive_url, store_dir],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.strip().isdigit():
            raise SystemExit(f"the app process did not start (said {line!r})")
        yield f"http://127.0.0.1:{line.strip()}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def serve_app(archive_url: str, store_dir: str) -> None:
    """The child of `app_process`: the app with the bench session, on a free port (printed first)."""
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app, _ = app_with_session((archive_config(1, archive_url, 0.0),), f"{archive_url}/fhir", store_dir)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    print(server.server_port, flush=True)
    server.serve_forever()


def api_studies(repeats: int, warmup: int, profile: bool) -> tuple[str, str | None]:
    """GET /api/studies (the app over HTTP, a 5,000-study archive) vs the archive's payload fetched and decoded."""
    import tempfile
    from pathlib import Path

    from app.session import COOKIE

    archive_app = QidoArchive(0.0, [study_json("api", k) for k in range(BIG)])
    with serve(archive_app) as url, tempfile.TemporaryDirectory() as tmp:
        archives = (archive_config(1, url, 0.0),)
        app, sid = app_with_session(archives, f"{url}/fhir", tmp)
        # The app in its own process, as it runs in production: in this one it would share the
        # GIL with the bench archive and the client, and the three would serialise.
        child_store = Path(tmp) / "app-process"
        child_store.mkdir()
        with app_process(url, str(child_store)) as app_url:
            client, plain = requests.Session(), requests.Session()
            client.cookies.set(COOKIE, sid)

            def through_app() -> int:
                resp = client.get(f"{app_url}/api/studies", timeout=120)
                resp.raise_for_status()
                body = json.loads(resp.content)
                if len(body["studies"]) != BIG:
                    raise SystemExit(f"/api/studies answered {len(body['studies'])} of {BIG} studies")
                return len(resp.content)

            for _ in range(warmup):
                through_app()
                plain_fetch(plain, url, BIG, series=False)
            base, full, size = [], [], 0
            for _ in range(repeats):
                base.append(timed(lambda: plain_fetch(plain, url, BIG, series=False))[0])
                seconds, size = timed(through_app)
                full.append(seconds)
            hotspots = None
            if profile:
                profiler = cProfile.Profile()
                with app.test_request_context("/api/studies", headers={"Cookie": f"{COOKIE}={sid}"}):
                    from app.api import studies as view

                    profiler.enable()
                    view()
                    profiler.disable()
                hotspots = profile_table(profiler, "one /api/studies request in-process")
    rows = [
        ["baseline: the archive's answer, requests + json.loads", len(base), spread(base),
         f"{median(base) / BIG * 1e6:.0f}", "1.00x"],
        [f"GET /api/studies + json.loads ({size / 1e6:.1f} MB of views)", len(full), spread(full),
         f"{median(full) / BIG * 1e6:.0f}", f"**{median(full) / median(base):.1f}x**"],
    ]
    result = table([f"one archive, {BIG:,} studies, end to end", "n", "ms median / p90", "µs / study",
                    "÷ its baseline"], rows)
    verdict = "met" if median(full) / median(base) <= 3.0 else "MISSED"
    return result + f"\n\nGoal ≤ 3x: {verdict} ({median(full) / median(base):.1f}x).", hotspots


# --- (d) a real Orthanc, 200 studies ----------------------------------------------------------------


def real_orthanc(repeats: int, warmup: int) -> str | None:
    """Federation.search of a 200-study patient in a real Orthanc vs Orthanc's own single QIDO request."""
    import tempfile
    from pathlib import Path

    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from orthanc import FakeStudy, installed, running_orthanc, upload_zip
    finally:
        sys.path.pop(0)
    if not installed():
        return None
    n_studies = 200
    fake = [FakeStudy("BENCH0001", ISSUER, name="BIGSBY^MORGAN", birth_date="19500101", sex="O",
                      study_date=(date(2024, 6, 1) - timedelta(days=n)).strftime("%Y%m%d"), accession=f"B{n:05d}",
                      description=f"{MODALITIES[n % len(MODALITIES)]} {PARTS[n % len(PARTS)]}",
                      modality=MODALITIES[n % len(MODALITIES)]).with_uid() for n in range(n_studies)]
    with tempfile.TemporaryDirectory() as tmp, running_orthanc(Path(tmp), startup_s=60) as root:
        upload_zip(root, fake)
        base_url = f"{root}/dicom-web"
        archive = ArchiveConfig(id="orthanc", name="Orthanc", kind="dicomweb", base_url=base_url,
                                auth=AuthConfig(kind="none"), identifier_system=SYSTEM, issuer_of_patient_id=ISSUER)
        # A new connection for every request on both sides: Orthanc closes idle keep-alive
        # connections after a second, and a reused stale one fails ("Remote end closed connection").
        def orthanc_alone() -> None:
            with requests.Session() as plain:
                body = json.loads(plain.get(f"{base_url}/studies", params=qido_params(0, archive.max_results + 1),
                                            headers={"Accept": ACCEPT}, timeout=60).content)
            if len(body) != n_studies:
                raise SystemExit(f"Orthanc answered {len(body)} of {n_studies}")

        def shipped() -> Federation:
            return Federation((archive,), http=requests.Session(), cache_ttl_s=0)

        for _ in range(warmup):
            orthanc_alone()
            search(shipped(), n_studies)
        base, full = [], []
        for _ in range(repeats):
            base.append(timed(orthanc_alone)[0])
            full.append(search(shipped(), n_studies))
    ratio = median(full) / median(base)
    rows = [["Orthanc's own QIDO-RS request + json.loads (baseline)", len(base), spread(base), "1.00x"],
            ["Federation.search as shipped", len(full), spread(full), f"**{ratio:.2f}x**"]]
    verdict = "met" if ratio <= 1.25 else "MISSED"
    return (table([f"real Orthanc, {n_studies} studies of one patient", "n", "ms median / p90", "÷ Orthanc alone"],
                  rows) + f"\n\nGoal ≤ 1.25x: {verdict} ({ratio:.2f}x).")


def profile_table(profiler: cProfile.Profile, what: str) -> str:
    stats = pstats.Stats(profiler)
    total = stats.total_tt  # type: ignore[attr-defined]
    rows = [(cumtime, tottime, f"{short(filename)}:{line}({func})")
            for (filename, line, func), (_, _, tottime, cumtime, _) in stats.stats.items()]  # type: ignore[attr-defined]
    rows.sort(reverse=True)
    own = sorted(rows, key=lambda r: r[1], reverse=True)[:12]
    return "\n".join([f"cProfile of {what} ({total:.2f} s under the profiler); top by own time:", "",
                      table(["own s", "cumulative s", "function"], [[f"{t:.3f}", f"{c:.3f}", f"`{n}`"]
                                                                   for c, t, n in own])])


def short(filename: str) -> str:
    """A profiled file's name without the machine's prefixes."""
    if "site-packages/" in filename:
        return filename.split("site-packages/")[-1]
    if filename.startswith(str(ROOT)):
        return filename[len(str(ROOT)) + 1:]
    return filename.rsplit("/", 1)[-1]


def profile_study_path(fed: Federation) -> str:
    """cProfile one archive's search in this thread (Federation._run is what each pool thread runs)."""
    archive = fed.archives[0]
    profiler = cProfile.Profile()
    profiler.enable()
    outcome = fed._run(archive, fed.archives, PATIENT, CONTEXT, "", Deadline.after(300))
    fed.accumulate(PATIENT, CONTEXT, NoToken(), outcomes=[outcome]).studies()  # as Federation.search does
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = stats.total_tt  # type: ignore[attr-defined]
    rows = [(cumtime, tottime, f"{short(filename)}:{line}({func})")
            for (filename, line, func), (_, _, tottime, cumtime, _) in stats.stats.items()]  # type: ignore[attr-defined]
    rows.sort(reverse=True)
    lines = [f"cProfile of one study-path search, {BIG:,} studies ({total:.2f} s under the profiler); "
             "top functions by cumulative time:", "",
             table(["cumulative s", "own s", "function"],
                   [[f"{c:.3f}", f"{t:.3f}", f"`{n}`"] for c, t, n in rows[:18]])]
    own = sorted(rows, key=lambda r: r[1], reverse=True)[:8]
    lines += ["", "Top by own time:", "",
              table(["own s", "function"], [[f"{t:.3f}", f"`{n}`"] for _, t, n in own])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repeats (smoke run)")
    parser.add_argument("--write", action="store_true", help="update the federation section of docs/BENCHMARKS.md")
    parser.add_argument("--profile", action="store_true", help="cProfile the 5,000-study study path")
    parser.add_argument("--serve-app", nargs=2, metavar=("ARCHIVE_URL", "STORE_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_app:
        serve_app(*args.serve_app)
        return 0
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log lines in the output
    if args.quick:
        fan, per = fan_out(repeats=3, shipped_repeats=1, warmup=1), per_study(2, 0, 1, args.profile)
        api, orthanc = api_studies(2, 1, args.profile), real_orthanc(5, 2)
    else:
        fan, per = fan_out(repeats=11, shipped_repeats=3, warmup=2), per_study(7, 3, 1, args.profile)
        api, orthanc = api_studies(9, 1, args.profile), real_orthanc(21, 3)
    (fan_table, fan_summary), (per_table, hotspots), (api_table, api_hotspots) = fan, per, api
    print(machine())
    print(fan_table)
    print(fan_summary)
    print(per_table)
    if hotspots:
        print(hotspots)
    print(api_table)
    if api_hotspots:
        print(api_hotspots)
    print(orthanc or "(Orthanc not installed: part (d) skipped)")
    if args.write:
        parts = [
            "## Federation — `bench/federation.py`",
            f"Measured {machine()}; {'`--quick`' if args.quick else 'default settings'}. "
            "Archives are local werkzeug servers answering DICOM JSON built by pydicom; each archive's "
            "latency applies to every request it answers.",
            "### (a) Time to the full list, 5 archives of different latency",
            fan_table,
            fan_summary,
            "### (b) Processing cost per study, 5,000-study patient",
            per_table,
        ]
        if hotspots:
            parts.append(hotspots)
        parts += ["### (c) `GET /api/studies` end to end, 5,000-study patient",
                  "The real app (`create_app`) served over HTTP in its own process with one launch session; the "
                  "client times the "
                  "request and the `json.loads` of the answer (every study view: regions, priors, signals, "
                  "viewer links). Baseline: the archive's own answer fetched and decoded the same way.",
                  api_table]
        if api_hotspots:
            parts.append(api_hotspots)
        parts += ["### (d) A real Orthanc, 200 studies",
                  "Orthanc 1.10 + DICOMweb plugin on loopback; one patient with 200 single-instance studies "
                  "whose descriptions name the region (no series queries needed). Baseline: the same QIDO-RS "
                  "request sent by `requests` and decoded.",
                  orthanc or "Orthanc not installed: not measured."]
        write_section("federation", "\n\n".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
