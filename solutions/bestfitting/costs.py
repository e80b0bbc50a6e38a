"""The plan's cost model of bestfitting's composed recipes (RecipeKind.cost; common/costs.py)."""
from __future__ import annotations

from common.costs import Cost, CostContext, checkpoint_bytes, epoch_images, new_cost, prediction_bytes, val_images
from common.throughput import network


def composed_cost(cfg, ctx: CostContext) -> Cost:
    """A shared model on every product's tiles, then finetune_epochs on the products of each K."""
    split, c = ctx.split, ctx.counts
    rate, m, ft = ctx.rate(cfg), split.models, cfg.finetune_epochs
    cost = new_cost(cfg, rate)
    cost.epochs = f"{cfg.epochs} + {ft} per K" if ft else str(cfg.epochs)
    k_images = [k * n for k, n in c.by_k.items()]
    share = [x / sum(k_images) for x in k_images]
    tune = sum(epoch_images(cfg, s * split.train_images) for s in share) if ft else 0.0  # each K's stage, capped like an epoch
    cost.train_images = m * (cfg.epochs * epoch_images(cfg, split.train_images) + ft * tune)
    cost.predict_images = m * ((cfg.epochs + ft) * val_images(cfg, split) + len(cfg.tta) * (split.oof_images + c.test_images))
    cost.gpu_s = {"train": cost.train_images / rate.train, "predict": cost.predict_images / rate.infer}
    models = 1 + (len(c.by_k) if ft else 0)  # shared/ and k1..k4/ each keep a last.pt
    cost.disk = {"checkpoints": m * models * checkpoint_bytes(network(cfg.model).params, cfg), "predictions": prediction_bytes(cfg, split, c)}
    cost.note = "a product's tiles = its images (1-4)"
    return cost
