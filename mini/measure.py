"""Measuring a written mini dataset (`python -m mini --measure`): duplicates, a thumbnail
baseline, how often tesseract reads a cover's keyword."""
from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from common.bson_reader import Product, iter_products
from common.categories import CategoryTree
from common.images import decode_jpeg

from . import covers
from .generate import category_looks

# ---------------------------------------------------------------------------------------------
# measuring a written dataset: python -m mini --work W --measure


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def duplicate_stats(train: list[Product], test: list[Product], level1_of_id: dict[int, str]) -> dict:
    """Shares of products holding a picture of another train product, the placeholder's reach."""
    owners: dict[str, set[int]] = defaultdict(set)
    for p in train:
        for img in p.images:
            owners[md5(img)].add(p.product_id)
    ph = md5(covers.placeholder_jpeg())
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
    ph = md5(covers.placeholder_jpeg())
    media = [(p, set(looks[c].keywords)) for p, c in zip(products, cats.to_index(true_ids))
             if looks[c].cover and md5(p.images[0]) != ph][:n]
    hits = []
    for p, words in media:
        text = pytesseract.image_to_string(Image.fromarray(decode_jpeg(p.images[0])), lang="fra+eng").lower()
        hits.append(bool(words & set(re.findall(r"\w+", text))))
    return {"covers": len(media), "keyword_read_rate": round(float(np.mean(hits)), 4)}


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
