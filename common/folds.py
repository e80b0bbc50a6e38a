"""Product-level folds, stratified by category, saved as folds.csv (_id, fold).

    python -m common.folds --index work/index/train --out work/folds.csv --n-folds 5 --seed 42
    python -m common.folds --index work/index/train --out work/folds.csv --valid-ids common/resources/heng_valid_id_v0_50000.txt

Fold k's model trains on every product whose fold != k and predicts fold k (its OOF rows). A
product with fold -1 is always in training and never predicted out-of-fold: that is how a single
given validation list (the 2nd-place team's 50,000 ids) or a 95/5 split is expressed.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_path
from .bson_index import ProductIndex, load_index
from .categories import UNKNOWN, CategoryTree
from .errors import DataError, log
from .paths import CATEGORY_NAMES_CSV

ALWAYS_TRAIN = -1


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


def main(argv: list[str] | None = None) -> None:
    import logging

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", required=True, help="train index prefix (from common.bson_index)")
    p.add_argument("--categories", default=str(CATEGORY_NAMES_CSV))
    p.add_argument("--out", required=True, help="folds.csv to write")
    p.add_argument("--n-folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--valid-ids", help="file of validation _ids (one per line): fold 0 = these, the rest always train")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    index, tree = load_index(args.index), CategoryTree.from_csv(args.categories)
    if not index.has_labels:
        raise DataError(f"{args.index}: folds need a labelled (train) index")
    keep, excluded = usable_products(index, tree)
    ids = np.asarray(index.ids[keep])
    if args.valid_ids:
        folds = folds_from_valid_ids(ids, read_id_list(args.valid_ids), args.valid_ids)
    else:
        folds = stratified_folds(tree.to_index(index.category_ids[keep]), args.n_folds, args.seed)
    write_folds(args.out, ids, folds)
    if len(excluded):
        excluded_path = Path(args.out).with_name("folds_excluded.csv")
        with atomic_path(excluded_path) as tmp:
            excluded.to_csv(tmp, index=False)
        log.warning("%d products excluded from folds (listed in %s): %s", len(excluded), excluded_path, excluded["reason"].value_counts().to_dict())
    sizes = pd.Series(folds).value_counts().sort_index().to_dict()
    print(f"wrote {args.out}: {len(ids)} products, fold sizes {sizes}")


if __name__ == "__main__":
    main()
