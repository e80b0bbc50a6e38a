"""The plan (`python -m common.plan`, `./run_all.sh --plan`) and the GPU benchmark that feeds it
(`bench/bench_gpu.py`, here on a CPU at a tiny size): official counts, 1 against 8 GPUs, k-fold
against holdout, JSON output, a measured throughput file overriding the estimated figures, the
recorded 2017 speeds on request."""
from __future__ import annotations

import json
import math
import shutil
import subprocess

import pytest

from common import plan
from common.errors import DataError
from common.paths import REPO, TRAIN_EXAMPLE_BSON

NO_FILE = ["--throughput", ""]  # (the default file is read only when present: tests pass their own)


def run_plan(tmp_path, *args: str) -> dict:
    return plan.main(["--work", str(tmp_path / "work"), *args])


@pytest.fixture(scope="module")
def holdout(tmp_path_factory) -> dict:
    return run_plan(tmp_path_factory.mktemp("plan"), "--profile", "full", "--gpus", "1", "--json", str(tmp_path_factory.getbasetemp() / "plan.json"))


def by_source(p: dict) -> dict:
    return {r["source"]: r for r in p["recipes"]}


def test_official_counts_and_holdout(holdout):
    c, s = holdout["counts"], holdout["split"]
    assert (c["train_products"], c["train_images"], c["test_products"], c["test_images"]) == (7_069_896, 12_371_293, 1_768_182, 3_095_080)
    assert sum(c["by_k"].values()) == c["train_products"] and sum(int(k) * n for k, n in c["by_k"].items()) == c["train_images"]
    assert s["protocol"] == "holdout" and s["models"] == 1 and (s["oof_products"], s["oof_images"]) == (50_000, 87_648)
    dpn107 = by_source(holdout)["dylan_dpn107"]
    assert dpn107["train_images"] == 20 * (12_371_293 - 87_648)  # M14's 20 epochs
    # estimated: timm's dpn107 trains 194.08 img/s at 224 px on an RTX 3090, x 3.35 / 0.936 (H100 bandwidth), x FLOPs(224) / FLOPs(180)
    from common.throughput import network

    expected = 194.08 * 3.35 / 0.936 * network("dpn107", 224).flops / network("dpn107", 180).flops
    assert dpn107["train_images"] / dpn107["gpu_s"]["train"] == pytest.approx(expected, rel=1e-9)
    assert dpn107["speed"] == "estimated" and dpn107["rate"].startswith("estimated: timm's dpn107, 194 train / 736 infer img/s at 224 px")
    assert by_source(holdout)["convoluted_base_b_xception"]["rate"].startswith("estimated: timm's xception,")  # timm's old name of legacy_xception
    # one feature store per 2nd-place base net: (train + test images) x 2 flips x its width
    images, products = 12_371_293 + 3_095_080, 7_069_896 + 1_768_182
    assert by_source(holdout)["convoluted_base_seresnext101"]["disk"]["features"] == images * (2 * 2048 + 1) + 8 * products


def test_the_recorded_2017_speeds_on_request(holdout, tmp_path):
    recorded = by_source(run_plan(tmp_path, "--profile", "full", "--speeds", "recorded"))
    dpn107 = recorded["dylan_dpn107"]
    # the recorded DPN-107: 246 img/s on 8 GPUs, 12.28M images an epoch in 13.9 h (the 3rd place: 13.3 h on 11.75M)
    assert math.isclose(dpn107["gpu_s"]["train"] / 20 / 8 / 3600, 13.9, abs_tol=0.1)
    assert dpn107["speed"] == "recorded" and dpn107["rate"].startswith("recorded: 246 img/s on 8 GPUs")
    assert recorded["dylan_seresnext101"]["rate"].startswith("recorded: 270 img/s on 8 GPUs")
    assert recorded["bestfitting_resnet50"]["rate"].startswith("scaled by FLOPs from")
    assert sum(r["gpu_hours"] for r in recorded.values()) > 10 * holdout["totals"]["gpu_hours"]  # 2017's fp32 GPUs against an H100 in AMP
    with pytest.raises(DataError, match="--speeds 'fast'"):
        run_plan(tmp_path, "--speeds", "fast")


def test_every_recipe_has_a_labelled_source(holdout):
    sources = {r["rate"] for r in holdout["recipes"]}
    assert all(s.startswith(("estimated: timm's", "bound by reading")) for s in sources), sources
    assert {r["speed"] for r in holdout["recipes"]} == {"estimated", "I/O"}
    assert {r["solution"] for r in holdout["recipes"]} == {"dylan", "bestfitting", "convoluted"}
    assert all(s["source"] for s in holdout["cpu_stages"])
    assert {s["stage"] for s in holdout["cpu_stages"]} >= {"ocr (selection)", "md5", "stack", "report"}


def test_eight_gpus_the_schedule_s_makespan(holdout, tmp_path):
    """On 8 GPUs the same GPU-hours; the wall-hours the schedule's, no better than 8 x faster than one GPU,
    no worse than one after another on all 8 (which --gpus-per-recipe 8 reproduces: no two recipes overlap)."""
    eight = run_plan(tmp_path, "--profile", "full", "--gpus", "8")
    s = eight["schedule"]
    assert math.isclose(eight["totals"]["gpu_hours"], holdout["totals"]["gpu_hours"], rel_tol=1e-12)
    assert holdout["totals"]["wall_hours"] / 8 <= eight["totals"]["wall_hours"] <= s["one_after_another_wall_hours"]
    assert eight["totals"]["wall_hours"] == s["wall_hours"] == max(s["end_h"].values())
    assert s["critical_path"][-1]["node"] == "report" and 0 < s["utilisation"] <= 1
    one_by_one = run_plan(tmp_path, "--profile", "full", "--gpus", "8", "--gpus-per-recipe", "8")["schedule"]
    assert math.isclose(one_by_one["wall_hours"], s["one_after_another_wall_hours"], rel_tol=1e-9)
    spans = sorted((one_by_one["start_h"][r], one_by_one["end_h"][r]) for r in one_by_one["gpus_per_recipe"])
    assert all(a[1] <= b[0] + 1e-9 for a, b in zip(spans, spans[1:]))
    assert set(one_by_one["gpus_per_recipe"].values()) == {8}
    assert eight["totals"]["wall_hours"] <= 72 < s["one_after_another_wall_hours"]  # the estimated speeds: 3 days side by side, not one after another


def test_kfold_trains_each_recipe_n_times_on_n_minus_1_folds(holdout, tmp_path):
    kfold = run_plan(tmp_path, "--profile", "full", "--protocol", "kfold", "--n-folds", "5")
    assert kfold["split"]["models"] == 5
    expected = 5 * 0.8 * 12_371_293 / (12_371_293 - 87_648)  # 5 models on 4/5 each, against one on all but the holdout
    for source, r in by_source(kfold).items():
        if r["train_images"]:
            assert math.isclose(r["train_images"] / by_source(holdout)[source]["train_images"], expected, rel_tol=1e-9), source
    ratio = kfold["totals"]["gpu_hours"] / holdout["totals"]["gpu_hours"]
    assert 4.0 < ratio < 5.0  # + every fold's validation each epoch and 5 test passes
    assert math.isclose(kfold["disk_bytes"]["features (recipes)"] / holdout["disk_bytes"]["features (recipes)"], 5, rel_tol=1e-9)


def test_json_output(holdout, tmp_path_factory):
    saved = json.loads((tmp_path_factory.getbasetemp() / "plan.json").read_text())
    assert saved["totals"]["gpu_hours"] == pytest.approx(holdout["totals"]["gpu_hours"])
    assert len(saved["recipes"]) == len(holdout["recipes"]) and saved["split"]["protocol"] == "holdout"


def test_a_measured_throughput_file_overrides_the_recorded_figures(holdout, tmp_path):
    table = {"device": "Test GPU", "gpu": True, "size": 180,
             "recipes": {"dylan_dpn107": {"input_size": 180, "train_img_s": {"loader": 1000.0, "synthetic": 1200.0}, "infer_img_s": {"loader": 3000.0, "synthetic": 4000.0}}}}
    path = tmp_path / "gpu.json"
    path.write_text(json.dumps(table))
    measured = by_source(run_plan(tmp_path, "--profile", "full", "--throughput", str(path)))
    dpn107 = measured["dylan_dpn107"]
    assert dpn107["rate"].startswith("bench_gpu.json on Test GPU, loader-fed")
    assert dpn107["gpu_s"]["train"] == pytest.approx(dpn107["train_images"] / 1000.0)
    assert dpn107["gpu_s"]["predict"] == pytest.approx(dpn107["predict_images"] / 3000.0)
    assert dpn107["speed"] == "measured"
    assert measured["dylan_dpn92"]["rate"] == by_source(holdout)["dylan_dpn92"]["rate"]  # the others stay estimated
    table["recipes"] |= {"dylan_dpn92": {"source": "dylan_dpn92", "error": "RuntimeError: CUDA out of memory"},  # what a crashed recipe leaves
                         "dylan_dpn98": {"train_img_s": {"synthetic": 900.0}, "infer_img_s": {"synthetic": 2000.0}}}  # no loader-fed figure
    path.write_text(json.dumps(table))
    partial = by_source(run_plan(tmp_path, "--profile", "full", "--throughput", str(path)))
    assert partial["dylan_dpn92"]["speed"] == "estimated"
    assert partial["dylan_dpn98"]["speed"] == "measured" and "synthetic-fed" in partial["dylan_dpn98"]["rate"]
    with pytest.raises(DataError, match="no such file"):
        run_plan(tmp_path, "--throughput", str(tmp_path / "missing.json"))


def test_data_counts_come_from_the_index(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "test"):
        shutil.copy(TRAIN_EXAMPLE_BSON, data / f"{split}.bson")
    with pytest.raises(DataError, match="run the index stage first"):
        run_plan(tmp_path, "--data", str(data))
    p = run_plan(tmp_path, "--data", str(data), "--build-index", "--holdout-fraction", "0.1")
    assert (p["counts"]["train_products"], p["counts"]["train_images"]) == (82, 110)
    assert p["counts"]["by_k"] == {1: 67, 2: 7, 3: 3, 4: 5}
    assert p["split"]["oof_products"] == pytest.approx(8.2) and "stratified 10.0%" in p["split"]["what"]
    again = run_plan(tmp_path, "--data", str(data))  # the index is now in --work
    assert again["counts"]["train_images"] == 110


def test_run_all_plan_runs_no_stage(tmp_path):
    out = subprocess.run([str(REPO / "run_all.sh"), "--profile", "full", "--plan", "--gpus", "8", "--work", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "TOTAL GPU-hours" in out.stdout and "on 8 GPUs" in out.stdout and "protocol holdout" in out.stdout
    assert "== index" not in out.stdout and not (tmp_path / "index").exists()


def test_run_all_plan_on_a_data_folder_without_an_index(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "test"):
        shutil.copy(TRAIN_EXAMPLE_BSON, data / f"{split}.bson")
    out = subprocess.run([str(REPO / "run_all.sh"), "--data", str(data), "--profile", "full", "--plan", "--gpus", "2", "--work",
                          str(tmp_path / "work")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Data: 82 train products / 110 images" in out.stdout and "Critical path" in out.stdout


def test_bench_gpu_on_cpu_writes_what_the_plan_reads(tmp_path):
    from bench.bench_gpu import main as bench_main

    out = tmp_path / "cpu.json"
    result = bench_main(["--device", "cpu", "--quick", "--size", "64", "--batch", "4", "--workers", "0", "--steps", "1", "--warmup", "1", "--size-mb", "1",
                         "--work", str(tmp_path), "--out", str(out), "--recipes", "dylan/mini_lite0", "bestfitting/mini_lite0_strip", "convoluted/mini_fuse_max"])
    assert result["gpu"] is False and result["device"].startswith("cpu")
    assert set(result["recipes"]) == {"dylan_mini_lite0", "bestfitting_mini_lite0_strip"}
    assert "stored features" in result["skipped"]["convoluted_mini_fuse_max"]
    for r in result["recipes"].values():
        assert "error" not in r, r
        assert r["input_size"] == 64 and r["micro_batch"] == 4
        for what in ("train_img_s", "infer_img_s"):
            assert r[what]["loader"] > 0 and r[what]["synthetic"] > 0 and 0 <= r[what]["loader_share"] <= 1
    assert json.loads(out.read_text())["recipes"].keys() == result["recipes"].keys()
    planned = by_source(run_plan(tmp_path, "--profile", "mini", "--throughput", str(out)))
    assert planned["dylan_mini_lite0"]["rate"].startswith("bench_gpu.json on cpu") and "not a GPU figure" in planned["dylan_mini_lite0"]["rate"]
    assert planned["convoluted_mini_base_lite0"]["speed"] == "estimated"  # not measured: the estimate stays


def test_the_full_profile_on_several_gpus_runs_the_plan_s_schedule_by_default(tmp_path):
    """common.runner: the full profile on N > 1 GPUs, nothing said, goes side by side on a local cluster with
    the G per recipe the plan finds fastest; the mini profile, one GPU or an explicit --nproc stay as they are."""
    from common.paths import WorkDir
    from common.pipeline import RunOptions
    from common.runner import default_schedule

    full = RunOptions(profile="full")
    assert default_schedule(full, 8).scheduler == "local:8"
    assert default_schedule(full, 1).scheduler == default_schedule(RunOptions(), 8).scheduler == ""
    assert default_schedule(RunOptions(profile="full", nproc=8), 8).scheduler == ""
    chosen = plan.fastest_gpus(default_schedule(full, 8), WorkDir(tmp_path / "work"), 8)
    eight = run_plan(tmp_path, "--profile", "full", "--gpus", "8")["schedule"]
    assert chosen == eight["gpus_per_recipe"] and len(chosen) == 32 and set(chosen.values()) <= {1, 2, 4, 8}


def test_the_saved_network_costs_cover_every_network_the_plan_asks_for(tmp_path, monkeypatch):
    """common/resources/network_costs.json (`python -m common.throughput --write-costs`) holds every
    network the plan of each profile asks for, counted with this timm and torch: planning counts nothing
    (a recipe with a new network fails here until the table is rewritten); an entry equals a live count."""
    from common import throughput

    assert throughput.counted_table(), f"{throughput.COSTS_FILE} is missing or was counted with other versions than {throughput.library_versions()}"

    def counting(model, size):
        raise AssertionError(f"{model} at {size} px is not in {throughput.COSTS_FILE}: run python -m common.throughput --write-costs")

    monkeypatch.setattr(throughput, "count_network", counting)
    throughput.network.cache_clear()
    unmeasured = tmp_path / "none.json"
    unmeasured.write_text('{"recipes": {}}')
    for profile in ("full", "mini"):
        for speeds in throughput.SPEEDS:
            run_plan(tmp_path, "--profile", profile, "--gpus", "8", "--speeds", speeds, "--throughput", str(unmeasured))
    monkeypatch.undo()
    throughput.network.cache_clear()
    assert throughput.count_network("tf_efficientnet_lite0", 48) == throughput.counted_table()["tf_efficientnet_lite0@48"]
