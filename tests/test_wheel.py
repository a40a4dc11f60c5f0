"""The installed product: a wheel built with `pip wheel .`, installed in a fresh venv outside the checkout."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.processes import free_port, sandbox_process, serve_process

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Iterator[Path]:
    """The venv's bin/ with the wheel installed (dependencies from the configured index)."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp / "dist"), str(ROOT)],
                   check=True, timeout=300, capture_output=True)
    wheel, = (tmp / "dist").glob("imaging_timeline-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(tmp / "venv")], check=True, timeout=120)
    subprocess.run([str(tmp / "venv" / "bin" / "pip"), "install", "--quiet", str(wheel)],
                   check=True, timeout=600, capture_output=True)
    yield tmp / "venv" / "bin"


def test_the_installed_package_is_imported_from_the_venv_not_the_checkout(installed, tmp_path):
    where = subprocess.run([str(installed / "python"), "-c", "import app, sandbox; print(app.__file__)"],
                           cwd=tmp_path, check=True, capture_output=True, text=True, timeout=60).stdout
    assert where.startswith(str(installed.parent))
    assert not where.startswith(str(ROOT))


def test_the_production_app_imports_nothing_of_the_sandbox(installed, tmp_path):
    (tmp_path / "launch.json").write_text((ROOT / "launch.json").read_text())
    code = ("import sys; from app import create_app; import app.production; create_app(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sandbox'))")
    out = subprocess.run([str(installed / "python"), "-c", code], cwd=tmp_path, check=True, capture_output=True,
                         text=True, timeout=60).stdout
    assert out.strip() == "[]"


def test_the_installed_sandbox_and_serve_render_the_start_page_an_error_page_and_a_timeline(installed, tmp_path):
    cli = [str(installed / "imaging-timeline")]
    port = free_port()
    app_url = f"http://127.0.0.1:{port}"
    with sandbox_process(app_url, tmp_path, cli=cli) as (sandbox_url, config), \
            serve_process(port, config, tmp_path, workers=1, threads=4, cli=cli):
        start = requests.get(f"{app_url}/", timeout=30)
        assert start.status_code == 200 and "Imaging Timeline" in start.text
        error = requests.get(f"{app_url}/timeline", timeout=30)  # no session: the error page
        assert error.status_code == 401
        assert "Relaunch" in error.text and "Traceback" not in error.text
        browser = requests.Session()
        timeline = browser.get(f"{sandbox_url}/launch", params={"patient": "pat-ben"}, timeout=30)
        assert timeline.status_code == 200 and timeline.url == f"{app_url}/timeline"
        assert "data-archive-id" in timeline.text
        assert browser.get(f"{app_url}/static/timeline/main.js", timeout=30).status_code == 200
        assert browser.get(f"{app_url}/static/icons/ct.svg", timeout=30).status_code == 200
        assert browser.get(f"{app_url}/api/studies", timeout=30).json()["studies"]


def test_the_newcomers_set_up_two_installed_serve_processes_on_one_redis_serve_one_session(installed, tmp_path):
    """The issue's "done when": installed wheel, `imaging-timeline sandbox`, two `serve` on one Redis."""
    import shutil

    from tests.conftest import need
    from tests.processes import fernet_key_file, redis_server, rsa_key_file

    need("redis-server", shutil.which("redis-server") is not None, "apt-get install redis-server")
    cli = [str(installed / "imaging-timeline")]
    port_a, port_b = free_port(), free_port()
    a, b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
    with redis_server(tmp_path) as redis, sandbox_process(a, tmp_path, cli=cli) as (sandbox_url, config):
        env = {"IMAGING_SESSION_STORE": redis.url,
               "IMAGING_SESSION_KEY_FILE": str(fernet_key_file(tmp_path / "session.key")),
               "IMAGING_TIMELINE_KEY_FILE": str(rsa_key_file(tmp_path / "signing.pem"))}
        with serve_process(port_a, config, tmp_path, workers=1, threads=4, env=env, cli=cli), \
                serve_process(port_b, config, tmp_path, workers=1, threads=4, env=env, cli=cli):
            browser = requests.Session()
            chart = browser.get(f"{sandbox_url}/", timeout=30)
            assert chart.status_code == 200
            launched = browser.get(f"{sandbox_url}/launch", params={"patient": "pat-ben"}, timeout=30)
            assert launched.url == f"{a}/timeline" and launched.status_code == 200
            for base in (a, b):
                assert browser.get(f"{base}/timeline", timeout=30).status_code == 200
                assert browser.get(f"{base}/api/studies", timeout=30).json()["studies"]
            assert "event: done" in browser.get(f"{b}/api/studies/stream", timeout=60).text
