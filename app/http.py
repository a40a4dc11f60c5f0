"""Bounded, timed outbound HTTP: every call has a timeout, a deadline, a size cap and no redirects."""

from __future__ import annotations

import email.parser
import http.client
import json
import os
import select
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import requests

from .errors import ResponseTooLarge

CHUNK = 64 * 1024
STREAM_CHUNK = 256 * 1024  # relayed pixel data: fewer, larger writes (a 512x512 16-bit frame is 512 kB)


STDLIB_PARSE_HEADERS = http.client.parse_headers  # read at import, before install_header_parsing


def _parse_headers(fp: Any, _class: type = http.client.HTTPMessage, **limits: Any) -> http.client.HTTPMessage:
    """`http.client.parse_headers`, with the same reading and the same result, minus a wasted body parse.

    The stdlib hands the header block to the full MIME parser, which for a multipart Content-Type
    (every WADO-RS frame, instance or bulk-data answer) compiles a regular expression from that
    response's unique boundary, looking for parts in a body that is not there: about 110 µs of
    the GIL per response, a third of the gateway's own CPU per relayed frame (bench/gateway.py).
    `headersonly=True` parses the same header block into the same message. The MIME defects it
    no longer records (no start boundary, multipart invariant) are exactly the ones urllib3's
    `assert_header_parsing` ignores for this reason.
    """
    max_headers = limits.get("_max_headers")  # Python 3.13+
    read: Any = http.client._read_headers  # type: ignore[attr-defined]
    lines = read(fp) if max_headers is None else read(fp, max_headers)
    return email.parser.Parser(_class=_class).parsestr(b"".join(lines).decode("iso-8859-1"), headersonly=True)


def install_header_parsing() -> None:
    """Use `_parse_headers` for every HTTP response this process reads (urllib3 and requests use http.client)."""
    if hasattr(http.client, "_read_headers"):
        http.client.parse_headers = _parse_headers  # type: ignore[assignment]


Origin = tuple[str, str, int | None]


def origin(url: str) -> Origin:
    """(scheme, host, port) with the default port made explicit: the unit tokens are bound to."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port


def same_origin(a: str, b: str) -> bool:
    return origin(a) == origin(b)


def under(url: str, base: str) -> bool:
    """Whether `url` lies at or below `base` (same origin, path prefix on a segment boundary)."""
    if not same_origin(url, base):
        return False
    path, root = urlsplit(url).path, urlsplit(base).path.rstrip("/")
    return path == root or path.startswith(root + "/")


@dataclass(frozen=True)
class Deadline:
    """An absolute point on a monotonic clock; requests get `min(timeout, time left)`."""

    at: float
    clock: Callable[[], float] = field(default=time.monotonic, compare=False)

    @classmethod
    def after(cls, seconds: float, clock: Callable[[], float] = time.monotonic) -> Deadline:
        return cls(clock() + seconds, clock)

    def remaining(self) -> float:
        return self.at - self.clock()

    def expired(self) -> bool:
        return self.remaining() <= 0

    def timeout(self, cap: float) -> float:
        """Seconds to allow the next network wait; raises requests.Timeout once the deadline has passed."""
        left = self.remaining()
        if left <= 0:
            raise requests.Timeout("deadline passed")
        return min(cap, left)

    def earliest(self, other: Deadline) -> Deadline:
        return self if self.at <= other.at else other


@dataclass(frozen=True)
class HttpAnswer:
    """A fully read (and size-checked) HTTP response."""

    url: str
    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()

    def json(self) -> Any:
        """The body parsed as JSON; ValueError if it is not."""
        return json.loads(self.body)


def fetch(http: requests.Session, method: str, url: str, *, deadline: Deadline, timeout: float,
          max_bytes: int, params: Any = None, headers: Mapping[str, str] | None = None,
          data: Any = None) -> HttpAnswer:
    """One request, read in chunks so that neither size nor total time can exceed the caps.

    Raises requests.RequestException (including Timeout when the deadline passes while reading)
    or ResponseTooLarge. Redirects are never followed: a redirect could carry credentials to a
    host they were not issued for.
    """
    resp = http.request(method, url, params=params, headers=dict(headers or {}), data=data,
                        timeout=deadline.timeout(timeout), stream=True, allow_redirects=False)
    try:
        chunks: list[bytes] = []
        size = 0
        for chunk in resp.iter_content(CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise ResponseTooLarge(f"answer over {_human(max_bytes)}, cut")
            chunks.append(chunk)
            deadline.timeout(timeout)
        return HttpAnswer(resp.url or url, resp.status_code, dict(resp.headers), b"".join(chunks))
    finally:
        resp.close()


def _human(n: int) -> str:
    if n >= 1024 * 1024 and n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)} MB"
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024} kB"
    return f"{n} bytes"


class RedirectRefused(requests.RequestException):
    """A server answered with a redirect where the app's policy is never to follow one."""

    def __init__(self, status: int, location: str) -> None:
        super().__init__(f"HTTP {status} redirect to {location[:200]!r} not followed")
        self.status, self.location = status, location


class AnswerTooLarge(requests.RequestException, ValueError):
    """An answer read through PolicySession exceeded its size cap."""


@dataclass
class OutboundEnv:
    """What the environment says about outbound HTTP, read once, for every client this app makes.

    The variables are requests' own: `REQUESTS_CA_BUNDLE` (else `CURL_CA_BUNDLE`) names the CA
    bundle (a file or a c_rehash'ed folder) for a hospital's private CA or TLS-inspecting proxy;
    `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY` and `NO_PROXY` choose a proxy per origin. requests
    looks them up again on every request (and ~/.netrc, whose passwords this app never sends:
    archive credentials come from its own configuration only); here they are read when a client
    is made and the proxy choice is kept per origin. The gateway's StreamPool uses the same.
    """

    ca_bundle: str | None
    proxies: Mapping[str, str] = field(default_factory=dict)  # scheme (and "no") -> value, as urllib reads them
    _chosen: dict[Origin, dict[str, str]] = field(default_factory=dict, repr=False)

    @classmethod
    def from_environ(cls) -> OutboundEnv:
        """The process's one OutboundEnv for the variables as they are now (one per distinct setting).

        Shared, so the per-origin proxy choice is made once per process, not once per client: a
        SMART token session is made for every launch.
        """
        setting = (os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or None,
                   tuple(sorted((k, v) for k, v in os.environ.items() if k.lower().endswith("_proxy"))))
        with _SHARED_LOCK:
            env = _SHARED_ENVS.get(setting)
            if env is None:
                env = _SHARED_ENVS[setting] = cls(setting[0], _proxy_table(setting[1]))
        return env

    def proxies_for(self, url: str) -> dict[str, str]:
        """The proxies requests would use for `url` under this setting (empty where NO_PROXY applies)."""
        key = origin(url)
        found = self._chosen.get(key)
        if found is None:
            # requests' own NO_PROXY rule (host suffixes, ports, CIDR ranges), given this setting's list.
            bypass = requests.utils.should_bypass_proxies(url, no_proxy=self.proxies.get("no", ""))
            found = {} if bypass else {k: v for k, v in self.proxies.items() if k != "no"}
            if len(self._chosen) < 1024:  # bounded: origins come from configuration and FHIR answers
                self._chosen[key] = found
        return found

    def proxy_url(self, url: str) -> str | None:
        """The proxy a request to `url` goes through, chosen as requests does (scheme://host, scheme, all)."""
        return requests.utils.select_proxy(url, self.proxies_for(url)) or None

    def tls_context(self) -> ssl.SSLContext:
        """Certificates verified against the CA bundle if one is named, else the system's trust store."""
        bundle = self.ca_bundle
        if bundle and os.path.isdir(bundle):
            return ssl.create_default_context(capath=bundle)
        return ssl.create_default_context(cafile=bundle or None)


def _proxy_table(variables: Iterable[tuple[str, str]]) -> dict[str, str]:
    """`*_proxy` variables as urllib.request.getproxies_environment reads them: lowercase names win."""
    pairs = list(variables)
    table = {name[:-6].lower(): value for name, value in pairs if value}
    for name, value in pairs:
        if name.endswith("_proxy"):
            if value:
                table[name[:-6].lower()] = value
            else:
                table.pop(name[:-6].lower(), None)
    return table


_SHARED_ENVS: dict[tuple[str | None, tuple[tuple[str, str], ...]], OutboundEnv] = {}
_SHARED_LOCK = threading.Lock()


class OutboundSession(requests.Session):
    """A requests.Session that takes the CA bundle and proxies from `OutboundEnv` (see there)."""

    def __init__(self, *args: Any, env: OutboundEnv | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outbound = env or OutboundEnv.from_environ()
        self.trust_env = False
        self.verify = self.outbound.ca_bundle or True

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        if kwargs.get("proxies") is None:
            kwargs["proxies"] = self.outbound.proxies_for(url.decode() if isinstance(url, bytes) else url)
        return super().request(method, url, *args, **kwargs)


class PolicySession(OutboundSession):
    """A requests.Session that applies this module's rules to every call a library makes through it.

    For libraries that make their own requests (authlib's token exchange and refresh): redirects
    are never followed (a 3xx raises RedirectRefused, so a code, verifier or refresh token is never
    re-posted to wherever a Location points), every call has a timeout, and the body is read in
    chunks and cut at `max_bytes`.
    """

    def __init__(self, *args: Any, timeout: float = 10.0, max_bytes: int = 1024 * 1024, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.policy_timeout, self.policy_max_bytes = timeout, max_bytes

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs["allow_redirects"] = False
        kwargs["stream"] = True
        timeout = kwargs.get("timeout")
        kwargs["timeout"] = self.policy_timeout if timeout is None else min(float(timeout), self.policy_timeout)
        resp = super().request(method, url, *args, **kwargs)
        try:
            if resp.is_redirect or 300 <= resp.status_code < 400:
                raise RedirectRefused(resp.status_code, resp.headers.get("Location", ""))
            chunks, size = [], 0
            for chunk in resp.iter_content(CHUNK):
                size += len(chunk)
                if size > self.policy_max_bytes:
                    raise AnswerTooLarge(f"answer larger than {_human(self.policy_max_bytes)}")
                chunks.append(chunk)
            resp._content = b"".join(chunks)  # what .json()/.text read from here on
        finally:
            resp.close()
        return resp


class StreamError(Exception):
    """A streamed GET failed before its answer began: refused, dropped, timed out, or not HTTP."""


class StreamPool:
    """Keep-alive HTTP/1.1 connections for streamed GETs (http.client), at most `maxsize` idle per origin.

    The gateway relays every frame a viewer asks for through here, so this is the one hot path of
    outbound HTTP. http.client directly, rather than urllib3 (0.7 vs 1.0 ms of CPU per relayed
    frame in bench/gateway.py, whose floor relay uses this pool) or requests (more again):
    the policy needs none of their machinery. It never follows a redirect (http.client has no
    such feature), every socket wait is bounded by the call's timeout, HTTPS verifies
    certificates against the CA bundle and goes through the proxy that `OutboundEnv` names, as
    every other client of the app does, and a connection is reused only after its previous
    answer was read to the end.
    """

    def __init__(self, maxsize: int = 32, *, env: OutboundEnv | None = None) -> None:
        self.maxsize = maxsize
        self.env = env or OutboundEnv.from_environ()
        self._idle: dict[Origin, list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._tls = self.env.tls_context()

    def _take(self, key: Origin) -> http.client.HTTPConnection | None:
        """An idle connection to `key` that the server has not closed meanwhile (else None)."""
        while True:
            with self._lock:
                idle = self._idle.get(key)
                conn = idle.pop() if idle else None
            if conn is None:
                return None
            if conn.sock is not None and not _readable(conn.sock):
                return conn
            conn.close()

    def put(self, key: Origin, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < self.maxsize:
                idle.append(conn)
                return
        conn.close()

    def _connect(self, key: Origin, url: str, timeout: float) -> http.client.HTTPConnection:
        """A new connection to the archive: direct, or through the proxy OutboundEnv names for it."""
        scheme, host, port = key
        if scheme not in ("http", "https"):
            raise StreamError(f"not an http(s) URL (scheme {scheme!r})")
        proxy = self.env.proxy_url(url)
        if proxy is None:
            if scheme == "https":
                return http.client.HTTPSConnection(host, port, timeout=timeout, context=self._tls)
            return http.client.HTTPConnection(host, port, timeout=timeout)
        via = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if via.scheme != "http" or not via.hostname:
            raise StreamError(f"proxy {via.scheme}://{via.hostname} is not an http:// proxy (the gateway "
                              "reaches archives through http:// proxies only)")
        auth = _proxy_authorization(via.username, via.password)
        if scheme == "https":  # CONNECT, then TLS to the archive itself through the tunnel
            tunnel = http.client.HTTPSConnection(via.hostname, via.port or 80, timeout=timeout, context=self._tls)
            tunnel.set_tunnel(host, port, headers=auth)
            return tunnel
        proxied = _ProxiedHTTPConnection(via.hostname, via.port or 80, timeout=timeout)
        proxied.proxy_headers = auth
        return proxied

    def get(self, url: str, headers: Mapping[str, str], timeout: float) -> tuple[
            Origin, http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send the GET; (origin, connection, response) once the status line and headers are in.

        A pooled connection the server closed just as the request went out (Orthanc drops idle
        ones after 1 s) fails before any answer: the GET, idempotent, is sent once more on a new one.
        """
        key = origin(url)
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn = self._take(key)
        for fresh in (conn is None, True):
            if conn is None:
                conn = self._connect(key, url, timeout)
            else:
                conn.timeout = timeout
                if conn.sock is not None:
                    conn.sock.settimeout(timeout)
            sent, path = dict(headers), target
            if isinstance(conn, _ProxiedHTTPConnection):  # a plain-http proxy is sent the absolute URL
                sent.update(conn.proxy_headers)
                path = url.split("#", 1)[0]
            try:
                conn.request("GET", path, headers=sent)
                return key, conn, conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                conn.close()
                conn = None
                if fresh:
                    raise StreamError(f"{type(exc).__name__}: the server closed the connection") from exc
            except (OSError, http.client.HTTPException) as exc:  # refused, timed out, not HTTP
                conn.close()
                raise StreamError(f"{type(exc).__name__}: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()


class _ProxiedHTTPConnection(http.client.HTTPConnection):
    """A connection to a plain-http proxy, for http:// archives behind it (absolute-form requests)."""

    proxy_headers: dict[str, str]


def _proxy_authorization(user: str | None, password: str | None) -> dict[str, str]:
    """Basic credentials for a proxy named with them (http://user:pass@proxy:3128), as requests sends."""
    if user is None:
        return {}
    return {"Proxy-Authorization": requests.auth._basic_auth_str(unquote(user), unquote(password or ""))}


def _readable(sock: Any) -> bool:
    """Whether an idle connection has something to read: EOF (the server closed it) or stray bytes."""
    poller = select.poll()  # poll, not select: a busy worker's descriptors may pass FD_SETSIZE
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class StreamedAnswer:
    """An HTTP response whose body is read lazily, chunk by chunk, under the same caps as `fetch`.

    For pixel data (DICOMweb frames, instances, bulk data), which must reach a viewer without being
    buffered whole: at most one chunk (256 kB) is held at a time, the byte count is checked as it
    grows, and every read waits at most `timeout`. Past `max_bytes` or the deadline the stream
    stops and the connection is closed (the client sees a short body, never a partial answer
    presented as complete: the Content-Length it was promised is then not met). The body is
    passed on as sent: http.client decodes no Content-Encoding.
    """

    def __init__(self, pool: StreamPool, key: Origin, conn: http.client.HTTPConnection,
                 resp: http.client.HTTPResponse, *, deadline: Deadline, max_bytes: int) -> None:
        self.pool, self.key, self.conn, self.resp = pool, key, conn, resp
        self.deadline, self.max_bytes = deadline, max_bytes
        self.status: int = resp.status
        self.headers: http.client.HTTPMessage = resp.headers  # case-insensitive, as sent
        self.cut = False  # whether the cap or the deadline stopped the body early
        self._open = True

    def iter_bytes(self) -> Iterator[bytes]:
        """The body as sent, then the connection goes back to the pool (or is closed if cut short)."""
        size, done = 0, False
        try:
            while chunk := self.resp.read(STREAM_CHUNK):
                size += len(chunk)
                if size > self.max_bytes or self.deadline.expired():
                    self.cut = True
                    return
                yield chunk
            done = True
        except (OSError, http.client.HTTPException):
            self.cut = True  # the archive stopped sending mid-answer (timeout, reset, short body)
        finally:
            if done and not self.resp.will_close:
                self._open = False
                self.pool.put(self.key, self.conn)  # read to the end: the connection is reusable
            else:
                self.close()

    def close(self) -> None:
        """Drop the connection (an unread body cannot go back to the pool); a no-op once released."""
        if self._open:
            self._open = False
            self.resp.close()
            self.conn.close()


def open_stream(pool: StreamPool, url: str, *, deadline: Deadline, timeout: float, max_bytes: int,
                headers: Mapping[str, str] | None = None) -> StreamedAnswer:
    """A GET whose body is streamed (see StreamedAnswer and StreamPool); redirects are never followed.

    Raises StreamError (refused, dropped or timed-out connections, an answer that is not HTTP) and
    requests.Timeout once the deadline has passed, as `fetch` does.
    """
    key, conn, resp = pool.get(url, headers or {}, deadline.timeout(timeout))
    return StreamedAnswer(pool, key, conn, resp, deadline=deadline, max_bytes=max_bytes)
