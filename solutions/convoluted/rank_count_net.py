"""2nd place, member C as recorded (outrunner/Train_a3.py, Predict.ipynb, Ensemble.ipynb): whole
networks fine-tuned per image rank (the first image; images 2-4) and per image count (products
with exactly 1, 2, 3, 4 images) from the member's own base net, each image predicted on 12, 8, 6
or 6 random zoom-crops (1, 2, 3, 4-image products; half of them mirrored), then per image
p = rank model + count model + w x base (w = 1 for a 1-image product, 0.1 otherwise), and a
geometric mean over the product's images.

The full-profile option (`stage: rank_count_net`); the mini default keeps the frozen-trunk
variant (rank_count.py: classifiers on stored features, seconds instead of six trainings).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from common.augment import zoom_crop
from common.config import TrainConfig
from common.data import ImageDataset, ImageTable, collate_images, image_table
from common.errors import DataError
from common.infer import Items, predict
from common.models import normalization
from common.predictions import TopK
from common.recipe import FoldJob, FoldOutput, build_model, load_trained, start_from_recipe, validation_sample
from common.train import Batch, Runtime, eval_loader, fit, image_batch, train_loader

from .base import ranks_in_batch
from .rank_count import COUNT_MODELS, RANK_MODELS, probs_by_route


@dataclass
class RankCountNetConfig(TrainConfig):
    solution: str = "convoluted"
    stage: str = "rank_count_net"
    rank_weight: float = 1.0
    count_weight: float = 1.0
    base_weight: float = 0.1  # a product of 2-4 images: rank + count + 0.1 x base
    aggregate: str = "geomean"
    team_weight: float = 0.0
    tta_crops: list[int] = field(default_factory=lambda: [12, 8, 6, 6])  # random zoom-crops per image, by the product's image count
    max_zoom: float = 203 / 171  # the crops' zoom range (the training augment's, zoom_crop)
    single_base_weight: float = 1.0  # a 1-image product: rank1 + count1 + 1.0 x base (Ensemble.ipynb)
    optimizer: str = "sgd"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.init_from or len(self.tta_crops) != 4 or min(self.tta_crops) < 1:
            raise DataError(f"rank_count_net recipe {self.name}: needs init_from (the member's base recipe) and tta_crops for 1-4 images")

    def requires(self) -> list[str]:
        return [self.init_from]


def table_subset(table: ImageTable, keep: np.ndarray) -> ImageTable:
    return ImageTable(table.product_row[keep], table.rank[keep], table.product_pos[keep])


def selections(table: ImageTable, n_imgs: np.ndarray) -> dict[str, np.ndarray]:
    """Which images each specialist trains on: rank1 the first images, rank2_4 the later ones,
    countK every image of the products with K images (4: four or more)."""
    counts = np.clip(np.asarray(n_imgs)[table.product_row], 1, 4)
    out = {"rank1": table.rank == 0, "rank2_4": table.rank > 0}
    out |= {f"count{k}": counts == k for k in range(1, 5)}
    return out


def train_specialists(job: FoldJob, base: nn.Module) -> dict[str, nn.Module]:
    """A copy of the base net per rank / count, the whole net fine-tuned on its own images."""
    cfg, data, runtime = job.cfg, job.data, job.runtime
    train_rows, val_rows = job.rows
    val_rows = validation_sample(val_rows, cfg)
    n_imgs = data.train.index.n_imgs
    train_t, val_t = image_table(n_imgs, train_rows), image_table(n_imgs, val_rows)
    to_batch = image_batch(*normalization(base), cfg.channels_last, cfg.input_size)
    models, val_selections = {}, selections(val_t, n_imgs)
    for name, keep in selections(train_t, n_imgs).items():
        model, val_keep = copy.deepcopy(base), val_selections[name]
        if keep.any():
            train = ImageDataset(data.train, table_subset(train_t, keep), data.labels[train_rows], cfg.input_size, hflip=cfg.hflip)
            val = ImageDataset(data.train, table_subset(val_t, val_keep), data.labels[val_rows], cfg.input_size) if val_keep.any() else None
            model = fit(cfg, model, train_loader(train, cfg, runtime, collate_images),
                        eval_loader(val, cfg, runtime, collate_images) if val is not None else None, to_batch, job.out / name, runtime)
        models[name] = model.eval()
    return models


class MemberC(nn.Module):
    """Per image the rank model + the count model + w x base over its random zoom-crops (mean of
    their probabilities); returns the log, so the driver's softmax and geometric mean per product
    give the team's combination."""

    def __init__(self, specialists: dict[str, nn.Module], base: nn.Module, cfg: RankCountNetConfig):
        super().__init__()
        self.ranks = nn.ModuleList(specialists[m] for m in RANK_MODELS)
        self.counts = nn.ModuleList(specialists[m] for m in COUNT_MODELS)
        self.base, self.cfg, self.num_classes = base, cfg, base.num_classes

    def combined(self, x: torch.Tensor, rank_i: torch.Tensor, count_i: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        wb = torch.where(count_i == 0, c.single_base_weight, c.base_weight).to(x.device)[:, None]
        p = wb * self.base(x).float().softmax(1) + c.rank_weight * probs_by_route(self.ranks, rank_i, x)
        return (p + c.count_weight * probs_by_route(self.counts, count_i, x)) / (c.rank_weight + c.count_weight + wb)

    def forward(self, x: torch.Tensor, rank_i: torch.Tensor, count_i: torch.Tensor) -> torch.Tensor:
        crops = torch.tensor(self.cfg.tta_crops, device=x.device)[count_i]
        total = torch.zeros(x.shape[0], self.num_classes, device=x.device)
        for i in range(int(crops.max())):
            sel = crops > i
            flip = torch.full((int(sel.sum()),), i % 2 == 1, device=x.device)  # every other crop mirrored
            total[sel] += self.combined(zoom_crop(x[sel], self.cfg.max_zoom, flip), rank_i[sel], count_i[sel])
        return (total / crops[:, None]).clamp_min(1e-12).log()


def routed_batch(mean, std, channels_last: bool, size: int):
    """image_batch plus each image's rank / count index (batches hold whole products in order)."""
    plain = image_batch(mean, std, channels_last, size)

    def to_batch(raw: dict, runtime: Runtime) -> Batch:
        batch = plain(raw, runtime)
        pos = raw["pos"].numpy()
        _, inverse, per_product = np.unique(pos, return_inverse=True, return_counts=True)
        counts = per_product[inverse]
        rank_i, count_i = (torch.from_numpy(a).to(runtime.device) for a in ((ranks_in_batch(pos) > 0).astype(np.int64), np.clip(counts, 1, 4) - 1))
        return Batch((batch.inputs, rank_i, count_i), batch.target, batch.ok)

    return to_batch


def predict_member(net: MemberC, reader, rows: np.ndarray, cfg: RankCountNetConfig, runtime: Runtime, desc: str) -> TopK:
    n_imgs = reader.index.n_imgs
    dataset = ImageDataset(reader, image_table(n_imgs, rows), None, cfg.input_size)
    return predict(net, dataset, collate_images, Items.images(reader.index.ids[rows], n_imgs[rows]),
                   routed_batch(*normalization(net.base), cfg.channels_last, cfg.input_size), cfg, runtime,
                   views={"orig": lambda inputs: inputs}, desc=desc)


def member_base(job: FoldJob) -> nn.Module:
    cfg = job.cfg
    if list(cfg.tta) != ["orig"]:
        raise DataError(f"rank_count_net recipe {cfg.name}: its TTA is tta_crops (mirrored crops included): set tta: [orig]")
    base = build_model(cfg, job.num_classes)
    start_from_recipe(base, job)
    return base


def member_test(job: FoldJob, net: MemberC) -> TopK:
    torch.manual_seed(job.cfg.seed * 1000 + job.fold)  # the random TTA crops drawn alike whenever the fold predicts test products
    return predict_member(net, job.data.test, job.data.test_rows, job.cfg, job.runtime, "test")


def rank_count_net_fold(job: FoldJob) -> FoldOutput:
    base = member_base(job)
    specialists = train_specialists(job, base)  # each specialist trains a copy
    net = MemberC(specialists, base.eval(), job.cfg).to(job.runtime.device)
    _, val_rows = job.rows
    return FoldOutput(predict_member(net, job.data.train, val_rows, job.cfg, job.runtime, "oof"), member_test(job, net))


def rank_count_net_load_test(job: FoldJob) -> MemberC:
    """The trained specialists (one with no images in the fold stayed the base: no <name>/last.pt) and the base they started from."""
    base = member_base(job).eval()
    paths = {name: job.out / name / "last.pt" for name in RANK_MODELS + COUNT_MODELS}
    specialists = {name: load_trained(copy.deepcopy(base), p) if p.exists() else base for name, p in paths.items()}
    return MemberC(specialists, base, job.cfg).to(job.runtime.device)
