"""Attack: someone who can read the session store (SQLite file, Redis) takes over sessions (finding 4).

Records were already encrypted; the keys are now a keyed hash (HMAC-SHA256 under the store's
key) of the session id or `state`, so a copied file or a `KEYS *` yields nothing a browser could
present. The SQLite file and its WAL/SHM companions are created 0600.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from urllib.parse import parse_qs, urlsplit

import pytest
import redis
import requests
from cryptography.fernet import Fernet

from app.session_store import EncryptedStore, RedisStore, SQLiteStore
from tests.fake_ehr import FakeEhr
from tests.launching import launch, running_app
from tests.test_session_store import redis_url  # noqa: F401  # the real redis-server fixture


@pytest.fixture
def ehr(httpserver) -> FakeEhr:
    return FakeEhr(httpserver).install()


def _raw_rows(path) -> list[tuple[str, str]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT k, v FROM kv").fetchall()


def test_the_sqlite_file_holds_no_session_id_or_state(ehr, tmp_path):
    with running_app(ehr, tmp_path) as url:  # an SQLite store at tmp_path/s.db, encrypted
        _, browser = launch(url, ehr.iss)  # one finished launch (a session) ...
        started = requests.get(f"{url}/launch", params={"iss": ehr.iss, "launch": "l2"}, allow_redirects=False,
                               timeout=10)  # ... and one pending launch
        state = parse_qs(urlsplit(started.headers["Location"]).query)["state"][0]
        sid = browser.cookies.get("itl_session")
        rows = _raw_rows(tmp_path / "s.db")
    assert rows
    dump = "\n".join(k + v for k, v in rows)
    assert sid and sid not in dump
    assert state not in dump
    assert {k.split(":", 1)[0] for k, _ in rows} >= {"session", "pending"}


def test_the_sqlite_file_and_its_journal_are_private(tmp_path):
    old = os.umask(0o022)
    try:
        store = EncryptedStore(SQLiteStore(tmp_path / "s.db"), Fernet.generate_key())
        store.put("session:abc", {"a": 1}, 60)
    finally:
        os.umask(old)
    files = [p for p in tmp_path.iterdir() if p.name.startswith("s.db")]
    assert {p.name for p in files} >= {"s.db", "s.db-wal", "s.db-shm"}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name


def test_redis_keys_are_keyed_hashes(redis_url):  # noqa: F811
    key = Fernet.generate_key()
    store = EncryptedStore(RedisStore(redis_url, prefix="sec-test:"), key)
    store.put("session:the-cookie-value", {"token": "t"}, 60)
    store.put("pending:the-state", {"v": 1}, 60)
    names = [k.decode() for k in redis.Redis.from_url(redis_url).keys("sec-test:*")]
    assert len(names) == 2
    assert not any("the-cookie-value" in n or "the-state" in n for n in names)
    assert store.get("session:the-cookie-value") == {"token": "t"}
    assert store.take("pending:the-state") == {"v": 1}
    # Another key (another deployment) hashes differently: nothing carries over.
    assert EncryptedStore(RedisStore(redis_url, prefix="sec-test:"), Fernet.generate_key()).get(
        "session:the-cookie-value") is None
