"""Where things live: the real reference files shipped in common/resources, and the work dir layout."""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESOURCES = Path(__file__).resolve().parent / "resources"
CATEGORY_NAMES_CSV = RESOURCES / "category_names.csv"  # the official 5270-row tree
TRAIN_EXAMPLE_BSON = RESOURCES / "train_example.bson"  # the official 82-product sample
HENG_VALID_IDS = RESOURCES / "heng_valid_id_v0_50000.txt"  # 2nd place's 50,000 validation ids
IMAGE_COUNTS = {level: RESOURCES / f"train_image_counts_level{level}.csv" for level in (1, 2, 3)}


def default_work_dir() -> Path:
    return Path(os.environ.get("CDISCOUNT_WORK", REPO / "work"))


class WorkDir:
    """The on-disk contract between stages (see README, 'Directory layout')."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_work_dir()

    def index(self, split: str) -> Path:
        return self.root / "index" / split  # prefix: .npy + .json

    @property
    def folds(self) -> Path:
        return self.root / "folds.csv"

    def model_dir(self, solution: str, model: str, fold: int) -> Path:
        return self.root / "models" / solution / model / f"fold{fold}"

    def features(self, solution: str, model: str, fold: int) -> Path:
        return self.root / "features" / solution / model / f"fold{fold}"

    def preds(self, source: str) -> Path:
        return self.root / "preds" / source

    @property
    def submissions(self) -> Path:
        return self.root / "submissions"

    @property
    def stats(self) -> Path:
        return self.root / "stats"

    @property
    def report(self) -> Path:
        return self.root / "report"


PROFILES = ("mini", "full")  # run_all.sh --profile


def recipe_profile(name: str) -> str:
    """mini for a mini_* recipe (its file mini_*.yaml), full for every other."""
    return "mini" if name.startswith("mini_") else "full"
