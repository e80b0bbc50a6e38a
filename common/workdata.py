"""What the stages read from a prepared work dir: the category tree, both BSON readers, each train
product's label and fold, labels by _id for scoring, the fallback label, and the test labels where
they are known (the mini data's test_labels.csv). numpy only: OCR, MD5, the stack and the report
load it without torch."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .bson_reader import BsonReader
from .categories import CategoryTree
from .errors import DataError
from .folds import EXCLUDED, fold_numbers, fold_of, read_folds
from .ids import first_occurrence, lookup
from .metrics import most_frequent_label
from .paths import WorkDir
from .prepare import DatasetPaths


def known_test_labels(paths: DatasetPaths, tree: CategoryTree, ids: np.ndarray) -> np.ndarray | None:
    """Label index per given test _id (-1 where unknown); None on the real data (Kaggle keeps them)."""
    if not paths.test_labels:
        return None
    frame = pd.read_csv(paths.test_labels)
    truth_ids = frame["_id"].to_numpy(np.int64)
    order = np.argsort(truth_ids, kind="stable")
    rows, found = lookup(truth_ids[order], np.asarray(ids, np.int64))
    labels = tree.to_index(frame["category_id"].to_numpy()[order], strict=False)
    return np.where(found, labels[rows], -1).astype(np.int64)


@dataclass
class FoldData:
    """Everything a fold-aware stage needs, per index row, loaded once."""

    paths: DatasetPaths
    tree: CategoryTree
    train: BsonReader
    test: BsonReader
    labels: np.ndarray  # label index per train index row (-1 unknown)
    fold: np.ndarray  # fold per train index row (EXCLUDED when not in folds.csv)

    @property
    def folds(self) -> list[int]:
        return fold_numbers(self.fold)

    def rows(self, fold: int) -> tuple[np.ndarray, np.ndarray]:
        """(training rows, validation rows) of fold k: fold -1 products always train."""
        usable = self.fold != EXCLUDED
        return np.flatnonzero(usable & (self.fold != fold)), np.flatnonzero(self.fold == fold)

    @property
    def test_rows(self) -> np.ndarray:
        """Test products to predict: with images, each _id once (the rest fall back in the submission)."""
        return np.flatnonzero((self.test.index.n_imgs > 0) & first_occurrence(self.test.index.ids))

    @property
    def fallback(self) -> int:
        return most_frequent_label(self.labels)

    def test_truth(self) -> np.ndarray | None:
        """Label index per test index row where known (mini data), else None."""
        return known_test_labels(self.paths, self.tree, np.asarray(self.test.index.ids))


def load_fold_data(work: WorkDir) -> FoldData:
    paths = DatasetPaths.load(work)
    tree = paths.tree()
    train_index, test_index = paths.index(work, "train"), paths.index(work, "test")
    folds = read_folds(work.folds)
    pos = train_index.positions_of(folds["_id"].to_numpy())
    if (pos < 0).any():
        raise DataError(f"{work.folds}: {(pos < 0).sum()} _ids are not in the train index; rebuild the folds")
    fold = np.full(len(train_index), EXCLUDED, np.int64)
    fold[pos] = folds["fold"].to_numpy()  # a repeated _id: its first document only (the others stay excluded)
    labels = tree.to_index(train_index.category_ids, strict=False)
    return FoldData(paths, tree, BsonReader(paths.train, train_index), BsonReader(paths.test, test_index), labels, fold)


@dataclass
class Labels:
    """Train labels, image counts and folds by sorted _id: what scoring an OOF file needs."""

    ids: np.ndarray
    labels: np.ndarray
    n_imgs: np.ndarray
    fold: np.ndarray

    @classmethod
    def load(cls, work: WorkDir) -> "Labels":
        paths = DatasetPaths.load(work)
        index = paths.index(work, "train")
        order = np.argsort(index.ids, kind="stable")
        ids = np.asarray(index.ids[order])
        fold = fold_of(ids, read_folds(work.folds)) if Path(work.folds).exists() else np.full(len(ids), EXCLUDED)
        return cls(ids, paths.tree().to_index(index.category_ids[order], strict=False), np.asarray(index.n_imgs[order]), fold)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        return lookup(self.ids, ids)[0]

    def of(self, ids: np.ndarray) -> np.ndarray:
        """Label per _id (-1 for an id that is not a train product)."""
        rows, found = lookup(self.ids, ids)
        return np.where(found, self.labels[rows], -1)

    @property
    def fallback(self) -> int:
        return most_frequent_label(self.labels)
