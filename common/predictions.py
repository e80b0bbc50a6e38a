"""The top-K prediction format every source writes (CNNs, OCR, MD5): work/preds/<source>/{oof,test}.npz.

Dense 5270-way probabilities do not fit at full scale (7.07M x 5270 x 2 bytes = 74 GB per model),
so a source keeps, per product sorted by _id, its K best labels and their probabilities:
ids int64[N], labels int16[N, K] (label index = row of category_names.csv; -1 pads), probs
float16[N, K] (descending; 0 pads). npz without pickle; written atomically.
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .errors import DataError

DEFAULT_K = 20
PAD_LABEL = -1


@dataclass
class TopK:
    ids: np.ndarray  # int64[N], strictly increasing
    labels: np.ndarray  # int16[N, K]
    probs: np.ndarray  # float16[N, K]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def k(self) -> int:
        return self.labels.shape[1]

    @property
    def top1(self) -> np.ndarray:
        return self.labels[:, 0].astype(np.int64)

    def take(self, rows: np.ndarray) -> "TopK":
        return TopK(self.ids[rows], self.labels[rows], self.probs[rows])

    def dense(self, num_classes: int) -> np.ndarray:
        """float32[N, C] with the kept probabilities (small N only: tests, the mini data)."""
        out = np.zeros((len(self), num_classes), np.float32)
        rows, cols = np.nonzero(self.labels >= 0)
        out[rows, self.labels[rows, cols]] = self.probs[rows, cols]
        return out


def topk_from_dense(ids: np.ndarray, probs: np.ndarray, k: int = DEFAULT_K) -> TopK:
    """Keep the K most probable labels per row, sorted by id then by probability (descending)."""
    ids = np.asarray(ids, np.int64)
    probs = np.asarray(probs, np.float32)
    if probs.ndim != 2 or len(probs) != len(ids):
        raise ValueError(f"probs shape {probs.shape} does not match {len(ids)} ids")
    if not np.isfinite(probs).all():
        raise DataError(f"{(~np.isfinite(probs)).any(axis=1).sum()} products have NaN/inf probabilities")
    k = min(k, probs.shape[1])
    part = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    part_probs = np.take_along_axis(probs, part, axis=1)
    order = np.argsort(-part_probs, axis=1, kind="stable")
    labels = np.take_along_axis(part, order, axis=1)
    top = np.take_along_axis(part_probs, order, axis=1)
    by_id = np.argsort(ids, kind="stable")
    return TopK(ids[by_id], labels[by_id].astype(np.int16), top[by_id].astype(np.float16))


def save_topk(path: str | os.PathLike, preds: TopK) -> None:
    validate_topk(preds, str(path))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, ids=preds.ids, labels=preds.labels, probs=preds.probs)


def load_topk(path: str | os.PathLike) -> TopK:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"prediction file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            preds = TopK(z["ids"], z["labels"], z["probs"])
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a valid top-K prediction file ({e})") from None
    validate_topk(preds, str(path))
    return preds


def validate_topk(preds: TopK, where: str) -> None:
    """Shapes, dtypes, sorted unique ids, finite probabilities: a broken source is named, not used."""
    if preds.ids.dtype != np.int64 or preds.labels.dtype != np.int16 or preds.probs.dtype != np.float16:
        raise DataError(f"{where}: dtypes {preds.ids.dtype}/{preds.labels.dtype}/{preds.probs.dtype}, expected int64/int16/float16")
    if preds.labels.ndim != 2 or preds.labels.shape != preds.probs.shape or len(preds.labels) != len(preds.ids):
        raise DataError(f"{where}: shapes ids {preds.ids.shape}, labels {preds.labels.shape}, probs {preds.probs.shape} disagree")
    if len(preds.ids) > 1 and not (np.diff(preds.ids) > 0).all():
        raise DataError(f"{where}: ids are not sorted and unique")
    if not np.isfinite(preds.probs.astype(np.float32)).all():
        raise DataError(f"{where}: {int((~np.isfinite(preds.probs.astype(np.float32))).any(axis=1).sum())} products have NaN/inf probabilities")


def concat_topk(parts: list[TopK]) -> TopK:
    """Join disjoint pieces (the OOF rows of each fold) into one sorted file."""
    ids = np.concatenate([p.ids for p in parts])
    order = np.argsort(ids, kind="stable")
    merged = TopK(ids[order], np.concatenate([p.labels for p in parts])[order], np.concatenate([p.probs for p in parts])[order])
    if len(merged.ids) > 1 and not (np.diff(merged.ids) > 0).all():
        raise DataError("the pieces overlap: a product is predicted twice")
    return merged
