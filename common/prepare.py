"""Prepare a work dir: index train.bson and test.bson, record where the data is (dataset.json).

    python -m common.prepare --train DATA/train.bson --test DATA/test.bson --categories CSV --work work

Later stages take only `--work`: they read the data paths from work/dataset.json.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .atomic import read_json, write_json
from .bson_index import ProductIndex, get_index, load_index
from .categories import CategoryTree
from .cli import parse_stage, run
from .errors import DataError, log
from .paths import CATEGORY_NAMES_CSV, WorkDir


@dataclass
class DatasetPaths:
    train: str
    test: str
    categories: str
    test_labels: str | None = None  # mini data only: local scoring of submissions
    categories_sha256: str | None = None  # CategoryTree.order_sha256 at prepare: checked by every later stage

    @classmethod
    def load(cls, work: WorkDir) -> "DatasetPaths":
        path = work.root / "dataset.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} missing: run `python -m common.prepare` (or ./run_all.sh) first")
        hint = "rerun python -m common.prepare (./run_all.sh --only index)"
        try:
            return cls(**read_json(path, hint))
        except TypeError as e:  # fields missing or unknown
            raise DataError(f"{path}: not the dataset record common.prepare writes ({e}): {hint}") from None

    def tree(self) -> CategoryTree:
        """The category tree, refused when its row order is not the one the work dir was prepared with:
        two swapped rows would relabel every model's outputs without an error."""
        if not Path(self.categories).is_file():
            raise DataError(f"{self.categories}: the category file this work dir's dataset.json names is missing "
                            "(moved or deleted since the run; rerun python -m common.prepare to point it elsewhere)")
        tree = CategoryTree.from_csv(self.categories)
        if self.categories_sha256 and tree.order_sha256 != self.categories_sha256:
            raise DataError(f"{self.categories}: its category_id rows ({len(tree)}) are not those this work dir was prepared with "
                            f"(dataset.json records order sha256 {self.categories_sha256[:12]}, the file gives {tree.order_sha256[:12]}): "
                            "labels are row numbers, so every model here would be relabelled; restore the file, or rerun "
                            "from the index stage (./run_all.sh --from index --force)")
        return tree

    def index(self, work: WorkDir, split: str) -> ProductIndex:
        return load_index(work.index(split))


@dataclass
class PrepareOptions:
    train: str = ""  # DATA/train.bson
    test: str = ""  # DATA/test.bson
    categories: str = str(CATEGORY_NAMES_CSV)  # category_names.csv (default: the official one)
    test_labels: str | None = None  # _id,category_id of the test products (mini data only: local scoring)


OFFICIAL_PRODUCTS = {"train": 7_069_896, "test": 1_768_182}  # the Kaggle files (the dataset paper, Table 1)
REAL_SIZED = 1_000_000  # a train index this large with the 5270-category tree is taken for the Kaggle data


def check_splits(train: ProductIndex, test: ProductIndex, opts: "PrepareOptions", n_classes: int) -> list[str]:
    """Refuse a labelled test file or one sharing products with train; warn (returned lines) when
    real-sized files differ from the official counts or when documents went unread."""
    if test.has_labels:
        n = int((test.category_ids >= 0).sum())
        raise DataError(f"--test {opts.test}: {n} of {len(test)} products carry a category_id: a train file? (Kaggle's test set has "
                        "none; local test labels go in --test-labels)")
    shared = np.intersect1d(np.asarray(train.ids), np.asarray(test.ids))
    if len(shared):
        raise DataError(f"--test {opts.test}: {len(shared)} _ids are also in --train {opts.train} (first _id {int(shared[0])}): "
                        "the same file twice, or two splits of one file")
    warnings = []
    for split, index in (("train", train), ("test", test)):
        if n_classes == 5270 and len(train) >= REAL_SIZED and len(index) != OFFICIAL_PRODUCTS[split]:
            warnings.append(f"!!! {split}: {len(index):,} products where the official Kaggle file has {OFFICIAL_PRODUCTS[split]:,}: "
                            "a partial or altered download? (every later number is on these products)")
        if index.lost_products:
            warnings.append(f"!!! {split}: {index.lost_products} documents with an `imgs` key were not indexed (see the index messages)"
                            + ("; a submission without them is refused unless --accept-lost-products" if split == "test" else ""))
    return warnings


def main(argv: list[str] | None = None) -> DatasetPaths:
    args = parse_stage(argv, __doc__, PrepareOptions)
    opts, work = args.options, args.work
    for name in ("train", "test", "categories"):
        path = getattr(opts, name)
        if not path or not Path(path).is_file():
            raise DataError(f"--{name} {path!r}: no such file")
    tree = CategoryTree.from_csv(opts.categories)  # fail early on a bad CSV
    indexes = {}
    for split in ("train", "test"):
        index = indexes[split] = get_index(getattr(opts, split), work.index(split), progress=args.progress)
        print(f"{split}: {len(index)} products, {index.n_images} images, skipped {index.meta['skipped']['counts'] or 'nothing'}")
    for line in check_splits(indexes["train"], indexes["test"], opts, len(tree)):
        log.warning(line)
    paths = DatasetPaths(*(str(Path(x).resolve()) for x in (opts.train, opts.test, opts.categories)),
                         test_labels=str(Path(opts.test_labels).resolve()) if opts.test_labels else None,
                         categories_sha256=tree.order_sha256)
    write_json(work.root / "dataset.json", asdict(paths))
    return paths


if __name__ == "__main__":
    run(main)
