"""2nd place, members A and B: fusion heads trained from scratch on stored base-net features.

Per fold k: features of the training products (from the base nets of fold k) -> a head over the
product's 4 padded views; it predicts fold k and test from the same nets' features. The flip
copy is a training augmentation (a random copy per view) and a test-time view (mean of both).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from common.config import TrainConfig
from common.errors import DataError
from common.infer import gather_topk
from common.predictions import TopK, concat_topk
from common.recipe import FoldData, begin_fold, finish_fold
from common.train import Batch, Runtime, autocast, fit, load_checkpoint

from .feature_store import MAX_VIEWS, FeatureStore
from .heads import create_head


@dataclass
class FuseConfig(TrainConfig):
    solution: str = "convoluted"
    stage: str = "fuse"
    model: str = "fusion_gated"  # a head of solutions.convoluted.heads.HEADS
    bases: list[str] = field(default_factory=list)  # base recipes whose features are concatenated
    hidden: int = 2048
    gate_reduction: int = 16
    drop_rate: float = 0.5
    optimizer: str = "adam"
    lr: float = 1e-3
    num_workers: int = 0  # items are memmap reads: loader processes rarely pay off
    team_weight: float = 0.0  # weight in the team's sqrt blend (0 = not a member)


class StoredViews:
    """Several base nets' stores of one split, read together by product (features concatenated)."""

    def __init__(self, stores: list[FeatureStore], n_imgs: np.ndarray):
        flips = {s.meta.flips for s in stores}
        if len(flips) != 1:
            raise DataError(f"feature stores {[str(s.dir) for s in stores]} differ in flip copies {sorted(flips)}")
        self.stores, self.n_imgs = stores, np.asarray(n_imgs)
        self.offsets = [s.check_index(n_imgs) for s in stores]
        self.flips = flips.pop()
        self.dim = sum(s.meta.dim for s in stores)
        self.scale = np.concatenate([np.full(s.meta.dim, s.meta.clip / 255.0, np.float32) for s in stores])
        self.rows = stores[0].rows
        for s in stores[1:]:
            self.rows = np.intersect1d(self.rows, s.rows)

    def views(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(uint8[B, V, flips, D], mask[B, V]): a view counts when every base net decoded it."""
        parts = [s.views(off, self.n_imgs, rows) for s, off in zip(self.stores, self.offsets)]
        return np.concatenate([p[0] for p in parts], axis=-1), np.logical_and.reduce([p[1] for p in parts])


class FusionDataset(Dataset):
    """Item = (uint8 features, mask[V], label, position). `flips`: "random" (one copy per view,
    drawn from the sample seed), "orig", or "all" ([flips, V, D] for test-time averaging)."""

    def __init__(self, views: StoredViews, rows: np.ndarray, labels: np.ndarray | None, flips: str):
        self.views, self.rows, self.labels, self.flips = views, np.asarray(rows), labels, flips

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item):
        i, seed = item if isinstance(item, tuple) else (item, 0)
        feats, mask = self.views.views(self.rows[i : i + 1])
        feats, mask = feats[0], mask[0]  # [V, flips, D], [V]
        if self.flips == "all":
            x = feats.transpose(1, 0, 2)
        elif self.flips == "random":
            pick = np.random.default_rng(seed).integers(0, self.views.flips, MAX_VIEWS)
            x = feats[np.arange(MAX_VIEWS), pick]
        else:
            x = feats[:, 0]
        label = -1 if self.labels is None else int(self.labels[i])
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(mask), label, i


def collate_views(batch: list) -> dict:
    x, mask, label, pos = zip(*batch)
    return {"features": torch.stack(x), "mask": torch.stack(mask), "label": torch.tensor(label), "pos": torch.tensor(pos)}


def views_batch(scale: np.ndarray):
    """uint8 features -> float on the device; inputs = (x[B, V, D], mask) for the head."""
    scale_t = torch.from_numpy(scale)

    def to_batch(raw: dict, runtime: Runtime) -> Batch:
        x = raw["features"].to(runtime.device, non_blocking=True).float() * scale_t.to(runtime.device)
        mask = raw["mask"].to(runtime.device)
        target = raw["label"].to(runtime.device)
        return Batch((x, mask), target, (target >= 0) & mask.any(1))

    return to_batch


def open_views(work, cfg: FuseConfig, fold: int, split: str, n_imgs: np.ndarray) -> StoredViews:
    if not cfg.bases:
        raise DataError(f"fuse recipe {cfg.name}: `bases` lists no base recipe")
    return StoredViews([FeatureStore(work.features(cfg.solution, b, fold), split) for b in cfg.bases], n_imgs)


@torch.no_grad()
def predict_views(head: torch.nn.Module, views: StoredViews, ids: np.ndarray, rows: np.ndarray, cfg: FuseConfig, runtime: Runtime) -> TopK:
    """Top-K per product: the head's softmax averaged over the stored flip copies."""
    head.eval().to(runtime.device)
    dataset = FusionDataset(views, rows, None, "all")
    shard = range(runtime.rank, len(dataset), runtime.world)  # every product once over the ranks
    loader = DataLoader(dataset, batch_size=cfg.eval_batch_size, sampler=shard, collate_fn=collate_views, num_workers=cfg.num_workers)
    scale = torch.from_numpy(views.scale).to(runtime.device)
    parts = []
    for raw in tqdm(loader, desc=f"predict {cfg.name}", leave=False, disable=not runtime.is_main):
        x, mask = raw["features"].to(runtime.device).float() * scale, raw["mask"].to(runtime.device)
        with autocast(cfg, runtime):
            p = sum(head(x[:, f], mask).float().softmax(1) for f in range(x.shape[1])) / x.shape[1]
        keep = mask.any(1)  # a product with no decodable image gets no row (the submission falls back)
        top = p[keep].topk(min(cfg.topk, p.shape[1]), dim=1)
        pos = raw["pos"][keep.cpu()].numpy()
        parts.append(TopK(np.asarray(ids[rows[pos]], np.int64), top.indices.cpu().numpy().astype(np.int16), top.values.cpu().numpy().astype(np.float16)))
    k = min(cfg.topk, head.num_classes)
    local = concat_topk(parts) if parts else TopK(np.zeros(0, np.int64), np.zeros((0, k), np.int16), np.zeros((0, k), np.float16))
    return gather_topk(runtime, local)


def run_fold(cfg: FuseConfig, data: FoldData, work, fold: int, runtime: Runtime, resume: bool) -> None:
    out = begin_fold(cfg, work, fold, runtime)
    if out is None:
        return
    train_views = open_views(work, cfg, fold, "train", data.train.index.n_imgs)
    test_views = open_views(work, cfg, fold, "test", data.test.index.n_imgs)
    train_rows, val_rows = data.rows(fold)
    train_rows = np.intersect1d(train_rows, train_views.rows)  # the products the base nets stored
    val_rows = val_rows[data.train.index.n_imgs[val_rows] > 0]
    missing = np.setdiff1d(val_rows, train_views.rows)
    if len(missing):
        raise DataError(f"fold {fold}: {len(missing)} validation products have no stored features in {[str(s.dir) for s in train_views.stores]}")
    head = create_head(cfg.model, train_views.dim, len(data.tree), hidden=cfg.hidden, gate_reduction=cfg.gate_reduction, drop_rate=cfg.drop_rate)
    to_batch = views_batch(train_views.scale)
    result = fit(cfg, head, FusionDataset(train_views, train_rows, data.labels[train_rows], "random"),
                 FusionDataset(train_views, val_rows, data.labels[val_rows], "orig"), collate_views, to_batch, out, runtime, resume)
    head.load_state_dict(load_checkpoint(result.last)["model"])
    oof = predict_views(head, train_views, data.train.index.ids, val_rows, cfg, runtime)
    test = predict_views(head, test_views, data.test.index.ids, data.test_rows, cfg, runtime)
    finish_fold(out, oof, test, runtime)
