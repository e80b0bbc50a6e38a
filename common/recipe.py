"""Train every fold of one recipe, predict its OOF and test products, merge them into a source.

    work/models/<solution>/<name>/fold<k>/   last.pt summary.csv config.yaml oof.npz test.npz [extra.json]
    work/preds/<solution>_<name>/            oof.npz (each fold's own products) test.npz (mean of folds) summary.json

The one extension point: a solution registers, per `stage` of its recipes, a RecipeKind (its
config class and a fold function `FoldJob -> FoldOutput`); `train_main` parses the recipe, picks
its kind and runs `run_recipe`, which owns everything around the fold: skipping finished folds,
saving the config, seeding, writing the fold's files, merging the folds into the source with its
summary.json. A fold whose oof.npz and test.npz exist is skipped; an unfinished one resumes from
last.pt.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .atomic import read_json, write_json
from .bench_feed import image_feed
from .cli import load_yaml, parse_stage, read_yaml
from .costs import image_cost
from .config import REUSE_IGNORES, TrainConfig, batch_split, config_changes, for_world
from .data import ImageDataset, collate_images, image_table
from .errors import DataError, log
from .fingerprint import changes, made_from
from .infer import predict_images
from .metrics import product_report
from .models import (
    ModelSpec,
    create_model,
    is_timm_model,
    normalization,
    resolve_weights,
    smallest_input,
)
from .paths import WorkDir, recipe_profile
from .registry import Solution, solution as registered, solution_of_path, solutions
from .predictions import TopK, average_topk, concat_topk, load_topk, save_topk
from .sources import write_summary
from .train import Runtime, eval_loader, fit, image_batch, load_checkpoint, setup_runtime, train_loader
from .workdata import FoldData, load_fold_data


@dataclass
class FoldJob:
    """One fold of one recipe: what a fold function trains on, predicts, and where it writes."""

    cfg: TrainConfig
    data: FoldData
    work: WorkDir
    fold: int
    out: Path  # the fold's directory (checkpoints, logs)
    runtime: Runtime

    @property
    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(training rows, validation rows): the other folds (and fold -1), this fold."""
        return self.data.rows(self.fold)

    @property
    def num_classes(self) -> int:
        return len(self.data.tree)


@dataclass
class FoldOutput:
    oof: TopK  # this fold's products
    test: TopK  # every test product with a usable image
    extra: dict = field(default_factory=dict)  # figures of the fold the kind merges into the summary


@dataclass(frozen=True)
class RecipeKind:
    """What a `stage` of recipe trains: its config class, its fold function, and how its folds'
    extra figures merge into the source's summary."""

    config: type
    run_fold: Callable[[FoldJob], FoldOutput]
    merge_extra: Callable[[list[dict]], dict] | None = None
    # new products (ensembling.predict): a trained fold's models loaded once from its checkpoints (eval mode, on the runtime's
    # device; job.work is the trained work dir), then predict_test(job, loaded) on job.data's test split each time, through the
    # function the fold itself predicted its test products with (job.work: where features of the new products may be written)
    load_test: Callable[[FoldJob], Any] | None = None
    predict_test: Callable[[FoldJob, Any], TopK] | None = None
    single_image: bool = False  # a fold's last.pt is one single-image net of the recipe's `model` (exportable to ONNX)
    cost: Callable | None = None  # the plan's cost model: (recipe, common.costs.CostContext) -> common.costs.Cost
    bench_feed: Callable | None = None  # what bench/bench_gpu.py feeds its network: (recipe, BenchData, Runtime) -> common.bench_feed.Feed
    bench_skip: str = ""  # why there is no bench feed (the bench's JSON says it)


# ----------------------------------------------------------------------------- the shared image fold


def validation_sample(rows: np.ndarray, cfg: TrainConfig) -> np.ndarray:
    """The products the per-epoch validation metric uses: all, or a seeded sample (mini budgets:
    the metric only tracks progress; the fold's OOF predictions still cover every product)."""
    if 0 < cfg.val_products < len(rows):
        return np.sort(np.random.default_rng([cfg.seed, len(rows)]).choice(rows, cfg.val_products, replace=False))
    return rows


def build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    return create_model(ModelSpec(cfg.model, num_classes, cfg.pretrained, cfg.drop_rate, head=cfg.head))


def load_trained(model: nn.Module, path: Path) -> nn.Module:
    """A trained fold's weights (its last.pt) into `model`, in eval mode: what predicting new products starts from."""
    if not path.exists():
        raise DataError(f"{path}: missing (the fold is not trained: run its solution's train stage)")
    model.load_state_dict(load_checkpoint(path)["model"])
    return model.eval()


def trained_model(cfg: TrainConfig, num_classes: int, path: Path) -> nn.Module:
    """The recipe's network with a trained fold's weights (no pretrained file needed: every tensor is overwritten)."""
    return load_trained(build_model(dataclasses.replace(cfg, pretrained=None), num_classes), path)


def start_from_recipe(model: nn.Module, job: FoldJob) -> None:
    """Load the same fold's trained weights of `init_from` (the 3rd place built its SE-ResNeXt from
    its own fine-tuned ResNeXt plus new SE blocks): every tensor it has must fit, the keys it lacks
    (the new blocks) keep their initialisation."""
    path = job.work.model_dir(job.cfg.solution, job.cfg.init_from, job.fold) / "last.pt"
    if not path.exists():
        raise DataError(f"{path}: recipe {job.cfg.name} starts from {job.cfg.init_from} fold {job.fold}; train it first")
    state = load_checkpoint(path)["model"]
    own = model.state_dict()
    misfit = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    if misfit:
        raise DataError(f"{path}: {len(misfit)} tensors do not fit {job.cfg.model} (first: {misfit[:3]}); init_from needs the same trunk")
    new = sorted(set(own) - set(state))
    model.load_state_dict(state, strict=False)
    if job.runtime.is_main:
        log.info("%s fold %d: started from %s (%d tensors), %d new (first: %s)", job.cfg.name, job.fold, path, len(state), len(new), new[:3])


def image_set(data: FoldData, rows: np.ndarray, cfg: TrainConfig, train: bool) -> ImageDataset:
    table = image_table(data.train.index.n_imgs, rows)
    return ImageDataset(data.train, table, data.labels[rows], cfg.input_size, hflip=cfg.hflip and train, device_decode=cfg.decode_on == "device",
                        crop=cfg.crop, random_crop=train)


def train_image_model(job: FoldJob) -> nn.Module:
    """The recipe's network fit on single images of the other folds (validating on a sample of this one)."""
    cfg, data, runtime = job.cfg, job.data, job.runtime
    model = build_model(cfg, job.num_classes)
    if cfg.init_from:
        start_from_recipe(model, job)
    mean, std = normalization(model)
    train_rows, val_rows = job.rows
    train = train_loader(image_set(data, train_rows, cfg, True), cfg, runtime, collate_images)
    val = eval_loader(image_set(data, validation_sample(val_rows, cfg), cfg, False), cfg, runtime, collate_images)
    return fit(cfg, model, train, val, image_batch(mean, std, cfg.channels_last, cfg.input_size), job.out, runtime)


def image_test(job: FoldJob, model: nn.Module) -> TopK:
    return predict_images(model, job.data.test, job.data.test_rows, job.cfg, job.runtime, *normalization(model), desc="test")


def image_fold(job: FoldJob) -> FoldOutput:
    """A single-image classifier (dylan): train, then predict this fold's and the test products."""
    model = train_image_model(job)
    _, val_rows = job.rows
    oof = predict_images(model, job.data.train, val_rows, job.cfg, job.runtime, *normalization(model), desc="oof")
    return FoldOutput(oof, image_test(job, model))


def image_load_test(job: FoldJob) -> nn.Module:
    return trained_model(job.cfg, job.num_classes, job.out / "last.pt").to(job.runtime.device)


IMAGE = RecipeKind(TrainConfig, image_fold, load_test=image_load_test, predict_test=image_test, single_image=True, cost=image_cost,
                   bench_feed=image_feed)


# ----------------------------------------------------------------------------- folds -> source


def run_recipe(cfg: TrainConfig, work: WorkDir, kind: RecipeKind, force: bool = False) -> dict | None:
    """Every fold of cfg (or cfg.folds) through the kind's fold function, then merged into
    preds/<solution>_<name>/; returns the summary on the main process."""
    if not cfg.solution or not cfg.name:
        raise DataError(f"recipe {cfg.name or '?'}: no solution / name (load it with common.recipe.load_recipe or a solution's trainer)")
    runtime = setup_runtime()
    cfg = for_world(cfg, runtime.world)
    if runtime.is_main:
        print(f"{cfg.source}: {batch_split(cfg, runtime.world)}")
    data = load_fold_data(work)
    folds = cfg.folds or data.folds
    if not folds:
        raise DataError(f"{work.folds}: no fold to predict (every product is fold -1 or excluded)")
    for k in folds:
        run_one_fold(cfg, data, work, k, runtime, kind, force)
    summary = merge_folds(cfg, data, work, folds, kind) if runtime.is_main else None
    if runtime.distributed:
        torch.distributed.barrier()  # no rank starts the next recipe before this source is written
    if summary is None:
        return None
    by_count = ", ".join(f"{k}: {v['accuracy']:.3f}" for k, v in summary["oof_by_image_count"].items())
    print(f"{summary['source']}: OOF product accuracy {summary['oof_product_accuracy']:.4f} on {summary['oof_products']} products (by image count: {by_count})")
    return summary


def fold_inputs(work: WorkDir, cfg: TrainConfig, fold: int) -> dict:
    """What a fold is made from besides its recipe: the folds, both indexes (their content), and
    the same fold of every recipe it requires (a head's base nets: their config and predictions,
    so a retrained base makes its heads stale)."""
    files = {"folds": work.folds, "train index": work.index("train").with_suffix(".npy"), "test index": work.index("test").with_suffix(".npy")}
    inputs = made_from(files)
    for dep in cfg.requires():  # the base's recipe (what REUSE_IGNORES leaves), not its file bytes: its split differs per world size
        path = work.model_dir(cfg.solution, dep, fold) / "config.yaml"
        recipe = {k: v for k, v in read_yaml(path).items() if k not in REUSE_IGNORES} if path.exists() else None
        digest = hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest() if recipe else "missing"
        inputs[f"{dep} fold {fold} config"] = {"path": str(path), "fingerprint": digest}
    return inputs


def stale_fold(out: Path, cfg: TrainConfig, inputs: dict) -> list[str]:
    """Why a started fold is not this recipe's on this data (empty when it is)."""
    why = config_changes(read_yaml(out / "config.yaml"), dataclasses.asdict(cfg)) if (out / "config.yaml").exists() else []
    if (out / "made_from.json").exists():
        why += changes(read_json(out / "made_from.json", "retrain this fold (--force)"), inputs)
    return why


def run_one_fold(cfg: TrainConfig, data: FoldData, work: WorkDir, fold: int, runtime: Runtime, kind: RecipeKind, force: bool = False) -> None:
    """Skip a finished fold made by this recipe from these data; stop (or, with force, start over)
    when the recipe or the data it was made from changed; else train and predict."""
    out = work.model_dir(cfg.solution, cfg.name, fold)
    inputs = fold_inputs(work, cfg, fold)
    why = stale_fold(out, cfg, inputs)
    if why and not force:
        raise DataError(f"{out}: made by another recipe or from other data ({'; '.join(why)}). Rerun with --force to "
                        "retrain this fold (its checkpoints and predictions are replaced), or use another --work")
    if why:
        if runtime.is_main:
            log.warning("%s: %s; retrained from scratch (--force)", out, "; ".join(why))
            shutil.rmtree(out)
        if runtime.distributed:
            torch.distributed.barrier()
    if (out / "oof.npz").exists() and (out / "test.npz").exists():
        log.info("%s fold %d: up to date (same recipe, same data), skipped", cfg.name, fold)
        return
    if not len(data.rows(fold)[1]):
        raise DataError(f"fold {fold} has no products in {work.folds}")
    missing = [dep for dep in cfg.requires() if not (work.model_dir(cfg.solution, dep, fold) / "oof.npz").exists()]
    if missing:  # before anything is written: the fold is not started, so training them first needs no --force
        raise DataError(f"{out}: recipe {cfg.name} needs {', '.join(missing)} fold {fold} first: train "
                        f"{'it' if len(missing) == 1 else 'them'} ({registered(cfg.solution).configs}/<name>.yaml) before this recipe")
    out.mkdir(parents=True, exist_ok=True)
    if runtime.is_main:
        cfg.save(out / "config.yaml")
        write_json(out / "made_from.json", inputs)
    torch.manual_seed(cfg.seed * 1000 + fold)
    result = kind.run_fold(FoldJob(cfg, data, work, fold, out, runtime))
    if runtime.is_main:
        if result.extra:
            write_json(out / "extra.json", result.extra)
        save_topk(out / "test.npz", result.test)
        save_topk(out / "oof.npz", result.oof)  # last: with test.npz it marks the fold done


def merge_folds(cfg: TrainConfig, data: FoldData, work: WorkDir, folds: list[int], kind: RecipeKind) -> dict:
    """OOF = each fold's own products; test = mean over the fold models; summary.json beside."""
    dirs = [work.model_dir(cfg.solution, cfg.name, k) for k in folds]
    n = len(data.tree)
    oof = concat_topk([load_topk(d / "oof.npz", n) for d in dirs])
    test = average_topk([load_topk(d / "test.npz", n) for d in dirs], cfg.topk)
    save_topk(work.preds(cfg.source) / "oof.npz", oof)
    save_topk(work.preds(cfg.source) / "test.npz", test)
    rows = data.train.index.positions_of(oof.ids)
    report = product_report(oof.top1, data.labels[rows], data.train.index.n_imgs[rows], data.tree)
    extras = [read_json(d / "extra.json", "retrain this fold (--force)") for d in dirs if (d / "extra.json").exists()]
    return write_summary(
        work, cfg.source, "ablation" if cfg.ablation or cfg.baseline else "model", solution=cfg.solution, model=cfg.model, folds=folds,
        recorded=cfg.recorded, recipe=dataclasses.asdict(cfg), oof_products=int(len(oof)), oof_product_accuracy=report["accuracy"],
        oof_level1_accuracy=report["level1_accuracy"], oof_by_image_count=report["by_image_count"], oof_by_level1=report["by_level1"],
        val_image_accuracy_per_fold=[_last_val_acc(d) for d in dirs], test_products=int(len(test)),
        **(kind.merge_extra(extras) if kind.merge_extra and extras else {}))


def _last_val_acc(fold_dir: Path) -> float | None:
    """The fold's last per-epoch validation accuracy (image level for single-image recipes)."""
    path = fold_dir / "summary.csv"
    if not path.exists():
        return None
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return float(rows[-1]["val_acc"]) if rows else None


# ----------------------------------------------------------------------------- fast dev run

FAST_DEV_GLOBAL_BATCH, FAST_DEV_MICRO, FAST_DEV_STEPS = 8, 4, 2  # 2 optimizer steps of 2 accumulated micro-batches
FAST_DEV_VAL_PRODUCTS = 16


def weights_available(spec: str | None) -> bool:
    try:
        return not spec or bool(resolve_weights(spec))
    except DataError:
        return False


def sized(cfg: TrainConfig, seen: int) -> dict:
    """The fields that make the network see `seen` px: the input size, or with a crop the crop,
    the decoded tile keeping the recipe's margin around it (bench/bench_gpu.py, the fast dev run)."""
    if not cfg.crop:
        return {"input_size": seen}
    return {"crop": seen, "input_size": seen + max(2, seen * (cfg.input_size - cfg.crop) // cfg.crop)}


def fast_dev_run(cfg: TrainConfig, warn: bool = True) -> TrainConfig:
    """The recipe as it is (architecture, 5270-way head, optimiser, schedule, TTA, aggregation,
    every stage of its kind) but one epoch (and one per-K / fine-tune epoch) of a few steps at a
    small input, from random weights when the weight file is missing: the whole wiring, in
    minutes on a CPU (PyTorch Lightning's fast_dev_run). Predictions still cover every product."""
    epochs = {f.name: min(getattr(cfg, f.name), 1) for f in dataclasses.fields(cfg) if f.name.endswith("epochs") and f.name != "warmup_epochs"}
    changes = dict(epochs, global_batch=FAST_DEV_GLOBAL_BATCH, batch_size=FAST_DEV_MICRO, max_images_per_epoch=FAST_DEV_GLOBAL_BATCH * FAST_DEV_STEPS,
                   val_products=FAST_DEV_VAL_PRODUCTS, eval_batch_size=min(cfg.eval_batch_size, 64), num_workers=min(cfg.num_workers, 2),
                   warmup_epochs=0.0, fast_dev_run=True)
    if is_timm_model(cfg.model):
        changes.update(sized(cfg, smallest_input(cfg.model)))  # 32 px, or the smallest the stem takes (Inceptions: 80)
    if not weights_available(cfg.pretrained):
        if warn:
            log.warning("fast dev run: %s: no weight file %s, random initial weights", cfg.source, cfg.pretrained)
        changes["pretrained"] = None
    return dataclasses.replace(cfg, **changes)


# ----------------------------------------------------------------------------- command line


def kind_of(kinds: dict[str, RecipeKind], default: str) -> Callable[[dict], type]:
    """The config class of a recipe, chosen by its YAML's `stage` (read before the full parse)."""

    def choose(values: dict) -> type:
        stage = values.get("stage", default)
        if stage not in kinds:
            raise DataError(f"recipe stage {stage!r}; choose from {sorted(kinds)}")
        return kinds[stage].config

    return choose


def identity(path: Path, sol: Solution, values: dict) -> dict:
    """A recipe's solution and name, from where its file lies: a file in a solution's configs folder
    is that solution's recipe named by the file; a file elsewhere belongs to the solution whose
    trainer runs it, named by its `name` (or the file). A YAML that says otherwise is refused, so a
    recipe never trains into another solution's folder."""
    home = solution_of_path(path)
    if home is not None and home.name != sol.name:
        raise DataError(f"{path}: a recipe of {home.name}, not of {sol.name} (python -m {home.trainer})")
    name = path.stem if home is not None else str(values.get("name") or path.stem)
    for key, want in (("solution", sol.name), ("name", name)):
        if key in values and values[key] != want:
            raise DataError(f"{path}: {key}: {values[key]!r}, but the file makes it {want!r} (its {'folder' if key == 'solution' else 'file name'}): "
                            f"remove the line or move / rename the file")
    return {"solution": sol.name, "name": name}


def solution_kinds(solution: str) -> tuple[dict[str, RecipeKind], str]:
    """The solution's registered kinds and the stage of a recipe that names none (its train.py)."""
    return registered(solution).kinds()


def load_recipe(path: Path, sol: Solution | str) -> TrainConfig:
    """A recipe YAML in its kind's config class: an unknown key or a bad choice is a DataError naming the file.
    A fold's saved config.yaml (a file outside the configs folders) keeps the solution and name it records."""
    sol = registered(sol) if isinstance(sol, str) else sol
    path = Path(path)
    kinds, default = sol.kinds()
    values = read_yaml(path)
    cls = kind_of(kinds, default)(values)
    loaded = {**load_yaml(path, cls), **identity(path, sol, values)}
    try:
        return cls(**loaded)
    except DataError as e:  # a bad value: named with its file
        raise DataError(f"{path}: {e}") from None


def profile_configs(profile: str) -> list[TrainConfig]:
    """Every recipe of every solution's profile, each after those it requires (plan, benchmarks)."""
    return [load_recipe(p, sol) for sol in solutions() for p in profile_recipes(sol, profile)]


def profile_recipes(sol: Solution | str, profile: str) -> list[Path]:
    """The recipe files of a profile (mini: mini_*.yaml; full: the others; never an ablation, but its
    baselines), each after the recipes it requires (a fusion head after its base nets)."""
    sol = registered(sol) if isinstance(sol, str) else sol
    chosen = {}
    for path in sorted(sol.configs.glob("*.yaml")):
        values = read_yaml(path)
        if (values.get("ablation") and not values.get("baseline")) or recipe_profile(path.stem) != profile:
            continue
        chosen[path.stem] = load_recipe(path, sol)
    order: list[str] = []

    def visit(name: str, chain: tuple[str, ...] = ()) -> None:
        if name in order:
            return
        if name not in chosen or name in chain:
            raise DataError(f"{sol.configs}: recipe {chain[-1] if chain else name} requires {name!r}, "
                            + ("a cycle" if name in chain else f"which is not a {profile} recipe"))
        for dep in chosen[name].requires():
            visit(dep, (*chain, name))
        order.append(name)

    for name in chosen:
        visit(name)
    return [sol.configs / f"{n}.yaml" for n in order]


def train_main(solution: str, kinds: dict[str, RecipeKind], default: str, argv: list[str] | None = None, description: str = "") -> dict | None:
    """`--config recipe.yaml [--work W] [--any-recipe-option V]`: every fold of one recipe; or
    `--profile mini|full [--work W] ...`: every recipe of the profile in the order they require
    (one process, so one torchrun launch and one process group for all of them). `--fast-dev-run`:
    each recipe through `fast_dev_run` (the wiring check)."""
    import argparse
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--profile", choices=["mini", "full"])
    pre.add_argument("--fast-dev-run", action="store_true")
    pre.add_argument("--force", action="store_true")  # retrain a fold made by another recipe or from other data, instead of stopping
    pre.add_argument("--config", default=None)
    known, rest = pre.parse_known_args(argv)
    if known.profile:
        recipes = profile_recipes(solution, known.profile)
        flags = ["--fast-dev-run"] * known.fast_dev_run + ["--force"] * known.force
        summaries = [train_main(solution, kinds, default, ["--config", str(p), *flags, *rest], description) for p in recipes]
        return summaries[-1] if summaries else None
    if known.config is None:
        raise DataError("--config recipe.yaml (or --profile mini|full) is required")
    args = parse_stage(["--config", known.config, *rest], description, kind_of(kinds, default), config_required=True)
    path = Path(known.config)
    cfg = dataclasses.replace(args.options, **identity(path, registered(solution), read_yaml(path)))
    cfg = fast_dev_run(cfg) if known.fast_dev_run else cfg
    return run_recipe(cfg, args.work, kinds[cfg.stage], known.force)
