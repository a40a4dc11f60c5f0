"""One federated search per session and patient at a time, joined by every reader, in any process.

The timeline page starts the archive searches when it is requested, so its event stream finds
them under way (the page load and the browser's start-up of the EventSource, 100-150 ms, are put
to use). A reload, a second stream or /api/studies joins the search that is running instead of
starting another: in this process by reading the run's events, in another process (a second
worker, another machine behind the load balancer) by reading the run's progress from the shared
session store. The run's owner holds a short lease (a store lock it renews); if the owner dies
mid-search, a reader takes the lease over and finishes the search itself (the per-session study
cache spares the archives that had already answered). A finished run is replayed for a few
seconds, then a new request searches afresh (retrying archives that failed).

In the store a run is a small header (`run_key`: the run's id, how many outcomes it has
published, whether it finished) and one record per archive outcome (`part_key`), each written
once: a 5,000-study answer is not encrypted and written again with every later archive's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import AppError
from .federation import ArchiveOutcome, outcome_from_json
from .locks import hashed_key, lock_name, new_token
from .outcome_json import outcome_to_json
from .session_store import SessionStore

log = logging.getLogger(__name__)

Event = ArchiveOutcome
SEARCH_FAILED = "The search for this patient's imaging failed; reload to try again."


@dataclass
class SearchRun:
    """One federated search in a background thread; its events are replayed to every reader."""

    started: float
    events: list[Event] = field(default_factory=list)
    finished: bool = False
    finished_at: float | None = None
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


@dataclass(frozen=True)
class _Lease:
    """Where a run is published in the shared store, and the lock its owner holds."""

    key: str
    record: str  # the header: {"run": token, "parts": n, "finished": bool, "error": bool}
    lock: str
    token: str  # the lock's token, and the run's id (its parts are keyed by it)


def run_key(key: str) -> str:
    """The store key of the header of the search run for `key` (session and patient)."""
    return hashed_key("search-run", key)


def part_key(key: str, run: str, n: int) -> str:
    """The store key of outcome `n` (0-based, in the order found) of run `run` for `key`."""
    return hashed_key("search-part", key, run, str(n))


def _published(header: dict[str, Any] | None) -> int:
    parts = (header or {}).get("parts")
    return parts if isinstance(parts, int) and parts >= 0 else 0


class Prefetcher:
    """Search runs keyed by session and patient: joined while running, replayed for `replay_s` after.

    With a `store`, runs are shared across processes (see the module docstring); without one,
    within this process only.
    """

    def __init__(self, ttl_s: float = 60.0, clock: Callable[[], float] = time.monotonic, *,
                 store: SessionStore | None = None, replay_s: float = 10.0, lease_s: float = 5.0,
                 poll_s: float = 0.1) -> None:
        self.ttl_s, self.clock, self.store = ttl_s, clock, store
        self.replay_s, self.lease_s, self.poll_s = replay_s, lease_s, poll_s
        self._runs: dict[str, SearchRun] = {}
        self._lock = threading.Lock()

    # --- in this process ---------------------------------------------------------------------

    def start(self, key: str, search: Callable[[], Iterator[Event]]) -> SearchRun:
        """Start a run for `key` now (replacing any other), in a background thread."""
        with self._lock:
            return self._spawn(key, search, None)

    def _spawn(self, key: str, search: Callable[[], Iterator[Event]], lease: _Lease | None) -> SearchRun:
        """Register and start a run (with self._lock held)."""
        run = SearchRun(started=self.clock())
        now = self.clock()
        for stale in [k for k, r in self._runs.items() if now - r.started > self.ttl_s]:
            del self._runs[stale]
        self._runs[key] = run
        threading.Thread(target=self._work, args=(run, search, lease), name="prefetch", daemon=True).start()
        if lease is not None:
            threading.Thread(target=self._renew, args=(run, lease), name="prefetch-lease", daemon=True).start()
        return run

    def running(self, key: str) -> SearchRun | None:
        """The run for `key` if it is under way, or finished less than `replay_s` ago."""
        run = self._runs.get(key)
        if run is None or self.clock() - run.started > self.ttl_s:
            return None
        if run.finished and run.finished_at is not None and self.clock() - run.finished_at > self.replay_s:
            return None
        return run

    # --- joined across processes ---------------------------------------------------------------

    def begin(self, key: str, search: Callable[[], Iterator[Event]]) -> SearchRun | None:
        """The run to read for `key`: one already here, else a new one; None if another process has it."""
        with self._lock:  # one begin at a time, so two threads here never both start a run
            run = self.running(key)
            if run is not None:
                return run
            if self.store is None:
                return self._spawn(key, search, None)
            lease = _Lease(key, run_key(key), lock_name("search", key), new_token())
            record = self.store.get(lease.record)
            if record is not None and record.get("finished"):
                return None  # another process finished it a moment ago: replay its record
            if not self.store.acquire(lease.lock, lease.token, self.lease_s):
                return None  # another process is searching
            # Read again under the lock: the owner may have finished (and released the lock)
            # between the read above and the acquire; its record is then replayed, not redone.
            record = self.store.get(lease.record)
            if record is not None and record.get("finished"):
                self.store.release(lease.lock, lease.token)
                return None
            self.store.put(lease.record, {"run": lease.token, "parts": 0, "finished": False}, self.ttl_s)
            return self._spawn(key, search, lease)

    def feed(self, key: str, search: Callable[[], Iterator[Event]], wait_s: float = 60.0) -> Iterator[Event]:
        """Every archive's outcome for `key` once: from the run here, or from another process's run."""
        seen: set[str] = set()
        give_up = time.monotonic() + wait_s
        while time.monotonic() < give_up:
            run = self.begin(key, search)
            if run is not None:
                for event in run.feed(wait_s):
                    if event.status.id not in seen:
                        seen.add(event.status.id)
                        yield event
                return
            if (yield from self._remote(key, seen, give_up)):
                return
            # The other process stopped renewing its lease without finishing: take the search over.
            log.warning("a search run's owner went away; continuing it here")
        raise AppError(SEARCH_FAILED, log_detail="waited too long for another process's search")

    def _remote(self, key: str, seen: set[str], give_up: float) -> Generator[Event, None, bool]:
        """Another process's run, read from the store until it finishes (True) or its owner is gone (False)."""
        if self.store is None:  # begin() returns None only with a store
            return True
        header_key, lock = run_key(key), lock_name("search", key)
        probe = new_token()
        run, taken = None, 0  # the run being read, and how many of its parts this reader has had
        while time.monotonic() < give_up:
            header = self.store.get(header_key)
            if header is not None and header.get("run") != run:  # a new owner took over: read its parts
                run, taken = header.get("run"), 0
            while run is not None and taken < _published(header):
                data = self.store.get(part_key(key, str(run), taken))
                taken += 1
                if data is None:  # gone from the store: say so rather than show a timeline short of it
                    raise AppError(SEARCH_FAILED, log_detail="a published search outcome was missing")
                if _archive_of(data) in seen:  # the same archive read before (a taken-over run)
                    continue
                event = outcome_from_json(data)
                seen.add(event.status.id)
                yield event
            if header is not None and header.get("finished"):
                if header.get("error"):
                    raise AppError(SEARCH_FAILED, log_detail="another process's search failed")
                return True
            if self.store.acquire(lock, probe, 0.01):  # free: its owner neither finished nor renewed
                self.store.release(lock, probe)
                return False
            time.sleep(self.poll_s)
        return True

    # --- the run's threads ------------------------------------------------------------------

    def _work(self, run: SearchRun, search: Callable[[], Iterator[Event]], lease: _Lease | None) -> None:
        unpublished: list[dict[str, Any]] = []  # outcomes not yet in the store (written in order)
        stored = 0
        try:
            for event in search():
                with run.cond:
                    run.events.append(event)
                    run.cond.notify_all()
                if lease is not None:
                    unpublished.append(outcome_to_json(event))
                    stored = self._publish_parts(lease, stored, unpublished)
                    self._publish(lease, {"run": lease.token, "parts": stored, "finished": False}, self.ttl_s)
        except AppError as exc:
            run.error = exc
        except Exception:  # the reader must always be released; the stream then reports a failure
            log.exception("prefetched search failed")
            run.error = AppError(SEARCH_FAILED)
        finally:
            if lease is not None:
                stored = self._publish_parts(lease, stored, unpublished)
                # An outcome that could not be stored fails the run for readers elsewhere (they
                # reload), rather than giving them a timeline without that archive.
                self._publish(lease, {"run": lease.token, "parts": stored, "finished": True,
                                      "error": run.error is not None or bool(unpublished)}, self.replay_s)
            with run.cond:
                run.finished, run.finished_at = True, self.clock()
                run.cond.notify_all()
            if lease is not None and self.store is not None:
                try:
                    self.store.release(lease.lock, lease.token)
                except AppError:
                    log.warning("could not release a search lease (it expires by itself)")

    def _publish_parts(self, lease: _Lease, stored: int, unpublished: list[dict[str, Any]]) -> int:
        """Write the outcomes not yet stored, in order, each once; returns how many are stored now."""
        while unpublished and self.store is not None:
            try:  # parts outlive the header that counts them (ttl_s ≥ replay_s)
                self.store.put(part_key(lease.key, lease.token, stored), unpublished[0],
                               max(self.ttl_s, self.replay_s))
            except AppError as exc:  # tried again with the next outcome, and once more at the end
                log.warning("could not publish a search outcome: %s", exc.code)
                break
            unpublished.pop(0)
            stored += 1
        return stored

    def _publish(self, lease: _Lease, record: dict[str, Any], ttl_s: float) -> None:
        try:
            if self.store is not None:
                self.store.put(lease.record, record, ttl_s)
        except AppError as exc:  # readers in this process still get every event
            log.warning("could not publish a search's progress: %s", exc.code)

    def _renew(self, run: SearchRun, lease: _Lease) -> None:
        """Keep the lease while the run works, so readers elsewhere know its owner is alive."""
        while True:
            with run.cond:
                if run.finished:
                    return
                run.cond.wait(self.lease_s / 3)
                if run.finished:
                    return
            try:
                if self.store is not None:
                    self.store.acquire(lease.lock, lease.token, self.lease_s)
                    if run.finished:  # finished (and released) while renewing: do not hold it again
                        self.store.release(lease.lock, lease.token)
            except AppError:
                log.warning("could not renew a search lease")


def _archive_of(data: Any) -> str | None:
    """The archive id of a published outcome, without decoding the rest of it."""
    status = data.get("status") if isinstance(data, dict) else None
    archive = status.get("id") if isinstance(status, dict) else None
    return archive if isinstance(archive, str) else None
