"""Careless and hostile values (issue 30): every recipe / stage option typed and range-checked when it
is read (common/checks.py, from the fields' annotations), in one line naming the file, before anything
is written. (Image bombs and trailing bytes: tests/test_images.py.)"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Annotated

import pytest

from common.checks import at_least, check_fields, fraction
from common.cli import parse_stage
from common.errors import DataError
from common.paths import REPO
from common.recipe import load_recipe

BASE = (REPO / "solutions/dylan/configs/mini_lite0.yaml").read_text()


@pytest.mark.parametrize("line, message", [("epochs: three", "epochs: 'three' (not a whole number)"), ("epochs: 1.5", "epochs: 1.5 (not a whole number)"),
                                           ("epochs: 0", "epochs: 0 (must be >= 1)"), ("epochs: -1", "epochs: -1 (must be >= 1)"),
                                           ("batch_size: 0", "batch_size: 0 (must be >= 1)"), ("input_size: 0", "input_size: 0 (must be >= 8)"),
                                           ("topk: 0", "topk: 0 (must be >= 1)"), ("lr: -5", "lr: -5 (must be > 0)"),
                                           ("label_smoothing: 5", "label_smoothing: 5 (must be >= 0 and < 1)"), ("hflip: maybe", "hflip: 'maybe' (not true or false)")])
def test_a_recipe_value_of_the_wrong_type_or_range_is_named_with_its_file(tmp_path, line, message):
    key = line.split(":")[0]
    recipe = tmp_path / "mini_lite0.yaml"
    recipe.write_text("\n".join(x for x in BASE.splitlines() if not x.startswith(f"{key}:")) + f"\n{line}\n")
    with pytest.raises(DataError) as e:
        load_recipe(recipe, "dylan")
    assert str(e.value).startswith(f"{recipe}: ") and message in str(e.value)


def test_every_bad_value_of_a_recipe_is_named_at_once(tmp_path):
    recipe = tmp_path / "mini_lite0.yaml"
    recipe.write_text(BASE.replace("epochs: 3", "epochs: 0").replace("batch_size: 64", "batch_size: -1"))
    with pytest.raises(DataError, match=r"epochs: 0 \(must be >= 1\); batch_size: -1 \(must be >= 1\)"):
        load_recipe(recipe, "dylan")


def test_the_trainer_stops_in_one_line_and_writes_nothing(tmp_path):
    recipe = tmp_path / "mini_lite0.yaml"
    recipe.write_text(BASE.replace("epochs: 3", "epochs: -1"))
    work = tmp_path / "work"
    done = subprocess.run([sys.executable, "-m", "solutions.dylan.train", "--config", str(recipe), "--work", str(work)], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {recipe}: recipe ") and last.endswith(": epochs: -1 (must be >= 1)")
    assert not work.exists() or not any(work.rglob("*"))


@pytest.mark.parametrize("yaml_line, message", [("rounds: ten", "rounds: 'ten' (not a whole number)"), ("rounds: 0", "rounds: 0 (must be >= 1)"),
                                                ("subsample: 1.5", "subsample: 1.5 (must be >= 0 and <= 1)"), ("learning_rate: 0", "learning_rate: 0 (must be > 0)")])
def test_a_bad_stacker_value_is_named_with_its_file(tmp_path, yaml_line, message):
    from ensembling.stack.config import StackConfig

    config = tmp_path / "stack.yaml"
    config.write_text(yaml_line + "\n")
    with pytest.raises(DataError) as e:
        parse_stage(["--work", str(tmp_path / "work"), "--config", str(config)], None, StackConfig)
    assert str(e.value) == f"{config}: stack options: {message}"


def test_a_float_yaml_reads_as_a_string_is_the_number_it_spells(tmp_path):
    from ensembling.stack.config import StackConfig

    config = tmp_path / "stack.yaml"
    config.write_text("learning_rate: 1e-1\n")  # YAML 1.1: a string (no dot)
    assert parse_stage(["--work", str(tmp_path), "--config", str(config)], None, StackConfig).options.learning_rate == 0.1


@pytest.mark.parametrize("n", ["0", "1", "-2"])
def test_folds_need_at_least_two(tmp_path, n):
    from common.folds import main

    with pytest.raises(DataError, match=f"folds options: n_folds: {n} \\(must be >= 2\\)"):
        main(["--work", str(tmp_path), "--n-folds", n])


@pytest.mark.parametrize("flag, k", [("--topk", "0"), ("--topk", "-1"), ("--top", "-1")])
def test_predict_refuses_a_topk_below_one_before_reading_anything(tmp_path, flag, k):
    from ensembling.predict.__main__ import main

    with pytest.raises(DataError, match=f"predict options: topk: {k} \\(must be >= 1\\)"):
        main(["--work", str(tmp_path / "none"), "--images", "missing.jpg", flag, k])


@dataclass
class Options:
    n: Annotated[int, at_least(1)] = 1
    share: Annotated[float, fraction()] = 0.5
    names: list[str] = field(default_factory=list)
    path: str | None = None


def test_check_fields_reads_types_and_ranges_from_the_annotations():
    check_fields(Options(n=3, share=0, names=["a"], path=None))
    check_fields(Options(share=1e-3))  # an int or a float where a float is asked
    for bad, text in [(dict(n=True), "n: True (not a whole number)"), (dict(share=1.0), "share: 1.0 (must be >= 0 and < 1)"),
                      (dict(names=["a", 3]), "names: ['a', 3] (an item is not text)"), (dict(path=3), "path: 3 (not text)")]:
        with pytest.raises(DataError, match=f"^Options: {re.escape(text)}$"):
            check_fields(Options(**bad))


@pytest.mark.parametrize("name", ["../../../../x", "/tmp/elsewhere", "a/b", ".hidden"])
def test_a_recipe_name_is_one_folder_under_the_work_dir(tmp_path, name):
    """`name: ../../../../x` used to write checkpoints and predictions outside --work."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(BASE + f"name: '{name}'\nsolution: dylan\n")
    with pytest.raises(DataError, match=f"{re.escape(str(recipe))}: recipe: name: '{re.escape(name)}' \\(a name is letters"):
        load_recipe(recipe, "dylan")


@pytest.mark.parametrize("flag", ["--source", "--export-onnx"])
def test_predict_takes_a_source_name_not_a_path(tmp_path, flag):
    from ensembling.predict.__main__ import main

    with pytest.raises(DataError, match=f"predict options: {flag[2:].replace('-', '_')}: '/etc/passwd'"):
        main(["--work", str(tmp_path), "--images", "a.jpg", flag, "/etc/passwd"])


def test_the_stacker_takes_source_names_not_paths(tmp_path):
    from ensembling.stack.config import StackConfig

    with pytest.raises(DataError, match=r"stack options: sources: '\.\./x'"):
        StackConfig(sources=["dylan", "../x"])


@pytest.mark.parametrize("case", ["out-missing-folder", "out-is-a-folder", "keep-exists", "bson-is-a-folder"])
def test_predict_checks_its_outputs_and_inputs_before_any_work(tmp_path, case):
    """Each used to be a traceback after the whole prediction; now one line before anything loads
    (the work dir here does not even exist: nothing was read)."""
    from ensembling.predict.__main__ import main

    (tmp_path / "dir").mkdir()
    args, message = {"out-missing-folder": (["--images", "a.jpg", "--out", str(tmp_path / "no" / "p.csv")], "its folder .* does not exist"),
                     "out-is-a-folder": (["--images", "a.jpg", "--out", str(tmp_path / "dir")], "is a folder"),
                     "keep-exists": (["--images", "a.jpg", "--keep", str(tmp_path / "dir")], "already exists"),
                     "bson-is-a-folder": (["--bson", str(tmp_path / "dir")], "is a folder, not a BSON file")}[case]
    with pytest.raises(DataError, match=message):
        main(["--work", str(tmp_path / "no_work"), *args])


def test_predict_writes_its_csv_whole_or_not_at_all(tmp_path, monkeypatch):
    import pandas as pd

    from ensembling.predict.__main__ import write_csv

    frame = pd.DataFrame({"product": ["a"] * 1000, "rank": range(1000)})
    out = tmp_path / "p.csv"

    def full_disk(self, path, **kw):
        with open(path, "w") as f:
            f.write("product,rank\na,0\n")  # part of the rows, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_csv(frame, str(out))
    assert not out.exists() and not list(tmp_path.iterdir())  # no truncated CSV, no temporary left
    monkeypatch.undo()
    write_csv(frame, str(out))
    assert len(pd.read_csv(out)) == 1000


def test_duplicate_ids_in_a_bson_are_renamed_with_a_warning(write_bson, caplog):
    import numpy as np

    from common.images import encode_jpeg
    from ensembling.predict.products import from_bson

    good = encode_jpeg(np.full((180, 180, 3), 40, np.uint8))
    path = write_bson("dup.bson", [(7, [good], None), (3, [good], None), (7, [good, good], None)])
    assert [(p.name, len(p.images)) for p in from_bson(path)] == [("7", 1), ("3", 1), ("7#2", 2)]
    assert "_id 7 appears again" in caplog.text and "named 7#2" in caplog.text
