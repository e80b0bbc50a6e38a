"""Two "nodes" on localhost: two torchrun launches (--nnodes 2, c10d rendezvous, 1 process each,
gloo on CPU) run a training stage (a dylan recipe: trains, predicts) and a convoluted base net's
feature pass (the ranks fill one feature store, rank 0 renames it once every rank has fsynced its
rows) and give what one process gives: the same trained weights (a network without BatchNorm, the
same global batch), the same predictions, the same feature store.

The command each node runs (on real machines HOST is node 0's address, the same --rdzv_id on all):
    torchrun --nnodes 2 --node_rank R --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \\
             --rdzv_id JOB -m solutions.dylan.train --config ...
"""
from __future__ import annotations

import importlib
import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from common.paths import REPO
from common.predictions import load_topk
from tests.conftest import assert_same_feature_store, make_tiny_work

COMMON = "input_size: 32\nepochs: 1\nnum_workers: 0\namp: none\ntopk: 5\neval_batch_size: 16\nlr: 3.0e-3\nfolds: [0]\n"
RECIPES = [  # trained from scratch on the two nodes: GroupNorm, so the same global batch gives the same weights
    ("dylan", COMMON + "name: mn\nmodel: test_efficientnet_gn\nglobal_batch: 16\nbatch_size: 4\nmax_images_per_epoch: 32\nhflip: false\n"),
    # trained in one process; the two nodes resume it (no epoch left) and run its feature pass
    ("convoluted", COMMON + "stage: base\nname: mnb\nmodel: resnet10t\nglobal_batch: 16\nbatch_size: 8\nmax_images_per_epoch: 32\nlr: 0.01\n"),
]
TIMEOUT = 150


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(out: Path, work: Path, recipes: list[tuple[str, Path]]) -> list[str]:
    """Both nodes' launches, concurrently; their stdout once both have exited 0."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    port, job = _free_port(), uuid.uuid4().hex[:12]
    nodes = []
    for rank in (0, 1):
        command = [torchrun, "--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "1", "--rdzv_backend", "c10d",
                   "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", job, "--rdzv_conf", "join_timeout=60", "--max_restarts", "0",
                   "--local_addr", "127.0.0.1", str(REPO / "tests" / "ddp_global_batch.py"), str(out), str(work),
                   *(f"{s}={p}" for s, p in recipes)]
        nodes.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    try:
        for node in nodes:
            results.append(node.communicate(timeout=TIMEOUT))
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
                node.communicate()
    for rank, (node, (stdout, stderr)) in enumerate(zip(nodes, results)):
        errors = "\n".join(line for line in stderr.splitlines() if " INFO " not in line)
        assert node.returncode == 0, f"node {rank} exited {node.returncode}:\n{errors[-5000:]}"
    return [stdout for stdout, _ in results]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path, Path, list[str]]:
    """(single-process work, two-node work, two-node recorded weights, the nodes' stdout)."""
    root = tmp_path_factory.mktemp("multinode")
    work = make_tiny_work(root)
    recipes = []
    for i, (solution, text) in enumerate(RECIPES):
        recipes.append((solution, root / f"{i}_{solution}.yaml"))
        recipes[-1][1].write_text(text)
    for solution, path in recipes:
        importlib.import_module(f"solutions.{solution}.train").main(["--config", str(path), "--work", str(work), "--no-progress"])
    nodes = root / "nodes"
    shutil.copytree(work, nodes)
    shutil.rmtree(nodes / "preds")
    shutil.rmtree(nodes / "models" / "dylan")  # trains again, on two nodes
    shutil.rmtree(nodes / "features")  # the feature pass again, on two nodes (from the trained base net)
    for p in nodes.glob("models/convoluted/**/*.npz"):
        p.unlink()
    stdout = _two_nodes(root / "recorded", nodes, recipes)
    return work, nodes, root / "recorded", stdout


def test_two_nodes_train_with_the_recipes_global_batch_and_the_same_weights(runs):
    work, _, recorded, stdout = runs
    assert "dylan_mn: global batch 16 = 2 processes x micro-batch 4 x 2 accumulation steps" in "".join(stdout)
    ranks = [torch.load(p, weights_only=True) for p in sorted(recorded.glob("mn_fold0_rank*.pt"))]
    assert [(r["world"], r["synced"]) for r in ranks] == [(2, 2), (2, 2)]  # 2 optimizer steps, one all-reduce each
    single = torch.load(work / "models" / "dylan" / "mn" / "fold0" / "last.pt", weights_only=True)["model"]
    for key, value in single.items():
        assert torch.equal(ranks[0]["state"][key], ranks[1]["state"][key]), key
        torch.testing.assert_close(ranks[0]["state"][key], value, atol=2e-5, rtol=1e-4, msg=key)


def test_two_nodes_predict_and_store_features_as_one_process(runs):
    work, nodes, _, _ = runs
    files = sorted(p.relative_to(work) for p in work.glob("models/**/fold0/*.npz"))
    assert len(files) == 2 * len(RECIPES)  # oof + test of every recipe
    for rel in [*files, *sorted(p.relative_to(work) for p in work.glob("preds/*/*.npz"))]:
        a, b = load_topk(work / rel), load_topk(nodes / rel)
        assert np.array_equal(a.ids, b.ids), rel  # the same products, each once
        np.testing.assert_allclose(a.probs.astype(np.float32), b.probs.astype(np.float32), atol=2e-3, err_msg=str(rel))
    stores = sorted(p.relative_to(work) for p in work.glob("features/**/*.u8"))
    assert len(stores) == 2 * 2  # features + ok flags, train + test
    for rel in stores:
        assert_same_feature_store(work, nodes, rel)
    for rel in sorted(p.relative_to(work) for p in work.glob("features/**/*.rows.npy")):
        assert np.array_equal(np.load(work / rel), np.load(nodes / rel)), rel
    assert not list(nodes.glob("features/**/*.tmp"))  # every store renamed into place
