"""Searches started when the timeline page is requested, so its event stream finds them under way.

Between the page request and the browser opening the stream lie the page load and the browser's
own start-up of the EventSource (about 100-150 ms); starting the archive searches at the page
request puts that time to use, and the first study reaches the clinician that much sooner. A run
lives in this process only: a stream that lands on another process (scale-out) simply searches
afresh, and the federation's per-session cache still spares the archives.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .errors import AppError
from .federation import ArchiveOutcome

log = logging.getLogger(__name__)

Event = ArchiveOutcome


@dataclass
class SearchRun:
    """One federated search in a background thread; its results are replayed to one reader."""

    started: float
    events: list[Event] = field(default_factory=list)
    finished: bool = False
    error: AppError | None = None
    cond: threading.Condition = field(default_factory=threading.Condition)

    def feed(self, wait_s: float = 60.0) -> Iterator[Event]:
        """Every event so far, then each new one as it arrives, until the search ends."""
        sent = 0
        give_up = time.monotonic() + wait_s
        while True:
            with self.cond:
                while sent == len(self.events) and not self.finished:
                    left = give_up - time.monotonic()
                    if left <= 0:
                        return
                    self.cond.wait(left)
                batch, finished, error = self.events[sent:], self.finished, self.error
            sent += len(batch)
            yield from batch
            if finished and sent == len(self.events):
                if error is not None:
                    raise error
                return


class Prefetcher:
    """Starts runs keyed by session and patient; a run is taken once, or expires after `ttl_s`."""

    def __init__(self, ttl_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s, self.clock = ttl_s, clock
        self._runs: dict[str, SearchRun] = {}
        self._lock = threading.Lock()

    def start(self, key: str, search: Callable[[], Iterator[Event]]) -> SearchRun:
        run = SearchRun(started=self.clock())
        with self._lock:
            now = self.clock()
            for stale in [k for k, r in self._runs.items() if now - r.started > self.ttl_s]:
                del self._runs[stale]
            self._runs[key] = run
        threading.Thread(target=self._work, args=(run, search), name="prefetch", daemon=True).start()
        return run

    def take(self, key: str) -> SearchRun | None:
        with self._lock:
            run = self._runs.pop(key, None)
        if run is None or self.clock() - run.started > self.ttl_s:
            return None
        return run

    @staticmethod
    def _work(run: SearchRun, search: Callable[[], Iterator[Event]]) -> None:
        try:
            for event in search():
                with run.cond:
                    run.events.append(event)
                    run.cond.notify_all()
        except AppError as exc:
            run.error = exc
        except Exception:  # the reader must always be released; the stream then reports a failure
            log.exception("prefetched search failed")
            run.error = AppError("The search for this patient's imaging failed; reload to try again.")
        finally:
            with run.cond:
                run.finished = True
                run.cond.notify_all()
