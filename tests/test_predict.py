"""Classifying new products with a trained work dir (ensembling.predict): the same answers as the
run's own test predictions, bad input named, ONNX equal to torch."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from common.bson_reader import iter_products
from common.errors import DataError
from common.images import TILE, decode_jpeg, encode_jpeg, resize
from common.paths import TRAIN_EXAMPLE_BSON, WorkDir
from common.predictions import load_topk
from common.sources import list_sources
from ensembling.predict.products import as_data_image, from_folder, from_objects, readable

CSV_COLUMNS = ["product", "rank", "category_id", "score", "category_level1", "category_level2", "category_level3"]


def _test_products_as_folder(work: Path, folder: Path) -> list:
    """Every test product of the run as a subfolder named by its _id, its images as files in order."""
    test_bson = json.loads((work / "dataset.json").read_text())["test"]
    products = list(iter_products(test_bson))
    for p in products:
        (folder / str(p.product_id)).mkdir(parents=True)
        for k, jpeg in enumerate(p.images):
            (folder / str(p.product_id) / f"{k:02d}.jpg").write_bytes(jpeg)
    return products


def test_a_folder_of_test_products_gets_the_runs_own_top1_from_the_stack_and_every_blend(tiny_run, tmp_path):
    """Issue 28's Done-when: the loaded stack (and every blend, model and side source it is made
    from, loaded once and run in memory) gives every test product, as a new product, the top-1 of
    the run's own stack submission; `--keep` writes each source's predictions of them."""
    from ensembling.predict.__main__ import main

    work, _ = tiny_run
    products = _test_products_as_folder(work, tmp_path / "new")
    out, keep = tmp_path / "pred.csv", tmp_path / "kept"
    main(["--work", str(work), "--folder", str(tmp_path / "new"), "--topk", "3", "--out", str(out), "--keep", str(keep)])
    frame = pd.read_csv(out)
    assert list(frame.columns) == CSV_COLUMNS and (frame.groupby("product").size() == 3).all()
    assert sorted(frame["product"].unique()) == sorted(p.product_id for p in products if p.images)
    w = WorkDir(work)
    ids = pd.read_csv(keep / "ids.csv")
    names = dict(zip(ids["_id"], ids["product"].astype(int)))  # the new _id each product got -> its _id in the run
    blends = [s.name for s in list_sources(w, ["solution blend", "team blend"])]
    assert {"dylan", "bestfitting", "convoluted"} <= set(blends)
    for source in ["stack", *blends, "md5", "ocr", *(s.name for s in list_sources(w, ["model"]))]:
        theirs, ours = load_topk(w.preds(source) / "test.npz"), load_topk(keep / "preds" / source / "test.npz")
        mine = dict(zip((names[i] for i in ours.ids), ours.top1))
        assert mine == dict(zip(theirs.ids.tolist(), theirs.top1)), source  # every product, same top-1 (side sources: the same products)
    top1 = frame[frame["rank"] == 1].set_index("product")["category_id"]
    submission = pd.read_csv(w.submissions / "stack.csv.gz").set_index("_id")["category_id"]
    predicted = top1.index.intersection(submission.index)
    assert len(predicted) == len(top1) and (top1.loc[predicted] == submission.loc[predicted]).all()


def test_the_api_takes_image_bytes_and_paths_and_reports_a_product_without_a_readable_image(tiny_run, tmp_path, caplog):
    from ensembling.predict import Predictor

    work, _ = tiny_run
    products = _test_products_as_folder(work, tmp_path / "new")[:3]
    first = tmp_path / "new" / str(products[0].product_id)
    given = {"from paths": sorted(first.iterdir()), "from bytes": products[1].images, "broken": [b"not an image", products[2].images[0][:50]]}
    frame = Predictor.from_work(work, "dylan").predict(given, top=2)
    assert set(frame["product"]) == {"from paths", "from bytes"} and frame.attrs["unpredicted"] == ["broken"]
    dylan = load_topk(WorkDir(work).preds("dylan") / "test.npz")
    rows, _ = dylan.lookup(np.array([products[0].product_id, products[1].product_id]))
    tree = pd.read_csv(json.loads((work / "dataset.json").read_text())["categories"])
    got = frame[frame["rank"] == 1].set_index("product")["category_id"]
    assert [got["from paths"], got["from bytes"]] == tree["category_id"].to_numpy()[dylan.top1[rows]].tolist()
    assert "product broken: no readable image" in caplog.text and "JPEG without its end marker" in caplog.text


def test_a_work_dir_missing_a_source_names_the_stage_to_run(tiny_run, tmp_path):
    from ensembling.predict import Predictor

    work, _ = tiny_run
    with pytest.raises(DataError, match=r"preds/nothing_here: no such source in the trained work dir \(it has: bestfitting, "):
        Predictor(work, "nothing_here")
    copy = tmp_path / "copy"
    shutil.copytree(work, copy, ignore=shutil.ignore_patterns("*.pt", "features", "mini", "md5", "ocr"))
    shutil.rmtree(copy / "preds" / "dylan_mini_lite0")  # the stack needs it (and dylan's blend)
    with pytest.raises(DataError, match=r"preds/dylan_mini_lite0: not in the trained work dir: run ./run_all.sh --only dylan"):
        Predictor(copy)
    partial = tmp_path / "partial"
    for name in ("dataset.json", "folds.csv", "folds.json"):
        (partial).mkdir(exist_ok=True)
        (partial / name).write_bytes((work / name).read_bytes())
    with pytest.raises(DataError, match="no trained source"):
        Predictor(partial)


def test_images_are_brought_to_the_competitions_form():
    real = next(iter_products(TRAIN_EXAMPLE_BSON)).images[0]
    assert as_data_image(real, "real") == real  # a 180x180 JPEG passes byte for byte (MD5 duplicates still match)
    rgba = np.zeros((90, 45, 4), np.uint8)
    rgba[:, :, 2], rgba[:45, :, 3] = 200, 255  # red where opaque, transparent below
    ok, png = cv2.imencode(".png", rgba)
    out = decode_jpeg(as_data_image(png.tobytes(), "rgba.png"))
    assert out.shape == (TILE, TILE, 3)
    assert (out[5, 90] == [200, 0, 0]).all() and (out[170, 90] == 255).all() and (out[90, 5] == 255).all()  # over white, padded square
    ok, webp = cv2.imencode(".webp", cv2.cvtColor(resize(decode_jpeg(real), 90), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_WEBP_QUALITY, 100])
    assert decode_jpeg(as_data_image(webp.tobytes(), "a.webp")).shape == (TILE, TILE, 3)


def test_unreadable_images_are_named_and_skipped(tmp_path, caplog):
    good = encode_jpeg(np.full((TILE, TILE, 3), 90, np.uint8))
    (tmp_path / "p1").mkdir()
    (tmp_path / "p1" / "a.jpg").write_bytes(good)
    (tmp_path / "p1" / "b.jpg").write_bytes(good[: len(good) // 2])
    (tmp_path / "p2").mkdir()
    (tmp_path / "p2" / "notes.txt").write_text("hello")
    (tmp_path / "loose.jpg").write_bytes(good)
    products = from_folder(tmp_path)
    assert [p.name for p in products] == ["p1", "p2"] and len(products[0].images) == 1 and not products[1].images
    assert "p1/b.jpg: skipped" in caplog.text and "notes.txt: skipped" in caplog.text and "loose.jpg: a file directly in --folder" in caplog.text
    kept = readable(products + from_objects({"five": [good] * 5}))
    assert [p.name for p in kept] == ["p1", "five"] and "product p2: no readable image" in caplog.text
    assert [len(p.images) for p in kept] == [1, 4]  # at most 4, as every Cdiscount product


def test_a_bson_file_gives_its_products_by_id_and_names_a_cut_image(write_bson, caplog):
    from ensembling.predict.products import from_bson

    good = encode_jpeg(np.full((TILE, TILE, 3), 40, np.uint8))
    path = write_bson("new.bson", [(7, [good, good[:-40]], None), (3, [good], None)])
    products = from_bson(path)
    assert [(p.name, len(p.images)) for p in products] == [("7", 1), ("3", 1)] and products[0].images[0] == good
    assert "_id 7 image 1: skipped" in caplog.text and "JPEG without its end marker" in caplog.text


def test_onnx_export_gives_torchs_probabilities_on_real_images(tiny_run, tmp_path):
    import onnxruntime as ort
    import torch

    from common.models import normalization
    from ensembling.predict.__main__ import main
    from ensembling.predict.onnx_export import exported_model, softmax_net

    work, _ = tiny_run
    main(["--work", str(work), "--export-onnx", "dylan_mini_lite0", "--out", str(tmp_path / "m.onnx")])
    meta = json.loads((tmp_path / "m.onnx.json").read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.json"]  # no m.onnx.data beside it: the weights are inside
    assert set(meta["not_included"]) == {"tta", "product"} and meta["input"].startswith("pixels: uint8")
    real = [img for p in iter_products(TRAIN_EXAMPLE_BSON) for img in p.images][:24]
    x = np.stack([resize(decode_jpeg(b), meta["resize_to"]) for b in real]).transpose(0, 3, 1, 2).copy()
    probs = ort.InferenceSession(str(tmp_path / "m.onnx")).run(["probs"], {"pixels": x})[0]
    _, _, model = exported_model(WorkDir(work), "dylan_mini_lite0", meta["fold"])
    with torch.no_grad():
        expected = softmax_net(model, meta["mean"], meta["std"])(torch.from_numpy(x)).numpy()
    assert probs.shape == (24, len(meta["category_ids"])) and np.abs(probs - expected).max() < 1e-4
    assert (probs.argmax(1) == expected.argmax(1)).all()
    assert meta["mean"] == list(normalization(model)[0])
    with pytest.raises(DataError, match="not one single-image net"):
        main(["--work", str(work), "--export-onnx", "bestfitting_mini_lite0_strip", "--out", str(tmp_path / "b.onnx")])


def test_a_work_dir_whose_category_file_moved_says_so_in_one_line(tmp_path):
    from common.prepare import DatasetPaths

    with pytest.raises(DataError, match="c.csv: the category file this work dir's dataset.json names is missing"):
        DatasetPaths("train.bson", "test.bson", str(tmp_path / "c.csv")).tree()


def test_bench_predict_times_the_loaded_stack_and_one_model(tiny_run):
    """bench/bench_predict.py end to end on the tiny run: every row timed, the loaded sources counted."""
    from bench.bench_predict import main

    work, _ = tiny_run
    rows = {r["source"]: r for r in main(["--work", str(work), "--singles", "2", "--batch", "3", "--repeats", "1"])}
    stack, model = rows["stack"], rows["dylan_mini_lite0"]
    assert stack["sources"] > model["sources"] == 1 and stack["loaded_mb"] > 0 and stack["load_s"] >= 0
    assert all(r["one_product_s"] > 0 and r["products_per_s"] > 0 and r["batch_products"] == 3 for r in rows.values())


def test_sigterm_mid_prediction_removes_the_scratch_folder(tiny_run, tmp_path):
    """Python's default SIGTERM skipped every cleanup: the features of the new products stayed in
    /dev/shm (issue 30; here beside the other tests of the shared run, so no worker waits for it)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from common.paths import REPO

    work, _ = tiny_run
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CDISCOUNT_SCRATCH": str(scratch)}
    proc = subprocess.Popen([sys.executable, "-m", "ensembling.predict", "--work", str(work), "--bson", str(work / "mini" / "test.bson"),
                             "--out", str(tmp_path / "p.csv")], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(scratch.iterdir()) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "predict ended before its scratch folder appeared"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1] == "error: stopped by SIGTERM"
    assert not any(scratch.iterdir()) and not (tmp_path / "p.csv").exists()
