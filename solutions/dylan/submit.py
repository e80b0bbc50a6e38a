"""dylan's ensemble: the plain mean of its models' product probabilities, then the submission.

    python -m solutions.dylan.submit [--work work] [--sources dylan_a dylan_b]
Writes work/preds/dylan/{oof,test}.npz and work/submissions/dylan.csv.gz; prints OOF accuracy.
"""
from __future__ import annotations

import argparse

from common.blend import blend, find_sources, print_report
from common.paths import WorkDir

SOLUTION = "dylan"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=None)
    p.add_argument("--sources", nargs="*", help="prediction sources to average (default: every preds/dylan_*)")
    args = p.parse_args(argv)
    work = WorkDir(args.work)
    sources = args.sources or find_sources(work, f"{SOLUTION}_")
    report = blend(work, sources, SOLUTION)
    print(f"{SOLUTION}: mean of {len(sources)} models")
    print_report(report)
    return report


if __name__ == "__main__":
    main()
