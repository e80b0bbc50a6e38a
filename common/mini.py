"""The embedded mini dataset: a small Cdiscount look-alike with the properties the winners exploited.

    python -m common.mini --out work/mini [--preset tiny|default] [--seed 0] [--force]

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

import argparse
import hashlib
import json
import multiprocessing
import os
import re
import time
import warnings
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from . import mini_render as R
from .atomic import atomic_path, write_json
from .bson_format import BsonWriter
from .bson_reader import Product, iter_products
from .categories import CategoryTree
from .images import decode_jpeg
from .paths import CATEGORY_NAMES_CSV, IMAGE_COUNTS

VERSION = 1
PAPER_IMAGE_COUNTS = np.array([4_369_441, 1_128_588, 542_792, 1_029_075], float)  # Table 3: 1..4 images
MEDIA_GROUPS = ("LIBRAIRIE", "MUSIQUE", "DVD - BLU-RAY")
FILES = ("category_names.csv", "train.bson", "test.bson", "test_labels.csv", "truth.csv", "mini.json")


# ---------------------------------------------------------------------------------------------
# presets


@dataclass(frozen=True)
class Preset:
    """Everything that shapes a mini dataset; mini.json records it so a rerun can be compared."""

    groups: dict[str, int]  # level-1 name -> number of level-3 categories drawn from it
    n_train: int
    n_test: int
    min_train: int  # floor of train products per category (the long tail still has a few)
    difficulty: float = 0.6  # 0 = clean studio shots .. 1 = heavy jitter, clutter, off-model backgrounds
    label_noise: float = 0.10  # paper: ~10% of labels are wrong, in train and test alike
    dup_train: float = 0.08  # train products reusing a same-category train product's picture
    dup_cross: float = 0.20  # test products reusing a train product's picture (same true category)
    placeholder_rate: float = 0.02  # products whose first picture is the "no photo" placeholder
    energy_label_rate: float = 0.7  # multi-image appliance products ending with an energy label
    count_concentration: float = 8.0  # Dirichlet strength of per-category image-count mixes


TINY_GROUPS = {"LIBRAIRIE": 2, "MUSIQUE": 2, "DVD - BLU-RAY": 2, "ELECTROMENAGER": 2, "TELEPHONIE - GPS": 1,
               "BIJOUX -  LUNETTES - MONTRES": 1, "AUTO - MOTO": 1, "JEUX - JOUETS": 1}
DEFAULT_GROUPS = {"LIBRAIRIE": 6, "MUSIQUE": 4, "DVD - BLU-RAY": 3, "ELECTROMENAGER": 6, "TELEPHONIE - GPS": 6,
                  "INFORMATIQUE": 6, "AUTO - MOTO": 5, "DECO - LINGE - LUMINAIRE": 4, "BIJOUX -  LUNETTES - MONTRES": 5,
                  "JEUX - JOUETS": 5, "PUERICULTURE": 3, "SPORT": 3}
PRESETS = {
    "tiny": Preset(TINY_GROUPS, n_train=250, n_test=80, min_train=4),
    "default": Preset(DEFAULT_GROUPS, n_train=6000, n_test=1500, min_train=10),
}


# ---------------------------------------------------------------------------------------------
# themes: the words printed on covers (one theme per media category, distinct within a group)

THEMES: dict[str, tuple[str, ...]] = {
    "mer": ("océan", "marée", "vague", "phare", "sirène", "tempête", "navire", "plage"),
    "crime": ("meurtre", "enquête", "poison", "témoin", "coupable", "complot", "revolver", "alibi"),
    "amour": ("passion", "baiser", "désir", "étreinte", "rêverie", "amante", "promesse", "idylle"),
    "enfance": ("ourson", "lutin", "goûter", "doudou", "comptine", "poney", "câlin", "manège"),
    "guerre": ("bataille", "soldat", "empire", "tranchée", "général", "victoire", "défaite", "armée"),
    "cuisine": ("recette", "gâteau", "saveur", "épices", "tarte", "crème", "festin", "soupe"),
    "montagne": ("sommet", "glacier", "chamois", "sentier", "rocher", "neige", "refuge", "vallée"),
    "nuit": ("étoile", "lune", "minuit", "ténèbres", "ombre", "silence", "comète", "aurore"),
    "science": ("atome", "galaxie", "énergie", "cellule", "calcul", "planète", "cerveau", "chimie"),
    "foi": ("prière", "église", "ange", "miracle", "évangile", "psaume", "pèlerin", "abbaye"),
    "jazz": ("swing", "blues", "trompette", "saxo", "groove", "tempo", "club", "improvisé"),
    "rock": ("guitare", "rebelle", "tonnerre", "riff", "décibel", "ampli", "orage", "sauvage"),
    "classique": ("symphonie", "sonate", "concerto", "opéra", "violon", "adagio", "requiem", "nocturne"),
    "rap": ("rime", "béton", "quartier", "flow", "banlieue", "micro", "bitume", "cité"),
    "voyage": ("horizon", "désert", "caravane", "oasis", "escale", "frontière", "boussole", "safari"),
    "humour": ("rire", "farce", "blague", "gaffe", "pitre", "clown", "bêtise", "grimace"),
    "magie": ("dragon", "château", "sorcière", "licorne", "pirate", "trésor", "fée", "potion"),
    "frisson": ("fantôme", "vampire", "cauchemar", "crypte", "monstre", "zombie", "sang", "spectre"),
    "nature": ("forêt", "renard", "abeille", "rivière", "chêne", "hibou", "prairie", "loup"),
    "fête": ("danse", "disco", "paillettes", "soirée", "rythme", "néon", "funk", "fiesta"),
    "savoir": ("grammaire", "leçon", "cahier", "examen", "algèbre", "dictée", "école", "diplôme"),
    "argent": ("bourse", "capital", "profit", "banque", "marché", "crédit", "impôt", "fortune"),
}
# a word of the category name -> the theme it evokes (first free match wins, else a random theme)
THEME_RULES: tuple[tuple[str, str], ...] = (
    ("POLICIER", "crime"), ("SUSPENSE", "crime"), ("CUISINE", "cuisine"), ("RELIGION", "foi"),
    ("SPIRITUALITE", "foi"), ("JAZZ", "jazz"), ("CLASSIQUE", "classique"), ("RAP", "rap"), ("ROCK", "rock"),
    ("METAL", "rock"), ("ENFANTS", "enfance"), ("JEUNESSE", "enfance"), ("ANS", "enfance"), ("ANIME", "magie"),
    ("MANGA", "magie"), ("HUMOUR", "humour"), ("FICTION", "nuit"), ("DOCUMENTAIRE", "science"),
    ("SCIENCES", "science"), ("HISTOIRE", "guerre"), ("VOYAGE", "voyage"), ("MONDE", "voyage"),
    ("NATURE", "nature"), ("DISCO", "fête"), ("TECHNO", "fête"), ("SCOLAIRE", "savoir"), ("LANGUES", "savoir"),
    ("FINANCE", "argent"), ("ECONOMIE", "argent"), ("FILM", "frisson"), ("LITTERATURE", "amour"),
)
FILLER_WORDS = ("le", "la", "les", "du", "un", "grand", "petit", "dernier", "secret", "perdu", "nouveau", "premier")


def assign_themes(names: list[str], rng: np.random.Generator) -> list[str]:
    """One theme per category of a media group, evoked by its name where a rule matches."""
    free, themes = set(THEMES), []
    for name in names:
        tokens = set(re.findall(r"[A-Z]+", name))
        match = next((t for word, t in THEME_RULES if word in tokens and t in free), None)
        theme = match or str(rng.choice(sorted(free)))
        free.discard(theme)
        themes.append(theme)
    return themes


def make_title(keywords: tuple[str, ...], rng: np.random.Generator) -> list[str]:
    """1-3 words, at least one a category keyword, in a random case style."""
    n_words = int(rng.choice([1, 2, 3], p=[0.35, 0.4, 0.25]))
    n_keys = 1 if n_words < 3 else int(rng.integers(1, 3))
    words = list(rng.choice(keywords, n_keys, replace=False)) + list(rng.choice(FILLER_WORDS, n_words - n_keys, replace=False))
    words = [str(w) for w in rng.permutation(words)]
    style = rng.choice(["lower", "title", "upper"], p=[0.4, 0.4, 0.2])
    return [w.upper() if style == "upper" else w.capitalize() if style == "title" and k == 0 else w for k, w in enumerate(words)]


# ---------------------------------------------------------------------------------------------
# categories and the product plan


def real_category_sizes(tree: CategoryTree) -> np.ndarray:
    """Train image count per category of `tree` (by level-3 name), NaN where the name is unknown.

    Why NaN: 20 names with Œ or typographic dashes are spelled differently in the counts file;
    they are simply never drawn.
    """
    counts = pd.read_csv(IMAGE_COUNTS[3], header=None, names=["name", "count"], dtype={"name": str},
                         keep_default_na=False, encoding="utf-8")
    by_name = dict(zip(counts["name"], counts["count"].astype(float)))
    return np.array([by_name.get(n, np.nan) for n in tree.level3_names])


def select_categories(tree: CategoryTree, preset: Preset, rng: np.random.Generator) -> CategoryTree:
    """Draw preset.groups[g] categories from each level-1 group g (likelier the bigger they are)."""
    sizes = real_category_sizes(tree)
    chosen: list[int] = []
    for group, k in preset.groups.items():
        cand = np.flatnonzero((tree.level1_names == group) & ~np.isnan(sizes))
        if len(cand) < k:
            raise ValueError(f"level-1 group {group!r} has {len(cand)} usable categories, preset asks for {k}")
        p = np.sqrt(sizes[cand]) / np.sqrt(sizes[cand]).sum()
        chosen += tree.ids[rng.choice(cand, size=k, replace=False, p=p)].tolist()
    return tree.subset(chosen)


def allocate(weights: np.ndarray, total: int, floor: int = 0) -> np.ndarray:
    """Integer counts summing to `total`, proportional to `weights` above `floor` (largest remainder)."""
    spare = total - floor * len(weights)
    if spare < 0:
        raise ValueError(f"{total} products cannot give {floor} to each of {len(weights)} categories")
    share = spare * weights / weights.sum()
    counts = np.floor(share).astype(int)
    counts[np.argsort(counts - share, kind="stable")[: spare - counts.sum()]] += 1
    return counts + floor


def image_count_mixes(weights: np.ndarray, concentration: float, rng: np.random.Generator) -> np.ndarray:
    """Per-category P(1..4 images): Dirichlet around the paper's shares, then raked so the
    size-weighted mixture matches Table 3 (each category differs; the whole does not drift)."""
    target = PAPER_IMAGE_COUNTS / PAPER_IMAGE_COUNTS.sum()
    mixes = rng.dirichlet(concentration * target, size=len(weights))
    for _ in range(100):
        overall = weights @ mixes / weights.sum()
        mixes *= target / overall
        mixes /= mixes.sum(1, keepdims=True)
    return mixes


def noisy_labels(true: np.ndarray, level1_of: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Relabel a `rate` share of products: half to another category of the same level-1 group,
    half to any other category (the paper's ~10% misclassification)."""
    labels = true.copy()
    n_cat = len(level1_of)
    for i in np.flatnonzero(rng.random(len(true)) < rate):
        same = np.flatnonzero((level1_of == level1_of[true[i]]) & (np.arange(n_cat) != true[i]))
        pool = same if len(same) and rng.random() < 0.5 else np.delete(np.arange(n_cat), true[i])
        labels[i] = rng.choice(pool)
    return labels


def interleaved_ids(n_train: int, n_test: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Increasing _ids with random gaps, and a split per id (train and test interleaved)."""
    n = n_train + n_test
    gaps = rng.geometric(0.4, n) + (rng.random(n) < 0.1) * rng.integers(1, 30, n)  # >= 1: ids stay unique
    ids = int(rng.integers(0, 20)) + np.cumsum(gaps)
    split = np.array(["train"] * n_train + ["test"] * n_test)[rng.permutation(n)]
    return ids.astype(np.int64), split


def plan_products(cats: CategoryTree, preset: Preset, rng: np.random.Generator) -> pd.DataFrame:
    """One row per product, in _id order: split, true / written label index, noisy, n_imgs."""
    weights = real_category_sizes(cats)
    counts = {"train": allocate(weights, preset.n_train, preset.min_train), "test": allocate(weights, preset.n_test)}
    ids, split = interleaved_ids(preset.n_train, preset.n_test, rng)
    true = np.empty(len(ids), np.int64)
    for name, per_cat in counts.items():
        true[split == name] = rng.permutation(np.repeat(np.arange(len(cats)), per_cat))
    mixes = image_count_mixes(counts["train"] + counts["test"], preset.count_concentration, rng)
    n_imgs = 1 + (rng.random(len(ids))[:, None] > np.cumsum(mixes[true], 1)[:, :3]).sum(1)
    label = noisy_labels(true, cats.level1_of, preset.label_noise, rng)
    return pd.DataFrame({"_id": ids, "split": split, "true": true, "label": label,
                         "noisy": (label != true).astype(int), "n_imgs": n_imgs})


# ---------------------------------------------------------------------------------------------
# duplicates: which product copies which picture


def pick_spread(rng: np.random.Generator, rows: np.ndarray, groups: np.ndarray, k: int, min_groups: int) -> np.ndarray:
    """k random rows, plus (if needed) one row from each of enough other groups to reach min_groups."""
    order = rng.permutation(rows)
    picked = list(order[:k])
    seen = set(groups[picked])
    for r in order[k:]:
        if len(seen) >= min_groups:
            break
        if groups[r] not in seen:
            picked.append(r)
            seen.add(groups[r])
    return np.array(picked, np.int64)


def pick_donors(plan: pd.DataFrame, receivers: np.ndarray, donors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each receiver row, a donor row of the same TRUE category (-1 when there is none)."""
    true = plan["true"].to_numpy()
    out = np.full(len(receivers), -1, np.int64)
    for k, r in enumerate(receivers):
        pool = donors[(true[donors] == true[r]) & (donors != r)]
        if len(pool):
            out[k] = rng.choice(pool)
    return out


def plan_duplicates(plan: pd.DataFrame, cats: CategoryTree, preset: Preset, rng: np.random.Generator) -> pd.DataFrame:
    """Add `placeholder` (first picture replaced by the shared 'no photo' picture) and `copy_from`
    (the train row whose first picture this product's first picture copies, or -1).

    Donors are train products that neither copy nor show the placeholder, so every copied
    picture is still in train.bson when the files are written.
    """
    split = plan["split"].to_numpy()
    group = cats.level1_of[plan["true"].to_numpy()]
    placeholder = np.zeros(len(plan), bool)
    for name in ("train", "test"):
        rows = np.flatnonzero(split == name)
        placeholder[pick_spread(rng, rows, group, int(round(preset.placeholder_rate * len(rows))), 3)] = True
    train, test = (np.flatnonzero((split == name) & ~placeholder) for name in ("train", "test"))
    recv_train = rng.choice(train, int(round(preset.dup_train * len(train))), replace=False)
    recv_test = rng.choice(test, int(round(preset.dup_cross * len(test))), replace=False)
    donors = np.setdiff1d(train, recv_train)
    copy_from = np.full(len(plan), -1, np.int64)
    copy_from[recv_train] = pick_donors(plan, recv_train, donors, rng)
    copy_from[recv_test] = pick_donors(plan, recv_test, donors, rng)
    return plan.assign(copy_from=copy_from, placeholder=placeholder.astype(int))


# ---------------------------------------------------------------------------------------------
# rendering


@dataclass(frozen=True)
class RenderTask:
    """Everything one product's pictures depend on (picklable: it crosses to worker processes)."""

    look: R.Look
    family: R.Family
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
    look = R.product_look(task.look, task.family, rng, task.difficulty)
    kinds = view_kinds(task.n_imgs, rng)
    if look.cover:
        pictures = R.cover_views(look, make_title(look.keywords, rng), kinds, rng)
    else:
        pictures = [R.object_view(look, kind, rng, task.difficulty) for kind in kinds]
    if task.family.energy_label and task.n_imgs > 1 and rng.random() < task.energy_label_rate:
        pictures[-1] = R.energy_label(rng)
    quality = int(rng.integers(78, 96))
    return [R.finish(p, rng, task.difficulty, quality) for p in pictures]


def category_looks(cats: CategoryTree, seed: int) -> tuple[list[R.Look], list[R.Family]]:
    """The prototype of every category; media categories also get their theme words."""
    rng = np.random.default_rng([seed, 1])
    families = {g: R.family_for(g, rng) for g in dict.fromkeys(cats.level1_names)}
    themes = {}
    for g in MEDIA_GROUPS:
        rows = np.flatnonzero(cats.level1_names == g)
        names = [f"{cats.level2_names[r]} {cats.level3_names[r]}" for r in rows]
        themes.update(zip(rows, assign_themes(names, rng)))
    looks = [R.make_look(families[g], rng, THEMES[themes[c]] if c in themes else (),
                         "BLU-RAY" if "BLU-RAY" in cats.level2_names[c] else "DVD")
             for c, g in enumerate(cats.level1_names)]
    return looks, [families[g] for g in cats.level1_names]


def render_all(plan: pd.DataFrame, cats: CategoryTree, preset: Preset, seed: int, workers: int, progress: bool) -> list[list[bytes]]:
    """Every product's pictures, in plan order (a pool of `workers` processes when > 1)."""
    looks, families = category_looks(cats, seed)
    tasks = [RenderTask(looks[c], families[c], int(n), (seed, 2, i), preset.difficulty, preset.energy_label_rate)
             for i, (c, n) in enumerate(zip(plan["true"], plan["n_imgs"]))]
    bar = dict(total=len(tasks), desc="rendering products", unit="product", mininterval=2, disable=not progress)
    if workers <= 1:
        return [render_product(t) for t in tqdm(tasks, **bar)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return list(tqdm(pool.imap(render_product, tasks, chunksize=16), **bar))


def apply_duplicates(plan: pd.DataFrame, images: list[list[bytes]]) -> None:
    """Copy donors' first pictures and put the placeholder in (in place; the two sets are disjoint)."""
    for row, donor in enumerate(plan["copy_from"]):
        if donor >= 0:
            images[row][0] = images[donor][0]
    for row in np.flatnonzero(plan["placeholder"].to_numpy()):
        images[row][0] = R.placeholder_jpeg()


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
             workers: int | None = None, preset: Preset | None = None) -> dict | None:
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
    images = render_all(plan, cats, preset, seed, workers if big else 1, progress=big)
    apply_duplicates(plan, images)
    write_dataset(out, plan, images, cats)
    meta["counts"] = summary(plan, cats)
    meta["files"] = {f: (out / f).stat().st_size for f in FILES[:-1]}
    meta["seconds"] = round(time.time() - t0, 1)
    write_json(out / "mini.json", meta)
    return meta


# ---------------------------------------------------------------------------------------------
# measuring a written dataset: python -m common.mini --out DIR --measure


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def duplicate_stats(train: list[Product], test: list[Product], level1_of_id: dict[int, str]) -> dict:
    """Shares of products holding a picture of another train product, the placeholder's reach."""
    owners: dict[str, set[int]] = defaultdict(set)
    for p in train:
        for img in p.images:
            owners[md5(img)].add(p.product_id)
    ph = md5(R.placeholder_jpeg())
    within = [any(owners[h] - {p.product_id} for h in map(md5, p.images) if h != ph) for p in train]
    cross = [any(h in owners for h in map(md5, p.images) if h != ph) for p in test]
    holders = [p.product_id for p in train + test if ph in map(md5, p.images)]
    return {"train_products_sharing_a_train_picture": round(float(np.mean(within)), 4),
            "test_products_sharing_a_train_picture": round(float(np.mean(cross)), 4),
            "placeholder_products": len(holders), "placeholder_level1_groups": len({level1_of_id[i] for i in holders})}


def thumbnails(products: list[Product], size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pictures as flat size x size RGB rows, product row of each, rank of each)."""
    rows = [(cv2.resize(decode_jpeg(img), (size, size), interpolation=cv2.INTER_AREA).ravel(), i, k)
            for i, p in enumerate(products) for k, img in enumerate(p.images)]
    x, owner, rank = zip(*rows)
    return np.stack(x).astype(np.float32) / 255, np.array(owner), np.array(rank)


def baseline(train: list[Product], test: list[Product], test_true: np.ndarray, size: int = 16) -> dict:
    """Logistic regression on thumbnails: does the first picture carry most, and the rest add?"""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x_tr, own_tr, rank_tr = thumbnails(train, size)
    x_te, own_te, rank_te = thumbnails(test, size)
    y_tr = np.array([p.category_id for p in train])[own_tr]
    scaler = StandardScaler().fit(x_tr)
    x_tr, x_te = scaler.transform(x_tr), scaler.transform(x_te)

    def accuracy(model, use: np.ndarray) -> float:
        prob = np.zeros((len(test), len(model.classes_)))
        np.add.at(prob, own_te[use], model.predict_proba(x_te[use]))  # mean = sum for the argmax
        return round(float((model.classes_[prob.argmax(1)] == test_true).mean()), 4)

    def fit(rows: np.ndarray) -> LogisticRegression:
        with warnings.catch_warnings():  # a few hundred lbfgs steps are plenty for a baseline
            warnings.simplefilter("ignore", ConvergenceWarning)
            return LogisticRegression(C=0.01, max_iter=300).fit(x_tr[rows], y_tr[rows])

    first_model, all_model = fit(rank_tr == 0), fit(np.ones(len(y_tr), bool))
    first, every = rank_te == 0, np.ones(len(rank_te), bool)
    return {"thumbnail": size, "chance": round(1 / len(first_model.classes_), 4),
            "trained_on_first_scored_first": accuracy(first_model, first),
            "trained_on_first_scored_all_mean": accuracy(first_model, every),
            "trained_on_all_scored_first": accuracy(all_model, first), "trained_on_all_scored_all_mean": accuracy(all_model, every)}


def ocr_read_rate(products: list[Product], true_ids: np.ndarray, cats: CategoryTree, seed: int, n: int = 30) -> dict:
    """Share of the first n media covers where tesseract reads a keyword of the product's category."""
    import pytesseract
    from PIL import Image

    looks, _ = category_looks(cats, seed)
    ph = md5(R.placeholder_jpeg())
    covers = [(p, set(looks[c].keywords)) for p, c in zip(products, cats.to_index(true_ids))
              if looks[c].cover and md5(p.images[0]) != ph][:n]
    hits = []
    for p, words in covers:
        text = pytesseract.image_to_string(Image.fromarray(decode_jpeg(p.images[0])), lang="fra+eng").lower()
        hits.append(bool(words & set(re.findall(r"\w+", text))))
    return {"covers": len(covers), "keyword_read_rate": round(float(np.mean(hits)), 4)}


def measure(out: Path, ocr_covers: int = 30) -> dict:
    """The properties of a written dataset, measured from its files (as a solution sees them)."""
    meta = json.loads((out / "mini.json").read_text())
    cats = CategoryTree.from_csv(out / "category_names.csv")
    truth = pd.read_csv(out / "truth.csv").set_index("_id")
    train, test = list(iter_products(out / "train.bson")), list(iter_products(out / "test.bson"))
    true_of = lambda prods: truth.loc[[p.product_id for p in prods], "true_category_id"].to_numpy()  # noqa: E731
    n_imgs = np.array([len(p.images) for p in train])
    per_cat = pd.Series([p.category_id for p in train]).value_counts()
    written = np.array([p.category_id for p in train])
    level1 = dict(zip(truth.index, cats.level1_names[cats.to_index(truth["true_category_id"])]))
    return {
        "train_image_count_share": {k: round(float((n_imgs == k).mean()), 4) for k in range(1, 5)},
        "train_label_noise": round(float((written != true_of(train)).mean()), 4),
        "train_products_per_category": {"min": int(per_cat.min()), "max": int(per_cat.max()),
                                        "max_over_min": round(per_cat.max() / per_cat.min(), 1)},
        **duplicate_stats(train, test, level1),
        "baseline": baseline(train, test, true_of(test)),
        "ocr": ocr_read_rate(train, true_of(train), cats, meta["seed"], ocr_covers),
    }


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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--preset", default="default", choices=sorted(PRESETS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="regenerate even if DIR holds this dataset")
    ap.add_argument("--workers", type=int, default=None, help="render processes (default: min(2, cores))")
    ap.add_argument("--measure", action="store_true", help="measure the dataset already in DIR (slow: fits a baseline, runs OCR)")
    args = ap.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(Path(args.out)), indent=2, ensure_ascii=False))
        return
    meta = generate(args.out, args.preset, args.seed, args.force, args.workers)
    if meta is None:
        print(f"{args.out}: mini dataset (preset {args.preset}, seed {args.seed}, version {VERSION}) already there; "
              "nothing to do (--force regenerates)")
        return
    print_summary(args.out, meta)


if __name__ == "__main__":
    main()
