"""Report bodies: what survives the HTML sanitiser, how sections are found, RTF and plain text as text."""

from __future__ import annotations

import pytest

from app.report_formats import content_type_of, render, sanitise_html, text_sections
from app.report_view import Section


@pytest.mark.parametrize(("html", "kept"), [
    ('<script>alert(1)</script><p>ok</p>', "<p>ok</p>"),
    ('<style>p{display:none}</style><p>ok</p>', "<p>ok</p>"),
    ('<iframe src="https://x.invalid/"></iframe><p>ok</p>', "<p>ok</p>"),
    ('<p onclick="steal()">ok</p>', "<p>ok</p>"),
    ('<p style="background:url(https://x.invalid/t.png)">ok</p>', "<p>ok</p>"),
    ('<img src="https://x.invalid/pixel.png"><p>ok</p>', "<p>ok</p>"),
    ('<a href="javascript:steal()">ok</a>', '<a rel="noopener noreferrer">ok</a>'),
    ('<a href="https://ex.org/p">ok</a>', '<a href="https://ex.org/p" rel="noopener noreferrer">ok</a>'),
    ('<form action="https://x.invalid/"><input name="q"><button>Go</button>Text</form>', "Text"),
    ('<svg onload="steal()"><circle/></svg><p>ok</p>', "<p>ok</p>"),
    ('<!-- secret --><p>ok</p>', "<p>ok</p>"),
])
def test_the_sanitiser_keeps_text_and_structure_only(html, kept):
    assert sanitise_html(html) == kept


def test_html_sections_follow_its_headings():
    out = render("text/html", b"<h2>Findings</h2><p>Clear lungs.</p><h2>Impression</h2><p>Normal.</p>")
    assert out is not None
    assert out.sections == [Section("Findings", "Clear lungs."), Section("Impression", "Normal.")]
    assert out.text == "Findings\n\nClear lungs.\n\nImpression\n\nNormal."


def test_plain_text_sections_follow_radiology_headings():
    text = "EXAM: CT chest\nFINDINGS: A 4 mm nodule.\nStable.\nIMPRESSION: Benign."
    assert text_sections(text) == [Section("Exam", "CT chest"), Section("Findings", "A 4 mm nodule.\nStable."),
                                   Section("Impression", "Benign.")]


def test_rtf_is_shown_as_its_text():
    out = render("text/rtf", rb"{\rtf1\ansi{\fonttbl{\f0 Helvetica;}}\f0 FINDINGS: normal\par IMPRESSION: fine}")
    assert out is not None and out.text == "FINDINGS: normal\nIMPRESSION: fine" and out.html is None


@pytest.mark.parametrize("content_type", ["application/pdf", "image/jpeg", "application/octet-stream"])
def test_other_types_are_not_rendered_but_attached(content_type):
    assert render(content_type, b"%PDF-1.4") is None


def test_a_bad_byte_or_unknown_charset_never_fails():
    assert render("text/plain", b"caf\xe9", "no-such-charset") is not None
    assert content_type_of('text/plain; charset="ISO-8859-1"') == ("text/plain", "iso-8859-1")
