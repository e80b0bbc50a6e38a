"""Blend prediction sources (a solution's models, a team's members) into one source + submission.

    python -m solutions.<solution>.submit [--work W] [--members NAME[=WEIGHT] ...]

A solution's submit.py declares its blend (a SolutionBlend: kind, power, default members, what the
team recorded and its leaderboard place); this module does the rest: a weighted (power) mean on
the members' common OOF products and on test, preds/<solution>/ with its summary.json, and
submissions/<solution>.csv.gz. numpy only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Callable

import numpy as np

from common.checks import at_least, between
from common.cli import parse_stage
from common.errors import DataError
from common.metrics import accuracy, class_prior_accuracy, product_report
from common.paths import PROFILES, WorkDir, recipe_profile
from common.calibration import write_calibration
from common.predictions import DEFAULT_K, TopK, power_mean, save_topk
from common.prepare import DatasetPaths
from common.sources import SplitIds, list_sources, load_predictions, write_summary
from common.submission import score_submission, submission_from_topk
from common.workdata import Labels


def solution_models(solution: str) -> Callable[[WorkDir], dict[str, float]]:
    """Default members: every finished model of the solution, weight 1."""
    return lambda work: {s.name: 1.0 for s in list_sources(work, ["model"], solution)}


@dataclass(frozen=True)
class SolutionBlend:
    solution: str
    kind: str = "solution blend"
    power: float = 1.0  # 0.5: the 2nd place's mean of sqrt(p)
    members: Callable[[WorkDir], dict[str, float]] | None = None  # default: solution_models(solution)
    recorded: dict = field(default_factory=dict)  # value / what / on: the team's own number for this blend
    leaderboard: dict = field(default_factory=dict)  # place, private: the team's final standing


@dataclass
class BlendOptions:
    members: list[str] = field(default_factory=list)  # NAME or NAME=WEIGHT (default: the solution's members)
    topk: Annotated[int, at_least(1)] = DEFAULT_K
    max_fallback_share: Annotated[float, between(0, 1)] = 0.5  # refuse a submission with more fallback rows than this (1.0 accepts anything)
    accept_lost_products: bool = False  # write the submission although the test index lost documents of test.bson
    profile: str = ""  # mini | full: blend only that profile's recipes (run_all.sh passes its own); "": every finished model


def of_profile(work: WorkDir, solution: str, members: dict[str, float], profile: str) -> dict[str, float]:
    """The members trained from `profile`'s recipes: a work dir that held a mini run and then a full
    one never blends the two (a recipe's profile is its file name's: mini_*.yaml is mini)."""
    if not profile:
        return members
    if profile not in PROFILES:
        raise DataError(f"--profile {profile!r}: choose from {list(PROFILES)}")
    recipe = {s.name: s.summary.get("recipe", {}).get("name", "") for s in list_sources(work, ["model"], solution)}
    kept = {name: w for name, w in members.items() if recipe_profile(recipe.get(name, "")) == profile}
    if len(kept) < len(members):
        print(f"{solution}: {len(members) - len(kept)} finished models of another profile left out: {sorted(set(members) - set(kept))}")
    return kept


def parse_members(pairs: list[str]) -> dict[str, float]:
    out = {}
    for pair in pairs:
        name, _, weight = pair.partition("=")
        try:
            out[name] = float(weight) if weight else 1.0
        except ValueError:
            raise SystemExit(f"--members {pair}: write NAME or NAME=WEIGHT") from None
    return out


def oof_accuracy(preds: TopK, labels: Labels) -> float:
    return accuracy(preds.top1, labels.of(preds.ids))


def blend(work: WorkDir, spec: SolutionBlend, members: dict[str, float], opts: BlendOptions | None = None) -> dict:
    """Weighted (power) mean of the members on their common OOF products and on test; writes
    preds/<solution>/ and submissions/<solution>.csv.gz; returns the summary."""
    if not members:
        raise FileNotFoundError(f"no {spec.solution} source to blend under {work.root / 'preds'} (train its recipes first)")
    opts = opts or BlendOptions()
    names, weights = list(members), list(members.values())
    labels, paths = Labels.load(work), DatasetPaths.load(work)
    splits = SplitIds.load(work)
    oofs, tests = zip(*(load_predictions(work, s, splits) for s in names))
    common_ids = oofs[0].ids
    for o in oofs[1:]:
        common_ids = np.intersect1d(common_ids, o.ids)
    oofs = [o.take(o.lookup(common_ids)[0]) for o in oofs]
    oof = power_mean(oofs, opts.topk, weights, spec.power)
    test = power_mean(list(tests), opts.topk, weights, spec.power)
    save_topk(work.preds(spec.solution) / "oof.npz", oof)
    save_topk(work.preds(spec.solution) / "test.npz", test)
    calibration = write_calibration(work.preds(spec.solution), oof, labels.of(oof.ids))
    tree = paths.tree()
    test_index = paths.index(work, "test")
    sub, fallback = submission_from_topk(work.submissions / f"{spec.solution}.csv.gz", test, np.asarray(test_index.ids), tree, labels.fallback,
                                         opts.max_fallback_share, test_index.lost_products, opts.accept_lost_products)
    return write_summary(
        work, spec.solution, spec.kind, solution=spec.solution, members=names, weights=weights, power=spec.power, profile=opts.profile or None,
        recorded=spec.recorded, leaderboard=spec.leaderboard,
        member_oof_accuracy={s: oof_accuracy(o, labels) for s, o in zip(names, oofs)},
        oof_products=int(len(oof)), oof_product_accuracy=oof_accuracy(oof, labels), calibration=calibration,
        oof_report=product_report(oof.top1, labels.of(oof.ids), labels.n_imgs[labels.rows(oof.ids)], tree),
        class_prior_accuracy=class_prior_accuracy(labels.labels[labels.labels >= 0], labels.of(oof.ids)),
        submission=str(sub), test_rows_from_fallback=fallback,
        test_accuracy=score_submission(sub, paths.test_labels) if paths.test_labels else None)


def print_report(report: dict) -> None:
    for source, acc in report["member_oof_accuracy"].items():
        print(f"  {source:40s} OOF product accuracy {acc:.4f}")
    print(f"  {report['source'] + ' (blend)':40s} OOF product accuracy {report['oof_product_accuracy']:.4f} on {report['oof_products']} products")
    print(f"  {'class-prior baseline':40s} OOF product accuracy {report['class_prior_accuracy']:.4f}")
    by_count = report["oof_report"]["by_image_count"]
    print("  blend OOF accuracy by image count: " + ", ".join(f"{k}: {v['accuracy']:.3f} ({v['products']})" for k, v in by_count.items()))
    print(f"  blend OOF level-1 accuracy: {report['oof_report']['level1_accuracy']:.4f}")
    if report["test_accuracy"] is not None:
        print(f"  mini test accuracy of {report['submission']}: {report['test_accuracy']:.4f}")
    print(f"  test rows from the fallback (no image prediction): {report['test_rows_from_fallback']}")


def blend_main(spec: SolutionBlend, argv: list[str] | None = None, description: str | None = None) -> dict:
    args = parse_stage(argv, description, BlendOptions)
    default = spec.members or solution_models(spec.solution)
    members = parse_members(args.options.members) if args.options.members else of_profile(args.work, spec.solution, default(args.work), args.options.profile)
    report = blend(args.work, spec, members, args.options)
    how = "mean" if spec.power == 1.0 else f"mean of p^{spec.power:g}"
    print(f"{spec.solution}: weighted {how} over {len(members)} sources")
    print_report(report)
    return report
