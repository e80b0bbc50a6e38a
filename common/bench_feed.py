"""What the GPU benchmark (bench/bench_gpu.py) feeds a recipe's network, as the trainer does: the
recipe kind registers it (RecipeKind.bench_feed); the single-image feed (dylan, the 2nd place's
base nets) lives here, bestfitting's composed one in its solution."""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterator

import numpy as np
import torch

from .bson_reader import BsonReader
from .data import ImageDataset, collate_images, image_table
from .throughput import N_CLASSES
from .train import Batch, Runtime, eval_loader, image_batch, train_loader


@dataclasses.dataclass
class BenchData:
    reader: BsonReader
    rows: np.ndarray
    labels: np.ndarray  # per product, 0..35 (the sample's categories)
    images: int



@dataclasses.dataclass
class Feed:
    model: torch.nn.Module
    train: Callable[[], Iterator[dict]]  # raw loader batches (a new pass each call)
    infer: Callable[[], Iterator[dict]]
    to_batch: Callable  # raw -> Batch
    synthetic: Callable[[int, bool], Batch]  # (step, train) -> a batch made on the device


def synthetic_images(n: int, size: int, runtime: Runtime, channels_last: bool) -> torch.Tensor:
    x = torch.randn(n, 3, size, size, device=runtime.device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and runtime.cuda else x


def target(n: int, runtime: Runtime) -> torch.Tensor:
    return torch.randint(0, N_CLASSES, (n,), device=runtime.device)


def image_feed(cfg, data: BenchData, runtime: Runtime) -> Feed:
    """dylan, the 2nd place's base nets and its whole-net specialists: single images through
    ImageDataset (the crop window a recipe trains on included)."""
    from .models import normalization
    from .recipe import build_model

    model = build_model(cfg, N_CLASSES)
    table = image_table(data.reader.index.n_imgs, data.rows)
    decode = cfg.decode_on == "device"
    train_set = ImageDataset(data.reader, table, data.labels, cfg.input_size, hflip=cfg.hflip, device_decode=decode, crop=cfg.crop, random_crop=True)
    eval_set = ImageDataset(data.reader, table, data.labels, cfg.input_size, device_decode=decode, crop=cfg.crop)

    def synthetic(step: int, train: bool) -> Batch:
        n = cfg.batch_size if train else cfg.eval_batch_size
        x = synthetic_images(n, cfg.crop or cfg.input_size, runtime, cfg.channels_last)  # what the network sees
        return Batch(x, target(n, runtime), torch.ones(n, dtype=torch.bool, device=runtime.device))

    return Feed(model, lambda: iter(train_loader(train_set, cfg, runtime, collate_images)), lambda: iter(eval_loader(eval_set, cfg, runtime, collate_images)),
                image_batch(*normalization(model), cfg.channels_last, cfg.input_size), synthetic)
