"""The category tree on the official category_names.csv, and bad CSVs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from common.categories import UNKNOWN, CategoryTree
from common.errors import DataError, UnknownCategoryError


@pytest.fixture(scope="module")
def tree(category_csv):
    return CategoryTree.from_csv(category_csv)


def test_real_tree_sizes(tree):
    assert (len(tree), tree.n_level2, tree.n_level1) == (5270, 483, 49)
    assert len(set(tree.level3_names)) == 5263  # 7 level-3 names repeat under different level-2


def test_label_index_is_row_order(tree, category_csv):
    first_rows = pd.read_csv(category_csv, nrows=3)["category_id"].tolist()
    assert tree.to_index(first_rows).tolist() == [0, 1, 2]
    assert tree.to_id([0, 5269]).tolist() == [first_rows[0], int(pd.read_csv(category_csv)["category_id"].iloc[-1])]
    labels = np.arange(len(tree))
    assert (tree.to_index(tree.to_id(labels)) == labels).all()


def test_names_are_not_stripped(tree, category_csv):
    raw = pd.read_csv(category_csv, dtype=str, keep_default_na=False)["category_level3"]
    assert (tree.level3_names == raw.to_numpy(str)).all()
    assert sum(n != n.rstrip() for n in tree.level3_names) == 60  # SOURCES.txt: 60 keep trailing white space


def test_groups_are_consistent(tree):
    for label in [0, 100, 2500, 5269]:
        assert tree.level1_groups[tree.level1_of[label]] == tree.level1_names[label]
        assert tree.level2_groups[tree.level2_of[label]] == tree.level2_names[label]
    assert "LIBRAIRIE" in tree.level1_groups and "MUSIQUE" in tree.level1_groups


def test_unknown_ids(tree):
    with pytest.raises(UnknownCategoryError, match="123"):
        tree.to_index([int(tree.ids[0]), 123])
    assert tree.to_index([123, int(tree.ids[4])], strict=False).tolist() == [UNKNOWN, 4]


def test_subset_keeps_row_order_and_round_trips(tree, tmp_path):
    picked = tree.ids[[4000, 10, 2000]]
    sub = tree.subset(picked)
    assert sub.ids.tolist() == tree.ids[[10, 2000, 4000]].tolist()
    sub.to_csv(tmp_path / "c.csv")
    again = CategoryTree.from_csv(tmp_path / "c.csv")
    assert again.ids.tolist() == sub.ids.tolist() and (again.level3_names == sub.level3_names).all()


def test_full_csv_round_trips_byte_for_byte(tree, category_csv, tmp_path):
    tree.to_csv(tmp_path / "c.csv")
    assert (tmp_path / "c.csv").read_bytes() == category_csv.read_bytes()


@pytest.mark.parametrize(
    "text, problem",
    [
        ("id,level1,level2,level3\n1,a,b,c\n", "expected columns"),
        ("category_id,category_level1,category_level2\n1,a,b\n", "expected columns"),
        ("category_id,category_level1,category_level2,category_level3\nabc,a,b,c\n", "not an integer"),
        ("category_id,category_level1,category_level2,category_level3\n1,a,b,c\n1,a,b,d\n", "appears twice"),
        ("", "cannot read"),
    ],
)
def test_bad_csv_names_file_and_problem(tmp_path, text, problem):
    path = tmp_path / "cats.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=f"cats.csv.*{problem}"):
        CategoryTree.from_csv(path)
