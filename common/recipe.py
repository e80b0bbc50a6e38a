"""Train every fold of one recipe, predict its OOF and test products, merge them into a source.

    work/models/<solution>/<name>/fold<k>/   last.pt best.pt summary.csv config.yaml oof.npz test.npz
    work/preds/<solution>_<name>/            oof.npz (each fold's own products) test.npz (mean of folds) summary.json

A fold whose oof.npz and test.npz exist is skipped; an unfinished fold resumes from last.pt.
A solution differs from another by its Task (datasets, batches, prediction), not by this loop.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .atomic import write_json
from .bson_index import first_occurrence
from .bson_reader import BsonReader
from .categories import CategoryTree
from .config import TrainConfig
from .data import ImageDataset, collate_images, image_table
from .errors import DataError, log
from .folds import read_folds
from .infer import average_topk, predict_products
from .metrics import product_report
from .models import ModelSpec, create_model, normalization
from .predictions import TopK, concat_topk, load_topk, save_topk
from .prepare import DatasetPaths
from .paths import WorkDir
from .train import Runtime, fit, image_batch, load_checkpoint, setup_runtime

EXCLUDED = -2  # a train product absent from folds.csv (see folds_excluded.csv)


@dataclass
class FoldData:
    """Everything a fold needs, loaded once per recipe."""

    tree: CategoryTree
    train: BsonReader
    test: BsonReader
    labels: np.ndarray  # label index per train index row (-1 unknown)
    fold: np.ndarray  # fold per train index row (EXCLUDED when not in folds.csv)

    def rows(self, fold: int) -> tuple[np.ndarray, np.ndarray]:
        """(training rows, validation rows) of fold k: fold -1 products always train."""
        usable = self.fold != EXCLUDED
        return np.flatnonzero(usable & (self.fold != fold)), np.flatnonzero(self.fold == fold)

    @property
    def test_rows(self) -> np.ndarray:
        """Test products to predict: with images, each _id once (the rest fall back in the submission)."""
        return np.flatnonzero((self.test.index.n_imgs > 0) & first_occurrence(self.test.index.ids))


def load_fold_data(work: WorkDir) -> FoldData:
    paths = DatasetPaths.load(work)
    tree = paths.tree()
    train_index, test_index = paths.index(work, "train"), paths.index(work, "test")
    folds = read_folds(work.folds)
    fold = np.full(len(train_index), EXCLUDED, np.int64)
    pos = train_index.positions_of(folds["_id"].to_numpy())
    if (pos < 0).any():
        raise DataError(f"{work.folds}: {(pos < 0).sum()} _ids are not in the train index; rebuild the folds")
    fold[pos] = folds["fold"].to_numpy()
    labels = tree.to_index(train_index.category_ids, strict=False)
    return FoldData(tree, BsonReader(paths.train, train_index), BsonReader(paths.test, test_index), labels, fold)


@dataclass
class Task:
    """How a solution turns products into samples, samples into batches, a model into predictions."""

    train_set: Callable[[FoldData, np.ndarray, TrainConfig, bool], torch.utils.data.Dataset]
    collate: Callable
    to_batch: Callable[[tuple, tuple, TrainConfig], Callable]
    predict: Callable[..., TopK]


def _image_set(data: FoldData, rows: np.ndarray, cfg: TrainConfig, train: bool) -> ImageDataset:
    table = image_table(data.train.index.n_imgs, rows)
    return ImageDataset(data.train, table, data.labels[rows], cfg.input_size, hflip=cfg.hflip and train, device_decode=cfg.decode_on == "device")


IMAGE_TASK = Task(
    train_set=_image_set,
    collate=collate_images,
    to_batch=lambda mean, std, cfg: image_batch(mean, std, cfg.channels_last, cfg.input_size),
    predict=predict_products,
)


def validation_sample(rows: np.ndarray, cfg: TrainConfig) -> np.ndarray:
    """The products the per-epoch validation metric uses: all, or a seeded sample (mini budgets:
    the metric only tracks progress; the fold's OOF predictions still cover every product)."""
    if 0 < cfg.val_products < len(rows):
        return np.sort(np.random.default_rng([cfg.seed, len(rows)]).choice(rows, cfg.val_products, replace=False))
    return rows


def begin_fold(cfg: TrainConfig, work: WorkDir, fold: int, runtime: Runtime) -> Path | None:
    """The fold's directory with its config saved, or None when its predictions exist (skip)."""
    out = work.model_dir(cfg.solution, cfg.name, fold)
    if (out / "oof.npz").exists() and (out / "test.npz").exists():
        log.info("%s fold %d: predictions exist, skipped", cfg.name, fold)
        return None
    out.mkdir(parents=True, exist_ok=True)
    if runtime.is_main:
        cfg.save(out / "config.yaml")
    torch.manual_seed(cfg.seed * 1000 + fold)
    return out


def finish_fold(out: Path, oof: TopK, test: TopK, runtime: Runtime) -> None:
    if runtime.is_main:
        save_topk(out / "oof.npz", oof)
        save_topk(out / "test.npz", test)


@dataclass
class TrainedFold:
    model: nn.Module  # with its last checkpoint's weights
    mean: tuple
    std: tuple
    train_rows: np.ndarray
    val_rows: np.ndarray


def train_fold_model(cfg: TrainConfig, data: FoldData, work: WorkDir, fold: int, out: Path, runtime: Runtime, resume: bool,
                     task: Task) -> TrainedFold:
    """Build the recipe's network and fit it on the other folds (validating on a sample of this one)."""
    model = create_model(ModelSpec(cfg.model, len(data.tree), cfg.pretrained, cfg.drop_rate))
    mean, std = normalization(model)
    train_rows, val_rows = data.rows(fold)
    if len(val_rows) == 0:
        raise DataError(f"fold {fold} has no products in {work.folds}")
    train_set, val_set = task.train_set(data, train_rows, cfg, True), task.train_set(data, validation_sample(val_rows, cfg), cfg, False)
    result = fit(cfg, model, train_set, val_set, task.collate, task.to_batch(mean, std, cfg), out, runtime, resume)
    model.load_state_dict(load_checkpoint(result.last)["model"])
    return TrainedFold(model, mean, std, train_rows, val_rows)


def run_fold(cfg: TrainConfig, data: FoldData, work: WorkDir, fold: int, runtime: Runtime, resume: bool, task: Task = None) -> None:
    """One fold of a single-model recipe: train on the other folds, predict this one and test."""
    task = task or IMAGE_TASK
    out = begin_fold(cfg, work, fold, runtime)
    if out is None:
        return
    t = train_fold_model(cfg, data, work, fold, out, runtime, resume, task)
    model, mean, std, val_rows = t.model, t.mean, t.std, t.val_rows
    oof = task.predict(model, data.train, val_rows, cfg, runtime, mean, std)
    test = task.predict(model, data.test, data.test_rows, cfg, runtime, mean, std)
    finish_fold(out, oof, test, runtime)


def merge_folds(cfg: TrainConfig, data: FoldData, work: WorkDir, folds: list[int]) -> dict:
    """OOF = each fold's own products; test = mean over the fold models; summary.json beside."""
    dirs = [work.model_dir(cfg.solution, cfg.name, k) for k in folds]
    oof = concat_topk([load_topk(d / "oof.npz") for d in dirs])
    test = average_topk([load_topk(d / "test.npz") for d in dirs], cfg.topk)
    out = work.preds(f"{cfg.solution}_{cfg.name}")
    save_topk(out / "oof.npz", oof)
    save_topk(out / "test.npz", test)
    rows = data.train.index.positions_of(oof.ids)
    report = product_report(oof.top1, data.labels[rows], data.train.index.n_imgs[rows], data.tree)
    summary = {
        "source": f"{cfg.solution}_{cfg.name}",
        "model": cfg.model,
        "folds": folds,
        "oof_products": int(len(oof)),
        "oof_product_accuracy": report["accuracy"],
        "oof_level1_accuracy": report["level1_accuracy"],
        "oof_by_image_count": report["by_image_count"],
        "oof_by_level1": report["by_level1"],
        "val_image_accuracy_per_fold": [_last_val_acc(d) for d in dirs],
        "test_products": int(len(test)),
    }
    write_json(out / "summary.json", summary)
    return summary


def _last_val_acc(fold_dir) -> float | None:
    import csv

    path = fold_dir / "summary.csv"
    if not path.exists():
        return None
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return float(rows[-1]["val_acc"]) if rows else None


FoldFn = Callable[[TrainConfig, FoldData, WorkDir, int, Runtime, bool], None]


def run_folds(cfg: TrainConfig, work: WorkDir, fold_fn: FoldFn, resume: bool = True) -> dict | None:
    """Every fold of cfg (or cfg.folds) through fold_fn, then merged into preds/<solution>_<name>/."""
    runtime = setup_runtime()
    data = load_fold_data(work)
    folds = cfg.folds or sorted(int(k) for k in np.unique(data.fold) if k >= 0)
    for k in folds:
        fold_fn(cfg, data, work, k, runtime, resume)
    if not runtime.is_main:
        return None
    summary = merge_folds(cfg, data, work, folds)
    by_count = ", ".join(f"{k}: {v['accuracy']:.3f}" for k, v in summary["oof_by_image_count"].items())
    print(f"{summary['source']}: OOF product accuracy {summary['oof_product_accuracy']:.4f} on {summary['oof_products']} products (by image count: {by_count})")
    return summary


def run_recipe(cfg: TrainConfig, work: WorkDir, task: Task = IMAGE_TASK, resume: bool = True) -> dict | None:
    return run_folds(cfg, work, lambda *args: run_fold(*args, task=task), resume)


def parse_train_args(argv: list[str] | None, description: str, cls: type = TrainConfig):
    """`--config recipe.yaml [--work DIR] [--no-resume] [--any-recipe-option value]` -> (cfg, work, resume)."""
    import argparse
    import logging

    from .config import add_config_arguments, parse_config

    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="recipe YAML (command-line options override it)")
    p.add_argument("--work", default=None, help="work dir (default: $CDISCOUNT_WORK or ./work)")
    p.add_argument("--no-resume", action="store_true", help="ignore last.pt and train the unfinished folds from scratch")
    add_config_arguments(p, cls)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    return parse_config(args, args.config, cls), WorkDir(args.work), not args.no_resume


def train_main(task: Task, argv: list[str] | None = None, description: str = "") -> dict | None:
    """Train all folds of a recipe with a Task, then merge them into a prediction source."""
    cfg, work, resume = parse_train_args(argv, description)
    return run_recipe(cfg, work, task, resume=resume)
