"""The recipe's global batch on any number of processes: `batch_split` cuts the recorded global
batch into per-process micro-batches and accumulation steps; a recipe trained in 1 process and
under torchrun on 2 (gloo, CPU) feeds the same samples per optimizer step (summary.csv), prints
its split, all-reduces gradients once per optimizer step (DDP `no_sync` on the other micro-steps),
and, for a network without BatchNorm, ends with the same weights on every rank as in 1 process."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.config import TrainConfig, batch_split, for_world, load_yaml
from common.errors import DataError
from common.paths import REPO
from tests.conftest import make_tiny_work

COMMON = "input_size: 32\nepochs: 1\nnum_workers: 0\namp: none\ntopk: 5\neval_batch_size: 16\nlr: 3.0e-3\n"
# resnet10t (BatchNorm), as tests/test_ddp.py: 32 images an epoch = 2 optimizer steps of 16
BN = COMMON + "name: gb\nmodel: resnet10t\nglobal_batch: 16\nbatch_size: 8\nmax_images_per_epoch: 32\n"
# no BatchNorm (GroupNorm): the step's gradient is the mean over its 16 samples however they are cut
# (1 process: 4 micro-batches of 4; 2 processes: 2 of 4 each), so the weights must agree
GN = COMMON + "name: gbgn\nmodel: test_efficientnet_gn\nglobal_batch: 16\nbatch_size: 4\nmax_images_per_epoch: 32\nhflip: false\nfolds: [0]\n"


# ----------------------------------------------------------------------------- the split


@pytest.mark.parametrize("world, micro, accum", [(1, 64, 8), (2, 64, 4), (4, 64, 2), (8, 64, 1), (16, 32, 1)])
def test_recorded_global_batch_splits_over_1_to_16_processes(world, micro, accum):
    values = load_yaml(REPO / "solutions" / "dylan" / "configs" / "dpn92.yaml")  # M06: 512 = 64 x 8 GPUs
    cfg = TrainConfig(**values)
    assert batch_split(cfg, 1).global_batch == 512  # the team's batch (64 x 8 GPUs), stated or batch_size x accum_steps
    split = batch_split(cfg, world)
    assert (split.global_batch, split.world, split.micro, split.accum) == (512, world, micro, accum)
    assert split.micro <= cfg.batch_size and split.world * split.micro * split.accum == 512
    derived = for_world(cfg, world)
    assert (derived.global_batch, derived.batch_size, derived.accum_steps) == (512, micro, accum)
    assert for_world(derived, world) == derived  # idempotent: a recipe derived once derives the same
    assert f"{accum} accumulation step" in str(split) and f"micro-batch {micro}" in str(split)


@pytest.mark.parametrize("world", [3, 5, 1024])
def test_a_global_batch_that_does_not_divide_over_the_world_is_refused(world):
    cfg = TrainConfig(name="dpn107", global_batch=512, batch_size=64)
    with pytest.raises(DataError, match=f"global batch 512 does not split evenly over {world} processes"):
        batch_split(cfg, world)
    with pytest.raises(DataError, match="dpn107"):
        for_world(cfg, world)


def test_the_fewest_micro_batches_that_cut_the_per_process_batch_evenly():
    split = batch_split(TrainConfig(global_batch=24, batch_size=8), 2)
    assert (split.micro, split.accum) == (6, 2)  # 12 per process: 2 x 6, not 8 + 4
    assert batch_split(TrainConfig(global_batch=28, batch_size=8), 1).accum == 4  # 28 = 4 x 7 (not 3 x 9.33)
    assert batch_split(TrainConfig(batch_size=8, accum_steps=3), 1).global_batch == 24  # no global batch: batch_size x accum_steps


# ----------------------------------------------------------------------------- 1 and 2 processes


def _run(out: Path, work: Path, recipes: list[Path], world: int) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    script = [str(REPO / "tests" / "ddp_global_batch.py"), str(out), str(work), *(f"dylan={p}" for p in recipes)]
    launch = [sys.executable] if world == 1 else [str(Path(sys.executable).with_name("torchrun")), "--standalone", f"--nproc_per_node={world}"]
    done = subprocess.run([*launch, *script], cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, "\n".join(line for line in done.stderr.splitlines() if " INFO " not in line)[-5000:]
    return done.stdout


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[int, tuple[Path, Path, str]]:
    """Both recipes trained from scratch in 1 process and in 2: {world: (work, recorded, stdout)}."""
    root = tmp_path_factory.mktemp("global_batch")
    work = make_tiny_work(root / "data")
    recipes = []
    for name, text in (("bn", BN), ("gn", GN)):
        recipes.append(root / f"{name}.yaml")
        recipes[-1].write_text(text)
    out = {}
    for world in (1, 2):
        ddp = root / f"work{world}"
        subprocess.run(["cp", "-r", str(work), str(ddp)], check=True)
        out[world] = (ddp, root / f"recorded{world}", _run(root / f"recorded{world}", ddp, recipes, world))
    return out


def _summary(work: Path, name: str) -> dict[str, list[dict]]:
    files = sorted((work / "models" / "dylan" / name).glob("fold*/summary.csv"))
    assert files, f"no summary.csv under {work}/models/dylan/{name}"
    return {f.parent.name: list(csv.DictReader(f.read_text().splitlines())) for f in files}


@pytest.mark.parametrize("world, accum", [(1, 2), (2, 1)])
def test_same_recipe_feeds_the_same_global_batch_on_1_and_2_processes(runs, world, accum):
    work, _, stdout = runs[world]
    by_fold = _summary(work, "gb")
    assert sorted(by_fold) == ["fold0", "fold1"]
    for fold, rows in by_fold.items():
        assert [float(r["samples_per_step"]) for r in rows] == [16.0], (fold, rows)
        assert [int(r["samples"]) for r in rows] == [32], (fold, rows)
    process = "process" if world == 1 else "processes"
    step = "step" if accum == 1 else "steps"
    assert f"dylan_gb: global batch 16 = {world} {process} x micro-batch 8 x {accum} accumulation {step}" in stdout, stdout[-2000:]


def _recorded(runs, world: int, name: str) -> list[dict]:
    return [torch.load(p, weights_only=True) for p in sorted(runs[world][1].glob(f"{name}_fold0_rank*.pt"))]


def test_gradients_are_all_reduced_once_per_optimizer_step(runs):
    """2 processes x 2 micro-batches of 4 per step, 2 steps: 2 all-reduces (4 without no_sync)."""
    ranks = _recorded(runs, 2, "gbgn")
    assert [r["world"] for r in ranks] == [2, 2]
    assert [r["synced"] for r in ranks] == [2, 2]
    assert "dylan_gbgn: global batch 16 = 2 processes x micro-batch 4 x 2 accumulation steps" in runs[2][2]
    assert "dylan_gbgn: global batch 16 = 1 process x micro-batch 4 x 4 accumulation steps" in runs[1][2]
    bn = _recorded(runs, 2, "gb")
    assert [r["synced"] for r in bn] == [2, 2]  # micro 8 x 1 step each: every backward all-reduces


def test_weights_agree_across_ranks_and_with_one_process(runs):
    (single,) = _recorded(runs, 1, "gbgn")
    ranks = _recorded(runs, 2, "gbgn")
    assert single["synced"] is None and len(ranks) == 2
    start = torch.load(runs[1][0] / "models" / "dylan" / "gbgn" / "fold0" / "last.pt", weights_only=True)["model"]
    moved = 0
    for key, value in single["state"].items():
        assert torch.equal(ranks[0]["state"][key], ranks[1]["state"][key]), key  # DDP: every rank steps the same
        torch.testing.assert_close(ranks[0]["state"][key], value, atol=2e-5, rtol=1e-4, msg=key)
        assert torch.equal(start[key], value), key  # last.pt holds the trained weights
    for key, value in single["state"].items():
        moved += int(value.is_floating_point() and not torch.equal(value, _initial(key)))
    assert moved > len(single["state"]) // 2  # the weights did train (two steps moved most tensors)


def _initial(key: str) -> torch.Tensor:
    """The recipe's weights before training (seeded as run_one_fold seeds fold 0)."""
    if not hasattr(_initial, "state"):
        from common.recipe import build_model

        torch.manual_seed(0 * 1000 + 0)
        _initial.state = build_model(TrainConfig(model="test_efficientnet_gn"), 6).state_dict()
    return _initial.state[key]
