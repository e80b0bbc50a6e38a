"""The XGBoost stacker: every prediction source's OOF top-K -> one candidate ranker -> the submission.

    python -m ensembling.stack --work work [--sources a b ...] [--max-train-products N]
                               [--device auto|cpu|cuda] [--objective binary|rank] [--include-blends]

Candidates of a product = the union of its sources' top labels (`--candidates-per-source`, default
all K). One row per (product, candidate); the features (see `feature_names`):
  per source s   s:prob (0 when the candidate is not in s's top-K or s has no row for the product),
                 s:rank (1 = s's top-1; K+1 when absent), s:top (s's top-1 probability: its
                 confidence; 0 when s has no row); side sources (md5, ocr) also s:share (the
                 candidate's share of s's mass: the MD5 vote share) and s:labels (how many labels s
                 names: 1 = a pure MD5 match; 0 = no row)
  per candidate  n_imgs, prior (log train frequency of the candidate, leave-fold-out), level1 (its
                 level-1 group), level1_agree / top1_votes (share of the product's sources whose
                 top-1 is in that group / is that label), n_sources, mean_prob, geo_prob, max_prob,
                 best_rank
XGBoost learns "is this candidate the true label" (binary:logistic, or rank:pairwise grouped by
product); a product's prediction is its best-scoring candidate, its probabilities the softmax of
the candidates' margins. A product whose true label is in no candidate cannot be fixed: that
ceiling is the candidate recall, reported beside the accuracy.

Honest CV: the folds of folds.csv. The OOF rows of fold k came from models that did not see fold
k, and the stacker of fold k is trained on the other folds' products only, so every reported
number is measured on products no stage learned from. Every baseline is scored on the SAME
products (those with at least one source row): each single source, the arithmetic and geometric
means, the 2nd team's weighted sqrt blend. The final model learns from all OOF products (or a
sample: --max-train-products) and predicts test.

Which sources: every finished source (oof.npz and test.npz) except ablations (`_ablation_`) and
except blends whose members are all stacked already: a blend is a fixed function of its members,
which the trees see already (with mean/geo features), so it adds only correlated columns. Measured
on the mini data (8 sources, 3 folds): CV 0.8318 without the 3 blends, 0.8305 with them (+9
features, 30% slower; the folds spread by 0.002). `--include-blends` keeps them. Blends are always
scored as baselines. Same measurement for the other choices: rank:pairwise 0.8320 (50% slower
than binary 0.8318); --candidates-per-source 10: 0.8318, candidate recall 0.961 instead of 0.982,
half the rows (the setting for the full data, where K=20 from ~30 sources would be large).

Memory: features are built per chunk of products (`--chunk-products`) and fed to XGBoost through
a DataIter into a QuantileDMatrix (1 byte per value, chunks rebuilt on each pass instead of
kept), prediction streams chunk by chunk, and `--max-train-products` bounds the training set.
At full scale (7.07M products x ~30 candidates x ~35 features) that keeps one machine in budget;
`--device cuda` (or auto) trains on the GPU. Past one machine, export the features
(`--export-features DIR`: one .npz per chunk with X, y, qid; never pickled) and train with
XGBoost's own distributed API, e.g. on a Dask cluster:

    import glob, dask, dask.array as da, numpy as np, xgboost as xgb
    from dask.distributed import Client
    client = Client("scheduler:8786")
    parts = sorted(glob.glob("DIR/chunk_*.npz"))
    load = dask.delayed(lambda p, k: np.load(p)[k])
    X = da.concatenate([da.from_delayed(load(p, "X"), (np.load(p)["X"].shape), np.float32) for p in parts])
    y = da.concatenate([da.from_delayed(load(p, "y"), (np.load(p)["y"].shape), np.float32) for p in parts])
    dtrain = xgb.dask.DaskQuantileDMatrix(client, X, y)
    out = xgb.dask.train(client, {"objective": "binary:logistic", "tree_method": "hist", "device": "cuda"}, dtrain, 300)
    out["booster"].save_model("work/stack/model.ubj")

(xgboost.spark's SparkXGBClassifier is the Spark equivalent.) Then
`python -m ensembling.stack --work W --model work/stack/model.ubj` predicts test with that model,
writes the submission and scores the baselines (no CV: the model saw every OOF product).

Writes work/preds/stack/{oof,test}.npz + summary.json, work/submissions/stack.csv.gz (validated:
every test product once; products no source predicts get the most frequent train category),
work/stack/{model.ubj,features.json}.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import xgboost as xgb
from tqdm import tqdm

from common.atomic import atomic_path, write_json
from common.blend import Labels
from common.categories import CategoryTree
from common.folds import read_folds
from common.metrics import accuracy, product_report
from common.paths import WorkDir
from common.predictions import DEFAULT_K, TopK, load_topk, save_topk
from common.prepare import DatasetPaths
from common.submission import score_submission, submission_from_topk

STACK = "stack"
ABLATION_TAG = "_ablation_"
# What each source is, by name; anything else is a model, or a solution blend when its summary
# lists member sources. Side sources cover only some products and get the vote features.
KIND_BY_NAME = {"md5": "side source", "ocr": "side source", "convoluted": "team blend", STACK: "stack"}
BLEND_KINDS = ("solution blend", "team blend")
GEO_FLOOR = 1e-4  # a label outside a source's top-K has a probability below its K-th: floor for logs


# ---------------------------------------------------------------------------------------------
# configuration and sources


@dataclass
class StackConfig:
    sources: list[str] = field(default_factory=list)  # empty: discover
    include_blends: bool = False
    candidates_per_source: int = 0  # 0 = all K labels of every source
    objective: str = "binary"
    rounds: int = 200
    learning_rate: float = 0.1
    max_depth: int = 6
    min_child_weight: float = 1.0
    subsample: float = 0.8
    colsample_bytree: float = 0.8
    max_bin: int = 256
    max_train_products: int = 0  # 0 = every OOF product
    chunk_products: int = 100_000
    device: str = "auto"
    nthread: int = 0  # 0 = every core
    seed: int = 0
    topk: int = DEFAULT_K
    export_features: str = ""
    model: str = ""  # predict with this saved model instead of training (no CV)


@dataclass
class Source:
    """One prediction source: its kind, OOF and test top-K, and (for blends) how it was made."""

    name: str
    kind: str
    oof: TopK
    test: TopK
    members: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    power: float = 1.0

    @property
    def k(self) -> int:
        return self.oof.k

    def split(self, split: str) -> TopK:
        return self.oof if split == "oof" else self.test


def read_summary(work: WorkDir, name: str) -> dict:
    path = work.preds(name) / "summary.json"
    return json.loads(path.read_text()) if path.exists() else {}


def source_kind(name: str, summary: dict) -> str:
    """model / solution blend / team blend / side source / stack (see KIND_BY_NAME)."""
    if name in KIND_BY_NAME:
        return KIND_BY_NAME[name]
    return "solution blend" if isinstance(summary.get("sources"), dict) else "model"


def finished_sources(work: WorkDir) -> list[str]:
    """Every preds/<name>/ with oof.npz and test.npz, the stack's own output left out."""
    root = work.root / "preds"
    if not root.exists():
        return []
    return sorted(p.name for p in root.iterdir() if p.name != STACK and (p / "oof.npz").exists() and (p / "test.npz").exists())


def load_source(work: WorkDir, name: str) -> Source:
    summary = read_summary(work, name)
    members = list(summary["sources"]) if isinstance(summary.get("sources"), dict) else []
    return Source(name, source_kind(name, summary), load_topk(work.preds(name) / "oof.npz"), load_topk(work.preds(name) / "test.npz"),
                  members, [float(w) for w in summary.get("weights", [])] or [1.0] * len(members), float(summary.get("power", 1.0)))


def choose_stack_sources(available: list[Source], include_blends: bool) -> list[Source]:
    """Ablations never; blends only when asked or when one of their members is missing."""
    names = {s.name for s in available}
    chosen = []
    for s in available:
        if ABLATION_TAG in s.name:
            continue
        if s.kind in BLEND_KINDS and not include_blends and s.members and set(s.members) <= names:
            continue
        chosen.append(s)
    return chosen


# ---------------------------------------------------------------------------------------------
# products


@dataclass
class Products:
    """Products to stack: ids (sorted), image counts, true labels (-1 unknown), prior table row."""

    ids: np.ndarray
    n_imgs: np.ndarray
    y: np.ndarray
    prior_row: np.ndarray
    fold: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, sel: np.ndarray) -> "Products":
        return Products(self.ids[sel], self.n_imgs[sel], self.y[sel], self.prior_row[sel], self.fold[sel])

    def chunks(self, size: int) -> Iterator["Products"]:
        for start in range(0, len(self), max(size, 1)):
            yield self.take(slice(start, start + size))


def prior_tables(labels: np.ndarray, folds: np.ndarray, fold_ids: list[int], n_classes: int) -> np.ndarray:
    """log((count + 1) / (total + C)) per label: one row per fold computed WITHOUT that fold's
    labels (so a held-out product never counts its own label), and a last row over all of them
    (for test)."""
    rows = []
    for k in [*fold_ids, None]:
        use = (labels >= 0) if k is None else (labels >= 0) & (folds != k)
        counts = np.bincount(labels[use], minlength=n_classes).astype(np.float64)
        rows.append(np.log((counts + 1.0) / (counts.sum() + n_classes)))
    return np.asarray(rows, np.float32)


def fold_per_id(ids: np.ndarray, fold_ids: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Fold of each id; -2 for ids absent from folds.csv (excluded products)."""
    order = np.argsort(fold_ids, kind="stable")
    sorted_ids = fold_ids[order]
    pos = np.clip(np.searchsorted(sorted_ids, ids), 0, max(len(sorted_ids) - 1, 0))
    found = sorted_ids[pos] == ids if len(sorted_ids) else np.zeros(len(ids), bool)
    return np.where(found, folds[order][pos] if len(sorted_ids) else -2, -2).astype(np.int64)


def union_ids(parts: list[TopK]) -> np.ndarray:
    return np.unique(np.concatenate([p.ids for p in parts])) if parts else np.zeros(0, np.int64)


# ---------------------------------------------------------------------------------------------
# candidates and features


@dataclass
class Candidates:
    """The (product, candidate) rows of a chunk, grouped by product, with each source's view."""

    group: np.ndarray  # int64[m]: row -> product position in the chunk (sorted)
    labels: np.ndarray  # int64[m]
    probs: np.ndarray  # float32[m, S]
    ranks: np.ndarray  # float32[m, S]: 1..K, K+1 when absent
    present: np.ndarray  # bool[n, S]: the source has a row for the product
    top1: np.ndarray  # int64[n, S]: the source's top-1 label (-1 when absent)
    top_prob: np.ndarray  # float32[n, S]
    mass: np.ndarray  # float32[n, S]: sum of the source's kept probabilities
    n_labels: np.ndarray  # float32[n, S]: labels the source names for the product
    n_products: int

    @property
    def starts(self) -> np.ndarray:
        """First row of each product (every product of the chunk has at least one row or none)."""
        return np.flatnonzero(np.r_[True, self.group[1:] != self.group[:-1]]) if len(self.group) else np.zeros(0, np.int64)


def _lookup(part: TopK, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of `ids` in a source and whether it has them."""
    if not len(part.ids):
        return np.zeros(len(ids), np.int64), np.zeros(len(ids), bool)
    rows = np.clip(np.searchsorted(part.ids, ids), 0, len(part.ids) - 1)
    return rows, part.ids[rows] == ids


def candidate_table(ids: np.ndarray, parts: list[TopK], per_source: int, n_classes: int) -> Candidates:
    """Union of the sources' top-`per_source` labels per product (0 = all K), with every source's
    probability and rank of each candidate looked up in its full top-K. Vectorised by encoding a
    (product, label) pair as one int64 key = position * n_classes + label."""
    n, S = len(ids), len(parts)
    views, keys = [], []
    present = np.zeros((n, S), bool)
    for s, part in enumerate(parts):
        rows, have = _lookup(part, ids)
        labels = part.labels[rows].astype(np.int64)
        labels[~have] = -1
        probs = part.probs[rows].astype(np.float32)
        probs[~have] = 0.0
        present[:, s] = have
        views.append((labels, probs))
        cut = labels[:, : per_source or labels.shape[1]]
        i, j = np.nonzero(cut >= 0)
        keys.append(i * n_classes + cut[i, j])
    cand = np.unique(np.concatenate(keys)) if keys else np.zeros(0, np.int64)
    m = len(cand)
    out_probs = np.zeros((m, S), np.float32)
    out_ranks = np.zeros((m, S), np.float32)
    top1 = np.full((n, S), -1, np.int64)
    top_prob = np.zeros((n, S), np.float32)
    mass = np.zeros((n, S), np.float32)
    n_labels = np.zeros((n, S), np.float32)
    for s, (labels, probs) in enumerate(views):
        k = labels.shape[1]
        out_ranks[:, s] = k + 1
        i, j = np.nonzero(labels >= 0)
        src_keys = i * n_classes + labels[i, j]
        order = np.argsort(src_keys, kind="stable")
        src_keys, src_prob, src_rank = src_keys[order], probs[i, j][order], (j + 1)[order]
        if len(src_keys) and m:
            pos = np.clip(np.searchsorted(src_keys, cand), 0, len(src_keys) - 1)
            hit = src_keys[pos] == cand
            out_probs[hit, s] = src_prob[pos[hit]]
            out_ranks[hit, s] = src_rank[pos[hit]]
        top1[:, s] = np.where(present[:, s], labels[:, 0], -1)
        top_prob[:, s] = np.where(present[:, s], probs[:, 0], 0.0)
        mass[:, s] = probs.sum(1)
        n_labels[:, s] = (labels >= 0).sum(1)
    return Candidates(cand // n_classes, cand % n_classes, out_probs, out_ranks, present, top1, top_prob, mass, n_labels, n)


@dataclass
class FeatureContext:
    """What features need beside the candidates: the products, the tree, the priors."""

    products: Products
    level1_of: np.ndarray
    prior: np.ndarray  # float32[tables, C]


SourceFeature = Callable[[Candidates, int], np.ndarray]
SOURCE_FEATURES: dict[str, SourceFeature] = {
    "prob": lambda c, s: c.probs[:, s],
    "rank": lambda c, s: c.ranks[:, s],
    "top": lambda c, s: c.top_prob[c.group, s],
    "share": lambda c, s: c.probs[:, s] / np.maximum(c.mass[c.group, s], 1e-6),
    "labels": lambda c, s: c.n_labels[c.group, s],
}
FEATURES_BY_KIND: dict[str, tuple[str, ...]] = {
    "model": ("prob", "rank", "top"),
    "solution blend": ("prob", "rank", "top"),
    "team blend": ("prob", "rank", "top"),
    "side source": ("prob", "rank", "top", "share", "labels"),
}


def _n_present(c: Candidates) -> np.ndarray:
    return np.maximum(c.present.sum(1), 1)[c.group].astype(np.float32)


def _level1_agree(c: Candidates, ctx: FeatureContext) -> np.ndarray:
    top_group = np.where(c.top1 >= 0, ctx.level1_of[np.maximum(c.top1, 0)], -1)[c.group]
    return (top_group == ctx.level1_of[c.labels][:, None]).sum(1) / _n_present(c)


def _geo_prob(c: Candidates) -> np.ndarray:
    logs = np.log(np.maximum(c.probs, GEO_FLOOR)) * c.present[c.group]
    return np.exp(logs.sum(1) / _n_present(c))


ProductFeature = Callable[[Candidates, FeatureContext], np.ndarray]
PRODUCT_FEATURES: dict[str, ProductFeature] = {
    "n_imgs": lambda c, x: x.products.n_imgs[c.group],
    "prior": lambda c, x: x.prior[x.products.prior_row[c.group], c.labels],
    "level1": lambda c, x: x.level1_of[c.labels],
    "level1_agree": _level1_agree,
    "top1_votes": lambda c, x: (c.top1[c.group] == c.labels[:, None]).sum(1) / _n_present(c),
    "n_sources": lambda c, x: c.present.sum(1)[c.group],
    "mean_prob": lambda c, x: c.probs.sum(1) / _n_present(c),
    "geo_prob": lambda c, x: _geo_prob(c),
    "max_prob": lambda c, x: c.probs.max(1) if c.probs.shape[1] else np.zeros(len(c.labels)),
    "best_rank": lambda c, x: c.ranks.min(1) if c.ranks.shape[1] else np.zeros(len(c.labels)),
}


def feature_names(sources: list[Source]) -> list[str]:
    per_source = [f"{s.name}:{f}" for s in sources for f in FEATURES_BY_KIND[s.kind]]
    return per_source + list(PRODUCT_FEATURES)


def feature_matrix(c: Candidates, sources: list[Source], ctx: FeatureContext) -> np.ndarray:
    """float32[m, F] in the order of feature_names."""
    cols = [SOURCE_FEATURES[f](c, s) for s, src in enumerate(sources) for f in FEATURES_BY_KIND[src.kind]]
    cols += [fn(c, ctx) for fn in PRODUCT_FEATURES.values()]
    return np.stack([np.asarray(col, np.float32) for col in cols], axis=1) if cols else np.zeros((len(c.labels), 0), np.float32)


@dataclass
class Chunk:
    """Features of a chunk of products: rows grouped by product (group = position in `ids`)."""

    ids: np.ndarray
    group: np.ndarray
    labels: np.ndarray
    X: np.ndarray
    y: np.ndarray  # float32[m]: 1 = the true label (0 everywhere when unknown)
    qid: np.ndarray  # int64[m]: a global product number, for ranking objectives


def build_chunk(products: Products, sources: list[Source], split: str, level1_of: np.ndarray, prior: np.ndarray,
                n_classes: int, per_source: int = 0, only_learnable: bool = False, qid_offset: int = 0) -> Chunk:
    """Candidates and features of some products. `only_learnable` drops products whose true label
    is no candidate (nothing to learn from them: every row is a negative that cannot be fixed)."""
    c = candidate_table(products.ids, [s.split(split) for s in sources], per_source, n_classes)
    if only_learnable:
        hit = np.zeros(len(products), bool)
        hit[c.group[c.labels == products.y[c.group]]] = True
        if not hit.all():
            products = products.take(np.flatnonzero(hit))
            c = candidate_table(products.ids, [s.split(split) for s in sources], per_source, n_classes)
    X = feature_matrix(c, sources, FeatureContext(products, level1_of, prior))
    y = (c.labels == products.y[c.group]).astype(np.float32)
    return Chunk(products.ids, c.group, c.labels, X, y, c.group + qid_offset)


# ---------------------------------------------------------------------------------------------
# scoring helpers


def group_best(group: np.ndarray, labels: np.ndarray, score: np.ndarray, n: int, fallback: int) -> np.ndarray:
    """Per product the label of its best-scoring row; `fallback` for products without rows."""
    out = np.full(n, fallback, np.int64)
    if len(group):
        order = np.lexsort((-score, group))
        first = order[np.r_[True, group[order][1:] != group[order][:-1]]]
        out[group[first]] = labels[first]
    return out


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


def candidate_recall(group: np.ndarray, labels: np.ndarray, y: np.ndarray) -> np.ndarray:
    """bool per product: is its true label among its candidates (the stacker's ceiling)."""
    hit = np.zeros(len(y), bool)
    hit[group[labels == y[group]]] = True
    return hit


# ---------------------------------------------------------------------------------------------
# baselines: scores over a candidate table of the baseline sources (all their K labels)


@dataclass
class Baseline:
    name: str
    members: list[int]  # positions in the baseline sources
    weights: list[float]
    how: str  # "single", "mean", "geomean", "power"
    power: float = 1.0


def _score_single(c: Candidates, b: Baseline) -> np.ndarray:
    """Minus the source's rank: exactly its own top-1, ties in probability included."""
    return -c.ranks[:, b.members[0]]


def _score_mean(c: Candidates, b: Baseline) -> np.ndarray:
    m, w = b.members, np.asarray(b.weights, np.float32)
    p = c.probs[:, m] ** b.power if b.power != 1.0 else c.probs[:, m]
    wsum = (c.present[c.group][:, m] * w).sum(1)
    return (p * w).sum(1) / np.maximum(wsum, 1e-12)


def _score_geomean(c: Candidates, b: Baseline) -> np.ndarray:
    m = b.members
    pres = c.present[c.group][:, m]
    logs = np.log(np.maximum(c.probs[:, m], GEO_FLOOR)) * pres
    score = logs.sum(1) / np.maximum(pres.sum(1), 1)
    return np.where(c.probs[:, m].max(1) > 0, score, -np.inf)  # a label no member names never wins


BASELINE_SCORES: dict[str, Callable[[Candidates, Baseline], np.ndarray]] = {
    "single": _score_single,
    "mean": _score_mean,
    "power": _score_mean,
    "geomean": _score_geomean,
}


def make_baselines(all_sources: list[Source], stacked: list[Source]) -> list[Baseline]:
    """Each source alone; arithmetic / geometric mean of the stacked sources (and of the models
    only); every blend's own recipe (e.g. the 2nd team's weighted sqrt blend) over its members."""
    pos = {s.name: i for i, s in enumerate(all_sources)}
    out = [Baseline(s.name, [pos[s.name]], [1.0], "single") for s in all_sources]
    stacked_pos = [pos[s.name] for s in stacked]
    models = [pos[s.name] for s in stacked if s.kind == "model"]
    out += [Baseline("mean (stacked sources)", stacked_pos, [1.0] * len(stacked_pos), "mean"),
            Baseline("geomean (stacked sources)", stacked_pos, [1.0] * len(stacked_pos), "geomean")]
    if models and len(models) != len(stacked_pos):
        out += [Baseline("mean (models)", models, [1.0] * len(models), "mean"), Baseline("geomean (models)", models, [1.0] * len(models), "geomean")]
    for s in all_sources:
        if s.kind in BLEND_KINDS and s.members and all(m in pos for m in s.members):
            how = "power" if s.power != 1.0 else "mean"
            label = f"{s.name} recipe: weighted {'sqrt ' if s.power == 0.5 else ''}blend of {len(s.members)}"
            out.append(Baseline(label, [pos[m] for m in s.members], s.weights, how, s.power))
    return out


def baseline_top1(products: Products, sources: list[Source], baselines: list[Baseline], split: str, n_classes: int,
                  chunk: int, fallback: int) -> dict[str, np.ndarray]:
    """Top-1 of every baseline per product (products a baseline's members all lack get `fallback`)."""
    out = {b.name: [] for b in baselines}
    for part in products.chunks(chunk):
        c = candidate_table(part.ids, [s.split(split) for s in sources], 0, n_classes)
        for b in baselines:
            score = BASELINE_SCORES[b.how](c, b)
            top = group_best(c.group, c.labels, score, len(part), fallback)
            covered = c.present[:, b.members].any(1)
            out[b.name].append(np.where(covered, top, fallback))
    return {k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# XGBoost


OBJECTIVES: dict[str, dict] = {
    "binary": {"objective": "binary:logistic"},
    "rank": {"objective": "rank:pairwise"},
}


def resolve_device(device: str) -> str:
    """auto = cuda when this XGBoost is built with CUDA and the host shows an NVIDIA device that
    CUDA_VISIBLE_DEVICES does not hide (no torch import: it costs ~0.5 GB and seconds here)."""
    if device != "auto":
        return device
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1")
    has_gpu = Path("/dev/nvidiactl").exists() and not hidden
    return "cuda" if xgb.build_info().get("USE_CUDA") and has_gpu else "cpu"


class ChunkIter(xgb.DataIter):
    """Feeds chunks to a QuantileDMatrix, rebuilding each on every pass: features are never held
    all at once (the quantised matrix is ~1 byte per value)."""

    def __init__(self, make: Callable[[int], Chunk], n_chunks: int, with_qid: bool):
        super().__init__()
        self.make, self.n_chunks, self.with_qid, self.i = make, n_chunks, with_qid, 0

    def next(self, input_data: Callable) -> bool:
        if self.i >= self.n_chunks:
            return False
        ch = self.make(self.i)
        kwargs = {"qid": ch.qid} if self.with_qid else {}
        input_data(data=ch.X, label=ch.y, **kwargs)
        self.i += 1
        return True

    def reset(self) -> None:
        self.i = 0


def default_threads() -> int:
    """Every core but one: OpenMP threads that outnumber the free cores wait at every barrier
    (measured on 2 shared cores: 100 rounds took 1.4 s with 1 thread, 19.9 s with 2)."""
    return max(1, (os.cpu_count() or 1) - 1)


def xgb_params(cfg: StackConfig, device: str) -> dict:
    return {**OBJECTIVES[cfg.objective], "tree_method": "hist", "device": device, "eta": cfg.learning_rate, "max_depth": cfg.max_depth,
            "min_child_weight": cfg.min_child_weight, "subsample": cfg.subsample, "colsample_bytree": cfg.colsample_bytree,
            "max_bin": cfg.max_bin, "nthread": cfg.nthread or default_threads(), "seed": cfg.seed, "verbosity": 1}


def train_booster(products: Products, build: Callable[[Products, int], Chunk], cfg: StackConfig, device: str) -> xgb.Booster:
    """One model on `products` (chunked), the rows of unlearnable products dropped."""
    parts = list(products.chunks(cfg.chunk_products))
    offsets = np.r_[0, np.cumsum([len(p) for p in parts])]
    it = ChunkIter(lambda i: build(parts[i], int(offsets[i])), len(parts), cfg.objective == "rank")
    dtrain = xgb.QuantileDMatrix(it, max_bin=cfg.max_bin)
    return xgb.train(xgb_params(cfg, device), dtrain, num_boost_round=cfg.rounds)


def predict_products(booster: xgb.Booster, products: Products, build: Callable[[Products], Chunk], cfg: StackConfig, desc: str) -> tuple[TopK, np.ndarray]:
    """Top-K per product and whether its true label was a candidate, chunk by chunk."""
    tops, hits = [], []
    for part in tqdm(list(products.chunks(cfg.chunk_products)), desc=desc, leave=False, disable=len(products) <= cfg.chunk_products):
        ch = build(part)
        margin = booster.inplace_predict(ch.X, predict_type="margin") if len(ch.X) else np.zeros(0, np.float32)
        tops.append(group_topk(ch.ids, ch.group, ch.labels, np.asarray(margin), cfg.topk))
        hits.append(candidate_recall(ch.group, ch.labels, part.y))
    ids = np.concatenate([t.ids for t in tops])
    return TopK(ids, np.concatenate([t.labels for t in tops]), np.concatenate([t.probs for t in tops])), np.concatenate(hits)


def sample(products: Products, limit: int, seed: int) -> Products:
    if not limit or len(products) <= limit:
        return products
    rng = np.random.default_rng(seed)
    return products.take(np.sort(rng.choice(len(products), limit, replace=False)))


# ---------------------------------------------------------------------------------------------
# the stage


@dataclass
class StackInputs:
    work: WorkDir
    tree: CategoryTree
    labels: Labels
    all_sources: list[Source]
    stacked: list[Source]
    oof: Products  # the evaluated products: in a fold, labelled, with at least one source row
    test: Products  # test products with at least one source row
    test_ids: np.ndarray  # every test product
    test_truth: np.ndarray | None  # label per test_ids (-1 unknown), mini data only
    prior: np.ndarray
    fold_ids: list[int]
    fallback: int


def load_inputs(work: WorkDir, cfg: StackConfig) -> StackInputs:
    paths = DatasetPaths.load(work)
    tree = paths.tree()
    labels = Labels.load(work)
    names = cfg.sources or finished_sources(work)
    if not names:
        raise FileNotFoundError(f"no finished prediction source (oof.npz + test.npz) under {work.root / 'preds'}")
    all_sources = [load_source(work, n) for n in names]
    stacked = all_sources if cfg.sources else choose_stack_sources(all_sources, cfg.include_blends)
    folds = read_folds(work.folds)
    fold_ids = sorted(int(k) for k in folds["fold"].unique() if k >= 0)
    fold_by_row = fold_per_id(labels.ids, folds["_id"].to_numpy(np.int64), folds["fold"].to_numpy(np.int64))
    prior = prior_tables(labels.labels, fold_by_row, fold_ids, len(tree))
    oof_ids = union_ids([s.oof for s in stacked])
    rows = labels.rows(oof_ids)
    known = (labels.ids[rows] == oof_ids) & (labels.labels[rows] >= 0) & (fold_by_row[rows] >= 0)
    oof_ids, rows = oof_ids[known], rows[known]
    fold = fold_by_row[rows]
    oof = Products(oof_ids, labels.n_imgs[rows].astype(np.float32), labels.labels[rows].astype(np.int64),
                   np.searchsorted(fold_ids, fold), fold)
    test_index = paths.index(work, "test")
    test_ids = np.sort(np.asarray(test_index.ids, np.int64))
    ids = np.intersect1d(union_ids([s.test for s in stacked]), test_ids)
    n_imgs = np.asarray(test_index.n_imgs)[test_index.positions_of(ids)].astype(np.float32)
    truth = None
    if paths.test_labels:
        frame = pd.read_csv(paths.test_labels)
        truth = np.full(len(test_ids), -1, np.int64)
        pos = np.searchsorted(test_ids, frame["_id"].to_numpy(np.int64))
        ok = (pos < len(test_ids)) & (test_ids[np.minimum(pos, len(test_ids) - 1)] == frame["_id"].to_numpy(np.int64))
        truth[pos[ok]] = tree.to_index(frame["category_id"].to_numpy()[ok], strict=False)
    test = Products(ids, n_imgs, np.full(len(ids), -1, np.int64), np.full(len(ids), len(fold_ids)), np.full(len(ids), -1))
    fallback = int(np.bincount(labels.labels[labels.labels >= 0]).argmax())
    return StackInputs(work, tree, labels, all_sources, stacked, oof, test, test_ids, truth, prior, fold_ids, fallback)


def builder(inp: StackInputs, split: str, cfg: StackConfig, only_learnable: bool) -> Callable[..., Chunk]:
    def build(products: Products, qid_offset: int = 0) -> Chunk:
        return build_chunk(products, inp.stacked, split, inp.tree.level1_of, inp.prior, len(inp.tree), cfg.candidates_per_source,
                           only_learnable, qid_offset)

    return build


def cross_validate(inp: StackInputs, cfg: StackConfig, device: str) -> tuple[TopK, dict]:
    """Stacker CV over the folds: fold k's model never sees fold k's products."""
    tops, per_fold, hits = [], {}, np.zeros(len(inp.oof), bool)
    for k_pos, k in enumerate(tqdm(inp.fold_ids, desc="stacker CV", leave=False)):
        held = inp.oof.fold == k
        train = sample(inp.oof.take(np.flatnonzero(~held)), cfg.max_train_products, cfg.seed + k_pos)
        booster = train_booster(train, builder(inp, "oof", cfg, True), cfg, device)
        top, hit = predict_products(booster, inp.oof.take(np.flatnonzero(held)), builder(inp, "oof", cfg, False), cfg, f"predict fold {k}")
        hits[held] = hit
        truth = inp.oof.y[held]
        pred = lookup_top1(top, inp.oof.ids[held], inp.fallback)
        per_fold[str(k)] = {"products": int(held.sum()), "train_products": len(train), "accuracy": accuracy(pred, truth),
                            "candidate_recall": float(hit.mean())}
        tops.append(top)
    ids = np.concatenate([t.ids for t in tops])
    order = np.argsort(ids)
    oof = TopK(ids[order], np.concatenate([t.labels for t in tops])[order], np.concatenate([t.probs for t in tops])[order])
    return oof, {"per_fold": per_fold, "candidate_recall": float(hits.mean())}


def lookup_top1(preds: TopK, ids: np.ndarray, fallback: int) -> np.ndarray:
    rows, have = _lookup(preds, ids)
    return np.where(have, preds.top1[rows] if len(preds.ids) else fallback, fallback)


def export_features(inp: StackInputs, cfg: StackConfig, out: Path) -> int:
    """One npz per chunk (X, y, qid, ids, labels) + features.json: the input of a distributed run."""
    build = builder(inp, "oof", cfg, True)
    n, offset = 0, 0
    for part in tqdm(list(inp.oof.chunks(cfg.chunk_products)), desc="export features", leave=False):
        ch = build(part, offset)
        offset += len(part)
        with atomic_path(out / f"chunk_{n:05d}.npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, X=ch.X, y=ch.y, qid=ch.qid, ids=ch.ids, labels=ch.labels)
        n += 1
    write_json(out / "features.json", {"features": feature_names(inp.stacked), "chunks": n})
    return n


def test_accuracy(top1: np.ndarray, truth: np.ndarray | None) -> float | None:
    if truth is None:
        return None
    known = truth >= 0
    return accuracy(top1[known], truth[known])


def fit_final(inp: StackInputs, cfg: StackConfig, device: str) -> xgb.Booster:
    """The submitted model: trained on every OOF product (or a sample), saved as UBJSON with its
    feature names and gains beside it (work/stack/), never pickled."""
    train = sample(inp.oof, cfg.max_train_products, cfg.seed + 1000)
    booster = train_booster(train, builder(inp, "oof", cfg, True), cfg, device)
    with atomic_path(inp.work.root / STACK / "model.ubj") as tmp:
        tmp.write_bytes(bytes(booster.save_raw(raw_format="ubj")))
    return booster


def load_model(path: str, n_features: int) -> xgb.Booster:
    """A model trained elsewhere (e.g. xgboost.dask on exported features): same features or refuse."""
    booster = xgb.Booster(model_file=path)
    if booster.num_features() != n_features:
        raise ValueError(f"{path}: the model has {booster.num_features()} features, these sources give {n_features}")
    return booster


def importance(booster: xgb.Booster, names: list[str]) -> dict[str, float]:
    gain = booster.get_score(importance_type="total_gain")
    return dict(sorted(((names[int(k[1:])], float(v)) for k, v in gain.items()), key=lambda kv: -kv[1]))


def score_baselines(inp: StackInputs, cfg: StackConfig) -> dict[str, dict]:
    """Every baseline's OOF accuracy on the stacker's products and its test accuracy (mini data)."""
    baselines = make_baselines(inp.all_sources, inp.stacked)
    oof = baseline_top1(inp.oof, inp.all_sources, baselines, "oof", len(inp.tree), cfg.chunk_products, inp.fallback)
    n = len(inp.test_ids)
    everything = Products(inp.test_ids, np.zeros(n, np.float32), np.full(n, -1), np.zeros(n, np.int64), np.full(n, -1))
    test = baseline_top1(everything, inp.all_sources, baselines, "test", len(inp.tree), cfg.chunk_products, inp.fallback)
    return {b.name: {"oof_accuracy": accuracy(oof[b.name], inp.oof.y), "test_accuracy": test_accuracy(test[b.name], inp.test_truth)} for b in baselines}


def run_stack(work: WorkDir, cfg: StackConfig) -> dict:
    """CV, baselines, final model, predictions, submission, summary.json; returns the summary."""
    t0 = time.time()
    device = resolve_device(cfg.device)
    inp = load_inputs(work, cfg)
    names = feature_names(inp.stacked)
    print(f"stacking {len(inp.stacked)} sources: {', '.join(s.name for s in inp.stacked)}")
    print(f"  {len(names)} features, {len(inp.oof)} OOF products in {len(inp.fold_ids)} folds, {len(inp.test)} test products, device {device}")
    if cfg.export_features:
        n = export_features(inp, cfg, Path(cfg.export_features))
        print(f"  exported {n} feature chunks to {cfg.export_features}")
    if cfg.model:  # trained elsewhere on these products: an in-sample OOF score would flatter it, so none
        booster, oof_top, cv, stack_acc, stack_pred = load_model(cfg.model, len(names)), None, None, None, None
        (work.preds(STACK) / "oof.npz").unlink(missing_ok=True)
    else:
        oof_top, cv = cross_validate(inp, cfg, device)
        stack_pred = lookup_top1(oof_top, inp.oof.ids, inp.fallback)
        stack_acc = accuracy(stack_pred, inp.oof.y)
        booster = fit_final(inp, cfg, device)
    gains = importance(booster, names)
    write_json(work.root / STACK / "features.json", {"features": names, "total_gain": gains, "params": xgb_params(cfg, device), "rounds": cfg.rounds})
    test_top, _ = predict_products(booster, inp.test, builder(inp, "test", cfg, False), cfg, "predict test")
    if oof_top is not None:
        save_topk(work.preds(STACK) / "oof.npz", oof_top)
    save_topk(work.preds(STACK) / "test.npz", test_top)
    sub, n_fallback = submission_from_topk(work.submissions / f"{STACK}.csv.gz", test_top, inp.test_ids, inp.tree, inp.fallback)
    paths = DatasetPaths.load(work)
    base_report = score_baselines(inp, cfg)
    best_name, best = max(((k, v["oof_accuracy"]) for k, v in base_report.items()), key=lambda kv: kv[1])
    summary = {
        "source": STACK,
        "sources": [s.name for s in inp.stacked],
        "sources_kinds": {s.name: s.kind for s in inp.all_sources},
        "left_out": [s.name for s in inp.all_sources if s not in inp.stacked],
        "features": names,
        "config": asdict(cfg),
        "device": device,
        "oof_products": int(len(inp.oof)),
        "oof_product_accuracy": stack_acc,
        "cv": cv,
        "candidate_recall": cv["candidate_recall"] if cv else None,
        "oof_report": product_report(stack_pred, inp.oof.y, inp.oof.n_imgs.astype(np.int64), inp.tree) if cv else None,
        "baselines": base_report,
        "best_baseline": {"name": best_name, "oof_accuracy": best},
        "gain_over_best_baseline": stack_acc - best if cv else None,
        "beats_every_baseline": bool(all(stack_acc > v["oof_accuracy"] for v in base_report.values())) if cv else None,
        "feature_importance_gain": gains,
        "test_products": int(len(inp.test_ids)),
        "test_rows_from_fallback": n_fallback,
        "submission": str(sub),
        "test_accuracy": score_submission(sub, paths.test_labels) if paths.test_labels else None,
        "seconds": round(time.time() - t0, 1),
    }
    write_json(work.preds(STACK) / "summary.json", summary)
    return summary


def print_summary(summary: dict) -> None:
    if summary["cv"] is None:
        print(f"  model from {summary['config']['model']}: no CV here (see the run that trained it)")
    for k, f in (summary["cv"] or {"per_fold": {}})["per_fold"].items():
        print(f"  fold {k}: stacker {f['accuracy']:.4f} on {f['products']} products (trained on {f['train_products']}), candidate recall {f['candidate_recall']:.4f}")
    if summary["cv"] is not None:
        print(f"  candidate recall (ceiling): {summary['candidate_recall']:.4f}")
    print(f"  {'baseline (same products)':48s} {'OOF':>7s} {'mini test':>9s}")
    for name, b in sorted(summary["baselines"].items(), key=lambda kv: kv[1]["oof_accuracy"]):
        t = "" if b["test_accuracy"] is None else f"{b['test_accuracy']:.4f}"
        print(f"  {name:48s} {b['oof_accuracy']:7.4f} {t:>9s}")
    t = "" if summary["test_accuracy"] is None else f"{summary['test_accuracy']:.4f}"
    oof = "" if summary["oof_product_accuracy"] is None else f"{summary['oof_product_accuracy']:.4f}"
    print(f"  {'STACK (XGBoost, CV)':48s} {oof:>7s} {t:>9s}")
    if summary["cv"] is not None:
        verdict = "beats" if summary["beats_every_baseline"] else "does NOT beat"
        print(f"  the stack {verdict} every baseline: {summary['gain_over_best_baseline']:+.4f} over the best ({summary['best_baseline']['name']})")
    print(f"  test rows from the fallback (no source predicts them): {summary['test_rows_from_fallback']}")
    print(f"  wrote {summary['submission']} ({summary['seconds']} s)")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=None)
    p.add_argument("--sources", nargs="*", help="sources to stack (default: every finished one, see above)")
    p.add_argument("--include-blends", action="store_true", help="stack solution/team blends beside their members")
    p.add_argument("--max-train-products", type=int, default=0, help="train each model on at most N products (0 = all)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--objective", default="binary", choices=sorted(OBJECTIVES))
    p.add_argument("--rounds", type=int, default=StackConfig.rounds)
    p.add_argument("--learning-rate", type=float, default=StackConfig.learning_rate)
    p.add_argument("--max-depth", type=int, default=StackConfig.max_depth)
    p.add_argument("--candidates-per-source", type=int, default=0, help="labels each source adds to the candidates (0 = its K)")
    p.add_argument("--chunk-products", type=int, default=StackConfig.chunk_products)
    p.add_argument("--nthread", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--export-features", default="", help="also write the OOF feature chunks here (for xgboost.dask / spark)")
    p.add_argument("--model", default="", help="predict test with this saved model (.ubj/.json, e.g. trained by xgboost.dask); skips CV and training")
    args = p.parse_args(argv)
    cfg = StackConfig(sources=args.sources or [], include_blends=args.include_blends, candidates_per_source=args.candidates_per_source,
                      objective=args.objective, rounds=args.rounds, learning_rate=args.learning_rate, max_depth=args.max_depth,
                      max_train_products=args.max_train_products, chunk_products=args.chunk_products, device=args.device,
                      nthread=args.nthread, seed=args.seed, export_features=args.export_features, model=args.model)
    summary = run_stack(WorkDir(args.work), cfg)
    print_summary(summary)
    return summary


if __name__ == "__main__":
    main()
