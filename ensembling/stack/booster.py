"""XGBoost: chunked features through an engine (engine.py: this process or dask), prediction chunk
by chunk, models saved as UBJSON (never pickled), a model trained elsewhere loaded only when its
features match."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import xgboost as xgb

from common.predictions import TopK, concat_topk
from common.errors import DataError
from common.progress import track

from .config import OBJECTIVES, StackConfig
from .engine import DaskEngine, LocalEngine
from .features import Chunk, candidate_recall
from .inputs import Products

Engine = LocalEngine | DaskEngine


def resolve_device(device: str) -> str:
    """auto = cuda when this XGBoost is built with CUDA and the host shows an NVIDIA device that
    CUDA_VISIBLE_DEVICES does not hide (no torch import: it costs ~0.5 GB and seconds here)."""
    if device != "auto":
        return device
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1")
    has_gpu = Path("/dev/nvidiactl").exists() and not hidden
    return "cuda" if xgb.build_info().get("USE_CUDA") and has_gpu else "cpu"


def default_threads() -> int:
    """Every core but one: OpenMP threads that outnumber the free cores wait at every barrier
    (measured on 2 shared cores: 100 rounds took 1.4 s with 1 thread, 19.9 s with 2)."""
    return max(1, (os.cpu_count() or 1) - 1)


def xgb_params(cfg: StackConfig, device: str) -> dict:
    return {**OBJECTIVES[cfg.objective], "tree_method": "hist", "device": device, "eta": cfg.learning_rate, "max_depth": cfg.max_depth,
            "min_child_weight": cfg.min_child_weight, "subsample": cfg.subsample, "colsample_bytree": cfg.colsample_bytree,
            "max_bin": cfg.max_bin, "nthread": cfg.nthread or default_threads(), "seed": cfg.seed, "verbosity": 1}


def train_booster(products: Products, build: Callable[[Products, int], Chunk], cfg: StackConfig, device: str, engine: Engine) -> xgb.Booster:
    """One model on `products` (chunked), the rows of unlearnable products dropped."""
    parts = list(products.chunks(cfg.chunk_products))
    offsets = np.r_[0, np.cumsum([len(p) for p in parts])]
    return engine.train(lambda i: build(parts[i], int(offsets[i])), len(parts), cfg.objective == "rank", xgb_params(cfg, device), cfg.rounds)


def predict_products(booster: xgb.Booster, products: Products, build: Callable[[Products], Chunk], cfg: StackConfig, desc: str,
                     engine: Engine) -> tuple[TopK, np.ndarray]:
    """Top-K per product and whether its true label was a candidate, chunk by chunk."""
    tops, hits = [], []
    for part in track(list(products.chunks(cfg.chunk_products)), desc, enabled=len(products) > cfg.chunk_products, unit="chunk"):
        ch = build(part)
        margin = engine.margin(booster, ch.X) if len(ch.X) else np.zeros(0, np.float32)
        tops.append(group_topk(ch.ids, ch.group, ch.labels, margin, cfg.topk))
        hits.append(candidate_recall(ch.group, ch.labels, part.y))
    return concat_topk(tops, cfg.topk), np.concatenate(hits) if hits else np.zeros(0, bool)


def group_topk(ids: np.ndarray, group: np.ndarray, labels: np.ndarray, margin: np.ndarray, k: int) -> TopK:
    """Top-k candidates per product by margin, probabilities = softmax over ALL its candidates."""
    n = len(ids)
    out_labels = np.full((n, k), -1, np.int16)
    out_probs = np.zeros((n, k), np.float16)
    if len(group):
        order = np.lexsort((-margin, group))
        g, lab, mar = group[order], labels[order], margin[order].astype(np.float64)
        starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
        top = np.repeat(mar[starts], np.diff(np.r_[starts, len(g)]))
        e = np.exp(mar - top)
        total = np.add.reduceat(e, starts)
        p = e / np.repeat(total, np.diff(np.r_[starts, len(g)]))
        rank = np.arange(len(g)) - np.repeat(starts, np.diff(np.r_[starts, len(g)]))
        keep = rank < k
        out_labels[g[keep], rank[keep]] = lab[keep]
        out_probs[g[keep], rank[keep]] = p[keep]
    have = (out_labels[:, 0] >= 0)
    return TopK(np.asarray(ids, np.int64)[have], out_labels[have], out_probs[have])


def sample(products: Products, limit: int, seed: int) -> Products:
    if not limit or len(products) <= limit:
        return products
    rng = np.random.default_rng(seed)
    return products.take(np.sort(rng.choice(len(products), limit, replace=False)))


def load_model(path: str, n_features: int) -> xgb.Booster:
    """A model trained elsewhere (e.g. xgboost.dask on exported features): same features or refuse."""
    try:
        booster = xgb.Booster(model_file=path)
    except xgb.core.XGBoostError as e:  # a file cut short or not a model: one line, not xgboost's C++ trace
        raise DataError(f"{path}: not a model xgboost can load ({str(e).strip().splitlines()[0][:120]}): "
                        "rerun the stack stage (./run_all.sh --only stack --force)") from None
    if booster.num_features() != n_features:
        raise DataError(f"{path}: the model has {booster.num_features()} features, these sources give {n_features}")
    return booster


def importance(booster: xgb.Booster, names: list[str]) -> dict[str, float]:
    gain = booster.get_score(importance_type="total_gain")
    return dict(sorted(((names[int(k[1:])], float(v)) for k, v in gain.items()), key=lambda kv: -kv[1]))
