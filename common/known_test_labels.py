"""Test labels where they are known (the mini data's test_labels.csv), per test index row."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .paths import WorkDir
from .prepare import DatasetPaths
from .recipe import FoldData


def known_test_labels(work: WorkDir, data: FoldData) -> np.ndarray | None:
    """Label index per test index row (-1 where unknown); None on the real data (no labels)."""
    path = DatasetPaths.load(work).test_labels
    if not path:
        return None
    frame = pd.read_csv(path)
    labels = np.full(len(data.test.index), -1, np.int64)
    pos = data.test.index.positions_of(frame["_id"].to_numpy(np.int64))
    labels[pos[pos >= 0]] = data.tree.to_index(frame["category_id"].to_numpy()[pos >= 0], strict=False)
    return labels
