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


@pytest.mark.parametrize("module, cls, yaml_line, message", [
    ("md5.run", "Md5Options", "min_purity: 2", "min_purity: 2 (must be >= 0 and <= 1)"),
    ("md5.run", "Md5Options", "topk: 0", "topk: 0 (must be >= 1)"),
    ("ocr.run", "OcrOptions", "max_images: 9", "max_images: 9 (must be >= 1 and <= 4)"),
    ("ocr.run", "OcrOptions", "threshold: high", "threshold: 'high' (not a number)"),
    ("ensembling.blend", "BlendOptions", "max_fallback_share: -1", "max_fallback_share: -1 (must be >= 0 and <= 1)"),
    ("ensembling.serve", "ServeOptions", "port: 70000", "port: 70000 (must be >= 0 and <= 65535)"),
    ("common.stats", "StatsOptions", "tree: maybe", "tree: 'maybe' (not true or false)")])
def test_every_stages_options_are_checked_where_they_are_read(tmp_path, module, cls, yaml_line, message):
    """Not only the recipes and the stacker: every stage's --config YAML (and flags) goes through one
    check (common.cli.build_options) before the stage runs."""
    import importlib

    options = getattr(importlib.import_module(module), cls)
    config = tmp_path / "stage.yaml"
    config.write_text(yaml_line + "\n")
    with pytest.raises(DataError) as e:
        parse_stage(["--work", str(tmp_path / "work"), "--config", str(config)], None, options)
    assert str(e.value).startswith(f"{config}: ") and str(e.value).endswith(message)


@pytest.mark.parametrize("kw, message", [(dict(n_folds=1), "--n-folds 1: k-fold needs at least 2"), (dict(nproc=-3), "nproc: -3 (must be >= -1)"),
                                         (dict(holdout_fraction=1.5), "holdout_fraction: 1.5 (must be > 0 and < 1)"),
                                         (dict(gpus_per_recipe=-1), "gpus_per_recipe: -1 (must be >= 0)")])
def test_run_options_are_checked_before_any_stage(kw, message):
    from common.pipeline import RunOptions

    with pytest.raises(DataError, match=re.escape(message)):
        RunOptions(**kw)


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


def _swap_two_rows(csv) -> None:
    lines = csv.read_text().splitlines(keepends=True)
    lines[1], lines[2] = lines[2], lines[1]
    csv.write_text("".join(lines))


@pytest.mark.parametrize("edit", ["swap", "drop"])
def test_a_category_file_changed_after_prepare_is_refused_by_later_stages(tiny_work, edit):
    """Labels are row numbers of category_names.csv: two swapped rows relabelled every model
    silently, a dropped row shifted every label after it. The work dir records the row order."""
    from common.paths import WorkDir
    from common.prepare import DatasetPaths

    paths = DatasetPaths.load(WorkDir(tiny_work))
    tree = paths.tree()
    assert paths.categories_sha256 == tree.order_sha256
    csv = tiny_work.parent / "data" / "category_names.csv"
    if edit == "swap":
        _swap_two_rows(csv)
    else:
        csv.write_text("".join(csv.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(DataError, match=f"^{re.escape(str(csv))}: its category_id rows .* not those this work dir was prepared with"):
        paths.tree()
    from common.folds import main as folds_main

    with pytest.raises(DataError, match="not those this work dir was prepared with"):
        folds_main(["--work", str(tiny_work), "--n-folds", "2", "--seed", "0", "--force"])


def test_renamed_categories_keep_the_fingerprint(tiny_work):
    from common.paths import WorkDir
    from common.prepare import DatasetPaths

    paths = DatasetPaths.load(WorkDir(tiny_work))
    before = paths.tree()
    csv = tiny_work.parent / "data" / "category_names.csv"
    renamed = csv.read_text().replace(before.level3_names[0], "a better name", 1)
    csv.write_text(renamed.replace("\n", "\r\n"))  # a name fixed, re-saved on Windows: the labels are the same
    after = paths.tree()
    assert after.level3_names[0] == "a better name" and list(after.ids) == list(before.ids)


@pytest.mark.parametrize("content", ["{\"train\": \"a\", \"te", "[1, 2]", "{\"train\": \"a\"}", "\xff\xfe"])
def test_a_broken_dataset_record_is_one_line(tmp_path, content):
    from common.paths import WorkDir
    from common.prepare import DatasetPaths

    (tmp_path / "dataset.json").write_bytes(content.encode("latin-1"))
    with pytest.raises(DataError, match=f"^{re.escape(str(tmp_path / 'dataset.json'))}: (not a readable JSON record|not the dataset record common.prepare writes|a JSON list where a record)"):
        DatasetPaths.load(WorkDir(tmp_path))


def _cut(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("rel", ["index/train.json", "folds.json", "dataset.json"])
def test_a_work_dir_record_cut_short_is_one_line_naming_it(tiny_work, rel):
    """A full disk or a killed copy used to give json's traceback in whichever stage read the file next."""
    from common.folds import read_protocol
    from common.paths import WorkDir
    from common.prepare import DatasetPaths

    work = WorkDir(tiny_work)
    _cut(tiny_work / rel)
    read = {"index/train.json": lambda: DatasetPaths.load(work).index(work, "train"), "folds.json": lambda: read_protocol(work),
            "dataset.json": lambda: DatasetPaths.load(work)}[rel]
    with pytest.raises(DataError, match=f"^{re.escape(str(tiny_work / rel))}: not a readable JSON record .*: (rebuild|rerun)"):
        read()


def test_an_index_record_cut_short_is_rebuilt_by_prepare(tiny_work, caplog):
    from common.bson_index import get_index, load_index

    data = tiny_work.parent / "data" / "train.bson"
    before = load_index(tiny_work / "index" / "train")
    _cut(tiny_work / "index" / "train.json")
    again = get_index(data, tiny_work / "index" / "train", progress=False)
    assert "unreadable index record: the index is built again" in caplog.text
    assert list(again.ids) == list(before.ids)


def test_a_stacker_model_cut_short_is_one_line(tmp_path):
    from ensembling.stack.booster import load_model

    model = tmp_path / "model.ubj"
    model.write_bytes(b"{L\x00\x00\x00\x00\x00\x00\x00\x05learn")
    with pytest.raises(DataError, match=f"^{re.escape(str(model))}: not a model xgboost can load .*rerun the stack stage"):
        load_model(str(model), 10)


def _sideways_jpeg(orientation: int) -> tuple[bytes, "object"]:
    """A 90x180 (wide) photo stored with an EXIF orientation tag, and PIL's upright view of it (the reference)."""
    import io

    import numpy as np
    from PIL import Image, ImageOps

    pixels = np.full((90, 180, 3), 255, np.uint8)
    pixels[:30, :60] = (220, 30, 30)  # a red corner: where it lands tells the turn
    img = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    data = buf.getvalue()
    return data, np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))


def test_the_data_path_ignores_exif_orientation_as_torchvision_does():
    """cv2.IMREAD_COLOR turned a tagged image upright, torchvision's decode_jpeg (the device path) does
    not: the two decode paths saw different pixels. Both now see the image as stored."""
    from torchvision.io import ImageReadMode, decode_jpeg as tv_decode
    import torch

    from common.images import decode_jpeg

    data, _ = _sideways_jpeg(6)
    ours = decode_jpeg(data, "tagged.jpg")
    theirs = tv_decode(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB).permute(1, 2, 0).numpy()
    assert ours.shape == theirs.shape == (90, 180, 3)
    assert abs(ours.astype(int) - theirs).max() <= 8  # the same pixels up to the two libjpeg builds' IDCT


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_new_products_photo_is_turned_upright_once(orientation):
    """A phone's photo comes tagged sideways: predict turns it upright when it comes in (as a viewer
    shows it) and re-encodes it, so the models see it upright whatever the decode path."""
    import numpy as np

    from common.images import TILE, decode_jpeg, resize
    from ensembling.predict.products import _square_on_white, as_data_image

    data, upright = _sideways_jpeg(orientation)
    out = decode_jpeg(as_data_image(data, "photo.jpg"))
    want = resize(_square_on_white(np.ascontiguousarray(upright)), TILE)
    assert out.shape == (TILE, TILE, 3) and abs(out.astype(int) - want).mean() < 3


def test_hidden_and_nested_folders_are_reported_not_dropped_silently(tmp_path, caplog):
    import numpy as np

    from common.images import encode_jpeg
    from ensembling.predict.products import from_folder

    good = encode_jpeg(np.full((180, 180, 3), 90, np.uint8))
    for rel in ["p1/a.jpg", ".hidden_product/a.jpg", "p1/more/b.jpg", "p1/.DS_Store", "p1/._a.jpg"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(good)
    products = from_folder(tmp_path)
    assert [(p.name, len(p.images)) for p in products] == [("p1", 1)]
    assert f"{tmp_path / '.hidden_product'}: a hidden folder, skipped" in caplog.text
    assert f"{tmp_path / 'p1' / 'more'}: a folder inside product p1, skipped" in caplog.text
    assert f"{tmp_path / 'p1'}: 2 hidden files skipped (.DS_Store, ._a.jpg)" in caplog.text



def test_the_signal_handlers_come_back_after_the_block():
    import signal

    from common.cli import exit_on_signals

    before = signal.getsignal(signal.SIGTERM)
    with exit_on_signals():
        assert signal.getsignal(signal.SIGTERM) is not before
        with pytest.raises(SystemExit) as e:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs at the next bytecode
    assert e.value.code == 128 + signal.SIGTERM and signal.getsignal(signal.SIGTERM) is before
