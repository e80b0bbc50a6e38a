"""The one inference driver under DDP: every predicting stage (dylan, bestfitting, convoluted base /
fuse / rank_count) predicts on 2 and 3 CPU processes (torchrun, gloo) exactly the products it
predicts in one process, each once, with the same probabilities; the feature store the ranks
fill together is byte for byte the single-process one (but for a rare one-step rounding flip
where another inference batching's float noise tips a feature: tests/conftest.py). The recipes
state a global batch (24) that splits over 1, 2 and 3 processes (8 x 3 accumulation steps, 6 x 2,
8 x 1), as every recipe must for the process counts it runs on."""
from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.paths import REPO
from common.predictions import load_topk
from tests.conftest import assert_same_feature_store, make_tiny_work

COMMON = "input_size: 32\nepochs: 1\nglobal_batch: 24\nbatch_size: 8\nnum_workers: 0\namp: none\ntopk: 5\neval_batch_size: 16\n"
RECIPES = [  # (solution, recipe) in the order they require each other
    ("dylan", "name: tiny\nmodel: resnet10t\nlr: 3.0e-3\n"),
    ("bestfitting", "name: tiny\nmodel: resnet10t\nlr: 3.0e-3\nlayout: grid\nfinetune_epochs: 1\n"),
    ("convoluted", "stage: base\nname: tb\nmodel: resnet10t\nlr: 0.01\naugment: [shift_scale_rotate, rot90]\n"),
    ("convoluted", "stage: fuse\nname: tg\nmodel: fusion_gated\nbases: [tb]\nhidden: 32\nlr: 3.0e-3\n"),
    ("convoluted", "stage: rank_count\nname: trc\nmodel: linear\nbase: tb\nlr: 1.0e-3\n"),
]


def _recipes(root: Path) -> list[tuple[str, Path]]:
    out = []
    for i, (solution, text) in enumerate(RECIPES):
        path = root / f"{i}_{solution}.yaml"
        path.write_text(COMMON + text)
        out.append((solution, path))
    return out


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> tuple[Path, list]:
    """Every recipe trained and predicted in one process: the reference."""
    root = tmp_path_factory.mktemp("ddp")
    work = make_tiny_work(root)
    recipes = _recipes(root)
    for solution, path in recipes:
        importlib.import_module(f"solutions.{solution}.train").main(["--config", str(path), "--work", str(work), "--no-progress"])
    return work, recipes


def _forget_predictions(work: Path) -> None:
    """Keep the trained checkpoints (every fold resumes with no epoch left), drop everything predicted."""
    for p in [*work.glob("models/**/oof.npz"), *work.glob("models/**/test.npz"), *work.glob("features/**/*.u8"), *work.glob("features/**/*.json")]:
        p.unlink()
    shutil.rmtree(work / "preds")


@pytest.mark.parametrize("world", [2, 3])
def test_every_predicting_stage_predicts_the_single_process_products_on_n_ranks(single, tmp_path, world):
    work, recipes = single
    ddp = tmp_path / "work"
    shutil.copytree(work, ddp)
    _forget_predictions(ddp)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run([str(torchrun), "--standalone", f"--nproc_per_node={world}", str(REPO / "tests" / "ddp_predict.py"), str(ddp),
                           *(f"{s}={p}" for s, p in recipes)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    files = sorted(p.relative_to(work) for p in work.glob("models/**/fold*/*.npz"))
    assert len(files) == 2 * 2 * len(RECIPES)  # oof + test, 2 folds, every recipe
    for rel in files:
        a, b = load_topk(work / rel), load_topk(ddp / rel)
        assert np.array_equal(a.ids, b.ids), rel  # the same products, each once (ids are unique and sorted)
        np.testing.assert_allclose(a.probs.astype(np.float32), b.probs.astype(np.float32), atol=2e-3, err_msg=str(rel))
        assert (a.labels[:, 0] == b.labels[:, 0]).mean() > 0.95, rel
    stores = sorted(p.relative_to(work) for p in work.glob("features/**/*.u8"))
    assert len(stores) == 2 * 2 * 2  # features + ok flags, train + test, 2 folds
    for rel in stores:
        assert_same_feature_store(work, ddp, rel)
