"""Serve a WSGI app on 127.0.0.1 in a background thread (the demo in tests, benchmarks, test servers)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from werkzeug.serving import BaseWSGIServer, make_server

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


def starting(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """A server's app until the real one is set (e.g. one whose URLs name the port, known once bound)."""
    start_response("503 Service Unavailable", [("Content-Type", "text/plain"), ("Retry-After", "1")])
    return [b"Imaging Timeline is starting"]


@contextmanager
def background_server(app: WSGIApplication = starting, port: int = 0) -> Iterator[BaseWSGIServer]:
    """A threaded server on 127.0.0.1 (port 0: a free one); set `.app` later if the port is needed first."""
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextmanager
def serve(app: WSGIApplication) -> Iterator[str]:
    """Serve `app` in the background; yields its base URL (http://127.0.0.1:PORT)."""
    with background_server(app) as server:
        yield f"http://127.0.0.1:{server.server_port}"


def serve_in_foreground(port: int, build: Callable[[BaseWSGIServer], WSGIApplication]) -> None:
    """Serve on 127.0.0.1:`port` until Ctrl-C; `build(server)` makes the app once the port is bound."""
    server = make_server("127.0.0.1", port, starting, threaded=True)
    try:
        server.app = build(server)
    except BaseException:
        server.server_close()
        raise
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
