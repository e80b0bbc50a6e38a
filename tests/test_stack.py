"""The XGBoost stacker on designed sources whose errors are complementary.

Source a_model is right on products whose true label is in one level-1 group (X) and wrong
elsewhere; b_model is right elsewhere and wrong on X; both are equally confident either way, so
no mean can tell which to trust, but the candidate's level-1 group and which source names it
can. A noisy md5-like side source covers a few products. A stacker must beat every one of them.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.paths import WorkDir
from common.predictions import TopK, power_mean, save_topk
from common.prepare import DatasetPaths
from common.sources import write_summary
from common.workdata import Labels
from ensembling.stack import StackConfig, run_stack
from common.errors import DataError
from common.predictions import load_topk
from ensembling.stack.booster import group_topk
from ensembling.stack.engine import open_engine
from ensembling.stack.features import FeatureContext, build_chunk, candidate_recall, candidate_table, feature_matrix, feature_names
from ensembling.stack.inputs import Products, Source, load_inputs, prior_tables
from tests.conftest import make_tiny_work

K = 3


def _topk_rows(rng, truth: np.ndarray, right: np.ndarray, wrong_label: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """K labels per product: the truth first where `right`, else `wrong_label` first and the truth
    absent; the other labels are neither, so a mean of two complementary sources is a coin toss."""
    labels = np.zeros((len(truth), K), np.int16)
    probs = np.zeros((len(truth), K), np.float16)
    for i, t in enumerate(truth):
        first = t if right[i] else wrong_label[i]
        rest = [c for c in rng.permutation(n_classes) if c not in (t, wrong_label[i])][: K - 1]
        p = rng.uniform(0.5, 0.8)
        labels[i] = [first, *rest]
        probs[i] = [p, (1 - p) * 0.6, (1 - p) * 0.3]
    return labels, probs


def _wrong_label(rng, truth: np.ndarray, level1_of: np.ndarray, same_group: bool) -> np.ndarray:
    """A wrong label, in the truth's level-1 group when there is one (else any other label)."""
    out = np.empty(len(truth), np.int64)
    for i, t in enumerate(truth):
        pool = [c for c in range(len(level1_of)) if c != t and (level1_of[c] == level1_of[t]) == same_group]
        pool = pool or [c for c in range(len(level1_of)) if c != t]
        out[i] = rng.choice(pool)
    return out


def write_designed_sources(work: Path, seed: int = 0) -> dict:
    """a_model / b_model (complementary by level-1 group), md5 (side, few products), a
    'convoluted' sqrt team blend of a and b, an ablation; training logs and a stats figure. The
    kinds come from each summary.json (the registry), never from the names."""
    rng = np.random.default_rng(seed)
    wd = WorkDir(work)
    paths = DatasetPaths.load(wd)
    tree = paths.tree()
    labels = Labels.load(wd)
    test = pd.read_csv(paths.test_labels).sort_values("_id")
    splits = {"oof": (labels.ids[1:], labels.labels[1:]),  # the first train product: no source at all
              "test": (test["_id"].to_numpy(np.int64)[1:], tree.to_index(test["category_id"].to_numpy())[1:])}  # nor the first test product
    x_group = tree.level1_of[0]
    preds: dict[str, dict[str, TopK]] = {"a_model": {}, "b_model": {}, "md5": {}, "a_ablation_x": {}}
    for split, (ids, truth) in splits.items():
        in_x = tree.level1_of[truth] == x_group
        wrong = _wrong_label(rng, truth, tree.level1_of, same_group=True)
        preds["a_model"][split] = TopK(ids, *_topk_rows(rng, truth, in_x, wrong, len(tree)))
        preds["b_model"][split] = TopK(ids, *_topk_rows(rng, truth, ~in_x, wrong, len(tree)))
        preds["a_ablation_x"][split] = TopK(ids, *_topk_rows(rng, truth, in_x & (rng.random(len(ids)) < 0.9), wrong, len(tree)))
        cover = np.sort(rng.choice(len(ids), max(2, len(ids) // 7), replace=False))
        md5_labels = np.full((len(cover), K), -1, np.int16)
        md5_labels[:, 0] = np.where(rng.random(len(cover)) < 0.7, truth[cover], rng.integers(0, len(tree), len(cover)))
        md5_probs = np.zeros((len(cover), K), np.float16)
        md5_probs[:, 0] = 1.0
        preds["md5"][split] = TopK(ids[cover], md5_labels, md5_probs)
    kinds = {"a_model": "model", "b_model": "model", "md5": "side source", "a_ablation_x": "ablation"}
    recorded = {"a_model": {"value": 0.55, "what": "a recipe", "measured_on": "somewhere"}}
    for name, by_split in preds.items():
        for split, p in by_split.items():
            save_topk(wd.preds(name) / f"{split}.npz", p)
        write_summary(wd, name, kinds[name], val_image_accuracy_per_fold=[0.5, 0.6], recorded=recorded.get(name, {}))
    members = ["a_model", "b_model"]
    for split in ("oof", "test"):
        save_topk(wd.preds("convoluted") / f"{split}.npz", power_mean([preds[m][split] for m in members], K, [0.6, 0.4], 0.5))
    write_summary(wd, "convoluted", "team blend", members=members, weights=[0.6, 0.4], power=0.5, leaderboard={"place": 2, "private": 0.79352})
    for fold in (0, 1):
        log = wd.model_dir("toy", "a", fold) / "summary.csv"
        log.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"epoch": [0, 1, 2], "lr": 0.1, "train_loss": [2, 1, 0.5], "train_acc": [0.3, 0.5, 0.7], "val_loss": [2, 1.2, 1], "val_acc": [0.3, 0.45, 0.5 + fold / 10]}).to_csv(log, index=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.bar([1, 2], [3, 4])
    (wd.stats / "train").mkdir(parents=True, exist_ok=True)
    fig.savefig(wd.stats / "train" / "fig2_products_per_category.png")
    plt.close(fig)
    return {"dropped_train_id": int(labels.ids[0]), "dropped_test_id": int(test["_id"].iloc[0])}


FAST = dict(rounds=40, nthread=1, chunk_products=10_000)


@pytest.fixture(scope="module")
def stacked_work(tmp_path_factory):
    """A tiny work dir with the designed sources, stacked once (shared by the tests below)."""
    root = tmp_path_factory.mktemp("stack")
    work = make_tiny_work(root, n_train=360, n_test=40, n_folds=3)
    info = write_designed_sources(work)
    summary = run_stack(WorkDir(work), StackConfig(**FAST))
    return work, info, summary


def _source(name: str, kind: str, ids, labels, probs) -> Source:
    top = TopK(np.asarray(ids, np.int64), np.asarray(labels, np.int16), np.asarray(probs, np.float16))
    return Source(name, kind, top, top)


def test_candidate_features_mark_absent_sources():
    # products 10, 11, 12; the model has 10 and 11 (K=2), the md5 side source has only 11 (K=2, one label)
    model = _source("m", "model", [10, 11], [[0, 1], [2, 0]], [[0.7, 0.2], [0.6, 0.3]])
    md5 = _source("md5", "side source", [11, 12], [[0, -1], [3, -1]], [[1.0, 0.0], [0.5, 0.0]])
    products = Products(np.array([10, 11, 12]), np.array([1, 2, 4], np.float32), np.array([1, 0, 3]), np.zeros(3, np.int64), np.zeros(3, np.int64))
    c = candidate_table(products.ids, [model.oof, md5.oof], 0, 5)
    assert list(zip(c.group.tolist(), c.labels.tolist())) == [(0, 0), (0, 1), (1, 0), (1, 2), (2, 3)]
    names = feature_names([model, md5])
    assert names[:8] == ["m:prob", "m:rank", "m:top", "md5:prob", "md5:rank", "md5:top", "md5:share", "md5:labels"]
    level1_of = np.array([0, 0, 1, 1, 2])
    X = feature_matrix(c, [model, md5], FeatureContext(products, level1_of, np.log(np.full((1, 5), 0.2, np.float32))))
    f = {n: X[:, i] for i, n in enumerate(names)}
    np.testing.assert_allclose(f["m:prob"], [0.7, 0.2, 0.3, 0.6, 0.0], atol=1e-3)
    assert f["m:rank"].tolist() == [1, 2, 2, 1, 3]  # product 12: the model has no row -> K+1
    assert f["m:top"].tolist()[4] == 0.0
    assert f["md5:rank"].tolist() == [3, 3, 1, 3, 1]  # absent -> K+1 (K=2)
    np.testing.assert_allclose(f["md5:prob"], [0, 0, 1, 0, 0.5], atol=1e-3)
    np.testing.assert_allclose(f["md5:share"], [0, 0, 1, 0, 1], atol=1e-3)  # share of the source's mass: the vote share
    assert f["md5:labels"].tolist() == [0, 0, 1, 1, 1]
    assert f["n_sources"].tolist() == [1, 1, 2, 2, 1]
    assert f["n_imgs"].tolist() == [1, 1, 2, 2, 4]
    np.testing.assert_allclose(f["top1_votes"], [1, 0, 0.5, 0.5, 1])  # product 11: m says 2, md5 says 0
    np.testing.assert_allclose(f["level1_agree"], [1, 1, 0.5, 0.5, 1])
    np.testing.assert_allclose(f["mean_prob"], [0.7, 0.2, 0.65, 0.3, 0.5], atol=1e-3)
    assert f["level1"].tolist() == [0, 0, 0, 1, 1]


def test_a_source_with_no_row_at_all_is_absent_everywhere():
    """OCR that read no holdout product (a small holdout) has an empty OOF: it used to crash the
    candidate table (IndexError); it is a source absent from every product."""
    model = _source("m", "model", [10, 11], [[0, 1], [2, 0]], [[0.7, 0.2], [0.6, 0.3]])
    ocr = _source("ocr", "side source", np.zeros(0, np.int64), np.zeros((0, 2)), np.zeros((0, 2)))
    c = candidate_table(np.array([10, 11]), [model.oof, ocr.oof], 0, 5)
    assert c.labels.tolist() == [0, 1, 0, 2] and not c.present[:, 1].any()
    assert (c.ranks[:, 1] == 3).all() and (c.probs[:, 1] == 0).all()


def test_candidate_recall_hand_made():
    a = TopK(np.array([1, 2, 3, 4]), np.array([[0, 1], [2, 3], [1, 0], [4, -1]], np.int16), np.full((4, 2), 0.4, np.float16))
    b = TopK(np.array([2, 3]), np.array([[4, 0], [3, 2]], np.int16), np.full((2, 2), 0.4, np.float16))
    truth = np.array([1, 0, 2, 3, 4])  # product 5 is in no source
    ids = np.array([1, 2, 3, 4, 5])
    c = candidate_table(ids, [a, b], 0, 5)
    assert candidate_recall(c.group, c.labels, truth).tolist() == [True, True, True, False, False]
    c1 = candidate_table(ids, [a, b], 1, 5)  # top-1 of each source only: {0}, {2,4}, {1,3}, {4}
    assert candidate_recall(c1.group, c1.labels, truth).tolist() == [False, False, False, False, False]
    assert sorted(c1.labels[c1.group == 1].tolist()) == [2, 4]


def test_chunked_features_equal_one_chunk(stacked_work):
    work, _, _ = stacked_work
    inp = load_inputs(WorkDir(work), StackConfig(**FAST))
    args = (inp.stacked, "oof", inp.tree.level1_of, inp.prior, len(inp.tree))
    whole = build_chunk(inp.oof, *args)
    parts = [build_chunk(p, *args, qid_offset=i * 50) for i, p in enumerate(inp.oof.chunks(50))]
    assert len(parts) > 3
    np.testing.assert_array_equal(np.concatenate([p.X for p in parts]), whole.X)
    np.testing.assert_array_equal(np.concatenate([p.labels for p in parts]), whole.labels)
    np.testing.assert_array_equal(np.concatenate([p.y for p in parts]), whole.y)
    np.testing.assert_array_equal(np.concatenate([p.qid for p in parts]), whole.group)


def test_prior_leaves_the_fold_out():
    labels = np.array([0, 0, 1, 2, 2, 2])
    folds = np.array([0, 1, 0, 1, 0, 1])
    t = np.exp(prior_tables(labels, folds, [0, 1], 3))
    np.testing.assert_allclose(t[0], (np.array([1, 0, 2]) + 1) / (3 + 3))  # fold 0's table counts fold 1 only
    np.testing.assert_allclose(t[2], (np.array([2, 1, 3]) + 1) / (6 + 3))


def test_group_topk_is_a_sorted_distribution():
    top = group_topk(np.array([5, 6, 7]), np.array([0, 0, 0, 2]), np.array([3, 1, 2, 4]), np.array([0.0, 2.0, 1.0, -1.0]), 2)
    assert top.ids.tolist() == [5, 7]  # product 6 has no candidate: no row
    assert top.labels.tolist() == [[1, 2], [4, -1]]
    e = np.exp([2.0, 1.0, 0.0])
    np.testing.assert_allclose(top.probs[0].astype(float), e[:2] / e.sum(), atol=1e-3)
    assert float(top.probs[1, 0]) == 1.0


def test_stacker_beats_every_baseline(stacked_work):
    _, _, s = stacked_work
    assert s["sources"] == ["a_model", "b_model", "md5"]  # the blend of a and b left out; ablations never considered
    assert s["left_out"] == ["convoluted"] and "a_ablation_x" not in s["sources_kinds"]
    assert s["oof_products"] == 359  # the train product no source predicts is not scored
    base = s["baselines"]
    for name in ("a_model", "b_model", "md5", "convoluted", "mean (stacked sources)", "geomean (stacked sources)", "mean (models)",
                 "convoluted recipe: weighted sqrt blend of 2"):
        assert name in base
    assert s["beats_every_baseline"], (s["oof_product_accuracy"], base)
    assert s["oof_product_accuracy"] > max(v["oof_accuracy"] for v in base.values()) + 0.1
    assert s["oof_product_accuracy"] > 0.85
    assert s["candidate_recall"] == pytest.approx(1.0)  # a or b always names the truth
    assert set(s["cv"]["per_fold"]) == {"0", "1", "2"}
    assert sum(f["products"] for f in s["cv"]["per_fold"].values()) == 359
    assert s["test_accuracy"] is not None and s["test_accuracy"] > 0.8


def test_submission_has_every_test_product_once(stacked_work):
    work, info, s = stacked_work
    paths = DatasetPaths.load(WorkDir(work))
    with gzip.open(work / "submissions" / "stack.csv.gz", "rt") as f:
        sub = pd.read_csv(f)
    test_ids = np.sort(np.asarray(paths.index(WorkDir(work), "test").ids))
    assert sorted(sub["_id"].tolist()) == test_ids.tolist()
    assert not sub["_id"].duplicated().any()
    assert s["test_rows_from_fallback"] == 1
    labels = Labels.load(WorkDir(work))
    prior = int(np.bincount(labels.labels).argmax())
    assert int(sub.set_index("_id").loc[info["dropped_test_id"], "category_id"]) == int(paths.tree().ids[prior])
    assert (work / "stack" / "model.ubj").exists() and (work / "preds" / "stack" / "oof.npz").exists()
    names = json.loads((work / "stack" / "features.json").read_text())["features"]
    assert names == s["features"] and "md5:share" in names and "prior" in names


def test_sampled_training_and_a_model_trained_elsewhere(stacked_work, tmp_path):
    """--max-train-products bounds each model's products; --model predicts with a saved model
    (what a distributed xgboost.dask run hands back) without CV; exported chunks are loadable."""
    import shutil

    work, _, _ = stacked_work
    copy = tmp_path / "work"
    shutil.copytree(work, copy)
    s = run_stack(WorkDir(copy), StackConfig(**{**FAST, "max_train_products": 100, "export_features": str(tmp_path / "feat")}))
    assert all(f["train_products"] == 100 for f in s["cv"]["per_fold"].values())
    with np.load(tmp_path / "feat" / "chunk_00000.npz", allow_pickle=False) as z:
        assert z["X"].shape[1] == len(s["features"]) and len(z["y"]) == len(z["X"]) == len(z["qid"])
    again = run_stack(WorkDir(copy), StackConfig(**{**FAST, "model": str(copy / "stack" / "model.ubj")}))
    assert again["cv"] is None and again["beats_every_baseline"] is None
    assert not (copy / "preds" / "stack" / "oof.npz").exists()
    assert again["test_rows_from_fallback"] == 1 and again["test_accuracy"] == pytest.approx(s["test_accuracy"])


def test_holdout_protocol_stacks_by_its_own_cv_over_the_holdout(tmp_path):
    """The winners' protocol: one predicted fold (fold 0 = the holdout, the rest -1). The stacker
    used to train fold 0's model on nothing (XGBoost: "Iterative DMatrix must have at least 1
    batch"); now it cross-validates over the holdout products and predicts test with a model
    trained on all of them."""
    from common.folds import main as folds_main

    work = make_tiny_work(tmp_path, n_train=360, n_test=40, n_folds=3)
    folds = folds_main(["--work", str(work), "--protocol", "holdout", "--holdout-fraction", "0.4", "--force"])
    holdout = set(folds.loc[folds["fold"] == 0, "_id"])
    info = write_designed_sources(work)
    s = run_stack(WorkDir(work), StackConfig(**FAST, cv_folds=4))
    assert s["protocol"] == "holdout"
    assert set(s["cv"]["per_fold"]) == {"0", "1", "2", "3"}
    assert s["oof_products"] == len(holdout - {info["dropped_train_id"]})  # only holdout products are scored
    assert sum(f["products"] for f in s["cv"]["per_fold"].values()) == s["oof_products"]
    assert all(f["train_products"] < s["oof_products"] for f in s["cv"]["per_fold"].values())
    assert s["beats_every_baseline"] and s["test_accuracy"] > 0.8
    with gzip.open(work / "submissions" / "stack.csv.gz", "rt") as f:
        assert len(pd.read_csv(f)) == 40
    with pytest.raises(Exception, match="too few"):
        run_stack(WorkDir(work), StackConfig(**FAST, cv_folds=200))


def test_the_stacker_on_a_dask_cluster_predicts_the_same_products_as_well(stacked_work, tmp_path):
    """--dask local:2: CV, final model and test prediction through xgboost.dask on a LocalCluster
    of 2 worker processes (the chunks of feature rows scattered between them). Same products
    predicted, accuracy equal to the single-process stacker's within noise (the quantile sketch
    is merged across workers, so the trees may differ slightly)."""
    import shutil

    from ensembling.stack.run import main

    work, _, local = stacked_work
    copy = tmp_path / "work"
    shutil.copytree(work, copy)
    s = main(["--work", str(copy), "--rounds", "40", "--chunk-products", "100", "--dask", "local:2"])
    assert s["engine"].startswith("dask (2 workers")
    for split in ("oof", "test"):
        ids = load_topk(copy / "preds" / "stack" / f"{split}.npz").ids
        assert np.array_equal(ids, load_topk(work / "preds" / "stack" / f"{split}.npz").ids)
    assert abs(s["oof_product_accuracy"] - local["oof_product_accuracy"]) < 0.03, (s["oof_product_accuracy"], local["oof_product_accuracy"])
    assert s["beats_every_baseline"] and abs(s["test_accuracy"] - local["test_accuracy"]) <= 0.05
    assert s["test_rows_from_fallback"] == 1


def test_a_bad_dask_option_is_one_clear_line(monkeypatch):
    monkeypatch.setattr("ensembling.stack.engine.CONNECT_TIMEOUT", "2s")
    with pytest.raises(DataError, match="local or local:N"):
        StackConfig(dask="local:0")
    with pytest.raises(DataError, match="cannot reach the scheduler"):
        open_engine("tcp://127.0.0.1:9")  # nothing listens on the discard port
