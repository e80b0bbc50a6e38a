"""The one inference driver: whole products in, sorted top-K per product out, the same on 1 or N ranks.

Every predicting stage (dylan's images, bestfitting's composed products, the 2nd place's base nets,
fusion heads and rank / count specialists) goes through `predict`. It owns
  - batching by whole products: a product's items (its images, or the product itself) never
    straddle two batches, so each batch reduces to complete products and nothing dense outlives it;
    products of one batch may be required to share a key (bestfitting: the image count K);
  - sharding over DDP ranks: each rank takes a contiguous block of products, none dropped, none
    repeated (ranks may run different numbers of batches: nothing here is collective but the gather);
  - TTA: the softmax averaged over the recipe's views (`cfg.tta`), a view being a function of the
    batch inputs (`VIEWS`: the identity and a flip of the last axis, which mirrors an image, or each
    tile of a product in place; a solution may name its own, e.g. stored flip copies);
  - aggregation of a product's items (mean or geometric mean of its usable ones), top-K, and the
    gather of the ranks' parts into one file sorted by _id.
A solution supplies its dataset (items carry `pos`, their product's position), its batch function
(raw batch -> Batch(inputs, target, ok)) and its model, whose output is softmaxed (a model that
combines probabilities itself returns their log).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from .config import TrainConfig
from .data import ImageDataset, collate_images, image_table
from .bson_reader import BsonReader
from .errors import SkipLog
from .predictions import TopK, concat_topk
from .progress import track
from .train import Batch, BatchFn, Runtime, autocast, forward, image_batch

View = Callable[[torch.Tensor | tuple], torch.Tensor | tuple]
VIEWS: dict[str, View] = {
    "orig": lambda x: x,
    "hflip": lambda x: torch.flip(x, dims=[-1]),  # an image [N, C, H, W] or each tile of [B, K, C, H, W], in place
}


@dataclass
class Items:
    """How the dataset's items map to the products to predict: product p owns `n_items[p]`
    consecutive items; `ids[p]` is its _id; `cost[p]` counts against the batch budget (default:
    its items); products of one batch share `key[p]` when a key is given."""

    ids: np.ndarray
    n_items: np.ndarray
    cost: np.ndarray | None = None
    key: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def images(cls, ids: np.ndarray, n_imgs: np.ndarray) -> "Items":
        return cls(np.asarray(ids, np.int64), np.clip(np.asarray(n_imgs, np.int64), 0, None))

    @classmethod
    def products(cls, ids: np.ndarray, cost: np.ndarray | None = None, key: np.ndarray | None = None) -> "Items":
        return cls(np.asarray(ids, np.int64), np.ones(len(ids), np.int64), cost, key)


def shard(n: int, rank: int, world: int) -> np.ndarray:
    """This rank's products: a contiguous block; the blocks of all ranks cover 0..n-1 once."""
    bounds = np.linspace(0, n, world + 1).round().astype(np.int64)
    return np.arange(bounds[rank], bounds[rank + 1])


def product_batches(items: Items, budget: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """Item indices per batch for this rank: whole products, cost <= budget (a product costing more
    is a batch alone), one key per batch."""
    start = np.r_[0, np.cumsum(items.n_items)]
    cost = np.asarray(items.n_items if items.cost is None else items.cost, np.int64)  # int64: the index's n_imgs is int16
    mine = shard(len(items), rank, world)
    if items.key is not None:
        mine = mine[np.argsort(np.asarray(items.key)[mine], kind="stable")]
    batches, current, spent, key = [], [], 0, None
    for p in mine.tolist():
        k = None if items.key is None else items.key[p]
        if current and (spent + cost[p] > budget or k != key):
            batches.append(current)
            current, spent = [], 0
        current.extend(range(start[p], start[p + 1]))
        spent, key = spent + int(cost[p]), k
    if current:
        batches.append(current)
    return batches


class ListSampler(Sampler):
    def __init__(self, batches: list[list[int]]):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def aggregate(probs: torch.Tensor, groups: torch.Tensor, valid: torch.Tensor, how: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group (product): arithmetic or geometric mean of its valid items' probabilities.

    Returns (group ids with at least one valid item, their probabilities [G, C])."""
    groups, probs = groups[valid], probs[valid]
    uniq, inverse = torch.unique(groups, return_inverse=True)
    counts = torch.bincount(inverse, minlength=len(uniq)).clamp_min(1).unsqueeze(1).float()
    if how == "mean":
        return uniq, torch.zeros(len(uniq), probs.shape[1], device=probs.device).index_add_(0, inverse, probs) / counts
    if how == "geomean":
        logs = torch.zeros(len(uniq), probs.shape[1], device=probs.device).index_add_(0, inverse, probs.clamp_min(1e-8).log())
        return uniq, (logs / counts).softmax(1)  # exp(mean log p), renormalised
    raise ValueError(f"unknown aggregation {how!r}: mean or geomean")


def tta_probs(model: nn.Module, inputs, views: list[str], table: dict[str, View], cfg: TrainConfig, runtime: Runtime) -> torch.Tensor:
    """Mean softmax over the TTA views."""
    unknown = set(views) - set(table)
    if unknown:
        raise ValueError(f"unknown TTA views {sorted(unknown)}; choose from {sorted(table)}")
    total = None
    for view in views:
        with autocast(cfg, runtime):
            p = forward(model, table[view](inputs)).float().softmax(1)
        total = p if total is None else total + p
    return total / len(views)


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, collate: Callable, items: Items, to_batch: BatchFn, cfg: TrainConfig, runtime: Runtime,
            views: dict[str, View] = VIEWS, desc: str = "predict",
            after_batch: Callable[[dict, Batch], None] | None = None) -> TopK:
    """Top-K per product with at least one usable item, sorted by _id, every rank getting the whole."""
    model.eval().to(runtime.device)
    batches = product_batches(items, cfg.eval_batch_size, runtime.rank, runtime.world)
    loader = DataLoader(dataset, batch_sampler=ListSampler(batches), collate_fn=collate, num_workers=cfg.num_workers, pin_memory=runtime.cuda)
    parts, skips = [], SkipLog(f"{desc} {cfg.name}" + (f" (rank {runtime.rank})" if runtime.distributed else ""))
    for raw in track(loader, f"{desc} {cfg.name}", enabled=runtime.is_main, unit="batch"):
        batch = to_batch(raw, runtime)
        p = tta_probs(model, batch.inputs, cfg.tta, views, cfg, runtime)
        if after_batch is not None:
            after_batch(raw, batch)
        bad = (~batch.ok).cpu().numpy()
        if bad.any():
            ids = items.ids[raw["pos"].numpy()[bad]]
            skips.add_ids("unusable_input", f"{int(bad.sum())} inputs could not be used (undecodable images, no stored view) and were "
                          f"left out of their products, e.g. _id {int(ids[0])}", ids)
        pos, agg = aggregate(p, raw["pos"].to(runtime.device), batch.ok, cfg.aggregate)
        top = agg.topk(min(cfg.topk, agg.shape[1]), dim=1)
        parts.append(TopK(items.ids[pos.cpu().numpy()], top.indices.cpu().numpy().astype(np.int16), top.values.cpu().numpy().astype(np.float16)))
    preds = concat_topk(parts, min(cfg.topk, getattr(model, "num_classes", cfg.topk)))
    unpredicted = np.setdiff1d(items.ids[shard(len(items), runtime.rank, runtime.world)], preds.ids)
    if len(unpredicted):
        skips.add_ids("no_usable_input", f"{len(unpredicted)} products have no usable input (no image, or none decodable): no prediction, "
                      f"the fallback label in a submission", unpredicted[: skips.max_ids], count=len(unpredicted))
    skips.report()
    return gather_topk(runtime, preds)


def predict_images(model: nn.Module, reader: BsonReader, rows: np.ndarray, cfg: TrainConfig, runtime: Runtime, mean, std,
                   after_batch: Callable[[dict, Batch], None] | None = None, desc: str = "predict") -> TopK:
    """A single-image classifier over the products at index `rows`: every image, TTA, a product =
    the mean (or geometric mean) of its decodable images."""
    rows = np.asarray(rows)
    dataset = ImageDataset(reader, image_table(reader.index.n_imgs, rows), None, cfg.input_size, device_decode=cfg.decode_on == "device",
                           crop=cfg.crop)  # the centre window
    items = Items.images(reader.index.ids[rows], reader.index.n_imgs[rows])
    return predict(model, dataset, collate_images, items, image_batch(mean, std, cfg.channels_last, cfg.input_size), cfg, runtime,
                   desc=desc, after_batch=after_batch)


def gather_topk(runtime: Runtime, preds: TopK) -> TopK:
    """Join the ranks' disjoint predictions (every rank gets the whole, sorted by _id)."""
    if not runtime.distributed:
        return preds
    gathered = [None] * runtime.world
    dist.all_gather_object(gathered, (preds.ids, preds.labels, preds.probs))  # in-memory exchange within one job
    return concat_topk([TopK(*g) for g in gathered], preds.k)
