"""2nd place, members A and B: fusion heads trained from scratch on stored base-net features.

Per fold k: features of the training products (from the base nets of fold k) -> a head over the
product's 4 padded views; it predicts fold k and test from the same nets' features. The stored
flip copy is a training augmentation (a random copy per view) and a TTA view (mean of both).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

from common.config import TrainConfig
from common.errors import DataError
from common.infer import Items, predict
from common.predictions import TopK
from common.recipe import FoldJob, FoldOutput, load_trained
from common.train import Batch, Runtime, eval_loader, fit, train_loader

from .feature_store import MAX_VIEWS, FeatureStore, dequantise
from .heads import create_head


@dataclass
class FuseConfig(TrainConfig):
    solution: str = "convoluted"
    stage: str = "fuse"
    model: str = "fusion_gated"  # a head of solutions.convoluted.heads.HEADS
    bases: list[str] = field(default_factory=list)  # base recipes whose features are concatenated
    hidden: int = 2048
    hidden2: int = 0  # the gated head's second hidden layer (0 = hidden)
    gate_reduction: int = 16
    drop_rate: float = 0.5
    hidden_drop: float = 0.0  # dropout after each hidden layer of the gated head
    activation: str = "relu"  # the max head's per-view activation: relu | selu | prelu
    input_drop: float = -1.0  # the max head's dropout on the input views (-1 = drop_rate)
    flips: str = "augment"  # augment: a random stored copy per view in training, the mean over copies as TTA; concat: the copies side by side
    optimizer: str = "adam"
    lr: float = 1e-3
    num_workers: int = 0  # items are memmap reads: loader processes rarely pay off
    team_weight: float = 0.0  # weight in the team's sqrt blend (0 = not a member)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.flips not in FLIPS:
            raise DataError(f"fuse recipe {self.name}: flips={self.flips!r}, choose from {list(FLIPS)}")
        if self.flips == "concat" and list(self.tta) != ["orig"]:
            raise DataError(f"fuse recipe {self.name}: flips=concat reads every stored copy at once: tta must be [orig], not {self.tta}")

    def requires(self) -> list[str]:
        return list(self.bases)


FLIPS = ("augment", "concat")


def head_for(cfg: FuseConfig, dim: int, copies: int, num_classes: int) -> torch.nn.Module:
    """The recipe's head over `dim` base features per copy; under flips=concat a view is its
    `copies` stored copies side by side (the team's [f, flip(f)] input: fuse_train_fcnet3.py)."""
    in_dim = dim * copies if cfg.flips == "concat" else dim
    return create_head(cfg.model, in_dim, num_classes, hidden=cfg.hidden, hidden2=cfg.hidden2, gate_reduction=cfg.gate_reduction,
                       drop_rate=cfg.drop_rate, hidden_drop=cfg.hidden_drop, activation=cfg.activation, input_drop=cfg.input_drop)


class StoredViews:
    """Several base nets' stores of one split, read together by product (features concatenated)."""

    def __init__(self, stores: list[FeatureStore], n_imgs: np.ndarray):
        views = {tuple(s.meta.views) for s in stores}
        if len(views) != 1:
            raise DataError(f"feature stores {[str(s.dir) for s in stores]} hold different views {sorted(views)}")
        self.stores, self.n_imgs = stores, np.asarray(n_imgs)
        self.offsets = [s.check_index(n_imgs) for s in stores]
        self.views = list(views.pop())
        self.dim = sum(s.meta.dim for s in stores)
        self.clip = np.concatenate([np.full(s.meta.dim, s.meta.clip, np.float32) for s in stores])  # per feature
        self.rows = stores[0].rows
        for s in stores[1:]:
            self.rows = np.intersect1d(self.rows, s.rows)

    def read(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(uint8[B, V, views, D], mask[B, V]): a view counts when every base net decoded it."""
        parts = [s.views(off, self.n_imgs, rows) for s, off in zip(self.stores, self.offsets)]
        return np.concatenate([p[0] for p in parts], axis=-1), np.logical_and.reduce([p[1] for p in parts])


class FusionDataset(Dataset):
    """Item = (uint8 features, mask[V], label, position). `copies`: "random" (one stored copy per
    view, drawn from the sample seed), "orig", "all" ([copies, V, D], the TTA views) or "concat"
    ([V, copies x D]: every copy of a view side by side)."""

    def __init__(self, views: StoredViews, rows: np.ndarray, labels: np.ndarray | None, copies: str):
        self.views, self.rows, self.labels, self.copies = views, np.asarray(rows), labels, copies

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item):
        i, seed = item if isinstance(item, tuple) else (item, 0)
        feats, mask = self.views.read(self.rows[i : i + 1])
        feats, mask = feats[0], mask[0]  # [V, copies, D], [V]
        if self.copies == "all":
            x = feats.transpose(1, 0, 2)
        elif self.copies == "concat":
            x = feats.reshape(feats.shape[0], -1)
        elif self.copies == "random":
            pick = np.random.default_rng(seed).integers(0, feats.shape[1], MAX_VIEWS)
            x = feats[np.arange(MAX_VIEWS), pick]
        else:
            x = feats[:, 0]
        label = -1 if self.labels is None else int(self.labels[i])
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(mask), label, i


def collate_views(batch: list) -> dict:
    x, mask, label, pos = zip(*batch)
    return {"features": torch.stack(x), "mask": torch.stack(mask), "label": torch.tensor(label), "pos": torch.tensor(pos)}


def views_batch(clip: np.ndarray):
    """uint8 features -> float on the device; inputs = (x, mask) for the head; usable = some view."""
    clip_t = torch.from_numpy(clip)

    def to_batch(raw: dict, runtime: Runtime) -> Batch:
        x = dequantise(raw["features"].to(runtime.device, non_blocking=True), clip_t.to(runtime.device))
        mask = raw["mask"].to(runtime.device)
        return Batch((x, mask), raw["label"].to(runtime.device), mask.any(1))

    return to_batch


def copy_views(stored: list[str]) -> dict:
    """TTA views over the stored copies (one per base-net TTA view): inputs whose first tensor has
    the copies on axis 1 (x [B, copies, ...], then the head's other arguments) -> (x[:, i], ...)."""
    return {name: (lambda inputs, i=i: (inputs[0][:, i], *inputs[1:])) for i, name in enumerate(stored)}


def open_views(job: FoldJob, split: str, n_imgs: np.ndarray) -> StoredViews:
    cfg = job.cfg
    if not cfg.bases:
        raise DataError(f"fuse recipe {cfg.name}: `bases` lists no base recipe")
    views = StoredViews([FeatureStore(job.work.features(cfg.solution, b, job.fold), split) for b in cfg.bases], n_imgs)
    if set(cfg.tta) - set(views.views):
        raise DataError(f"fuse recipe {cfg.name}: tta {cfg.tta} needs views the base nets did not store ({views.views})")
    return views


def predict_views(head: torch.nn.Module, views: StoredViews, ids: np.ndarray, rows: np.ndarray, job: FoldJob, desc: str) -> TopK:
    """Top-K per product: the head's softmax averaged over the stored copies named in cfg.tta
    (under flips=concat one pass over the copies side by side)."""
    if job.cfg.flips == "concat":
        return predict(head, FusionDataset(views, rows, None, "concat"), collate_views, Items.products(ids[rows]),
                       views_batch(np.tile(views.clip, len(views.views))), job.cfg, job.runtime, views={"orig": lambda inputs: inputs}, desc=desc)
    return predict(head, FusionDataset(views, rows, None, "all"), collate_views, Items.products(ids[rows]), views_batch(views.clip),
                   job.cfg, job.runtime, views=copy_views(views.views), desc=desc)


def fuse_fold(job: FoldJob) -> FoldOutput:
    cfg, data = job.cfg, job.data
    train_views, test_views = open_views(job, "train", data.train.index.n_imgs), open_views(job, "test", data.test.index.n_imgs)
    train_rows, val_rows = job.rows
    train_rows = np.intersect1d(train_rows, train_views.rows)  # the products the base nets stored
    val_rows = val_rows[data.train.index.n_imgs[val_rows] > 0]
    missing = np.setdiff1d(val_rows, train_views.rows)
    if len(missing):
        raise DataError(f"fold {job.fold}: {len(missing)} validation products have no stored features in {[str(s.dir) for s in train_views.stores]}")
    copies = len(train_views.views)
    head = head_for(cfg, train_views.dim, copies, job.num_classes)
    concat = cfg.flips == "concat"
    train = train_loader(FusionDataset(train_views, train_rows, data.labels[train_rows], "concat" if concat else "random"), cfg, job.runtime, collate_views)
    val = eval_loader(FusionDataset(train_views, val_rows, data.labels[val_rows], "concat" if concat else "orig"), cfg, job.runtime, collate_views)
    head = fit(cfg, head, train, val, views_batch(np.tile(train_views.clip, copies) if concat else train_views.clip), job.out, job.runtime)
    return FoldOutput(predict_views(head, train_views, data.train.index.ids, val_rows, job, "oof"), fuse_test(job, head, test_views))


def fuse_test(job: FoldJob, head: torch.nn.Module, test_views: StoredViews) -> TopK:
    return predict_views(head, test_views, job.data.test.index.ids, job.data.test_rows, job, "test")


def fuse_load_test(job: FoldJob) -> torch.nn.Module:
    """The trained head, shaped by the base nets' stored test features of the trained work dir."""
    views = open_views(job, "test", job.data.test.index.n_imgs)
    return load_trained(head_for(job.cfg, views.dim, len(views.views), job.num_classes), job.out / "last.pt").to(job.runtime.device)


def fuse_predict_test(job: FoldJob, head: torch.nn.Module) -> TopK:
    """The head over the base nets' features of job.data's test split (their predict_test stored them under job.work)."""
    return fuse_test(job, head, open_views(job, "test", job.data.test.index.n_imgs))
