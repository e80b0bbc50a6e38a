"""The 2nd place's team blend: a weighted mean of sqrt(probability) over its members, then argmax.

    python -m solutions.convoluted.submit [--work W] [--members NAME=WEIGHT ...]

Members by default: every finished convoluted model whose recipe gives it a `team_weight`
(recorded: about 53 % member A (gated fusion head), 23 % member B (max-over-views head), 23 %
member C (rank / count specialists)). Writes preds/convoluted/ and submissions/convoluted.csv.gz.
"""
from __future__ import annotations

from common.cli import run
from common.paths import WorkDir
from common.sources import list_sources
from ensembling.blend import SolutionBlend, blend_main


def team_members(work: WorkDir) -> dict[str, float]:
    """Finished convoluted models with a positive team_weight in their recipe."""
    weights = {s.name: s.summary.get("recipe", {}).get("team_weight", 0.0) for s in list_sources(work, ["model"], "convoluted")}
    return {name: w for name, w in weights.items() if w > 0}


BLEND = SolutionBlend(
    "convoluted", kind="team blend", power=0.5, members=team_members,
    recorded={"value": 0.79352, "what": "2nd place, weighted sqrt blend of 3 members (53/23/23%)", "measured_on": "Kaggle private LB"},
    leaderboard={"place": 2, "private": 0.79352},
)


def main(argv: list[str] | None = None) -> dict:
    return blend_main(BLEND, argv, __doc__)


if __name__ == "__main__":
    run(main)
