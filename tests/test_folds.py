"""Product folds: stratification, rare categories, given validation ids, exclusions, CLI."""
from __future__ import annotations

import numpy as np
import pytest

from common.bson_index import build_index
from common.categories import CategoryTree
from common.folds import (
    ALWAYS_TRAIN,
    FoldsOptions,
    folds_from_valid_ids,
    holdout_folds,
    main,
    read_folds,
    read_protocol,
    stratified_folds,
    stratified_holdout,
    usable_products,
)
from common.errors import DataError
from common.paths import HENG_VALID_IDS, WorkDir
from tests.conftest import solid_jpeg


def long_tail_labels(rng: np.random.Generator) -> np.ndarray:
    sizes = np.concatenate([[500, 200, 80, 40, 13], np.ones(7, int), np.full(5, 3)])
    return np.repeat(np.arange(len(sizes)), sizes)[rng.permutation(sizes.sum())]


def test_stratified_balanced_and_spreads_rare():
    labels = long_tail_labels(np.random.default_rng(0))
    folds = stratified_folds(labels, 5, seed=1)
    sizes = np.bincount(folds, minlength=5)
    assert sizes.max() - sizes.min() <= 1
    for c in np.unique(labels):
        per_fold = np.bincount(folds[labels == c], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1, f"category {c} unevenly split: {per_fold}"
    singletons = [int(folds[labels == c][0]) for c in range(5, 12)]
    assert len(set(singletons)) == 5  # 7 single-product categories cover all 5 folds


def test_stratified_seeded():
    labels = long_tail_labels(np.random.default_rng(0))
    assert (stratified_folds(labels, 4, 7) == stratified_folds(labels, 4, 7)).all()
    assert (stratified_folds(labels, 4, 7) != stratified_folds(labels, 4, 8)).any()
    with pytest.raises(ValueError):
        stratified_folds(labels, 1, 0)


def test_given_validation_ids():
    ids = np.arange(100, 200)
    folds = folds_from_valid_ids(ids, np.array([105, 150, 999]))
    assert np.flatnonzero(folds == 0).tolist() == [5, 50]
    assert (folds[folds != 0] == ALWAYS_TRAIN).all()
    with pytest.raises(DataError, match="none of the"):
        folds_from_valid_ids(ids, np.array([1, 2]))


def test_heng_list_is_50000_ids():
    ids = np.array(HENG_VALID_IDS.read_text().split(), dtype=np.int64)
    assert len(ids) == len(np.unique(ids)) == 50000


def test_usable_products_excludes_with_reasons(write_bson, category_csv):
    import bson

    good, other = 1000010653, 1000010667
    path = write_bson("t.bson", [(1, [solid_jpeg(1)], good), (2, [solid_jpeg(2)], 42), (3, [solid_jpeg(3)], other), (3, [solid_jpeg(4)], other)])
    with open(path, "ab") as f:
        f.write(bson.encode({"_id": 4, "category_id": good}))
    keep, excluded = usable_products(build_index(path, progress=False), CategoryTree.from_csv(category_csv))
    assert keep.tolist() == [True, False, True, False, False]
    assert dict(zip(excluded["_id"], excluded["reason"])) == {2: "unknown category_id", 3: "duplicate _id (first kept)", 4: "no images"}


def _prepared(tmp_path, train, test, categories):
    from common.prepare import main as prepare_main

    work = tmp_path / "work"
    prepare_main(["--work", str(work), "--train", str(train), "--test", str(test), "--categories", str(categories), "--no-progress"])
    return work


def test_cli_on_official_sample(sample_bson, category_csv, write_bson, tmp_path, capsys):
    work = _prepared(tmp_path, sample_bson, write_bson("test.bson", [(10**9, [solid_jpeg(1)], None)]), category_csv)
    main(["--work", str(work), "--n-folds", "3"])
    folds = read_folds(work / "folds.csv")
    assert len(folds) == 82 and folds["_id"].is_monotonic_increasing
    assert sorted(folds["fold"].unique()) == [0, 1, 2]
    assert "82 products" in capsys.readouterr().out
    ids_file = tmp_path / "valid.txt"
    ids_file.write_text("0\n1\n2\n")
    main(["--work", str(work), "--n-folds", "3"])
    assert "up to date" in capsys.readouterr().out  # the same options: nothing rewritten
    with pytest.raises(DataError, match="was made with"):  # other folds under models trained on these: stop
        main(["--work", str(work), "--valid-ids", str(ids_file)])
    main(["--work", str(work), "--valid-ids", str(ids_file), "--force"])
    folds = read_folds(work / "folds.csv")
    assert folds.loc[folds["fold"] == 0, "_id"].tolist() == [0, 1, 2] and (folds["fold"] != 0).sum() == 79
    assert read_protocol(WorkDir(work))["protocol"] == "holdout"


def test_holdout_protocol_is_a_stratified_fraction_without_the_50k_ids(sample_bson, category_csv, write_bson, tmp_path):
    work = _prepared(tmp_path, sample_bson, write_bson("test.bson", [(10**9, [solid_jpeg(1)], None)]), category_csv)
    folds = main(["--work", str(work), "--protocol", "holdout", "--holdout-fraction", "0.25"])
    assert sorted(folds["fold"].unique()) == [ALWAYS_TRAIN, 0]
    assert abs((folds["fold"] == 0).sum() - 82 * 0.25) <= 1
    record = read_protocol(WorkDir(work))
    assert record["protocol"] == "holdout" and "stratified 25.0%" in record["holdout"]["source"]


def test_stratified_holdout_takes_each_categorys_share():
    labels = long_tail_labels(np.random.default_rng(0))
    folds = stratified_holdout(labels, 0.05, seed=3)
    assert set(np.unique(folds)) == {ALWAYS_TRAIN, 0}
    assert abs((folds == 0).sum() - 0.05 * len(labels)) <= 1
    for c in np.unique(labels):
        n = (labels == c).sum()
        assert np.floor(n * 0.05) <= (folds[labels == c] == 0).sum() <= np.ceil(n * 0.05), c
    assert (stratified_holdout(labels, 0.05, 3) != stratified_holdout(labels, 0.05, 4)).any()
    with pytest.raises(DataError):
        stratified_holdout(labels, 1.5, 0)


def test_holdout_is_the_50k_ids_when_the_data_holds_them():
    heng = np.array(HENG_VALID_IDS.read_text().split(), dtype=np.int64)
    ids = np.sort(np.concatenate([heng, heng.max() + 1 + np.arange(1000)]))
    folds, what = holdout_folds(ids, np.zeros(len(ids), np.int64), FoldsOptions(protocol="holdout"))
    assert "50000" in what and (folds == 0).sum() == 50_000 and np.isin(ids[folds == 0], heng).all()
    folds, what = holdout_folds(ids[::2], np.zeros(len(ids[::2]), np.int64), FoldsOptions(protocol="holdout", holdout_fraction=0.1))
    assert "stratified" in what  # half the list missing: not the official train set


def test_cli_rejects_test_index(write_bson, category_csv, tmp_path):
    work = _prepared(tmp_path, write_bson("a.bson", [(1, [solid_jpeg(1)], None)]), write_bson("b.bson", [(2, [solid_jpeg(1)], None)]), category_csv)
    with pytest.raises(DataError, match="labelled"):
        main(["--work", str(work)])


def test_prepare_refuses_a_labelled_test_file_or_one_sharing_products_with_train(sample_bson, write_bson, category_csv, tmp_path):
    """prepare accepted a labelled test.bson, or train.bson given twice."""
    with pytest.raises(DataError, match=r"--test .*: 82 of 82 products carry a category_id"):
        _prepared(tmp_path / "a", sample_bson, sample_bson, category_csv)
    with pytest.raises(DataError, match=r"1 _ids are also in --train .*first _id 1\)"):
        _prepared(tmp_path / "b", sample_bson, write_bson("t.bson", [(1, [solid_jpeg(1)], None), (10**9, [solid_jpeg(2)], None)]), category_csv)


def test_prepare_warns_when_real_sized_files_differ_from_the_official_counts(sample_bson, write_bson, category_csv, tmp_path, monkeypatch, caplog):
    import common.prepare as prepare

    monkeypatch.setattr(prepare, "REAL_SIZED", 50)  # the 82-product sample stands in for a real-sized file
    _prepared(tmp_path, sample_bson, write_bson("t.bson", [(10**9, [solid_jpeg(1)], None)]), category_csv)
    assert "train: 82 products where the official Kaggle file has 7,069,896" in caplog.text
    assert "test: 1 products where the official Kaggle file has 1,768,182" in caplog.text


def test_fold_of_ids_marks_absent_products_excluded():
    import pandas as pd

    from common.folds import EXCLUDED, fold_of

    folds = pd.DataFrame({"_id": [30, 10, 20], "fold": [1, 0, ALWAYS_TRAIN]})
    assert fold_of(np.array([10, 20, 25, 30]), folds).tolist() == [0, ALWAYS_TRAIN, EXCLUDED, 1]
