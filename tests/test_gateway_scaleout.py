"""The gateway across app processes: capability records live in the shared session store (Redis).

A viewer's requests may land on any worker behind the load balancer; a worker that did not issue
the capability serves it from the store, and a revocation on one is refused by the other.
"""

from __future__ import annotations

import requests
from cryptography.fernet import Fernet
from gateway_env import gateway_env, instances_of, series_of
from test_session_store import redis_url  # noqa: F401  (the real redis-server fixture)

from app import create_app
from app.serving import serve

DICOM_JSON = {"Accept": "application/dicom+json"}
FRAMES = {"Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"}


def test_another_worker_sharing_the_store_serves_and_refuses_the_same_capability(tmp_path, orthanc, redis_url):  # noqa: F811
    key_file = tmp_path / "session.key"
    key_file.write_bytes(Fernet.generate_key())
    shared = {"SESSION_STORE": redis_url, "SESSION_KEY_FILE": str(key_file)}
    with gateway_env(tmp_path, app_options=shared) as env:
        browser = env.launch("pat-amy")
        base = env.gateway(browser)  # issued by the demo's app process
        config = {k: env.demo.app.config[k] for k in ("LAUNCH_CONFIG", "ARCHIVES", "APP_KEYS", "BACKEND_CLIENT_ID")}
        other = create_app({**config, **shared, "PREFETCH_SEARCH": False})
        with serve(other) as second:
            path = base.split("/dicomweb/", 1)[1]
            via_other = f"{second}/dicomweb/{path}"
            answer = requests.get(f"{via_other}/studies", headers=DICOM_JSON, timeout=30)
            assert answer.status_code == 200
            assert env.amy in {item["0020000D"]["Value"][0] for item in answer.json()}
            assert requests.delete(base, timeout=10).status_code == 204  # withdrawn on the first worker
            assert requests.get(f"{via_other}/studies", headers=DICOM_JSON, timeout=10).status_code == 401


def test_a_store_outage_on_the_fast_path_is_the_routes_readable_503(tmp_path, orthanc):
    """A frame the fast path would serve, while Redis is down: the route's 503 (Retry-After, plain
    words), not a server error."""
    import shutil

    from tests.conftest import need
    from tests.processes import RedisServer

    need("redis-server", shutil.which("redis-server") is not None, "apt-get install redis-server")
    redis = RedisServer(tmp_path).start()
    key_file = tmp_path / "session.key"
    key_file.write_bytes(Fernet.generate_key())
    try:
        with gateway_env(tmp_path, app_options={"SESSION_STORE": redis.url, "SESSION_KEY_FILE": str(key_file)}) as env:
            base = env.gateway(env.launch("pat-amy"))
            (series,) = series_of(base, env.amy)
            frames = [f"{base}/studies/{env.amy}/series/{series}/instances/{sop}/frames/1"
                      for sop in instances_of(base, env.amy, series)]
            service = env.demo.app.extensions["gateway"]
            assert requests.get(frames[0], headers=FRAMES, timeout=10).status_code == 200
            before = service.fast_answers
            assert requests.get(frames[1], headers=FRAMES, timeout=10).status_code == 200
            assert service.fast_answers == before + 1  # the next frames take the fast path
            redis.stop()
            down = requests.get(frames[2], headers=FRAMES, timeout=30)
            assert down.status_code == 503
            assert down.headers["Retry-After"] == "5"
            assert down.json()["error"] == "store-unavailable"
    finally:
        redis.stop()
