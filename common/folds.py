"""The evaluation protocol: product-level folds saved as folds.csv (_id, fold) + folds.json.

    python -m common.folds --work W --protocol kfold --n-folds 5 --seed 42     # 5 stratified folds
    python -m common.folds --work W --protocol holdout                          # the winners' protocol
    python -m common.folds --work W --protocol holdout --holdout-fraction 0.05  # (when the 50k ids are absent)
    python -m common.folds --work W --valid-ids my_ids.txt                      # holdout = a given id list

Fold k's model trains on every product whose fold != k and predicts fold k (its OOF rows). A
product with fold -1 is always in training and never predicted out-of-fold. Under `holdout` (the
full profile's default, as the winners did) there is one fold, 0: the 2nd-place team's 50,000 ids
(common/resources/) when the train set holds them, else a stratified `--holdout-fraction` of the
products (dylan used 5%); each recipe trains once and predicts the holdout (its OOF) and test, and
the stacker runs its own K-fold CV over the holdout products. folds.json records the protocol;
every stage reads it from there and writes it into its summary.json.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd

from .atomic import atomic_path, read_json, write_json
from .bson_index import ProductIndex
from .categories import UNKNOWN, CategoryTree
from .checks import Range, at_least, check_fields
from .cli import parse_stage, run
from .errors import DataError, log
from .ids import lookup
from .paths import HENG_VALID_IDS, WorkDir
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


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Fold 0 for a `fraction` of the products, spread evenly over every category, the rest -1.

    Products are shuffled and grouped by category; walking that order, a product joins the
    holdout each time the running count x fraction crosses a whole number (from a random phase),
    so each category gives its share (a category of n gets floor or ceil of n x fraction).
    """
    if not 0 < fraction < 1:
        raise DataError(f"holdout fraction must be between 0 and 1, got {fraction}")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(labels))
    order = perm[np.argsort(labels[perm], kind="stable")]
    position = np.arange(len(labels)) + rng.random() / fraction
    chosen = np.floor((position + 1) * fraction) > np.floor(position * fraction)
    folds = np.full(len(labels), ALWAYS_TRAIN, np.int64)
    folds[order[chosen]] = 0
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


PROTOCOLS = ("kfold", "holdout")
HENG_MIN_FOUND = 0.99  # the 50k list is the holdout only on the official train set (which holds every id)


@dataclass
class FoldsOptions:
    protocol: str = "kfold"  # kfold (n_folds models per recipe) | holdout (one model, the winners' protocol)
    n_folds: Annotated[int, at_least(2)] = 5  # kfold only
    holdout_fraction: Annotated[float, Range(0, 1, low_open=True, high_open=True)] = 0.05  # holdout without the 50k ids in the data: this stratified share of the products
    seed: Annotated[int, at_least(0)] = 42
    valid_ids: str = ""  # a file of validation _ids (one per line): the holdout is these (implies --protocol holdout)
    force: bool = False  # rewrite folds that were made with other options (what was trained on them goes stale)

    def __post_init__(self) -> None:
        check_fields(self, "folds options")


def protocol_file(work: WorkDir) -> Path:
    return work.folds.with_name("folds.json")


def read_protocol(work: WorkDir) -> dict:
    """What folds.json records (protocol, holdout, folds); {} for a work dir without one."""
    path = protocol_file(work)
    return read_json(path, "rerun the folds stage (python -m common.folds --force)") if path.exists() else {}


def holdout_folds(ids: np.ndarray, labels: np.ndarray, opts: FoldsOptions) -> tuple[np.ndarray, str]:
    """The holdout: a given id list, else the 2nd team's 50k ids when the data holds them, else a stratified fraction."""
    if opts.valid_ids:
        return folds_from_valid_ids(ids, read_id_list(opts.valid_ids), opts.valid_ids), f"ids in {opts.valid_ids}"
    heng = read_id_list(HENG_VALID_IDS)
    found = np.isin(heng, ids).mean()
    if found >= HENG_MIN_FOUND:
        return folds_from_valid_ids(ids, heng, HENG_VALID_IDS.name), f"the 2nd-place team's {len(heng)} ids ({HENG_VALID_IDS.name})"
    log.info("holdout: %.1f%% of the 2nd team's 50k ids are in this train set (not the official data): a stratified %.1f%% of the products",
             100 * found, 100 * opts.holdout_fraction)
    return stratified_holdout(labels, opts.holdout_fraction, opts.seed), f"a stratified {opts.holdout_fraction:.1%} of the products (seed {opts.seed})"


def make_folds(work: WorkDir, opts: FoldsOptions) -> tuple[np.ndarray, np.ndarray, str]:
    """(_ids, fold per _id, what the holdout is) of the usable train products; the excluded ones go to folds_excluded.csv."""
    paths = DatasetPaths.load(work)
    index, tree = paths.index(work, "train"), paths.tree()
    if not index.has_labels:
        raise DataError(f"{work.index('train')}: folds need a labelled (train) index")
    keep, excluded = usable_products(index, tree)
    ids, labels = np.asarray(index.ids[keep]), tree.to_index(index.category_ids[keep])
    if opts.protocol not in PROTOCOLS:
        raise DataError(f"--protocol {opts.protocol!r}: choose from {list(PROTOCOLS)}")
    if opts.protocol == "holdout" or opts.valid_ids:
        folds, holdout = holdout_folds(ids, labels, opts)
    else:
        folds, holdout = stratified_folds(labels, opts.n_folds, opts.seed), ""
    excluded_path = work.folds.with_name("folds_excluded.csv")
    if len(excluded):
        with atomic_path(excluded_path) as tmp:
            excluded.to_csv(tmp, index=False)
        log.warning("%d products excluded from folds (listed in %s): %s", len(excluded), excluded_path, excluded["reason"].value_counts().to_dict())
    else:
        excluded_path.unlink(missing_ok=True)
    return ids, folds, holdout


def protocol_record(opts: FoldsOptions, holdout: str, ids: np.ndarray, folds: np.ndarray, index_sha256: str | None = None) -> dict:
    protocol = "holdout" if opts.valid_ids else opts.protocol
    record = {"protocol": protocol, "seed": opts.seed, "products": int(len(ids)), "train_index": index_sha256,
              "fold_sizes": {str(k): int(v) for k, v in zip(*np.unique(folds, return_counts=True))}}
    if protocol == "holdout":
        record["holdout"] = {"source": holdout, "products": int((folds == 0).sum())}
    else:
        record["n_folds"] = opts.n_folds
    return record


def check_unchanged(work: WorkDir, record: dict, opts: FoldsOptions) -> bool:
    """True when folds.csv already holds these folds; stops when it holds other ones (every later
    stage trained on them), unless --force."""
    old = read_protocol(work)
    if not old or not work.folds.exists() or opts.force:
        return False
    if old == record:
        return True
    differs = ", ".join(f"{k}: {old.get(k)!r} -> {record.get(k)!r}" for k in sorted(set(old) | set(record)) if old.get(k) != record.get(k))
    raise DataError(f"{work.folds} was made with other folds or data than asked now ({differs}): every model under {work.root} "
                    "learnt from those folds. Use another --work, or --force to rewrite them (and rerun every later stage)")


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = parse_stage(argv, __doc__, FoldsOptions)
    ids, folds, holdout = make_folds(args.work, args.options)
    index_sha256 = DatasetPaths.load(args.work).index(args.work, "train").meta.get("rows_sha256")
    record = protocol_record(args.options, holdout, ids, folds, index_sha256)
    if check_unchanged(args.work, record, args.options):
        print(f"{args.work.folds}: up to date ({record['protocol']}, fold sizes {record['fold_sizes']})")
        return read_folds(args.work.folds)
    write_folds(args.work.folds, ids, folds)
    write_json(protocol_file(args.work), record)
    what = f", holdout = {holdout}" if holdout else ""
    print(f"wrote {args.work.folds}: {len(ids)} products, protocol {record['protocol']}{what}, fold sizes {record['fold_sizes']}")
    return read_folds(args.work.folds)


if __name__ == "__main__":
    run(main)
