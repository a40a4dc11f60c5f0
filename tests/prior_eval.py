"""The labelled prior-selection set (tests/data/prior_pairs.csv) scored against app/priors.py: precision and recall."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from app import priors
from app.models import Study

PAIRS = Path(__file__).parent / "data" / "prior_pairs.csv"
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Pair:
    id: str
    current: Study
    prior: Study
    relevant: bool
    reasoning: str


@dataclass(frozen=True)
class Score:
    pairs: int
    true_pos: int
    false_pos: int
    false_neg: int
    true_neg: int
    wrong: tuple[tuple[str, bool, str], ...]  # (pair id, label, reasoning) the rule got wrong

    @property
    def precision(self) -> float:
        return self.true_pos / (self.true_pos + self.false_pos) if self.true_pos + self.false_pos else 1.0

    @property
    def recall(self) -> float:
        return self.true_pos / (self.true_pos + self.false_neg) if self.true_pos + self.false_neg else 1.0


def load(path: Path = PAIRS) -> list[Pair]:
    """Each row as a (current, prior one year earlier) pair of Studies with the label and its reasoning."""
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    pairs = []
    for row in rows:
        current = Study(uid=f"{row['id']}.1", started=NOW, modalities=(row["current_modality"],),
                        description=row["current_description"])
        prior = Study(uid=f"{row['id']}.2", started=NOW - timedelta(days=365), modalities=(row["prior_modality"],),
                      description=row["prior_description"])
        pairs.append(Pair(row["id"], current, prior, row["relevant"] == "1", row["reasoning"]))
    return pairs


def score(pairs: list[Pair]) -> Score:
    tp = fp = fn = tn = 0
    wrong = []
    for pair in pairs:
        said = priors.is_relevant_prior(pair.current, pair.prior)
        if said and pair.relevant:
            tp += 1
        elif said:
            fp += 1
        elif pair.relevant:
            fn += 1
        else:
            tn += 1
        if said != pair.relevant:
            wrong.append((pair.id, pair.relevant, pair.reasoning))
    return Score(len(pairs), tp, fp, fn, tn, tuple(wrong))
