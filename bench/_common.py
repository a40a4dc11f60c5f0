"""Shared helpers for the benchmark scripts: timing statistics, machine facts, a WSGI timer, the docs writer."""

from __future__ import annotations

import cProfile
import os
import platform
import re
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Benches measure this checkout's `app`, not whichever copy is pip-installed; the scripts import
# _common before `app` (isort puts this local module with the third-party ones, ahead of `app`).
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
DOC = ROOT / "docs" / "BENCHMARKS.md"
DOC_HEADER = "# Benchmarks\n\nSee `bench/`; each section below is written by `python bench/<name>.py --write`.\n"


# --- statistics ---------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def p90(values: Sequence[float]) -> float:
    """The 90th percentile (nearest rank, so it is a value that was actually measured)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * 9 // 10))  # ceil(0.9 n)
    return ordered[rank - 1]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of one call, by time.perf_counter."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def machine() -> str:
    """What the figures were measured on: CPUs, Python, OS, date."""
    return (f"{os.cpu_count()} CPUs ({platform.machine()}), Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}, {date.today().isoformat()}")


# --- tables -------------------------------------------------------------------------------------


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table (also readable as plain text on a terminal)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# --- WSGI timing --------------------------------------------------------------------------------


@dataclass
class Hit:
    path: str
    user_agent: str
    seconds: float


@dataclass
class WsgiTimer:
    """Wraps a WSGI app and records the wall time of every request it serves (body included), thread-safely."""

    app: Callable[..., Any]
    hits: list[Hit] = field(default_factory=list)
    # When set, requests it accepts are run under their own cProfile (collected in `profiles`).
    profile_if: Callable[[dict[str, Any]], bool] | None = None
    profiles: list[cProfile.Profile] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        profiler = cProfile.Profile() if self.profile_if and self.profile_if(environ) else None
        start = time.perf_counter()
        if profiler:
            profiler.enable()
        result = self.app(environ, start_response)
        try:
            body = list(result)  # the body is part of the request's cost
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
            if profiler:
                profiler.disable()
        hit = Hit(environ.get("PATH_INFO", ""), environ.get("HTTP_USER_AGENT", ""), time.perf_counter() - start)
        with self._lock:
            self.hits.append(hit)
            if profiler:
                self.profiles.append(profiler)
        return body

    def take(self) -> list[Hit]:
        """The hits recorded since the last take()."""
        with self._lock:
            hits, self.hits = self.hits, []
        return hits


# --- docs/BENCHMARKS.md ---------------------------------------------------------------------------


def write_section(name: str, body: str, path: Path = DOC) -> None:
    """Replace this bench's section (between `<!-- bench:name -->` markers), or append it."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else DOC_HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote section {name!r} of {path.relative_to(ROOT)}", file=sys.stderr)
