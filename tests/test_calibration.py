"""Scores that mean probabilities (common/calibration.py): an overconfident source's isotonic map,
fitted fold-honestly, brings its expected calibration error down, keeps every top-1, and the
predictor's scores go through it."""
from __future__ import annotations

import numpy as np

from common.calibration import apply_map, calibrate, expected_calibration_error, load_map, write_calibration
from common.predictions import TopK


def overconfident(n: int = 4000, k: int = 5, seed: int = 0) -> tuple[TopK, np.ndarray]:
    """Top-1 right with probability 0.6 while its score says about 0.9."""
    rng = np.random.default_rng(seed)
    labels = np.stack([rng.permutation(20)[:k] for _ in range(n)]).astype(np.int16)
    probs = np.sort(rng.dirichlet([8] + [0.3] * (k - 1), n), axis=1)[:, ::-1].astype(np.float16)
    truth = np.where(rng.random(n) < 0.6, labels[:, 0], labels[:, 1]).astype(np.int64)
    return TopK(np.arange(n, dtype=np.int64), labels, probs), truth


def test_the_map_calibrates_an_overconfident_source_fold_honestly(tmp_path):
    top, truth = overconfident()
    result = calibrate(top, truth)
    assert result["ece_raw"] > 0.2 and result["ece"] < 0.03  # cross-fitted: each split mapped by the other 4
    assert abs(result["mean_top1_score"] - result["top1_accuracy"]) < 0.03 and result["products"] == len(truth)
    mapped = apply_map(result["map"], top.probs.astype(np.float64))
    assert np.all(np.diff(mapped, axis=1) <= 1e-12)  # monotone: the order of a product's labels (its top-1) is kept
    figures = write_calibration(tmp_path, top, truth)
    assert load_map(tmp_path) == result["map"] and "map" not in figures and figures["ece"] == result["ece"]
    assert apply_map(None, top.probs).dtype == top.probs.dtype  # no map: scores unchanged


def test_expected_calibration_error_of_a_calibrated_and_a_wrong_score():
    rng = np.random.default_rng(1)
    conf = rng.random(20000)
    assert expected_calibration_error(conf, rng.random(20000) < conf) < 0.02
    assert abs(expected_calibration_error(np.full(100, 0.9), np.zeros(100, bool)) - 0.9) < 1e-9
