"""The sandbox's report documents: plain-text, HTML and RTF bodies with sections, and PDFs made with fpdf2."""

from __future__ import annotations

import html
from functools import lru_cache

from fpdf import FPDF

from .data import SandboxStudy

DEFAULT_FINDINGS = "The examination was reviewed in full; the findings are summarised in the impression."


def impression(study: SandboxStudy) -> str:
    """The conclusion without its addendum (which is presented on its own)."""
    report = study.report
    return report.conclusion.split("Addendum:", 1)[0].strip() if report else ""


def sections(study: SandboxStudy) -> list[tuple[str, str]]:
    """(heading, text) in the order a radiology report gives them (ACR practice parameter)."""
    report = study.report
    if report is None:
        return []
    out = [("EXAM", study.description), ("CLINICAL HISTORY", study.reason or "Not given."),
           ("COMPARISON", report.comparison or "None."), ("FINDINGS", report.findings or DEFAULT_FINDINGS)]
    if impression(study):
        out.append(("IMPRESSION", impression(study)))
    return out


def report_text(study: SandboxStudy) -> str:
    return "\n".join(f"{head}: {text}" for head, text in sections(study)) + "\n"


def addendum_text(study: SandboxStudy) -> str | None:
    report = study.report
    return f"ADDENDUM: {report.addendum}\n" if report and report.addendum else None


def report_html(study: SandboxStudy) -> str:
    if study.report and study.report.html:
        return study.report.html
    parts = []
    for head, text in sections(study):
        parts.append(f"<h2>{html.escape(head.capitalize())}</h2>")
        parts += [f"<p>{html.escape(line)}</p>" for line in text.split("\n") if line]
    return "<!doctype html><html><body>" + "".join(parts) + "</body></html>"


def _rtf_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("{", "\\{").replace("}", "\\}")


def report_rtf(study: SandboxStudy) -> str:
    body = "\\par\n".join(f"\\b {_rtf_escape(head)}:\\b0  {_rtf_escape(text)}" for head, text in sections(study))
    return "{\\rtf1\\ansi\\deff0{\\fonttbl{\\f0 Helvetica;}}\\f0\\fs22\n" + body + "\\par\n}"


@lru_cache(maxsize=64)
def report_pdf(study: SandboxStudy) -> bytes:
    """A one-page PDF of the report (fpdf2, core Helvetica: the sandbox's text is ASCII)."""
    pdf = FPDF(format="A4")
    pdf.set_title(f"Radiology report {study.accession}")
    pdf.set_creator("Imaging Timeline sandbox")
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 14)
    pdf.cell(0, 10, study.institution, new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=10)
    pdf.cell(0, 6, f"Accession {study.accession}   {study.started:%Y-%m-%d}", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)
    for head, text in sections(study):
        pdf.set_font("Helvetica", "B", 11)
        pdf.cell(0, 7, head, new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", size=11)
        pdf.multi_cell(0, 6, text, new_x="LMARGIN", new_y="NEXT")
        pdf.ln(2)
    pdf.set_font("Helvetica", "I", 10)
    pdf.cell(0, 6, "Electronically signed by Dr. Jane Radiant", new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())
