"""Every baseline the stack must beat, scored on the same products: each source alone, the
arithmetic and geometric means, each blend's own recipe over its members."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from common.metrics import accuracy
from common.sources import BLENDS

from .config import StackConfig
from .features import GEO_FLOOR, Candidates, candidate_table
from .inputs import Products, Source, StackInputs


def group_best(group: np.ndarray, labels: np.ndarray, score: np.ndarray, n: int, fallback: int) -> np.ndarray:
    """Per product the label of its best-scoring row; `fallback` for products without rows."""
    out = np.full(n, fallback, np.int64)
    if len(group):
        order = np.lexsort((-score, group))
        first = order[np.r_[True, group[order][1:] != group[order][:-1]]]
        out[group[first]] = labels[first]
    return out


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
        if s.kind in BLENDS and s.members and all(m in pos for m in s.members):
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


def test_accuracy(top1: np.ndarray, truth: np.ndarray | None) -> float | None:
    if truth is None:
        return None
    known = truth >= 0
    return accuracy(top1[known], truth[known])


def score_baselines(inp: StackInputs, cfg: StackConfig) -> dict[str, dict]:
    """Every baseline's OOF accuracy on the stacker's products and its test accuracy (mini data)."""
    baselines = make_baselines(inp.all_sources, inp.stacked)
    oof = baseline_top1(inp.oof, inp.all_sources, baselines, "oof", len(inp.tree), cfg.chunk_products, inp.fallback)
    n = len(inp.test_ids)
    everything = Products(inp.test_ids, np.zeros(n, np.float32), np.full(n, -1), np.zeros(n, np.int64), np.full(n, -1))
    test = baseline_top1(everything, inp.all_sources, baselines, "test", len(inp.tree), cfg.chunk_products, inp.fallback)
    return {b.name: {"oof_accuracy": accuracy(oof[b.name], inp.oof.y), "test_accuracy": test_accuracy(test[b.name], inp.test_truth)} for b in baselines}
