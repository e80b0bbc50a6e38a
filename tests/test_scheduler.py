"""The pipeline graph on dask.distributed (common/scheduler.py): recipes side by side on two CPU
slots standing in for GPUs give the sequential run's files; a failing recipe stops only what needs
it; a killed scheduled run, rerun, finishes; the recipes run on the workers of a `dask scheduler`."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.paths import REPO

SUBMISSIONS = ("dylan", "bestfitting", "convoluted", "stack")
RECIPES = ("dylan_mini_lite0", "bestfitting_mini_lite0_strip", "convoluted_mini_base_lite0", "convoluted_mini_fuse_gated",
           "convoluted_mini_fuse_max", "convoluted_mini_rankcount_lite0")


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def run_all(*args: str, timeout: int = 900, ok: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["bash", str(REPO / "run_all.sh"), "--preset", "tiny", *args], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=timeout)
    if ok:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def assert_same_outputs(a: Path, b: Path) -> None:
    """Every prediction file and submission of run a, byte for byte the same in run b."""
    files = sorted(a.glob("preds/*/*.npz"))
    assert len(files) >= 24
    for f in files:
        x, y = np.load(f), np.load(b / f.relative_to(a))
        for key in x.files:
            assert np.array_equal(x[key], y[key]), f"{f.relative_to(a)}: {key}"
    for name in SUBMISSIONS:
        pd.testing.assert_frame_equal(pd.read_csv(a / "submissions" / f"{name}.csv.gz"), pd.read_csv(b / "submissions" / f"{name}.csv.gz"), obj=name)


def fresh_copy(src: Path, dst: Path, keep_checkpoints: bool = False) -> Path:
    shutil.copytree(src, dst, ignore=None if keep_checkpoints else shutil.ignore_patterns("*.pt"), symlinks=True)
    shutil.rmtree(dst / "logs", ignore_errors=True)
    return dst


def remade_by_the_scheduled_run(straight: Path, dst: Path) -> Path:
    """A copy of the sequential run with what the scheduled run makes again removed: dylan's recipe
    (trained from scratch), every other recipe's predictions and feature stores (predicted again from
    its trained last.pt), the blends, OCR, MD5, the stack, the report and the submissions."""
    work = fresh_copy(straight, dst, keep_checkpoints=True)
    shutil.rmtree(work / "models/dylan/mini_lite0")
    shutil.rmtree(work / "features")
    for fold in work.glob("models/*/*/fold*"):
        for f in ("oof.npz", "test.npz"):
            (fold / f).unlink(missing_ok=True)
    for name in (*RECIPES, "dylan", "bestfitting", "convoluted", "ocr", "md5", "stack"):
        shutil.rmtree(work / "preds" / name)
    for d in ("ocr", "md5", "stack", "report", "submissions"):
        shutil.rmtree(work / d, ignore_errors=True)
    return work


@pytest.fixture(scope="module")
def scheduled_run(tiny_run, tmp_path_factory) -> dict:
    """`run_all.sh --preset tiny --gpus-per-recipe 1 --scheduler local:2` on remade_by_the_scheduled_run's
    copy, SIGKILLed as a whole (driver, cluster, training) while dylan's recipe trains (its log at fold
    0 epoch 2), then run again to the end: the work dir, what both runs printed, what the kill left."""
    work = remade_by_the_scheduled_run(tiny_run[0], tmp_path_factory.mktemp("scheduled") / "work")
    args = ["--preset", "tiny", "--work", str(work), "--gpus-per-recipe", "1", "--scheduler", "local:2", "--progress-s", "5"]
    first_log = work.parent / "first_run.log"
    with open(first_log, "w") as out:
        proc = subprocess.Popen(["bash", str(REPO / "run_all.sh"), *args], cwd=REPO, env=_env(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        log, deadline = work / "logs" / "dylan_mini_lite0.log", time.time() + 600
        while time.time() < deadline and not (log.exists() and "dylan_mini_lite0 fold 0 epoch 2/" in log.read_text(errors="replace")):
            assert proc.poll() is None, "the run ended before the kill:\n" + first_log.read_text()[-3000:]
            time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    at_kill = {"checkpoint": (work / "models/dylan/mini_lite0/fold0/last.pt").exists(), "summary": (work / "preds/dylan_mini_lite0/summary.json").exists()}
    rerun = run_all(*args[2:], timeout=1500).stdout
    return {"work": work, "first": first_log.read_text(), "rerun": rerun, "at_kill": at_kill}


def test_side_by_side_on_two_slots_gives_the_sequential_run_s_files(tiny_run, scheduled_run):
    straight, _ = tiny_run
    work, out = scheduled_run["work"], scheduled_run["first"] + scheduled_run["rerun"]
    assert "2 workers" in scheduled_run["rerun"] and "Final submission" in scheduled_run["rerun"]
    for recipe in RECIPES:  # each a task of its own, with its own log
        assert f"== {recipe}: started on" in out and (work / "logs" / f"{recipe}.log").stat().st_size > 0, recipe
    assert "   dylan_mini_lite0: running" in out or "   bestfitting_mini_lite0_strip: running" in out  # the progress lines
    assert "== md5 shard 1/2:" in out and "== ocr shard 1/2:" in out  # the side sources' shards are tasks too
    assert_same_outputs(straight, work)


def test_a_scheduled_run_killed_mid_recipe_and_rerun_finishes(scheduled_run):
    """The kill landed inside dylan's recipe (its checkpoint there, its output absent); the rerun
    started it again, resumed it, and (the test above) ended with the sequential run's files."""
    assert scheduled_run["at_kill"] == {"checkpoint": True, "summary": False}
    assert "== dylan_mini_lite0: started on" in scheduled_run["rerun"] and "Final submission" not in scheduled_run["first"]
    assert "resum" in (scheduled_run["work"] / "logs" / "dylan_mini_lite0.log").read_text()


def test_a_failing_recipe_stops_only_its_dependants(scheduled_run, tmp_path):
    """convoluted's base net made to fail (its fold's saved recipe unreadable): its heads, its blend,
    OCR, MD5, the stack and the report do not run; dylan's recipe (made to rerun) and bestfitting's go on."""
    work = fresh_copy(scheduled_run["work"], tmp_path / "work")
    (work / "models/convoluted/mini_base_lite0/fold0/config.yaml").write_text("model: [unclosed\n")
    for source in ("convoluted_mini_base_lite0", "dylan_mini_lite0"):
        (work / "preds" / source / "summary.json").unlink()
    done = run_all("--work", str(work), "--gpus-per-recipe", "1", "--scheduler", "local:2", ok=False)
    out = done.stdout + done.stderr
    assert done.returncode != 0
    log = work / "logs" / "convoluted_mini_base_lite0.log"
    assert f"FAILED: convoluted_mini_base_lite0 (exit 2), log {log}" in out and "invalid YAML" in log.read_text()
    stopped = out.split("FAILED: convoluted_mini_base_lite0", 1)[1].split("not run because of it:", 1)[1].splitlines()[0]
    assert {n.strip() for n in stopped.split(",")} == {"convoluted_mini_fuse_gated", "convoluted_mini_fuse_max", "convoluted_mini_rankcount_lite0",
                                                       "convoluted", "ocr", "md5", "stack", "report"}
    assert "== dylan_mini_lite0: started on" in out and (work / "preds/dylan_mini_lite0/summary.json").exists()
    assert "== bestfitting_mini_lite0_strip: up to date" in out and "== dylan: started on" in out
    assert not (work / "preds/convoluted_mini_base_lite0/summary.json").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_recipes_run_on_the_workers_of_a_dask_scheduler(tiny_run, scheduled_run, tmp_path):
    """`dask scheduler` and two `dask worker --resources GPU=1` on 127.0.0.1: every recipe of the tiny
    preset (made to rerun: one fold of dylan's trains again) runs there; the files are the sequential run's."""
    work = fresh_copy(scheduled_run["work"], tmp_path / "work", keep_checkpoints=True)
    for recipe in RECIPES:
        (work / "preds" / recipe / "summary.json").unlink()
    for f in ("oof.npz", "test.npz", "last.pt"):
        (work / "models/dylan/mini_lite0/fold2" / f).unlink()
    port, dask = free_port(), str(Path(sys.executable).parent / "dask")
    env = {**_env(), "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        for i in range(2):
            procs.append(subprocess.Popen([dask, "worker", f"tcp://127.0.0.1:{port}", "--resources", "GPU=1", "--nthreads", "2", "--name", f"remote{i}",
                                           "--no-dashboard"], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        out = run_all("--work", str(work), "--gpus-per-recipe", "1", "--scheduler", f"tcp://127.0.0.1:{port}").stdout
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=60)
    assert "2 workers" in out
    for recipe in RECIPES:
        assert f"== {recipe}: started on" in out and "(worker remote" in out.split(f"== {recipe}: started on", 1)[1].splitlines()[0], recipe
    assert_same_outputs(tiny_run[0], work)
