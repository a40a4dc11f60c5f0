"""Report bodies by media type: plain text, HTML sanitised with nh3, RTF as text (striprtf); sections found in each.

HTML is cleaned with an allow-list (nh3, the Ammonia sanitiser): structural and text tags only,
no `script`/`style`/`iframe`/`form` (their content is dropped too), no event-handler or `style`
attributes, no `img` at all (a remote image is a tracking request from inside the chart), and
links only to http(s)/mailto with `rel="noopener noreferrer"`. The browser renders the result
through a second DOM allow-list (static/report-panel.js) under a CSP with `script-src 'self'`.
PDF and other types are not rendered here: they are served through the app as attachments.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from html.parser import HTMLParser

import nh3
from striprtf.striprtf import rtf_to_text

from .report_view import Section

log = logging.getLogger(__name__)

TEXT_TYPES = {"text/plain"}
HTML_TYPES = {"text/html", "application/xhtml+xml"}
RTF_TYPES = {"text/rtf", "application/rtf"}
PDF = "application/pdf"
INLINE_TYPES = {PDF}  # served with Content-Disposition: inline; everything else is a download

ALLOWED_TAGS = {"p", "br", "div", "span", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "li", "dl", "dt", "dd",
                "b", "strong", "i", "em", "u", "sub", "sup", "small", "pre", "code", "blockquote", "hr",
                "table", "caption", "thead", "tbody", "tfoot", "tr", "th", "td", "a", "abbr"}
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "th": {"colspan", "rowspan", "scope"}, "td": {"colspan", "rowspan"},
                      "abbr": {"title"}}
DROP_CONTENT = {"script", "style", "iframe", "object", "embed", "noscript", "template", "textarea", "select",
                "title", "svg", "math", "button"}
URL_SCHEMES = {"http", "https", "mailto"}
BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "hr", "dt", "dd",
         "table", "caption", "ul", "ol", "dl"}
HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
# Headings radiology reports use (ACR practice parameter for communication; RSNA RadReport templates).
SECTION_WORDS = ("clinical history", "clinical information", "history", "indication", "reason for exam",
                 "technique", "procedure", "comparison", "findings", "impression", "conclusion", "recommendation",
                 "recommendations", "addendum", "exam", "examination")
_SECTION_LINE = re.compile(r"^\s*(" + "|".join(re.escape(w) for w in SECTION_WORDS) + r")\s*:\s*(.*)$",
                           re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Rendered:
    """A body turned into what the panel shows: full text, sanitised HTML (for HTML only), sections."""

    text: str
    html: str | None
    sections: list[Section]


def is_textual(content_type: str) -> bool:
    return content_type in TEXT_TYPES | HTML_TYPES | RTF_TYPES


def decode(body: bytes, charset: str | None = None) -> str:
    """Bytes as text: the declared charset, else UTF-8 (BOM tolerated), never failing on a bad byte."""
    try:
        return body.decode(charset or "utf-8-sig", errors="replace")
    except LookupError:  # an unknown charset name
        return body.decode("utf-8", errors="replace")


def sanitise_html(html: str) -> str:
    """The allow-listed HTML (see module docstring); safe to insert, but still rendered through the DOM allow-list."""
    return nh3.clean(html, tags=ALLOWED_TAGS, attributes=ALLOWED_ATTRIBUTES, clean_content_tags=DROP_CONTENT,
                     url_schemes=URL_SCHEMES, link_rel="noopener noreferrer", strip_comments=True)


class _TextAndSections(HTMLParser):
    """Text of (already sanitised) HTML with block breaks, split into sections at headings."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.sections: list[tuple[str, list[str]]] = []
        self._heading: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in HEADINGS:
            self._heading = []
        elif tag in BLOCK:
            self._emit("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in HEADINGS and self._heading is not None:
            title = " ".join("".join(self._heading).split())
            self._heading = None
            self._emit("\n" + title + "\n")
            self.sections.append((title, []))
        elif tag in BLOCK:
            self._emit("\n")

    def handle_data(self, data: str) -> None:
        if self._heading is not None:
            self._heading.append(data)
            return
        self._emit(data)
        if self.sections:
            self.sections[-1][1].append(data)

    def _emit(self, text: str) -> None:
        self.parts.append(text)
        if self.sections and text == "\n":
            self.sections[-1][1].append("\n")


def _tidy(text: str) -> str:
    lines = [" ".join(line.split()) for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def html_text(clean_html: str) -> tuple[str, list[Section]]:
    parser = _TextAndSections()
    parser.feed(clean_html)
    parser.close()
    sections = [Section(title, _tidy("".join(body))) for title, body in parser.sections if title]
    return _tidy("".join(parser.parts)), [s for s in sections if s.text]


def text_sections(text: str) -> list[Section]:
    """Sections of a plain-text report, where its lines start with a known heading ("FINDINGS:")."""
    sections: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        match = _SECTION_LINE.match(line)
        if match:
            sections.append((match.group(1).strip().capitalize(), [match.group(2)] if match.group(2) else []))
        elif sections:
            sections[-1][1].append(line)
    return [Section(title, body) for title, lines in sections if (body := _tidy("\n".join(lines)))]


def render(content_type: str, body: bytes, charset: str | None = None) -> Rendered | None:
    """A textual body rendered for the panel; None for types shown as attachments (PDF, images, ...)."""
    if content_type in HTML_TYPES:
        clean = sanitise_html(decode(body, charset))
        text, sections = html_text(clean)
        return Rendered(text, clean, sections)
    if content_type in RTF_TYPES:
        try:
            text = _tidy(rtf_to_text(decode(body, charset), errors="ignore"))
        except (ValueError, IndexError) as exc:  # striprtf on malformed input
            log.info("RTF report could not be converted (%s)", type(exc).__name__)
            return None
        return Rendered(text, None, text_sections(text))
    if content_type in TEXT_TYPES:
        text = _tidy(decode(body, charset))
        return Rendered(text, None, text_sections(text))
    return None


def content_type_of(header: str | None) -> tuple[str, str | None]:
    """(media type, charset) of a Content-Type value, lower-cased."""
    if not header:
        return "application/octet-stream", None
    media, _, params = header.partition(";")
    charset = None
    for param in params.split(";"):
        key, _, value = param.strip().partition("=")
        if key.lower() == "charset" and value:
            charset = value.strip('"').lower()
    return media.strip().lower() or "application/octet-stream", charset
