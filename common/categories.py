"""The category tree of category_names.csv: label index = row order, level-1 / level-2 groups.

Names are kept exactly as written (some level-3 names end in a space, and 7 level-3 names repeat
under different level-2 groups), so ids, not names, are the keys.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DataError, UnknownCategoryError
from .ids import lookup

COLUMNS = ["category_id", "category_level1", "category_level2", "category_level3"]
UNKNOWN = -1


class CategoryTree:
    """Maps category_id <-> label index <-> names, and each label to its level-1/level-2 group."""

    def __init__(self, frame: pd.DataFrame, source: str = "<frame>"):
        self.source = source
        self.frame = frame.reset_index(drop=True)
        self.ids = self.frame["category_id"].to_numpy(np.int64)
        self.level1_names = self.frame["category_level1"].to_numpy(str)
        self.level2_names = self.frame["category_level2"].to_numpy(str)
        self.level3_names = self.frame["category_level3"].to_numpy(str)
        self.level1_groups, self.level1_of = np.unique(self.level1_names, return_inverse=True)
        # level-2 groups are keyed by name, as in the paper's Table 2 (483): 3 names sit under two parents
        self.level2_groups, self.level2_of = np.unique(self.level2_names, return_inverse=True)
        self._sorted = np.argsort(self.ids, kind="stable")

    @classmethod
    def from_csv(cls, path: str | os.PathLike) -> "CategoryTree":
        path = Path(path)
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8")
        except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise DataError(f"{path}: cannot read category CSV: {e}") from None
        if list(frame.columns) != COLUMNS:
            raise DataError(f"{path}: expected columns {COLUMNS}, found {list(frame.columns)}")
        bad = ~frame["category_id"].str.fullmatch(r"\d+")
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(f"{path}: row {row + 2}: category_id {frame['category_id'][row]!r} is not an integer")
        frame["category_id"] = frame["category_id"].astype(np.int64)
        dup = frame["category_id"].duplicated()
        if dup.any():
            raise DataError(f"{path}: category_id {int(frame['category_id'][dup].iloc[0])} appears twice")
        return cls(frame, str(path))

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def order_sha256(self) -> str:
        """Fingerprint of the category_ids in row order: a label is a row number, so this is what every
        model and prediction of a work dir depends on (names and line endings are not)."""
        import hashlib

        return hashlib.sha256(self.ids.astype("<i8").tobytes()).hexdigest()

    @property
    def n_level1(self) -> int:
        return len(self.level1_groups)

    @property
    def n_level2(self) -> int:
        return len(self.level2_groups)

    def to_index(self, category_ids: np.ndarray | list[int], strict: bool = True) -> np.ndarray:
        """Label indices of category ids; unknown ids raise (strict) or map to UNKNOWN (-1)."""
        ids = np.asarray(category_ids, dtype=np.int64)
        pos, found = lookup(self.ids[self._sorted], ids)
        labels = np.where(found, self._sorted[pos], UNKNOWN)
        if strict and not found.all():
            bad = np.unique(ids[~found])
            raise UnknownCategoryError(
                f"{(~found).sum()} category ids not in {self.source}: {bad[:10].tolist()}{' ...' if len(bad) > 10 else ''}"
            )
        return labels

    def to_id(self, labels: np.ndarray | list[int]) -> np.ndarray:
        labels = np.asarray(labels, dtype=np.int64)
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.ids)):
            raise DataError(f"label index out of range 0..{len(self.ids) - 1} for {self.source}")
        return self.ids[labels]

    def name(self, label: int) -> str:
        return f"{self.level1_names[label]} > {self.level2_names[label]} > {self.level3_names[label]}"

    def subset(self, category_ids: np.ndarray | list[int]) -> "CategoryTree":
        """A smaller tree in the original row order (the mini dataset's category_names.csv)."""
        keep = np.isin(self.ids, np.asarray(category_ids, dtype=np.int64))
        return CategoryTree(self.frame[keep], f"{self.source}[subset]")

    def to_csv(self, path: str | os.PathLike) -> None:
        from .atomic import atomic_path

        with atomic_path(path) as tmp:
            self.frame.to_csv(tmp, index=False, lineterminator="\n")
