"""The source registry: every prediction source is a folder work/preds/<name>/ holding oof.npz,
test.npz and a summary.json that records what it is. One function lists the sources of a work dir
by kind; no stage ever guesses what a source is from its name.

Kinds (what each stage records):
  model           one recipe's fold models (solutions/*/train.py)
  ablation        a model trained only to measure a choice: reported, never blended or stacked
  solution blend  a solution's mean over its models (solutions/*/submit.py)
  team blend      a team's own blend of its members (the 2nd place's weighted sqrt blend)
  side source     a source that covers some products only (OCR, MD5)
  stack           the XGBoost stacker over all the others
A summary also records the solution a source belongs to, a blend's members / weights / power, and
what the original team recorded for the same recipe (`recorded`, shown by the report). numpy only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from .atomic import read_json, write_json
from .errors import DataError
from .paths import WorkDir

KINDS = ("model", "ablation", "solution blend", "team blend", "side source", "stack")
BLENDS = ("solution blend", "team blend")
IMAGE_SOURCES = ("model", "solution blend", "team blend")  # the CNN sources (OCR selects media products by them)


@dataclass
class SourceInfo:
    """One source as its summary.json describes it."""

    name: str
    kind: str
    summary: dict = field(default_factory=dict)

    @property
    def solution(self) -> str | None:
        return self.summary.get("solution")

    @property
    def members(self) -> list[str]:
        return list(self.summary.get("members", []))

    @property
    def weights(self) -> list[float]:
        return [float(w) for w in self.summary.get("weights", [])] or [1.0] * len(self.members)

    @property
    def power(self) -> float:
        return float(self.summary.get("power", 1.0))


def write_summary(work: WorkDir, name: str, kind: str, **fields) -> dict:
    """preds/<name>/summary.json with the source's kind first; returns what it wrote."""
    if kind not in KINDS:
        raise ValueError(f"unknown source kind {kind!r}; choose from {KINDS}")
    from .folds import read_protocol  # the protocol that made every number of the source

    summary = {"source": name, "kind": kind, "protocol": read_protocol(work).get("protocol", "kfold"), **fields}
    write_json(work.preds(name) / "summary.json", summary)
    return summary


def read_source(work: WorkDir, name: str) -> SourceInfo:
    path = work.preds(name) / "summary.json"
    if not path.exists():
        raise DataError(f"{path}: missing (every source's stage writes one; rerun the stage that made preds/{name})")
    summary = read_json(path, f"rerun the stage that made preds/{name}")
    kind = summary.get("kind")
    if kind not in KINDS:
        raise DataError(f"{path}: records no known kind ({kind!r}); rerun the stage that made preds/{name}")
    return SourceInfo(name, kind, summary)


def is_finished(work: WorkDir, name: str) -> bool:
    folder = work.preds(name)
    return all((folder / f).exists() for f in ("oof.npz", "test.npz", "summary.json"))


def list_sources(work: WorkDir, kinds: Iterable[str] | None = None, solution: str | None = None, finished: bool = True) -> list[SourceInfo]:
    """Finished sources (oof.npz, test.npz, summary.json), sorted by name, of the given kinds (default:
    every kind but ablations), optionally of one solution only; `finished=False`: every folder
    with a summary.json (a stack predicted by a model trained elsewhere has no oof.npz)."""
    kinds = set(kinds) if kinds is not None else set(KINDS) - {"ablation"}
    unknown = kinds - set(KINDS)
    if unknown:
        raise ValueError(f"unknown source kinds {sorted(unknown)}; choose from {KINDS}")
    root = work.root / "preds"
    done = is_finished if finished else (lambda w, n: (w.preds(n) / "summary.json").exists())
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and done(work, p.name)) if root.exists() else []
    infos = [read_source(work, n) for n in names]
    return [s for s in infos if s.kind in kinds and (solution is None or s.solution == solution)]


@dataclass(frozen=True)
class SplitIds:
    """What a source's predictions must fit: the tree's class count, the train and test ids (sorted)."""

    n_classes: int
    train: np.ndarray
    test: np.ndarray

    @classmethod
    def load(cls, work: WorkDir) -> "SplitIds":
        from .prepare import DatasetPaths

        paths = DatasetPaths.load(work)
        ids = {s: np.unique(np.asarray(paths.index(work, s).ids, np.int64)) for s in ("train", "test")}
        return cls(len(paths.tree()), ids["train"], ids["test"])


def load_predictions(work: WorkDir, name: str, splits: SplitIds | None = None) -> tuple:
    """(oof, test) TopK of preds/<name>/, each refused by name unless its labels are classes of the
    tree and its ids products of its own split (a swapped or foreign file never reaches a stage)."""
    from .predictions import load_topk

    splits = splits or SplitIds.load(work)
    folder = work.preds(name)
    return (load_topk(folder / "oof.npz", splits.n_classes, splits.train, "train"),
            load_topk(folder / "test.npz", splits.n_classes, splits.test, "test"))
