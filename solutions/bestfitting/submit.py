"""bestfitting's ensemble: the mean of its backbones' product probabilities, then the submission.

    python -m solutions.bestfitting.submit [--work work] [--sources bestfitting_a bestfitting_b]
Writes work/preds/bestfitting/{oof,test}.npz and work/submissions/bestfitting.csv.gz.
"""
from __future__ import annotations

from common.blend import solution_main


def main(argv: list[str] | None = None) -> dict:
    return solution_main("bestfitting", __doc__, argv)


if __name__ == "__main__":
    main()
