"""The full report as the panel shows it (typed dataclasses), and what a report reader hands back.

`ReportView.to_json` is the `/api/reports/<archive_id>/<report_id>` contract: `id`, `status`,
`issued`, `author`, `title`, `reason`, `text` (the full text whenever any text form exists),
`html` (sanitised, or absent), `attachments` [{content_type, title, url}] and `addenda`; plus
`sections`, `impression`, `comparison` and `sources` for the panel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from .archives.base import Subject


@dataclass(frozen=True, slots=True)
class Section:
    """One titled part of a report (Findings, Impression...) as the source marked it."""

    title: str
    text: str

    def to_json(self) -> dict[str, Any]:
        return {"title": self.title, "text": self.text}


@dataclass(frozen=True, slots=True)
class Addendum:
    """Text added after signing, or the earlier text an amended/corrected report replaced."""

    kind: Literal["addendum", "earlier"]
    title: str
    text: str
    issued: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "title": self.title, "text": self.text,
                "issued": self.issued.isoformat() if self.issued else None}


@dataclass(frozen=True, slots=True)
class AttachmentSource:
    """Where an attachment's bytes come from, kept server-side: inline data, a FHIR URL, or a DICOM instance."""

    kind: Literal["inline", "url", "dicom"]
    content_type: str
    title: str
    ref: str  # base64 data, the absolute URL on the archive, or "studies/…/series/…/instances/…"

    def to_record(self) -> dict[str, str]:
        return {"kind": self.kind, "content_type": self.content_type, "title": self.title, "ref": self.ref}

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> AttachmentSource:
        return cls(rec["kind"], rec["content_type"], rec["title"], rec["ref"])


@dataclass(frozen=True, slots=True)
class SourceNote:
    """One record the report was read from (shown under "Sources")."""

    archive: str
    name: str
    what: str  # "DiagnosticReport/dr-1", "Binary/b-2", "DICOM SR (Basic Text)"

    def to_json(self) -> dict[str, str]:
        return {"archive": self.archive, "name": self.name, "what": self.what}


@dataclass
class ReportView:
    """One report, read in full when the clinician opens it."""

    id: str
    archive: str
    status: str
    issued: datetime | None = None
    author: str | None = None
    title: str | None = None
    reason: str | None = None
    text: str = ""
    html: str | None = None
    impression: str | None = None
    comparison: str | None = None
    sections: list[Section] = field(default_factory=list)
    addenda: list[Addendum] = field(default_factory=list)
    attachments: list[AttachmentSource] = field(default_factory=list)
    sources: list[SourceNote] = field(default_factory=list)
    codes: list[str] = field(default_factory=list)  # conclusionCode displays

    def to_json(self, attachment_url: Any) -> dict[str, Any]:
        """The API answer; `attachment_url(n)` is the app URL that serves attachment n."""
        data: dict[str, Any] = {
            "id": self.id, "archive": self.archive, "status": self.status,
            "issued": self.issued.isoformat() if self.issued else None,
            "author": self.author, "title": self.title, "reason": self.reason, "text": self.text,
            "impression": self.impression, "comparison": self.comparison,
            "sections": [s.to_json() for s in self.sections],
            "attachments": [{"content_type": a.content_type, "title": a.title, "url": attachment_url(n)}
                            for n, a in enumerate(self.attachments)],
            "addenda": [a.to_json() for a in self.addenda],
            "sources": [s.to_json() for s in self.sources],
            "codes": list(self.codes),
        }
        if self.html is not None:
            data["html"] = self.html
        return data


@dataclass
class FetchedReport:
    """A reader's result: the view, and whose report the archive says it is (checked by the caller)."""

    view: ReportView
    subject: Subject
