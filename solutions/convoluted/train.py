"""Train every fold of one 2nd-place recipe; the recipe's `stage` says which kind it is.

    python -m solutions.convoluted.train --config solutions/convoluted/configs/mini_base_lite0.yaml
    python -m solutions.convoluted.train --profile mini       # every mini recipe, bases first
    torchrun --standalone --nproc_per_node=8 -m solutions.convoluted.train --config solutions/convoluted/configs/base_seresnext101.yaml

Stages (a head or specialist recipe requires its base recipes, which `--profile` trains first):
    base        a single-image net per fold: predictions + stored features   (solutions/convoluted/base.py)
    fuse        a fusion head over the stored features of `bases`            (solutions/convoluted/fuse.py)
    rank_count  rank / count specialists fine-tuned from `base`              (solutions/convoluted/rank_count.py)
    rank_count_net  the same as whole nets from `init_from`, multi-crop TTA (solutions/convoluted/rank_count_net.py)
    image       a plain single-image net (member C's own base: no feature store)
Each writes preds/convoluted_<name>/; `python -m solutions.convoluted.submit` blends the team.
"""
from __future__ import annotations

from common.cli import run
from common.bench_feed import image_feed
from common.recipe import IMAGE, RecipeKind, train_main

from . import base, costs, fuse, rank_count, rank_count_net

HEAD = "a head on stored features: no CNN (the plan bounds it by disk reads)"
KINDS = {
    "base": RecipeKind(base.BaseConfig, base.base_fold, load_test=base.base_load_test, predict_test=base.base_test, single_image=True, cost=costs.base_cost,
                       bench_feed=image_feed),
    "fuse": RecipeKind(fuse.FuseConfig, fuse.fuse_fold, load_test=fuse.fuse_load_test, predict_test=fuse.fuse_predict_test, cost=costs.fuse_cost, bench_skip=HEAD),
    "rank_count": RecipeKind(rank_count.RankCountConfig, rank_count.rank_count_fold, rank_count.merge_variants,
                             load_test=rank_count.rank_count_load_test, predict_test=rank_count.rank_count_predict_test, cost=costs.rank_count_cost, bench_skip=HEAD),
    "rank_count_net": RecipeKind(rank_count_net.RankCountNetConfig, rank_count_net.rank_count_net_fold,
                                 load_test=rank_count_net.rank_count_net_load_test, predict_test=rank_count_net.member_test, cost=costs.specialists_cost,
                                 bench_feed=image_feed),  # each specialist trains a single-image net
    "image": IMAGE,
}
DEFAULT = "base"  # the stage of a recipe that names none


def main(argv: list[str] | None = None) -> dict | None:
    return train_main("convoluted", KINDS, DEFAULT, argv, __doc__)


if __name__ == "__main__":
    run(main)
