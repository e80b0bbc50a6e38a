"""Batches of products that share an image count K, composed into one input per product."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from common.data import collate_products, normalize_on_device
from common.train import Batch, Runtime

MAX_K = 4


def image_count(n_imgs: np.ndarray) -> np.ndarray:
    """The K a product is routed by: its number of images, capped at 4 (its first 4 are used)."""
    return np.clip(np.asarray(n_imgs), 1, MAX_K)


class ByCountBatchSampler(Sampler):
    """Batches of (index, sample seed) whose products all have the same K.

    A batch holds about `batch_images` tiles (batch_images // K products), so memory per batch is
    the same for every K. Shuffled from (seed, epoch) when training; sharded over DDP ranks with
    the same number of batches per rank.
    """

    def __init__(self, counts: np.ndarray, batch_images: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world: int = 1,
                 max_images: int = 0):
        self.counts, self.batch_images, self.seed, self.shuffle = np.asarray(counts), batch_images, seed, shuffle
        self.rank, self.world, self.epoch, self.max_images = rank, world, 0, max_images

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[tuple[int, int]]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = []
        for k in np.unique(self.counts):
            items = np.flatnonzero(self.counts == k)
            if self.shuffle:
                items = rng.permutation(items)
            seeds = rng.integers(0, 2**62, size=len(items))
            per_batch = max(1, self.batch_images // int(k))
            for start in range(0, len(items), per_batch):
                batch = list(zip(items[start : start + per_batch].tolist(), seeds[start : start + per_batch].tolist()))
                if len(batch) > 1 or not self.shuffle or per_batch == 1:  # training: a lone product breaks BatchNorm
                    batches.append(batch)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        if self.max_images > 0:  # a fixed-size epoch of about max_images tiles (mini budgets)
            tiles = np.cumsum([len(b) * int(self.counts[b[0][0]]) for b in batches])
            batches = batches[: int(np.searchsorted(tiles, self.max_images)) + 1]
        per_rank = len(batches) // self.world if self.world > 1 else len(batches)
        return batches[self.rank :: self.world][:per_rank]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())


def collate_same_count(batch: list) -> dict[str, torch.Tensor]:
    """Stack products of one K without padding (collate_products pads to the batch's K)."""
    return collate_products(batch, max_views=min(len(batch[0][0]), MAX_K))


def tiles_batch(mean, std):
    """Raw products of one K -> normalised tiles [B, K, C, S, S] on the device (the network
    composes them: see layout.ComposedNet); usable = at least one decodable tile."""

    def to_batch(raw: dict, runtime: Runtime) -> Batch:
        pixels = raw["pixels"].to(runtime.device, non_blocking=True)
        b, k, c, h, w = pixels.shape
        tiles = normalize_on_device(pixels.reshape(b * k, c, h, w), mean, std).reshape(b, k, c, h, w)
        return Batch(tiles, raw["label"].to(runtime.device, non_blocking=True), raw["mask"].to(runtime.device).any(1))

    return to_batch
