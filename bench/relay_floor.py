"""The floor under any DICOMweb relay served the way `imaging-timeline serve` serves: no checks at all.

    python bench/relay_floor.py <port> <archive DICOMweb base>

A bare WSGI callable under the same gunicorn settings as `serve` (app.production: 2 gthread
workers, 16 threads, access log) that forwards `GET /<path>` to the archive with the same
streaming relay the gateway uses (app.http.open_stream: the gateway's StreamPool of keep-alive
connections, 256 kB chunks, headers passed through) and nothing else: no Flask, no
capability, no session, no scope, no credentials.
bench/gateway.py runs it beside the gateway, so that the cost of a second HTTP hop in Python
on this machine (this floor ÷ direct) and the cost of the gateway's own decisions (gateway ÷
this floor) are measured apart, in the same run. Never part of the product: a relay without the
guard is exactly what the gateway exists to prevent.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from app.gateway import PASSED_HEADERS, archive_pool
from app.http import Deadline, StreamPool, install_header_parsing, open_stream
from app.production import ProductionServer, server_options


def relay(upstream: str) -> Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]:
    pool: StreamPool | None = None

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        nonlocal pool
        pool = pool or archive_pool()  # built in the worker, after the fork
        query = environ.get("QUERY_STRING")
        url = f"{upstream}{environ['PATH_INFO']}" + (f"?{query}" if query else "")
        headers = {"Accept": environ.get("HTTP_ACCEPT", "*/*"),
                   "Accept-Encoding": environ.get("HTTP_ACCEPT_ENCODING", "identity")}
        answer = open_stream(pool, url, deadline=Deadline.after(300), timeout=30, max_bytes=4 * 1024**3,
                             headers=headers)
        start_response(f"{answer.status} -", [(k, answer.headers[k]) for k in PASSED_HEADERS if k in answer.headers])

        def body() -> Iterator[bytes]:
            yield from answer.iter_bytes()

        return body()

    return app


def main() -> None:
    port, upstream = int(sys.argv[1]), sys.argv[2].rstrip("/")
    install_header_parsing()  # as create_app does: the same response parsing as the gateway
    ProductionServer(lambda: relay(upstream), server_options("127.0.0.1", port, 2, 16)).run()  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
