"""Which products to read: those the CNN sources put, with enough probability, in a media group.

Why a selection at all: tesseract costs ~0.2 CPU-s per image, and text only helps where a cover
carries a title (books, music, films, games: ~14% of the real products). The CNN sources already
know the level-1 group well (level-1 OOF accuracy ~0.91 on the mini data), so their level-1
probability mass picks the products worth reading.

Default sources: the solution and team blends that exist (in the source registry, common/sources.py),
else every finished image model; a product's media mass is the mean, over the sources that
predict it, of the summed top-K probabilities whose label lies in a media group.
Averaging (not max) keeps one over-confident model from pulling in many non-media products.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.categories import CategoryTree
from common.errors import DataError, log
from common.folds import EXCLUDED
from common.ids import first_occurrence
from common.paths import WorkDir
from common.predictions import TopK
from common.sources import BLENDS, SplitIds, list_sources, load_predictions


def media_labels(tree: CategoryTree, groups: list[str]) -> np.ndarray:
    """bool[C]: labels whose level-1 group is a media group (groups absent from the tree are skipped)."""
    present = [g for g in groups if g in set(tree.level1_names)]
    missing = sorted(set(groups) - set(present))
    if missing:
        log.info("media groups absent from this category tree (skipped): %s", missing)
    return np.isin(tree.level1_names, present)


def default_sources(work: WorkDir) -> list[str]:
    """The solution / team blends present, else every finished image model (never a side source:
    OCR choosing by its own predictions would be circular)."""
    return [s.name for s in list_sources(work, BLENDS)] or [s.name for s in list_sources(work, ["model"])]


def media_mass(preds: TopK, media: np.ndarray) -> np.ndarray:
    """float32[N]: the summed top-K probability of media labels per product."""
    valid = preds.labels >= 0
    is_media = valid & media[np.where(valid, preds.labels, 0)]
    return (preds.probs.astype(np.float32) * is_media).sum(axis=1)


def mean_mass(parts: list[TopK], media: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Mean media mass over the sources that predict each of `ids` (NaN where none does)."""
    total, count = np.zeros(len(ids), np.float64), np.zeros(len(ids), np.int64)
    for part in parts:
        rows, have = part.lookup(ids)
        total[have] += media_mass(part, media)[rows[have]]
        count += have
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


@dataclass
class Selection:
    """Index rows to read, per split, and the mass that chose them."""

    train_rows: np.ndarray
    test_rows: np.ndarray
    train_mass: np.ndarray  # per train index row (NaN: no source predicts it)
    test_mass: np.ndarray
    by_label: int  # train rows chosen by their true label (no OOF prediction: fold -1 products)


def select_products(parts_oof: list[TopK], parts_test: list[TopK], media: np.ndarray, train_ids: np.ndarray,
                    train_labels: np.ndarray, train_fold: np.ndarray, test_ids: np.ndarray, threshold: float) -> Selection:
    """Train products by their OOF media mass (as test products will be chosen); a train product
    no source predicts out of fold (fold -1: always trains) is chosen by its own label instead,
    which is fair because it is never scored, only learnt from."""
    train_mass = mean_mass(parts_oof, media, np.asarray(train_ids, np.int64))
    test_rows, test_mass = select_test(parts_test, media, test_ids, threshold)
    usable = train_fold != EXCLUDED
    predicted = ~np.isnan(train_mass)
    by_mass = usable & predicted & (np.nan_to_num(train_mass) >= threshold)
    known = train_labels >= 0
    by_label = usable & ~predicted & known & media[np.where(known, train_labels, 0)]
    return Selection(np.flatnonzero(by_mass | by_label), test_rows,
                     train_mass, test_mass, int(by_label.sum()))


def select_test(parts_test: list[TopK], media: np.ndarray, test_ids: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(rows of `test_ids` to read, the mean media mass of each id): mass >= threshold, the first
    document of a repeated _id. The test half of select_products, and what the loaded predictor
    (ocr.predict) chooses new products by."""
    test_ids = np.asarray(test_ids, np.int64)
    test_mass = mean_mass(parts_test, media, test_ids)
    return np.flatnonzero((np.nan_to_num(test_mass) >= threshold) & first_occurrence(test_ids)), test_mass


def load_sources(work: WorkDir, sources: list[str]) -> tuple[list[TopK], list[TopK]]:
    if not sources:
        raise DataError(f"no CNN prediction source under {work.root / 'preds'} to choose the products to read: "
                        "run a solution first or pass --sources")
    splits = SplitIds.load(work)
    pairs = [load_predictions(work, s, splits) for s in sources]
    return [oof for oof, _ in pairs], [test for _, test in pairs]


def selection_report(selected: np.ndarray, true_media: np.ndarray) -> dict:
    """How many products the selection reads, how many of the true media products it catches."""
    caught = int((selected & true_media).sum())
    return {"selected": int(selected.sum()), "true_media": int(true_media.sum()), "true_media_caught": caught,
            "recall": caught / true_media.sum() if true_media.any() else None,
            "precision": caught / selected.sum() if selected.any() else None}
