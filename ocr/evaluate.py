"""How much OCR adds: media-product accuracy of a CNN source alone and combined with the OCR source.

Two fixed rules, nothing tuned on the products they are scored on (the stacker learns the real
weights later): `mean` (the average of the CNN and OCR probabilities where OCR has a row) and
`product` ((cnn + eps) * (ocr + eps), renormalised; eps keeps a label that one of the two top-K
lists lacks from being zeroed). Products without an OCR row keep the CNN prediction.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from common.metrics import accuracy
from common.predictions import TopK, average_topk, topk_from_dense

EPS = 0.01


def _dense(part: TopK, rows: np.ndarray, num_classes: int) -> np.ndarray:
    return part.take(rows).dense(num_classes)


def product_rule(cnn: TopK, ocr: TopK, k: int, chunk: int = 4096) -> TopK:
    """(cnn + eps) * (ocr + eps) on the products both predict; cnn alone elsewhere."""
    num_classes = 1 + max(int(cnn.labels.max(initial=0)), int(ocr.labels.max(initial=0)))
    rows_o, have = ocr.lookup(cnn.ids)
    pieces = [cnn.take(np.flatnonzero(~have))]
    both = np.flatnonzero(have)
    for start in range(0, len(both), chunk):
        r = both[start : start + chunk]
        p = (_dense(cnn, r, num_classes) + EPS) * (_dense(ocr, rows_o[r], num_classes) + EPS)
        p /= p.sum(axis=1, keepdims=True)
        pieces.append(topk_from_dense(cnn.ids[r], p, k))
    pieces = [p for p in pieces if len(p)]
    if not pieces:
        return cnn
    order_ids = np.concatenate([p.ids for p in pieces])
    order = np.argsort(order_ids, kind="stable")
    kk = min(p.k for p in pieces)
    return TopK(order_ids[order], np.concatenate([p.labels[:, :kk] for p in pieces])[order],
                np.concatenate([p.probs[:, :kk] for p in pieces])[order])


RULES: dict[str, Callable[[TopK, TopK, int], TopK]] = {
    "mean": lambda cnn, ocr, k: average_topk([cnn, ocr], k) if len(ocr) else cnn,
    "product": product_rule,
}


def media_accuracy(cnn: dict[str, TopK], ocr: TopK, ids: np.ndarray, labels: np.ndarray, k: int, best: str | None = None) -> dict:
    """On the given (true media) products: each CNN source alone, OCR alone where it has a row, and
    the best CNN source (given, e.g. chosen on OOF, or the best here) combined with OCR by each
    rule; also on the subset OCR predicts."""
    if len(ids) == 0 or not cnn:
        return {"products": int(len(ids))}
    alone = {name: accuracy(p.top1_of(ids), labels) for name, p in cnn.items()}
    best = best if best in alone else max(alone, key=alone.get)
    _, with_ocr = ocr.lookup(ids)
    out = {"products": int(len(ids)), "products_with_ocr": int(with_ocr.sum()), "cnn_alone": alone, "best_cnn": best,
           "ocr_alone_on_products_with_ocr": accuracy(ocr.top1_of(ids[with_ocr]), labels[with_ocr]) if with_ocr.any() else None,
           "best_cnn_on_products_with_ocr": accuracy(cnn[best].top1_of(ids[with_ocr]), labels[with_ocr]) if with_ocr.any() else None}
    for rule, combine in RULES.items():
        combined = combine(cnn[best], ocr, k)
        out[f"best_cnn_plus_ocr_{rule}"] = accuracy(combined.top1_of(ids), labels)
        if with_ocr.any():
            out[f"best_cnn_plus_ocr_{rule}_on_products_with_ocr"] = accuracy(combined.top1_of(ids[with_ocr]), labels[with_ocr])
    return out
