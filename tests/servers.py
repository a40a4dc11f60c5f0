"""Real HTTP for tests: the app's own background server helper (app/serving.py), and raw socket servers."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

from app.serving import serve

__all__ = ["accept_forever", "serve"]


def accept_forever(listener: socket.socket, handle: Callable[[socket.socket], None], *,
                   thread_each: bool = False) -> None:
    """In a daemon thread: hand each connection `listener` accepts to `handle` (each in its own
    thread if `thread_each`), until the listener is closed."""

    def loop() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            if thread_each:
                threading.Thread(target=handle, args=(conn,), daemon=True).start()
            else:
                handle(conn)

    threading.Thread(target=loop, daemon=True).start()
