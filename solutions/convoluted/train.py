"""Train every fold of one 2nd-place recipe; the recipe's `stage` says which kind it is.

    python -m solutions.convoluted.train --config solutions/convoluted/configs/mini_base_lite0.yaml
    python -m solutions.convoluted.train --config solutions/convoluted/configs/mini_fuse_gated.yaml
    torchrun --standalone --nproc_per_node=8 -m solutions.convoluted.train --config solutions/convoluted/configs/base_seresnext101.yaml

Stages (run_all.sh runs the configs in name order, so base_* come before fuse_* and rankcount_*):
    base        a single-image net per fold: predictions + stored features   (solutions/convoluted/base.py)
    fuse        a fusion head over the stored features of `bases`            (solutions/convoluted/fuse.py)
    rank_count  rank / count specialists fine-tuned from `base`              (solutions/convoluted/rank_count.py)
Each writes preds/convoluted_<name>/; `python -m solutions.convoluted.submit` blends the team.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, NamedTuple

import yaml

from common.atomic import write_json
from common.errors import DataError
from common.recipe import parse_train_args, run_folds

from . import base, fuse, rank_count


class Stage(NamedTuple):
    config: type
    run_fold: Callable
    extra_summary: Callable | None = None  # (cfg, work, folds) -> dict merged into summary.json


STAGES: dict[str, Stage] = {
    "base": Stage(base.BaseConfig, base.run_fold),
    "fuse": Stage(fuse.FuseConfig, fuse.run_fold),
    "rank_count": Stage(rank_count.RankCountConfig, rank_count.run_fold, lambda cfg, work, folds: {"oof_variants": rank_count.variant_summary(cfg, work, folds)}),
}


def stage_of(config_path: str | Path) -> Stage:
    """The recipe's stage (default: base), read before the full parse picks its config class."""
    data = yaml.safe_load(Path(config_path).read_text()) or {}
    name = data.get("stage", "base")
    if name not in STAGES:
        raise DataError(f"{config_path}: stage {name!r}; choose from {sorted(STAGES)}")
    return STAGES[name]


def config_path(argv: list[str]) -> str:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    raise SystemExit("solutions.convoluted.train: --config recipe.yaml is required")


def main(argv: list[str] | None = None) -> dict | None:
    argv = sys.argv[1:] if argv is None else argv
    stage = stage_of(config_path(argv))
    cfg, work, resume = parse_train_args(argv, __doc__, stage.config)
    summary = run_folds(cfg, work, stage.run_fold, resume)
    if summary is None:  # not the main process
        return None
    summary["team_weight"] = getattr(cfg, "team_weight", 0.0)
    if stage.extra_summary:
        summary |= stage.extra_summary(cfg, work, summary["folds"])
    write_json(work.preds(summary["source"]) / "summary.json", summary)
    return summary


if __name__ == "__main__":
    main()
