"""The one merge-and-link accumulator (app/accumulator.py) behind /api/studies and the event stream."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from app.accumulator import Accumulator, copy_study
from app.archives.base import LinkedOrder, LinkedReport, Subject
from app.models import ArchiveStatus, Order, Report, Study


@dataclass
class Outcome:
    status: ArchiveStatus
    studies: list[Study] = field(default_factory=list)
    reports: list[LinkedReport] = field(default_factory=list)
    orders: list[LinkedOrder] = field(default_factory=list)
    withheld: list[dict[str, str]] = field(default_factory=list)


def ok(archive: str) -> ArchiveStatus:
    return ArchiveStatus(archive, archive, "ok")


def ehr_version() -> Study:
    return Study(uid="1.1", started=datetime(2024, 3, 1), description="CT CHEST", sources=["ehr"],
                 accession="A1", ids=["img-1"])


def pacs_version() -> Study:
    return Study(uid="1.1", started=datetime(2024, 3, 1, 10, 15), description="CT CHEST W", modalities=("CT",),
                 sources=["pacs"], series_count=3)


def test_a_study_held_by_one_archive_is_used_as_built_not_copied():
    study = pacs_version()
    acc = Accumulator(["ehr", "pacs"])
    assert acc.add(Outcome(ok("pacs"), [study])) == {"1.1"}
    assert acc.merged["1.1"] is study


def test_merging_follows_configuration_order_whatever_the_arrival_order():
    for arrival in (["ehr", "pacs"], ["pacs", "ehr"]):
        acc = Accumulator(["ehr", "pacs"])
        versions = {"ehr": ehr_version(), "pacs": pacs_version()}
        for archive in arrival:
            acc.add(Outcome(ok(archive), [versions[archive]]))
        merged = acc.merged["1.1"]
        assert (merged.description, merged.started, merged.sources) == ("CT CHEST", datetime(2024, 3, 1),
                                                                       ["ehr", "pacs"])
        assert (merged.modalities, merged.series_count, merged.ids) == (("CT",), 3, ["img-1"])
        assert versions["ehr"].sources == ["ehr"] and versions["pacs"].sources == ["pacs"]  # inputs untouched


def test_a_report_from_a_later_archive_links_to_a_study_an_earlier_one_brought():
    acc = Accumulator(["pacs", "ehr"])
    acc.add(Outcome(ok("pacs"), [Study(uid="1.1", accession="A1", sources=["pacs"])]))
    report = LinkedReport(Report("r1", "final", source="ehr"), Subject(), accession="A1")
    order = LinkedOrder(Order("o1", priority="stat", status="active", accession="A1", source="ehr"), Subject())
    assert acc.add(Outcome(ok("ehr"), reports=[report], orders=[order])) == {"1.1"}
    assert [r.id for r in acc.merged["1.1"].reports] == ["r1"]
    assert [o.id for o in acc.merged["1.1"].orders] == ["o1"]


def test_a_re_merged_study_keeps_its_cross_archive_links():
    acc = Accumulator(["ehr", "pacs", "outside"])
    acc.add(Outcome(ok("pacs"), [Study(uid="1.1", accession="A1", sources=["pacs"])]))
    acc.add(Outcome(ok("ehr"), reports=[LinkedReport(Report("r1", "final", source="ehr"), Subject(),
                                                     accession="A1")]))
    acc.add(Outcome(ok("outside"), [Study(uid="1.1", sources=["outside"])]))
    assert acc.merged["1.1"].sources == ["pacs", "outside"]
    assert [r.id for r in acc.merged["1.1"].reports] == ["r1"]


def test_copy_study_shares_immutable_parts_and_owns_its_lists():
    study = Study(uid="1.1", reports=[Report("r", "final")], sources=["a"], matched_ids={})
    twin = copy_study(study)
    twin.sources.append("b")
    twin.reports.append(Report("s", "final"))
    assert (study.sources, [r.id for r in study.reports]) == (["a"], ["r"])
    assert twin.reports[0] is study.reports[0]
