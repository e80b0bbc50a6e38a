"""The 2nd place's team blend: a weighted mean of sqrt(probability) over its members, then argmax.

    python -m solutions.convoluted.submit [--work W] [--members NAME=WEIGHT ...]

Members by default: every finished preds/convoluted_* whose recipe gives it a `team_weight`
(recorded: about 53 % member A (gated fusion head), 23 % member B (max-over-views head), 23 %
member C (rank / count specialists)). Writes preds/convoluted/ and submissions/convoluted.csv.gz.
"""
from __future__ import annotations

import argparse
import json

from common.blend import blend, find_sources, print_report
from common.paths import WorkDir

SQRT = 0.5


def team_members(work: WorkDir) -> dict[str, float]:
    """Finished convoluted sources with a positive team_weight in their summary.json."""
    members = {}
    for source in find_sources(work, "convoluted_"):
        weight = json.loads((work.preds(source) / "summary.json").read_text()).get("team_weight", 0.0)
        if weight > 0:
            members[source] = weight
    return members


def parse_members(pairs: list[str]) -> dict[str, float]:
    out = {}
    for pair in pairs:
        name, _, weight = pair.partition("=")
        if not weight:
            raise SystemExit(f"--members {pair}: write NAME=WEIGHT")
        out[name] = float(weight)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=None)
    p.add_argument("--members", nargs="*", help="NAME=WEIGHT pairs (default: the recipes' team_weight)")
    args = p.parse_args(argv)
    work = WorkDir(args.work)
    members = parse_members(args.members) if args.members else team_members(work)
    if not members:
        raise SystemExit(f"no convoluted team members under {work.root / 'preds'} (train the fuse / rank_count recipes first)")
    report = blend(work, list(members), "convoluted", list(members.values()), power=SQRT)
    print(f"convoluted: weighted mean of sqrt(p) over {len(members)} members")
    print_report(report)
    return report


if __name__ == "__main__":
    main()
