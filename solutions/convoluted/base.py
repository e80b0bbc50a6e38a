"""2nd place, member A's base nets: single-image classifiers (SGD, shift-scale-rotate + hflip +
rot90), then one pass per fold that both predicts and stores penultimate features.

Per fold k the base net trains on the other folds; the same net then
  - predicts fold k and test (mean of a product's image probabilities, flip TTA): the source
    preds/convoluted_<name>, i.e. the "plain mean" the fusion heads are measured against;
  - writes features of fold k's products, of the training products the heads learn from, and of
    the test products into work/features/convoluted/<name>/fold<k>/{train,test}.*
So a fusion head of fold k only ever sees features from nets that never saw fold k's labels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from common.config import TrainConfig
from common.data import ImageDataset, ProductBatchSampler, batch_pixels, collate_images, image_table, normalize_on_device
from common.infer import TTA, aggregate, gather_topk
from common.models import normalization, penultimate_features
from common.predictions import TopK, concat_topk
from common.recipe import IMAGE_TASK, FoldData, begin_fold, finish_fold, train_fold_model
from common.train import Runtime, autocast, save_checkpoint

from .feature_store import FeatureWriter


@dataclass
class BaseConfig(TrainConfig):
    solution: str = "convoluted"
    stage: str = "base"
    optimizer: str = "sgd"
    feature_clip: float = 3.0  # the team clipped features to [0, 3] before uint8 quantisation
    feature_flip: bool = True  # also store the horizontal-flip copy of every image's features
    feature_train_products: int = 0  # training products whose features are stored for the heads (0 = all)


def classifier_as_linear(model: nn.Module) -> nn.Linear:
    """The model's classifier as a Linear on pooled features (DPN's is a 1x1 conv)."""
    clf = model.get_classifier()
    weight = clf.weight.detach().reshape(clf.weight.shape[0], -1)
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=clf.bias is not None)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if clf.bias is not None:
            linear.bias.copy_(clf.bias.detach())
    return linear.to(weight.device)


def ranks_in_batch(pos: np.ndarray) -> np.ndarray:
    """Image rank within its product, for a batch of whole products in index order."""
    starts = np.r_[0, np.flatnonzero(pos[1:] != pos[:-1]) + 1]
    first = np.repeat(starts, np.diff(np.r_[starts, len(pos)]))
    return np.arange(len(pos)) - first


def feature_views(cfg: BaseConfig) -> list[str]:
    return ["orig", "hflip"] if cfg.feature_flip else ["orig"]


@torch.no_grad()
def extract(model: nn.Module, reader, rows: np.ndarray, cfg: BaseConfig, runtime: Runtime, writer: FeatureWriter) -> TopK:
    """One pass over the products' images: features into the store, flip-TTA product top-K out."""
    model.eval().to(runtime.device)
    mean, std = normalization(model)
    classifier = classifier_as_linear(model)
    stored, needed = feature_views(cfg), sorted(set(feature_views(cfg)) | set(cfg.tta))
    table = image_table(reader.index.n_imgs, rows)
    dataset = ImageDataset(reader, table, None, cfg.input_size, device_decode=cfg.decode_on == "device")
    loader = DataLoader(dataset, batch_sampler=ProductBatchSampler(table, cfg.eval_batch_size, runtime.rank, runtime.world),
                        collate_fn=collate_images, num_workers=cfg.num_workers, pin_memory=runtime.cuda)
    ids, labels, probs = [], [], []
    for raw in tqdm(loader, desc=f"features {cfg.name}", leave=False, disable=not runtime.is_main):
        pixels, ok = batch_pixels(raw, cfg.input_size, runtime.device)
        x = normalize_on_device(pixels, mean, std, cfg.channels_last and runtime.cuda)
        with autocast(cfg, runtime):
            feats = {v: penultimate_features(model, TTA[v](x)).float() for v in needed}
        pos = raw["pos"].numpy()
        writer.write(rows[pos], ranks_in_batch(pos), torch.stack([feats[v] for v in stored], 1).cpu().numpy(), ok.cpu().numpy())
        p = sum(classifier(feats[v]).softmax(1) for v in cfg.tta) / len(cfg.tta)
        group, agg = aggregate(p, raw["pos"].to(runtime.device), ok, cfg.aggregate)
        top = agg.topk(min(cfg.topk, agg.shape[1]), dim=1)
        ids.append(np.asarray(reader.index.ids[rows[group.cpu().numpy()]], np.int64))
        labels.append(top.indices.cpu().numpy().astype(np.int16))
        probs.append(top.values.cpu().numpy().astype(np.float16))
    parts = [TopK(i, lab, pr) for i, lab, pr in zip(ids, labels, probs)]
    k = min(cfg.topk, classifier.out_features)
    local = concat_topk(parts) if parts else TopK(np.zeros(0, np.int64), np.zeros((0, k), np.int16), np.zeros((0, k), np.float16))
    return gather_topk(runtime, local)


def extract_split(model, reader, rows: np.ndarray, cfg: BaseConfig, runtime: Runtime, directory, split: str) -> TopK:
    """Features of `rows` into <directory>/<split>.*, created by rank 0 and filled by every rank."""
    dim = model.num_features
    writer = FeatureWriter(directory, split, reader.index.n_imgs, dim, len(feature_views(cfg)), cfg.feature_clip, cfg.model,
                           create=runtime.is_main) if runtime.is_main else None
    if runtime.distributed:
        torch.distributed.barrier()
        if writer is None:
            writer = FeatureWriter(directory, split, reader.index.n_imgs, dim, len(feature_views(cfg)), cfg.feature_clip, cfg.model, create=False)
    preds = extract(model, reader, rows, cfg, runtime, writer)
    if runtime.distributed:
        torch.distributed.barrier()
    if runtime.is_main:
        writer.commit(rows[reader.index.n_imgs[rows] > 0])
    return preds


def feature_rows(cfg: BaseConfig, train_rows: np.ndarray, fold: int) -> np.ndarray:
    """The training products whose features the heads will learn from (all, or a seeded sample)."""
    if 0 < cfg.feature_train_products < len(train_rows):
        rng = np.random.default_rng([cfg.seed, fold])
        return np.sort(rng.choice(train_rows, cfg.feature_train_products, replace=False))
    return train_rows


def run_fold(cfg: BaseConfig, data: FoldData, work, fold: int, runtime: Runtime, resume: bool) -> None:
    out = begin_fold(cfg, work, fold, runtime)
    if out is None:
        return
    trained = train_fold_model(cfg, data, work, fold, out, runtime, resume, IMAGE_TASK)
    model, train_rows, val_rows = trained.model, trained.train_rows, trained.val_rows
    features = work.features(cfg.solution, cfg.name, fold)
    if runtime.is_main:  # the rank/count heads start from the base net's classifier
        clf = classifier_as_linear(model)
        features.mkdir(parents=True, exist_ok=True)
        save_checkpoint(features / "classifier.pt", {"weight": clf.weight.detach().cpu(), "bias": clf.bias.detach().cpu()})
    rows = np.union1d(feature_rows(cfg, train_rows, fold), val_rows)
    seen = extract_split(model, data.train, rows, cfg, runtime, features, "train")
    oof = seen.take(np.flatnonzero(np.isin(seen.ids, data.train.index.ids[val_rows])))
    test = extract_split(model, data.test, data.test_rows, cfg, runtime, features, "test")
    finish_fold(out, oof, test, runtime)
