"""Accuracy as the competition scored it (product level), and the breakdowns the report needs."""
from __future__ import annotations

import numpy as np

from .categories import CategoryTree


def accuracy(pred: np.ndarray, true: np.ndarray) -> float:
    pred, true = np.asarray(pred), np.asarray(true)
    return float((pred == true).mean()) if len(true) else float("nan")


def accuracy_by_group(pred: np.ndarray, true: np.ndarray, groups: np.ndarray) -> dict[str, dict]:
    """{group: {"accuracy", "products"}} for each distinct value of `groups` (JSON-ready keys)."""
    out = {}
    for g in np.unique(groups):
        sel = groups == g
        out[str(g)] = {"accuracy": accuracy(pred[sel], true[sel]), "products": int(sel.sum())}
    return out


def product_report(pred: np.ndarray, true: np.ndarray, n_imgs: np.ndarray, tree: CategoryTree) -> dict:
    """Product accuracy overall, by number of images, by the TRUE label's level-1 group, and at
    level 1 (right group, any category): the breakdowns the winners' ideas act on."""
    pred, true = np.asarray(pred, np.int64), np.asarray(true, np.int64)
    known = true >= 0
    pred, true, n_imgs = pred[known], true[known], np.asarray(n_imgs)[known]
    return {
        "accuracy": accuracy(pred, true),
        "products": int(len(true)),
        "level1_accuracy": accuracy(tree.level1_of[pred], tree.level1_of[true]),
        "by_image_count": accuracy_by_group(pred, true, n_imgs),
        "by_level1": accuracy_by_group(pred, true, tree.level1_groups[tree.level1_of[true]]),
    }


def most_frequent_label(labels: np.ndarray) -> int:
    """The label a product no source predicts gets (the most frequent known training label)."""
    known = np.asarray(labels)[np.asarray(labels) >= 0]
    return int(np.bincount(known).argmax()) if len(known) else 0


def class_prior_accuracy(train_labels: np.ndarray, true: np.ndarray) -> float:
    """The baseline every model must beat: always predict the most frequent training label."""
    return accuracy(np.full(len(true), most_frequent_label(train_labels)), true)
