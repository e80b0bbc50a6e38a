"""Dataset statistics (common/stats.py) on the official sample and on files built to known answers."""
from __future__ import annotations

import csv
import json
import struct

import cv2
import pytest

from common.bson_index import build_index
from common.categories import CategoryTree
from common.stats import FIGURES, compute_stats, main
from tests.conftest import solid_jpeg


@pytest.fixture(scope="module")
def tree(category_csv) -> CategoryTree:
    return CategoryTree.from_csv(category_csv)


@pytest.fixture(scope="module")
def sample_stats(sample_bson, tree, tmp_path_factory) -> tuple[dict, object]:
    out = tmp_path_factory.mktemp("stats")
    return compute_stats(sample_bson, tree, out, progress=False), out


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and cv2.imread(str(path)) is not None


def test_official_sample_numbers(sample_stats, sample_products, category_csv):
    stats, out = sample_stats
    assert stats["products"] == 82 and stats["images"] == 110
    assert stats["products_by_image_count"] == {"1": 67, "2": 7, "3": 3, "4": 5}
    # level-1/2 groups counted independently, straight from the CSV rows
    with open(category_csv, encoding="utf-8", newline="") as f:
        rows = {int(r["category_id"]): r for r in csv.DictReader(f)}
    ids = {p.category_id for p in sample_products}
    expected = {
        "level1": len({rows[i]["category_level1"] for i in ids}),
        "level2": len({rows[i]["category_level2"] for i in ids}),
        "level3": 36,
    }
    assert stats["categories_per_level"] == expected
    assert stats["unknown_category_ids"] == 0 and stats["skipped"]["counts"] == {}
    assert stats["unique_md5"] == 109 and stats["max_md5_repeat"] == 2 and stats["conflicting_md5"] == 0
    assert json.loads((out / "stats.json").read_text())["products"] == 82
    assert "Table 2" in (out / "stats.md").read_text()


def test_figures_are_valid_pngs(sample_stats):
    stats, out = sample_stats
    assert stats["figures"] == FIGURES
    for name in FIGURES.values():
        assert _is_png(out / name), name


def test_without_tree_level3_is_distinct_ids(sample_bson, tmp_path):
    (stats,) = main(["--bson", str(sample_bson), "--no-tree", "--out", str(tmp_path), "--no-progress"])
    assert stats["categories_per_level"] == {"level1": None, "level2": None, "level3": 36}
    assert _is_png(tmp_path / FIGURES["figure2"])


def test_file_without_labels_gives_null_category_stats(sample_products, write_bson, tree, tmp_path):
    path = write_bson("test.bson", [(p.product_id, p.images, None) for p in sample_products])
    stats = compute_stats(path, tree, tmp_path / "out", progress=False)
    assert stats["categories_per_level"] == {"level1": None, "level2": None, "level3": None}
    assert stats["products"] == 82 and stats["images"] == 110
    assert stats["unknown_category_ids"] == 0 and stats["unbalance"] is None
    assert stats["conflicting_md5"] is None and stats["unique_md5"] == 109
    assert list(stats["figures"]) == ["figure4"] and _is_png(tmp_path / "out" / FIGURES["figure4"])


def test_truncated_file_keeps_complete_products(sample_bson, tree, tmp_path):
    index = build_index(sample_bson, progress=False)
    cut = int(index.offsets[40] + index.lengths[40] // 2)  # in the middle of document 40
    path = tmp_path / "truncated.bson"
    path.write_bytes(sample_bson.read_bytes()[:cut])
    stats = compute_stats(path, tree, tmp_path / "out", progress=False)
    assert stats["products"] == 40
    assert stats["images"] == int(index.n_imgs[:40].sum())
    assert stats["skipped"]["counts"] == {"truncated_tail": 1}
    assert "offset" in stats["skipped"]["messages"][0]


def test_malformed_document_is_skipped_and_reported(sample_bson, tree, tmp_path):
    index = build_index(sample_bson, progress=False)
    # sane length and terminator, but `_id` claims a 1000-byte string: its elements do not account
    # for its length, so the scan skips it as an unreadable region and resyncs on the next document
    bad = struct.pack("<i", 14) + b"\x02_id\x00" + struct.pack("<i", 1000) + b"\x00"
    data = sample_bson.read_bytes()
    split = int(index.offsets[10])
    path = tmp_path / "malformed.bson"
    path.write_bytes(data[:split] + bad + data[split:])
    stats = compute_stats(path, tree, tmp_path / "out", progress=False)
    assert stats["products"] == 82 and stats["images"] == 110
    assert stats["skipped"]["counts"] == {"corrupt_bytes": 1}


def test_planted_duplicates_give_exact_md5_counts(write_bson, tree, tmp_path):
    cat_a, cat_b = (int(i) for i in tree.ids[:2])
    dup5, dup3 = solid_jpeg(1), solid_jpeg(2)  # planted 5 and 3 times
    products = [
        (0, [dup5, solid_jpeg(10)], cat_a),
        (1, [dup5, dup3, solid_jpeg(11)], cat_a),
        (2, [dup5, dup3], cat_a),
        (3, [dup5], cat_b),  # dup5 now carries two labels: one conflicting MD5
        (4, [dup5, dup3, solid_jpeg(12), solid_jpeg(13)], cat_a),
        (5, [], cat_b),  # no images: Table 3 gets a "0" row
    ]
    stats = compute_stats(write_bson("dups.bson", products), tree, tmp_path / "out", progress=False)
    assert stats["images"] == 12
    assert stats["unique_md5"] == 6  # dup5, dup3 and four singles
    assert stats["max_md5_repeat"] == 5
    assert stats["images_with_unique_md5"] == 4
    assert stats["md5_repeat_histogram"] == {"1": 4, "3": 1, "5": 1}
    assert stats["conflicting_md5"] == 1
    assert stats["products_by_image_count"] == {"0": 1, "1": 1, "2": 2, "3": 1, "4": 1}


def test_unknown_category_ids_are_counted(sample_products, write_bson, tree, tmp_path):
    unknown = [1, 2, 2]  # not in category_names.csv
    products = [(p.product_id, p.images, p.category_id) for p in sample_products[:10]]
    products += [(1000 + k, [solid_jpeg(k)], cat) for k, cat in enumerate(unknown)]
    stats = compute_stats(write_bson("unknown.bson", products), tree, tmp_path / "out", progress=False)
    assert stats["products"] == 13
    assert stats["unknown_category_ids"] == 3
    assert stats["unknown_category_id_examples"] == [1, 2]
    known = {p.category_id for p in sample_products[:10]}
    assert stats["categories_per_level"]["level3"] == len(known)


def test_only_unknown_category_ids_do_not_crash(write_bson, tree, tmp_path):
    stats = compute_stats(write_bson("all_unknown.bson", [(0, [solid_jpeg(0)], 7)]), tree, tmp_path / "out", progress=False)
    assert stats["unknown_category_ids"] == 1 and stats["unbalance"] is None
    assert stats["categories_per_level"] == {"level1": 0, "level2": 0, "level3": 0}
    assert list(stats["figures"]) == ["figure4"]
