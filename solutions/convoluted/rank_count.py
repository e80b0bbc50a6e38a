"""2nd place, member C: models specialised by image RANK (first image; images 2-4) and by image
COUNT (products with exactly 1, 2, 3, 4 images), fine-tuned from a shared base; per image
p = rank model + count model + 0.1 x base model, then a geometric mean over the product's images.

Our scaled form: the shared base is a base recipe of this solution (its fold-k net), and each
specialist is that net's classifier fine-tuned on the net's stored features of its images (the
trunk frozen). The team fine-tuned whole InceptionResNetV2s; doing that here would cost six more
full trainings per fold. Specialists see only their own images, so they learn what the rank /
count carries (first pictures are packshots, later ones details; a 1-image product differs from
a 4-image one).
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from common.config import TrainConfig
from common.data import image_table
from common.errors import DataError
from common.infer import Items, predict
from common.predictions import TopK
from common.recipe import FoldJob, FoldOutput, load_trained
from common.train import Batch, Runtime, eval_loader, fit, load_checkpoint, train_loader

from .feature_store import FeatureStore, dequantise
from .fuse import copy_views

RANK_MODELS = ("rank1", "rank2_4")
COUNT_MODELS = ("count1", "count2", "count3", "count4")
VARIANTS = {"base": (0.0, 0.0, 1.0), "rank": (1.0, 0.0, 1.0), "count": (0.0, 1.0, 1.0), "rank_count": (1.0, 1.0, 1.0)}  # terms used


def route(ranks: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image: index into RANK_MODELS (first image or not) and into COUNT_MODELS (1..4+ images)."""
    return (np.asarray(ranks) > 0).astype(np.int64), np.clip(np.asarray(counts), 1, 4).astype(np.int64) - 1


@dataclass
class RankCountConfig(TrainConfig):
    solution: str = "convoluted"
    stage: str = "rank_count"
    base: str = ""  # the base recipe whose fold nets and stored features are shared
    rank_weight: float = 1.0
    count_weight: float = 1.0
    base_weight: float = 0.1
    aggregate: str = "geomean"
    optimizer: str = "adam"
    lr: float = 1e-4
    num_workers: int = 0
    team_weight: float = 0.0

    def requires(self) -> list[str]:
        return [self.base]


class StoredImages(Dataset):
    """Item = (uint8 features: one copy [D] (`copies` "random": drawn from the sample seed; "orig")
    or all [copies, D] ("all"), label, product position, ok, rank index, count index)."""

    def __init__(self, store: FeatureStore, n_imgs: np.ndarray, product_rows: np.ndarray, labels: np.ndarray | None, copies: str):
        self.store, self.offsets, self.copies = store, store.check_index(n_imgs), copies
        self.table = image_table(n_imgs, product_rows)
        self.rank_i, self.count_i = route(self.table.rank, np.asarray(n_imgs)[self.table.product_row])
        self.labels = None if labels is None else np.asarray(labels)[self.table.product_pos]

    def subset(self, mask: np.ndarray) -> "StoredImages":
        out = copy.copy(self)
        out.table = dataclasses.replace(self.table, **{f: getattr(self.table, f)[mask] for f in ("product_row", "rank", "product_pos")})
        out.rank_i, out.count_i = self.rank_i[mask], self.count_i[mask]
        out.labels = None if self.labels is None else self.labels[mask]
        return out

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, item):
        i, seed = item if isinstance(item, tuple) else (item, 0)
        feats, ok = self.store.images(self.offsets, self.table.product_row[i : i + 1], self.table.rank[i : i + 1])
        if self.copies == "all":
            x = feats[0]
        else:
            x = feats[0, int(np.random.default_rng(seed).integers(self.store.flips)) if self.copies == "random" else 0]
        label = -1 if self.labels is None else int(self.labels[i])
        return torch.from_numpy(np.ascontiguousarray(x)), label, int(self.table.product_pos[i]), bool(ok[0]), int(self.rank_i[i]), int(self.count_i[i])


def collate_stored(batch: list) -> dict:
    x, label, pos, ok, rank_i, count_i = zip(*batch)
    return {"features": torch.stack(x), "label": torch.tensor(label), "pos": torch.tensor(pos), "ok": torch.tensor(ok),
            "rank_i": torch.tensor(rank_i), "count_i": torch.tensor(count_i)}


def stored_batch(clip: float, routed: bool = False):
    """uint8 features -> float on the device; `routed` inputs carry each image's rank / count index."""

    def to_batch(raw: dict, runtime: Runtime) -> Batch:
        x = dequantise(raw["features"].to(runtime.device), clip)
        inputs = (x, raw["rank_i"].to(runtime.device), raw["count_i"].to(runtime.device)) if routed else x
        return Batch(inputs, raw["label"].to(runtime.device), raw["ok"].to(runtime.device))

    return to_batch


def probs_by_route(models: nn.ModuleList, which: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Each image's softmax from the model its index names."""
    classes = getattr(models[0], "out_features", None) or models[0].num_classes  # a Linear or a whole net
    out = torch.empty(x.shape[0], classes, device=x.device)
    for i, model in enumerate(models):
        sel = which == i
        if sel.any():
            out[sel] = model(x[sel]).float().softmax(1)
    return out


class RankCountNet(nn.Module):
    """Per image the weighted mean of its rank model's, count model's and the base's probabilities;
    returns its log, so the inference driver's softmax gives the mixture back."""

    def __init__(self, specialists: dict[str, nn.Linear], base: nn.Linear, weights: tuple[float, float, float]):
        super().__init__()
        self.ranks = nn.ModuleList(specialists[m] for m in RANK_MODELS)
        self.counts = nn.ModuleList(specialists[m] for m in COUNT_MODELS)
        self.base, self.weights, self.num_classes = base, weights, base.out_features

    def forward(self, x: torch.Tensor, rank_i: torch.Tensor, count_i: torch.Tensor) -> torch.Tensor:
        wr, wc, wb = self.weights
        p = wb * self.base(x).float().softmax(1)
        if wr:
            p = p + wr * probs_by_route(self.ranks, rank_i, x)
        if wc:
            p = p + wc * probs_by_route(self.counts, count_i, x)
        return (p / (wr + wc + wb)).clamp_min(1e-12).log()


def load_base_classifier(path) -> nn.Linear:
    state = load_checkpoint(path)
    linear = nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
    linear.load_state_dict(state)
    return linear


def finetune_specialists(job: FoldJob, store: FeatureStore, base: nn.Linear, train_rows, val_rows) -> dict[str, nn.Linear]:
    """One copy of the base classifier per rank / count, fine-tuned on its own images."""
    cfg, n_imgs, labels = job.cfg, job.data.train.index.n_imgs, job.data.labels
    train = StoredImages(store, n_imgs, train_rows, labels[train_rows], "random")
    val = StoredImages(store, n_imgs, val_rows, labels[val_rows], "orig")
    selectors = {name: (train.rank_i == i, val.rank_i == i) for i, name in enumerate(RANK_MODELS)}
    selectors |= {name: (train.count_i == i, val.count_i == i) for i, name in enumerate(COUNT_MODELS)}
    models = {}
    for name, (tsel, vsel) in selectors.items():
        model = copy.deepcopy(base)
        if tsel.any() and vsel.any():
            model = fit(cfg, model, train_loader(train.subset(tsel), cfg, job.runtime, collate_stored),
                        eval_loader(val.subset(vsel), cfg, job.runtime, collate_stored), stored_batch(store.meta.clip), job.out / name, job.runtime)
        models[name] = model
    return models


def predict_combined(net: RankCountNet, store: FeatureStore, reader, rows: np.ndarray, cfg: RankCountConfig, runtime: Runtime, desc: str) -> TopK:
    """The products at index `rows`: every stored image through the net, copies averaged, a geometric mean per product."""
    n_imgs = reader.index.n_imgs
    return predict(net, StoredImages(store, n_imgs, rows, None, "all"), collate_stored, Items.images(reader.index.ids[rows], n_imgs[rows]),
                   stored_batch(store.meta.clip, routed=True), cfg, runtime, views=copy_views(store.meta.views), desc=desc)


def variant_counts(job: FoldJob, specialists, base, store, val_rows, oof: TopK) -> dict:
    """Correct OOF top-1 of each combination (base alone vs + rank / count), for the report."""
    one = dataclasses.replace(job.cfg, topk=1)
    out = {}
    for variant, (r, c, b) in VARIANTS.items():
        w = (job.cfg.rank_weight * r, job.cfg.count_weight * c, job.cfg.base_weight * b)
        p = oof if variant == "rank_count" else predict_combined(RankCountNet(specialists, base, w), store, job.data.train, val_rows, one,
                                                                  job.runtime, f"oof {variant}")
        truth = job.data.labels[job.data.train.index.positions_of(p.ids)]
        out[variant] = {"correct": int((p.top1 == truth).sum()), "products": len(p)}
    return out


def base_features(job: FoldJob) -> tuple:
    """(the base recipe's feature folder of this fold, its classifier as the specialists' start)."""
    if not job.cfg.base:
        raise DataError(f"rank_count recipe {job.cfg.name}: `base` names no base recipe")
    features = job.work.features(job.cfg.solution, job.cfg.base, job.fold)
    return features, load_base_classifier(features / "classifier.pt").eval().to(job.runtime.device)


def check_views(cfg: RankCountConfig, store: FeatureStore) -> None:
    if set(cfg.tta) - set(store.meta.views):
        raise DataError(f"rank_count recipe {cfg.name}: tta {cfg.tta} needs views the base net did not store ({store.meta.views})")


def combined_net(cfg: RankCountConfig, specialists: dict[str, nn.Linear], base: nn.Linear) -> RankCountNet:
    return RankCountNet(specialists, base, (cfg.rank_weight, cfg.count_weight, cfg.base_weight))


def rank_count_test(job: FoldJob, net: RankCountNet, features) -> TopK:
    store = FeatureStore(features, "test")
    check_views(job.cfg, store)
    return predict_combined(net, store, job.data.test, job.data.test_rows, job.cfg, job.runtime, "test")


def rank_count_fold(job: FoldJob) -> FoldOutput:
    cfg, data = job.cfg, job.data
    features, base = base_features(job)
    train_store = FeatureStore(features, "train")
    check_views(cfg, train_store)
    train_rows, val_rows = job.rows
    train_rows = np.intersect1d(train_rows, train_store.rows)
    val_rows = val_rows[data.train.index.n_imgs[val_rows] > 0]
    specialists = finetune_specialists(job, train_store, base, train_rows, val_rows)
    net = combined_net(cfg, specialists, base)
    oof = predict_combined(net, train_store, data.train, val_rows, cfg, job.runtime, "oof")
    return FoldOutput(oof, rank_count_test(job, net, features), {"variants": variant_counts(job, specialists, base, train_store, val_rows, oof)})


def rank_count_load_test(job: FoldJob) -> RankCountNet:
    """The trained specialists (a rank / count the fold had no images of stayed the base classifier: no <name>/last.pt)."""
    features, base = base_features(job)
    specialists = {}
    for name in RANK_MODELS + COUNT_MODELS:
        path = job.out / name / "last.pt"
        specialists[name] = load_trained(copy.deepcopy(base), path).to(job.runtime.device) if path.exists() else base
    return combined_net(job.cfg, specialists, base)


def rank_count_predict_test(job: FoldJob, net: RankCountNet) -> TopK:
    """The net over the base recipe's features of job.data's test split (stored under job.work by its predict_test)."""
    return rank_count_test(job, net, job.work.features(job.cfg.solution, job.cfg.base, job.fold))


def merge_variants(extras: list[dict]) -> dict:
    """OOF product accuracy of each combination over the folds."""
    totals = {v: [0, 0] for v in VARIANTS}
    for extra in extras:
        for v, c in extra.get("variants", {}).items():
            totals[v][0] += c["correct"]
            totals[v][1] += c["products"]
    return {"oof_variants": {v: round(c / max(n, 1), 5) for v, (c, n) in totals.items()}}
