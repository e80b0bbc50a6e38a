"""Fault injection (issue 8, first part): a kill, a half-written file or a bad source never loses
or silently corrupts anything — the run resumes to the same result, or the fault is named."""
from __future__ import annotations

import os
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
        with pytest.raises(RuntimeError, match=r"fold0[/\\]last\.pt: unreadable checkpoint"):
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
    from common.blend import Labels
    from common.prepare import DatasetPaths

    wd = WorkDir(work)
    labels = Labels.load(wd)
    test_ids = np.sort(np.asarray(DatasetPaths.load(wd).index(wd, "test").ids, np.int64))
    n_classes = len(DatasetPaths.load(wd).tree())
    rng = np.random.default_rng(1)
    for split, ids in (("oof", labels.ids), ("test", test_ids)):
        save_topk(wd.preds(name) / f"{split}.npz", topk_from_dense(ids, rng.random((len(ids), n_classes)).astype(np.float32), k=3))


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
    from common.blend import blend
    from ensembling.stack import StackConfig, load_inputs

    _good_source(tiny_work, "dylan_good")
    bad = _nan_source(tiny_work, "dylan_bad")
    with pytest.raises(DataError, match=rf"dylan_bad[/\\]oof\.npz: 1 products have NaN"):
        load_inputs(WorkDir(tiny_work), StackConfig(sources=["dylan_good", "dylan_bad"]))
    with pytest.raises(DataError, match=rf"dylan_bad[/\\]oof\.npz: 1 products have NaN"):
        load_inputs(WorkDir(tiny_work), StackConfig())  # discovered, not named: still refused, never silently used
    with pytest.raises(DataError, match=rf"dylan_bad[/\\]oof\.npz"):
        blend(WorkDir(tiny_work), ["dylan_good", "dylan_bad"], "dylan")
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
    path, n_fallback = submission_from_topk(tmp_path / "sub.csv.gz", partial, test_ids, tree, fallback_label=4)
    frame = validate_submission(path, test_ids, tree).set_index("_id")
    assert n_fallback == len(test_ids) - len(covered) and len(frame) == len(test_ids)
    assert (frame.loc[covered, "category_id"].to_numpy() == tree.ids[partial.top1]).all()
    assert (frame.drop(index=covered)["category_id"] == tree.ids[4]).all()
    stray = TopK(np.array([1, 2], np.int64), partial.labels[:2], partial.probs[:2])  # ids that are not test products
    empty = TopK(np.zeros(0, np.int64), np.zeros((0, 3), np.int16), np.zeros((0, 3), np.float16))
    for preds in (stray, empty):
        path, n_fallback = submission_from_topk(tmp_path / "sub2.csv", preds, test_ids, tree, fallback_label=4)
        assert n_fallback == len(test_ids) and (validate_submission(path, test_ids, tree)["category_id"] == tree.ids[4]).all()
