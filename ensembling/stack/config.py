"""The stacker's options: every field is also a command-line flag (common/cli.py)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Annotated

from common.checks import at_least, between, check_fields, check_names, positive
from common.errors import DataError
from common.predictions import DEFAULT_K

OBJECTIVES: dict[str, dict] = {
    "binary": {"objective": "binary:logistic"},
    "rank": {"objective": "rank:pairwise"},
}
DEVICES = ("auto", "cpu", "cuda")
LOCAL_CLUSTER = re.compile(r"local(?::([1-9]\d*))?$")


@dataclass
class StackConfig:
    sources: list[str] = field(default_factory=list)  # empty: discover
    include_blends: bool = False
    candidates_per_source: Annotated[int, at_least(0)] = 0  # 0 = all K labels of every source
    objective: str = "binary"
    rounds: Annotated[int, at_least(1)] = 200
    learning_rate: Annotated[float, positive()] = 0.1
    max_depth: Annotated[int, at_least(1)] = 6
    min_child_weight: Annotated[float, at_least(0)] = 1.0
    subsample: Annotated[float, between(0, 1)] = 0.8
    colsample_bytree: Annotated[float, between(0, 1)] = 0.8
    max_bin: Annotated[int, at_least(2)] = 256
    max_train_products: Annotated[int, at_least(0)] = 0  # 0 = every OOF product
    chunk_products: Annotated[int, at_least(0)] = 0  # products per feature chunk; 0 = as many as keep a chunk within chunk_rows candidate rows
    chunk_rows: Annotated[int, at_least(1)] = 2_000_000  # candidate rows per chunk at most when chunk_products is 0 (x ~70 features x 4 B: ~0.5 GB)
    device: str = "auto"
    nthread: Annotated[int, at_least(0)] = 0  # 0 = every core
    dask: str = ""  # train and predict through a dask Client: a scheduler address (tcp://host:8786) or local[:N] (N worker processes here)
    seed: Annotated[int, at_least(0)] = 0
    cv_folds: Annotated[int, at_least(2)] = 5  # the holdout protocol (one predicted fold): the stacker's own stratified K-fold CV over the holdout products
    topk: Annotated[int, at_least(1)] = DEFAULT_K
    export_features: str = ""
    model: str = ""  # predict with this saved model instead of training (no CV)
    max_fallback_share: Annotated[float, between(0, 1)] = 0.5  # refuse a submission with more fallback rows than this (1.0 accepts anything)
    accept_lost_products: bool = False  # write the submission although the test index lost documents of test.bson

    def __post_init__(self) -> None:
        check_fields(self, "stack options")
        check_names("stack options", sources=self.sources)
        if self.objective not in OBJECTIVES:
            raise DataError(f"stack option objective={self.objective!r}: choose from {sorted(OBJECTIVES)}")
        if self.dask.startswith("local") and not LOCAL_CLUSTER.match(self.dask):
            raise DataError(f"stack option dask={self.dask!r}: local or local:N (N worker processes, N >= 1), or a scheduler address")
        if self.device not in DEVICES:
            raise DataError(f"stack option device={self.device!r}: choose from {list(DEVICES)}")

    def products_per_chunk(self, n_sources: int) -> int:
        """A chunk's rows grow with the sources (each adds up to K candidates per product): with
        ~16 sources of top-20, 100,000 products would be 32M rows, 9 GB of features at once."""
        if self.chunk_products:
            return self.chunk_products
        return max(1_000, self.chunk_rows // max(1, n_sources * (self.candidates_per_source or self.topk)))
