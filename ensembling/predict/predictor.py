"""Predictor: new products through a trained work dir, as its test products went (see workspace.py).

    from ensembling.predict import Predictor
    predictor = Predictor.from_work("work")                 # the stack (default), or source="dylan", ...
    frame = predictor.predict([["shoe_front.jpg", "shoe_side.jpg"], [open("book.png", "rb").read()]], top=3)
    print(frame)   # product, rank, category_id, score, category_level1..3
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from common.bson_reader import MemoryReader, Product
from common.calibration import apply_map, load_map
from common.errors import DataError
from common.paths import WorkDir
from common.predictions import TopK, save_topk
from common.prepare import DatasetPaths
from common.sources import list_sources, read_source

from .plan import in_order
from .products import NewProduct, from_objects, readable

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
    """A trained work dir and one of its sources (a model, a solution / team blend, a side source, or
    the stack), with everything that source is made from loaded once (ensembling/predict/loaded.py):
    each `predict` runs them in memory. Not thread-safe: a server shares one behind a lock."""

    def __init__(self, work: str | os.PathLike | WorkDir, source: str | None = None):
        from .loaded import LOADERS, Context

        self.work = work if isinstance(work, WorkDir) else WorkDir(work)
        self.source = source or default_source(self.work)
        self.plan = in_order(self.work, self.source)  # fails now, naming the stage to run, if something is missing
        self.paths = DatasetPaths.load(self.work)
        self.tree = self.paths.tree()
        self.calibration = load_map(self.work.preds(self.source))
        self.first_id = int(np.max(self.paths.index(self.work, "train").ids, initial=0)) + 1  # no new _id is a train _id
        self.context = Context.open(self.work)
        try:
            self.loaded = {info.name: LOADERS[info.kind](self.context, info) for info in self.plan}
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_work(cls, work: str | os.PathLike | WorkDir, source: str | None = None) -> "Predictor":
        return cls(work, source)

    def close(self) -> None:
        """Remove the private feature folder (also done when the process exits)."""
        self.context.close()

    def predict(self, products: Sequence | dict, top: int = 5) -> pd.DataFrame:
        """Products as lists of image bytes or paths (or a dict name -> list) -> the top categories of each."""
        return self.predict_products(from_objects(products), top)

    def predict_sources(self, products: list[NewProduct]) -> tuple[dict[str, TopK], dict[int, str]]:
        """Every source of the plan on the products, in order ({name: TopK by _id}), and _id -> product name."""
        usable = readable(products)
        if not usable:
            raise DataError("no product has a readable image: nothing to predict")
        reader = MemoryReader([Product(self.first_id + i, p.images) for i, p in enumerate(usable)])
        names = {self.first_id + i: p.name for i, p in enumerate(usable)}
        preds: dict[str, TopK] = {}
        with contextlib.redirect_stdout(sys.stderr):  # the stages' own printing
            for info in self.plan:
                preds[info.name] = self.loaded[info.name].predict(reader, preds)
        return preds, names

    def predict_products(self, products: list[NewProduct], top: int = 5, keep: str | os.PathLike | None = None) -> pd.DataFrame:
        """frame.attrs["unpredicted"]: the products that got no prediction (no readable image), each
        also logged. `keep`: write every source's predictions there (preds/<source>/test.npz, ids.csv)."""
        preds, names = self.predict_sources(products)
        if keep is not None:
            write_kept(Path(keep), preds, names)
        frame = predictions_frame(preds[self.source], names, self.tree, top, self.calibration)
        predicted = set(frame["product"])
        for name in (n for n in names.values() if n not in predicted):
            log.warning("product %s: %s gave it no prediction (no image its models could use)", name, self.source)
        frame.attrs["unpredicted"] = [p.name for p in products if p.name not in predicted]
        return frame

    def describe(self) -> str:
        return describe(self.work, self.source)


def describe(work: WorkDir, source: str) -> str:
    """What predicting with `source` loads and runs: the sources in order (nothing loaded here)."""
    plan = in_order(work, source)
    return f"{source} ({read_source(work, source).kind}), from {len(plan)} loaded source{'s' * (len(plan) > 1)}: " + ", ".join(i.name for i in plan)


def write_kept(root: Path, preds: dict[str, TopK], names: dict[int, str]) -> None:
    """Each source's predictions of the new products, in the work dir layout, and which _id is which product."""
    root.mkdir(parents=True, exist_ok=False)
    for name, p in preds.items():
        save_topk(root / "preds" / name / "test.npz", p)
    pd.DataFrame({"_id": list(names), "product": list(names.values())}).to_csv(root / "ids.csv", index=False)
