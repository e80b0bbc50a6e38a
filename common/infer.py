"""Inference: TTA, a product's probability from its images', top-K per product, fold averaging.

Nothing dense outlives a batch: batches hold whole products (ProductBatchSampler), so each batch
is aggregated to complete products and reduced to top-K on the device. That is what lets 1.77M
test products x 5270 classes run in constant memory.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .config import TrainConfig
from .data import ImageDataset, ProductBatchSampler, batch_pixels, collate_images, image_table, normalize_on_device
from .bson_reader import BsonReader
from .errors import log
from .predictions import TopK
from .train import Runtime, autocast

TTA: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "orig": lambda x: x,
    "hflip": lambda x: torch.flip(x, dims=[3]),
}


def tta_probs(model: nn.Module, x: torch.Tensor, views: list[str], cfg: TrainConfig, runtime: Runtime) -> torch.Tensor:
    """Mean softmax over the TTA views."""
    unknown = set(views) - set(TTA)
    if unknown:
        raise ValueError(f"unknown TTA views {sorted(unknown)}; choose from {sorted(TTA)}")
    total = None
    for view in views:
        with autocast(cfg, runtime):
            p = model(TTA[view](x)).float().softmax(1)
        total = p if total is None else total + p
    return total / len(views)


def aggregate(probs: torch.Tensor, groups: torch.Tensor, valid: torch.Tensor, how: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group (product): arithmetic or geometric mean of its valid images' probabilities.

    Returns (unique group ids with at least one valid image, their probabilities [G, C]).
    """
    groups, probs = groups[valid], probs[valid]
    uniq, inverse = torch.unique(groups, return_inverse=True)
    counts = torch.bincount(inverse, minlength=len(uniq)).clamp_min(1).unsqueeze(1).float()
    if how == "mean":
        out = torch.zeros(len(uniq), probs.shape[1], device=probs.device).index_add_(0, inverse, probs) / counts
    elif how == "geomean":
        logs = torch.zeros(len(uniq), probs.shape[1], device=probs.device).index_add_(0, inverse, probs.clamp_min(1e-8).log())
        out = (logs / counts).softmax(1)  # exp(mean log p), renormalised
    else:
        raise ValueError(f"unknown aggregation {how!r}: mean or geomean")
    return uniq, out


@torch.no_grad()
def predict_products(model: nn.Module, reader: BsonReader, product_rows: np.ndarray, cfg: TrainConfig, runtime: Runtime, mean, std) -> TopK:
    """Top-K per product (those with at least one decodable image), keyed by product _id."""
    model.eval().to(runtime.device)
    table = image_table(reader.index.n_imgs, product_rows)
    dataset = ImageDataset(reader, table, None, cfg.input_size, device_decode=cfg.decode_on == "device")
    sampler = ProductBatchSampler(table, cfg.eval_batch_size, runtime.rank, runtime.world)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_images, num_workers=cfg.num_workers, pin_memory=runtime.cuda)
    positions, labels, probs, corrupt = [], [], [], 0
    for raw in tqdm(loader, desc=f"predict {cfg.name}", leave=False, disable=not runtime.is_main):
        pixels, ok = batch_pixels(raw, cfg.input_size, runtime.device)
        x = normalize_on_device(pixels, mean, std, cfg.channels_last and runtime.cuda)
        p = tta_probs(model, x, cfg.tta, cfg, runtime)
        corrupt += int((~ok).sum())
        pos, agg = aggregate(p, raw["pos"].to(runtime.device), ok, cfg.aggregate)
        top = agg.topk(min(cfg.topk, agg.shape[1]), dim=1)
        positions.append(pos.cpu().numpy())
        labels.append(top.indices.cpu().numpy().astype(np.int16))
        probs.append(top.values.cpu().numpy().astype(np.float16))
    if corrupt:
        log.warning("%s: %d images could not be decoded and were left out of their products' predictions", reader.path, corrupt)
    k = min(cfg.topk, getattr(model, "num_classes", cfg.topk))
    pos = np.concatenate(positions) if positions else np.zeros(0, np.int64)
    ids = np.asarray(reader.index.ids[np.asarray(product_rows)[pos]], np.int64)
    lab = np.concatenate(labels) if labels else np.zeros((0, k), np.int16)
    pr = np.concatenate(probs) if probs else np.zeros((0, k), np.float16)
    order = np.argsort(ids, kind="stable")
    return gather_topk(runtime, TopK(ids[order], lab[order], pr[order]))


def average_topk(parts: list[TopK], k: int, weights: list[float] | None = None) -> TopK:
    """Weighted mean of sparse top-K predictions (labels absent from a part count as 0).

    Used to average fold models on the test set and models within a solution. Products present
    in only some parts are averaged over the parts that have them.
    """
    weights = weights or [1.0] * len(parts)
    ids = np.unique(np.concatenate([p.ids for p in parts]))
    n_classes = 1 + max(int(p.labels.max()) for p in parts if p.labels.size)
    labels_out = np.full((len(ids), k), -1, np.int16)
    probs_out = np.zeros((len(ids), k), np.float16)
    chunk_rows = 4096  # 4096 x 5270 float32 = 86 MB: the dense block stays small at full scale
    for start in range(0, len(ids), chunk_rows):
        chunk = ids[start : start + chunk_rows]
        acc = np.zeros((len(chunk), n_classes), np.float32)
        wsum = np.zeros(len(chunk), np.float32)
        for part, w in zip(parts, weights):
            rows = np.searchsorted(part.ids, chunk)
            rows = np.clip(rows, 0, max(len(part.ids) - 1, 0))
            present = (part.ids[rows] == chunk) if len(part.ids) else np.zeros(len(chunk), bool)
            r, c = np.nonzero(part.labels[rows[present]] >= 0)
            np.add.at(acc, (np.flatnonzero(present)[r], part.labels[rows[present]][r, c]), w * part.probs[rows[present]][r, c].astype(np.float32))
            wsum += w * present
        acc /= wsum[:, None].clip(1e-12)
        kk = min(k, n_classes)
        top = np.argpartition(-acc, kk - 1, axis=1)[:, :kk]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(acc, top, axis=1), axis=1, kind="stable"), axis=1)
        labels_out[start : start + len(chunk), :kk] = top
        probs_out[start : start + len(chunk), :kk] = np.take_along_axis(acc, top, axis=1)
    return TopK(ids, labels_out, probs_out)


def gather_topk(runtime: Runtime, preds: TopK) -> TopK:
    """Join the ranks' disjoint predictions (every rank gets the whole, sorted by _id)."""
    if not runtime.distributed:
        return preds
    from .predictions import concat_topk

    gathered = [None] * runtime.world
    dist.all_gather_object(gathered, (preds.ids, preds.labels, preds.probs))  # in-memory exchange within one job
    return concat_topk([TopK(*g) for g in gathered if len(g[0])])
