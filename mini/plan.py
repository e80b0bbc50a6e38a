"""The mini dataset's plan: presets, the categories drawn from the real tree, each product's image
count, label (with noise) and split, the cover themes, and which product copies which picture."""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from common.categories import CategoryTree
from common.paths import IMAGE_COUNTS

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
    "dev": Preset(DEFAULT_GROUPS, n_train=2000, n_test=400, min_train=4),  # the fast dev run's --data folder (bench, README)
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
