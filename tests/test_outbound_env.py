"""The hospital's outbound HTTP settings reach every client the app makes, the gateway's stream pool too.

A hospital names its private CA (or its TLS-inspecting proxy's) in REQUESTS_CA_BUNDLE and its
web proxy in HTTPS_PROXY / HTTP_PROXY with NO_PROXY for the LAN. Real servers on loopback: a TLS
archive with a certificate from a CA made here, a forward proxy (CONNECT and absolute-form GET)
that records what it relays, and a plain archive that echoes the credentials it was sent.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from app.http import Deadline, OutboundSession, StreamError, StreamPool, open_stream
from tests.servers import accept_forever

PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy",
              "NO_PROXY", "no_proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NETRC")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)


class _Echo(BaseHTTPRequestHandler):
    """Answers every GET with the Authorization header it was sent (or "none")."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = (self.headers.get("Authorization") or "none").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@dataclass
class Archive:
    url: str
    server: ThreadingHTTPServer


@dataclass
class Proxy:
    url: str
    seen: list[str] = field(default_factory=list)  # first request line of each connection
    auth: list[str | None] = field(default_factory=list)


def _serve(server: ThreadingHTTPServer) -> None:
    threading.Thread(target=server.serve_forever, daemon=True).start()


@pytest.fixture
def ca(tmp_path) -> tuple[Path, Path, Path]:
    """A CA and a certificate it signed for 127.0.0.1: (ca.pem, cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Hospital test CA")])
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                            crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
               .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pacs.test")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    paths[0].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


@pytest.fixture
def tls_archive(ca) -> Iterator[Archive]:
    _, cert, key = ca
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    _serve(server)
    yield Archive(f"https://127.0.0.1:{server.server_address[1]}", server)
    server.shutdown()


@pytest.fixture
def plain_archive() -> Iterator[Archive]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    _serve(server)
    yield Archive(f"http://127.0.0.1:{server.server_address[1]}", server)
    server.shutdown()


def _pipe(a: socket.socket, b: socket.socket) -> None:
    try:
        while data := a.recv(65536):
            b.sendall(data)
    except OSError:
        pass
    finally:
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _read_head(conn: socket.socket) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(65536)
        if not chunk:
            break
        head += chunk
    return head


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    """A forward proxy: CONNECT tunnels, and absolute-form GETs re-sent to the origin (one per connection)."""
    listener = socket.create_server(("127.0.0.1", 0))
    found = Proxy(f"http://127.0.0.1:{listener.getsockname()[1]}")

    def handle(client: socket.socket) -> None:
        head = _read_head(client)
        lines = head.split(b"\r\n")
        request_line = lines[0].decode()
        found.seen.append(request_line)
        auth = [ln.split(b":", 1)[1].strip().decode() for ln in lines[1:]
                if ln.lower().startswith(b"proxy-authorization:")]
        found.auth.append(auth[0] if auth else None)
        method, target, _ = request_line.split(" ", 2)
        if method == "CONNECT":
            host, port = target.rsplit(":", 1)
            upstream = socket.create_connection((host, int(port)))
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            rest = target.split("://", 1)[1]
            hostport, _, path = rest.partition("/")
            host, port = hostport.rsplit(":", 1)
            upstream = socket.create_connection((host, int(port)))
            kept = [ln for ln in lines[1:] if not ln.lower().startswith((b"proxy-", b"connection:"))]
            upstream.sendall(b"\r\n".join([f"{method} /{path} HTTP/1.1".encode(), *kept[:-2],
                                           b"Connection: close", b"", b""]))
        threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()
        _pipe(client, upstream)

    accept_forever(listener, handle, thread_each=True)
    yield found
    listener.close()


def _stream(url: str) -> bytes:
    answer = open_stream(StreamPool(), url, deadline=Deadline.after(10), timeout=5, max_bytes=1024)
    return b"".join(answer.iter_bytes())


def test_the_named_ca_bundle_verifies_the_archive_for_requests_and_the_stream_pool(monkeypatch, ca, tls_archive):
    with pytest.raises(requests.exceptions.SSLError):
        OutboundSession().get(f"{tls_archive.url}/studies", timeout=5)
    with pytest.raises(StreamError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        _stream(f"{tls_archive.url}/studies")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca[0]))
    assert OutboundSession().get(f"{tls_archive.url}/studies", timeout=5).text == "none"
    assert _stream(f"{tls_archive.url}/studies") == b"none"


def test_curl_ca_bundle_is_the_fallback_as_in_requests(monkeypatch, ca, tls_archive):
    monkeypatch.setenv("CURL_CA_BUNDLE", str(ca[0]))
    assert _stream(f"{tls_archive.url}/frames/1") == b"none"
    assert OutboundSession().get(f"{tls_archive.url}/frames/1", timeout=5).status_code == 200


def test_https_archives_are_reached_through_the_proxy_by_connect_and_verified_end_to_end(
        monkeypatch, ca, tls_archive, proxy):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca[0]))
    monkeypatch.setenv("HTTPS_PROXY", proxy.url.replace("http://", "http://ward:s%40fe@"))
    host = tls_archive.url.removeprefix("https://")
    assert _stream(f"{tls_archive.url}/frames/1") == b"none"
    assert OutboundSession().get(f"{tls_archive.url}/studies", timeout=5).text == "none"
    assert [line.rsplit(" ", 1)[0] for line in proxy.seen] == [f"CONNECT {host}"] * 2
    expected = requests.auth._basic_auth_str("ward", "s@fe")
    assert proxy.auth == [expected, expected]


def test_http_archives_go_through_the_proxy_as_absolute_urls(monkeypatch, plain_archive, proxy):
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    assert _stream(f"{plain_archive.url}/frames/1?accept=x") == b"none"
    assert OutboundSession().get(f"{plain_archive.url}/studies", timeout=5).text == "none"
    assert proxy.seen == [f"GET {plain_archive.url}/frames/1?accept=x HTTP/1.1",
                          f"GET {plain_archive.url}/studies HTTP/1.1"]
    assert proxy.auth == [None, None]


def test_no_proxy_origins_are_reached_directly(monkeypatch, plain_archive, proxy):
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert _stream(f"{plain_archive.url}/frames/1") == b"none"
    assert OutboundSession().get(f"{plain_archive.url}/studies", timeout=5).text == "none"
    assert proxy.seen == []


def test_an_https_proxy_is_refused_by_the_stream_pool_in_words(monkeypatch, plain_archive):
    monkeypatch.setenv("HTTP_PROXY", "https://proxy.hospital.test:3128")
    with pytest.raises(StreamError, match="not an http:// proxy"):
        _stream(f"{plain_archive.url}/frames/1")


def test_netrc_passwords_are_never_sent(monkeypatch, tmp_path, plain_archive):
    """Archive credentials come from the app's configuration only, never from a ~/.netrc on the host."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login admin password hunter2\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert requests.Session().get(f"{plain_archive.url}/studies", timeout=5).text != "none"  # what requests does
    assert OutboundSession().get(f"{plain_archive.url}/studies", timeout=5).text == "none"


def test_clients_made_under_one_setting_share_its_proxy_choices_and_a_new_setting_is_read(
        monkeypatch, plain_archive, proxy):
    """A client per launch (the SMART token session) does not look the proxy environment up again."""
    before, pool = OutboundSession(), StreamPool()
    assert before.outbound is pool.env  # one reading of the environment for the process
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    after = OutboundSession()
    assert after.outbound is not before.outbound
    assert before.get(f"{plain_archive.url}/a", timeout=5).status_code == 200  # made before: direct
    assert after.get(f"{plain_archive.url}/b", timeout=5).status_code == 200  # made after: proxied
    assert proxy.seen == [f"GET {plain_archive.url}/b HTTP/1.1"]


@pytest.mark.parametrize("setting", [
    {},
    {"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "pacs.hospital.test,10.0.0.0/8"},
    {"HTTP_PROXY": "http://upper:1", "http_proxy": "http://lower:2", "no_proxy": ".hospital.test"},
    {"ALL_PROXY": "http://all:3", "NO_PROXY": "*"},
    {"https_proxy": "http://p:4", "NO_PROXY": "127.0.0.1:8042"},
])
@pytest.mark.parametrize("url", ["https://pacs.hospital.test/dicomweb", "http://10.1.2.3:8042/dicom-web",
                                 "https://ehr.example.org/fhir", "http://127.0.0.1:8042/x", "http://127.0.0.1:9/x"])
def test_the_proxy_chosen_per_origin_is_the_one_requests_chooses(monkeypatch, setting, url):
    from app.http import OutboundEnv

    for name, value in setting.items():
        monkeypatch.setenv(name, value)
    ours = OutboundEnv.from_environ().proxies_for(url)
    theirs = {k: v for k, v in requests.utils.get_environ_proxies(url).items() if k != "no"}
    assert ours == theirs
