"""bestfitting's ensemble: the mean of its backbones' product probabilities, then the submission.

    python -m solutions.bestfitting.submit [--work work] [--members bestfitting_a bestfitting_b]
Writes work/preds/bestfitting/{oof,test}.npz and work/submissions/bestfitting.csv.gz.
"""
from __future__ import annotations

from common.cli import run
from ensembling.blend import SolutionBlend, blend_main

BLEND = SolutionBlend(
    "bestfitting",
    recorded={"value": 0.79567, "what": "1st place ensemble (DenseNet-161/169, DPN-92, ResNet-50, InceptionResNetV2 + OCR)", "measured_on": "Kaggle private LB"},
    leaderboard={"place": 1, "private": 0.79567},
)


def main(argv: list[str] | None = None) -> dict:
    return blend_main(BLEND, argv, __doc__)


if __name__ == "__main__":
    run(main)
