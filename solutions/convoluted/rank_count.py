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

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from common.atomic import write_json
from common.config import TrainConfig
from common.data import image_table
from common.errors import DataError
from common.infer import aggregate, gather_topk
from common.predictions import TopK, concat_topk
from common.recipe import FoldData, begin_fold, finish_fold
from common.train import Batch, Runtime, fit, load_checkpoint

from .feature_store import FeatureStore

RANK_MODELS = ("rank1", "rank2_4")
COUNT_MODELS = ("count1", "count2", "count3", "count4")
VARIANTS = ("base", "rank", "count", "rank_count")  # which terms of the combination are used


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


class StoredImages(Dataset):
    """Item = (uint8 features [D] (training: a random flip copy) , label, position, ok)."""

    def __init__(self, store: FeatureStore, offsets: np.ndarray, product_rows: np.ndarray, ranks: np.ndarray, labels: np.ndarray, random_flip: bool):
        self.store, self.offsets, self.rows, self.ranks, self.labels, self.random_flip = store, offsets, product_rows, ranks, labels, random_flip

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item):
        i, seed = item if isinstance(item, tuple) else (item, 0)
        feats, ok = self.store.images(self.offsets, self.rows[i : i + 1], self.ranks[i : i + 1])
        flip = int(np.random.default_rng(seed).integers(self.store.meta.flips)) if self.random_flip else 0
        return torch.from_numpy(np.ascontiguousarray(feats[0, flip])), int(self.labels[i]), i, bool(ok[0])


def collate_stored(batch: list) -> dict:
    x, label, pos, ok = zip(*batch)
    return {"features": torch.stack(x), "label": torch.tensor(label), "pos": torch.tensor(pos), "ok": torch.tensor(ok)}


def stored_batch(clip: float):
    def to_batch(raw: dict, runtime: Runtime) -> Batch:
        x = raw["features"].to(runtime.device).float() * (clip / 255.0)
        target = raw["label"].to(runtime.device)
        return Batch(x, target, raw["ok"].to(runtime.device) & (target >= 0))

    return to_batch


def load_base_classifier(path) -> nn.Linear:
    state = load_checkpoint(path)
    linear = nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
    linear.load_state_dict(state)
    return linear


def finetune_specialists(cfg: RankCountConfig, data: FoldData, store: FeatureStore, base: nn.Linear, train_rows, val_rows, out, runtime, resume) -> dict[str, nn.Module]:
    """One copy of the base classifier per rank / count, fine-tuned on its own images."""
    offsets = store.check_index(data.train.index.n_imgs)
    n_imgs = data.train.index.n_imgs

    def images(rows):
        t = image_table(n_imgs, rows)
        r, c = route(t.rank, n_imgs[t.product_row])
        return t, r, c

    (tr, tr_rank, tr_count), (va, va_rank, va_count) = images(train_rows), images(val_rows)
    selectors = {name: (tr_rank == i, va_rank == i) for i, name in enumerate(RANK_MODELS)}
    selectors |= {name: (tr_count == i, va_count == i) for i, name in enumerate(COUNT_MODELS)}
    models = {}
    for name, (tsel, vsel) in selectors.items():
        model = nn.Linear(base.in_features, base.out_features)
        model.load_state_dict(base.state_dict())
        if tsel.any() and vsel.any():
            train_set = StoredImages(store, offsets, tr.product_row[tsel], tr.rank[tsel], data.labels[tr.product_row[tsel]], True)
            val_set = StoredImages(store, offsets, va.product_row[vsel], va.rank[vsel], data.labels[va.product_row[vsel]], False)
            result = fit(cfg, model, train_set, val_set, collate_stored, stored_batch(store.meta.clip), out / name, runtime, resume)
            model.load_state_dict(load_checkpoint(result.last)["model"])
        models[name] = model.eval().to(runtime.device)
    return models


def _probs_by_route(models: list[nn.Module], which: np.ndarray, x: torch.Tensor) -> torch.Tensor:
    out = torch.empty(x.shape[0], models[0].out_features, device=x.device)
    for i, model in enumerate(models):
        sel = torch.from_numpy(which == i).to(x.device)
        if sel.any():
            out[sel] = model(x[sel]).softmax(1)
    return out


@torch.no_grad()
def predict_combined(cfg: RankCountConfig, store: FeatureStore, n_imgs, ids, rows, models, base, runtime, chunk_products: int = 2048) -> tuple[TopK, dict[str, TopK]]:
    """Per image the weighted sum of rank, count and base probabilities (flip copies averaged),
    a geometric mean over the product's images; also the top-1 of each VARIANT (for the report)."""
    offsets = store.check_index(n_imgs)
    rows = rows[runtime.rank :: runtime.world]
    weights = {"base": (0, 0, cfg.base_weight), "rank": (cfg.rank_weight, 0, cfg.base_weight),
               "count": (0, cfg.count_weight, cfg.base_weight), "rank_count": (cfg.rank_weight, cfg.count_weight, cfg.base_weight)}
    main, variants = [], {v: [] for v in VARIANTS}
    for start in range(0, len(rows), chunk_products):
        chunk = rows[start : start + chunk_products]
        t = image_table(n_imgs, chunk)
        feats, ok = store.images(offsets, t.product_row, t.rank)
        rank_i, count_i = route(t.rank, n_imgs[t.product_row])
        terms = torch.zeros(3, len(t), base.out_features, device=runtime.device)
        for f in range(feats.shape[1]):
            x = torch.from_numpy(feats[:, f]).to(runtime.device).float() * (store.meta.clip / 255.0)
            terms[0] += _probs_by_route([models[m] for m in RANK_MODELS], rank_i, x)
            terms[1] += _probs_by_route([models[m] for m in COUNT_MODELS], count_i, x)
            terms[2] += base(x).softmax(1)
        terms /= feats.shape[1]
        pos, okt = torch.from_numpy(t.product_pos).to(runtime.device), torch.from_numpy(ok).to(runtime.device)
        for v, w in weights.items():
            p = sum(wi * term for wi, term in zip(w, terms)) / sum(w)
            group, agg = aggregate(p, pos, okt, cfg.aggregate)
            k = min(cfg.topk, agg.shape[1]) if v == "rank_count" else 1
            top = agg.topk(k, dim=1)
            part = TopK(np.asarray(ids[chunk[group.cpu().numpy()]], np.int64), top.indices.cpu().numpy().astype(np.int16), top.values.cpu().numpy().astype(np.float16))
            (main if v == "rank_count" else variants[v]).append(part)
            if v == "rank_count":
                variants[v].append(TopK(part.ids, part.labels[:, :1], part.probs[:, :1]))
    joined = {v: gather_topk(runtime, _concat(parts, 1)) for v, parts in variants.items()}
    return gather_topk(runtime, _concat(main, min(cfg.topk, base.out_features))), joined


def _concat(parts: list[TopK], k: int) -> TopK:
    return concat_topk(parts) if parts else TopK(np.zeros(0, np.int64), np.zeros((0, k), np.int16), np.zeros((0, k), np.float16))


def run_fold(cfg: RankCountConfig, data: FoldData, work, fold: int, runtime: Runtime, resume: bool) -> None:
    out = begin_fold(cfg, work, fold, runtime)
    if out is None:
        return
    if not cfg.base:
        raise DataError(f"rank_count recipe {cfg.name}: `base` names no base recipe")
    features = work.features(cfg.solution, cfg.base, fold)
    train_store, test_store = FeatureStore(features, "train"), FeatureStore(features, "test")
    base = load_base_classifier(features / "classifier.pt").eval().to(runtime.device)
    train_rows, val_rows = data.rows(fold)
    train_rows = np.intersect1d(train_rows, train_store.rows)
    val_rows = val_rows[data.train.index.n_imgs[val_rows] > 0]
    models = finetune_specialists(cfg, data, train_store, base, train_rows, val_rows, out, runtime, resume)
    oof, variants = predict_combined(cfg, train_store, data.train.index.n_imgs, data.train.index.ids, val_rows, models, base, runtime)
    test, _ = predict_combined(cfg, test_store, data.test.index.n_imgs, data.test.index.ids, data.test_rows, models, base, runtime)
    if runtime.is_main:
        write_json(out / "variants.json", {v: {"correct": int((p.top1 == data.labels[data.train.index.positions_of(p.ids)]).sum()), "products": len(p)}
                                           for v, p in variants.items()})
    finish_fold(out, oof, test, runtime)


def variant_summary(cfg: RankCountConfig, work, folds: list[int]) -> dict:
    """OOF product accuracy of each combination over the folds (base alone vs + rank / count)."""
    import json

    totals = {v: [0, 0] for v in VARIANTS}
    for k in folds:
        path = work.model_dir(cfg.solution, cfg.name, k) / "variants.json"
        if path.exists():
            for v, c in json.loads(path.read_text()).items():
                if v in totals:
                    totals[v][0] += c["correct"]
                    totals[v][1] += c["products"]
    return {v: round(c / max(n, 1), 5) for v, (c, n) in totals.items()}
