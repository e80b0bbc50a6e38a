"""Product-level folds, stratified by category, saved as folds.csv (_id, fold).

    python -m common.folds --work W --n-folds 5 --seed 42          # W/folds.csv from W's train index
    python -m common.folds --work W --valid-ids common/resources/heng_valid_id_v0_50000.txt

Fold k's model trains on every product whose fold != k and predicts fold k (its OOF rows). A
product with fold -1 is always in training and never predicted out-of-fold: that is how a single
given validation list (the 2nd-place team's 50,000 ids) or a 95/5 split is expressed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_path
from .bson_index import ProductIndex
from .categories import UNKNOWN, CategoryTree
from .cli import parse_stage, run
from .errors import DataError, log
from .ids import lookup
from .paths import WorkDir
from .prepare import DatasetPaths

ALWAYS_TRAIN = -1  # in folds.csv: trains every fold's model, never predicted out of fold
EXCLUDED = -2  # not in folds.csv (listed in folds_excluded.csv): never trains, never scored


def stratified_folds(labels: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold per product: each category split evenly, rare categories spread across folds.

    Products are shuffled, grouped by category, and dealt round-robin with ONE counter running
    through all categories: a category of n products lands in n consecutive folds, so fold sizes
    differ by at most one overall and singletons of neighbouring categories go to different folds.
    """
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(labels))
    order = perm[np.argsort(labels[perm], kind="stable")]
    folds = np.empty(len(labels), np.int64)
    folds[order] = (np.arange(len(labels)) + rng.integers(n_folds)) % n_folds
    return folds


def folds_from_valid_ids(ids: np.ndarray, valid_ids: np.ndarray, source: str = "valid ids") -> np.ndarray:
    """Fold 0 = the given validation products; every other product always trains (-1)."""
    valid_ids = np.unique(valid_ids)
    is_valid = np.isin(ids, valid_ids)
    found = int(is_valid.sum())
    log.info("%s: %d of %d given validation ids are in the index", source, found, len(valid_ids))
    if found == 0:
        raise DataError(f"{source}: none of the {len(valid_ids)} validation ids is in the train index")
    if found < len(valid_ids):
        log.warning("%s: %d validation ids are not in the train index (ignored)", source, len(valid_ids) - found)
    return np.where(is_valid, 0, ALWAYS_TRAIN)


def usable_products(index: ProductIndex, tree: CategoryTree) -> tuple[np.ndarray, pd.DataFrame]:
    """Mask of products a model can learn from, and a table of the excluded ones with the reason."""
    labels = tree.to_index(index.category_ids, strict=False)
    reasons = np.full(len(index), "", dtype=object)
    reasons[index.n_imgs <= 0] = "no images"
    reasons[labels == UNKNOWN] = "unknown category_id"
    _, first = np.unique(index.ids, return_index=True)
    duplicate = np.ones(len(index), bool)
    duplicate[first] = False
    reasons[duplicate] = "duplicate _id (first kept)"
    keep = reasons == ""
    excluded = pd.DataFrame({"_id": index.ids[~keep], "category_id": index.category_ids[~keep], "reason": reasons[~keep]})
    return keep, excluded


def read_id_list(path: str | os.PathLike) -> np.ndarray:
    text = Path(path).read_text().split()
    try:
        return np.array([int(t) for t in text], dtype=np.int64)
    except ValueError as e:
        raise DataError(f"{path}: expected one integer product _id per line: {e}") from None


def write_folds(path: str | os.PathLike, ids: np.ndarray, folds: np.ndarray) -> None:
    order = np.argsort(ids, kind="stable")
    frame = pd.DataFrame({"_id": ids[order], "fold": folds[order]})
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def read_folds(path: str | os.PathLike) -> pd.DataFrame:
    frame = pd.read_csv(path)
    if list(frame.columns) != ["_id", "fold"]:
        raise DataError(f"{path}: expected columns ['_id', 'fold'], found {list(frame.columns)}")
    return frame


def fold_of(ids: np.ndarray, folds: pd.DataFrame) -> np.ndarray:
    """The fold of each _id (EXCLUDED for ids absent from folds.csv)."""
    order = np.argsort(folds["_id"].to_numpy(np.int64), kind="stable")
    rows, found = lookup(folds["_id"].to_numpy(np.int64)[order], np.asarray(ids, np.int64))
    return np.where(found, folds["fold"].to_numpy(np.int64)[order][rows], EXCLUDED).astype(np.int64)


def fold_numbers(fold: np.ndarray) -> list[int]:
    """The folds that predict out of fold (ALWAYS_TRAIN and EXCLUDED are not folds)."""
    return sorted(int(k) for k in np.unique(fold) if k >= 0)


@dataclass
class FoldsOptions:
    n_folds: int = 5
    seed: int = 42
    valid_ids: str = ""  # a file of validation _ids (one per line): fold 0 = these, every other product always trains (-1)


def make_folds(work: WorkDir, opts: FoldsOptions) -> tuple[np.ndarray, np.ndarray]:
    """(_ids, fold per _id) of the usable train products; the excluded ones go to folds_excluded.csv."""
    paths = DatasetPaths.load(work)
    index, tree = paths.index(work, "train"), paths.tree()
    if not index.has_labels:
        raise DataError(f"{work.index('train')}: folds need a labelled (train) index")
    keep, excluded = usable_products(index, tree)
    ids = np.asarray(index.ids[keep])
    if opts.valid_ids:
        folds = folds_from_valid_ids(ids, read_id_list(opts.valid_ids), opts.valid_ids)
    else:
        folds = stratified_folds(tree.to_index(index.category_ids[keep]), opts.n_folds, opts.seed)
    excluded_path = work.folds.with_name("folds_excluded.csv")
    if len(excluded):
        with atomic_path(excluded_path) as tmp:
            excluded.to_csv(tmp, index=False)
        log.warning("%d products excluded from folds (listed in %s): %s", len(excluded), excluded_path, excluded["reason"].value_counts().to_dict())
    else:
        excluded_path.unlink(missing_ok=True)
    return ids, folds


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = parse_stage(argv, __doc__, FoldsOptions)
    ids, folds = make_folds(args.work, args.options)
    write_folds(args.work.folds, ids, folds)
    sizes = pd.Series(folds).value_counts().sort_index().to_dict()
    print(f"wrote {args.work.folds}: {len(ids)} products, fold sizes {sizes}")
    return read_folds(args.work.folds)


if __name__ == "__main__":
    run(main)
