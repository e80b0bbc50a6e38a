"""Top-K prediction files, aggregation over a product's images, fold averaging, submissions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from common.categories import CategoryTree
from common.errors import DataError
from common.infer import Items, aggregate, product_batches
from common.predictions import TopK, average_topk, concat_topk, load_topk, save_topk, topk_from_dense
from common.submission import submission_from_topk, validate_submission, write_submission


def dense(rng, n, c):
    p = rng.random((n, c)).astype(np.float32) ** 4
    return p / p.sum(1, keepdims=True)


def test_topk_from_dense_sorted_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    ids = np.array([30, 10, 20])
    probs = dense(rng, 3, 12)
    top = topk_from_dense(ids, probs, k=4)
    assert top.ids.tolist() == [10, 20, 30]
    assert (np.diff(top.probs.astype(np.float32), axis=1) <= 0).all()
    assert top.labels[0, 0] == probs[1].argmax() and top.labels.dtype == np.int16 and top.probs.dtype == np.float16
    save_topk(tmp_path / "p.npz", top)
    back = load_topk(tmp_path / "p.npz")
    assert (back.ids == top.ids).all() and (back.labels == top.labels).all() and (back.probs == top.probs).all()


def test_bad_prediction_files_are_named(tmp_path):
    top = topk_from_dense(np.arange(3), dense(np.random.default_rng(1), 3, 5), k=2)
    save_topk(tmp_path / "p.npz", top)
    half = tmp_path / "half.npz"
    half.write_bytes((tmp_path / "p.npz").read_bytes()[:200])
    with pytest.raises(DataError, match="half.npz"):
        load_topk(half)
    with pytest.raises(DataError, match="NaN"):
        topk_from_dense(np.arange(2), np.array([[0.5, np.nan], [0.1, 0.9]]))
    nan = TopK(top.ids, top.labels, top.probs.copy())
    nan.probs[1, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        save_topk(tmp_path / "nan.npz", nan)
    with pytest.raises(DataError, match="sorted"):
        save_topk(tmp_path / "unsorted.npz", TopK(top.ids[::-1].copy(), top.labels, top.probs))


def test_aggregate_mean_and_geomean():
    probs = torch.tensor([[0.8, 0.2], [0.4, 0.6], [0.5, 0.5], [0.9, 0.1]])
    groups = torch.tensor([7, 7, 9, 9])
    valid = torch.tensor([True, True, True, False])  # the last image is corrupt
    ids, mean = aggregate(probs, groups, valid, "mean")
    assert ids.tolist() == [7, 9] and torch.allclose(mean, torch.tensor([[0.6, 0.4], [0.5, 0.5]]))
    _, geo = aggregate(probs, groups, valid, "geomean")
    g = torch.tensor([(0.8 * 0.4) ** 0.5, (0.2 * 0.6) ** 0.5])
    assert torch.allclose(geo[0], g / g.sum(), atol=1e-6)


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_product_batches_cover_every_product_once_on_any_number_of_ranks(world):
    """Whole products per batch, within the budget, every product on exactly one rank (none dropped)."""
    n_imgs = np.array([1, 4, 2, 3, 1, 4, 4, 2, 1, 1, 3])
    items = Items.images(np.arange(100, 111), n_imgs)
    start = np.r_[0, np.cumsum(n_imgs)]
    seen = []
    for rank in range(world):
        for batch in product_batches(items, 5, rank, world):
            products = sorted({int(np.searchsorted(start, i, side="right") - 1) for i in batch})
            assert batch == [i for p in products for i in range(start[p], start[p + 1])]  # whole products, in order
            assert sum(n_imgs[products]) <= 5 or len(products) == 1
            seen += products
    assert sorted(seen) == list(range(len(n_imgs)))


def test_product_batches_never_mix_keys():
    k = np.array([1, 2, 1, 4, 2, 1, 4], np.int8)  # image counts come from the index as int8
    items = Items.products(np.arange(7), cost=k, key=k)
    batches = [b for rank in range(2) for b in product_batches(items, 4, rank, 2)]
    assert sorted(i for b in batches for i in b) == list(range(7))
    assert all(len({int(k[i]) for i in b}) == 1 and k[b].sum() <= 4 or len(b) == 1 for b in batches)
    many = np.full(400, 4, np.int8)  # a budget far above int8's range: the running cost must not wrap
    big = product_batches(Items.products(np.arange(400), cost=many, key=many), 256)
    assert [len(b) for b in big] == [64] * 6 + [16]


def test_average_topk_matches_dense_mean():
    rng = np.random.default_rng(2)
    a, b = dense(rng, 5, 8), dense(rng, 5, 8)
    ids = np.arange(5)
    avg = average_topk([topk_from_dense(ids, a, 8), topk_from_dense(ids, b, 8)], k=3, weights=[3.0, 1.0])
    want = (3 * a + b) / 4
    assert (avg.labels == np.argsort(-want, axis=1)[:, :3]).all()
    assert np.allclose(avg.probs.astype(np.float32), -np.sort(-want, axis=1)[:, :3], atol=2e-3)
    partial = average_topk([topk_from_dense(ids[:3], a[:3], 8), topk_from_dense(ids, b, 8)], k=2)
    assert partial.ids.tolist() == ids.tolist()  # products 3, 4 come from the second part alone
    assert (partial.labels[3:, 0] == b[3:].argmax(1)).all()


def test_lookup_and_top1_by_id():
    top = topk_from_dense(np.array([5, 9]), np.eye(3, dtype=np.float32)[[2, 1]], k=2)
    rows, found = top.lookup(np.array([9, 6, 5]))
    assert found.tolist() == [True, False, True] and rows[found].tolist() == [1, 0]
    assert top.top1_of(np.array([9, 6, 5])).tolist() == [1, -1, 2] and top.top1_of(np.array([6]), missing=7).tolist() == [7]
    assert len(TopK.empty(4)) == 0 and TopK.empty(4).k == 4 and concat_topk([], 3).k == 3


def test_concat_rejects_overlap():
    top = topk_from_dense(np.arange(4), dense(np.random.default_rng(3), 4, 5), k=2)
    assert concat_topk([top.take(np.array([2, 3])), top.take(np.array([0, 1]))]).ids.tolist() == [0, 1, 2, 3]
    with pytest.raises(DataError, match="overlap"):
        concat_topk([top.take(np.array([0, 1])), top.take(np.array([1, 2]))])


@pytest.fixture(scope="module")
def tree(category_csv):
    return CategoryTree.from_csv(category_csv)


def test_submission_rejects_missing_repeated_and_unknown(tmp_path, tree):
    test_ids = np.array([5, 6, 7])
    good = tree.ids[[0, 1, 2]]
    path = write_submission(tmp_path / "s.csv.gz", test_ids, good)
    assert validate_submission(path, test_ids, tree)["_id"].tolist() == [5, 6, 7]
    write_submission(tmp_path / "missing.csv", test_ids[:2], good[:2])
    with pytest.raises(DataError, match="missing.csv: 1 test products have no row.*7"):
        validate_submission(tmp_path / "missing.csv", test_ids, tree)
    write_submission(tmp_path / "dup.csv", np.array([5, 5, 6, 7]), tree.ids[[0, 0, 1, 2]])
    with pytest.raises(DataError, match="more than once"):
        validate_submission(tmp_path / "dup.csv", test_ids, tree)
    write_submission(tmp_path / "unknown.csv", test_ids, np.array([good[0], 123, good[2]]))
    with pytest.raises(DataError, match="not in"):
        validate_submission(tmp_path / "unknown.csv", test_ids, tree)
    (tmp_path / "header.csv").write_text("id,category\n5,1\n")
    with pytest.raises(DataError, match="header"):
        validate_submission(tmp_path / "header.csv", test_ids, tree)


def test_every_test_product_gets_a_row(tmp_path, tree):
    preds = topk_from_dense(np.array([5, 7]), np.eye(3, dtype=np.float32)[[1, 2]], k=2)
    path, fallback = submission_from_topk(tmp_path / "s.csv", preds, np.array([5, 6, 7]), tree, fallback_label=0)
    frame = validate_submission(path, np.array([5, 6, 7]), tree)
    assert fallback == 1 and frame["category_id"].tolist() == tree.ids[[1, 0, 2]].tolist()


def test_product_report_breakdowns(tree):
    from common.metrics import class_prior_accuracy, product_report

    true = np.array([0, 0, 1, 2, 5000, -1])
    pred = np.array([0, 1, 1, 2, 5001, 3])  # 5000 -> 5001: wrong category, same level-1 group
    report = product_report(pred, true, np.array([1, 1, 2, 4, 4, 1]), tree)
    assert report["products"] == 5 and report["accuracy"] == pytest.approx(3 / 5)
    assert report["by_image_count"] == {"1": {"accuracy": 0.5, "products": 2}, "2": {"accuracy": 1.0, "products": 1},
                                        "4": {"accuracy": 0.5, "products": 2}}
    assert report["level1_accuracy"] == pytest.approx(1.0 if tree.level1_of[0] == tree.level1_of[1] else 0.8)
    assert sum(v["products"] for v in report["by_level1"].values()) == 5
    assert class_prior_accuracy(np.array([3, 3, 1]), np.array([3, 1, 3, 3])) == 0.75


def _file(tmp_path, ids, labels, probs, name="p.npz"):
    path = tmp_path / name
    save_topk(path, TopK(np.asarray(ids, np.int64), np.asarray(labels, np.int16), np.asarray(probs, np.float16)))
    return path


@pytest.mark.parametrize("labels, probs, problem", [
    ([[0, 1]], [[0.6, 0.7]], "probabilities increasing along K"),
    ([[0, 1]], [[1.5, 0.1]], "probabilities outside \\[0, 1\\]"),
    ([[0, -3]], [[0.6, 0.1]], "labels below -1"),
    ([[0, 1]], [[-0.1, -0.2]], "probabilities outside \\[0, 1\\]"),
])
def test_bad_prediction_contents_are_refused_on_write_naming_the_file(tmp_path, labels, probs, problem):
    with pytest.raises(DataError, match=f"p.npz: 1 products have {problem}"):
        _file(tmp_path, [7], labels, probs)


def test_labels_outside_the_tree_and_ids_of_the_other_split_are_refused_on_read(tmp_path):
    path = _file(tmp_path, [5, 9], [[8, 0], [1, -1]], [[0.9, 0.1], [1.0, 0.0]])
    assert len(load_topk(path)) == 2
    with pytest.raises(DataError, match=r"p.npz: 1 products have labels >= 5 .*first _id 5"):
        load_topk(path, n_classes=5)
    with pytest.raises(DataError, match=r"p.npz: 1 of 2 ids are not train products \(first _id 9\)"):
        load_topk(path, 10, within=np.array([1, 5, 7]), split="train")


def test_a_swapped_source_stops_the_stacker_naming_it(tmp_path):
    """oof.npz and test.npz swapped used to give a submission of 100 % fallback rows, exit 0."""
    from common.paths import WorkDir
    from common.prepare import DatasetPaths
    from common.sources import write_summary
    from common.workdata import Labels
    from ensembling.stack import StackConfig, run_stack
    from tests.conftest import make_tiny_work

    work = WorkDir(make_tiny_work(tmp_path))
    train_ids = Labels.load(work).ids
    test_ids = np.unique(np.asarray(DatasetPaths.load(work).index(work, "test").ids))
    top = lambda ids: TopK(ids, np.zeros((len(ids), 2), np.int16), np.tile(np.array([0.6, 0.4], np.float16), (len(ids), 1)))  # noqa: E731
    save_topk(work.preds("m") / "oof.npz", top(test_ids))  # swapped
    save_topk(work.preds("m") / "test.npz", top(train_ids))
    write_summary(work, "m", "model")
    with pytest.raises(DataError, match=r"preds/m/oof.npz: .* ids are not train products"):
        run_stack(work, StackConfig(rounds=5, nthread=1))
