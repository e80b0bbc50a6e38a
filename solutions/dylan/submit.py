"""dylan's ensemble: the plain mean of its models' product probabilities, then the submission.

    python -m solutions.dylan.submit [--work work] [--members dylan_a dylan_b=2]
Writes work/preds/dylan/{oof,test}.npz and work/submissions/dylan.csv.gz; prints OOF accuracy.
"""
from __future__ import annotations

from common.cli import run
from ensembling.blend import SolutionBlend, blend_main

BLEND = SolutionBlend(
    "dylan",
    recorded={"value": 0.78998, "what": "3rd place, 14-model mean (1 model 0.76713, 4 models 0.78693); +MD5 0.79046", "measured_on": "Kaggle private LB"},
    leaderboard={"place": 3, "private": 0.79046},
)


def main(argv: list[str] | None = None) -> dict:
    return blend_main(BLEND, argv, __doc__)


if __name__ == "__main__":
    run(main)
