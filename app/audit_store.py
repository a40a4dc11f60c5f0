"""Where audit events are kept: SQLite (WAL, the embedded default) or PostgreSQL, each with a forwarding outbox.

The same database holds the single-use CDS JWT ids and the time-to-image samples the operations
page plots: data every worker and machine must share, none of it PHI.

`append` commits before it returns (SQLite `synchronous=FULL`, PostgreSQL autocommit), so an
event the clinician's browser has seen an answer for survives the worker being killed. The
outbox row is written in the same transaction as the event: forwarding to a FHIR AuditEvent
endpoint can lag or fail and retry, but never loses or invents an event.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from .audit_event import AuditEvent, _utc
from .errors import ConfigError
from .session_store import open_wal

try:
    import psycopg

    STORE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, psycopg.Error)
except ImportError:  # psycopg is needed only for a postgresql:// store
    STORE_ERRORS = (sqlite3.Error,)


@dataclass(frozen=True)
class Pending:
    """An event waiting in the outbox, and how often forwarding it has failed."""

    event: AuditEvent
    attempts: int


@dataclass(frozen=True)
class Sample:
    """One time-to-image measurement: what (kind), where (archive), how it went (status), how long, when."""

    kind: str  # first-study | complete | archive | archive-browser | launch | order-warning | order-followed
    seconds: float
    at: float  # epoch seconds
    archive: str = ""
    status: str = ""


class AuditStore(Protocol):
    """Append-only event storage with a per-patient query and a forwarding outbox."""

    def append(self, events: Sequence[AuditEvent], *, forward: bool = False) -> None:
        """Commit `events` durably (and queue them for forwarding) before returning."""
        ...

    def query(self, patient: str, since: datetime | None = None) -> list[AuditEvent]:
        """The patient's events, oldest first."""
        ...

    def claim(self, now: float, lease_s: float, limit: int) -> list[Pending]:
        """Outbox events due at `now`, hidden from other claimers for `lease_s` seconds."""
        ...

    def forwarded(self, event_id: str) -> None: ...

    def retry_at(self, event_id: str, at: float) -> None: ...

    def outbox_size(self) -> int: ...

    def first_use(self, key: str, until: float) -> bool:
        """True the first time `key` is noted (kept until `until`, epoch seconds): single-use JWT ids."""
        ...

    def add_samples(self, samples: Sequence[Sample]) -> None:
        """Time-to-image measurements for the operations page (no patient, no user: operations data)."""
        ...

    def samples(self, since: float) -> list[Sample]: ...


class SQLiteAuditStore:
    """One SQLite file in WAL mode, shared by the server's worker processes.

    A connection per process (reopened after a fork: a SQLite connection must not cross one),
    shared by its threads behind a lock, like the session store.
    """

    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS audit_event (id INTEGER PRIMARY KEY AUTOINCREMENT, recorded TEXT NOT NULL, "
        "patient TEXT NOT NULL, body TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS audit_event_patient ON audit_event (patient, recorded)",
        "CREATE TABLE IF NOT EXISTS audit_outbox (event_id INTEGER PRIMARY KEY, attempts INTEGER NOT NULL "
        "DEFAULT 0, due REAL NOT NULL)",
        "CREATE TABLE IF NOT EXISTS used_once (k TEXT PRIMARY KEY, until REAL NOT NULL)",
        "CREATE TABLE IF NOT EXISTS timing (at REAL NOT NULL, kind TEXT NOT NULL, archive TEXT NOT NULL, "
        "status TEXT NOT NULL, seconds REAL NOT NULL)",
        "CREATE INDEX IF NOT EXISTS timing_at ON timing (at)",
    )

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._lock, self._ops_lock = threading.Lock(), threading.Lock()
        self._pid = self._ops_pid = -1
        self._db: sqlite3.Connection | None = None
        self._ops: sqlite3.Connection | None = None
        self._connection()

    def _open(self, synchronous: str) -> sqlite3.Connection:
        db = open_wal(self.path, timeout=30)
        db.execute(f"PRAGMA synchronous={synchronous}")
        for statement in self.SCHEMA:
            db.execute(statement)
        return db

    def _connection(self) -> sqlite3.Connection:
        if self._db is None or self._pid != os.getpid():
            # FULL: the WAL is fsynced at every commit, so a committed event survives a power cut too,
            # not only a killed process (NORMAL would only survive the latter).
            self._db, self._pid = self._open("FULL"), os.getpid()
        return self._db

    def _ops_connection(self) -> sqlite3.Connection:
        """For jti notes and timing samples: NORMAL (no fsync per commit; still safe when a process dies)."""
        if self._ops is None or self._ops_pid != os.getpid():
            self._ops, self._ops_pid = self._open("NORMAL"), os.getpid()
        return self._ops

    def append(self, events: Sequence[AuditEvent], *, forward: bool = False) -> None:
        if not events:
            return
        with self._lock:
            db = self._connection()
            db.execute("BEGIN IMMEDIATE")
            try:
                for event in events:
                    cur = db.execute("INSERT INTO audit_event (recorded, patient, body) VALUES (?, ?, ?)",
                                     (event.recorded_text, event.patient, json.dumps(event.to_json())))
                    if forward:
                        db.execute("INSERT INTO audit_outbox (event_id, due) VALUES (?, 0)", (cur.lastrowid,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def query(self, patient: str, since: datetime | None = None) -> list[AuditEvent]:
        sql = "SELECT id, body FROM audit_event WHERE patient = ?"
        args: list[Any] = [patient]
        if since is not None:
            sql += " AND recorded >= ?"
            args.append(_utc(since))
        with self._lock:
            rows = self._connection().execute(sql + " ORDER BY recorded, id", args).fetchall()
        return [AuditEvent.from_json(json.loads(body), id=str(rid)) for rid, body in rows]

    def claim(self, now: float, lease_s: float, limit: int) -> list[Pending]:
        with self._lock:
            db = self._connection()
            # A read first: an idle forwarder polling every few seconds never takes the write lock.
            if db.execute("SELECT 1 FROM audit_outbox WHERE due <= ? LIMIT 1", (now,)).fetchone() is None:
                return []
            # One statement: two processes cannot claim the same row (SQLite serialises writers).
            rows = db.execute(
                "UPDATE audit_outbox SET due = ? WHERE event_id IN (SELECT event_id FROM audit_outbox "
                "WHERE due <= ? ORDER BY event_id LIMIT ?) RETURNING event_id, attempts",
                (now + lease_s, now, limit)).fetchall()
            found = []
            for event_id, attempts in sorted(rows):
                body = db.execute("SELECT body FROM audit_event WHERE id = ?", (event_id,)).fetchone()
                if body is not None:
                    found.append(Pending(AuditEvent.from_json(json.loads(body[0]), id=str(event_id)), attempts))
        return found

    def forwarded(self, event_id: str) -> None:
        with self._lock:
            self._connection().execute("DELETE FROM audit_outbox WHERE event_id = ?", (int(event_id),))

    def retry_at(self, event_id: str, at: float) -> None:
        with self._lock:
            self._connection().execute("UPDATE audit_outbox SET due = ?, attempts = attempts + 1 WHERE event_id = ?",
                                       (at, int(event_id)))

    def outbox_size(self) -> int:
        with self._lock:
            return int(self._connection().execute("SELECT count(*) FROM audit_outbox").fetchone()[0])

    def first_use(self, key: str, until: float) -> bool:
        with self._ops_lock:
            db = self._ops_connection()
            db.execute("DELETE FROM used_once WHERE until < ?", (time.time(),))
            # The primary key makes the insert the atomic test: one of two racing workers wins.
            return db.execute("INSERT OR IGNORE INTO used_once (k, until) VALUES (?, ?)", (key, until)).rowcount == 1

    def add_samples(self, samples: Sequence[Sample]) -> None:
        with self._ops_lock:
            self._ops_connection().executemany("INSERT INTO timing (at, kind, archive, status, seconds) VALUES "
                                           "(?, ?, ?, ?, ?)",
                                           [(x.at, x.kind, x.archive, x.status, x.seconds) for x in samples])

    def samples(self, since: float) -> list[Sample]:
        with self._ops_lock:
            rows = self._ops_connection().execute(
                "SELECT kind, seconds, at, archive, status FROM timing WHERE at >= ? ORDER BY at", (since,)).fetchall()
        return [Sample(*row) for row in rows]


class PostgresAuditStore:
    """PostgreSQL (psycopg 3) for several machines: one connection per process, autocommit per statement."""

    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS audit_event (id BIGSERIAL PRIMARY KEY, recorded TIMESTAMPTZ NOT NULL, "
        "patient TEXT NOT NULL, body JSONB NOT NULL)",
        "CREATE INDEX IF NOT EXISTS audit_event_patient ON audit_event (patient, recorded)",
        "CREATE TABLE IF NOT EXISTS audit_outbox (event_id BIGINT PRIMARY KEY REFERENCES audit_event (id), "
        "attempts INTEGER NOT NULL DEFAULT 0, due DOUBLE PRECISION NOT NULL)",
        "CREATE TABLE IF NOT EXISTS used_once (k TEXT PRIMARY KEY, until DOUBLE PRECISION NOT NULL)",
        "CREATE TABLE IF NOT EXISTS timing (at DOUBLE PRECISION NOT NULL, kind TEXT NOT NULL, archive TEXT NOT NULL, "
        "status TEXT NOT NULL, seconds DOUBLE PRECISION NOT NULL)",
        "CREATE INDEX IF NOT EXISTS timing_at ON timing (at)",
    )

    def __init__(self, url: str, connect_timeout_s: int = 10) -> None:
        self.url, self.connect_timeout_s = url, connect_timeout_s
        self._lock, self._ops_lock = threading.Lock(), threading.Lock()
        self._pid = self._ops_pid = -1
        self._db: Any = None
        self._ops: Any = None
        try:
            with self._lock:
                db = self._connection()
                with db.transaction():
                    # Several workers may start at once: one creates the schema, the others wait for it.
                    db.execute("SELECT pg_advisory_xact_lock(7418110)")
                    for statement in self.SCHEMA:
                        db.execute(statement)
        except psycopg.Error as exc:
            raise ConfigError(f"The audit store {_redacted(self.url)} (IMAGING_AUDIT_STORE) cannot be reached: "
                              f"{type(exc).__name__}; check that PostgreSQL is running and the URL is right."
                              ) from exc

    def _open(self, **options: Any) -> Any:
        """A new connection; psycopg.OperationalError when the server cannot be reached (at start: ConfigError)."""
        return psycopg.connect(self.url, autocommit=True, connect_timeout=self.connect_timeout_s, **options)

    def _connection(self) -> Any:
        if self._db is None or self._db.closed or self._pid != os.getpid():
            self._db, self._pid = self._open(), os.getpid()
        return self._db

    def _ops_connection(self) -> Any:
        """For jti notes and timing samples: asynchronous commit (no WAL flush wait per statement)."""
        if self._ops is None or self._ops.closed or self._ops_pid != os.getpid():
            self._ops, self._ops_pid = self._open(options="-c synchronous_commit=off"), os.getpid()
        return self._ops

    def append(self, events: Sequence[AuditEvent], *, forward: bool = False) -> None:
        if not events:
            return
        from psycopg.types.json import Jsonb

        def write(db: Any) -> None:
            with db.transaction():
                for event in events:
                    row = db.execute("INSERT INTO audit_event (recorded, patient, body) VALUES (%s, %s, %s) "
                                     "RETURNING id", (event.recorded, event.patient, Jsonb(event.to_json()))
                                     ).fetchone()
                    if forward:
                        db.execute("INSERT INTO audit_outbox (event_id, due) VALUES (%s, 0)", (row[0],))

        with self._lock:
            try:
                write(self._connection())
            except psycopg.OperationalError:
                # The server restarted or dropped this connection (the transaction did not commit):
                # one new connection, one more try; a second failure reaches the caller.
                if not self._db.closed:
                    raise
                write(self._connection())

    def query(self, patient: str, since: datetime | None = None) -> list[AuditEvent]:
        sql = "SELECT id, body FROM audit_event WHERE patient = %s"
        args: list[Any] = [patient]
        if since is not None:
            sql += " AND recorded >= %s"
            args.append(since)
        with self._lock:
            rows = self._connection().execute(sql + " ORDER BY recorded, id", args).fetchall()
        return [AuditEvent.from_json(body, id=str(rid)) for rid, body in rows]

    def claim(self, now: float, lease_s: float, limit: int) -> list[Pending]:
        with self._lock:
            db = self._connection()
            # SKIP LOCKED: forwarders on several machines share the outbox without waiting on each other.
            rows = db.execute(
                "UPDATE audit_outbox o SET due = %s FROM audit_event e WHERE o.event_id = e.id AND o.event_id IN "
                "(SELECT event_id FROM audit_outbox WHERE due <= %s ORDER BY event_id LIMIT %s FOR UPDATE SKIP "
                "LOCKED) RETURNING o.event_id, o.attempts, e.body", (now + lease_s, now, limit)).fetchall()
        return [Pending(AuditEvent.from_json(body, id=str(eid)), attempts) for eid, attempts, body in sorted(rows)]

    def forwarded(self, event_id: str) -> None:
        with self._lock:
            self._connection().execute("DELETE FROM audit_outbox WHERE event_id = %s", (int(event_id),))

    def retry_at(self, event_id: str, at: float) -> None:
        with self._lock:
            self._connection().execute("UPDATE audit_outbox SET due = %s, attempts = attempts + 1 "
                                       "WHERE event_id = %s", (at, int(event_id)))

    def outbox_size(self) -> int:
        with self._lock:
            return int(self._connection().execute("SELECT count(*) FROM audit_outbox").fetchone()[0])

    def first_use(self, key: str, until: float) -> bool:
        def note(db: Any) -> bool:
            db.execute("DELETE FROM used_once WHERE until < %s", (time.time(),))
            cur = db.execute("INSERT INTO used_once (k, until) VALUES (%s, %s) ON CONFLICT (k) DO NOTHING",
                             (key, until))
            return bool(cur.rowcount == 1)

        with self._ops_lock:
            try:
                return note(self._ops_connection())
            except psycopg.OperationalError:
                if not self._ops.closed:
                    raise
                return note(self._ops_connection())  # a dropped connection: reopen once

    def add_samples(self, samples: Sequence[Sample]) -> None:
        with self._ops_lock:
            self._ops_connection().cursor().executemany(
                "INSERT INTO timing (at, kind, archive, status, seconds) VALUES (%s, %s, %s, %s, %s)",
                [(x.at, x.kind, x.archive, x.status, x.seconds) for x in samples])

    def samples(self, since: float) -> list[Sample]:
        with self._ops_lock:
            rows = self._ops_connection().execute(
                "SELECT kind, seconds, at, archive, status FROM timing WHERE at >= %s ORDER BY at", (since,)).fetchall()
        return [Sample(*row) for row in rows]


def _redacted(url: str) -> str:
    """The URL without its password (it may be in the DSN)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def open_audit_store(url: str | None, instance_path: str) -> AuditStore:
    """`sqlite:///path`, `postgresql://…`, or None for audit.sqlite3 in the instance folder."""
    if not url:
        Path(instance_path).mkdir(parents=True, exist_ok=True)
        return SQLiteAuditStore(Path(instance_path) / "audit.sqlite3")
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return SQLiteAuditStore(path)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresAuditStore(url)
    raise ConfigError(f"IMAGING_AUDIT_STORE {_redacted(url)!r} must start with sqlite:/// or postgresql://")
