"""Train every fold of one bestfitting recipe: a shared model on all products, then one model per
image count K fine-tuned from it; each product is predicted by its K model.

    python -m solutions.bestfitting.train --config solutions/bestfitting/configs/mini_lite0_strip.yaml
    torchrun --standalone --nproc_per_node=8 -m solutions.bestfitting.train --config solutions/bestfitting/configs/resnet50.yaml

    work/models/bestfitting/<name>/fold<k>/shared/  the shared model (all K)
    work/models/bestfitting/<name>/fold<k>/k<K>/    its fine-tune on products with exactly K images
    work/models/bestfitting/<name>/fold<k>/{oof,test}.npz, then work/preds/bestfitting_<name>/
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import numpy as np
from torch import nn

from common.cli import run
from common.config import TrainConfig
from common.data import ProductDataset
from common.errors import DataError
from common.infer import Items, predict
from common.models import normalization
from common.predictions import TopK
from common.recipe import (
    FoldJob,
    IMAGE,
    FoldOutput,
    RecipeKind,
    build_model,
    load_trained,
    train_main,
    validation_sample,
)
from common.train import eval_loader, fit, train_loader

from .bench_feed import composed_feed
from .costs import composed_cost
from .data import (
    MAX_K,
    ByCountBatchSampler,
    collate_same_count,
    image_count,
    tiles_batch,
)
from .layout import LAYOUTS, ByCountNet, ComposedNet


@dataclass
class BestfittingConfig(TrainConfig):
    solution: str = "bestfitting"
    stage: str = "composed"
    layout: str = "strip"  # strip (the winner's side by side) | grid (2x2 for K = 3, 4)
    finetune_epochs: int = 1  # per-K fine-tune of the shared model (0 = use the shared model for every K)
    finetune_lr_scale: float = 0.2  # fine-tune LR = lr x this

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.layout not in LAYOUTS:
            raise DataError(f"recipe option layout={self.layout!r}: choose from {sorted(LAYOUTS)}")


def product_set(job: FoldJob, reader, rows: np.ndarray, train: bool) -> ProductDataset:
    labels = job.data.labels[rows] if reader is job.data.train else None
    return ProductDataset(reader, rows, labels, job.cfg.input_size, hflip=job.cfg.hflip and train)  # per-tile flips


def train_stage(job: FoldJob, cfg: BestfittingConfig, model: ComposedNet, train_rows, val_rows, part: str) -> ComposedNet:
    """One fit over products composed by K (batches never mix K)."""
    runtime, counts = job.runtime, lambda rows: image_count(job.data.train.index.n_imgs[rows])  # noqa: E731
    val_rows = validation_sample(val_rows, cfg)
    train_sampler = ByCountBatchSampler(counts(train_rows), cfg.batch_size, cfg.seed, True, runtime.rank, runtime.world, cfg.max_images_per_epoch)
    val_sampler = ByCountBatchSampler(counts(val_rows), cfg.eval_batch_size, cfg.seed, False, runtime.rank, runtime.world)
    train = train_loader(product_set(job, job.data.train, train_rows, True), cfg, runtime, collate_same_count, train_sampler)
    val = eval_loader(product_set(job, job.data.train, val_rows, False), cfg, runtime, collate_same_count, val_sampler)
    return fit(cfg, model, train, val, tiles_batch(*normalization(model)), job.out / part, runtime)


def predict_by_count(job: FoldJob, model: nn.Module, reader, rows: np.ndarray, desc: str) -> TopK:
    """Each product through the model of its K (batches of one K, about eval_batch_size tiles)."""
    rows = rows[reader.index.n_imgs[rows] > 0]
    k = image_count(reader.index.n_imgs[rows])
    items = Items.products(reader.index.ids[rows], cost=k, key=k)
    return predict(model, product_set(job, reader, rows, False), collate_same_count, items, tiles_batch(*normalization(model)), job.cfg,
                   job.runtime, desc=desc)


def composed_fold(job: FoldJob) -> FoldOutput:
    cfg = job.cfg
    train_rows, val_rows = job.rows
    shared = train_stage(job, cfg, ComposedNet(build_model(cfg, job.num_classes), cfg.layout, cfg.channels_last), train_rows, val_rows, "shared")
    tune = dataclasses.replace(cfg, epochs=cfg.finetune_epochs, lr=cfg.lr * cfg.finetune_lr_scale, lr_milestones=[], warmup_epochs=0.0)
    models = {}
    for k in range(1, MAX_K + 1):
        k_train = train_rows[image_count(job.data.train.index.n_imgs[train_rows]) == k]
        k_val = val_rows[image_count(job.data.train.index.n_imgs[val_rows]) == k]
        fine_tune = cfg.finetune_epochs > 0 and len(k_train) and len(k_val)
        models[k] = train_stage(job, tune, copy.deepcopy(shared), k_train, k_val, f"k{k}") if fine_tune else shared
    model = ByCountNet(models)
    return FoldOutput(predict_by_count(job, model, job.data.train, val_rows, "oof"), composed_test(job, model))


def composed_test(job: FoldJob, model: nn.Module) -> TopK:
    return predict_by_count(job, model, job.data.test, job.data.test_rows, "test")


def composed_load_test(job: FoldJob) -> nn.Module:
    """The trained fold: the shared model, and each K's fine-tune where the fold made one (k<K>/last.pt)."""
    cfg = job.cfg
    net = ComposedNet(build_model(dataclasses.replace(cfg, pretrained=None), job.num_classes), cfg.layout, cfg.channels_last)
    shared = load_trained(net, job.out / "shared" / "last.pt")
    tuned = {k: job.out / f"k{k}" / "last.pt" for k in range(1, MAX_K + 1)}
    return ByCountNet({k: load_trained(copy.deepcopy(shared), p) if p.exists() else shared for k, p in tuned.items()}).to(job.runtime.device)


KINDS = {"composed": RecipeKind(BestfittingConfig, composed_fold, load_test=composed_load_test, predict_test=composed_test, cost=composed_cost, bench_feed=composed_feed),
         "image": IMAGE}  # image: the single-image baselines
DEFAULT = "composed"  # the stage of a recipe that names none


def main(argv: list[str] | None = None) -> dict | None:
    return train_main("bestfitting", KINDS, DEFAULT, argv, __doc__)


if __name__ == "__main__":
    run(main)
