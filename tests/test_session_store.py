"""The server-side session stores: SQLite (embedded default) and Redis (scale-out), same behaviour."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.fernet import Fernet

from app.errors import ConfigError
from app.session_store import EncryptedStore, RedisStore, SQLiteStore, open_store, session_key
from tests.conftest import need


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory) -> Iterator[str]:
    binary = shutil.which("redis-server")
    need("redis-server", binary is not None, "apt-get install redis-server")
    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        for _ in range(100):
            try:
                RedisStore(url).client.ping()
                break
            except Exception:
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "sqlite":
        return SQLiteStore(tmp_path / "s.db")
    return RedisStore(request.getfixturevalue("redis_url"), prefix=f"t{time.time_ns()}:")


def test_put_then_get_returns_the_record(store):
    store.put("k", {"a": [1, 2]}, 10)
    assert store.get("k") == {"a": [1, 2]}


def test_records_expire(store):
    store.put("k", {"a": 1}, 0.2)
    time.sleep(0.4)
    assert store.get("k") is None


def test_take_is_single_use_even_under_contention(store):
    store.put("state", {"v": 1}, 10)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: store.take("state"), range(8)))
    assert [r for r in results if r is not None] == [{"v": 1}]


def test_delete_removes(store):
    store.put("k", {"a": 1}, 10)
    store.delete("k")
    assert store.get("k") is None


def test_open_store_refuses_an_unknown_scheme(tmp_path):
    with pytest.raises(ConfigError, match="must start with sqlite:/// or redis://"):
        open_store("memcached://x", str(tmp_path))


def test_two_app_processes_share_sessions_through_redis(redis_url):
    one, two = RedisStore(redis_url, prefix="shared:"), RedisStore(redis_url, prefix="shared:")
    one.put("session:abc", {"patient": "p"}, 10)
    assert two.get("session:abc") == {"patient": "p"}


# --- encryption at rest --------------------------------------------------------------------------


def test_records_are_encrypted_at_rest(tmp_path):
    inner = SQLiteStore(tmp_path / "s.db")
    store = EncryptedStore(inner, Fernet.generate_key())
    store.put("session:x", {"token": {"access_token": "at-very-secret"}}, 10)
    assert store.get("session:x") == {"token": {"access_token": "at-very-secret"}}
    assert b"at-very-secret" not in (tmp_path / "s.db").read_bytes()
    assert "at-very-secret" not in json.dumps(inner.get("session:x"))


def test_a_record_under_another_key_reads_as_absent(tmp_path):
    inner = SQLiteStore(tmp_path / "s.db")
    EncryptedStore(inner, Fernet.generate_key()).put("session:x", {"a": 1}, 10)
    assert EncryptedStore(inner, Fernet.generate_key()).get("session:x") is None


def test_a_redis_store_without_a_shared_key_is_refused():
    with pytest.raises(ConfigError, match="set IMAGING_SESSION_KEY_FILE"):
        session_key(None, shared=True)


def test_a_bad_key_file_says_how_to_make_one(tmp_path):
    path = tmp_path / "key"
    path.write_text("not a key")
    with pytest.raises(ConfigError, match="must hold a Fernet key; create one with"):
        session_key(str(path), shared=False)


def test_the_key_file_is_read(tmp_path):
    key = Fernet.generate_key()
    (tmp_path / "key").write_bytes(key + b"\n")
    assert session_key(str(tmp_path / "key"), shared=True) == key


def test_the_app_encrypts_its_sessions_with_the_configured_key(tmp_path):
    from app import create_app

    key = Fernet.generate_key()
    (tmp_path / "key").write_bytes(key)
    app = create_app({"SESSION_STORE": f"sqlite:///{tmp_path / 'app.db'}", "SESSION_KEY_FILE": str(tmp_path / "key"),
                      "ARCHIVES": ()})
    with app.app_context():
        from app.session_store import store

        store().put("k", {"v": 1}, 10)
    assert EncryptedStore(SQLiteStore(tmp_path / "app.db"), key).get("k") == {"v": 1}


# --- locks (single-flight refresh and search across processes) -----------------------------------


def test_a_lock_is_held_by_one_token_at_a_time_even_under_contention(store):
    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(lambda n: store.acquire("lock:x", f"t{n}", 10), range(8)))
    assert won.count(True) == 1


def test_the_holder_renews_its_lock_and_others_still_cannot_take_it(store):
    assert store.acquire("lock:x", "mine", 10)
    assert store.acquire("lock:x", "mine", 10)
    assert not store.acquire("lock:x", "theirs", 10)


def test_an_expired_lock_can_be_taken(store):
    assert store.acquire("lock:x", "dead", 0.2)
    time.sleep(0.4)
    assert store.acquire("lock:x", "alive", 10)


def test_only_the_holder_releases_a_lock(store):
    assert store.acquire("lock:x", "mine", 10)
    store.release("lock:x", "theirs")
    assert not store.acquire("lock:x", "theirs", 10)
    store.release("lock:x", "mine")
    assert store.acquire("lock:x", "theirs", 10)


def test_held_waits_for_the_lock_then_gives_up():
    from app.locks import held

    now = [0.0]
    backing = SQLiteStore(":memory:", clock=lambda: now[0])
    assert backing.acquire("lock:r", "other", 100)

    def tick(seconds: float) -> None:
        now[0] += seconds

    with held(backing, "lock:r", ttl_s=5, wait_s=1, clock=lambda: now[0], sleep=tick) as got:
        assert got is False
    now[0] = 200  # the other holder's lock expired
    with held(backing, "lock:r", ttl_s=5, wait_s=1, clock=lambda: now[0], sleep=tick) as got:
        assert got is True
    assert backing.acquire("lock:r", "next", 5)  # released on exit


def test_lock_names_do_not_contain_the_session_id():
    from app.locks import lock_name

    assert "secret-session-id" not in lock_name("refresh", "secret-session-id")


# --- outages ------------------------------------------------------------------------------------


def test_an_unreachable_redis_is_store_unavailable_not_a_crash():
    from app.errors import StoreUnavailable
    from app.session_store import GuardedStore

    guarded = GuardedStore(RedisStore(f"redis://127.0.0.1:{_free_port()}/0"))
    with pytest.raises(StoreUnavailable, match=r"^The session service is unavailable; retry in a moment\.$"):
        guarded.get("session:x")


@pytest.mark.parametrize("opener", ["session", "audit"])
def test_a_store_file_another_process_is_writing_is_opened_once_it_is_free(tmp_path, opener):
    """gunicorn's workers start together: one still creating a fresh file must not fail the other's boot.

    Switching a file to WAL takes a lock SQLite does not wait for ("database is locked" at once), and a
    worker that fails to boot makes gunicorn stop the whole server.
    """
    import sqlite3
    import threading

    from app.audit_store import SQLiteAuditStore

    path = tmp_path / "fresh.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)  # the other worker
    other.execute("CREATE TABLE booting (x)")
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO booting VALUES (1)")
    threading.Timer(0.3, other.execute, args=("COMMIT",)).start()
    store = SQLiteStore(path) if opener == "session" else SQLiteAuditStore(path)
    mode = (store._db if opener == "session" else store._connection()).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    other.close()
