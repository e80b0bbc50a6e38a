"""The Kaggle submission: `_id,category_id`, one row per test product, and its validator."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_path
from .categories import CategoryTree
from .errors import DataError, log

HEADER = ["_id", "category_id"]


def write_submission(path: str | os.PathLike, ids: np.ndarray, category_ids: np.ndarray) -> Path:
    """Write a .csv or .csv.gz submission atomically, rows sorted by _id."""
    path = Path(path)
    order = np.argsort(ids, kind="stable")
    frame = pd.DataFrame({"_id": np.asarray(ids, np.int64)[order], "category_id": np.asarray(category_ids, np.int64)[order]})
    with atomic_path(path) as tmp:
        if path.suffix == ".gz":
            with gzip.open(tmp, "wt", newline="") as f:
                frame.to_csv(f, index=False)
        else:
            frame.to_csv(tmp, index=False)
    return path


def validate_submission(path: str | os.PathLike, test_ids: np.ndarray, tree: CategoryTree) -> pd.DataFrame:
    """Every test _id exactly once, nothing else, every category_id in the tree; returns the frame."""
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype={"_id": "int64", "category_id": "int64"})
    except (ValueError, pd.errors.ParserError) as e:
        raise DataError(f"{path}: unreadable submission ({e})") from None
    if list(frame.columns) != HEADER:
        raise DataError(f"{path}: header {list(frame.columns)}, expected {HEADER}")
    ids = frame["_id"].to_numpy()
    dup = pd.Series(ids).duplicated()
    if dup.any():
        raise DataError(f"{path}: {int(dup.sum())} _ids appear more than once, e.g. {int(ids[dup.to_numpy()][0])}")
    test_ids = np.asarray(test_ids, np.int64)
    missing = np.setdiff1d(test_ids, ids)
    if len(missing):
        raise DataError(f"{path}: {len(missing)} test products have no row, e.g. _id {missing[:5].tolist()}")
    extra = np.setdiff1d(ids, test_ids)
    if len(extra):
        raise DataError(f"{path}: {len(extra)} rows are not test products, e.g. _id {extra[:5].tolist()}")
    unknown = tree.to_index(frame["category_id"].to_numpy(), strict=False) < 0
    if unknown.any():
        raise DataError(f"{path}: {int(unknown.sum())} rows have a category_id not in {tree.source}, e.g. {int(frame['category_id'][unknown].iloc[0])}")
    return frame


MAX_FALLBACK_SHARE = 0.5  # more fallback rows than this: the predictions miss the test set (a swapped or foreign source)


def check_lost_products(path: str | os.PathLike, n_rows: int, lost_products: int, accept: bool) -> None:
    """Kaggle scores a missing row as wrong: a test file whose index lost documents (a cut or
    corrupt download) gives a short submission, refused unless `--accept-lost-products`."""
    if lost_products <= 0:
        return
    line = (f"{path}: {n_rows} rows, but the test file holds {n_rows + lost_products} products: {lost_products} could not be read "
            "(see the index's messages; a cut or corrupt test.bson?)")
    if not accept:
        raise DataError(line + "; --accept-lost-products writes the submission without them")
    log.warning("%s; written anyway (--accept-lost-products)", line)


def submission_from_topk(path: str | os.PathLike, preds, test_ids: np.ndarray, tree: CategoryTree, fallback_label: int,
                         max_fallback_share: float = MAX_FALLBACK_SHARE, lost_products: int = 0,
                         accept_lost_products: bool = False) -> tuple[Path, int]:
    """Top-1 of each predicted test product; every other test product gets `fallback_label`
    (the most frequent training category), so the submission always has every row. Refused when
    more than `max_fallback_share` of the rows would be the fallback (pass 1.0 to accept), and
    when the test index lost `lost_products` documents of its file (unless accepted).
    Returns (path, number of fallback rows)."""
    test_ids = np.asarray(test_ids, np.int64)
    test_ids = test_ids[np.sort(np.unique(test_ids, return_index=True)[1])]  # a repeated _id gets one row
    check_lost_products(path, len(test_ids), lost_products, accept_lost_products)
    labels = preds.top1_of(test_ids, missing=fallback_label)
    have = preds.lookup(test_ids)[1]
    share = float((~have).mean()) if len(test_ids) else 0.0
    if share > max_fallback_share:
        raise DataError(f"{path}: {int((~have).sum())} of {len(test_ids)} rows ({share:.0%}) would be the fallback label: the predictions "
                        f"cover too few test products (a swapped or foreign source?); --max-fallback-share 1 accepts it")
    write_submission(path, test_ids, tree.to_id(labels))
    validate_submission(path, test_ids, tree)
    return Path(path), int((~have).sum())


def score_submission(path: str | os.PathLike, labels_csv: str | os.PathLike) -> float:
    """Accuracy of a submission against known test labels (the mini data's test_labels.csv)."""
    sub = pd.read_csv(path)
    truth = pd.read_csv(labels_csv)
    merged = truth.merge(sub, on="_id", how="left", suffixes=("_true", "_pred"))
    return float((merged["category_id_true"] == merged["category_id_pred"]).mean())
