"""bestfitting's benchmark feed (RecipeKind.bench_feed; common/bench_feed.py): products of one image
count K per batch, composed on the device, counted in tiles."""
from __future__ import annotations

from typing import Iterator

import torch

from common.bench_feed import BenchData, Feed, target
from common.data import ProductDataset
from common.throughput import N_CLASSES
from common.train import Batch, Runtime, eval_loader, train_loader


def composed_feed(cfg, data: BenchData, runtime: Runtime) -> Feed:
    """bestfitting: products of one K per batch (about batch_size tiles), composed on the device."""
    from common.models import normalization
    from common.recipe import build_model

    from .data import ByCountBatchSampler, collate_same_count, image_count, tiles_batch
    from .layout import ComposedNet

    model = ComposedNet(build_model(cfg, N_CLASSES), cfg.layout, cfg.channels_last)
    counts = image_count(data.reader.index.n_imgs[data.rows])
    train_set = ProductDataset(data.reader, data.rows, data.labels, cfg.input_size, hflip=cfg.hflip)
    eval_set = ProductDataset(data.reader, data.rows, data.labels, cfg.input_size)

    def loader(train: bool) -> Iterator[dict]:
        sampler = ByCountBatchSampler(counts, cfg.batch_size if train else cfg.eval_batch_size, cfg.seed, train)
        make = train_loader if train else eval_loader
        return iter(make(train_set if train else eval_set, cfg, runtime, collate_same_count, sampler))

    def synthetic(step: int, train: bool) -> Batch:
        k = 1 + step % 4
        n = max(2, (cfg.batch_size if train else cfg.eval_batch_size) // k)
        tiles = torch.randn(n, k, 3, cfg.input_size, cfg.input_size, device=runtime.device)
        return Batch(tiles, target(n, runtime), torch.ones(n, dtype=torch.bool, device=runtime.device))

    return Feed(model, lambda: loader(True), lambda: loader(False), tiles_batch(*normalization(model)), synthetic)
