"""The labelled prior-selection set: big and varied enough to mean something, and the rule's precision/recall on it."""

from __future__ import annotations

import csv

from prior_eval import PAIRS, load, score

from app import priors


def test_the_labelled_set_has_150_pairs_each_with_its_reasoning():
    with PAIRS.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) >= 150
    assert len({r["id"] for r in rows}) == len(rows)
    assert all(r["relevant"] in {"0", "1"} and len(r["reasoning"]) >= 10 for r in rows)


def test_the_labelled_set_spans_regions_and_modalities_with_both_labels():
    pairs = load()
    regions = {priors.body_region(p.current) for p in pairs} - {None}
    modalities = {m for p in pairs for m in (*p.current.modalities, *p.prior.modalities)}
    assert len(regions) >= 9
    assert {"CR", "DX", "CT", "MR", "US", "MG", "NM", "PT", "XA"} <= modalities
    assert 0.3 < sum(p.relevant for p in pairs) / len(pairs) < 0.8


def test_prior_selection_precision_and_recall_stay_above_ninety_percent():
    result = score(load())
    assert result.pairs == result.true_pos + result.false_pos + result.false_neg + result.true_neg
    assert result.precision >= 0.90, result.wrong
    assert result.recall >= 0.90, result.wrong


def test_a_whole_body_scan_from_skull_base_does_not_count_as_a_head_study():
    pair = next(p for p in load() if p.id == "147")
    assert priors.regions(pair.current) == ["neck", "chest", "abdomen", "pelvis"]
    assert priors.is_relevant_prior(pair.current, pair.prior) is False
