"""Cross-process locks on the session store: one token refresh and one federated search at a time.

With a Redis store every process on every machine sees the same lock; with the embedded SQLite
store, the processes sharing its file do. Lock names carry a hash of the session id, never the
id itself (a session id is a bearer credential).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .session_store import SessionStore


def hashed_key(kind: str, *parts: str) -> str:
    """`<kind>:<hash of parts>`: a store key naming a session without containing its id."""
    return f"{kind}:" + hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:40]


def lock_name(kind: str, *parts: str) -> str:
    """`lock:<kind>:<hash of parts>`."""
    return hashed_key(f"lock:{kind}", *parts)


def new_token() -> str:
    return secrets.token_urlsafe(16)


@contextmanager
def held(store: SessionStore, name: str, *, ttl_s: float, wait_s: float, poll_s: float = 0.05,
         clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> Iterator[bool]:
    """Hold the lock `name` (True), or give up after `wait_s` (False); released on exit if held.

    `ttl_s` bounds how long a holder that died keeps others waiting.
    """
    token, give_up = new_token(), clock() + wait_s
    got = store.acquire(name, token, ttl_s)
    while not got and clock() < give_up:
        sleep(poll_s)
        got = store.acquire(name, token, ttl_s)
    try:
        yield got
    finally:
        if got:
            store.release(name, token)
