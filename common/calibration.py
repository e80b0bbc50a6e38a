"""Scores that mean probabilities. A source's stored scores (a blend's power mean, the stacker's
softmax over its candidates) rank well but are over- or under-confident; an isotonic map from
score to how often a label with that score is right, fitted on the source's OOF predictions, makes
0.8 mean right 8 times in 10. The map is fitted on every stored (product, rank) of the OOF: each
listed label is right or not. Fold-honest: the figures the report shows (ECE, reliability) come
from cross-fitting over 5 splits of the OOF products, each scored by a map fitted on the other 4;
the map written to preds/<source>/calibration.json (applied when predicting new products) is fitted
on all of them. The stored prediction files stay raw: the stacker's inputs and every top-1 are
unchanged (the map is monotone)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .atomic import read_json, write_json
from .predictions import TopK

CALIBRATION = "calibration.json"
SPLITS = 5
BINS = 15


def labelled_pairs(top: TopK, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(score, right, product row) of every stored label of the products whose truth is known."""
    known = truth >= 0
    labels, probs = top.labels[known], top.probs[known].astype(np.float64)
    rows = np.repeat(np.flatnonzero(known), top.k).reshape(labels.shape)
    listed = labels >= 0
    return probs[listed], (labels == truth[known][:, None])[listed], rows[listed]


def fit_map(scores: np.ndarray, right: np.ndarray) -> dict:
    """The isotonic map (its breakpoints: interpolated between, clipped outside)."""
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(scores, right.astype(np.float64))
    return {"x": iso.X_thresholds_.round(6).tolist(), "y": iso.y_thresholds_.round(6).tolist()}


def apply_map(mapping: dict | None, scores: np.ndarray) -> np.ndarray:
    """Calibrated scores (unchanged without a map)."""
    if not mapping or len(mapping["x"]) == 0:
        return scores
    return np.interp(scores, mapping["x"], mapping["y"])


def expected_calibration_error(conf: np.ndarray, right: np.ndarray, bins: int = BINS) -> float:
    """Sum over equal-width confidence bins of |accuracy - mean confidence| x the bin's share."""
    edges = np.minimum((conf * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        sel = edges == b
        if sel.any():
            total += sel.mean() * abs(right[sel].mean() - conf[sel].mean())
    return float(total)


def reliability(conf: np.ndarray, right: np.ndarray, bins: int = BINS) -> list[dict]:
    """Per non-empty bin: mean confidence, accuracy, products (the reliability plot's points)."""
    edges = np.minimum((conf * bins).astype(int), bins - 1)
    return [{"confidence": float(conf[edges == b].mean()), "accuracy": float(right[edges == b].mean()), "products": int((edges == b).sum())}
            for b in range(bins) if (edges == b).any()]


def cross_fitted(scores: np.ndarray, right: np.ndarray, rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Each pair's score mapped by a map fitted on the other splits' products (split by _id)."""
    split = ids[rows] % SPLITS
    out = np.empty_like(scores)
    for k in range(SPLITS):
        held = split == k
        if held.any():
            out[held] = apply_map(fit_map(scores[~held], right[~held]) if (~held).any() else None, scores[held])
    return out


def calibrate(top: TopK, truth: np.ndarray) -> dict:
    """The map on every OOF product and the top-1 figures before and after (cross-fitted)."""
    scores, right, rows = labelled_pairs(top, truth)
    if len(scores) == 0:
        return {"map": None, "products": 0}
    honest = cross_fitted(scores, right, rows, top.ids)
    first = np.r_[True, rows[1:] != rows[:-1]]  # a product's first stored label: its top-1
    raw, cal, hit = scores[first], honest[first], right[first]
    return {"map": fit_map(scores, right), "products": int(first.sum()), "method": f"isotonic on every stored label, cross-fitted over {SPLITS} splits by _id",
            "top1_accuracy": float(hit.mean()), "mean_top1_score_raw": float(raw.mean()), "mean_top1_score": float(cal.mean()),
            "ece_raw": expected_calibration_error(raw, hit), "ece": expected_calibration_error(cal, hit),
            "reliability_raw": reliability(raw, hit), "reliability": reliability(cal, hit)}


def write_calibration(folder: Path, top: TopK, truth: np.ndarray) -> dict:
    """preds/<source>/calibration.json from the source's OOF; returns the figures (map left out)."""
    result = calibrate(top, truth)
    write_json(Path(folder) / CALIBRATION, result)
    return {k: v for k, v in result.items() if k not in ("map", "reliability_raw", "reliability")}


def load_map(folder: Path) -> dict | None:
    path = Path(folder) / CALIBRATION
    return read_json(path, "rerun the stage that made this source").get("map") if path.exists() else None
