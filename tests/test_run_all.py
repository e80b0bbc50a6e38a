"""run_all.sh end to end on the tiny mini preset: every stage, a rerun that skips, and a run
SIGKILLed inside several stages and restarted that ends with the same submissions."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.paths import REPO

STAGES = ("data", "index", "folds", "stats", "dylan", "bestfitting", "convoluted", "ocr", "md5", "stack", "report")
SUBMISSIONS = ("dylan", "bestfitting", "convoluted", "stack")


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1"}


def run_all(*args: str, timeout: int = 900) -> str:
    done = subprocess.run(["bash", str(REPO / "run_all.sh"), *args], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def straight_run(tiny_run) -> tuple[Path, str]:
    """One uninterrupted tiny run (conftest's, shared with the tests that read a trained work dir)."""
    return tiny_run


def test_run_all_tiny_end_to_end_and_rerun(straight_run):
    work, out = straight_run
    for stage in STAGES:
        assert f"== {stage}:" in out
    test_labels = pd.read_csv(work / "mini" / "test_labels.csv")
    for solution in SUBMISSIONS:
        submission = pd.read_csv(work / "submissions" / f"{solution}.csv.gz")
        assert sorted(submission["_id"]) == sorted(test_labels["_id"]), solution
    assert (work / "preds" / "dylan_mini_lite0" / "oof.npz").exists()
    assert (work / "stats" / "train" / "stats.json").exists()
    for source in ("ocr", "md5"):  # side sources cover only some products, but always exist
        assert (work / "preds" / source / "oof.npz").exists() and (work / "preds" / source / "test.npz").exists()
    assert (work / "report" / "index.html").exists() and (work / "report" / "leaderboard.csv").exists()
    assert "Final submission" in out
    work = work.parent / "rerun"  # the reruns below rewrite outputs: on a copy, the shared run stays as it finished
    shutil.copytree(straight_run[0], work, symlinks=True)
    again = run_all("--preset", "tiny", "--work", str(work))
    assert "folds.csv: up to date" in again and "== dylan: up to date" in again and "== report: up to date" in again
    only = run_all("--preset", "tiny", "--work", str(work), "--only", "stats", "--force")
    assert "== dylan: not selected" in only and "== stats:" in only
    # stats rewrote its output: the report, which shows it, is stale (make's rule over the graph's
    # edges); the models, the blends and the stack are not made from it and stay up to date
    after = run_all("--preset", "tiny", "--work", str(work))
    assert "== report: stale" in after and "== dylan: up to date" in after and "== stack: up to date" in after
    # another seed regenerates the data and the index: the seed-0 folds (and every model on them)
    # used to be served against the new data; now the folds stage stops, naming the difference
    copy = work.parent / "reseeded"
    shutil.copytree(work, copy, ignore=shutil.ignore_patterns("*.pt"))
    reseeded = subprocess.run(["bash", str(REPO / "run_all.sh"), "--preset", "tiny", "--work", str(copy), "--seed", "1"],
                              cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert reseeded.returncode != 0 and "train_index" in reseeded.stderr and "--force" in reseeded.stderr


# (stage, a line the stage logs while it runs, its outputs (removed from the copy: a CNN stage's one fold, so the restart
#  trains one fold, not three), a file that proves it was part-way, the files that must equal the uninterrupted run's)
CONVOLUTED_FOLD1 = (*(f"models/convoluted/mini_{m}/fold1" for m in ("base_lite0", "fuse_gated", "fuse_max", "rankcount_lite0")),
                    "features/convoluted/mini_base_lite0/fold1", "preds/convoluted",
                    *(f"preds/convoluted_mini_{m}" for m in ("base_lite0", "fuse_gated", "fuse_max", "rankcount_lite0")))
KILLS = (("dylan", "dylan_mini_lite0 fold 0 epoch 2/", ("models/dylan/mini_lite0/fold0", "preds/dylan", "preds/dylan_mini_lite0"),
          "models/dylan/mini_lite0/fold0/last.pt", ("submissions/dylan.csv.gz",)),
         ("convoluted", "convoluted_mini_base_lite0 fold 1 epoch 2/", CONVOLUTED_FOLD1, "models/convoluted/mini_base_lite0/fold1/last.pt",
          ("submissions/convoluted.csv.gz",)),
         ("ocr", "INFO OCR: ", ("preds/ocr", "ocr"), "ocr/cache.sqlite3", ("preds/ocr/oof.npz", "preds/ocr/test.npz")),
         ("stack", "stacker CV: 1 fold", ("preds/stack", "stack"), None, ("submissions/stack.csv.gz",)))


def _run_until_killed(work: Path, marker: str, *args: str) -> tuple[str, bool]:
    """Start run_all.sh; SIGKILL its whole process group the moment a log line holds `marker`.
    Returns what it printed and whether the marker was seen (and the kill sent)."""
    proc = subprocess.Popen(["bash", str(REPO / "run_all.sh"), "--preset", "tiny", "--work", str(work), *args], cwd=REPO,
                            env={**_env(), "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    seen, killed = [], False
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
            break
    proc.wait(timeout=60)
    proc.stdout.close()
    return "".join(seen), killed


@pytest.mark.parametrize("stage, marker, outputs, part_way, same", KILLS, ids=[k[0] for k in KILLS])
def test_run_all_killed_inside_a_stage_and_restarted_gives_the_same_outputs(straight_run, tmp_path, stage, marker, outputs, part_way, same):
    """On a copy of the shared run without the stage's outputs: run_all.sh --only STAGE SIGKILLed
    on a line the stage logs part-way (mid-fold in dylan and convoluted, after the OCR read, mid
    stacker CV), its output absent at the kill (the kill landed inside it), then restarted: the
    stage resumes and what it writes equals the uninterrupted run's (submissions row for row, predictions exactly)."""
    straight, _ = straight_run
    work = tmp_path / "work"
    shutil.copytree(straight, work, symlinks=True)
    for out in outputs:
        shutil.rmtree(work / out, ignore_errors=True)
    for f in same:
        (work / f).unlink(missing_ok=True)
    seen, killed = _run_until_killed(work, marker, "--only", stage)
    assert killed, f"run_all never logged {marker!r} in {stage}:\n{seen[-3000:]}"
    assert not any((work / f).exists() for f in same), f"the kill landed after {stage} finished"
    assert part_way is None or (work / part_way).exists(), f"{part_way}: {stage} was not part-way"
    out = run_all("--preset", "tiny", "--work", str(work), "--only", stage)
    assert f"== {stage}:" in out
    for f in same:
        if f.endswith(".csv.gz"):
            pd.testing.assert_frame_equal(pd.read_csv(straight / f), pd.read_csv(work / f), obj=f)
        else:
            from common.predictions import load_topk

            a, b = load_topk(straight / f), load_topk(work / f)
            assert all(np.array_equal(getattr(a, x), getattr(b, x)) for x in ("ids", "labels", "probs")), f


def test_run_all_holdout_protocol_end_to_end(tmp_path):
    """The winners' protocol on the tiny preset: one model per recipe, trained on everything but
    the holdout; every model's OOF is exactly the holdout; OCR, MD5 and the stacker (its own CV
    over the holdout) run on it; every submission has every test product; the report says so."""
    import json

    import numpy as np

    from common.paths import WorkDir
    from common.predictions import load_topk
    from common.sources import list_sources

    work = tmp_path / "work"  # --fast-dev-run: what is tested is the protocol's wiring, a few steps a recipe show it
    out = run_all("--preset", "tiny", "--work", str(work), "--protocol", "holdout", "--holdout-fraction", "0.25", "--fast-dev-run")
    assert "protocol holdout" in out and "Final submission" in out
    folds = pd.read_csv(work / "folds.csv")
    holdout = np.sort(folds.loc[folds["fold"] == 0, "_id"].to_numpy())
    assert set(folds["fold"]) == {-1, 0} and abs(len(holdout) - 0.25 * len(folds)) <= 1
    models = list_sources(WorkDir(work), ["model"])
    assert len(models) == 6
    for source in models:
        assert np.array_equal(load_topk(work / "preds" / source.name / "oof.npz").ids, holdout), source.name
        assert source.summary["protocol"] == "holdout" and source.summary["folds"] == [0]
    assert not list(work.glob("models/*/*/fold1"))  # one model per recipe
    for side in ("ocr", "md5"):
        side_oof = load_topk(work / "preds" / side / "oof.npz")
        assert np.isin(side_oof.ids, holdout).all(), side  # honest: only holdout products are predicted out of sample
    stack = json.loads((work / "preds" / "stack" / "summary.json").read_text())
    assert stack["protocol"] == "holdout" and len(stack["cv"]["per_fold"]) == 5
    assert stack["oof_products"] <= len(holdout) and stack["test_accuracy"] is not None
    test_ids = sorted(pd.read_csv(work / "mini" / "test_labels.csv")["_id"])
    for solution in SUBMISSIONS:
        assert sorted(pd.read_csv(work / "submissions" / f"{solution}.csv.gz")["_id"]) == test_ids, solution
    page = (work / "report" / "index.html").read_text()
    assert "holdout protocol" in page and "FAST DEV RUN" in page
    refused = subprocess.run(["bash", str(REPO / "run_all.sh"), "--preset", "tiny", "--work", str(work), "--protocol", "kfold", "--fast-dev-run"],
                             cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "was made with" in refused.stdout + refused.stderr  # never mixes two protocols' models


def test_run_all_rejects_unknown_arguments(tmp_path):
    done = subprocess.run(["bash", str(REPO / "run_all.sh"), "--only", "nonsense", "--work", str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2 and "unknown stage" in done.stderr


@pytest.mark.parametrize("args, message", [(["--work"], "--work needs a value"), (["--preset"], "--preset needs a value"),
                                           (["--n-folds", "abc"], "take a whole number, not 'abc'"),
                                           (["--holdout-fraction", "2"], "between 0 and 1, not '2'"),
                                           (["--protocol", "loo"], "--protocol must be kfold or holdout"), (["--preset", "huge"], "--preset must be tiny, default or dev"), (["--gpus", "x"], "--gpus takes a whole number")])
def test_run_all_validates_every_option_when_parsed(tmp_path, args, message):
    """Before any stage (or the environment set-up) runs: one line, exit 2 (a missing value used to die with "unbound variable")."""
    done = subprocess.run(["bash", str(REPO / "run_all.sh"), *args], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and message in done.stderr and "unbound" not in done.stderr, done.stderr


@pytest.mark.slow
def test_run_all_under_torchrun_two_processes_covers_every_product_once(tmp_path):
    """`--nproc 2`: every training and predicting stage under torchrun (gloo on a CPU); every
    model's OOF file covers every train product of folds.csv once, every submission every test product."""
    import numpy as np

    from common.predictions import load_topk
    from common.sources import list_sources
    from common.paths import WorkDir

    work = tmp_path / "work"
    out = run_all("--preset", "tiny", "--work", str(work), "--nproc", "2")
    assert "Final submission" in out
    folds = pd.read_csv(work / "folds.csv")
    models = list_sources(WorkDir(work), ["model"])
    assert len(models) == 6  # dylan 1, bestfitting 1, convoluted 4
    for source in models:
        oof = load_topk(work / "preds" / source.name / "oof.npz")
        assert np.array_equal(oof.ids, np.sort(folds["_id"].to_numpy())), source.name
    test_ids = sorted(pd.read_csv(work / "mini" / "test_labels.csv")["_id"])
    for solution in SUBMISSIONS:
        assert sorted(pd.read_csv(work / "submissions" / f"{solution}.csv.gz")["_id"]) == test_ids, solution


@pytest.mark.slow
def test_fast_dev_run_of_the_full_profile_on_the_tiny_preset(tmp_path):
    """`--profile full --fast-dev-run`: every full recipe (real architecture, random weights here)
    trains a few steps and predicts every holdout and test product; every feature store, head,
    OCR, MD5, the stack and the report; the report marks the run."""
    import json

    import numpy as np

    from common.paths import WorkDir
    from common.predictions import load_topk
    from common.sources import list_sources

    work = tmp_path / "work"
    out = run_all("--preset", "tiny", "--work", str(work), "--profile", "full", "--fast-dev-run", "--holdout-fraction", "0.25",
                  timeout=3600)  # 32 full recipes, several InceptionResNetV2s among them, on 2 CPU cores
    from common.recipe import profile_configs, weights_available

    no_weights = sum(1 for c in profile_configs("full") if c.pretrained and not weights_available(c.pretrained))
    assert no_weights >= 15 and f"FAST DEV RUN: {no_weights} weight files are missing" in out and "Final submission" in out
    folds = pd.read_csv(work / "folds.csv")
    holdout = np.sort(folds.loc[folds["fold"] == 0, "_id"].to_numpy())
    models = list_sources(WorkDir(work), ["model"])
    recipes = [p for s in ("dylan", "bestfitting", "convoluted") for p in (REPO / "solutions" / s / "configs").glob("*.yaml")
               if not p.stem.startswith(("mini_", "ablation_"))]
    baselines = [p for p in recipes if p.stem.startswith("single_")]
    assert len(models) == len(recipes) - len(baselines) >= 18 and len(baselines) == 2
    assert {s.name for s in list_sources(WorkDir(work), ["ablation"])} == {f"bestfitting_{p.stem}" for p in baselines}
    for source in models:
        assert np.array_equal(load_topk(work / "preds" / source.name / "oof.npz").ids, holdout), source.name
        assert source.summary["recipe"]["fast_dev_run"] and source.summary["recipe"]["epochs"] == 1
    bases = [p.stem for p in (REPO / "solutions/convoluted/configs").glob("base_*.yaml") if "stage: base" in p.read_text()]
    assert sorted(p.parent.name for p in work.glob("features/convoluted/*/fold0")) == sorted(bases) and len(bases) == 9  # every base net's store
    stack = json.loads((work / "preds" / "stack" / "summary.json").read_text())
    assert stack["protocol"] == "holdout" and len(stack["sources"]) >= 18
    test_ids = sorted(pd.read_csv(work / "mini" / "test_labels.csv")["_id"])
    assert sorted(pd.read_csv(work / "submissions" / "stack.csv.gz")["_id"]) == test_ids
    assert "FAST DEV RUN" in (work / "report" / "index.html").read_text()
