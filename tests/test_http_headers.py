"""Response headers are parsed as the stdlib parses them, without the wasted multipart body parse.

`app.http._parse_headers` replaces `http.client.parse_headers` for the process (create_app
installs it): every WADO-RS answer the gateway relays is multipart, and the stdlib's full MIME
parse of a header block compiled a regular expression per response boundary (bench/gateway.py).
"""

from __future__ import annotations

import email.parser
import http.client
import io

import pytest
import urllib3
from werkzeug import Response

from app import create_app
from app.http import STDLIB_PARSE_HEADERS, _parse_headers, install_header_parsing
from tests.launching import APP_KEYS

BLOCKS = [
    b"Content-Type: multipart/related; type=\"application/octet-stream\"; boundary=8b1f20a9-998a\r\n"
    b"Content-Length: 11695\r\nContent-Encoding: gzip\r\n\r\n",
    b"Content-Type: application/dicom+json\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n",  # repeated header
    b"X-Folded: first part\r\n second part\r\nContent-Type: text/plain\r\n\r\n",  # obsolete line folding
    b"X-Latin: caf\xe9\r\nContent-Type: multipart/mixed; boundary=\"quoted boundary\"\r\n\r\n",
    b"\r\n",  # no headers at all
]


def stdlib(block: bytes) -> http.client.HTTPMessage:
    """What http.client.parse_headers returns (its own code: read the block, full MIME parse)."""
    return email.parser.Parser(_class=http.client.HTTPMessage).parsestr(block.decode("iso-8859-1"))


@pytest.mark.parametrize("block", BLOCKS)
def test_the_same_headers_as_the_stdlib_and_the_body_left_unread(block):
    fp = io.BytesIO(block + b"BODY BYTES")
    parsed = _parse_headers(fp)
    assert isinstance(parsed, http.client.HTTPMessage)
    assert parsed.items() == stdlib(block).items()
    assert parsed.get_content_type() == stdlib(block).get_content_type()
    assert fp.read() == b"BODY BYTES"  # the header block only: the body is the caller's


def test_a_multipart_header_block_is_not_searched_for_parts():
    """The stdlib's full parse looks for a first boundary in a body it was never given and
    records two defects doing so (urllib3 ignores exactly those two); the header-only parse
    neither searches nor records anything."""
    block = BLOCKS[0]
    assert {type(d).__name__ for d in stdlib(block).defects} == {"StartBoundaryNotFoundDefect",
                                                                 "MultipartInvariantViolationDefect"}
    parsed = _parse_headers(io.BytesIO(block))
    assert parsed.defects == []
    assert parsed.get_boundary() == "8b1f20a9-998a"


def test_the_app_reads_real_multipart_answers_with_it(httpserver, tmp_path, monkeypatch):
    """create_app installs it; then a multipart answer read over real HTTP (urllib3, as the
    gateway streams) has its headers and its whole body."""
    monkeypatch.setattr(http.client, "parse_headers", STDLIB_PARSE_HEADERS)
    body = b"--xyz\r\nContent-Type: application/octet-stream\r\n\r\n" + bytes(range(256)) * 64 + b"\r\n--xyz--\r\n"
    httpserver.expect_request("/frames/1").respond_with_response(Response(
        body, headers={"Content-Type": 'multipart/related; type="application/octet-stream"; boundary=xyz'}))
    issuer = {"iss": "https://ehr.example/fhir", "token_endpoint_auth_method": "none"}
    create_app({"LAUNCH_CONFIG": {"client_id": "imaging-timeline", "client_name": "Imaging Timeline",
                                  "scope": "launch", "issuers": [issuer]},
                "APP_KEYS": APP_KEYS, "SESSION_STORE": f"sqlite:///{tmp_path / 's.db'}", "ARCHIVES": ()})
    assert http.client.parse_headers is _parse_headers
    with urllib3.PoolManager() as pool:
        answer = pool.request("GET", httpserver.url_for("/frames/1"), preload_content=False)
        assert answer.headers["Content-Type"].endswith("boundary=xyz")
        assert b"".join(answer.stream(1000)) == body
        assert answer.headers["Content-Length"] == str(len(body))
    install_header_parsing()  # idempotent
    assert http.client.parse_headers is _parse_headers
