"""The embedded mini dataset: every property the solutions rely on, measured on the written files.

The tiny preset is generated once per module; the files are read back with the repo's reader and
the JPEG bytes MD5-hashed, so these tests see what a solution will see. Rates that need more than
~300 products to be measured soundly (image-count shares, label noise) are also measured on a
20,000-product plan drawn by the same code (`plan_products`), with the tolerance stated.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections import defaultdict
from dataclasses import replace

import cv2
import numpy as np
import pandas as pd
import pytest

from common.bson_reader import iter_products
from common.categories import CategoryTree
from common.images import decode_jpeg
from mini import PAPER_IMAGE_COUNTS, PRESETS, THEMES, VERSION, generate, main, plan_products, select_categories
from common.paths import CATEGORY_NAMES_CSV

SPLITS = ("train", "test")
PAPER_SHARE = PAPER_IMAGE_COUNTS / PAPER_IMAGE_COUNTS.sum()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("mini") / "tiny"
    assert generate(out, "tiny", seed=0) is not None
    return out


@pytest.fixture(scope="module")
def products(tiny):
    return {split: list(iter_products(tiny / f"{split}.bson")) for split in SPLITS}


@pytest.fixture(scope="module")
def truth(tiny):
    return pd.read_csv(tiny / "truth.csv").set_index("_id")


@pytest.fixture(scope="module")
def tree(tiny):
    return CategoryTree.from_csv(tiny / "category_names.csv")


@pytest.fixture(scope="module")
def hashes(products):
    """split -> {md5: [product ids holding that picture]}."""
    out = {}
    for split, prods in products.items():
        table = defaultdict(list)
        for p in prods:
            for img in p.images:
                table[md5(img)].append(p.product_id)
        out[split] = table
    return out


@pytest.fixture(scope="module")
def placeholder_hash(hashes):
    """The placeholder is the picture held by the most products over both files."""
    counts = {h: len(set(hashes["train"].get(h, [])) | set(hashes["test"].get(h, []))) for h in hashes["train"]}
    return max(counts, key=counts.get)


@pytest.fixture(scope="module")
def big_plan():
    """A 20,000-product train plan from the default preset (no pictures drawn: < 1 s)."""
    preset = replace(PRESETS["default"], n_train=20_000, n_test=0)
    rng = np.random.default_rng([7, 0])
    cats = select_categories(CategoryTree.from_csv(CATEGORY_NAMES_CSV), preset, rng)
    return cats, plan_products(cats, preset, rng)


# ---------------------------------------------------------------------------------------------
# files and format


def test_files_and_completion_marker(tiny, products):
    meta = json.loads((tiny / "mini.json").read_text())
    assert (meta["preset"], meta["seed"], meta["generator_version"]) == ("tiny", 0, VERSION)
    assert len(products["train"]) == meta["counts"]["n_train"] == PRESETS["tiny"].n_train
    assert len(products["test"]) == meta["counts"]["n_test"] == PRESETS["tiny"].n_test
    assert not list(tiny.glob(".*tmp*")), "temporary files left behind"


def test_test_bson_has_no_category_id(products, tree):
    assert all(p.category_id is None for p in products["test"])
    train_ids = {p.category_id for p in products["train"]}
    assert None not in train_ids and train_ids <= set(tree.ids.tolist())


def test_ids_unique_sorted_and_interleaved(products, truth, tiny):
    ids = {s: [p.product_id for p in products[s]] for s in SPLITS}
    for s in SPLITS:
        assert ids[s] == sorted(ids[s]) and len(set(ids[s])) == len(ids[s])
    assert not set(ids["train"]) & set(ids["test"])
    merged = sorted((i, s) for s in SPLITS for i in ids[s])
    switches = sum(a[1] != b[1] for a, b in zip(merged, merged[1:]))
    assert switches > 50, f"train and test ids are not interleaved ({switches} switches)"
    gaps = np.diff([i for i, _ in merged])
    assert gaps.min() >= 1 and gaps.max() > 1, "ids have no gaps"
    labels = pd.read_csv(tiny / "test_labels.csv")
    assert list(labels.columns) == ["_id", "category_id"] and labels["_id"].tolist() == ids["test"]
    assert sorted(truth.index) == sorted(ids["train"] + ids["test"])


def test_every_image_is_a_180x180_colour_jpeg(products, truth):
    for split in SPLITS:
        for p in products[split]:
            assert 1 <= len(p.images) <= 4 and len(p.images) == truth.loc[p.product_id, "n_imgs"]
            for k, img in enumerate(p.images):
                assert decode_jpeg(img, f"{split} _id={p.product_id} img {k}").shape == (180, 180, 3)


def test_categories_are_a_real_subset_in_real_order(tiny, tree):
    real = CATEGORY_NAMES_CSV.read_text(encoding="utf-8").splitlines()
    mine = (tiny / "category_names.csv").read_text(encoding="utf-8").splitlines()
    assert mine[0] == real[0] == "category_id,category_level1,category_level2,category_level3"
    positions = [real.index(row) for row in mine[1:]]  # raises if a row is not a real row verbatim
    assert positions == sorted(positions)
    needed = {"LIBRAIRIE", "MUSIQUE", "DVD - BLU-RAY", "ELECTROMENAGER"}
    assert needed <= set(tree.level1_names) and tree.n_level1 >= 6


# ---------------------------------------------------------------------------------------------
# distributions


def test_image_count_shares_near_the_paper(products, big_plan):
    cats, plan = big_plan
    share = np.bincount(plan["n_imgs"], minlength=5)[1:] / len(plan)
    assert np.abs(share - PAPER_SHARE).max() < 0.02, (share, PAPER_SHARE)  # 20,000 products: sd < 0.004
    n = np.array([len(p.images) for s in SPLITS for p in products[s]])
    tiny_share = np.bincount(n, minlength=5)[1:] / len(n)
    assert np.abs(tiny_share - PAPER_SHARE).max() < 0.10, (tiny_share, PAPER_SHARE)  # 330 products: sd ~0.03
    # the count carries signal: categories differ in their mix (share of 1-image products)
    per_cat = plan.groupby("true")["n_imgs"].apply(lambda k: (k == 1).mean())
    assert per_cat.max() - per_cat.min() > 0.3


def test_label_noise_rate(products, truth, tree, big_plan):
    written = pd.Series({p.product_id: p.category_id for p in products["train"]})
    t = truth.loc[written.index]
    assert (written == t["category_id"]).all()
    noisy = written != t["true_category_id"]
    assert (noisy.astype(int) == t["noisy"]).all()
    assert 0.05 <= noisy.mean() <= 0.15, noisy.mean()
    cats, plan = big_plan  # 20,000 products: sd of the rate 0.002
    rate = (plan["label"] != plan["true"]).mean()
    assert 0.08 <= rate <= 0.12, rate
    flipped = plan[plan["label"] != plan["true"]]
    same_group = (cats.level1_of[flipped["label"]] == cats.level1_of[flipped["true"]]).mean()
    assert 0.45 <= same_group <= 0.75, same_group  # half by design, plus "anywhere" landing in the group


def test_long_tail(products):
    counts = pd.Series([p.category_id for p in products["train"]]).value_counts()
    assert counts.max() >= 8 * counts.min(), counts.to_dict()
    assert counts.min() >= 2


# ---------------------------------------------------------------------------------------------
# duplicates


def test_within_train_duplicates_share_a_true_category(hashes, truth, placeholder_hash):
    dup = {h: set(ids) for h, ids in hashes["train"].items() if h != placeholder_hash and len(set(ids)) > 1}
    assert len(dup) >= 5, f"only {len(dup)} train pictures are shared by several train products"
    same = [truth.loc[list(ids), "true_category_id"].nunique() == 1 for ids in dup.values()]
    assert np.mean(same) == 1.0


def test_test_products_share_pictures_with_train(products, hashes, truth, placeholder_hash):
    train = hashes["train"]
    shared = [p for p in products["test"] if any(md5(i) in train and md5(i) != placeholder_hash for i in p.images)]
    share = len(shared) / len(products["test"])
    assert 0.10 <= share <= 0.35, share
    for p in shared:
        donors = {d for i in p.images if md5(i) in train and md5(i) != placeholder_hash for d in train[md5(i)]}
        assert truth.loc[p.product_id, "true_category_id"] in set(truth.loc[list(donors), "true_category_id"])


def test_one_placeholder_across_groups_and_files(products, hashes, truth, tree, placeholder_hash):
    holders = {s: set(hashes[s].get(placeholder_hash, [])) for s in SPLITS}
    assert holders["train"] and holders["test"]
    groups = tree.level1_of[tree.to_index(truth.loc[list(holders["train"] | holders["test"]), "true_category_id"])]
    assert len(set(groups)) >= 3
    picture = next(i for p in products["train"] for i in p.images if md5(i) == placeholder_hash)
    img = decode_jpeg(picture)
    assert img.std() < 40 and abs(img.mean() - 215) < 25  # a flat grey picture


def test_appliance_last_pictures_are_near_identical_across_categories(products, truth, tree):
    """Many multi-image appliance products end with the same-looking EU energy label, whatever the
    category: their last picture has a near twin (mean |diff| < 20 at 12x12) in ANOTHER category."""
    def thumb(img):
        return cv2.resize(decode_jpeg(img), (12, 12), interpolation=cv2.INTER_AREA).astype(np.float32)

    def share_with_twin(pictures, cats):
        dist = np.abs(pictures[:, None] - pictures[None]).mean((2, 3, 4))
        dist[cats[:, None] == cats[None]] = np.inf
        return (dist.min(1) < 20).mean()

    appliance = set(tree.ids[tree.level1_names == "ELECTROMENAGER"].tolist())
    multi = [p for s in SPLITS for p in products[s]
             if truth.loc[p.product_id, "true_category_id"] in appliance and len(p.images) > 1]
    cats = truth.loc[[p.product_id for p in multi], "true_category_id"].to_numpy()
    assert len(multi) >= 5 and len(set(cats)) >= 2
    last = share_with_twin(np.stack([thumb(p.images[-1]) for p in multi]), cats)
    first = share_with_twin(np.stack([thumb(p.images[0]) for p in multi]), cats)
    assert last >= 0.4 and first <= 0.1, (last, first)


# ---------------------------------------------------------------------------------------------
# covers


def test_media_covers_carry_ocr_readable_category_words(products, truth, tree, placeholder_hash):
    pytesseract = pytest.importorskip("pytesseract")
    if shutil.which("tesseract") is None:
        pytest.skip("the tesseract binary is not installed (apt-get install tesseract-ocr tesseract-ocr-fra)")
    from PIL import Image

    theme_of = {w.lower(): t for t, words in THEMES.items() for w in words}
    media = {int(i) for i in tree.ids[np.isin(tree.level1_names, ["LIBRAIRIE", "MUSIQUE", "DVD - BLU-RAY"])]}
    covers = [(truth.loc[p.product_id, "true_category_id"], p.images[0]) for p in products["train"]
              if truth.loc[p.product_id, "true_category_id"] in media and md5(p.images[0]) != placeholder_hash][:16]
    themes_seen, read = defaultdict(set), 0
    for cat, img in covers:
        text = pytesseract.image_to_string(Image.fromarray(decode_jpeg(img)), lang="fra+eng").lower()
        found = {theme_of[w] for w in re.findall(r"\w+", text) if w in theme_of}
        read += bool(found)
        themes_seen[cat] |= found
    assert len(covers) >= 10 and read / len(covers) >= 0.6, f"{read}/{len(covers)} covers gave a keyword"
    assert all(len(t) <= 1 for t in themes_seen.values()), f"a category's covers mix themes: {dict(themes_seen)}"
    assert len({t for ts in themes_seen.values() for t in ts}) >= 3


# ---------------------------------------------------------------------------------------------
# determinism and reuse


def test_same_seed_same_bytes_other_seed_differs(tiny, tmp_path):
    again, other = tmp_path / "again", tmp_path / "other"
    generate(again, "tiny", seed=0)
    generate(other, "tiny", seed=1)
    for name in ("train.bson", "test.bson", "truth.csv", "category_names.csv"):
        assert (again / name).read_bytes() == (tiny / name).read_bytes(), name
    for name in ("train.bson", "test.bson"):
        assert (other / name).read_bytes() != (tiny / name).read_bytes(), name


def test_second_call_reuses_and_force_regenerates(tiny, capsys):
    stamps = {f: f.stat().st_mtime_ns for f in tiny.iterdir()}
    assert generate(tiny, "tiny", seed=0) is None
    main(["--out", str(tiny), "--preset", "tiny", "--seed", "0"])
    assert "nothing to do" in capsys.readouterr().out
    assert {f: f.stat().st_mtime_ns for f in tiny.iterdir()} == stamps
    old = (tiny / "train.bson").read_bytes()
    main(["--out", str(tiny), "--preset", "tiny", "--seed", "0", "--force"])
    assert "nothing to do" not in capsys.readouterr().out
    assert (tiny / "mini.json").stat().st_mtime_ns > stamps[tiny / "mini.json"]
    assert (tiny / "train.bson").read_bytes() == old


def test_a_pool_of_render_workers_draws_the_same_pictures_as_one_process():
    """The default preset renders in a pool (common.processes: forkserver); each product's pictures
    come from its own seed, so the pool changes no byte."""
    from mini.generate import plan_duplicates, render_all

    preset = PRESETS["tiny"]
    rng = np.random.default_rng([0, 0])
    cats = select_categories(CategoryTree.from_csv(CATEGORY_NAMES_CSV), preset, rng)
    plan = plan_duplicates(plan_products(cats, preset, rng), cats, preset, rng).head(24)
    pooled = render_all(plan, cats, preset, 0, workers=2, progress=False)
    assert pooled == render_all(plan, cats, preset, 0, workers=1, progress=False) and sum(map(len, pooled)) >= 24
