"""What the stacker reads: the sources (from the registry, by kind) and the products to stack."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from common.categories import CategoryTree
from common.errors import DataError
from common.folds import fold_numbers, stratified_folds
from common.paths import WorkDir
from common.predictions import TopK
from common.prepare import DatasetPaths
from common.sources import BLENDS, SplitIds, list_sources, load_predictions, read_source
from common.workdata import Labels, known_test_labels

from .config import StackConfig


@dataclass
class Source:
    """One prediction source: its kind, OOF and test top-K, and (for blends) how it was made."""

    name: str
    kind: str
    oof: TopK
    test: TopK
    members: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    power: float = 1.0

    @property
    def k(self) -> int:
        return self.oof.k

    def split(self, split: str) -> TopK:
        return self.oof if split == "oof" else self.test


def load_source(work: WorkDir, name: str, splits: SplitIds | None = None) -> Source:
    oof, test = load_predictions(work, name, splits)
    info = read_source(work, name)
    return Source(name, info.kind, oof, test, info.members, info.weights, info.power)


def choose_stack_sources(available: list[Source], include_blends: bool) -> list[Source]:
    """Blends only when asked or when one of their members is missing."""
    names = {s.name for s in available}
    return [s for s in available if not (s.kind in BLENDS and not include_blends and s.members and set(s.members) <= names)]


@dataclass
class Products:
    """Products to stack: ids (sorted), image counts, true labels (-1 unknown), prior table row,
    and the stacker's CV fold (the fold of folds.csv; under the holdout protocol an inner fold)."""

    ids: np.ndarray
    n_imgs: np.ndarray
    y: np.ndarray
    prior_row: np.ndarray
    fold: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, sel: np.ndarray) -> "Products":
        return Products(self.ids[sel], self.n_imgs[sel], self.y[sel], self.prior_row[sel], self.fold[sel])

    def chunks(self, size: int) -> Iterator["Products"]:
        for start in range(0, len(self), max(size, 1)):
            yield self.take(slice(start, start + size))


def prior_tables(labels: np.ndarray, folds: np.ndarray, fold_ids: list[int], n_classes: int) -> np.ndarray:
    """log((count + 1) / (total + C)) per label: one row per fold computed WITHOUT that fold's
    labels (so a held-out product never counts its own label), and a last row over all of them
    (for test)."""
    rows = []
    for k in [*fold_ids, None]:
        use = (labels >= 0) if k is None else (labels >= 0) & (folds != k)
        counts = np.bincount(labels[use], minlength=n_classes).astype(np.float64)
        rows.append(np.log((counts + 1.0) / (counts.sum() + n_classes)))
    return np.asarray(rows, np.float32)


def union_ids(parts: list[TopK]) -> np.ndarray:
    return np.unique(np.concatenate([p.ids for p in parts])) if parts else np.zeros(0, np.int64)


@dataclass
class StackInputs:
    work: WorkDir
    tree: CategoryTree
    labels: Labels
    all_sources: list[Source]
    stacked: list[Source]
    oof: Products  # the evaluated products: in a fold, labelled, with at least one source row
    test: Products  # test products with at least one source row
    test_ids: np.ndarray  # every test product
    test_truth: np.ndarray | None  # label per test_ids (-1 unknown), mini data only
    prior: np.ndarray
    fold_ids: list[int]  # the folds of folds.csv (the prior table's rows)
    fallback: int
    cv_folds: list[int] = field(default_factory=list)  # the stacker CV's folds (oof.fold)
    protocol: str = "kfold"


def stacker_cv_folds(oof: Products, fold_ids: list[int], cfg: StackConfig) -> tuple[Products, list[int], str]:
    """k-fold: the stacker's CV folds are the models' folds. Holdout (one fold): every OOF row
    comes from the same models, so the stacker cross-validates over the holdout products with its
    own stratified folds (each inner model trains on the other inner folds' holdout products)."""
    if len(fold_ids) > 1:
        return oof, fold_ids, "kfold"
    if len(oof) < 2 * cfg.cv_folds:
        raise DataError(f"holdout protocol: {len(oof)} holdout products with predictions, too few for the stacker's "
                        f"{cfg.cv_folds}-fold CV (use a larger --holdout-fraction or fewer --cv-folds)")
    inner = stratified_folds(oof.y, cfg.cv_folds, cfg.seed)
    return Products(oof.ids, oof.n_imgs, oof.y, oof.prior_row, inner), list(range(cfg.cv_folds)), "holdout"


def load_inputs(work: WorkDir, cfg: StackConfig) -> StackInputs:
    paths = DatasetPaths.load(work)
    tree, labels = paths.tree(), Labels.load(work)
    names = cfg.sources or [s.name for s in list_sources(work) if s.kind != "stack"]
    if not names:
        raise FileNotFoundError(f"no finished prediction source (oof.npz + test.npz + summary.json) under {work.root / 'preds'}")
    splits = SplitIds.load(work)
    all_sources = [load_source(work, n, splits) for n in names]
    stacked = all_sources if cfg.sources else choose_stack_sources(all_sources, cfg.include_blends)
    fold_ids = fold_numbers(labels.fold)
    prior = prior_tables(labels.labels, labels.fold, fold_ids, len(tree))
    oof_ids = union_ids([s.oof for s in stacked])
    rows, found = labels.rows(oof_ids), np.isin(oof_ids, labels.ids)
    known = found & (labels.labels[rows] >= 0) & (labels.fold[rows] >= 0)
    oof_ids, rows = oof_ids[known], rows[known]
    fold = labels.fold[rows]
    oof = Products(oof_ids, labels.n_imgs[rows].astype(np.float32), labels.labels[rows].astype(np.int64), np.searchsorted(fold_ids, fold), fold)
    test_index = paths.index(work, "test")
    test_ids = np.sort(np.asarray(test_index.ids, np.int64))
    ids = np.intersect1d(union_ids([s.test for s in stacked]), test_ids)
    n_imgs = np.asarray(test_index.n_imgs)[test_index.positions_of(ids)].astype(np.float32)
    test = Products(ids, n_imgs, np.full(len(ids), -1, np.int64), np.full(len(ids), len(fold_ids)), np.full(len(ids), -1))
    oof, cv_folds, protocol = stacker_cv_folds(oof, fold_ids, cfg)
    return StackInputs(work, tree, labels, all_sources, stacked, oof, test, test_ids, known_test_labels(paths, tree, test_ids), prior,
                       fold_ids, labels.fallback, cv_folds, protocol)
