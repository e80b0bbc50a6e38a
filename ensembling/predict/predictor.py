"""Predictor: new products through a trained work dir, as its test products went (see workspace.py).

    from ensembling.predict import Predictor
    predictor = Predictor.from_work("work")                 # the stack (default), or source="dylan", ...
    frame = predictor.predict([["shoe_front.jpg", "shoe_side.jpg"], [open("book.png", "rb").read()]], top=3)
    print(frame)   # product, rank, category_id, score, category_level1..3
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from common.calibration import apply_map, load_map
from common.errors import DataError
from common.paths import WorkDir
from common.predictions import TopK, load_topk
from common.prepare import DatasetPaths
from common.sources import list_sources, read_source

from .products import NewProduct, from_objects, write_bson
from .workspace import in_order, make_workspace, rebuild

log = logging.getLogger("cdiscount")
COLUMNS = ["product", "rank", "category_id", "score", "category_level1", "category_level2", "category_level3"]
DEFAULT_SOURCE = "stack"


def default_source(work: WorkDir) -> str:
    """The stack when the work dir has one, else the only blend; otherwise the user must choose."""
    if (work.preds(DEFAULT_SOURCE) / "summary.json").exists():
        return DEFAULT_SOURCE
    names = [s.name for s in list_sources(work, ["solution blend", "team blend", "model"], finished=False)]
    if not names:
        raise DataError(f"{work.root}: no trained source (run ./run_all.sh --work {work.root} first)")
    raise DataError(f"{work.root}: no stack (./run_all.sh --only stack): choose --source from {names}")


def predictions_frame(preds: TopK, names: dict[int, str], tree, top: int, calibration: dict | None = None) -> pd.DataFrame:
    """K rows per predicted product, in the order the products were given; scores through the
    source's calibration map when it has one (common/calibration.py: 0.8 = right 8 times in 10)."""
    rows, have = preds.lookup(np.fromiter(names, np.int64, len(names)))
    k = min(top, preds.k)
    parts = []
    for (pid, name), row, ok in zip(names.items(), rows, have):
        if not ok:
            continue
        labels, probs = preds.labels[row, :k], apply_map(calibration, preds.probs[row, :k].astype(np.float64))
        keep = labels >= 0
        labels = labels[keep].astype(np.int64)
        parts.append(pd.DataFrame({"product": name, "rank": np.arange(1, len(labels) + 1), "category_id": tree.to_id(labels),
                                   "score": probs[keep].round(5), "category_level1": tree.level1_names[labels],
                                   "category_level2": tree.level2_names[labels], "category_level3": tree.level3_names[labels]}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)


class Predictor:
    """A trained work dir and one of its sources (a model, a solution / team blend, a side source, or the stack)."""

    def __init__(self, work: str | os.PathLike | WorkDir, source: str | None = None):
        self.work = work if isinstance(work, WorkDir) else WorkDir(work)
        self.source = source or default_source(self.work)
        self.plan = in_order(self.work, self.source)  # fails now, naming the stage to run, if something is missing
        self.paths = DatasetPaths.load(self.work)
        self.tree = self.paths.tree()

    @classmethod
    def from_work(cls, work: str | os.PathLike | WorkDir, source: str | None = None) -> "Predictor":
        return cls(work, source)

    def predict(self, products: Sequence | dict, top: int = 5) -> pd.DataFrame:
        """Products as lists of image bytes or paths (or a dict name -> list) -> the top categories of each."""
        return self.predict_products(from_objects(products), top)

    def predict_products(self, products: list[NewProduct], top: int = 5, keep: str | os.PathLike | None = None) -> pd.DataFrame:
        """frame.attrs["unpredicted"]: the products that got no prediction (no readable image), each
        also logged. `keep`: build the scratch work dir there and leave it (else a temporary one)."""
        if keep is not None:
            Path(keep).mkdir(parents=True, exist_ok=False)
            return self._predict_in(products, top, Path(keep))
        with tempfile.TemporaryDirectory(prefix="cdiscount_predict_") as tmp:
            return self._predict_in(products, top, Path(tmp))

    def _predict_in(self, products: list[NewProduct], top: int, tmp: Path) -> pd.DataFrame:
        first_id = int(np.max(self.paths.index(self.work, "train").ids, initial=0)) + 1  # no new _id is a train _id
        names = write_bson(products, tmp / "new.bson", first_id)
        if not names:
            raise DataError("no product has a readable image: nothing to predict")
        scratch = make_workspace(self.work, tmp / "new.bson", tmp / "work")
        rebuild(self.work, scratch, self.source)
        frame = predictions_frame(load_topk(scratch.preds(self.source) / "test.npz", len(self.tree)), names, self.tree, top,
                                  load_map(self.work.preds(self.source)))
        predicted = set(frame["product"])
        for name in (n for n in names.values() if n not in predicted):
            log.warning("product %s: %s gave it no prediction (no image its models could use)", name, self.source)
        frame.attrs["unpredicted"] = [p.name for p in products if p.name not in predicted]
        return frame

    def describe(self) -> str:
        """What predicting runs: the sources in order."""
        kind = read_source(self.work, self.source).kind
        return f"{self.source} ({kind}), rerunning {len(self.plan)} source{'s' * (len(self.plan) > 1)}: " + ", ".join(i.name for i in self.plan)
