"""The plan's cost models of the 2nd place's recipe kinds (RecipeKind.cost; common/costs.py): base
nets with their feature pass, heads on stored features (bound by reading the stores), rank /
count specialists on features and as whole nets."""
from __future__ import annotations

from common.costs import (Cost, CostContext, checkpoint_bytes, epoch_images, new_cost, prediction_bytes, read_seconds, store_bytes,
                          val_images)
from common.throughput import N_CLASSES, network


def base_cost(cfg, ctx: CostContext) -> Cost:
    """2nd place's base nets: train, then ONE pass over every train and test image x views that predicts
    the OOF and test products and stores the features (a store per model)."""
    split, c = ctx.split, ctx.counts
    rate, m, net = ctx.rate(cfg), split.models, network(cfg.model)
    cost = new_cost(cfg, rate)
    stored = split.train_images if cfg.feature_train_products <= 0 else min(cfg.feature_train_products, split.train_products) * \
        split.train_images / max(split.train_products, 1)
    cost.train_images = m * cfg.epochs * epoch_images(cfg, split.train_images)
    cost.predict_images = m * cfg.epochs * val_images(cfg, split)
    cost.feature_images = m * len(cfg.tta) * (stored + split.oof_images + c.test_images)
    cost.gpu_s = {"train": cost.train_images / rate.train, "predict": cost.predict_images / rate.infer,
                  "features": cost.feature_images / rate.infer}
    cost.disk = {"checkpoints": m * checkpoint_bytes(net.params, cfg), "predictions": prediction_bytes(cfg, split, c),
                 "features": m * store_bytes(c, len(cfg.tta), net.features)}
    cost.note = f"store: {len(cfg.tta)} views x {net.features} uint8 per image"
    return cost


def head_params(cfg, dim: int, copies: int) -> int:
    """Parameters of a fuse recipe's head, built on the meta device as fuse_fold builds it."""
    import torch

    from .fuse import head_for

    with torch.device("meta"):
        head = head_for(cfg, dim, copies, N_CLASSES)
    return sum(p.numel() for p in head.parameters())


def fuse_cost(cfg, ctx: CostContext) -> Cost:
    """A head on stored features: per epoch every training product's images (all copies) are read."""
    split, c, read_mb_s = ctx.split, ctx.counts, ctx.read_mb_s
    bases = [ctx.recipe(cfg.solution, b) for b in cfg.bases]
    dims = [network(b.model).features for b in bases]
    views = len(bases[0].tta)
    cost, m = new_cost(cfg, None), split.models
    cost.train_images = m * cfg.epochs * epoch_images(cfg, split.train_images)
    cost.predict_images = m * (cfg.epochs * val_images(cfg, split) + split.oof_images + c.test_images)
    cost.io_s = read_seconds(cost.train_images + cost.predict_images, views * sum(dims), read_mb_s)
    cost.disk = {"checkpoints": m * checkpoint_bytes(head_params(cfg, sum(dims), views), cfg), "predictions": prediction_bytes(cfg, split, c)}
    cost.rate = f"bound by reading {views} x {sum(dims)} bytes per image at {read_mb_s:,.0f} MB/s (the cold read of bench/README.md; a lower bound)"
    return cost


def rank_count_cost(cfg, ctx: CostContext) -> Cost:
    """Member C on stored features: 6 specialists (2 by rank, 4 by count: each image twice an epoch), the OOF
    through 4 variants, the test set once."""
    split, c, read_mb_s = ctx.split, ctx.counts, ctx.read_mb_s
    base = ctx.recipe(cfg.solution, cfg.base)
    dim, views, m = network(base.model).features, len(base.tta), split.models
    cost = new_cost(cfg, None)
    cost.train_images = m * 2 * cfg.epochs * epoch_images(cfg, split.train_images)
    cost.predict_images = m * (2 * cfg.epochs * val_images(cfg, split) + 4 * split.oof_images + c.test_images)
    cost.io_s = read_seconds(cost.train_images + cost.predict_images, views * dim, read_mb_s)
    cost.disk = {"checkpoints": m * 6 * checkpoint_bytes(dim * N_CLASSES + N_CLASSES, cfg), "predictions": prediction_bytes(cfg, split, c)}
    cost.rate = f"bound by reading {views} x {dim} bytes per image at {read_mb_s:,.0f} MB/s (the cold read of bench/README.md; a lower bound)"
    return cost


def specialists_cost(cfg, ctx: CostContext) -> Cost:
    """2nd place's member C as whole nets: six fine-tunes of its base (each image in one rank and one
    count model), then every image on its tta_crops through three nets (base, rank, count)."""
    split, c = ctx.split, ctx.counts
    rate, m = ctx.rate(cfg), split.models
    cost, k_images = new_cost(cfg, rate), {k: k * n for k, n in c.by_k.items()}
    crops = sum(cfg.tta_crops[min(int(k), 4) - 1] * v for k, v in k_images.items()) / sum(k_images.values())
    cost.train_images = m * 2 * cfg.epochs * epoch_images(cfg, split.train_images)
    cost.predict_images = m * (6 * cfg.epochs * val_images(cfg, split) + 3 * crops * (split.oof_images + c.test_images))
    cost.gpu_s = {"train": cost.train_images / rate.train, "predict": cost.predict_images / rate.infer}
    cost.disk = {"checkpoints": m * 6 * checkpoint_bytes(network(cfg.model).params, cfg), "predictions": prediction_bytes(cfg, split, c)}
    cost.note = f"6 whole-net fine-tunes; {crops:.1f} crops x 3 nets per image"
    return cost
