"""Product-id bookkeeping shared by every stage: look ids up in a sorted id array, and pick the
first document of a repeated _id. numpy only."""
from __future__ import annotations

import numpy as np


def lookup(sorted_ids: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row of each id in `sorted_ids`, whether it is there). Rows of absent ids are valid
    positions (clipped), so `values[rows]` never fails; mask them with the second array."""
    sorted_ids, ids = np.asarray(sorted_ids), np.asarray(ids)
    if len(sorted_ids) == 0:
        return np.zeros(len(ids), np.int64), np.zeros(len(ids), bool)
    rows = np.clip(np.searchsorted(sorted_ids, ids), 0, len(sorted_ids) - 1)
    return rows, sorted_ids[rows] == ids


def first_occurrence(ids: np.ndarray) -> np.ndarray:
    """Mask of the first row of each _id: a repeated _id (reported when indexing) is predicted and
    submitted once, from its first document."""
    ids = np.asarray(ids)
    mask = np.zeros(len(ids), bool)
    mask[np.unique(ids, return_index=True)[1]] = True
    return mask
