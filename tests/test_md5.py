"""The MD5 dictionary: honest OOF look-ups, placeholders ignored, the override, valid outputs."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from common.categories import CategoryTree
from common.errors import DataError
from common.paths import CATEGORY_NAMES_CSV, WorkDir
from common.predictions import load_topk, save_topk, topk_from_dense
from common.prepare import main as prepare_main
from md5.dictionary import Dictionary, override
from md5.hashing import digest_keys, group_ids, hashes_path
from md5.run import Md5Options, run_md5
from tests.conftest import TINY_CATEGORIES, solid_jpeg

A, B, C, D, E, P = (solid_jpeg(v) for v in (10, 40, 70, 100, 130, 250))  # P: the "no photo" placeholder

# _id: (images, label index, fold)
TRAIN = {
    1: ([A], 0, 0), 2: ([A], 0, 0),  # partners in the same fold: no vote for each other
    3: ([B], 1, 0), 4: ([B], 1, 1),  # partners in different folds: each votes for the other
    5: ([C, C], 2, 1),  # alone (twice the same picture): never votes for itself
    12: ([D], 3, -1), 13: ([D], 3, 1),  # an always-train partner votes for fold 1's product
    14: ([E], 0, 2), 15: ([E], 1, 0), 16: ([E], 0, 1),  # a conflicting hash
    # the placeholder over 5 labels, still 5 without any one fold (the OOF look-up decides per fold)
    **{20 + k: ([P, solid_jpeg(150 + k)], k % 5, k % 3) for k in range(15)},
}
TEST = {101: [B], 102: [P], 103: [E], 104: [solid_jpeg(200)], 105: [A, C]}


def prepare_md5_work(tmp_path, write_bson, test: list[tuple[int, list[bytes]]], test_labels: list[int] | None = None):
    """A prepared work dir over TRAIN (folds as written) and the given test documents, in order."""
    tree = CategoryTree.from_csv(CATEGORY_NAMES_CSV).subset(TINY_CATEGORIES)
    data = tmp_path / "data"
    data.mkdir()
    tree.to_csv(data / "category_names.csv")
    train = write_bson("train.bson", [(i, imgs, int(tree.ids[lab])) for i, (imgs, lab, _) in sorted(TRAIN.items())])
    test_bson = write_bson("test.bson", [(i, imgs, None) for i, imgs in test])
    labels = []
    if test_labels is not None:
        pd.DataFrame({"_id": [i for i, _ in test], "category_id": tree.ids[test_labels]}).to_csv(data / "test_labels.csv", index=False)
        labels = ["--test-labels", str(data / "test_labels.csv")]
    work = tmp_path / "work"
    prepare_main(["--train", str(train), "--test", str(test_bson), "--categories", str(data / "category_names.csv"), *labels, "--work", str(work)])
    pd.DataFrame({"_id": sorted(TRAIN), "fold": [TRAIN[i][2] for i in sorted(TRAIN)]}).to_csv(work / "folds.csv", index=False)
    return work


@pytest.fixture
def md5_work(tmp_path, write_bson):
    """A prepared work dir over the products above, folds as written."""
    return prepare_md5_work(tmp_path, write_bson, sorted(TEST.items()), [1, 0, 0, 2, 2])


def row_of(preds, pid: int) -> dict[int, float] | None:
    """{label: probability} of one product, None when the source has no row for it."""
    hit = np.flatnonzero(preds.ids == pid)
    if not len(hit):
        return None
    labels, probs = preds.labels[hit[0]], preds.probs[hit[0]].astype(np.float32)
    return {int(lab): float(p) for lab, p in zip(labels, probs) if lab >= 0}


def test_oof_votes_are_honest_and_placeholders_ignored(md5_work):
    summary = run_md5(WorkDir(md5_work), Md5Options(workers=1, override_base=[]), progress=False)
    oof = load_topk(md5_work / "preds" / "md5" / "oof.npz")
    assert row_of(oof, 1) is None and row_of(oof, 2) is None  # the only partner is in the same fold
    assert row_of(oof, 3) == {1: 1.0} and row_of(oof, 4) == {1: 1.0}  # a partner in another fold votes
    assert row_of(oof, 5) is None  # never a vote from itself
    assert row_of(oof, 13) == {3: 1.0} and row_of(oof, 12) is None  # fold -1 votes, is never queried
    for pid in range(20, 35):
        assert row_of(oof, pid) is None  # the placeholder is their only shared picture
    # 14 (fold 2) sees 15 (label 1) and 16 (label 0): purity 1/2, weight 0.5**2, split evenly
    assert row_of(oof, 14) == pytest.approx({0: 0.125, 1: 0.125}, abs=1e-3)
    assert set(oof.ids.tolist()) == {3, 4, 13, 14, 15, 16}
    d = summary["dictionary"]
    assert d["ignored_hashes"] == 1 and d["most_shared_ignored_hashes"][0]["train_products"] == 15
    assert d["most_shared_ignored_hashes"][0]["distinct_labels"] == 5
    assert d["hashes_with_conflicting_labels"] == 2  # E and the placeholder
    assert row_of(oof, 15) == {0: 1.0}  # 15 (fold 0, label 1) sees only 14 and 16, both label 0
    # the override applies where one label remains: 3, 4, 13 right, 15 wrong
    assert summary["oof"]["override_products"] == 4 and summary["oof"]["override_accuracy_on_unique"] == 0.75


def test_test_votes_override_and_outputs(md5_work):
    tree = CategoryTree.from_csv(md5_work.parent / "data" / "category_names.csv")
    base_ids = np.array(sorted(TEST))
    dense = np.zeros((len(base_ids), len(tree)), np.float32)
    dense[:, 4] = 0.9
    dense[:, 2] = 0.1
    save_topk(md5_work / "preds" / "base" / "test.npz", topk_from_dense(base_ids, dense, 3))
    oof_ids = np.array(sorted(i for i, v in TRAIN.items() if v[2] >= 0))
    save_topk(md5_work / "preds" / "base" / "oof.npz", topk_from_dense(oof_ids, np.tile(dense[:1], (len(oof_ids), 1)), 3))
    summary = run_md5(WorkDir(md5_work), Md5Options(workers=1, override_base=["base"], write_submissions=True), progress=False)
    test = load_topk(md5_work / "preds" / "md5" / "test.npz")
    assert row_of(test, 101) == {1: 1.0}
    assert row_of(test, 102) is None and row_of(test, 104) is None  # only the placeholder / nothing known
    w = (2 / 3) ** 2  # E: labels 0, 1, 0 -> purity 2/3
    assert row_of(test, 103) == pytest.approx({0: w * 2 / 3, 1: w / 3}, abs=1e-3)
    assert row_of(test, 105) == pytest.approx({0: 0.5, 2: 0.5}, abs=1e-3)  # two pure hashes, two labels
    t = summary["test"]
    assert t["share_with_any_match"] == pytest.approx(4 / 5) and t["share_with_usable_match"] == pytest.approx(3 / 5)
    assert t["override_products"] == 1 and t["override_accuracy_on_unique"] == 1.0
    o = summary["override"]["base"]
    assert o["test_changed"] == 1 and o["test_accuracy"] == 0.0 and o["test_accuracy_with_override"] == pytest.approx(1 / 5)
    sub = pd.read_csv(o["submission"])
    assert sub.set_index("_id").loc[101, "category_id"] == tree.ids[1] and len(sub) == len(TEST)
    # per-image hashes are saved for later stages and reused on a rerun
    hashes = np.load(hashes_path(WorkDir(md5_work), "train"))
    assert len(hashes) == sum(len(v[0]) for v in TRAIN.values())
    again = run_md5(WorkDir(md5_work), Md5Options(workers=1, override_base=[]), progress=False)
    assert again["hashing"]["train"]["reused"] and json.loads((md5_work / "preds" / "md5" / "summary.json").read_text())["source"] == "md5"


def test_weights_ignore_placeholder_like_hashes():
    # hash 0: pure (3 x label 0); 1: 2/3 pure; 2: six labels once each; 3: nobody
    h = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2])
    lab = np.array([0, 0, 0, 0, 0, 1, 0, 1, 2, 3, 4, 5])
    d = Dictionary.build(h, lab, 4, 6)
    w = d.weights(Md5Options(alpha=2.0, max_labels=5))
    assert w == pytest.approx([1.0, 4 / 9, 0.0, 0.0])
    assert d.weights(Md5Options(alpha=1.0, max_labels=10))[2] == pytest.approx(1 / 6)
    assert d.weights(Md5Options(alpha=1.0, max_labels=10, min_purity=0.5))[2] == 0.0


def test_override_replaces_the_prediction():
    dense = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]], np.float32)
    base = topk_from_dense(np.array([5, 9]), dense, 3)
    out = override(base, np.array([9, 77]), np.array([2, 0]))  # 77: not in the base, ignored
    assert out.top1.tolist() == [0, 2] and out.labels[1].tolist() == [2, -1, -1] and float(out.probs[1, 0]) == 1.0
    assert base.top1.tolist() == [0, 1]  # the base is not modified


def test_group_ids_use_all_16_bytes():
    md5 = np.array([b"\x01" * 15 + b"\x00", b"\x01" * 15 + b"\x02", b"\x01" * 15 + b"\x00"], "S16")
    ids, n = group_ids(digest_keys(md5))
    assert n == 2 and ids[0] == ids[2] != ids[1]


def test_stage_on_the_tiny_work_dir(tiny_work):
    """No shared pictures there: the stage still hashes everything and writes valid, empty sources."""
    summary = run_md5(WorkDir(tiny_work), Md5Options(workers=2), progress=False)
    oof, test = load_topk(tiny_work / "preds" / "md5" / "oof.npz"), load_topk(tiny_work / "preds" / "md5" / "test.npz")
    assert len(oof) == len(test) == 0 and summary["test"]["share_with_any_match"] == 0.0
    assert summary["dictionary"]["train_images"] == len(np.load(hashes_path(WorkDir(tiny_work), "train")))
    assert summary["override"] == {}  # no solution blend in the tiny work dir


def test_entries_without_picture_bytes_never_link_products(tmp_path, write_bson):
    """`imgs` entries without bytes all have the MD5 of b'': they used to be one giant "duplicate"
    group, so an empty test entry took the labels of every empty train entry. Now they are not
    hashed, and the stage names the products that carry them."""
    tree = CategoryTree.from_csv(CATEGORY_NAMES_CSV).subset(TINY_CATEGORIES)
    data = tmp_path / "data"
    data.mkdir()
    tree.to_csv(data / "category_names.csv")
    train = write_bson("train.bson", [(1, [b"", A], int(tree.ids[0])), (2, [b""], int(tree.ids[1])), (3, [A], int(tree.ids[0])),
                                      (4, [B], int(tree.ids[1]))])
    test = write_bson("test.bson", [(101, [b""], None), (102, [B], None)])
    work = tmp_path / "work"
    prepare_main(["--train", str(train), "--test", str(test), "--categories", str(data / "category_names.csv"), "--work", str(work)])
    pd.DataFrame({"_id": [1, 2, 3, 4], "fold": [0, 1, 1, 0]}).to_csv(work / "folds.csv", index=False)
    summary = run_md5(WorkDir(work), Md5Options(workers=1), progress=False)
    test_preds = load_topk(work / "preds" / "md5" / "test.npz")
    assert row_of(test_preds, 101) is None and row_of(test_preds, 102) == {1: 1.0}
    assert row_of(load_topk(work / "preds" / "md5" / "oof.npz"), 2) is None  # 2's empty entry met 1's: no vote either way
    assert summary["hashing"]["train"]["skipped"]["first_ids"] == {"unhashed_image": [1, 2]}
    assert summary["hashing"]["test"]["skipped"]["counts"] == {"unhashed_image": 1}
    assert len(np.load(hashes_path(WorkDir(work), "train"))) == 3


def test_two_shards_merge_into_exactly_the_single_machine_result(tiny_work, tmp_path):
    """Machines 0/2 and 1/2 hash their share (and stop); the plain run, with both shards copied
    into md5/shards/, hashes nothing and gives byte-for-byte the single-machine hashes and votes.
    A shard made from another index is never merged."""
    import shutil

    single = tmp_path / "single"
    shutil.copytree(tiny_work, single)
    run_md5(WorkDir(single), Md5Options(workers=1), progress=False)
    for i in range(2):
        out = run_md5(WorkDir(tiny_work), Md5Options(workers=1, shard=f"{i}/2"), progress=False)
        assert out["shard"] == f"{i}/2" and not (tiny_work / "preds" / "md5").exists() and out["hashing"]["train"]["images"] > 0
    merged = run_md5(WorkDir(tiny_work), Md5Options(workers=1), progress=False)
    assert merged["hashing"]["train"]["merged_shards"] == merged["hashing"]["test"]["merged_shards"] == 2
    for split in ("train", "test"):
        assert np.array_equal(np.load(hashes_path(WorkDir(tiny_work), split)), np.load(hashes_path(WorkDir(single), split)))
    for split in ("oof", "test"):
        a, b = load_topk(tiny_work / "preds" / "md5" / f"{split}.npz"), load_topk(single / "preds" / "md5" / f"{split}.npz")
        assert np.array_equal(a.ids, b.ids) and np.array_equal(a.labels, b.labels) and np.array_equal(a.probs, b.probs)

    meta = tiny_work / "md5" / "shards" / "train_1of2.json"  # as if shard 1 had been made from another index
    meta.write_text(meta.read_text().replace('"fingerprint": "', '"fingerprint": "other-'))
    hashes_path(WorkDir(tiny_work), "train").unlink()
    again = run_md5(WorkDir(tiny_work), Md5Options(workers=1), progress=False)
    assert "merged_shards" not in again["hashing"]["train"] and again["hashing"]["train"]["images"] == merged["hashing"]["train"]["images"]


def test_a_bad_shard_is_one_clear_line():
    from common.errors import DataError

    with pytest.raises(DataError, match="need 0 <= i < n"):
        Md5Options(shard="2/2")


def test_the_product_level_rule_matches_whole_sets_of_hashes():
    """The 3rd place's rule: a product takes a label only when its whole set of image hashes is a
    train product's set, all of one label; image by image, a shared picture is enough."""
    from md5.dictionary import product_keys, product_rule

    # train rows: 0 {5, 7}, 1 {5}, 2 {5, 7}, 3 no hashed image; test rows: 0 {7, 5}, 1 {7}
    train_q, train_h = np.array([0, 0, 1, 2, 2]), np.array([5, 7, 5, 5, 7])
    test_q, test_h = np.array([0, 0, 1]), np.array([5, 7, 7])
    train_key, test_key = product_keys([(train_q, train_h, 4), (test_q, test_h, 2)])
    assert train_key[0] == train_key[2] == test_key[0] and len({train_key[0], train_key[1], test_key[1]}) == 3
    assert train_key[3] == -1
    labels = np.array([3, 1, 3, -1])
    has = train_key >= 0
    d = Dictionary.build(train_key[has], labels[has], int(max(train_key.max(), test_key.max())) + 1, 6)
    rule = product_rule(d, test_key, np.array([101, 102]))
    assert rule.applies.tolist() == [True, False] and rule.label.tolist() == [3, -1]  # {7} alone is no train product's set
    labels[2] = 4  # the set now carries two labels: no override
    d2 = Dictionary.build(train_key[has], labels[has], d.counts.shape[0], 6)
    assert not product_rule(d2, test_key, np.array([101, 102])).applies.any()


def test_both_override_rules_are_measured_and_one_is_applied(md5_work):
    tree = CategoryTree.from_csv(md5_work.parent / "data" / "category_names.csv")
    ids = np.array(sorted(TEST))
    dense = np.zeros((len(ids), len(tree)), np.float32)
    dense[:, 4] = 1.0
    save_topk(md5_work / "preds" / "base" / "test.npz", topk_from_dense(ids, dense, 3))
    oof_ids = np.array(sorted(i for i, v in TRAIN.items() if v[2] >= 0))
    save_topk(md5_work / "preds" / "base" / "oof.npz", topk_from_dense(oof_ids, np.tile(dense[:1], (len(oof_ids), 1)), 3))
    summary = run_md5(WorkDir(md5_work), Md5Options(workers=1, override_base=["base"], override_rule="product"), progress=False)
    # the products whose whole set matches: 3, 4, 13 (right) and 15 (wrong), as image by image here
    assert summary["rules"]["product"]["oof"]["override_products"] == 4 and summary["rules"]["product"]["oof"]["override_accuracy"] == 0.75
    assert summary["rules"]["image"]["test"]["override_products"] == summary["rules"]["product"]["test"]["override_products"] == 1
    assert summary["override"]["base"]["rule"] == "product" and set(summary["override_by_rule"]) == {"image", "product"}
    with pytest.raises(DataError, match="override_rule"):
        Md5Options(override_rule="hash")


# ---------------------------------------------------------------------------------------------
# the saved dictionary (md5/lookup.py): new products voted without rebuilding it


def read_test_products(work):
    """Every document of the work dir's test BSON, in file order, as the predictor hands them over."""
    from common.bson_reader import MemoryReader, iter_products
    from common.prepare import DatasetPaths

    return MemoryReader(list(iter_products(DatasetPaths.load(WorkDir(work)).test)))


def assert_same_topk(a, b):
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.labels, b.labels)
    assert a.probs.dtype == b.probs.dtype and np.array_equal(a.probs.view(np.uint16), b.probs.view(np.uint16))  # bit for bit


@pytest.mark.parametrize("options, matched", [({}, 3), ({"alpha": 1.0, "max_labels": 6, "topk": 3}, 4)])  # 4: the placeholder votes
def test_the_saved_dictionary_votes_exactly_as_the_stage(md5_work, options, matched):
    """Loaded once, the dictionary gives the run's test products exactly preds/md5/test.npz, under
    the options the run recorded; it holds the train images' hashes only (a test-only hash votes
    nothing either way)."""
    from md5.lookup import dictionary_path, load_dictionary

    summary = run_md5(WorkDir(md5_work), Md5Options(workers=1, override_base=[], **options), progress=False)
    saved = load_dictionary(WorkDir(md5_work), summary)
    stage = load_topk(md5_work / "preds" / "md5" / "test.npz")
    assert len(stage) == matched and stage.k == min(options.get("topk", 20), saved.meta["classes"])
    assert_same_topk(saved.predict(read_test_products(md5_work)), stage)
    d = summary["dictionary"]
    assert saved.meta["hashes"] == len(saved.keys) == d["distinct_train_hashes"] < d["distinct_hashes"]
    assert summary["saved_dictionary"]["path"] == str(dictionary_path(WorkDir(md5_work)))
    order = np.lexsort((saved.keys[:, 1], saved.keys[:, 0]))
    assert np.array_equal(order, np.arange(len(order)))  # sorted, as the look-up needs


def test_repeated_ids_and_test_only_pictures_vote_as_in_the_stage(tmp_path, write_bson):
    """A repeated test _id is voted for from its first document (which here matches nothing, or a
    different picture than the repeat); a picture only test products share links nothing."""
    from md5.lookup import load_dictionary

    shared, unseen = solid_jpeg(222), solid_jpeg(233)
    test = [(101, [B]), (106, [unseen]), (107, [shared, E]), (108, [shared]), (106, [A]), (101, [A]), (109, [b"", D])]
    work = prepare_md5_work(tmp_path, write_bson, test)
    summary = run_md5(WorkDir(work), Md5Options(workers=1, override_base=[]), progress=False)
    stage = load_topk(work / "preds" / "md5" / "test.npz")
    assert stage.ids.tolist() == [101, 107, 109]  # 106's first document matches nothing; 108 shares a picture with test only
    assert row_of(stage, 101) == {1: 1.0} and row_of(stage, 109) == {3: 1.0}  # 101 from B (its first document), not A
    assert_same_topk(load_dictionary(WorkDir(work), summary).predict(read_test_products(work)), stage)


def test_a_new_product_with_a_train_picture_takes_its_label(md5_work, monkeypatch):
    """Through the registry's loader: new products are hashed and looked up, never a dictionary
    rebuilt, nor its tables recomputed per call; an unseen picture (or the placeholder) gives no row."""
    import time

    from common.bson_reader import MemoryReader, Product
    from common.registry import side_sources
    from md5 import lookup

    summary = run_md5(WorkDir(md5_work), Md5Options(workers=1, override_base=[]), progress=False)
    loaded = side_sources()["md5"].load(WorkDir(md5_work), summary)
    assert isinstance(loaded, lookup.SavedDictionary)

    def rebuilt(*args, **kwargs):
        raise AssertionError("predict rebuilt the dictionary or its tables")

    monkeypatch.setattr(Dictionary, "tables", rebuilt)
    monkeypatch.setattr(Dictionary, "build", rebuilt)
    monkeypatch.setattr("md5.run.run_md5", rebuilt)
    reader = MemoryReader([Product(900, [B]), Product(901, [solid_jpeg(222)]), Product(902, [b"", D]), Product(903, [P])])
    preds = loaded.predict(reader, {})
    assert preds.ids.tolist() == [900, 902]
    assert row_of(preds, 900) == {1: 1.0} and row_of(preds, 902) == {3: 1.0}  # B: products 3 and 4; D: 12 and 13
    w = (2 / 3) ** 2  # E: labels 0, 1, 0 (as the stage's test product 103)
    assert row_of(loaded.predict(MemoryReader([Product(5, [E, solid_jpeg(1)])])), 5) == pytest.approx({0: w * 2 / 3, 1: w / 3}, abs=1e-3)
    assert len(loaded.predict(MemoryReader([Product(7, [solid_jpeg(5)])]))) == 0
    one = MemoryReader([Product(900, [B])])
    start = time.perf_counter()
    for _ in range(20):
        loaded.predict(one)
    assert (time.perf_counter() - start) / 20 < 0.05  # milliseconds a call (generous for a loaded CI box)


def test_the_look_up_uses_all_16_bytes_of_a_digest():
    """Keys sharing their first 8 bytes are told apart by the last 8; a digest no train image has is -1."""
    from md5.lookup import SavedDictionary

    def digests(pairs):
        return np.ascontiguousarray(np.array(pairs, "<u8")).view("S16").ravel()

    saved = SavedDictionary(digest_keys(digests([[1, 5], [1, 7], [2, 0], [4, 9]])), None, Md5Options(), {})
    assert saved.hash_ids(digests([[1, 7], [1, 6], [2, 1], [3, 0], [2, 0], [1, 5], [4, 0], [9, 9]])).tolist() == [1, -1, -1, -1, 2, 0, -1, -1]
    assert saved.hash_ids(digests(np.zeros((0, 2)))).tolist() == []


def test_a_missing_or_stale_dictionary_is_one_clear_line(md5_work):
    from md5.lookup import dictionary_path, load_dictionary

    work = WorkDir(md5_work)
    path = dictionary_path(work)
    with pytest.raises(DataError, match=r"dictionary\.npz: missing.*md5\.run --work"):
        load_dictionary(work)  # a work dir made before the stage saved it
    summary = run_md5(work, Md5Options(workers=1, override_base=[]), progress=False)
    load_dictionary(work, summary)
    with pytest.raises(DataError, match=r"dictionary\.npz: stale \(its options \['alpha'\]"):
        load_dictionary(work, {**summary, "options": {**summary["options"], "alpha": 1.0}})
    meta = work.index("train").with_suffix(".json")
    meta.write_text(meta.read_text().replace('"rows_sha256": "', '"rows_sha256": "other-'))  # the train index changed
    with pytest.raises(DataError, match=r"dictionary\.npz: stale \(made from another train index.*--only md5"):
        load_dictionary(work, summary)
    path.write_bytes(path.read_bytes()[:100])  # cut short
    with pytest.raises(DataError, match=r"dictionary\.npz: unreadable"):
        load_dictionary(work, summary)
    assert str(path) in str(pytest.raises(DataError, load_dictionary, work).value)
