"""Precision and recall of the relevant-prior rule (app/priors.py) on the labelled pairs in tests/data/prior_pairs.csv.

    python bench/prior_selection.py [--write]

Each row is a (current study, candidate prior one year earlier) pair described as an archive
would (modality + study description) with a label (would a radiologist or the treating clinician
want it shown beside the current study?) and the reasoning for that label. The rule sees only
what the app sees: modalities and description (no body-site codes), so the figures are a floor
for archives that also send BodyPartExamined or procedure codes.
"""

from __future__ import annotations

import argparse
import sys

from _common import ROOT, machine, table, write_section

sys.path.insert(0, str(ROOT / "tests"))
from prior_eval import PAIRS, load, score  # the labelled set's loader lives with the tests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help="update the prior-selection section of docs/BENCHMARKS.md")
    args = parser.parse_args(argv)
    result = score(load())
    figures = table(["pairs", "relevant", "true pos.", "false pos.", "false neg.", "true neg.", "precision", "recall"],
                    [[result.pairs, result.true_pos + result.false_neg, result.true_pos, result.false_pos,
                      result.false_neg, result.true_neg, f"**{result.precision:.3f}**", f"**{result.recall:.3f}**"]])
    misses = table(["pair", "label", "why the label (the rule disagreed)"],
                   [[pid, "relevant" if label else "not relevant", why] for pid, label, why in result.wrong])
    print(figures)
    print(misses)
    if args.write:
        write_section("prior-selection", "\n\n".join([
            "## Prior selection — `bench/prior_selection.py`",
            f"Measured {machine()}. The labelled set is `{PAIRS.relative_to(ROOT)}`: {result.pairs} (current, "
            "candidate prior) pairs across head, neck, chest, breast, abdomen, pelvis, spine, limbs, whole-body "
            "oncology and cardiac imaging, each with the reasoning for its label. The labels were written by the "
            "engineer who wrote the rule, from the comparison habits of radiologists and ED physicians "
            "(same anatomy; radiographs read with CT/MR of the same region; the breast work-up across MG/US/MR; "
            "organ follow-up across US/CT/MR); they have not yet been reviewed by a radiologist. "
            "`tests/test_prior_evaluation.py` recomputes the figures and fails if either drops below 0.90.",
            figures,
            "Where the rule and the label disagree (the known limits: regions are not split into joints, spinal "
            "segments or sides; nuclear medicine and catheter angiography compare only with themselves):",
            misses,
        ]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
