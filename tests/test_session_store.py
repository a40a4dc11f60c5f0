"""The server-side session stores: SQLite (embedded default) and Redis (scale-out), same behaviour."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.errors import ConfigError
from app.session_store import RedisStore, SQLiteStore, open_store
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
