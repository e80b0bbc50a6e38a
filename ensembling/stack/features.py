"""Candidates of a product (the union of its sources' top labels) and their features."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from common.predictions import TopK

from .inputs import Products, Source

GEO_FLOOR = 1e-4  # a label outside a source's top-K has a probability below its K-th: floor for logs


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


def candidate_table(ids: np.ndarray, parts: list[TopK], per_source: int, n_classes: int) -> Candidates:
    """Union of the sources' top-`per_source` labels per product (0 = all K), with every source's
    probability and rank of each candidate looked up in its full top-K. Vectorised by encoding a
    (product, label) pair as one int64 key = position * n_classes + label."""
    n, S = len(ids), len(parts)
    views, keys = [], []
    present = np.zeros((n, S), bool)
    for s, part in enumerate(parts):
        rows, have = part.lookup(ids)
        labels = np.full((n, part.k), -1, np.int64)  # a source with no row at all (OCR reading nothing) is absent everywhere
        probs = np.zeros((n, part.k), np.float32)
        labels[have], probs[have] = part.labels[rows[have]], part.probs[rows[have]]
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
    return Candidates(cand // n_classes, cand % n_classes, out_probs, out_ranks, present, top1, top_prob, mass, n_labels)


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
    "ablation": ("prob", "rank", "top"),  # only when named with --sources
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


def candidate_recall(group: np.ndarray, labels: np.ndarray, y: np.ndarray) -> np.ndarray:
    """bool per product: is its true label among its candidates (the stacker's ceiling)."""
    hit = np.zeros(len(y), bool)
    hit[group[labels == y[group]]] = True
    return hit
