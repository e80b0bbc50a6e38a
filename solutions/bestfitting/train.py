"""Train every fold of one bestfitting recipe: a shared model on all products, then one model per
image count K fine-tuned from it; each product is predicted by its K model.

    python -m solutions.bestfitting.train --config solutions/bestfitting/configs/mini_lite0_strip.yaml
    torchrun --standalone --nproc_per_node=8 -m solutions.bestfitting.train --config solutions/bestfitting/configs/resnet50.yaml

    work/models/bestfitting/<name>/fold<k>/shared/  the shared model (all K)
    work/models/bestfitting/<name>/fold<k>/k<K>/    its fine-tune on products with exactly K images
    work/models/bestfitting/<name>/fold<k>/{oof,test}.npz, then work/preds/bestfitting_<name>/
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from common.config import TrainConfig
from common.data import ProductDataset
from common.errors import DataError
from common.models import ModelSpec, create_model, normalization
from common.infer import gather_topk
from common.predictions import TopK, concat_topk
from common.recipe import FoldData, begin_fold, finish_fold, parse_train_args, run_folds, validation_sample
from common.train import Runtime, autocast, fit, load_checkpoint

from .data import ByCountBatchSampler, collate_same_count, compose, composed_batch, image_count
from .layout import LAYOUTS, TILE_TTA


@dataclass
class BestfittingConfig(TrainConfig):
    solution: str = "bestfitting"
    layout: str = "strip"  # strip (the winner's side by side) | grid (2x2 for K = 3, 4)
    finetune_epochs: int = 1  # per-K fine-tune of the shared model (0 = use the shared model for every K)
    finetune_lr_scale: float = 0.2  # fine-tune LR = lr x this

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.layout not in LAYOUTS:
            raise DataError(f"recipe option layout={self.layout!r}: choose from {sorted(LAYOUTS)}")


def product_set(data: FoldData, reader, rows: np.ndarray, cfg: BestfittingConfig, train: bool) -> ProductDataset:
    labels = data.labels[rows] if reader is data.train else None
    return ProductDataset(reader, rows, labels, cfg.input_size, hflip=cfg.hflip and train)  # per-tile flips


def train_stage(cfg: BestfittingConfig, model, data: FoldData, train_rows, val_rows, out, runtime: Runtime, resume: bool):
    """One fit over products composed by K (batches never mix K)."""
    mean, std = normalization(model)
    val_rows = validation_sample(val_rows, cfg)
    counts = lambda rows: image_count(data.train.index.n_imgs[rows])  # noqa: E731
    train_sampler = ByCountBatchSampler(counts(train_rows), cfg.batch_size, cfg.seed, True, runtime.rank, runtime.world, cfg.max_images_per_epoch)
    val_sampler = ByCountBatchSampler(counts(val_rows), cfg.eval_batch_size, cfg.seed, False, runtime.rank, runtime.world)
    result = fit(cfg, model, product_set(data, data.train, train_rows, cfg, True), product_set(data, data.train, val_rows, cfg, False),
                 collate_same_count, composed_batch(mean, std, cfg.layout, cfg.channels_last), out, runtime, resume,
                 val_batch_sampler=val_sampler, train_batch_sampler=train_sampler)
    model.load_state_dict(load_checkpoint(result.last)["model"])
    return model


@torch.no_grad()
def predict_by_count(models: dict[int, torch.nn.Module], reader, rows: np.ndarray, cfg: BestfittingConfig, runtime: Runtime) -> TopK:
    """Each product through the model of its K, flip TTA per tile; top-K per product by _id."""
    rows = rows[reader.index.n_imgs[rows] > 0]
    counts = image_count(reader.index.n_imgs[rows])
    ids, labels, probs = [], [], []
    for k, model in models.items():
        sel = rows[counts == k]
        if not len(sel):
            continue
        model.eval().to(runtime.device)
        mean, std = normalization(model)
        sampler = ByCountBatchSampler(np.full(len(sel), k), cfg.eval_batch_size, shuffle=False, rank=runtime.rank, world=runtime.world)
        loader = DataLoader(ProductDataset(reader, sel, None, cfg.input_size), batch_sampler=sampler, collate_fn=collate_same_count,
                            num_workers=cfg.num_workers, pin_memory=runtime.cuda)
        for raw in tqdm(loader, desc=f"predict K={k}", leave=False, disable=not runtime.is_main):
            pixels = raw["pixels"].to(runtime.device, non_blocking=True)
            p = sum(_softmax(model, compose(TILE_TTA[v](pixels), mean, std, cfg.layout, cfg.channels_last and runtime.cuda), cfg, runtime) for v in cfg.tta)
            top = (p / len(cfg.tta)).topk(min(cfg.topk, p.shape[1]), dim=1)
            ids.append(np.asarray(reader.index.ids[sel[raw["pos"].numpy()]], np.int64))
            labels.append(top.indices.cpu().numpy().astype(np.int16))
            probs.append(top.values.cpu().numpy().astype(np.float16))
    k = min(cfg.topk, next(iter(models.values())).num_classes)
    parts = [TopK(i, lab, pr) for i, lab, pr in zip(ids, labels, probs)]
    local = concat_topk(parts) if parts else TopK(np.zeros(0, np.int64), np.zeros((0, k), np.int16), np.zeros((0, k), np.float16))
    return gather_topk(runtime, local)


def _softmax(model, x, cfg, runtime) -> torch.Tensor:
    with autocast(cfg, runtime):
        return model(x).float().softmax(1)


def run_fold(cfg: BestfittingConfig, data: FoldData, work, fold: int, runtime: Runtime, resume: bool) -> None:
    out = begin_fold(cfg, work, fold, runtime)
    if out is None:
        return
    train_rows, val_rows = data.rows(fold)
    shared = train_stage(cfg, create_model(ModelSpec(cfg.model, len(data.tree), cfg.pretrained, cfg.drop_rate)), data, train_rows, val_rows, out / "shared", runtime, resume)
    models = {}
    for k in range(1, 5):
        model = create_model(ModelSpec(cfg.model, len(data.tree), None, cfg.drop_rate))
        model.load_state_dict(shared.state_dict())
        k_train = train_rows[image_count(data.train.index.n_imgs[train_rows]) == k]
        k_val = val_rows[image_count(data.train.index.n_imgs[val_rows]) == k]
        if cfg.finetune_epochs > 0 and len(k_train) and len(k_val):
            k_cfg = dataclasses.replace(cfg, epochs=cfg.finetune_epochs, lr=cfg.lr * cfg.finetune_lr_scale, lr_milestones=[], warmup_epochs=0.0)
            model = train_stage(k_cfg, model, data, k_train, k_val, out / f"k{k}", runtime, resume)
        models[k] = model
    oof = predict_by_count(models, data.train, val_rows, cfg, runtime)
    test = predict_by_count(models, data.test, data.test_rows, cfg, runtime)
    finish_fold(out, oof, test, runtime)


def main(argv: list[str] | None = None) -> dict | None:
    cfg, work, resume = parse_train_args(argv, __doc__, BestfittingConfig)
    return run_folds(cfg, work, run_fold, resume)


if __name__ == "__main__":
    main()
