"""Every source a chosen source is made from, loaded once from a trained work dir, then asked about
new products in memory, each through the function its stage predicted its test products with:

    model          every trained fold's models (RecipeKind.load_test, eval mode), then the kind's
                   `predict_test` on the new products per fold, the folds averaged as merge_folds does
    solution/team blend   ensembling.blend's power mean of the members, with the recorded weights
    md5, ocr       what their stage saved (the dictionary; the fold text models), registered as side sources
    stack          the trained XGBoost stacker over the stacked sources' features (ensembling.stack)

The new products are a common.bson_reader.MemoryReader standing in for the test split: no BSON is
written, no index built, nothing of the trained work dir changes. The 2nd place's heads read their
base nets' features through the same feature store the batch path writes: the predictor keeps it
in a private temporary folder (RAM-backed /dev/shm when there is one), a few kB per product.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from common.bson_reader import MemoryReader
from common.errors import DataError
from common.paths import WorkDir
from common.predictions import TopK, average_topk, power_mean
from common.sources import SourceInfo
from common.workdata import FoldData, load_fold_data

from .plan import recipe_of, side_source, stage_hint


class Loaded(Protocol):
    def predict(self, reader: MemoryReader, inputs: dict[str, TopK]) -> TopK: ...


def scratch_root() -> str | None:
    """Where predicting writes new products' features: $CDISCOUNT_SCRATCH, else /dev/shm (memory), else the
    temporary folder. A container's /dev/shm is often 64 MB: point CDISCOUNT_SCRATCH at a disk for large --bson files."""
    return os.environ.get("CDISCOUNT_SCRATCH") or ("/dev/shm" if os.access("/dev/shm", os.W_OK) else None)


@dataclass
class Context:
    """What every loader shares: the trained work dir and its data (loaded once), the runtime, and
    the private folder where predicting writes features of new products."""

    work: WorkDir
    data: FoldData
    runtime: Any
    scratch: WorkDir
    _tmp: Any = None  # the TemporaryDirectory behind `scratch`, removed with the context

    @classmethod
    def open(cls, work: WorkDir) -> "Context":
        tmp = tempfile.TemporaryDirectory(prefix="cdiscount_predictor_", dir=scratch_root())
        return cls(work, load_fold_data(work), None, WorkDir(tmp.name), tmp)

    def torch_runtime(self):
        if self.runtime is None:
            from common.train import setup_runtime

            self.runtime = setup_runtime()
        return self.runtime

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


class LoadedModel:
    """A model source: each trained fold's models, loaded once."""

    def __init__(self, ctx: Context, info: SourceInfo):
        import torch

        from common.config import for_world
        from common.recipe import FoldJob, solution_kinds

        kinds, _ = solution_kinds(info.solution)
        runtime = ctx.torch_runtime()
        cfg = for_world(recipe_of(ctx.work, info), runtime.world)
        self.kind, self.name, self.torch = kinds[cfg.stage], info.name, torch
        if self.kind.load_test is None or self.kind.predict_test is None:
            raise DataError(f"recipe stage {cfg.stage!r} of {info.name} cannot predict new products (its RecipeKind has no load_test / predict_test)")
        self.cfg = dataclasses.replace(cfg, num_workers=0)  # one request's few images: loader processes would cost more than they save
        self.folds: list[tuple[int, Any]] = []
        for fold in info.summary["folds"]:
            out = ctx.work.model_dir(info.solution, cfg.name, fold)
            if not (out / "test.npz").exists():
                raise DataError(f"{out}: fold {fold} of {info.name} is not finished: run {stage_hint(info.name)} first")
            self.folds.append((fold, self.kind.load_test(FoldJob(cfg, ctx.data, ctx.work, fold, out, runtime))))
        self.ctx, self.FoldJob = ctx, FoldJob

    def predict(self, reader: MemoryReader, inputs: dict[str, TopK]) -> TopK:
        data, parts = dataclasses.replace(self.ctx.data, test=reader), []
        for fold, models in self.folds:
            self.torch.manual_seed(self.cfg.seed * 1000 + fold)  # as the fold's own run seeded it (random TTA crops)
            job = self.FoldJob(self.cfg, data, self.ctx.scratch, fold, self.ctx.work.model_dir(self.cfg.solution, self.cfg.name, fold),
                               self.ctx.runtime)
            parts.append(self.kind.predict_test(job, models))
        return average_topk(parts, self.cfg.topk)


class LoadedBlend:
    """A solution / team blend: the power mean of its members with the weights it recorded."""

    def __init__(self, ctx: Context, info: SourceInfo):
        from ensembling.blend import BlendOptions

        self.members, self.weights, self.power = info.members, info.weights, info.power
        self.topk = int(info.summary.get("topk", BlendOptions().topk))

    def predict(self, reader: MemoryReader, inputs: dict[str, TopK]) -> TopK:
        return power_mean([inputs[m] for m in self.members], self.topk, self.weights, self.power)


class LoadedStack:
    """The trained stacker over the sources it stacked, their features built as ensembling.stack builds them."""

    def __init__(self, ctx: Context, info: SourceInfo):
        from common.folds import fold_numbers
        from common.workdata import Labels
        from ensembling.stack.booster import load_model
        from ensembling.stack.config import StackConfig
        from ensembling.stack.engine import LocalEngine
        from ensembling.stack.features import feature_names
        from ensembling.stack.inputs import Source, prior_tables
        from ensembling.stack.run import STACK

        s = info.summary
        config = dict(s.get("config", {}))
        model = config.get("model") or str(ctx.work.root / STACK / "model.ubj")
        if not Path(model).exists():
            raise DataError(f"{model}: the trained stacker model is missing: run {stage_hint('stack')} first")
        self.cfg = StackConfig(**{**config, "dask": "", "export_features": ""})
        kinds = s.get("sources_kinds", {})
        self.sources = [Source(n, kinds[n], TopK.empty(self.cfg.topk), TopK.empty(self.cfg.topk)) for n in s["sources"]]
        if feature_names(self.sources) != s.get("features"):
            raise DataError(f"{ctx.work.preds(STACK)}/summary.json: its features are not the ones its sources give now: rerun {stage_hint('stack')}")
        self.booster = load_model(model, len(s["features"]))
        labels = Labels.load(ctx.work)
        self.fold_ids = fold_numbers(labels.fold)
        self.prior = prior_tables(labels.labels, labels.fold, self.fold_ids, len(ctx.data.tree))
        self.tree, self.engine = ctx.data.tree, LocalEngine()

    def predict(self, reader: MemoryReader, inputs: dict[str, TopK]) -> TopK:
        from ensembling.stack.booster import predict_products
        from ensembling.stack.features import build_chunk
        from ensembling.stack.inputs import Products, union_ids

        sources = [dataclasses.replace(s, test=inputs[s.name]) for s in self.sources]
        index = reader.index
        ids = np.intersect1d(union_ids([s.test for s in sources]), np.asarray(index.ids, np.int64))
        n_imgs = np.asarray(index.n_imgs)[index.positions_of(ids)].astype(np.float32) if len(ids) else np.zeros(0, np.float32)
        n = len(ids)
        products = Products(ids, n_imgs, np.full(n, -1, np.int64), np.full(n, len(self.fold_ids)), np.full(n, -1))

        def build(part: Products, qid_offset: int = 0):
            return build_chunk(part, sources, "test", self.tree.level1_of, self.prior, len(self.tree), self.cfg.candidates_per_source, False, qid_offset)

        top, _ = predict_products(self.booster, products, build, self.cfg, "predict", self.engine)
        return top


def load_side(ctx: Context, info: SourceInfo) -> Loaded:
    return side_source(info).load(ctx.work, info.summary)


LOADERS: dict[str, Callable[[Context, SourceInfo], Loaded]] = {
    "model": LoadedModel, "ablation": LoadedModel, "solution blend": LoadedBlend, "team blend": LoadedBlend,
    "side source": load_side, "stack": LoadedStack,
}
