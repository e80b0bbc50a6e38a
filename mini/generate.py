"""Generating the mini dataset: render every product (worker processes), write the files, the stage.

    python -m mini --work W [--out W/mini] [--preset tiny|default] [--seed 0] [--force]

Writes train.bson / test.bson in the official layout (test without category_id), and beside them
test_labels.csv (local scoring only), category_names.csv (a subset of the real tree), truth.csv
(written and true label per product) and mini.json (parameters and counts), written LAST: it
marks a complete dataset, and a second call with the same preset / seed / version does nothing.

What it carries, each measurable (tests/test_mini.py): real categories from several level-1
groups with long-tailed sizes; 1-4 images per product in the paper's Table 3 proportions, with a
per-category mix; ordered views (first = full view; appliances often end with an EU energy label);
per-group visual families; exact duplicate images (within train, train/test, one placeholder
across groups); book / CD / DVD covers with an OCR-readable French title; ~10% label noise.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd

from common.atomic import atomic_path, write_json
from common.checks import at_least
from common.bson_format import BsonWriter
from common.categories import CategoryTree
from common.cli import parse_stage
from common.errors import DataError
from common.paths import CATEGORY_NAMES_CSV
from common.processes import pool_context
from common.progress import track

from . import covers, render
from .plan import FILES, MEDIA_GROUPS, PRESETS, THEMES, VERSION, Preset, assign_themes, make_title, plan_duplicates, plan_products, select_categories

# ---------------------------------------------------------------------------------------------
# rendering


@dataclass(frozen=True)
class RenderTask:
    """Everything one product's pictures depend on (picklable: it crosses to worker processes)."""

    look: render.Look
    family: render.Family
    n_imgs: int
    seed: tuple[int, ...]
    difficulty: float
    energy_label_rate: float


def view_kinds(n_imgs: int, rng: np.random.Generator) -> list[str]:
    """The first picture is the full view; later ones are less informative partial views."""
    return ["full"] + [str(k) for k in rng.choice(["angle", "zoom", "detail"], n_imgs - 1, p=[0.6, 0.3, 0.1])]


def render_product(task: RenderTask) -> list[bytes]:
    """The product's JPEGs, from its own seed only (so worker scheduling cannot change a byte)."""
    rng = np.random.default_rng(task.seed)
    look = render.product_look(task.look, task.family, rng, task.difficulty)
    kinds = view_kinds(task.n_imgs, rng)
    if look.cover:
        pictures = covers.cover_views(look, make_title(look.keywords, rng), kinds, rng)
    else:
        pictures = [render.object_view(look, kind, rng, task.difficulty) for kind in kinds]
    if task.family.energy_label and task.n_imgs > 1 and rng.random() < task.energy_label_rate:
        pictures[-1] = covers.energy_label(rng)
    quality = int(rng.integers(78, 96))
    return [covers.finish(p, rng, task.difficulty, quality) for p in pictures]


def category_looks(cats: CategoryTree, seed: int) -> tuple[list[render.Look], list[render.Family]]:
    """The prototype of every category; media categories also get their theme words."""
    rng = np.random.default_rng([seed, 1])
    families = {g: render.family_for(g, rng) for g in dict.fromkeys(cats.level1_names)}
    themes = {}
    for g in MEDIA_GROUPS:
        rows = np.flatnonzero(cats.level1_names == g)
        names = [f"{cats.level2_names[r]} {cats.level3_names[r]}" for r in rows]
        themes.update(zip(rows, assign_themes(names, rng)))
    looks = [render.make_look(families[g], rng, THEMES[themes[c]] if c in themes else (),
                         "BLU-RAY" if "BLU-RAY" in cats.level2_names[c] else "DVD")
             for c, g in enumerate(cats.level1_names)]
    return looks, [families[g] for g in cats.level1_names]


def render_all(plan: pd.DataFrame, cats: CategoryTree, preset: Preset, seed: int, workers: int, progress: bool) -> list[list[bytes]]:
    """Every product's pictures, in plan order (a pool of `workers` processes when > 1)."""
    looks, families = category_looks(cats, seed)
    tasks = [RenderTask(looks[c], families[c], int(n), (seed, 2, i), preset.difficulty, preset.energy_label_rate)
             for i, (c, n) in enumerate(zip(plan["true"], plan["n_imgs"]))]
    bar = dict(desc="rendering products", total=len(tasks), enabled=progress, unit="product")
    if workers <= 1:
        return [render_product(t) for t in track(tasks, **bar)]
    with pool_context().Pool(workers) as pool:
        return list(track(pool.imap(render_product, tasks, chunksize=16), **bar))


def apply_duplicates(plan: pd.DataFrame, images: list[list[bytes]]) -> None:
    """Copy donors' first pictures and put the placeholder in (in place; the two sets are disjoint)."""
    for row, donor in enumerate(plan["copy_from"]):
        if donor >= 0:
            images[row][0] = images[donor][0]
    for row in np.flatnonzero(plan["placeholder"].to_numpy()):
        images[row][0] = covers.placeholder_jpeg()


# ---------------------------------------------------------------------------------------------
# writing


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, lineterminator="\n")


def write_dataset(out: Path, plan: pd.DataFrame, images: list[list[bytes]], cats: CategoryTree) -> None:
    """Every file but mini.json: BSONs in _id order, labels, truth, the category subset."""
    label_id, true_id = cats.ids[plan["label"]], cats.ids[plan["true"]]
    cats.to_csv(out / "category_names.csv")
    is_train = (plan["split"] == "train").to_numpy()
    with BsonWriter(out / "train.bson") as train, BsonWriter(out / "test.bson") as test:
        for row, pid in enumerate(plan["_id"]):
            if is_train[row]:
                train.write(int(pid), images[row], int(label_id[row]))
            else:
                test.write(int(pid), images[row], None)
    write_csv(out / "test_labels.csv", pd.DataFrame({"_id": plan["_id"], "category_id": label_id})[~is_train])
    write_csv(out / "truth.csv", pd.DataFrame({"_id": plan["_id"], "split": plan["split"], "category_id": label_id,
                                               "true_category_id": true_id, "noisy": plan["noisy"], "n_imgs": plan["n_imgs"]}))


def summary(plan: pd.DataFrame, cats: CategoryTree) -> dict:
    """Counts for mini.json and the console (what was planned; the tests measure the files)."""
    train = plan[plan["split"] == "train"]
    per_cat = np.bincount(train["true"], minlength=len(cats))
    return {
        "n_categories": len(cats), "n_level1": int(len(set(cats.level1_names))),
        "n_train": int(len(train)), "n_test": int(len(plan) - len(train)),
        "n_images_train": int(train["n_imgs"].sum()), "n_images_test": int(plan["n_imgs"].sum() - train["n_imgs"].sum()),
        "image_count_share": {str(k): round(float((plan["n_imgs"] == k).mean()), 4) for k in range(1, 5)},
        "noisy_share_train": round(float(train["noisy"].mean()), 4),
        "noisy_share_test": round(float(plan.loc[plan["split"] == "test", "noisy"].mean()), 4),
        "train_products_per_category": {"min": int(per_cat.min()), "median": float(np.median(per_cat)), "max": int(per_cat.max())},
        "duplicate_receivers_train": int(((plan["split"] == "train") & (plan["copy_from"] >= 0)).sum()),
        "duplicate_receivers_test": int(((plan["split"] == "test") & (plan["copy_from"] >= 0)).sum()),
        "placeholder_products": int(plan["placeholder"].sum()),
    }


def is_current(out: Path, meta: dict) -> bool:
    """True when `out` already holds a complete dataset made with the same preset / seed / version."""
    path = out / "mini.json"
    if not path.exists() or not all((out / f).exists() for f in FILES):
        return False
    old = json.loads(path.read_text())
    return all(old.get(k) == meta[k] for k in ("generator_version", "preset", "seed", "params"))


def generate(out: str | os.PathLike, preset_name: str = "default", seed: int = 0, force: bool = False,
             workers: int | None = None, preset: Preset | None = None, progress: bool = True) -> dict | None:
    """Build the dataset in `out`; returns mini.json's content, or None when it was already there."""
    out = Path(out)
    preset = preset or PRESETS[preset_name]
    meta = {"generator_version": VERSION, "preset": preset_name, "seed": seed, "params": json.loads(json.dumps(asdict(preset)))}
    if not force and is_current(out, meta):
        return None
    (out / "mini.json").unlink(missing_ok=True)  # an interrupted rebuild must not look complete
    t0 = time.time()
    rng = np.random.default_rng([seed, 0])
    cats = select_categories(CategoryTree.from_csv(CATEGORY_NAMES_CSV), preset, rng)
    plan = plan_duplicates(plan_products(cats, preset, rng), cats, preset, rng)
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    big = len(plan) > 1000  # below that, forking workers and a progress bar cost more than they give
    images = render_all(plan, cats, preset, seed, workers if big else 1, progress=big and progress)
    apply_duplicates(plan, images)
    write_dataset(out, plan, images, cats)
    meta["counts"] = summary(plan, cats)
    meta["files"] = {f: (out / f).stat().st_size for f in FILES[:-1]}
    meta["seconds"] = round(time.time() - t0, 1)
    write_json(out / "mini.json", meta)
    return meta


def print_summary(out: str, meta: dict) -> None:
    c = meta["counts"]
    print(f"{out}: preset {meta['preset']}, seed {meta['seed']}: {c['n_categories']} categories in {c['n_level1']} level-1 "
          f"groups, {c['n_train']} train products ({c['n_images_train']} images), {c['n_test']} test products "
          f"({c['n_images_test']} images) in {meta['seconds']} s")
    print(f"  images per product {c['image_count_share']}, "
          f"label noise train {c['noisy_share_train']:.3f} / test {c['noisy_share_test']:.3f}, "
          f"train products per category {c['train_products_per_category']}")
    print(f"  duplicates: {c['duplicate_receivers_train']} train and {c['duplicate_receivers_test']} test products copy a "
          f"train picture, {c['placeholder_products']} show the placeholder; files (bytes): {meta['files']}")


@dataclass
class MiniOptions:
    out: str = ""  # output folder (default: <work>/mini)
    preset: str = "default"  # tiny | default
    seed: Annotated[int, at_least(0)] = 0
    force: bool = False  # regenerate even if the folder holds this dataset
    workers: int | None = None  # render processes (default: min(2, cores))
    measure: bool = False  # measure the dataset already there (slow: fits a baseline, runs OCR)


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_stage(argv, __doc__, MiniOptions)
    opts = args.options
    out = Path(opts.out) if opts.out else args.work.root / "mini"
    if opts.preset not in PRESETS:
        raise DataError(f"--preset {opts.preset!r}: choose from {sorted(PRESETS)}")
    if opts.measure:
        from .measure import measure

        result = measure(out)
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return result
    meta = generate(out, opts.preset, opts.seed, opts.force, opts.workers, progress=args.progress)
    if meta is None:
        print(f"{out}: mini dataset (preset {opts.preset}, seed {opts.seed}, version {VERSION}) already there; nothing to do (--force regenerates)")
        return None
    print_summary(str(out), meta)
    return meta
