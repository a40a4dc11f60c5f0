"""Words for clinicians (app/words.py): no OIDs or protocol names in `message`; the integrator's reason in `detail`."""

from __future__ import annotations

import pytest

from app.words import cut_reason, describe


@pytest.mark.parametrize(("state", "kwargs", "message", "retry"), [
    ("not-linked", {"reason": "not linked (no identifier in domain urn:oid:2.16.840.1)"},
     "Not searched: this archive has no record number for this patient.", False),
    ("timeout", {"error": "archive-timeout", "reason": "no answer within 10 s"},
     "This archive did not answer in time.", True),
    ("timeout", {"error": "archive-timeout", "reason": "showing 40; …", "count": 40, "partial": True},
     "This archive did not answer in time. Showing the 40 studies it had sent.", True),
    ("error", {"error": "archive-auth", "reason": "HTTP 401 (credentials not accepted)"},
     "This archive refused the app's sign-in; tell IT.", False),
    ("error", {"error": "archive-unavailable", "reason": "HTTP 503 (Retry-After 30 s)"},
     "This archive could not be reached.", True),
    ("error", {"error": "archive-bad-response", "reason": "answer was not JSON"},
     "This archive sent an answer the app could not read; tell IT.", True),
    ("ok", {"reason": "showing 500 of at least 501 …", "count": 500, "partial": True},
     "Showing 500 studies; this archive holds more. Narrow by date to see others.", False),
    ("ok", {"reason": "1 withheld: birth date differs from the EHR", "dropped": 1},
     "1 study withheld: the record does not match the chart.", False),
    ("ok", {"reason": None}, None, False),
], ids=["not-linked", "timeout", "timeout-partial", "auth", "unavailable", "bad-response", "cut", "withheld", "ok"])
def test_status_words(state, kwargs, message, retry):
    said = describe(state, error=kwargs.pop("error", None), **kwargs)
    assert (said.message, said.retry) == (message, retry)
    assert said.detail == kwargs["reason"]
    for word in ("urn:oid", "HTTP", "QIDO", "FHIR", "DICOM"):
        assert word not in (said.message or "")


def test_cut_reasons_state_the_numbers():
    assert cut_reason("max_results", 500, max_results=500, timeout_s=10) == \
        "showing 500 of at least 501 — narrow by date (max_results = 500)"
    assert cut_reason("deadline", 1200, max_results=5000, timeout_s=10) == \
        "showing 1,200; the archive did not finish within 10 s — narrow by date or try again"
