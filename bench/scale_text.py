"""The OCR text model's share of bench_scale.py: synthetic French cover texts over the real media
categories, and the child process that fits one fold model on them (its peak RSS is the stage's)."""
from __future__ import annotations

import numpy as np

from common.categories import CategoryTree
from common.paths import CATEGORY_NAMES_CSV
from common.predictions import DEFAULT_K


def category_weights(tree: CategoryTree) -> np.ndarray:
    """Share of each class in the real train images (level-3 counts shipped in common/resources)."""
    from mini import real_category_sizes

    sizes = np.nan_to_num(real_category_sizes(tree))
    return sizes / sizes.sum()

MEDIA = ("LIBRAIRIE", "MUSIQUE", "DVD - BLU-RAY", "JEUX VIDEO")


def synthetic_titles(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """n French cover texts over the real media categories: words of the real category names (each
    class draws half its words from its own 40), two invented author / label names, real class
    frequencies (the level-3 image counts)."""
    import re

    tree = CategoryTree.from_csv(CATEGORY_NAMES_CSV)
    names = np.concatenate([tree.level1_names, tree.level2_names, tree.level3_names])
    words = np.array(sorted({w for v in names for w in re.findall(r"(?u)\b\w{3,}\b", v.lower())}))
    media = np.flatnonzero(np.isin(tree.level1_names, MEDIA))
    weights = category_weights(tree)[media]
    rng = np.random.default_rng(seed)
    syllables = np.array(["ba", "ro", "mi", "lu", "ve", "ta", "ne", "so", "qui", "par", "ter", "mon", "lan", "dre", "cha"])
    people = np.array(["".join(rng.choice(syllables, rng.integers(2, 4))) for _ in range(20_000)])
    own = rng.integers(0, len(words), (len(media), 40))
    labels = rng.choice(len(media), n, p=weights / weights.sum())
    texts = []
    for y, k in zip(labels, rng.integers(3, 9, n)):
        parts = [words[own[y, rng.integers(0, 40, k // 2 + 1)]], words[rng.integers(0, len(words), k - k // 2)], people[rng.integers(0, len(people), 2)]]
        texts.append(" ".join(rng.permutation(np.concatenate(parts))))
    return texts, media[labels]


def text_model_main(n: int) -> None:
    """One fold model of the OCR text model (the stage's defaults) on n read products, then top-K
    for a quarter as many (run as a child: its peak RSS is the stage's)."""
    from ocr.run import OcrOptions
    from ocr.text_model import TextClassifier

    texts, labels = synthetic_titles(n + n // 4)
    model = TextClassifier(5270, OcrOptions().text_model).fit(texts[:n], labels[:n])
    top = model.predict_topk(np.arange(n // 4), texts[n:], DEFAULT_K)
    right = top.labels[:, 0] == labels[n:][top.ids]
    print(f"text model: {n} texts, top-1 on {len(top)} held-out texts {right.mean():.3f}")
