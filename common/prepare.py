"""Prepare a work dir: index train.bson and test.bson, record where the data is (dataset.json).

    python -m common.prepare --train DATA/train.bson --test DATA/test.bson --categories CSV --work work

Later stages take only `--work`: they read the data paths from work/dataset.json.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .atomic import write_json
from .bson_index import ProductIndex, get_index, load_index
from .categories import CategoryTree
from .cli import parse_stage, run
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


@dataclass
class PrepareOptions:
    train: str = ""  # DATA/train.bson
    test: str = ""  # DATA/test.bson
    categories: str = str(CATEGORY_NAMES_CSV)  # category_names.csv (default: the official one)
    test_labels: str | None = None  # _id,category_id of the test products (mini data only: local scoring)


def main(argv: list[str] | None = None) -> DatasetPaths:
    args = parse_stage(argv, __doc__, PrepareOptions)
    opts, work = args.options, args.work
    for name in ("train", "test", "categories"):
        path = getattr(opts, name)
        if not path or not Path(path).is_file():
            raise DataError(f"--{name} {path!r}: no such file")
    CategoryTree.from_csv(opts.categories)  # fail early on a bad CSV
    for split in ("train", "test"):
        index = get_index(getattr(opts, split), work.index(split), progress=args.progress)
        print(f"{split}: {len(index)} products, {index.n_images} images, skipped {index.meta['skipped']['counts'] or 'nothing'}")
    paths = DatasetPaths(*(str(Path(x).resolve()) for x in (opts.train, opts.test, opts.categories)),
                         test_labels=str(Path(opts.test_labels).resolve()) if opts.test_labels else None)
    write_json(work.root / "dataset.json", asdict(paths))
    return paths


if __name__ == "__main__":
    run(main)
