"""The top-K prediction format every source writes (CNNs, OCR, MD5): work/preds/<source>/{oof,test}.npz,
and its operations (look-up by id, join, weighted / power mean). numpy only: the CPU stages
(OCR, MD5, stack, report) use it without loading torch.

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
from .ids import lookup

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

    @classmethod
    def empty(cls, k: int) -> "TopK":
        return cls(np.zeros(0, np.int64), np.full((0, k), PAD_LABEL, np.int16), np.zeros((0, k), np.float16))

    def take(self, rows: np.ndarray) -> "TopK":
        return TopK(self.ids[rows], self.labels[rows], self.probs[rows])

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row of each id, whether this source has it)."""
        return lookup(self.ids, ids)

    def top1_of(self, ids: np.ndarray, missing: int = PAD_LABEL) -> np.ndarray:
        """Top-1 label per id; `missing` where this source has no row (scored wrong unless a
        fallback label is given)."""
        rows, have = self.lookup(ids)
        return np.where(have, self.top1[rows] if len(self) else missing, missing).astype(np.int64)

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


def load_topk(path: str | os.PathLike, n_classes: int | None = None, within: np.ndarray | None = None, split: str = "") -> TopK:
    """A prediction file, refused (DataError naming it) unless valid: see validate_topk; with
    `n_classes` every label is a class of the tree, with `within` (sorted ids) every id is a
    product of the split the file claims (train ids in an oof.npz, test ids in a test.npz)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"prediction file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            preds = TopK(z["ids"], z["labels"], z["probs"])
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a valid top-K prediction file ({e})") from None
    validate_topk(preds, str(path), n_classes)
    if within is not None and len(preds):
        outside = ~lookup(within, preds.ids)[1]
        if outside.any():
            raise DataError(f"{path}: {int(outside.sum())} of {len(preds)} ids are not {split or 'the split'} products "
                            f"(first _id {int(preds.ids[outside][0])}): a file of the other split, or of other data")
    return preds


PROB_TOLERANCE = 2e-3  # float16 rounding of probabilities near 1


def validate_topk(preds: TopK, where: str, n_classes: int | None = None) -> None:
    """Shapes, dtypes, sorted unique ids, labels inside the tree (PAD_LABEL pads), probabilities
    finite, in [0, 1] and non-increasing along K: a broken source is named, not used."""
    if preds.ids.dtype != np.int64 or preds.labels.dtype != np.int16 or preds.probs.dtype != np.float16:
        raise DataError(f"{where}: dtypes {preds.ids.dtype}/{preds.labels.dtype}/{preds.probs.dtype}, expected int64/int16/float16")
    if preds.labels.ndim != 2 or preds.labels.shape != preds.probs.shape or len(preds.labels) != len(preds.ids):
        raise DataError(f"{where}: shapes ids {preds.ids.shape}, labels {preds.labels.shape}, probs {preds.probs.shape} disagree")
    if len(preds.ids) > 1 and not (np.diff(preds.ids) > 0).all():
        raise DataError(f"{where}: ids are not sorted and unique")
    probs = preds.probs.astype(np.float32)
    bad = [(~np.isfinite(probs)).any(axis=1), (preds.labels < PAD_LABEL).any(axis=1), ((probs < 0) | (probs > 1 + PROB_TOLERANCE)).any(axis=1),
           (np.diff(probs, axis=1) > PROB_TOLERANCE).any(axis=1)]
    if n_classes is not None:
        bad.append((preds.labels >= n_classes).any(axis=1))
    problems = ("NaN/inf probabilities", f"labels below {PAD_LABEL}", "probabilities outside [0, 1]", "probabilities increasing along K",
                f"labels >= {n_classes} (the tree's class count)")
    for mask, problem in zip(bad, problems):
        if mask.any():
            raise DataError(f"{where}: {int(mask.sum())} products have {problem} (first _id {int(preds.ids[mask][0])})")


def concat_topk(parts: list[TopK], k: int | None = None) -> TopK:
    """Join disjoint pieces (the OOF rows of each fold, the ranks' shards) into one sorted file;
    no piece at all gives an empty file of width k."""
    parts = [p for p in parts if len(p)] or parts[:1]
    if not parts:
        if k is None:
            raise ValueError("concat_topk of no parts needs k")
        return TopK.empty(k)
    ids = np.concatenate([p.ids for p in parts])
    order = np.argsort(ids, kind="stable")
    merged = TopK(ids[order], np.concatenate([p.labels for p in parts])[order], np.concatenate([p.probs for p in parts])[order])
    if len(merged.ids) > 1 and not (np.diff(merged.ids) > 0).all():
        raise DataError("the pieces overlap: a product is predicted twice")
    return merged


def average_topk(parts: list[TopK], k: int, weights: list[float] | None = None) -> TopK:
    """Weighted mean of sparse top-K predictions (labels absent from a part count as 0).

    Averages fold models on the test set and models within a solution. Products present in only
    some parts are averaged over the parts that have them. Dense work stays in chunks of 4096
    products (4096 x 5270 float32 = 86 MB), so full-scale files never go dense.
    """
    weights = weights or [1.0] * len(parts)
    ids = np.unique(np.concatenate([p.ids for p in parts]))
    n_classes = 1 + max((int(p.labels.max()) for p in parts if p.labels.size), default=0)
    labels_out = np.full((len(ids), k), PAD_LABEL, np.int16)
    probs_out = np.zeros((len(ids), k), np.float16)
    for start in range(0, len(ids), 4096):
        chunk = ids[start : start + 4096]
        acc = np.zeros((len(chunk), n_classes), np.float32)
        wsum = np.zeros(len(chunk), np.float32)
        for part, w in zip(parts, weights):
            rows, present = part.lookup(chunk)
            lab, pr = part.labels[rows[present]], part.probs[rows[present]]
            r, c = np.nonzero(lab >= 0)
            np.add.at(acc, (np.flatnonzero(present)[r], lab[r, c]), w * pr[r, c].astype(np.float32))
            wsum += w * present
        acc /= wsum[:, None].clip(1e-12)
        kk = min(k, n_classes)
        top = np.argpartition(-acc, kk - 1, axis=1)[:, :kk]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(acc, top, axis=1), axis=1, kind="stable"), axis=1)
        labels_out[start : start + len(chunk), :kk] = top
        probs_out[start : start + len(chunk), :kk] = np.take_along_axis(acc, top, axis=1)
    return TopK(ids, labels_out, probs_out)


def power_mean(parts: list[TopK], k: int, weights: list[float] | None = None, power: float = 1.0) -> TopK:
    """Weighted mean of p**power, raised back to 1/power (power 0.5 = the 2nd place's sqrt blend:
    it lets a confident member weigh less than in a plain mean). Argmax is what matters; the
    1/power keeps the scores on a probability-like scale for later stages."""
    if power == 1.0:
        return average_topk(parts, k, weights)
    raised = [TopK(p.ids, p.labels, (p.probs.astype(np.float32) ** power).astype(np.float16)) for p in parts]
    out = average_topk(raised, k, weights)
    return TopK(out.ids, out.labels, (out.probs.astype(np.float32) ** (1.0 / power)).astype(np.float16))
