"""run_all.sh end to end on the tiny mini preset: every stage that exists, then a rerun that skips."""
from __future__ import annotations

import os
import subprocess

import pandas as pd

from common.paths import REPO


def run_all(*args: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(["bash", str(REPO / "run_all.sh"), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_run_all_tiny_end_to_end_and_rerun(tmp_path):
    work = tmp_path / "work"
    out = run_all("--preset", "tiny", "--work", str(work))
    for stage in ("data", "index", "folds", "stats", "dylan", "bestfitting", "convoluted", "ocr", "md5", "stack", "report"):
        assert f"== {stage}:" in out
    test_labels = pd.read_csv(work / "mini" / "test_labels.csv")
    for solution in ("dylan", "bestfitting", "convoluted", "stack"):
        submission = pd.read_csv(work / "submissions" / f"{solution}.csv.gz")
        assert sorted(submission["_id"]) == sorted(test_labels["_id"]), solution
    assert (work / "preds" / "dylan_mini_lite0" / "oof.npz").exists()
    assert (work / "stats" / "train" / "stats.json").exists()
    for source in ("ocr", "md5"):  # side sources cover only some products, but always exist
        assert (work / "preds" / source / "oof.npz").exists() and (work / "preds" / source / "test.npz").exists()
    assert (work / "report" / "index.html").exists() and (work / "report" / "leaderboard.csv").exists()
    assert "Final submission" in out
    again = run_all("--preset", "tiny", "--work", str(work))
    assert "== folds: done already" in again and "== dylan: done already" in again
    only = run_all("--preset", "tiny", "--work", str(work), "--only", "stats", "--force")
    assert "== dylan: not selected" in only and "== stats:" in only


def test_run_all_rejects_unknown_arguments(tmp_path):
    done = subprocess.run(["bash", str(REPO / "run_all.sh"), "--only", "nonsense", "--work", str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2 and "unknown stage" in done.stderr
