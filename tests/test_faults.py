"""Fault injection (issue 8, first part): a kill, a half-written file or a bad source never loses
or silently corrupts anything — the run resumes to the same result, or the fault is named."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from common.atomic import atomic_path, write_json, write_npy
from common.errors import DataError
from common.paths import REPO, WorkDir
from common.predictions import TopK, load_topk, save_topk, topk_from_dense
from common.sources import write_summary
from common.submission import submission_from_topk, validate_submission
from common.train import load_checkpoint, save_checkpoint

TINY_RECIPE = ("name: tiny\nmodel: resnet10t\ninput_size: 32\nepochs: {epochs}\nbatch_size: 8\nnum_workers: 0\nlr: 3.0e-3\n"
               "amp: none\ntopk: 5\neval_batch_size: 16\nfolds: [0]\nseed: 3\n")
TIMING = ["seconds", "samples_per_s"]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _train_cmd(recipe: Path, work: Path) -> list[str]:
    return [sys.executable, "-m", "solutions.dylan.train", "--config", str(recipe), "--work", str(work)]


def _epoch_rows(path: Path) -> int:
    try:
        return len(pd.read_csv(path))
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return 0


def _assert_same_run(a: Path, b: Path) -> None:
    fold_a, fold_b = WorkDir(a).model_dir("dylan", "tiny", 0), WorkDir(b).model_dir("dylan", "tiny", 0)
    hist_a = pd.read_csv(fold_a / "summary.csv").drop(columns=TIMING)
    hist_b = pd.read_csv(fold_b / "summary.csv").drop(columns=TIMING)
    pd.testing.assert_frame_equal(hist_a, hist_b)
    for name in ("oof.npz", "test.npz"):
        pa, pb = load_topk(fold_a / name), load_topk(fold_b / name)
        assert np.array_equal(pa.ids, pb.ids) and np.array_equal(pa.labels, pb.labels) and np.array_equal(pa.probs, pb.probs), name
    oa, ob = load_topk(WorkDir(a).preds("dylan_tiny") / "oof.npz"), load_topk(WorkDir(b).preds("dylan_tiny") / "oof.npz")
    assert np.array_equal(oa.ids, ob.ids) and np.array_equal(oa.labels, ob.labels) and np.array_equal(oa.probs, ob.probs)


def test_sigkill_mid_training_resumes_to_the_same_result(tiny_work, tmp_path):
    """SIGKILL once epoch 0 is checkpointed (typically mid-epoch 1), rerun: same per-epoch metrics,
    same OOF/test predictions as a run never interrupted."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    shutil.copytree(tiny_work, straight)
    shutil.copytree(tiny_work, killed)
    for epochs in (3, 6):  # a longer run if the kill came too late to interrupt anything
        recipe = tmp_path / f"tiny{epochs}.yaml"
        recipe.write_text(TINY_RECIPE.format(epochs=epochs))
        for d in (straight, killed):
            shutil.rmtree(d / "models", ignore_errors=True)
            shutil.rmtree(d / "preds", ignore_errors=True)
        fold = WorkDir(killed).model_dir("dylan", "tiny", 0)
        proc = subprocess.Popen(_train_cmd(recipe, killed), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while _epoch_rows(fold / "summary.csv") < 1 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        rows = _epoch_rows(fold / "summary.csv")
        if 1 <= rows < epochs and not (fold / "oof.npz").exists():
            break
    else:
        pytest.fail(f"the kill never landed mid-run (summary rows: {rows})")
    assert proc.returncode == -signal.SIGKILL
    assert not (WorkDir(killed).preds("dylan_tiny") / "oof.npz").exists()
    assert load_checkpoint(fold / "last.pt")["epoch"] == rows - 1  # the last checkpoint is whole and readable
    subprocess.run(_train_cmd(recipe, killed), cwd=REPO, env=_env(), check=True, capture_output=True, timeout=120)
    subprocess.run(_train_cmd(recipe, straight), cwd=REPO, env=_env(), check=True, capture_output=True, timeout=120)
    assert _epoch_rows(fold / "summary.csv") == epochs
    _assert_same_run(straight, killed)


# ----------------------------------------------------------------------------- half-written files


def test_truncated_checkpoint_is_refused_naming_the_file(tmp_path):
    last = tmp_path / "fold0" / "last.pt"
    save_checkpoint(last, {"model": {"w": torch.randn(64, 64)}, "epoch": 3, "history": [{"epoch": 0}]})
    assert load_checkpoint(last)["epoch"] == 3
    whole = last.read_bytes()
    for cut in (len(whole) // 2, 10, 0):
        last.write_bytes(whole[:cut])
        with pytest.raises(DataError, match=r"fold0[/\\]last\.pt: unreadable checkpoint"):
            load_checkpoint(last)


def test_truncated_prediction_file_is_refused_naming_the_file(tmp_path):
    top = topk_from_dense(np.arange(200), np.random.default_rng(0).random((200, 30)).astype(np.float32), k=5)
    save_topk(tmp_path / "oof.npz", top)
    whole = (tmp_path / "oof.npz").read_bytes()
    for cut in (len(whole) // 2, len(whole) - 1, 0):  # also the zip directory alone cut short, and an empty file
        bad = tmp_path / f"cut{cut}.npz"
        bad.write_bytes(whole[:cut])
        with pytest.raises(DataError, match=f"cut{cut}.npz: not a valid top-K prediction file"):
            load_topk(bad)
    with np.load(tmp_path / "oof.npz") as z:  # a file missing one of its arrays
        np.savez(tmp_path / "partial.npz", ids=z["ids"], labels=z["labels"])
    with pytest.raises(DataError, match="partial.npz"):
        load_topk(tmp_path / "partial.npz")


@pytest.mark.parametrize("writer", ["bytes", "json", "npy", "topk", "checkpoint"])
def test_writer_crash_leaves_no_final_file_and_keeps_the_old_one(tmp_path, writer):
    """A writer that raises half-way: no final file appears, a previous version is untouched, no temp file is left."""

    class Crash(Exception):
        pass

    target = tmp_path / "out" / "file.bin"
    top = topk_from_dense(np.arange(5), np.eye(5, dtype=np.float32), k=2)

    def crash_mid_write(*_):
        raise Crash

    def write():
        if writer == "bytes":
            with atomic_path(target) as tmp:
                with open(tmp, "wb") as f:
                    f.write(b"x" * 1000)
                    f.flush()
                    raise Crash
        elif writer == "json":
            write_json(target, {"a": object()})  # not serialisable: json raises before anything is renamed
        elif writer == "npy":
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(np, "save", lambda f, *a, **k: (f.write(b"\x93NUMPY partial"), crash_mid_write()))
                write_npy(target, np.arange(10))
        elif writer == "topk":
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(np, "savez", lambda f, **k: (f.write(b"PK\x03\x04 partial"), crash_mid_write()))
                save_topk(target, top)
        else:
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(torch, "save", lambda obj, f: (Path(f).write_bytes(b"partial"), crash_mid_write()))
                save_checkpoint(target, {"epoch": 1})

    with pytest.raises((Crash, TypeError)):
        write()
    assert not target.exists() and list(target.parent.iterdir()) == []
    target.write_bytes(b"previous version")
    with pytest.raises((Crash, TypeError)):
        write()
    assert target.read_bytes() == b"previous version" and [p.name for p in target.parent.iterdir()] == ["file.bin"]


# ----------------------------------------------------------------------------- bad sources


def _write_raw_topk(path: Path, ids, labels, probs) -> None:
    """Bypasses save_topk's validation: what a buggy or foreign writer could leave behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, ids=np.asarray(ids, np.int64), labels=np.asarray(labels, np.int16), probs=np.asarray(probs, np.float16))


def _good_source(work: Path, name: str) -> None:
    from common.prepare import DatasetPaths
    from common.workdata import Labels

    wd = WorkDir(work)
    labels = Labels.load(wd)
    test_ids = np.sort(np.asarray(DatasetPaths.load(wd).index(wd, "test").ids, np.int64))
    n_classes = len(DatasetPaths.load(wd).tree())
    rng = np.random.default_rng(1)
    for split, ids in (("oof", labels.ids), ("test", test_ids)):
        save_topk(wd.preds(name) / f"{split}.npz", topk_from_dense(ids, rng.random((len(ids), n_classes)).astype(np.float32), k=3))
    write_summary(wd, name, "model", solution="dylan")


def _nan_source(work: Path, name: str) -> Path:
    wd = WorkDir(work)
    _good_source(work, name)
    for split in ("oof", "test"):
        good = load_topk(wd.preds(name) / f"{split}.npz")
        probs = good.probs.copy()
        probs[len(probs) // 2, 0] = np.nan
        _write_raw_topk(wd.preds(name) / f"{split}.npz", good.ids, good.labels, probs)
    return wd.preds(name) / "oof.npz"


def test_nan_source_is_refused_by_name_in_stack_and_blend(tiny_work):
    from ensembling.blend import SolutionBlend, blend
    from ensembling.stack import StackConfig
    from ensembling.stack.inputs import load_inputs

    _good_source(tiny_work, "dylan_good")
    bad = _nan_source(tiny_work, "dylan_bad")
    with pytest.raises(DataError, match=r"dylan_bad[/\\]oof\.npz: 1 products have NaN"):
        load_inputs(WorkDir(tiny_work), StackConfig(sources=["dylan_good", "dylan_bad"]))
    with pytest.raises(DataError, match=r"dylan_bad[/\\]oof\.npz: 1 products have NaN"):
        load_inputs(WorkDir(tiny_work), StackConfig())  # discovered, not named: still refused, never silently used
    with pytest.raises(DataError, match=r"dylan_bad[/\\]oof\.npz"):
        blend(WorkDir(tiny_work), SolutionBlend("dylan"), {"dylan_good": 1.0, "dylan_bad": 1.0})
    assert not (WorkDir(tiny_work).preds("dylan") / "oof.npz").exists()  # nothing half-blended was written
    assert bad.exists()  # the evidence is kept, not deleted


def test_missing_source_on_the_command_line_is_named(tiny_work):
    _good_source(tiny_work, "dylan_good")
    out = subprocess.run([sys.executable, "-m", "ensembling.stack", "--work", str(tiny_work), "--sources", "dylan_good", "nonexistent",
                          "--nthread", "1"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "nonexistent" in out.stderr and "does not exist" in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr or "FileNotFoundError" in out.stderr
    assert not (tiny_work / "submissions" / "stack.csv.gz").exists()


def test_partial_source_still_gives_every_test_product_a_valid_row(tiny_work, tmp_path):
    """A source covering only some test products (and one naming no product at all): every test
    product gets exactly one valid row; the uncovered ones get the prior and are counted."""
    from common.prepare import DatasetPaths

    wd = WorkDir(tiny_work)
    paths = DatasetPaths.load(wd)
    tree = paths.tree()
    test_ids = np.sort(np.asarray(paths.index(wd, "test").ids, np.int64))
    covered = test_ids[::3]
    probs = np.zeros((len(covered), len(tree)), np.float32)
    probs[np.arange(len(covered)), np.arange(len(covered)) % len(tree)] = 1
    partial = topk_from_dense(covered, probs, k=3)
    with pytest.raises(DataError, match=r"sub.csv.gz: \d+ of \d+ rows \(62%\) would be the fallback label"):
        submission_from_topk(tmp_path / "sub.csv.gz", partial, test_ids, tree, fallback_label=4)  # 10 of 16 rows: refused
    path, n_fallback = submission_from_topk(tmp_path / "sub.csv.gz", partial, test_ids, tree, fallback_label=4, max_fallback_share=1.0)
    frame = validate_submission(path, test_ids, tree).set_index("_id")
    assert n_fallback == len(test_ids) - len(covered) and len(frame) == len(test_ids)
    assert (frame.loc[covered, "category_id"].to_numpy() == tree.ids[partial.top1]).all()
    assert (frame.drop(index=covered)["category_id"] == tree.ids[4]).all()
    stray = TopK(np.array([1, 2], np.int64), partial.labels[:2], partial.probs[:2])  # ids that are not test products
    empty = TopK(np.zeros(0, np.int64), np.zeros((0, 3), np.int16), np.zeros((0, 3), np.float16))
    for preds in (stray, empty):
        path, n_fallback = submission_from_topk(tmp_path / "sub2.csv", preds, test_ids, tree, fallback_label=4, max_fallback_share=1.0)
        assert n_fallback == len(test_ids) and (validate_submission(path, test_ids, tree)["category_id"] == tree.ids[4]).all()


def test_a_submission_over_a_cut_test_file_is_refused_unless_the_loss_is_accepted(sample_bson, category_csv, tmp_path, caplog):
    """The official sample cut inside its 60th document, as a test file: the index keeps 59
    products and counts the lost one; a 59-row submission used to pass its own validation (it is
    checked against the same shrunken index); now it is refused naming the loss, and written only
    with --accept-lost-products."""
    from common.bson_index import build_index
    from common.categories import CategoryTree

    full = build_index(sample_bson, progress=False)
    cut = tmp_path / "test.bson"
    cut.write_bytes(sample_bson.read_bytes()[: int(full.offsets[59]) + 200])
    index = build_index(cut, progress=False)
    assert len(index) == 59 and index.lost_products == 1 and full.lost_products == 0
    tree = CategoryTree.from_csv(category_csv)
    ids = np.asarray(index.ids, np.int64)
    preds = topk_from_dense(ids, np.eye(len(tree), dtype=np.float32)[np.zeros(len(ids), int)], k=3)
    with pytest.raises(DataError, match=r"sub.csv: 59 rows, but the test file holds 60 products: 1 could not be read.*--accept-lost-products"):
        submission_from_topk(tmp_path / "sub.csv", preds, ids, tree, 0, lost_products=index.lost_products)
    assert not (tmp_path / "sub.csv").exists()
    path, _ = submission_from_topk(tmp_path / "sub.csv", preds, ids, tree, 0, lost_products=index.lost_products, accept_lost_products=True)
    assert len(validate_submission(path, ids, tree)) == 59 and "written anyway" in caplog.text


# ----------------------------------------------------------------------------- bad input, end to end

GOOD_CATEGORIES = [1000010653, 1000010667, 1000004079]


def _bad_data(root: Path) -> tuple[Path, Path, Path]:
    """train/test BSONs holding every kind of bad input among learnable products (colour = class)."""
    import bson

    from common.bson_format import encode_product
    from common.categories import CategoryTree
    from common.images import encode_jpeg
    from common.paths import CATEGORY_NAMES_CSV

    rng = np.random.default_rng(0)
    tree = CategoryTree.from_csv(CATEGORY_NAMES_CSV).subset(GOOD_CATEGORIES)
    tree.to_csv(root / "category_names.csv")
    colours = [(220, 30, 30), (30, 220, 30), (30, 30, 220)]

    def jpeg(label: int, shape=(32, 32)) -> bytes:
        return encode_jpeg(np.clip(np.array(colours[label]) + rng.normal(0, 20, (*shape, 3)), 0, 255).astype(np.uint8))

    good = lambda pid, label, cat=True: encode_product(pid, [jpeg(label)], int(tree.ids[label]) if cat else None)  # noqa: E731
    garbage, truncated = b"\x07\x00\x00\x00not bson at all", good(99_999, 0)[:40]
    train = [good(i, i % 3) for i in range(1, 61)] + [
        encode_product(9001, [], int(tree.ids[0])),                      # empty imgs
        encode_product(9002, [b"", jpeg(1)], int(tree.ids[1])),         # a zero-byte JPEG beside a good one
        encode_product(9003, [b"\xff\xd8\xff broken"], int(tree.ids[2])),  # only a corrupt JPEG
        encode_product(9004, [jpeg(0, (100, 150))], int(tree.ids[0])),  # not 180x180
        encode_product(9005, [jpeg(1)], 123),                           # unknown category id
        bson.encode({"_id": 9006, "imgs": [{"picture": jpeg(2)}]}),     # no category_id in train
        good(5, 2), garbage,                                            # a duplicate _id, then junk between documents
        good(9007, 1)]
    test = [good(10_000 + i, i % 3, cat=False) for i in range(20)] + [
        encode_product(9101, []), encode_product(9102, [b""]), encode_product(9103, [b"\xff\xd8\xff broken"]),
        encode_product(9104, [jpeg(2, (100, 150))]), good(10_003, 1, cat=False), garbage, good(9105, 0, cat=False)]
    (root / "train.bson").write_bytes(b"".join(train) + truncated)
    (root / "test.bson").write_bytes(b"".join(test) + truncated)
    return root / "train.bson", root / "test.bson", root / "category_names.csv"


def test_bad_inputs_through_the_pipeline_every_test_product_gets_a_row(tmp_path):
    """Index -> folds -> train -> predict -> blend -> stack over files full of bad input: each fault is
    counted and reported, nothing stops, and every test product gets exactly one valid row."""
    from common.bson_index import load_index
    from common.categories import CategoryTree

    train, test, categories = _bad_data(tmp_path)
    work = tmp_path / "work"
    py = [sys.executable, "-m"]

    def run(*cmd: str) -> str:
        done = subprocess.run([*py, *cmd], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        return done.stdout + done.stderr

    out = run("common.prepare", "--train", str(train), "--test", str(test), "--categories", str(categories), "--work", str(work))
    skipped = {split: load_index(work / "index" / split).meta["skipped"]["counts"] for split in ("train", "test")}
    for split in ("train", "test"):
        assert skipped[split].get("no_images") == 1 and skipped[split].get("duplicate_ids") == 1, skipped
        assert skipped[split].get("truncated_tail", 0) + skipped[split].get("truncated", 0) >= 1 or any("trunc" in k for k in skipped[split]), skipped
    assert "skipped" in out
    # every anomaly the stages go on past is named by its first _ids, not only counted
    first = {split: load_index(work / "index" / split).meta["skipped"]["first_ids"] for split in ("train", "test")}
    assert first["train"]["no_images"] == [9001] and first["train"]["empty_image"] == [9002] and first["train"]["duplicate_ids"] == [5]
    assert first["test"]["no_images"] == [9101] and first["test"]["empty_image"] == [9102] and first["test"]["duplicate_ids"] == [10_003]
    assert "no_images=1 (first _ids 9001)" in out
    stats_log = run("common.stats", "--work", str(work))
    for split, ids in (("train", (9001, 9002)), ("test", (9101, 9102))):
        stats = json.loads((work / "stats" / split / "stats.json").read_text())["skipped"]
        assert stats["first_ids"]["no_images"] == [ids[0]] and stats["first_ids"]["empty_image"] == [ids[1]], stats
    assert "no_images=1 (first _ids 9101)" in stats_log
    run("common.folds", "--work", str(work), "--n-folds", "2", "--seed", "0")
    excluded = pd.read_csv(work / "folds_excluded.csv").set_index("_id")["reason"]
    assert {9001, 9005, 9006, 5} <= set(excluded.index) and "duplicate" in excluded[5]
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY_RECIPE.format(epochs=1).replace("folds: [0]", "folds: [0, 1]"))
    log = run("solutions.dylan.train", "--config", str(recipe), "--work", str(work))
    assert "inputs could not be used (undecodable images" in log  # the corrupt and zero-byte JPEGs are counted, not fatal
    # training: 9002's empty entry and 9003's corrupt JPEG, each in one fold's training set, counted per epoch
    unusable = sum(pd.read_csv(work / "models" / "dylan" / "tiny" / f"fold{f}" / "summary.csv")["unusable_inputs"].sum() for f in (0, 1))
    assert unusable == 2 and re.search(r"tiny epoch 0: skipped unusable_input=2 \(first _ids (9002, 9003|9003, 9002)\)", log), log[-3000:]
    # predicting: the products left without a usable input are named (they get the fallback label)
    assert "oof tiny: skipped no_usable_input=1 (first _ids 9003), unusable_input=2 (first _ids 9002, 9003)" in log
    assert "test tiny: skipped no_usable_input=2 (first _ids 9102, 9103), unusable_input=2 (first _ids 9102, 9103)" in log
    # the test file's cut tail held one more product: its submission would be one row short, so
    # it is refused until the user accepts the loss
    short = subprocess.run([*py, "solutions.dylan.submit", "--work", str(work)], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert short.returncode != 0 and "--accept-lost-products" in short.stderr and "Traceback" not in short.stderr, short.stderr[-2000:]
    assert "1 could not be read" in short.stderr
    assert "written anyway" in run("solutions.dylan.submit", "--work", str(work), "--accept-lost-products")
    run("ensembling.stack", "--work", str(work), "--rounds", "5", "--nthread", "1", "--accept-lost-products")
    tree = CategoryTree.from_csv(categories)
    test_ids = np.unique(np.asarray(load_index(work / "index" / "test").ids))
    assert {9101, 9102, 9103, 9104, 9105} <= set(test_ids.tolist())
    for name in ("dylan", "stack"):
        frame = validate_submission(work / "submissions" / f"{name}.csv.gz", test_ids, tree)
        assert len(frame) == len(test_ids) and frame["_id"].is_unique, name
    summary = json.loads((work / "preds" / "stack" / "summary.json").read_text())
    assert summary["test_rows_from_fallback"] >= 3  # empty, zero-byte-only and corrupt-only products: prior, counted


# ----------------------------------------------------------------------------- untrusted files


def _calls(tree, dotted: str):
    """Calls of `module.name` however imported: `module.name(...)`, `import module as m; m.name(...)`,
    `from module import name [as n]; n(...)` (the last form used to slip through)."""
    import ast

    module, _, name = dotted.rpartition(".")
    modules, names = {module}, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {a.asname or a.name for a in node.names if a.name == module}
        elif isinstance(node, ast.ImportFrom) and node.module == module:
            names |= {a.asname or a.name for a in node.names if a.name == name}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if (isinstance(f, ast.Attribute) and f.attr == name and isinstance(f.value, ast.Name) and f.value.id in modules) \
                or (isinstance(f, ast.Name) and f.id in names):
            yield node


def _unsafe_loads(text: str, where: str) -> list[str]:
    """Every way a file crossing stages could carry code: torch.load without weights_only=True,
    yaml.load, np.load(allow_pickle=True), importing pickle and its kin."""
    import ast

    tree, problems = ast.parse(text, where), []
    for call in _calls(tree, "torch.load"):
        kw = {k.arg: k.value for k in call.keywords}
        if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
            problems.append(f"{where}:{call.lineno} torch.load without weights_only=True")
    for call in _calls(tree, "yaml.load"):
        problems.append(f"{where}:{call.lineno} yaml.load (use yaml.safe_load)")
    for call in [*_calls(tree, "np.load"), *_calls(tree, "numpy.load")]:
        kw = {k.arg: k.value for k in call.keywords}
        if isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value is True:
            problems.append(f"{where}:{call.lineno} np.load(allow_pickle=True)")
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        problems += [f"{where}:{node.lineno} imports {n}" for n in names if n.split(".")[0] in {"pickle", "cPickle", "joblib", "dill", "cloudpickle"}]
    return problems


@pytest.mark.parametrize("source", ["from torch import load\nload(p)\n", "from torch import load as tl\ntl(p, weights_only=False)\n",
                                    "import torch as T\nT.load(p)\n", "from yaml import load\nload(s)\n", "import numpy\nnumpy.load(p, allow_pickle=True)\n",
                                    "from pickle import loads\n"])
def test_the_untrusted_file_check_sees_every_import_form(source):
    assert _unsafe_loads(source, "x.py"), source
    assert not _unsafe_loads("from torch import load\nload(p, weights_only=True)\n", "x.py")


def test_no_code_path_unpickles_untrusted_files():
    """Every torch.load passes weights_only=True, YAML is read with safe_load, numpy never allows
    pickles, and nothing imports pickle/joblib/dill: a file crossing stages can carry no code."""
    packages = ["common", "solutions", "ocr", "md5", "mini", "ensembling", "bench", "scripts"]
    files = [p for pkg in packages for p in (REPO / pkg).rglob("*.py")]
    assert len(files) > 30
    problems = [p for path in files for p in _unsafe_loads(path.read_text(), str(path.relative_to(REPO)))]
    assert problems == []


def test_checkpoint_with_a_pickled_object_is_refused(tmp_path):
    """A checkpoint carrying an arbitrary Python object (what a malicious file would) is not loaded."""

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "fold0" / "last.pt"
    path.parent.mkdir()
    torch.save({"epoch": 1, "payload": Payload()}, path)
    with pytest.raises(DataError, match=r"last\.pt: unreadable checkpoint"):
        load_checkpoint(path)


def test_a_profile_switch_in_one_work_dir_never_blends_the_two_profiles(tiny_work, capsys):
    """A work dir that finished a mini run and then a full one holds both profiles' models: the
    solution blend used to average all of them; with --profile (run_all.sh passes its own) it
    blends only that profile's and says what it left out."""
    from ensembling.blend import blend_main, SolutionBlend

    wd = WorkDir(tiny_work)
    for name, recipe in (("dylan_mini_a", "mini_a"), ("dylan_full_b", "full_b")):
        _good_source(tiny_work, name)
        write_summary(wd, name, "model", solution="dylan", recipe={"name": recipe})
    spec = SolutionBlend("dylan")
    assert blend_main(spec, ["--work", str(tiny_work)])["members"] == ["dylan_full_b", "dylan_mini_a"]
    mini = blend_main(spec, ["--work", str(tiny_work), "--profile", "mini"])
    assert mini["members"] == ["dylan_mini_a"] and mini["profile"] == "mini"
    assert "1 finished models of another profile left out: ['dylan_full_b']" in capsys.readouterr().out
    assert blend_main(spec, ["--work", str(tiny_work), "--profile", "full"])["members"] == ["dylan_full_b"]
    with pytest.raises(DataError, match="--profile 'large'"):
        blend_main(spec, ["--work", str(tiny_work), "--profile", "large"])
