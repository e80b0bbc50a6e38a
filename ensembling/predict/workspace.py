"""The prediction work dir: a scratch work dir whose test split is the new products and whose
trained parts (models, train index, folds, OOF files, MD5 hashes, OCR texts) are the trained work
dir's, linked (OCR's text cache copied when OCR reruns), never changed. Each source the chosen one
needs is then rebuilt on it by the stage that made it, so a new product gets exactly what a test product of the run got:

    model          each fold's trained models through its kind's `predict_test`, the folds averaged
                   as `merge_folds` does (its OOF file and summary linked from the trained work dir)
    solution/team blend   `ensembling.blend.blend` over the members it recorded, with their weights
    md5, ocr       their stage, with the options the run recorded (train hashes and texts reused)
    stack          `ensembling.stack` with the trained stacker model (no retraining)
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path
from typing import Callable

from common.atomic import write_json
from common.errors import DataError
from common.paths import WorkDir
from common.predictions import average_topk, save_topk
from common.prepare import DatasetPaths
from common.registry import SideSource, side_sources, solution
from common.sources import SourceInfo, list_sources, read_source


def _link(src: Path, dst: Path) -> None:
    if not src.exists():
        raise DataError(f"{src}: missing from the trained work dir")
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src.resolve(), dst)


def make_workspace(work: WorkDir, bson: Path, root: Path) -> WorkDir:
    """A work dir at `root` whose test split is `bson` (indexed here) and whose train side is `work`'s."""
    from common.bson_index import get_index

    scratch = WorkDir(root)
    paths = DatasetPaths.load(work)
    for suffix in (".npy", ".json"):
        _link(work.index("train").with_suffix(suffix), scratch.index("train").with_suffix(suffix))
    get_index(bson, scratch.index("test"), progress=False)
    write_json(root / "dataset.json", {"train": paths.train, "test": str(bson.resolve()), "categories": paths.categories, "test_labels": None})
    for name in ("folds.csv", "folds.json"):
        if (work.root / name).exists():
            shutil.copy(work.root / name, root / name)
    if (work.root / "models").exists():
        _link(work.root / "models", root / "models")  # read only: a fold's predict_test writes nothing there
    for name in ("train_hashes.npy", "train_hashes.json"):
        if (work.root / "md5" / name).exists():
            _link(work.root / "md5" / name, root / "md5" / name)
    return scratch


def needs(work: WorkDir, info: SourceInfo) -> list[str]:
    """The sources `info` is made from, which the scratch work dir must have first."""
    s = info.summary
    if info.kind in ("model", "ablation"):
        return [f"{info.solution}_{dep}" for dep in recipe_of(work, info).requires()]
    if info.kind in ("solution blend", "team blend"):
        return info.members
    if info.kind == "stack":
        return list(s.get("sources_kinds", {}))
    return side_source(info).needs(s)


def in_order(work: WorkDir, name: str) -> list[SourceInfo]:
    """`name` and everything it is made from, each after what it needs; a missing one names its stage."""
    order: list[SourceInfo] = []

    def visit(n: str, chain: tuple[str, ...]) -> None:
        if n in chain:
            raise DataError(f"preds/{n}: made from itself ({' -> '.join(chain + (n,))})")
        if any(i.name == n for i in order):
            return
        if not (work.preds(n) / "summary.json").exists():
            hint = stage_hint(n)
            if hint is None:
                names = sorted(s.name for s in list_sources(work, finished=False))
                raise DataError(f"{work.preds(n)}: no such source in the trained work dir (it has: {', '.join(names) or 'none'})")
            raise DataError(f"{work.preds(n)}: not in the trained work dir: run {hint} first")
        info = read_source(work, n)
        for dep in needs(work, info):
            visit(dep, chain + (n,))
        order.append(info)

    visit(name, ())
    return order


def stage_hint(name: str) -> str | None:
    """The run_all.sh stage whose node writes source `name`, by the pipeline graph (None: no node does).
    A recipe of the other profile is looked for there too."""
    from common.pipeline import RunOptions, build_graph

    for profile in ("mini", "full"):
        node = build_graph(RunOptions(profile=profile), WorkDir()).producer(name)
        if node is not None:
            return f"./run_all.sh --only {node.stage}" + (f" --profile {profile}" if profile != "mini" else "") + f" (python -m {node.module})"
    return None


def recipe_of(work: WorkDir, info: SourceInfo):
    """The recipe a model source was trained from: its first fold's config.yaml, in its kind's class."""
    from common.recipe import load_recipe

    name, folds = info.summary["recipe"]["name"], info.summary.get("folds", [])
    if not folds:
        raise DataError(f"{work.preds(info.name)}/summary.json: records no fold")
    return load_recipe(work.model_dir(info.solution, name, folds[0]) / "config.yaml", info.solution)


def _share(work: WorkDir, scratch: WorkDir, info: SourceInfo, files: tuple[str, ...] = ("summary.json", "oof.npz")) -> None:
    for f in files:
        if (work.preds(info.name) / f).exists():
            _link(work.preds(info.name) / f, scratch.preds(info.name) / f)


def rebuild_model(work: WorkDir, scratch: WorkDir, info: SourceInfo) -> None:
    """Every trained fold of the recipe on the new products, averaged as merge_folds averages them."""
    import torch

    from common.config import for_world
    from common.recipe import FoldJob, solution_kinds
    from common.train import setup_runtime
    from common.workdata import load_fold_data

    kinds, _ = solution_kinds(info.solution)
    cfg = recipe_of(work, info)
    kind = kinds[cfg.stage]
    if kind.predict_test is None:
        raise DataError(f"recipe stage {cfg.stage!r} of {info.name} cannot predict new products (its RecipeKind has no predict_test)")
    runtime = setup_runtime()
    cfg = for_world(cfg, runtime.world)
    data, parts = load_fold_data(scratch), []
    for fold in info.summary["folds"]:
        out = work.model_dir(info.solution, cfg.name, fold)
        if not (out / "test.npz").exists():
            raise DataError(f"{out}: fold {fold} of {info.name} is not finished: run {stage_hint(info.name)} first")
        torch.manual_seed(cfg.seed * 1000 + fold)  # as the fold's own run seeded it (random TTA crops)
        parts.append(kind.predict_test(FoldJob(cfg, data, scratch, fold, scratch.model_dir(info.solution, cfg.name, fold), runtime)))
    _share(work, scratch, info)
    save_topk(scratch.preds(info.name) / "test.npz", average_topk(parts, cfg.topk))


def rebuild_blend(work: WorkDir, scratch: WorkDir, info: SourceInfo) -> None:
    from ensembling.blend import BlendOptions, blend

    blend(scratch, solution(info.solution).blend(), dict(zip(info.members, info.weights)), BlendOptions(max_fallback_share=1.0, accept_lost_products=True))


def side_source(info: SourceInfo) -> SideSource:
    """How the side source's own stage reruns (registered by ocr/, md5/: common.registry)."""
    known = side_sources()
    if info.name not in known:
        raise DataError(f"side source {info.name}: no stage known to rebuild it (known: {sorted(known)})")
    return known[info.name]


def rebuild_side_source(work: WorkDir, scratch: WorkDir, info: SourceInfo) -> None:
    side_source(info).rerun(scratch, dict(info.summary.get("options", {})), info.summary)


def rebuild_stack(work: WorkDir, scratch: WorkDir, info: SourceInfo) -> None:
    from ensembling.stack.config import StackConfig
    from ensembling.stack.run import STACK, run_stack

    config = dict(info.summary.get("config", {}))
    model = config.get("model") or str(work.root / STACK / "model.ubj")
    if not Path(model).exists():
        raise DataError(f"{model}: the trained stacker model is missing: run {stage_hint('stack')} first")
    config.update(model=model, export_features="", dask="", max_fallback_share=1.0, accept_lost_products=True)
    run_stack(scratch, StackConfig(**config))


REBUILD: dict[str, Callable[[WorkDir, WorkDir, SourceInfo], None]] = {
    "model": rebuild_model, "ablation": rebuild_model, "solution blend": rebuild_blend, "team blend": rebuild_blend,
    "side source": rebuild_side_source, "stack": rebuild_stack,
}


def rebuild(work: WorkDir, scratch: WorkDir, name: str) -> None:
    """`name` and what it needs on the scratch work dir; the stages' own printing goes to stderr."""
    with contextlib.redirect_stdout(sys.stderr):
        for info in in_order(work, name):
            REBUILD[info.kind](work, scratch, info)
