"""Server-side store for sessions and pending launches: SQLite by default, Redis for scale-out.

Tokens live only here. The browser holds an opaque random session id (HttpOnly cookie); the
pending-launch record is keyed by the OAuth `state`, so a launch survives an EHR iframe where
third-party cookies are blocked between /launch and /callback.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from cryptography.fernet import Fernet, InvalidToken
from flask import Flask, current_app

from .errors import ConfigError, StoreUnavailable

DECRYPTED_KEPT = 1024  # records whose decryption each process remembers (keyed by their ciphertext)


class SessionStore(Protocol):
    """A small key -> JSON-object store with per-key expiry."""

    def put(self, key: str, value: dict[str, Any], ttl_s: float) -> None: ...

    def get(self, key: str) -> dict[str, Any] | None: ...

    def take(self, key: str) -> dict[str, Any] | None:
        """Get and delete atomically (single-use records such as OAuth state)."""
        ...

    def delete(self, key: str) -> None: ...

    def acquire(self, key: str, token: str, ttl_s: float) -> bool:
        """Take the lock `key` for `ttl_s` if it is free or expired (or held with this `token`: renew)."""
        ...

    def release(self, key: str, token: str) -> None:
        """Free the lock `key` if `token` still holds it (an expired, re-taken lock is left alone)."""
        ...


def open_wal(path: str, *, timeout: float) -> sqlite3.Connection:
    """A connection to the SQLite file at `path` in WAL mode, so several processes can share it.

    Putting a new file in WAL mode takes an exclusive lock that SQLite does not wait for (no busy
    handler): gunicorn workers starting together on a fresh file got "database is locked", and
    gunicorn stops the whole server when a worker fails to boot. Retried here for `timeout` s.
    """
    db = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    give_up, pause = time.monotonic() + timeout, 0.005
    while True:
        try:
            mode = str(db.execute("PRAGMA journal_mode=WAL").fetchone()[0]).lower()
            break
        except sqlite3.OperationalError as exc:
            if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() >= give_up:
                db.close()
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.2)
    if mode not in ("wal", "memory"):  # memory: ":memory:" databases, one process by nature
        db.close()
        raise sqlite3.OperationalError(f"{path} could not be put in WAL mode (journal mode {mode})")
    return db


class SQLiteStore:
    """Embedded default: one SQLite file; one connection shared by the process's threads.

    The development server starts a thread per request, so a per-thread connection would be a
    new connection (and file open) per request; one connection behind a lock is cheaper, and
    SQLite serialises writers anyway. Several processes may share the file (WAL mode).
    """

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.path = str(path)
        self.clock = clock
        self._lock = threading.Lock()
        _create_private(self.path)
        self._db = open_wal(self.path, timeout=10)
        self._db.execute("CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v TEXT NOT NULL, exp REAL NOT NULL)")
        self._db.execute("CREATE INDEX IF NOT EXISTS kv_exp ON kv (exp)")  # every put sweeps what has expired

    def put(self, key: str, value: dict[str, Any], ttl_s: float) -> None:
        now = self.clock()
        body = json.dumps(value)
        with self._lock:  # one transaction: one commit (and WAL sync) per put, not two
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM kv WHERE exp < ?", (now,))
                self._db.execute("INSERT OR REPLACE INTO kv (k, v, exp) VALUES (?, ?, ?)", (key, body, now + ttl_s))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT v, exp FROM kv WHERE k = ?", (key,)).fetchone()
        if row is None or row[1] < self.clock():
            return None
        return json.loads(row[0])

    def take(self, key: str) -> dict[str, Any] | None:
        # DELETE ... RETURNING is atomic: two callbacks with the same state cannot both win.
        with self._lock:
            row = self._db.execute("DELETE FROM kv WHERE k = ? RETURNING v, exp", (key,)).fetchone()
        if row is None or row[1] < self.clock():
            return None
        return json.loads(row[0])

    def delete(self, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM kv WHERE k = ?", (key,))

    def acquire(self, key: str, token: str, ttl_s: float) -> bool:
        # One statement, so atomic across the processes sharing the file: insert, or take over a
        # row that expired or that this token already holds; rowcount says whether it did.
        now = self.clock()
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO kv (k, v, exp) VALUES (?, ?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v, "
                "exp = excluded.exp WHERE kv.exp < ? OR kv.v = excluded.v",
                (key, json.dumps({"lock": token}), now + ttl_s, now))
            return cur.rowcount == 1

    def release(self, key: str, token: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM kv WHERE k = ? AND v = ?", (key, json.dumps({"lock": token})))


def _create_private(path: str) -> None:
    """Create the database file (and its WAL/SHM companions) readable by the app's user only.

    SQLite gives the -wal and -shm files the database file's permissions, but only when it
    creates them; they are made here too so that a umask never decides.
    """
    if path == ":memory:" or path.startswith("file:"):
        return
    for name in (path, f"{path}-wal", f"{path}-shm"):
        fd = os.open(name, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
        os.chmod(name, 0o600)


class RedisStore:
    """Scale-out store: several app processes behind a load balancer share sessions."""

    def __init__(self, url: str, prefix: str = "imaging-timeline:") -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.prefix = prefix

    def put(self, key: str, value: dict[str, Any], ttl_s: float) -> None:
        self.client.set(self.prefix + key, json.dumps(value), px=max(1, int(ttl_s * 1000)))

    def get(self, key: str) -> dict[str, Any] | None:
        raw = self.client.get(self.prefix + key)
        return json.loads(raw) if raw is not None else None

    def take(self, key: str) -> dict[str, Any] | None:
        raw = self.client.getdel(self.prefix + key)
        return json.loads(raw) if raw is not None else None

    def delete(self, key: str) -> None:
        self.client.delete(self.prefix + key)

    # Lua runs atomically in Redis: set-if-absent or renew-if-ours, and delete-if-ours.
    _ACQUIRE = ("if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end "
                "if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('pexpire', KEYS[1], ARGV[2]) return 1 end "
                "return 0")
    _RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"

    def acquire(self, key: str, token: str, ttl_s: float) -> bool:
        return bool(self.client.eval(self._ACQUIRE, 1, self.prefix + key, token, max(1, int(ttl_s * 1000))))

    def release(self, key: str, token: str) -> None:
        self.client.eval(self._RELEASE, 1, self.prefix + key, token)


class EncryptedStore:
    """Encrypts every record (Fernet: AES-128-CBC + HMAC-SHA256) before it reaches the backing store.

    Session records hold access and refresh tokens; a copied SQLite file or Redis dump without
    the key reveals none of them. A record that does not decrypt (other key, tampering) reads as
    absent, which the app shows as "session expired".

    The keys are bearer values too (a session id is the cookie; a pending launch is keyed by its
    `state`), so the backing store sees only `kind:` plus an HMAC-SHA256 of the whole key under a
    key derived from the encryption key: whoever reads the file or Redis cannot present them.
    """

    def __init__(self, inner: SessionStore, key: bytes) -> None:
        self.inner = inner
        self.fernet = Fernet(key)
        # Decryption is a pure function of the stored token: a record read again unchanged (the
        # gateway reads its capability on every frame, to see a revocation at once) is not
        # decrypted again. Any change is a new token (a new IV), so nothing stale is ever served.
        self._decrypt = functools.lru_cache(maxsize=DECRYPTED_KEPT)(self._decrypt_uncached)
        self._mac_key = hmac.new(key, b"imaging-timeline store keys v1", hashlib.sha256).digest()

    def _key(self, key: str) -> str:
        kind = key.split(":", 1)[0]
        return f"{kind}:{hmac.new(self._mac_key, key.encode(), hashlib.sha256).hexdigest()}"

    def put(self, key: str, value: dict[str, Any], ttl_s: float) -> None:
        key = self._key(key)
        self.inner.put(key, {"enc": self.fernet.encrypt(json.dumps(value).encode()).decode()}, ttl_s)

    def _open(self, record: dict[str, Any] | None) -> dict[str, Any] | None:
        if record is None or not isinstance(record.get("enc"), str):
            return None
        plain = self._decrypt(record["enc"])
        return json.loads(plain) if plain is not None else None

    def _decrypt_uncached(self, token: str) -> bytes | None:
        try:
            return self.fernet.decrypt(token.encode())
        except InvalidToken:
            return None

    def get(self, key: str) -> dict[str, Any] | None:
        return self._open(self.inner.get(self._key(key)))

    def take(self, key: str) -> dict[str, Any] | None:
        return self._open(self.inner.take(self._key(key)))

    def delete(self, key: str) -> None:
        self.inner.delete(self._key(key))

    def acquire(self, key: str, token: str, ttl_s: float) -> bool:
        return self.inner.acquire(key, token, ttl_s)  # a lock holds a random token, nothing to hide

    def release(self, key: str, token: str) -> None:
        self.inner.release(key, token)


def open_store(url: str | None, instance_path: str) -> SessionStore:
    """`sqlite:///path`, `redis://host:port/db`, or None for an SQLite file in the instance folder."""
    if not url:
        Path(instance_path).mkdir(parents=True, exist_ok=True)
        return SQLiteStore(Path(instance_path) / "sessions.sqlite3")
    if url.startswith("sqlite:///"):
        return SQLiteStore(url.removeprefix("sqlite:///"))
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(url)
    raise ConfigError(f"IMAGING_SESSION_STORE {url!r} must start with sqlite:/// or redis://")


def session_key(path: str | None, *, shared: bool) -> bytes:
    """The records' encryption key: from the file IMAGING_SESSION_KEY_FILE names, else one per process."""
    if path:
        try:
            key = Path(path).read_bytes().strip()
            Fernet(key)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"IMAGING_SESSION_KEY_FILE {path} must hold a Fernet key; create one with "
                "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`."
            ) from exc
        return key
    if shared:
        raise ConfigError(
            "A Redis session store is shared by several app processes, which must all use the same "
            "encryption key: set IMAGING_SESSION_KEY_FILE to a file holding a Fernet key (create one with "
            "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`)."
        )
    return Fernet.generate_key()  # sessions then end with the process, as their tokens would anyway


def store() -> SessionStore:
    return current_app.extensions["session_store"]


def init_app(app: Flask) -> None:
    configured = app.config.get("SESSION_STORE")
    if configured is not None and not isinstance(configured, str):
        app.extensions["session_store"] = configured  # a store object given directly (tests)
        return
    inner = open_store(configured, app.instance_path)
    shared = isinstance(inner, RedisStore)
    # SESSION_KEY: a key given in memory (the production server shares one among its workers).
    key = app.config.get("SESSION_KEY") or session_key(app.config.get("SESSION_KEY_FILE"),
                                                       shared=shared)
    app.extensions["session_store"] = EncryptedStore(GuardedStore(inner), key)


# --- outages and cross-process locks -------------------------------------------------------------

STORE_UNAVAILABLE = "The session service is unavailable; retry in a moment."


def _outage_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [sqlite3.OperationalError]
    try:
        import redis

        errors.append(redis.RedisError)
    except ImportError:  # pragma: no cover - redis is a dependency
        pass
    return tuple(errors)


class GuardedStore:
    """Turns a store outage (Redis down, SQLite file locked or gone) into StoreUnavailable (HTTP 503).

    Nothing is cached here: the next request tries the store again, so service resumes by itself
    when the store is back (redis-py reconnects on the next command).
    """

    def __init__(self, inner: SessionStore) -> None:
        self.inner = inner
        self.errors = _outage_errors()

    def _call(self, name: str, *args: Any) -> Any:
        try:
            return getattr(self.inner, name)(*args)
        except self.errors as exc:
            raise StoreUnavailable(STORE_UNAVAILABLE, log_detail=f"session store {name}: {type(exc).__name__}") \
                from exc

    def put(self, key: str, value: dict[str, Any], ttl_s: float) -> None:
        self._call("put", key, value, ttl_s)

    def get(self, key: str) -> dict[str, Any] | None:
        return self._call("get", key)

    def take(self, key: str) -> dict[str, Any] | None:
        return self._call("take", key)

    def delete(self, key: str) -> None:
        self._call("delete", key)

    def acquire(self, key: str, token: str, ttl_s: float) -> bool:
        return bool(self._call("acquire", key, token, ttl_s))

    def release(self, key: str, token: str) -> None:
        self._call("release", key, token)
