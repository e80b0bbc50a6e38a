"""dylan's ensemble: the plain mean of its models' product probabilities, then the submission.

    python -m solutions.dylan.submit [--work work] [--sources dylan_a dylan_b]
Writes work/preds/dylan/{oof,test}.npz and work/submissions/dylan.csv.gz; prints OOF accuracy.
"""
from __future__ import annotations

from common.blend import solution_main


def main(argv: list[str] | None = None) -> dict:
    return solution_main("dylan", __doc__, argv)


if __name__ == "__main__":
    main()
