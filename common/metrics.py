"""Accuracy as the competition scored it (product level), and the breakdowns the report needs."""
from __future__ import annotations

import numpy as np

from .categories import CategoryTree


def accuracy(pred: np.ndarray, true: np.ndarray) -> float:
    pred, true = np.asarray(pred), np.asarray(true)
    return float((pred == true).mean()) if len(true) else float("nan")


def accuracy_by_group(pred: np.ndarray, true: np.ndarray, groups: np.ndarray) -> dict:
    """{group: (accuracy, count)} for each distinct value of `groups`."""
    out = {}
    for g in np.unique(groups):
        sel = groups == g
        out[g.item() if hasattr(g, "item") else g] = (accuracy(pred[sel], true[sel]), int(sel.sum()))
    return out


def product_report(pred: np.ndarray, true: np.ndarray, n_imgs: np.ndarray, tree: CategoryTree) -> dict:
    """Product accuracy overall, by number of images, and by the TRUE label's level-1 group."""
    pred, true = np.asarray(pred, np.int64), np.asarray(true, np.int64)
    level1 = tree.level1_groups[tree.level1_of[true]]
    return {
        "accuracy": accuracy(pred, true),
        "products": int(len(true)),
        "by_image_count": {int(k): v for k, v in accuracy_by_group(pred, true, np.asarray(n_imgs)).items()},
        "by_level1": accuracy_by_group(pred, true, level1),
        "level1_accuracy": accuracy(tree.level1_of[pred], tree.level1_of[true]),
    }


def class_prior_accuracy(train_labels: np.ndarray, true: np.ndarray) -> float:
    """The baseline every model must beat: always predict the most frequent training label."""
    return accuracy(np.full(len(true), np.bincount(train_labels).argmax()), true)
