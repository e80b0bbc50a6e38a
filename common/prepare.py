"""Prepare a work dir: index train.bson and test.bson, record where the data is (dataset.json).

    python -m common.prepare --train DATA/train.bson --test DATA/test.bson --categories CSV --work work

Later stages take only `--work`: they read the data paths from work/dataset.json.
"""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from .atomic import write_json
from .bson_index import ProductIndex, get_index, load_index
from .categories import CategoryTree
from .errors import DataError
from .paths import CATEGORY_NAMES_CSV, WorkDir


@dataclass
class DatasetPaths:
    train: str
    test: str
    categories: str
    test_labels: str | None = None  # mini data only: local scoring of submissions

    @classmethod
    def load(cls, work: WorkDir) -> "DatasetPaths":
        path = work.root / "dataset.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} missing: run `python -m common.prepare` (or ./run_all.sh) first")
        return cls(**json.loads(path.read_text()))

    def tree(self) -> CategoryTree:
        return CategoryTree.from_csv(self.categories)

    def index(self, work: WorkDir, split: str) -> ProductIndex:
        return load_index(work.index(split))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--categories", default=str(CATEGORY_NAMES_CSV))
    p.add_argument("--test-labels", default=None, help="_id,category_id of the test products (mini data only)")
    p.add_argument("--work", required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    work = WorkDir(args.work)
    for path in (args.train, args.test, args.categories):
        if not Path(path).is_file():
            raise DataError(f"{path}: no such file")
    CategoryTree.from_csv(args.categories)  # fail early on a bad CSV
    for split, bson_path in (("train", args.train), ("test", args.test)):
        index = get_index(bson_path, work.index(split))
        print(f"{split}: {len(index)} products, {index.n_images} images, skipped {index.meta['skipped']['counts'] or 'nothing'}")
    paths = DatasetPaths(*(str(Path(x).resolve()) for x in (args.train, args.test, args.categories)),
                         test_labels=str(Path(args.test_labels).resolve()) if args.test_labels else None)
    write_json(work.root / "dataset.json", asdict(paths))


if __name__ == "__main__":
    main()
